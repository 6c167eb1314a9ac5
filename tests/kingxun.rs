//! kingxun device server end to end: simulated and hand-driven devices over real TCP,
//! the bridge in-process, a real mosquitto.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::kingxun::RawDevice;
use common::{Mosquitto, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::config::{Config, Secret};
use vehicle2mqtt::connector::Connector;
use vehicle2mqtt::connectors::kingxun::sim::{derive_key, SimOptions, SimStats};
use vehicle2mqtt::connectors::kingxun::{KingxunConnector, KingxunDevice};
use vehicle2mqtt::protocol::kingxun::*;

const T: Duration = Duration::from_secs(10);
const SEED: u64 = 77;

use common::ConnectorBridge as Bridge;

impl Bridge {
    /// A kingxun device server knowing devices 1001–1003 (keys derived from `SEED`).
    async fn start(broker: &Mosquitto, tweak: impl FnOnce(&mut Config)) -> Bridge {
        Bridge::start_with(broker, |config, port| {
            config.upstreams.kingxun.enabled = true;
            config.upstreams.kingxun.listen = format!("127.0.0.1:{port}").parse().unwrap();
            config.upstreams.kingxun.devices = (1001..=1003)
                .map(|id| KingxunDevice {
                    overspeed_kmh: None,
                    id,
                    key: Secret::new(hex::encode(derive_key(SEED, id))),
                    name: Some(format!("Scooter {id}")),
                    profile: None,
                    accept_plain_frames: None,
                })
                .collect();
            tweak(config);
            config
                .upstreams
                .kingxun
                .validate()
                .expect("valid test config");
            let direct = !config.upstreams.kingxun.devices.is_empty();
            (
                Box::new(KingxunConnector::new(config.upstreams.kingxun.clone()))
                    as Box<dyn Connector>,
                direct,
            )
        })
        .await
    }

    fn simulate(&self, devices: usize, answer: bool) -> (Arc<SimStats>, CancellationToken) {
        let opts = SimOptions {
            server: format!("127.0.0.1:{}", self.port),
            devices,
            first_id: 1001,
            key_seed: SEED,
            interval: Duration::from_millis(300),
            trip_every: 3,
            answer_commands: answer,
            stamp: false,
            profile: Profile::Classic,
            plain_status: false,
            drive: None,
        };
        let stats = Arc::new(SimStats::default());
        let stop = CancellationToken::new();
        tokio::spawn(vehicle2mqtt::connectors::kingxun::sim::run(
            opts,
            stats.clone(),
            stop.clone(),
        ));
        (stats, stop)
    }
}

fn parked_status() -> Status {
    Status {
        dev_type: 1,
        protocol: 1,
        lng: 121.4737,
        lat: 31.2304,
        mileage: 12_345,
        driving: false,
        speed: 0,
        lock: 0,
        light: 0,
        sensor: 0x02,
        brake: 0,
        mini_battery: None,
        battery: Some(Battery {
            charging: true,
            id: "B1".into(),
            soc: 55,
            voltage_cv: 5120,
            temp_cc: 2450,
            cycles: 7,
            soh: 99,
            current_flag: 2,
            current_ca: 300,
            cells: vec![Cell {
                voltage_cv: 350,
                temp_cc: Some(2500),
            }],
        }),
    }
}

#[tokio::test]
async fn simulated_device_unlocks_end_to_end() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#"), "homeassistant/#"]).await;
    let (_stats, stop) = bridge.simulate(1, true);
    let state = probe
        .wait_for("state", T, |m| {
            m.topic == bridge.topic("kx1001/state") && m.json()["lock"] == "LOCKED"
        })
        .await
        .json();
    assert_eq!(state["battery_level"], 90);
    assert_eq!(state["kickstand"], true);
    assert_eq!(state["attributes"]["cell_voltages"][0], 3.3);
    let lock_topic = format!("homeassistant/lock/{}/kx1001_lock/config", bridge.base);
    let lock_doc = probe
        .wait_for("model", T, |m| {
            m.topic == lock_topic && m.json()["device"]["model"] == "E-motor"
        })
        .await
        .json();
    assert_eq!(lock_doc["device"]["sw_version"], "1.2.3");
    assert_eq!(lock_doc["device"]["name"], "Scooter 1001");
    assert_eq!(lock_doc["device"]["model"], "E-motor");
    probe
        .wait_topic(
            &format!(
                "homeassistant/select/{}/kx1001_guard_power/config",
                bridge.base
            ),
            T,
        )
        .await;
    // Cell voltages reach HA as attributes of the battery sensor.
    let battery = probe
        .wait_topic(
            &format!(
                "homeassistant/sensor/{}/kx1001_battery_level/config",
                bridge.base
            ),
            T,
        )
        .await
        .json();
    assert_eq!(
        battery["json_attributes_topic"],
        bridge.topic("kx1001/state")
    );
    probe
        .wait_for("online", T, |m| {
            m.topic == bridge.topic("kx1001/availability") && m.text() == "online"
        })
        .await;

    probe
        .publish(
            &bridge.topic("kx1001/lock/set"),
            r#"{"action":"UNLOCK","id":"u1"}"#,
            false,
        )
        .await;
    let r = probe
        .wait_for("result", T, |m| {
            m.topic == bridge.topic("kx1001/command/result")
        })
        .await
        .json();
    assert_eq!(
        (r["id"].as_str(), r["status"].as_str()),
        (Some("u1"), Some("succeeded")),
        "{r}"
    );
    // The device's own next 1002 shows it unlocked and riding.
    probe
        .wait_for("device-reported unlock", T, |m| {
            m.topic == bridge.topic("kx1001/state")
                && m.json()["lock"] == "UNLOCKED"
                && m.json()["driving"] == true
        })
        .await;
    // A trip arrives as sensors and an event.
    let trip = probe
        .wait_for("trip", T, |m| {
            m.topic == bridge.topic("kx1001/event") && m.json()["event_type"] == "trip"
        })
        .await;
    assert_eq!(trip.json()["distance_km"], 1.2);
    probe
        .wait_for("trip sensor", T, |m| {
            m.topic == bridge.topic("kx1001/state") && m.json()["last_trip_distance"] == 1.2
        })
        .await;

    // Guard power before any max speed is known: refused, never a 2003 with maxSpeed 0.
    probe
        .publish(
            &bridge.topic("kx1001/guard_power/set"),
            r#"{"action":"200W","id":"g0"}"#,
            false,
        )
        .await;
    let r = probe
        .wait_for("guard refused", T, |m| {
            m.topic == bridge.topic("kx1001/command/result") && m.json()["id"] == "g0"
        })
        .await
        .json();
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("max speed"), "{r}");
    // Speed limit, then guard power: 2003s, and the select/number show the new values.
    probe
        .publish(&bridge.topic("kx1001/max_speed/set"), "25", false)
        .await;
    probe
        .wait_for("speed", T, |m| {
            m.topic == bridge.topic("kx1001/state") && m.json()["max_speed"] == 25
        })
        .await;
    probe
        .publish(&bridge.topic("kx1001/guard_power/set"), "200W", false)
        .await;
    probe
        .wait_for("guard", T, |m| {
            m.topic == bridge.topic("kx1001/state") && m.json()["guard_power"] == "200W"
        })
        .await;
    stop.cancel();
    bridge.stop().await;
}

