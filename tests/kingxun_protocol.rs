//! kingxun codec: golden vectors worked out by hand from the layouts, round-trip
//! property tests, and full encrypted frames through the codec.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use vehicle2mqtt::protocol::kingxun::crypto;
use vehicle2mqtt::protocol::kingxun::*;

/// Just the header of a request announcing a 300 000-byte body.
fn long_request_header(msg_id: u16, crypt: bool) -> BytesMut {
    let mut header = Vec::new();
    Header {
        msg_id,
        seq: 1,
        body_len: 300_000,
        crypt,
        kind: Kind::Request {
            dev_id: 1,
            session_id: 2,
        },
    }
    .write(&mut header);
    BytesMut::from(&header[..])
}

#[test]
fn golden_register_body() {
    let body = Register {
        time: LocalTime {
            year: 2024,
            month: 3,
            day: 1,
            hour: 8,
            minute: 30,
            second: 5,
        },
        versions: [0x0102, 2, 3, 4, 5, 0xAABBCCDD],
        version_count: 6,
    }
    .encode();
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        0xE8, 0x07,             // year 2024
        0x03, 0x01,             // month 3, day 1
        0x08, 0x1E, 0x05,       // 08:30:05
        0x02, 0x01, 0, 0,       // DevHwVersion 0x0102
        0x02, 0, 0, 0,          // DevSoftVersion 2
        0x03, 0, 0, 0,          // motorCtrlHWVer 3
        0x04, 0, 0, 0,          // motorCtrlSoftVer 4
        0x05, 0, 0, 0,          // dashboardHWVer 5
        0xDD, 0xCC, 0xBB, 0xAA, // dashboardSoftVer
    ];
    assert_eq!(body, expected);
    assert_eq!(Register::decode(&expected).unwrap().versions[5], 0xAABBCCDD);
}

#[test]
fn golden_register_ack_body() {
    let ack = RegisterAck {
        session_id: 0x11223344,
        iv: [0xA5; 16],
    };
    let mut expected = vec![0x44, 0x33, 0x22, 0x11]; // SessionId
    expected.extend_from_slice(&[0xA5; 16]); // IV
    assert_eq!(ack.encode(), expected);
}

#[test]
fn golden_status_body() {
    let s = Status {
        dev_type: 2,
        protocol: 1,
        lng: 121.5,
        lat: 31.25,
        mileage: 12345,
        driving: true,
        speed: 5000,
        lock: 0b0000_0011,
        light: 0b01,
        sensor: 0b0001_0010,
        brake: 0b01,
        mini_battery: None,
        battery: Some(Battery {
            charging: false,
            id: "BAT1".into(),
            soc: 87,
            voltage_cv: 5230,
            temp_cc: -550,
            cycles: 12,
            soh: 98,
            current_flag: 1,
            current_ca: 1250,
            cells: vec![Cell {
                voltage_cv: 330,
                temp_cc: None,
            }],
        }),
    };
    let b = s.encode();
    let mut e: Vec<u8> = vec![0x02, 0x01]; // DevType E-Motor, ProtocolFlag 1
    e.extend_from_slice(&121.5f64.to_le_bytes()); // lng
    e.extend_from_slice(&31.25f64.to_le_bytes()); // lat
    e.extend_from_slice(&[0x39, 0x30, 0, 0]); // mileage 12345 (× 10 m)
    e.push(1); // bDriving
    e.extend_from_slice(&[0x88, 0x13]); // speed 5000 mm/s
    e.extend_from_slice(&[0x03, 0x01, 0x00, 0x12, 0x01, 0x00]); // lock, light u16, sensor, brake, reserved
    e.push(0); // miniBatteryExist
    e.extend_from_slice(&[0; 30 + 1 + 2 + 2]); // mini battery fields (invalid)
    e.push(1); // batteryExist
    e.push(0); // chargeFlag
    let mut id = b"BAT1".to_vec();
    id.resize(32, 0);
    e.extend_from_slice(&id); // batteryId
    e.push(87); // soc
    e.extend_from_slice(&[0x6E, 0x14]); // voltage 5230 = 52.30 V
    e.extend_from_slice(&[0xDA, 0xFD]); // temp -550 = -5.50 °C
    e.extend_from_slice(&[0x0C, 0x00]); // chargeCycle 12
    e.push(98); // soH
    e.push(1); // currentFlag discharge
    e.extend_from_slice(&[0xE2, 0x04]); // current 1250 = 12.50 A
    e.push(1); // seriesCount
    e.extend_from_slice(&[0x4A, 0x01, 0xFF, 0xFF]); // cell 3.30 V, no temperature sensor
    assert_eq!(b, e);
    assert_eq!(Status::decode(&e).unwrap(), s);
}

