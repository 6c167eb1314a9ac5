//! kingxun codec: golden vectors worked out by hand from the layouts, round-trip
//! property tests, and full encrypted frames through the codec.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use vehicle2mqtt::protocol::kingxun::crypto;
use vehicle2mqtt::protocol::kingxun::*;

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
fn golden_unlock_and_lights_bodies() {
    let unlock = DeviceControl {
        svr_time: 0x0000_0000_6600_0000,
        session_id: 7,
        user_id: 9,
        control: Control::Unlock {
            allow_min: 60,
            lowest_soc: 10,
            farthest_m: 20_000,
        },
    };
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        0x00, 0x00, 0x00, 0x66, 0, 0, 0, 0, // svrtime
        0x07, 0, 0, 0,                      // devSessionId
        0x09, 0, 0, 0,                      // usrId
        0x3C, 0x00,                         // allowTime 60 min
        0x0A,                               // lowestSocP 10 %
        0x20, 0x4E, 0, 0,                   // farthestDist 20000 m
    ];
    assert_eq!(unlock.encode(), expected);
    assert_eq!(
        DeviceControl::decode(id::UNLOCK, &expected).unwrap(),
        unlock
    );
    let lights = DeviceControl {
        svr_time: 1,
        session_id: 2,
        user_id: 0,
        control: Control::Lights { flags: 0x0100 },
    };
    assert_eq!(
        lights.encode(),
        vec![1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0x00, 0x01]
    );
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
    let full = Register::default().encode();
    for cut in 0..full.len() {
        assert!(
            matches!(Register::decode(&full[..cut]), Err(BodyError::Short { .. })),
            "cut {cut}"
        );
    }
    // A trip claiming four billion points is refused before allocating.
    let mut trip = Trip {
        start: LocalTime::default(),
        start_lng: 0.0,
        start_lat: 0.0,
        end: LocalTime::default(),
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
        Err(BodyError::Short { what: "points", .. })
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
    .encode();
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
        DeviceControl::decode(id::LOCK, &back).unwrap().control,
        Control::Lock { voice: 1 }
    );
}

fn arb_time() -> impl Strategy<Value = LocalTime> {
    (
        any::<u16>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(year, month, day, hour, minute, second)| LocalTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
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
        let dev = DeviceControl { svr_time: t, session_id: s, user_id: if matches!(c, Control::Unlock { .. }) { u } else { 0 }, control: c };
        prop_assert_eq!(DeviceControl::decode(c.device_msg_id(), &dev.encode()).unwrap(), dev);
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
        let _ = DeviceControl::decode(m + 1000, &data);
        let _ = crypto::decrypt(&[0; 16], &[0; 16], &data);
        let mut codec = KxCodec::new(256);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
}