#[tokio::test]
async fn silent_device_times_out_and_absent_device_is_offline() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.upstreams.kingxun.command_timeout = Duration::from_millis(700)
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    let (_stats, stop) = bridge.simulate(1, false);
    probe.wait_topic(&bridge.topic("kx1001/state"), T).await;
    probe
        .publish(&bridge.topic("kx1001/open_seat/set"), "PRESS", false)
        .await;
    let r = probe
        .wait_for("timeout", T, |m| {
            m.topic == bridge.topic("kx1001/command/result")
        })
        .await
        .json();
    assert_eq!(r["status"], "timeout", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("did not answer"));
    // 1002 is configured but never connected: `failed` "offline" at once (a wait for the
    // device would end as `timeout` instead).
    probe
        .publish(&bridge.topic("kx1002/lock/set"), "LOCK", false)
        .await;
    let r = probe
        .wait_for("offline", T, |m| {
            m.topic == bridge.topic("kx1002/command/result")
        })
        .await
        .json();
    assert_eq!(
        (r["status"].as_str(), r["reason"].as_str()),
        (Some("failed"), Some("offline"))
    );
    stop.cancel();
    bridge.stop().await;
}

/// Issue #13: an unauthenticated peer cannot tell a configured device id from an unknown
/// one. Both registrations are answered alike (code 0, a session and an IV); a plain and
/// a sealed status get the same answers; nothing either says is published.
#[tokio::test]
async fn unknown_and_known_ids_look_alike_to_a_peer_without_the_key() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    let mut answers = Vec::new();
    for dev_id in [9999, 1001] {
        let mut d = RawDevice::register(bridge.port, SEED, dev_id)
            .await
            .unwrap_or_else(|code| panic!("{dev_id} refused with {code}"));
        // Neither peer holds the key: 9999 has none, and this one is not 1001's.
        d.key = [0x42; 16];
        let plain = d.request(id::STATUS, false, vec![0u8; 40]).await;
        let plain = d.response(plain).await;
        let sealed = d.request(id::STATUS, true, vec![0u8; 40]).await;
        let sealed = d.response(sealed).await;
        answers.push((plain.0, plain.1.len(), sealed.0, sealed.1.len()));
    }
    assert_eq!(
        answers[0], answers[1],
        "unknown vs known id answered differently"
    );
    assert_eq!(answers[0].0, 0, "a plain status is answered as usual");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published: Vec<String> = probe
        .messages()
        .iter()
        .filter(|m| m.topic.contains("kx9999") || m.topic.ends_with("kx1001/state"))
        .map(|m| m.topic.clone())
        .collect();
    assert!(published.is_empty(), "published: {published:?}");
    // The operator still learns of the unknown device (a counter and a log line).
    probe
        .wait_for("unknown_devices counted", T, |m| {
            m.topic == bridge.topic("bridge/info")
                && m.json()["connectors"][0]["counters"]["unknown_devices"].as_u64() >= Some(1)
        })
        .await;
    bridge.stop().await;
}

