//! iauto360 connector end to end: the fake platform over real HTTP (signed calls, event
//! pushes to the bridge's endpoint), the bridge in-process, a real mosquitto.

mod common;

use std::time::Duration;

use common::{ConnectorBridge as Bridge, Mosquitto, Probe};
use serde_json::{json, Value};
use vehicle2mqtt::config::{Config, Secret};
use vehicle2mqtt::connector::Connector;
use vehicle2mqtt::connectors::iauto360::sim::{Fail, FakeIauto360, FakeOptions, HOME};
use vehicle2mqtt::connectors::iauto360::{Iauto360Connector, Iauto360Device};

const T: Duration = Duration::from_secs(15);
const ESN: &str = "865432100012345";
const VID: &str = "ia865432100012345";

async fn fake() -> FakeIauto360 {
    FakeIauto360::start(FakeOptions::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("fake platform")
}

/// A bridge with the iauto360 connector on `platform`; with `push`, the event endpoint
/// listens on the harness's free port and the fake pushes there.
async fn start(
    broker: &Mosquitto,
    platform: &FakeIauto360,
    push: bool,
    tweak: impl FnOnce(&mut Config),
) -> Bridge {
    let url = platform.url();
    let bridge = Bridge::start_with(broker, move |config, port| {
        let c = &mut config.upstreams.iauto360;
        c.enabled = true;
        c.base_url = url;
        c.open_id = "OPEN123".into();
        c.secure_code = Secret::new("SECRETcode");
        c.devices = vec![Iauto360Device {
            overspeed_kmh: None,
            esn: ESN.into(),
            name: Some("Family car".into()),
            quiet_hours: None,
        }];
        c.poll_interval = Duration::from_secs(1);
        c.poll_interval_active = Some(Duration::from_secs(1));
        c.detail_interval = Duration::from_secs(1);
        if push {
            c.push_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
            c.push_max_body = 4096;
        }
        config.bridge.command_timeout = Duration::from_secs(4);
        tweak(config);
        config
            .upstreams
            .iauto360
            .validate()
            .expect("valid test config");
        (
            Box::new(
                Iauto360Connector::new(config.upstreams.iauto360.clone())
                    .with_state_dir(config.bridge.state_dir.clone()),
            ) as Box<dyn Connector>,
            push,
        )
    })
    .await;
    if push {
        platform.set_push_url(&format!("http://127.0.0.1:{}/iauto360/events", bridge.port));
    }
    bridge
}

async fn watch(broker: &Mosquitto, bridge: &Bridge) -> Probe {
    Probe::connect(broker.port, &[&bridge.topic("#"), "homeassistant/#"]).await
}

/// A bridge on a fresh fake platform, watched, after its first poll.
async fn running(broker: &Mosquitto, push: bool) -> (FakeIauto360, Bridge, Probe) {
    let platform = fake().await;
    let bridge = start(broker, &platform, push, |_| {}).await;
    let probe = watch(broker, &bridge).await;
    wait_state(&probe, &bridge, "first poll", |s| {
        s.get("odometer").is_some()
    })
    .await;
    (platform, bridge, probe)
}

async fn wait_state(
    probe: &Probe,
    bridge: &Bridge,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    probe
        .wait_for(what, T, |m| {
            m.topic == bridge.topic(&format!("{VID}/state")) && pred(&m.json())
        })
        .await
        .json()
}

async fn wait_result(probe: &Probe, bridge: &Bridge, id: &str, status: &str) -> Value {
    probe
        .wait_for(&format!("{id} {status}"), T, |m| {
            m.topic == bridge.topic(&format!("{VID}/command/result"))
                && m.json()["id"] == id
                && m.json()["status"] == status
        })
        .await
        .json()
}

async fn wait_event(probe: &Probe, bridge: &Bridge, event_type: &str) -> Value {
    probe
        .wait_for(event_type, T, |m| {
            m.topic == bridge.topic(&format!("{VID}/event")) && m.json()["event_type"] == event_type
        })
        .await
        .json()
}

#[tokio::test]
async fn every_service_lands_in_the_state_and_new_trips_become_events() {
    let broker = Mosquitto::start();
    let platform = fake().await;
    let bridge = start(&broker, &platform, false, |_| {}).await;
    let probe = watch(&broker, &bridge).await;

    let s = wait_state(&probe, &bridge, "every service", |s| {
        s.get("fuel_used_yesterday").is_some()
            && s.get("last_trip_distance").is_some()
            && s.get("tyre_warning").is_some()
            && s.get("inspection_due").is_some()
            && s["attributes"].get("health_check").is_some()
    })
    .await;
    // 1011: GCJ-02 converted back to where the car stands.
    assert!(
        (s["latitude"].as_f64().unwrap() - HOME.0).abs() < 1e-5,
        "{s}"
    );
    assert!(
        (s["longitude"].as_f64().unwrap() - HOME.1).abs() < 1e-5,
        "{s}"
    );
    assert_eq!(s["odometer"], 23456.7);
    assert_eq!(s["engine_running"], false);
    assert_eq!(s["fault_codes"], "none");
    assert_eq!(s["vin"], "LSGBL5334HF000001");
    // 1001, 1019, 1017, 1018, 1021, 3004, 1012.
    assert_eq!(s["plugged"], true);
    assert_eq!(s["plate"], "粤A12345");
    assert_eq!(s["tyre_pressure_rear_left"], 180);
    assert_eq!(s["tyre_temperature_front_right"], 32);
    assert_eq!(s["tyre_warning"], true);
    assert_eq!(
        s["attributes"]["tyre_rear_left_status"],
        json!(["low_pressure"])
    );
    assert_eq!(
        s["attributes"]["tyre_rear_right_status"],
        json!(["low_sensor_battery"])
    );
    assert_eq!(s["aux_battery_voltage"], 12.6);
    assert_eq!(
        s["attributes"]["health_check"]["coolant_temperature_c"],
        88.5
    );
    assert_eq!(
        s["attributes"]["health_check"]["fault_codes"],
        json!(["P0420"])
    );
    // 1021's insuranceDate is a purchase date: shown as such, never as an expiry.
    assert!(s.get("insurance_expiry").is_none(), "{s}");
    assert_eq!(s["attributes"]["insurance_date"], "2026-03-15");
    assert_eq!(s["inspection_due"], "2027-03-31");
    assert_eq!(s["fuel_used_yesterday"], 4.756);
    assert_eq!(s["last_trip_distance"], 12.5);
    let calls = platform.calls();
    assert_eq!(
        calls.bad_signatures + calls.stale_time,
        0,
        "every call signed and timely"
    );
    for service in [1001, 1011, 1012, 1017, 1018, 1019, 1021, 3004] {
        assert!(
            calls.by_service.get(&service).copied().unwrap_or(0) >= 1,
            "service {service} called"
        );
    }
    let tracker = probe
        .wait_for("device tracker", T, |m| {
            m.topic.ends_with(&format!("/{VID}_location/config"))
        })
        .await
        .json();
    assert_eq!(tracker["device"]["name"], "Family car");

    // Driving: fast polls show the engine, speed and the live fault code.
    platform.set_driving(ESN, true);
    let s = wait_state(&probe, &bridge, "driving", |s| s["engine_running"] == true).await;
    assert_eq!(
        (s["speed"].as_i64(), s["engine_rpm"].as_i64()),
        (Some(48), Some(2100))
    );
    assert_eq!(s["fault_codes"], "P0171");

    // A trip that ends now: sensors and a `trip` event with the 1013 track.
    let id = platform.add_trip(ESN, 30.0);
    let event = wait_event(&probe, &bridge, "trip").await;
    assert_eq!(event["trip_id"], id);
    assert_eq!(event["track"].as_array().map(Vec::len), Some(20));
    wait_state(&probe, &bridge, "trip sensors", |s| {
        s["last_trip_distance"] == 30
    })
    .await;
    bridge.stop().await;
}

#[tokio::test]
async fn lock_and_unlock_are_confirmed_by_the_pushed_outcome() {
    let broker = Mosquitto::start();
    let (platform, bridge, probe) = running(&broker, true).await;
    let set = bridge.topic(&format!("{VID}/lock/set"));

    probe
        .publish(&set, r#"{"action":"UNLOCK","id":"u1"}"#, false)
        .await;
    wait_result(&probe, &bridge, "u1", "accepted").await;
    wait_result(&probe, &bridge, "u1", "succeeded").await;
    wait_state(&probe, &bridge, "unlocked", |s| s["lock"] == "UNLOCKED").await;
    let ev = wait_event(&probe, &bridge, "unlock_result").await;
    assert!(ev["text"].as_str().unwrap_or("").contains("成功"), "{ev}");
    assert_eq!(platform.calls().commands[0]["opCode"], "UNLOCK_DOOR");

    probe
        .publish(&set, r#"{"action":"LOCK","id":"l1"}"#, false)
        .await;
    wait_result(&probe, &bridge, "l1", "succeeded").await;
    wait_state(&probe, &bridge, "locked", |s| s["lock"] == "LOCKED").await;

    platform.car_refuses(true);
    probe
        .publish(&set, r#"{"action":"UNLOCK","id":"u2"}"#, false)
        .await;
    let failed = wait_result(&probe, &bridge, "u2", "failed").await;
    assert!(
        failed["reason"].as_str().unwrap_or("").contains("failed"),
        "{failed}"
    );
    assert!(platform.calls().pushes.iter().all(|s| *s == 200));
    bridge.stop().await;
}

#[tokio::test]
async fn without_push_an_accepted_command_ends_as_timeout() {
    let broker = Mosquitto::start();
    let (_platform, bridge, probe) = running(&broker, false).await;
    probe
        .publish(
            &bridge.topic(&format!("{VID}/lock/set")),
            r#"{"action":"LOCK","id":"l1"}"#,
            false,
        )
        .await;
    wait_result(&probe, &bridge, "l1", "accepted").await;
    wait_result(&probe, &bridge, "l1", "timeout").await;
    bridge.stop().await;
}

#[tokio::test]
async fn pushes_are_verified_bounded_and_deduplicated() {
    let broker = Mosquitto::start();
    let (platform, bridge, probe) = running(&broker, true).await;

    let vibration = json!([{"id": 77, "esn": ESN, "uid": "1424587", "type": "震动", "time": 1_700_000_000,
        "text": "轻微震动", "location": [113.1452, 23.41254], "attrs": {"level": 3}}]);
    // A wrong signature: refused, nothing published.
    let body = json!({"records": vibration}).to_string();
    assert_eq!(
        platform
            .push_raw(body.clone(), "0123456789abcdef0123456789abcdef")
            .await
            .unwrap(),
        403
    );
    assert_eq!(platform.push_raw(body, "").await.unwrap(), 403);
    // Oversized: 413 before anything is read as JSON.
    let big = json!({"records": [{"id": 1, "esn": ESN, "type": "故障", "text": "x".repeat(5000)}]})
        .to_string();
    let sign = vehicle2mqtt::protocol::iauto360::push_signature(&big, "SECRETcode");
    assert_eq!(platform.push_raw(big, &sign).await.unwrap(), 413);
    // Signed but not JSON: 400.
    let junk = "{\"records\":[".to_string();
    let sign = vehicle2mqtt::protocol::iauto360::push_signature(&junk, "SECRETcode");
    assert_eq!(platform.push_raw(junk, &sign).await.unwrap(), 400);
    assert!(!probe
        .messages()
        .iter()
        .any(|m| m.topic == bridge.topic(&format!("{VID}/event"))));

    // A good push, twice (the platform retries): one event.
    assert_eq!(platform.push(vibration.clone()).await.unwrap(), 200);
    assert_eq!(platform.push(vibration).await.unwrap(), 200);
    let ev = wait_event(&probe, &bridge, "vibration").await;
    assert_eq!(ev["attrs"]["level"], 3);
    // Ignition off for an unknown device is accepted and ignored; ours updates the state.
    let ign = json!([{"id": 78, "esn": "000011112222", "type": "熄火", "time": 1_700_000_100},
        {"id": 79, "esn": ESN, "type": "拔出", "time": 1_700_000_200}]);
    assert_eq!(platform.push(ign).await.unwrap(), 200);
    wait_event(&probe, &bridge, "unplugged").await;
    // A lock outcome from 2023 (late or replayed): an event, but the lock state stays.
    let old = json!([{"id": 80, "esn": ESN, "type": "关锁", "time": 1_700_000_300, "text": "关锁【成功】"}]);
    assert_eq!(platform.push(old).await.unwrap(), 200);
    wait_event(&probe, &bridge, "lock_result").await;
    let state_topic = bridge.topic(&format!("{VID}/state"));
    assert!(
        !probe
            .messages()
            .iter()
            .any(|m| m.topic == state_topic && m.json().get("lock").is_some()),
        "a stale outcome does not set the lock"
    );
    let info = probe
        .wait_for("push counters", T, |m| {
            let c = &m.json()["connectors"][0]["counters"];
            m.topic == bridge.topic("bridge/info")
                && c["push_bad_signature"] == 2
                && c["push_oversized"] == 1
                && c["push_malformed"] == 1
                && c["push_unknown_device"] == 1
        })
        .await
        .json();
    assert_eq!(info["connectors"][0]["name"], "iauto360");
    let events = probe
        .messages()
        .iter()
        .filter(|m| {
            m.topic == bridge.topic(&format!("{VID}/event"))
                && m.json()["event_type"] == "vibration"
        })
        .count();
    assert_eq!(events, 1, "a re-delivered push is one event");
    bridge.stop().await;
}

#[tokio::test]
async fn failures_back_off_and_refusals_are_shown() {
    let broker = Mosquitto::start();
    let platform = fake().await;
    platform.fail_next(
        1011,
        [Fail::Http(502), Fail::BadJson, Fail::Refuse("套餐已过期")],
    );
    platform.fail_next(1019, [Fail::Refuse("未开通胎压服务")]);
    let bridge = start(&broker, &platform, false, |_| {}).await;
    let probe = watch(&broker, &bridge).await;
    wait_state(&probe, &bridge, "refusal shown", |s| {
        s["connector_status"]
            .as_str()
            .is_some_and(|t| t.contains("套餐已过期"))
    })
    .await;
    let s = wait_state(&probe, &bridge, "recovered", |s| {
        s["connector_status"] == "ok"
    })
    .await;
    // bridge/info: the connector's error is cleared; `last_error` keeps the history.
    probe
        .wait_for("error cleared", T, |m| {
            let info = m.json();
            m.topic == bridge.topic("bridge/info")
                && info["connectors"][0]["error"].is_null()
                && info["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("套餐已过期"))
        })
        .await;
    assert_eq!(s["odometer"], 23456.7);
    // The tyre service failed once: only its sensors waited for the next round.
    wait_state(&probe, &bridge, "tyres later", |s| {
        s.get("tyre_warning").is_some()
    })
    .await;
    probe
        .wait_for("counters", T, |m| {
            let c = &m.json()["connectors"][0]["counters"];
            m.topic == bridge.topic("bridge/info")
                && c["refused"] == 2
                && c["bad_answers"] == 1
                && c["poll_errors"] == 3
        })
        .await;
    bridge.stop().await;

    // A wrong secure code: every call refused by the signature check, the reason shown.
    let platform = fake().await;
    let bridge = start(&broker, &platform, false, |c| {
        c.upstreams.iauto360.secure_code = Secret::new("wrong")
    })
    .await;
    let probe = watch(&broker, &bridge).await;
    wait_state(&probe, &bridge, "signature refusal", |s| {
        s["connector_status"]
            .as_str()
            .is_some_and(|t| t.contains("签名错误"))
    })
    .await;
    assert!(platform.calls().bad_signatures >= 1);
    bridge.stop().await;
}

fn published_states(probe: &Probe, bridge: &Bridge) -> Vec<Value> {
    probe
        .messages()
        .iter()
        .filter(|m| m.topic == bridge.topic(&format!("{VID}/state")))
        .map(|m| m.json())
        .collect()
}

/// 1017's newest record is an hour old and lower than the live 1011 value (the fake
/// serves 11.9 V against 12.6 V, as measured on a real box): it never wins. With the
/// ignition off, rpm and speed are zero and the coolant's driving value is gone.
#[tokio::test]
async fn the_newest_value_wins_and_ignition_off_ends_driving_values() {
    let broker = Mosquitto::start();
    let (platform, bridge, probe) = running(&broker, false).await;
    // Several detail rounds (1 s each here).
    wait_state(&probe, &bridge, "details", |s| {
        s.get("tyre_warning").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(platform.calls().by_service.get(&1017).copied().unwrap_or(0) >= 2);
    let volts: Vec<Value> = published_states(&probe, &bridge)
        .iter()
        .filter_map(|s| s.get("aux_battery_voltage").cloned())
        .collect();
    assert!(!volts.is_empty());
    assert!(
        volts.iter().all(|v| v == &json!(12.6)),
        "the hour-old 11.9 V record overwrote the live value: {volts:?}"
    );

    platform.set_driving(ESN, true);
    let s = wait_state(&probe, &bridge, "driving", |s| s["engine_running"] == true).await;
    assert_eq!(s["coolant_temperature"], 90);
    platform.set_driving(ESN, false);
    let s = wait_state(&probe, &bridge, "ignition off", |s| {
        s["engine_running"] == false
    })
    .await;
    assert_eq!(
        (s["speed"].as_i64(), s["engine_rpm"].as_i64()),
        (Some(0), Some(0))
    );
    assert!(s.get("coolant_temperature").is_none(), "{s}");
    // The entity stays (HA shows "unknown"): its discovery was never emptied.
    assert!(!probe
        .messages()
        .iter()
        .any(|m| m.topic.ends_with("_coolant_temperature/config") && m.payload.is_empty()));
    bridge.stop().await;
}

/// 15 new trips over two pages of 1012: every one is announced once, oldest first, the
/// newest sets the sensors, and a restart announces none of them again.
#[tokio::test]
async fn trips_are_read_across_pages_and_announced_once_in_order() {
    let broker = Mosquitto::start();
    let platform = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_path_buf();
    let bridge = start(&broker, &platform, false, |c| {
        c.bridge.state_dir = state_dir.clone();
    })
    .await;
    let probe = watch(&broker, &bridge).await;
    // First sight of the box: the newest trip (a day old) sets the sensors, no event.
    wait_state(&probe, &bridge, "first trip", |s| {
        s["last_trip_distance"] == 12.5
    })
    .await;
    platform.add_trips(ESN, 15);
    let newest_km = 24.0; // 10 + 14
    let s = wait_state(&probe, &bridge, "newest trip", |s| {
        s["last_trip_distance"] == newest_km
    })
    .await;
    assert!(s["last_trip_end"].as_str().is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trips: Vec<Value> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == bridge.topic(&format!("{VID}/event")))
        .map(|m| m.json())
        .filter(|e| e["event_type"] == "trip")
        .collect();
    let ids: Vec<i64> = trips.iter().filter_map(|e| e["trip_id"].as_i64()).collect();
    assert_eq!(
        ids,
        (2..=16).collect::<Vec<_>>(),
        "each new trip once, oldest first"
    );
    let ends: Vec<&str> = trips.iter().filter_map(|e| e["end"].as_str()).collect();
    assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
    assert!(
        platform.calls().by_service.get(&1012).copied().unwrap_or(0) >= 2,
        "page 2 was read"
    );
    bridge.stop().await;

    // Restart with the same state_dir: nothing is announced again.
    let state_dir = dir.path().to_path_buf();
    let bridge = start(&broker, &platform, false, |c| {
        c.bridge.state_dir = state_dir;
    })
    .await;
    let probe = watch(&broker, &bridge).await;
    wait_state(&probe, &bridge, "details after restart", |s| {
        s.get("tyre_warning").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !probe
            .messages()
            .iter()
            .any(|m| m.topic == bridge.topic(&format!("{VID}/event"))
                && m.json()["event_type"] == "trip"),
        "trips announced again after a restart"
    );
    bridge.stop().await;
}

/// The push endpoint under an attacker's connections: idle sockets and half-sent requests
/// are closed after `push_read_timeout`, connections beyond `push_max_connections` are
/// closed at once and counted, and a real push still gets through afterwards.
#[tokio::test]
async fn the_push_endpoint_bounds_idle_slow_and_flooding_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Mosquitto::start();
    let platform = fake().await;
    let bridge = start(&broker, &platform, true, |c| {
        c.upstreams.iauto360.push_max_connections = 20;
        c.upstreams.iauto360.push_read_timeout = Duration::from_millis(500);
    })
    .await;
    let probe = watch(&broker, &bridge).await;
    wait_state(&probe, &bridge, "first poll", |s| {
        s.get("odometer").is_some()
    })
    .await;
    let addr = format!("127.0.0.1:{}", bridge.port);
    let closed_within = |mut s: tokio::net::TcpStream, within: Duration| async move {
        let mut buf = [0u8; 256];
        matches!(
            tokio::time::timeout(within, async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await,
            Ok(())
        )
    };
    // 20 idle + half-sent connections fill the cap...
    let mut held = Vec::new();
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"POST /iauto360/events HTTP/1.1\r\nHost: x\r\nContent-Le")
                .await
                .unwrap();
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so the next ones are closed at once,
    let extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_within(extra, Duration::from_millis(400)).await,
        "a connection beyond the cap was kept"
    );
    // and the held ones are all closed once the read timeout passes.
    for s in held {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "an idle or half-sent connection outlived push_read_timeout"
        );
    }
    // A body that never finishes: 408, not a held connection.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /iauto360/events?versign=x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"rec",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The real platform still gets through.
    let event = json!([{"id": 901, "esn": ESN, "type": "震动", "time": chrono::Utc::now().timestamp(), "text": "x"}]);
    assert_eq!(platform.push(event).await.unwrap(), 200);
    let info = probe
        .wait_for("refusals counted", T, |m| {
            m.topic == bridge.topic("bridge/info")
                && m.json()["connectors"][0]["counters"]["push_refused"].as_u64() >= Some(1)
                && m.json()["connectors"][0]["counters"]["push_slow"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(info.json()["connectors"][0]["name"], "iauto360");
    bridge.stop().await;
}

/// A bridge whose box is read every 10 minutes (so that only the controls read), watched,
/// after its first read.
async fn quiet_bridge(
    broker: &Mosquitto,
    platform: &FakeIauto360,
    push: bool,
    tweak: impl FnOnce(&mut Config),
) -> (Bridge, Probe) {
    let bridge = start(broker, platform, push, |c| {
        c.upstreams.iauto360.poll_interval = Duration::from_secs(600);
        c.upstreams.iauto360.poll_interval_active = None;
        c.upstreams.iauto360.detail_interval = Duration::from_secs(3600);
        c.bridge.command_timeout = Duration::from_secs(20);
        c.bridge.refresh_min_gap = Duration::from_secs(1);
        tweak(c);
    })
    .await;
    let probe = watch(broker, &bridge).await;
    wait_state(&probe, &bridge, "first poll", |s| {
        s.get("odometer").is_some()
    })
    .await;
    (bridge, probe)
}

async fn wait_reads(platform: &FakeIauto360, n: u32, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while platform.reads(ESN) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} reads of 1011, not {n}, within {within:?}",
            platform.reads(ESN)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// docs/protocols/iauto360.md, "Refresh": 1011 at once, then confirming reads until 1001
/// shows an upload newer than the press; `reported_at` is that upload's time.
#[tokio::test]
async fn a_refresh_reads_at_once_and_succeeds_with_the_newer_report() {
    let broker = Mosquitto::start();
    let platform = fake().await;
    let (bridge, probe) = quiet_bridge(&broker, &platform, false, |_| {}).await;
    let before = platform.reads(ESN);
    let pressed = chrono::Utc::now().timestamp();
    platform.upload_after(ESN, Duration::from_secs(1));
    probe
        .publish(
            &bridge.topic(&format!("{VID}/refresh/set")),
            r#"{"action":"PRESS","id":"r1"}"#,
            false,
        )
        .await;
    wait_reads(&platform, before + 1, Duration::from_secs(1)).await;
    let done = wait_result(&probe, &bridge, "r1", "succeeded").await;
    let at = done["reported_at"].as_str().expect("reported_at");
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    assert!(at.timestamp() > pressed, "{done}");
    // The read at once (no upload yet), the one at +2 s found it.
    assert_eq!(platform.reads(ESN), before + 2);
    wait_state(&probe, &bridge, "idle again", |s| {
        s["polling_phase"] == "idle"
    })
    .await;
    bridge.stop().await;
}

#[tokio::test]
async fn a_refresh_while_the_platform_holds_back_is_rejected_without_a_read() {
    let broker = Mosquitto::start();
    let platform = fake().await;
    // A 429 holds every read back for about the active interval (a minute here).
    platform.fail_next(1011, [Fail::Http(429)]);
    let bridge = start(&broker, &platform, false, |c| {
        c.upstreams.iauto360.poll_interval = Duration::from_secs(600);
        c.upstreams.iauto360.poll_interval_active = None;
    })
    .await;
    let probe = watch(&broker, &bridge).await;
    wait_reads(&platform, 1, T).await;
    wait_state(&probe, &bridge, "held", |s| {
        s["polling_phase"] == "held" || s["polling_phase"] == "backing_off"
    })
    .await;
    probe
        .publish(
            &bridge.topic(&format!("{VID}/refresh/set")),
            r#"{"action":"PRESS","id":"r1"}"#,
            false,
        )
        .await;
    let r = wait_result(&probe, &bridge, "r1", "rejected").await;
    let why = r["reason"].as_str().unwrap_or("");
    assert!(
        why.contains("holding reads back until") && why.contains("nothing was read"),
        "{r}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(platform.reads(ESN), 1, "no read for the refresh");
    bridge.stop().await;
}

#[tokio::test]
async fn polling_off_stops_scheduled_reads_and_a_refresh_still_reads() {
    let broker = Mosquitto::start();
    let (platform, bridge, probe) = running(&broker, false).await;
    probe
        .publish(
            &bridge.topic(&format!("{VID}/polling/set")),
            r#"{"action":"OFF","id":"p1"}"#,
            false,
        )
        .await;
    wait_result(&probe, &bridge, "p1", "succeeded").await;
    wait_state(&probe, &bridge, "off", |s| {
        s["polling"] == false && s["polling_phase"] == "off"
    })
    .await;
    let off = platform.reads(ESN);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(platform.reads(ESN), off, "read every second until off");
    platform.set_active_time(ESN, chrono::Utc::now().timestamp() + 1);
    probe
        .publish(
            &bridge.topic(&format!("{VID}/refresh/set")),
            r#"{"action":"PRESS","id":"r1"}"#,
            false,
        )
        .await;
    wait_result(&probe, &bridge, "r1", "succeeded").await;
    assert_eq!(platform.reads(ESN), off + 1);
    bridge.stop().await;
}

#[tokio::test]
async fn a_poll_interval_set_over_mqtt_survives_a_restart() {
    let broker = Mosquitto::start();
    let platform = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_path_buf();
    let (bridge, probe) = quiet_bridge(&broker, &platform, false, |c| {
        c.bridge.state_dir = state_dir.clone();
    })
    .await;
    let s = wait_state(&probe, &bridge, "settings shown", |s| {
        s.get("poll_interval").is_some()
    })
    .await;
    assert_eq!(
        (s["poll_interval"].clone(), s["polling"].clone()),
        (json!(10), json!(true))
    );
    probe
        .publish(
            &bridge.topic(&format!("{VID}/poll_interval/set")),
            r#"{"action":"15","id":"i1"}"#,
            false,
        )
        .await;
    wait_result(&probe, &bridge, "i1", "succeeded").await;
    wait_state(&probe, &bridge, "15 minutes", |s| s["poll_interval"] == 15).await;
    bridge.stop().await;
    assert!(vehicle2mqtt::state_dir::writer::flush(Duration::from_secs(
        5
    )));
    assert!(dir.path().join("iauto360_polling.json").exists());

    let state_dir = dir.path().to_path_buf();
    let bridge = start(&broker, &platform, false, |c| {
        c.bridge.state_dir = state_dir;
        c.upstreams.iauto360.poll_interval = Duration::from_secs(600);
    })
    .await;
    let probe = watch(&broker, &bridge).await;
    wait_state(&probe, &bridge, "15 minutes after the restart", |s| {
        s["poll_interval"] == 15
    })
    .await;
    bridge.stop().await;
}

/// Interval payloads an attacker (or a broken automation) sends: each is `rejected` by
/// the bridge, and neither the setting nor the reads change.
#[tokio::test]
async fn bad_interval_payloads_are_rejected_and_change_nothing() {
    let broker = Mosquitto::start();
    let platform = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().to_path_buf();
    let (bridge, probe) = quiet_bridge(&broker, &platform, false, |c| {
        c.bridge.state_dir = state_dir.clone();
    })
    .await;
    let reads = platform.reads(ESN);
    let set = bridge.topic(&format!("{VID}/poll_interval/set"));
    let result = bridge.topic(&format!("{VID}/command/result"));
    for (i, bad) in ["-5", "0", "NaN", "1e309", "abc", "1.5", "1441"]
        .iter()
        .enumerate()
    {
        let id = format!("b{i}");
        let payload = json!({"action": bad, "id": id}).to_string();
        probe.publish(&set, &payload, false).await;
        let r = wait_result(&probe, &bridge, &id, "rejected").await;
        assert_eq!(r["command"], "poll_interval", "{bad}: {r}");
    }
    probe.publish(&set, &"9".repeat(1_000_000), false).await;
    probe
        .wait_for("1 MB rejected", T, |m| {
            m.topic == result
                && m.json()["status"] == "rejected"
                && m.json()["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("exceeds"))
        })
        .await;
    probe
        .publish(&set, r#"{"action":"15","id":"kept"}"#, true)
        .await;
    let r = wait_result(&probe, &bridge, "kept", "rejected").await;
    assert!(
        r["reason"].as_str().unwrap_or("").contains("retained"),
        "{r}"
    );
    probe.publish(&set, "", true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(platform.reads(ESN), reads, "no read for any of them");
    assert!(
        !published_states(&probe, &bridge)
            .iter()
            .any(|s| s.get("poll_interval").is_some_and(|v| v != &json!(10))),
        "the interval changed"
    );
    assert!(vehicle2mqtt::state_dir::writer::flush(Duration::from_secs(
        5
    )));
    assert!(
        !dir.path().join("iauto360_polling.json").exists(),
        "a setting was kept"
    );
    bridge.stop().await;
}

/// A lock command's confirming reads show as `polling_phase` `confirming`, then `idle`.
#[tokio::test]
async fn the_polling_phase_is_confirming_while_a_lock_command_waits() {
    let broker = Mosquitto::start();
    let platform = FakeIauto360::start(
        FakeOptions {
            command_delay: Duration::from_secs(3),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("fake platform");
    let (bridge, probe) = quiet_bridge(&broker, &platform, true, |_| {}).await;
    wait_state(&probe, &bridge, "idle", |s| s["polling_phase"] == "idle").await;
    let before = platform.reads(ESN);
    probe
        .publish(
            &bridge.topic(&format!("{VID}/lock/set")),
            r#"{"action":"LOCK","id":"l1"}"#,
            false,
        )
        .await;
    wait_state(&probe, &bridge, "confirming", |s| {
        s["polling_phase"] == "confirming"
    })
    .await;
    wait_result(&probe, &bridge, "l1", "succeeded").await;
    // The outcome came at +3 s: one confirming read at +2 s before it.
    assert_eq!(platform.reads(ESN), before + 1);
    wait_state(&probe, &bridge, "idle after", |s| {
        s["polling_phase"] == "idle"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(platform.reads(ESN), before + 1, "no more confirming reads");
    bridge.stop().await;
}