#[test]
fn golden_events_body() {
    let ev = Events {
        events: vec![DevEvent {
            time: LocalTime {
                year: 2024,
                month: 1,
                day: 2,
                hour: 3,
                minute: 4,
                second: 5,
            },
            millis: 678,
            kind: 8,
            user_id: 0,
            speed: 1000,
            lng: 0.0,
            lat: 0.0,
        }],
    };
    let mut e = vec![1]; // eventCount
    e.extend_from_slice(&[0xE8, 0x07, 1, 2, 3, 4, 5]); // 2024-01-02 03:04:05
    e.extend_from_slice(&[0xA6, 0x02]); // 678 ms
    e.push(8); // tipped over
    e.extend_from_slice(&[0, 0, 0, 0]); // usrId
    e.extend_from_slice(&[0xE8, 0x03]); // 1000 mm/s
    e.extend_from_slice(&[0; 16]); // lng, lat
    assert_eq!(ev.encode(), e);
    assert_eq!(DevEvent::type_name(8), "tipped_over");
}

#[test]
fn golden_web_heartbeat_and_app_control() {
    let hb = WebHeartbeat {
        time: 1,
        host: "kingxun.site".into(),
    }
    .encode();
    assert_eq!(hb.len(), 8 + 32);
    assert_eq!(&hb[8..20], b"kingxun.site");
    assert!(hb[20..].iter().all(|&b| b == 0));
    let app = AppControl {
        dev_id: 0x01020304,
        dev_type: 2,
        time: 5,
        user_id: -1,
        control: Control::Lock { voice: 3 },
    };
    #[rustfmt::skip]
    assert_eq!(app.encode(), vec![
        0x04, 0x03, 0x02, 0x01, // devId
        0x02,                   // devtype
        5, 0, 0, 0, 0, 0, 0, 0, // timestamp
        0xFF, 0xFF, 0xFF, 0xFF, // usrId -1
        0x03,                   // voice
    ]);
    assert_eq!(app.control.app_msg_id(), id::APP_LOCK);
}

#[test]
fn truncated_bodies_are_typed_errors() {
    let full = Register {
        version_count: 6,
        ..Default::default()
    }
    .encode();
    assert_eq!(full.len(), 31);
    for cut in 0..full.len() {
        assert!(
            matches!(
                Register::decode(&full[..cut]),
                Err(BodyError::Length { .. })
            ),
            "cut {cut}"
        );
    }
    // A trip claiming four billion points is refused before allocating.
    let t = LocalTime {
        year: 2025,
        month: 6,
        day: 1,
        hour: 8,
        minute: 0,
        second: 0,
    };
    let mut trip = Trip {
        start: t,
        start_lng: 0.0,
        start_lat: 0.0,
        end: t,
        end_lng: 0.0,
        end_lat: 0.0,
        distance_m: 0,
        soc_begin: 0,
        soc_end: 0,
        max_speed: 0,
        avg_speed: 0,
        max_current_ca: 0,
        battery_id: String::new(),
        points: vec![],
    }
    .encode();
    let n = trip.len();
    trip[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Trip::decode(&trip),
        Err(BodyError::Length {
            what: "1008 points",
            ..
        })
    ));
}