#[tokio::test]
async fn requests_get_responses_and_become_state_and_events() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| c.upstreams.kingxun.range_full_km = 80.0).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("kx1002/#")]).await;
    let mut d = RawDevice::register(bridge.port, SEED, 1002).await.unwrap();
    // 1002 encrypted (CryptFlag honoured even where devices usually send plain).
    let seq = d.request(id::STATUS, true, parked_status().encode()).await;
    assert_eq!(d.response(seq).await.0, 0);
    let s = probe
        .wait_topic(&bridge.topic("kx1002/state"), T)
        .await
        .json();
    assert_eq!(s["odometer"], 123.45);
    assert_eq!(s["battery_level"], 55);
    assert_eq!(s["battery_current"], -3.0, "charging current is negative");
    assert_eq!(s["charging"], true);
    assert_eq!(s["lock"], "LOCKED");
    // 1004 data used, 1005 range answer.
    let seq = d
        .request(
            id::TRAFFIC,
            false,
            Traffic {
                dev_type: 1,
                protocol: 1,
                used_kib: 2048,
            }
            .encode(),
        )
        .await;
    assert_eq!(d.response(seq).await.0, 0);
    probe
        .wait_for("data used", T, |m| {
            m.topic == bridge.topic("kx1002/state") && m.json()["data_used"] == 2
        })
        .await;
    let seq = d
        .request(
            id::RANGE,
            false,
            RangeQuery {
                dev_type: 1,
                battery_id: "B1".into(),
                soc: 50,
                voltage_cv: 5000,
            }
            .encode(),
        )
        .await;
    let (code, body) = d.response(seq).await;
    assert_eq!(code, 0);
    assert_eq!(RangeAnswer::decode(&body).unwrap().max_range_m, 80_000);
    probe
        .wait_for("range", T, |m| {
            m.topic == bridge.topic("kx1002/state") && m.json()["range"] == 40
        })
        .await;
    // 1012: tipped over while riding → event and the fallen sensor.
    let ev = Events {
        events: vec![DevEvent {
            time: LocalTime {
                year: 2024,
                month: 5,
                day: 6,
                hour: 7,
                minute: 8,
                second: 9,
            },
            millis: 250,
            kind: 8,
            user_id: 3,
            speed: 2000,
            lng: 121.4,
            lat: 31.2,
        }],
    };
    let seq = d.request(id::EVENTS, true, ev.encode()).await;
    assert_eq!(d.response(seq).await.0, 0);
    let e = probe
        .wait_for("event", T, |m| m.topic == bridge.topic("kx1002/event"))
        .await
        .json();
    assert_eq!(e["event_type"], "tipped_over");
    assert_eq!(
        e["time"], "2024-05-05T23:08:09.250Z",
        "device local time is Asia/Shanghai"
    );
    probe
        .wait_for("fallen", T, |m| {
            m.topic == bridge.topic("kx1002/state") && m.json()["fallen"] == true
        })
        .await;
    // 1010 charge finished.
    let charge = ChargeDone {
        start: LocalTime {
            year: 2024,
            month: 5,
            day: 6,
            hour: 1,
            minute: 0,
            second: 0,
        },
        lng: 121.4,
        lat: 31.2,
        end: LocalTime {
            year: 2024,
            month: 5,
            day: 6,
            hour: 3,
            minute: 0,
            second: 0,
        },
        max_current_ca: 500,
        soc_begin: 20,
        soc_end: 100,
        voltage_begin_cv: 4800,
        voltage_end_cv: 5400,
    };
    let seq = d.request(id::CHARGE_DONE, true, charge.encode()).await;
    assert_eq!(d.response(seq).await.0, 0);
    probe
        .wait_for("charge", T, |m| {
            m.topic == bridge.topic("kx1002/event") && m.json()["event_type"] == "charge_finished"
        })
        .await;
    bridge.stop().await;
}

#[tokio::test]
async fn bad_input_costs_only_itself() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.upstreams.kingxun.max_body = 4096;
        c.upstreams.kingxun.read_timeout = Duration::from_millis(600);
        // This test is about bad input; trust plain frames so plain ones are published.
        c.upstreams.kingxun.accept_plain_frames = true;
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("kx1003/state")]).await;
    let mut d = RawDevice::register(bridge.port, SEED, 1003).await.unwrap();

    // A frame with a wrong header CRC is skipped; the next good frame is served.
    let mut corrupt = Frame::request(
        id::STATUS,
        1,
        1003,
        d.session_id,
        false,
        Bytes::from(parked_status().encode()),
    )
    .to_bytes();
    corrupt[14] ^= 0xFF;
    d.send_raw(&corrupt).await.unwrap();
    let seq = d.request(id::STATUS, false, parked_status().encode()).await;
    assert_eq!(
        d.response(seq).await.0,
        0,
        "the link survived the corrupt frame"
    );
    probe.wait_topic(&bridge.topic("kx1003/state"), T).await;

    // An undecryptable body, a body that decrypts with a wrong CRC, an unknown MsgId and a
    // wrong SessionId: each answered with RespCode 1; a truncated body with 6 (bad parameter).
    let seq = d
        .request(id::EVENTS, true, Events::default().encode())
        .await;
    let mut garbage_seq = seq + 1;
    d.send(Frame::request(
        id::EVENTS,
        garbage_seq,
        1003,
        d.session_id,
        true,
        Bytes::from(vec![7u8; 38]),
    ))
    .await;
    assert_eq!(d.response(seq).await.0, 0, "an empty event list is fine");
    assert_eq!(d.response(garbage_seq).await.0, 1);
    let mut sealed = crypto::encrypt(&d.key, &d.iv, &Events::default().encode());
    let n = sealed.len();
    sealed[n - 1] ^= 1;
    garbage_seq += 1;
    d.seq = garbage_seq;
    d.send(Frame::request(
        id::EVENTS,
        garbage_seq,
        1003,
        d.session_id,
        true,
        Bytes::from(sealed),
    ))
    .await;
    assert_eq!(d.response(garbage_seq).await.0, 1, "bad plain CRC");
    let seq = d.request(id::STATUS, false, vec![1, 2, 3]).await;
    assert_eq!(d.response(seq).await.0, 6, "truncated 1002");
    let seq = d.request(1777, false, vec![]).await;
    assert_eq!(d.response(seq).await.0, 1, "unknown MsgId");
    d.seq += 1;
    let seq = d.seq;
    d.send(Frame::request(
        id::STATUS,
        seq,
        1003,
        d.session_id ^ 1,
        false,
        Bytes::from(parked_status().encode()),
    ))
    .await;
    assert_eq!(d.response(seq).await.0, 1, "wrong SessionId");
    let seq = d.request(id::STATUS, false, parked_status().encode()).await;
    assert_eq!(d.response(seq).await.0, 0, "and the link still works");

    // Bodies this bridge cannot read, from the right session, never end the link (newer
    // firmware may send MsgIds or layouts it does not know): 30 of each in a row.
    for _ in 0..30 {
        let seq = d.request(1777, false, vec![]).await;
        assert_eq!(d.response(seq).await.0, 1, "unknown MsgId");
        let seq = d.request(id::STATUS, false, vec![1, 2, 3]).await;
        assert_eq!(d.response(seq).await.0, 6, "truncated 1002");
    }
    let seq = d.request(id::STATUS, false, parked_status().encode()).await;
    assert_eq!(
        d.response(seq).await.0,
        0,
        "the link survived unreadable bodies"
    );

    // Half a header, then silence: closed after read_timeout.
    let half =
        &Frame::request(id::STATUS, 9, 1003, d.session_id, false, Bytes::new()).to_bytes()[..7];
    d.send_raw(half).await.unwrap();
    assert!(
        d.recv().await.is_none(),
        "a stalled partial frame must close the link"
    );

    // An oversized MsgBodyLen closes the link without allocating it.
    let mut d = RawDevice::register(bridge.port, SEED, 1003).await.unwrap();
    let mut header = Vec::new();
    Header {
        msg_id: id::STATUS,
        seq: 1,
        body_len: 10_000_000,
        crypt: false,
        kind: Kind::Request {
            dev_id: 1003,
            session_id: d.session_id,
        },
    }
    .write(&mut header);
    d.send_raw(&header).await.unwrap();
    assert!(
        d.recv().await.is_none(),
        "oversized length must close the link"
    );

    // The server goes on: a new registration works.
    assert!(RawDevice::register(bridge.port, SEED, 1003).await.is_ok());
    // Every kind of bad input was counted, and bridge/info shows it.
    let info = Probe::connect(broker.port, &[&bridge.topic("bridge/info")]).await;
    let c = info
        .wait_for("counters", T, |m| {
            m.json()["connectors"][0]["counters"]["oversized"] == 1
        })
        .await
        .json()["connectors"][0]["counters"]
        .clone();
    for key in [
        "bad_headers",
        "decrypt_failures",
        "bad_bodies",
        "unknown_msgs",
        "bad_sessions",
        "stalled",
    ] {
        assert!(c[key].as_u64().unwrap_or(0) >= 1, "{key} not counted: {c}");
    }
    bridge.stop().await;
}