#[test]
fn encrypted_frame_through_the_codec() {
    let key = [0x11; 16];
    let iv = [0x22; 16];
    let plain = DeviceControl {
        svr_time: 1,
        session_id: 2,
        user_id: 0,
        control: Control::Lock { voice: 1 },
    }
    .encode(Profile::Classic)
    .unwrap();
    let body = crypto::encrypt(&key, &iv, &plain);
    assert_eq!(
        body.len(),
        16 + 6,
        "13 plain bytes pad to one block, plus the trailer"
    );
    let frame = Frame::request(id::LOCK, 3, 1234, 2, true, Bytes::from(body));
    let mut codec = KxCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(frame.clone(), &mut buf).unwrap();
    let Some(Decoded::Frame(got)) = codec.decode(&mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(got, frame);
    let back = crypto::decrypt(&key, &iv, &got.body).unwrap();
    assert_eq!(
        DeviceControl::decode(id::LOCK, &back, Profile::Classic)
            .unwrap()
            .control,
        Control::Lock { voice: 1 }
    );
}

fn arb_time() -> impl Strategy<Value = LocalTime> {
    // Real dates only: impossible ones are refused by design (`events_must_be_exactly…`).
    (1970u16..2100, 1u8..=12, 1u8..=28, 0u8..24, 0u8..60, 0u8..60).prop_map(
        |(year, month, day, hour, minute, second)| LocalTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        },
    )
}

fn arb_id(n: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Z0-9]{{0,{n}}}")).unwrap()
}

fn arb_f64() -> impl Strategy<Value = f64> {
    -180.0f64..180.0
}

prop_compose! {
    fn arb_status()(
        dev_type in any::<u8>(), protocol in any::<u8>(), lng in arb_f64(), lat in arb_f64(),
        mileage in any::<u32>(), driving in any::<bool>(), speed in any::<u16>(), lock in any::<u8>(),
        light in any::<u16>(), sensor in any::<u8>(), brake in any::<u8>(),
        mini in proptest::option::of((arb_id(30), any::<u8>(), any::<u16>(), any::<i16>())),
        battery in proptest::option::of((any::<bool>(), arb_id(32), any::<u8>(), any::<u16>(), any::<i16>(), any::<u16>(), any::<u8>(), any::<u8>(), any::<u16>(),
            proptest::collection::vec((any::<u16>(), proptest::option::of(any::<i16>().prop_filter("not the none marker", |t| *t != -1))), 0..24))),
    ) -> Status {
        Status { dev_type, protocol, lng, lat, mileage, driving, speed, lock, light, sensor, brake,
            mini_battery: mini.map(|(id, soc, voltage_cv, temp_cc)| MiniBattery { id, soc, voltage_cv, temp_cc }),
            battery: battery.map(|(charging, id, soc, voltage_cv, temp_cc, cycles, soh, current_flag, current_ca, cells)| Battery {
                charging, id, soc, voltage_cv, temp_cc, cycles, soh, current_flag, current_ca,
                cells: cells.into_iter().map(|(voltage_cv, temp_cc)| Cell { voltage_cv, temp_cc }).collect(),
            }),
        }
    }
}

fn arb_control() -> impl Strategy<Value = Control> {
    prop_oneof![
        (any::<u16>(), any::<u8>(), any::<u32>()).prop_map(
            |(allow_min, lowest_soc, farthest_m)| Control::Unlock {
                allow_min,
                lowest_soc,
                farthest_m
            }
        ),
        any::<u8>().prop_map(|voice| Control::Lock { voice }),
        (any::<u8>(), any::<u16>(), any::<u8>()).prop_map(|(power, max_speed, voice)| {
            Control::Guard {
                power,
                max_speed,
                voice,
            }
        }),
        (any::<u8>(), any::<u8>()).prop_map(|(flags, voice)| Control::OpenLock { flags, voice }),
        any::<u16>().prop_map(|flags| Control::Lights { flags }),
    ]
}