#[tokio::test]
async fn max_links_and_idle_timeout() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.upstreams.kingxun.max_links = 2;
        c.upstreams.kingxun.idle_timeout = Duration::from_millis(800);
        c.upstreams.kingxun.accept_plain_frames = true;
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("kx1001/availability")]).await;
    let a = RawDevice::register(bridge.port, SEED, 1001).await.unwrap();
    probe.wait_for("online", T, |m| m.text() == "online").await;
    let _b = RawDevice::connect(bridge.port).await;
    let mut c = RawDevice::connect(bridge.port).await;
    let _ = c.write_all(&[0u8; 4]).await;
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(T, c.read(&mut byte))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0, "the third link must be refused");
    // Device 1001 says nothing: offline after idle_timeout.
    probe
        .wait_for("offline", T, |m| m.text() == "offline")
        .await;
    drop(a);
    bridge.stop().await;
}

#[tokio::test]
async fn registration_forks_and_malformed_bodies() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let info = Probe::connect(broker.port, &[&bridge.topic("bridge/info")]).await;

    // A first frame that is not a 1001: refused with 6 (bad parameter), never 1 or 2.
    let mut stranger = RawDevice::on(RawDevice::connect(bridge.port).await, SEED, 1001, 1);
    let seq = stranger
        .request(id::STATUS, false, parked_status().encode())
        .await;
    assert_eq!(stranger.response(seq).await.0, 6);

    // The 23-byte body of firmware before October 2024 registers.
    let mut d = RawDevice::on(RawDevice::connect(bridge.port).await, SEED, 1001, 1);
    let legacy = Register {
        versions: [1, 0x0001_0203, 3, 4, 0, 0],
        version_count: 4,
        ..Default::default()
    }
    .encode();
    assert_eq!(legacy.len(), 23);
    d.send(Frame::request(
        id::REGISTER,
        1,
        1001,
        0,
        false,
        Bytes::from(legacy),
    ))
    .await;
    let (code, body) = d.response(1).await;
    assert_eq!(code, 0, "legacy 1001 accepted");
    let first = RegisterAck::decode(&body).unwrap();
    d.session_id = first.session_id;
    d.iv = first.iv;
    let seq = d.request(id::STATUS, true, parked_status().encode()).await;
    assert_eq!(d.response(seq).await.0, 0);

    // A repeated 1001 on the live link: same session, fresh IV; the old IV stops working.
    d.send(Frame::request(
        id::REGISTER,
        50,
        1001,
        d.session_id,
        false,
        Bytes::new(),
    ))
    .await;
    let (code, body) = d.response(50).await;
    assert_eq!(code, 0);
    let again = RegisterAck::decode(&body).unwrap();
    assert_eq!(again.session_id, first.session_id);
    assert_ne!(again.iv, first.iv);
    let seq = d.request(id::STATUS, true, parked_status().encode()).await;
    assert_eq!(d.response(seq).await.0, 1, "sealed with the old IV");
    d.iv = again.iv;
    let seq = d.request(id::STATUS, true, parked_status().encode()).await;
    assert_eq!(d.response(seq).await.0, 0, "sealed with the new IV");
    // A 1001 for another id on this link is refused with 4 and changes nothing.
    d.send(Frame::request(
        id::REGISTER,
        51,
        1002,
        d.session_id,
        false,
        Bytes::new(),
    ))
    .await;
    assert_eq!(d.response(51).await.0, 4);

    // A 1012 one byte longer than its count of 32-byte events: 6, counted, no event.
    let one = Events {
        events: vec![DevEvent {
            time: LocalTime {
                year: 2025,
                month: 1,
                day: 2,
                hour: 3,
                minute: 4,
                second: 5,
            },
            millis: 0,
            kind: 10,
            user_id: 0,
            speed: 0,
            lng: 0.0,
            lat: 0.0,
        }],
    };
    let mut long = one.encode();
    long.push(0);
    let seq = d.request(id::EVENTS, true, long).await;
    assert_eq!(d.response(seq).await.0, 6);
    // The same event, well formed: 10 is "tipped over while riding" and sets `fallen`.
    let probe = Probe::connect(broker.port, &[&bridge.topic("kx1001/#")]).await;
    let seq = d.request(id::EVENTS, true, one.encode()).await;
    assert_eq!(d.response(seq).await.0, 0);
    let e = probe
        .wait_for("event", T, |m| m.topic == bridge.topic("kx1001/event"))
        .await
        .json();
    assert_eq!(e["event_type"], "tipped_over_riding");
    probe
        .wait_for("fallen", T, |m| {
            m.topic == bridge.topic("kx1001/state") && m.json()["fallen"] == true
        })
        .await;
    assert_eq!(
        probe
            .messages()
            .iter()
            .filter(|m| m.topic == bridge.topic("kx1001/event"))
            .count(),
        1,
        "the malformed 1012 published nothing"
    );
    info.wait_for("bad bodies counted", T, |m| {
        m.json()["connectors"][0]["counters"]["bad_bodies"] == 2
    })
    .await;
    bridge.stop().await;
}

/// The impostor (#13): someone who knows a device id registers as it and sends plain
/// frames. Nothing they say is published, the owner's link is not displaced, and the
/// owner's commands keep going to the real device; a link that proves the key (a frame
/// sealed with the device's key and its session IV) takes over as before.
#[tokio::test]
async fn an_impostor_without_the_key_changes_nothing() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let probe = Probe::connect(
        broker.port,
        &[&bridge.topic("kx1001/#"), &bridge.topic("bridge/info")],
    )
    .await;
    // The real device: registers, proves its key with a sealed 1002.
    let mut real = RawDevice::register(bridge.port, SEED, 1001).await.unwrap();
    let seq = real
        .request(id::STATUS, true, parked_status().encode())
        .await;
    assert_eq!(real.response(seq).await.0, 0);
    probe
        .wait_for("online", T, |m| {
            m.topic == bridge.topic("kx1001/availability") && m.text() == "online"
        })
        .await;
    let real_state = probe
        .wait_for("real state", T, |m| m.topic == bridge.topic("kx1001/state"))
        .await
        .json();

    // The impostor: right id, no key. It registers and sends a forged plain 1002.
    probe.clear();
    let mut fake = RawDevice::register(bridge.port, SEED, 1001).await.unwrap();
    let mut forged = parked_status();
    forged.lat = 10.0;
    forged.lng = 10.0;
    forged.lock = 0x01; // "unlocked"
    let seq = fake.request(id::STATUS, false, forged.encode()).await;
    assert_eq!(
        fake.response(seq).await.0,
        0,
        "answered as usual: it learns nothing"
    );
    // A sealed frame with a wrong key proves nothing either.
    fake.key = [0x55; 16];
    let seq = fake.request(id::STATUS, true, forged.encode()).await;
    assert_eq!(fake.response(seq).await.0, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for m in probe.messages() {
        if m.topic == bridge.topic("kx1001/state") {
            let s = m.json();
            assert_ne!(s["latitude"], 10.0, "a forged position was published: {s}");
            assert_eq!(
                s["lock"], real_state["lock"],
                "a forged lock state was published"
            );
        }
        assert!(
            !(m.topic == bridge.topic("kx1001/availability") && m.text() == "offline"),
            "the impostor knocked the real device offline"
        );
    }

    // The owner's LOCK goes to the real device, not to the impostor.
    probe
        .publish(
            &bridge.topic("kx1001/lock/set"),
            r#"{"action":"LOCK","id":"l"}"#,
            false,
        )
        .await;
    let cmd = real.recv().await.expect("the real device gets the command");
    assert_eq!(cmd.header.msg_id, id::LOCK);
    real.send(Frame::response(
        id::LOCK,
        cmd.header.seq,
        0,
        false,
        Bytes::new(),
    ))
    .await;
    let r = probe
        .wait_for("lock result", T, |m| {
            m.topic == bridge.topic("kx1001/command/result")
                && m.json()["id"] == "l"
                && m.json()["status"] != "accepted"
        })
        .await
        .json();
    assert_eq!(r["status"], "succeeded");
    let c = probe
        .wait_for("counted", T, |m| {
            m.topic == bridge.topic("bridge/info")
                && m.json()["connectors"][0]["counters"]["unproven_frames"].as_u64() >= Some(1)
        })
        .await;
    assert!(c.json()["connectors"][0]["counters"]["decrypt_failures"].as_u64() >= Some(1));
    drop(fake);
    bridge.stop().await;
}