proptest! {
    #[test]
    fn status_round_trips(s in arb_status()) {
        prop_assert_eq!(Status::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn trip_and_events_round_trip(
        start in arb_time(), end in arb_time(), points in proptest::collection::vec((arb_f64(), arb_f64()), 0..50),
        distance_m in any::<u32>(), kinds in proptest::collection::vec(1u8..14, 0..20), id in arb_id(32),
    ) {
        let trip = Trip { start, start_lng: 1.0, start_lat: 2.0, end, end_lng: 3.0, end_lat: 4.0, distance_m,
            soc_begin: 90, soc_end: 70, max_speed: 9000, avg_speed: 4000, max_current_ca: 1500, battery_id: id, points };
        prop_assert_eq!(Trip::decode(&trip.encode()).unwrap(), trip);
        let events = Events { events: kinds.into_iter().map(|kind| DevEvent { time: start, millis: 5, kind, user_id: 1, speed: 2, lng: 3.0, lat: 4.0 }).collect() };
        prop_assert_eq!(Events::decode(&events.encode()).unwrap(), events);
    }

    #[test]
    fn controls_round_trip(c in arb_control(), t in any::<u64>(), s in any::<u32>(), u in any::<u32>(), d in any::<u32>(), ui in any::<i32>()) {
        for p in [Profile::Classic, Profile::Doc2025, Profile::Kxsvr] {
            let dev = DeviceControl { svr_time: t, session_id: s, user_id: if matches!(c, Control::Unlock { .. }) && p.unlock_has_user_id() { u } else { 0 }, control: c };
            match dev.encode(p) {
                Ok(bytes) => {
                    let mut back = DeviceControl::decode(c.device_msg_id(), &bytes, p).unwrap();
                    // A profile without the voice byte carries no voice.
                    if let (Control::OpenLock { voice, .. }, false) = (&mut back.control, p.open_lock_has_voice()) {
                        if let Control::OpenLock { voice: v, .. } = c { *voice = v; }
                    }
                    prop_assert_eq!(back, dev);
                }
                // Only what the profile's widths cannot carry is refused.
                Err(_) => {
                    let too_wide = matches!(c, Control::Guard { max_speed, .. } if max_speed > p.max_speed_limit())
                        || matches!(c, Control::Lights { flags } if flags > 0xFF);
                    prop_assert!(too_wide, "refused {:?} in {:?}", c, p);
                }
            }
        }
        let app = AppControl { dev_id: d, dev_type: 2, time: t, user_id: ui, control: c };
        prop_assert_eq!(AppControl::decode(c.app_msg_id(), &app.encode()).unwrap(), app);
    }

    #[test]
    fn crypto_round_trips(key in any::<[u8; 16]>(), iv in any::<[u8; 16]>(), plain in proptest::collection::vec(any::<u8>(), 0..300)) {
        let body = crypto::encrypt(&key, &iv, &plain);
        prop_assert_eq!(crypto::decrypt(&key, &iv, &body).unwrap(), plain);
    }

    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in proptest::collection::vec((any::<u16>(), any::<u16>(), any::<bool>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..100)), 1..6),
        cuts in proptest::collection::vec(1usize..50, 0..10),
    ) {
        let frames: Vec<Frame> = frames.into_iter().map(|(m, seq, req, x, body)| {
            if req { Frame::request(m, seq, x, x ^ 1, false, Bytes::from(body)) } else { Frame::response(m, seq, x, true, Bytes::from(body)) }
        }).collect();
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.to_bytes()).collect();
        let mut codec = KxCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0usize;
        for c in cuts.iter().copied().chain(std::iter::once(usize::MAX)) {
            let end = at.saturating_add(c).min(stream.len());
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            while let Some(d) = codec.decode(&mut buf).unwrap() {
                if let Decoded::Frame(f) = d { got.push(f) }
            }
            if at == stream.len() { break; }
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400), m in 1000u16..1013) {
        let _ = Status::decode(&data);
        let _ = Trip::decode(&data);
        let _ = Events::decode(&data);
        let _ = ChargeDone::decode(&data);
        let _ = DeviceControl::decode(m + 1000, &data, Profile::Doc2025);
        let _ = crypto::decrypt(&[0; 16], &[0; 16], &data);
        let mut codec = KxCodec::new(256);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}

// Every fork of 2001–2005, byte by byte, per profile (docs/protocols/kingxun.md,
// "Layout forks"; `Profile` docs).
fn dev(control: Control, user_id: u32) -> DeviceControl {
    DeviceControl {
        svr_time: 0x0000_0000_6600_0000,
        session_id: 7,
        user_id,
        control,
    }
}
const SVRTIME_SESSION: [u8; 12] = [0x00, 0x00, 0x00, 0x66, 0, 0, 0, 0, 0x07, 0, 0, 0];

fn with_head(tail: &[u8]) -> Vec<u8> {
    let mut v = SVRTIME_SESSION.to_vec();
    v.extend_from_slice(tail);
    v
}

const UNLOCK: Control = Control::Unlock {
    allow_min: 60,
    lowest_soc: 10,
    farthest_m: 20_000,
};

#[test]
fn golden_2001_per_profile() {
    // classic and kxsvr: KxMsgDef.h `KxDevCtrlOpenLock_OrMsg`, 19 bytes, no usrId.
    #[rustfmt::skip]
    let nineteen = with_head(&[
        0x3C, 0x00,        // allowTime 60 min
        0x0A,              // lowestSocP 10 %
        0x20, 0x4E, 0, 0,  // farthestDist 20000 m
    ]);
    assert_eq!(nineteen.len(), 19);
    for p in [Profile::Classic, Profile::Kxsvr] {
        assert_eq!(dev(UNLOCK, 0).encode(p).unwrap(), nineteen, "{p:?}");
        assert_eq!(
            DeviceControl::decode(id::UNLOCK, &nineteen, p).unwrap(),
            dev(UNLOCK, 0)
        );
    }
    // doc-2025: devProctol.md since 2025-08-21, usrId after devSessionId, 23 bytes.
    #[rustfmt::skip]
    let twenty_three = with_head(&[
        0x09, 0, 0, 0,     // usrId 9
        0x3C, 0x00, 0x0A, 0x20, 0x4E, 0, 0,
    ]);
    assert_eq!(
        dev(UNLOCK, 9).encode(Profile::Doc2025).unwrap(),
        twenty_three
    );
    assert_eq!(
        DeviceControl::decode(id::UNLOCK, &twenty_three, Profile::Doc2025).unwrap(),
        dev(UNLOCK, 9)
    );
}

#[test]
fn golden_2003_per_profile() {
    let guard = Control::Guard {
        power: 0x02,
        max_speed: 0x0235, // 565 = 5.65 m/s ≈ 20 km/h
        voice: 1,
    };
    // classic / doc-2025: MotorPowerFlag u8 | maxSpeed u16 | warningVoice u8.
    let u16_body = with_head(&[0x02, 0x35, 0x02, 0x01]);
    assert_eq!(dev(guard, 0).encode(Profile::Classic).unwrap(), u16_body);
    assert_eq!(dev(guard, 0).encode(Profile::Doc2025).unwrap(), u16_body);
    // kxsvr: `KxDevCtrlDevGuard_OrMsg` has nMaxSpeed u8; 565 cannot be carried.
    assert!(matches!(
        dev(guard, 0).encode(Profile::Kxsvr),
        Err(BodyError::Range { .. })
    ));
    let slow = Control::Guard {
        power: 0x02,
        max_speed: 0xFA, // 2.50 m/s
        voice: 1,
    };
    assert_eq!(
        dev(slow, 0).encode(Profile::Kxsvr).unwrap(),
        with_head(&[0x02, 0xFA, 0x01])
    );
    assert_eq!(Profile::Kxsvr.max_speed_limit(), 255);
}

#[test]
fn golden_2004_per_profile() {
    let open = Control::OpenLock {
        flags: 0x08,
        voice: 3,
    };
    // classic / doc-2025: lockFlag only, 13 bytes (devProctol.md).
    let thirteen = with_head(&[0x08]);
    assert_eq!(dev(open, 0).encode(Profile::Classic).unwrap(), thirteen);
    assert_eq!(dev(open, 0).encode(Profile::Doc2025).unwrap(), thirteen);
    // kxsvr: `KxDevCtrlElecLock_OrMsg` adds nVoiceIndex, 14 bytes.
    assert_eq!(
        dev(open, 0).encode(Profile::Kxsvr).unwrap(),
        with_head(&[0x08, 0x03])
    );
    // A classic device that receives kxSvr's 14 bytes still opens the helmet lock.
    assert_eq!(
        DeviceControl::decode(id::OPEN_LOCK, &with_head(&[0x08, 0xA5]), Profile::Classic)
            .unwrap()
            .control,
        Control::OpenLock {
            flags: 0x08,
            voice: 0
        }
    );
}

#[test]
fn golden_2005_is_one_byte() {
    let headlight = Control::Lights { flags: 0x01 };
    for p in [Profile::Classic, Profile::Doc2025, Profile::Kxsvr] {
        assert_eq!(dev(headlight, 0).encode(p).unwrap(), with_head(&[0x01]));
        // 0x0100 (hazard) exists only in 4005's u16: no device profile can carry it.
        assert!(dev(Control::Lights { flags: 0x0100 }, 0).encode(p).is_err());
    }
}