/// One address cannot take every slot: past `max_links_per_address` its links are closed
/// at once (and counted), while a device from another address still registers.
#[tokio::test]
async fn one_address_cannot_take_every_link() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.upstreams.kingxun.max_links = 50;
        c.upstreams.kingxun.max_links_per_address = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(RawDevice::connect(bridge.port).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = RawDevice::connect(bridge.port).await;
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(T, fourth.read(&mut byte))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0, "a fourth link from one address was kept");

    // Another loopback address is another peer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket
        .connect(format!("127.0.0.1:{}", bridge.port).parse().unwrap())
        .await
        .unwrap();
    let mut other = RawDevice::on(stream, SEED, 1002, 1);
    other
        .send(Frame::request(
            id::REGISTER,
            1,
            1002,
            0,
            false,
            Bytes::from(Register::default().encode()),
        ))
        .await;
    let ack = other.recv().await.expect("registered from another address");
    assert!(matches!(ack.header.kind, Kind::Response { resp_code: 0 }));

    let info = Probe::connect(broker.port, &[&bridge.topic("bridge/info")]).await;
    info.wait_for("links_refused counted", T, |m| {
        m.json()["connectors"][0]["counters"]["links_refused"] == 1
    })
    .await;
    drop(held);
    bridge.stop().await;
}