#[test]
fn golden_400x_bodies() {
    let app = |control| AppControl {
        dev_id: 0x0000_07D1, // 2001
        dev_type: 2,
        time: 0x0000_0000_6600_0000,
        user_id: -1,
        control,
    };
    #[rustfmt::skip]
    let head: Vec<u8> = vec![
        0xD1, 0x07, 0, 0,                   // devId 2001
        0x02,                               // devtype
        0x00, 0x00, 0x00, 0x66, 0, 0, 0, 0, // timestamp
        0xFF, 0xFF, 0xFF, 0xFF,             // usrId -1
    ];
    let body = |tail: &[u8]| [head.as_slice(), tail].concat();
    // 4001: `KxAppDevCtrlOpenLock_OrMsg`, 24 bytes.
    assert_eq!(
        app(UNLOCK).encode(),
        body(&[0x3C, 0, 0x0A, 0x20, 0x4E, 0, 0])
    );
    // 4002: `KxAppDevCtrlLockDev_OrMsg`, 18 bytes.
    assert_eq!(app(Control::Lock { voice: 4 }).encode(), body(&[4]));
    // 4004: `KxAppDevCtrlElecLock_OrMsg`, lockFlag and warningVoice, 19 bytes.
    assert_eq!(
        app(Control::OpenLock { flags: 2, voice: 1 }).encode(),
        body(&[2, 1])
    );
    // 4003 and 4005 as the server document has them (docs/protocols/kingxun.md,
    // "4001–4005 commands through a server"; sent only to servers that carry them out).
    assert_eq!(
        app(Control::Guard {
            power: 0xFF,
            max_speed: 0x0235,
            voice: 0
        })
        .encode(),
        body(&[0xFF, 0x35, 0x02, 0])
    );
    assert_eq!(
        app(Control::Lights { flags: 0x0100 }).encode(),
        body(&[0x00, 0x01])
    );
    for c in [UNLOCK, Control::Lock { voice: 4 }] {
        assert_eq!(
            AppControl::decode(c.app_msg_id(), &app(c).encode()).unwrap(),
            app(c)
        );
    }
}

#[test]
fn legacy_and_odd_registrations() {
    #[rustfmt::skip]
    let legacy: Vec<u8> = vec![
        0xE8, 0x07, 0x0A, 0x01, 0x0C, 0x00, 0x00, // 2024-10-01 12:00:00
        0x01, 0, 0, 0,                            // DevHwVersion 1
        0x05, 0x01, 0, 0,                         // DevSoftVersion 0x105
        0x02, 0, 0, 0,                            // motorCtrlHWVer 2
        0x03, 0, 0, 0,                            // motorCtrlSoftVer 3
    ];
    assert_eq!(legacy.len(), 23);
    let r = Register::decode_lenient(&legacy);
    assert_eq!(r.version_count, 4);
    assert_eq!(r.software_version(), Some(0x105));
    assert!(
        Register::decode(&legacy).is_err(),
        "not the full 31-byte body"
    );
    assert_eq!(Register::decode_lenient(&[]).software_version(), None);
    assert_eq!(Register::decode_lenient(&legacy[..10]).version_count, 0);
}

fn event_at(month: u8, millis: u16) -> DevEvent {
    DevEvent {
        time: LocalTime {
            year: 2025,
            month,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        },
        millis,
        kind: 10,
        user_id: 0,
        speed: 0,
        lng: 0.0,
        lat: 0.0,
    }
}

#[test]
fn events_must_be_exactly_their_count() {
    let two = Events {
        events: vec![event_at(1, 1), event_at(2, 2)],
    }
    .encode();
    assert_eq!(two.len(), 1 + 2 * EVENT_LEN);
    assert_eq!(Events::decode(&two).unwrap().events.len(), 2);
    // One byte more or less than count × 32: refused, not cut.
    let mut long = two.clone();
    long.push(0);
    assert!(matches!(
        Events::decode(&long),
        Err(BodyError::Length {
            expected: 65,
            found: 66,
            ..
        })
    ));
    assert!(matches!(
        Events::decode(&two[..64]),
        Err(BodyError::Length { .. })
    ));
    // A count that promises more than is there.
    let mut lying = two.clone();
    lying[0] = 3;
    assert!(Events::decode(&lying).is_err());
    // Impossible dates and milliseconds.
    let month_13 = Events {
        events: vec![event_at(13, 0)],
    }
    .encode();
    assert!(matches!(
        Events::decode(&month_13),
        Err(BodyError::BadTime { .. })
    ));
    let ms = Events {
        events: vec![event_at(1, 1000)],
    }
    .encode();
    assert!(matches!(Events::decode(&ms), Err(BodyError::Range { .. })));
    assert_eq!(DevEvent::type_name(10), "tipped_over_riding");
    assert_eq!(DevEvent::type_name(1), "proximity_unlock");
    assert_eq!(DevEvent::type_name(11), "key_unlock");
    assert_eq!(DevEvent::type_name(12), "key_lock");
    assert_eq!(DevEvent::type_name(13), "ride_started");
}