/// Forty devices link at once with discovery on, through an MQTT client queue of 20 (a
/// retry queue of 1 000): about 2 400 documents cannot all wait. The bridge builds a
/// vehicle's documents when there is room and drops none; it used to drop the oldest
/// once its retry queue was full, and HA missed those entities until its next restart
/// (measured at 10 000 devices: 131 072 documents dropped).
#[tokio::test]
async fn a_link_storm_with_discovery_drops_no_document() {
    const N: u32 = 40;
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.mqtt.queue_capacity = 20;
        c.upstreams.kingxun.devices = (1001..1001 + N)
            .map(|id| KingxunDevice {
                overspeed_kmh: None,
                id,
                key: Secret::new(hex::encode(derive_key(SEED, id))),
                name: None,
                profile: None,
                accept_plain_frames: None,
            })
            .collect();
    })
    .await;
    let prefix = "homeassistant/";
    let probe = Probe::connect(
        broker.port,
        &["homeassistant/#", &bridge.topic("bridge/info")],
    )
    .await;
    let (_stats, stop) = bridge.simulate(N as usize, false);
    let per_device = |probe: &Probe| {
        let mut counts =
            std::collections::BTreeMap::<u32, std::collections::BTreeSet<String>>::new();
        for m in probe.messages() {
            let Some(rest) = m.topic.strip_prefix(prefix) else {
                continue;
            };
            if !rest.contains(&format!("/{}/", bridge.base)) || m.payload.is_empty() {
                continue;
            }
            for id in 1001..1001 + N {
                if rest.contains(&format!("/kx{id}_")) {
                    counts.entry(id).or_default().insert(m.topic.clone());
                }
            }
        }
        counts.values().map(|s| s.len()).collect::<Vec<_>>()
    };
    // Settled: every device announced, and no new document for a while.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = (Vec::new(), std::time::Instant::now());
    loop {
        let now = per_device(&probe);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if last.0.len() == N as usize && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(std::time::Instant::now() < end, "not settled: {:?}", last.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = last.0;
    let most = counts.iter().copied().max().unwrap_or(0);
    assert!(
        most >= 20,
        "a kingxun device has a few dozen entities: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c == most),
        "some devices miss documents: {counts:?}"
    );
    let info = probe
        .messages()
        .into_iter()
        .rfind(|m| m.topic == bridge.topic("bridge/info"))
        .map(|m| m.json());
    let info = info.expect("bridge/info published");
    assert_eq!(info["dropped_publishes"], 0, "{info}");
    stop.cancel();
    bridge.stop().await;
}

/// Issue #26 on kingxun: a simulated device drives a known 556 m route through a zone and
/// reports the ride itself (1008), as real devices do. The bridge publishes that one
/// trip (none derived besides), logs it with `source: kingxun`, and works out the zone:
/// one `zone_enter` and one `zone_exit`.
#[tokio::test]
async fn a_kingxun_ride_is_the_devices_one_trip_and_one_zone_crossing() {
    use vehicle2mqtt::derive::ZoneConfig;
    use vehicle2mqtt::sim::{Drive, Route};
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.derive.trips.end_after = Duration::from_secs(10);
        c.derive.events.zone_dwell = Duration::from_secs(1);
        c.bridge.stale_after = Duration::from_secs(2); // the stale check ticks every 0.5 s
        c.derive.zones = vec![ZoneConfig {
            name: "crossing".into(),
            latitude: Some(31.2025),
            longitude: Some(121.4),
            radius_m: Some(100.0),
            polygon: None,
        }];
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    let route = Route::parse("[[31.2, 121.4], [31.205, 121.4]]").unwrap();
    let length_km = route.length_m() / 1000.0;
    let opts = SimOptions {
        server: format!("127.0.0.1:{}", bridge.port),
        devices: 1,
        first_id: 1001,
        key_seed: SEED,
        interval: Duration::from_millis(500),
        trip_every: 3,
        answer_commands: true,
        stamp: false,
        profile: Profile::Classic,
        plain_status: false,
        drive: Some(Arc::new(Drive {
            route,
            speed_kmh: 180.0,
            charge_for: None,
        })),
    };
    let stop = CancellationToken::new();
    let sim = tokio::spawn(vehicle2mqtt::connectors::kingxun::sim::run(
        opts,
        Arc::new(SimStats::default()),
        stop.clone(),
    ));
    let event = |m: &common::Msg, kind: &str| {
        m.topic == bridge.topic("kx1001/event") && m.json()["event_type"] == kind
    };
    let trip = probe
        .wait_for("the device's trip", Duration::from_secs(40), |m| {
            event(m, "trip")
        })
        .await
        .json();
    let km = trip["distance_km"].as_f64().unwrap();
    assert!(
        (km - length_km).abs() <= 0.02 * length_km,
        "{km} of {length_km}: {trip}"
    );
    probe
        .wait_for("the zone exit", Duration::from_secs(20), |m| {
            event(m, "zone_exit")
        })
        .await;
    // Past the bridge's end_after: a derived trip would be out by now.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let count = |kind: &str| probe.messages().iter().filter(|m| event(m, kind)).count();
    assert_eq!(
        (count("trip"), count("zone_enter"), count("zone_exit")),
        (1, 1, 1)
    );
    assert!(
        !probe
            .messages()
            .iter()
            .any(|m| m.topic == bridge.topic("kx1001/trip/last")),
        "no derived trip for a device that reports its own"
    );
    let (logged, _) =
        vehicle2mqtt::trip_log::read(bridge.state_dir(), "kx1001", None, 100).unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["source"], "kingxun");
    stop.cancel();
    let _ = sim.await;
    bridge.stop().await;
}