#[test]
fn status_must_be_exactly_its_series_count() {
    let s = Status {
        dev_type: 1,
        protocol: 1,
        lng: 0.0,
        lat: 0.0,
        mileage: 0,
        driving: false,
        speed: 0,
        lock: 0,
        light: 0,
        sensor: 0,
        brake: 0,
        mini_battery: None,
        battery: None,
    };
    let body = s.encode();
    assert!(Status::decode(&body).is_ok());
    // kxSvr's struct always carries one series slot: 4 spare bytes with a count of 0 pass.
    let mut with_slot = body.clone();
    with_slot.extend_from_slice(&[0; 4]);
    assert!(Status::decode(&with_slot).is_ok());
    let mut junk = body.clone();
    junk.extend_from_slice(&[0; 3]);
    assert!(matches!(
        Status::decode(&junk),
        Err(BodyError::Length { .. })
    ));
}

#[test]
fn connect_answer_with_crypt_flag_zero_is_decrypted() {
    // kxSvr's 9001 answer: encrypted, CryptFlag 0 (KxLogicSys.cc `WebSvrRegMsgCallBack`).
    let key = [0x11; 16];
    let iv0 = [0x22; 16];
    let ack = WebConnectAck {
        session_id: 0xFD00_0001,
        iv: [9; 16],
        time: 1_700_000_000,
    };
    let sealed = crypto::encrypt(&key, &iv0, &ack.encode());
    let frame = Frame::response(id::WEB_CONNECT, 1, 0, false, Bytes::from(sealed));
    assert_eq!(
        vehicle2mqtt::connectors::kingxun::open_connect_ack(&key, &iv0, &frame),
        Some(ack.clone())
    );
    // The old reading (trust the flag, parse ciphertext) would have taken garbage.
    assert_ne!(WebConnectAck::decode(&frame.body).ok(), Some(ack.clone()));
    // A plain 28-byte answer flagged plain still works; a wrong key never does.
    let plain = Frame::response(id::WEB_CONNECT, 1, 0, false, Bytes::from(ack.encode()));
    assert_eq!(
        vehicle2mqtt::connectors::kingxun::open_connect_ack(&key, &iv0, &plain),
        Some(ack)
    );
    let wrong = Frame::response(id::WEB_CONNECT, 1, 0, true, frame.body.clone());
    assert_eq!(
        vehicle2mqtt::connectors::kingxun::open_connect_ack(&[0; 16], &iv0, &wrong),
        None
    );
}

#[test]
fn unset_response_crc_is_accepted_only_where_asked_and_only_for_responses() {
    let mut resp = Frame::response(id::APP_UNLOCK, 5, 0, false, Bytes::new()).to_bytes();
    resp[13] = 0;
    resp[14] = 0;
    assert!(Header::parse(&resp).is_err());
    assert!(Header::parse_with(&resp, true).unwrap().is_some());
    let mut req = Frame::request(id::STATUS, 5, 1, 2, false, Bytes::new()).to_bytes();
    req[13] = 0;
    req[14] = 0;
    assert!(
        Header::parse_with(&req, true).is_err(),
        "requests always need their CRC"
    );
}

#[test]
fn trips_get_their_own_larger_limit() {
    let mut codec = KxCodec::new(4096);
    let mut buf = long_request_header(id::TRIP, true);
    assert!(
        codec.decode(&mut buf).unwrap().is_none(),
        "a long trip waits for its body"
    );
    let mut buf = long_request_header(id::STATUS, false);
    assert!(
        codec.decode(&mut buf).is_err(),
        "anything else that long closes the link"
    );
}
