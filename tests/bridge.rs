//! The bridge in-process, with a hand-driven connector, against a real mosquitto: what
//! needs the event loop, the MQTT client and a broker (a restart of either, QoS, retained
//! messages, oversized packets, the worker's timeouts). The hub core's rules (PINs,
//! lockouts, staleness, absent fields, rosters, ordering while MQTT is busy) are tested
//! in milliseconds with a made-up clock in `src/bridge/tests.rs`.

mod common;

use std::time::Duration;

use common::{Mosquitto, Probe, RunningBridge};
use vehicle2mqtt::config::Secret;
use vehicle2mqtt::connector::Update;
use vehicle2mqtt::model::{
    Capability, CommandProgress, Field, Position, VehicleEvent, VehicleId, VehicleInfo,
    VehicleState,
};

const T: Duration = Duration::from_secs(10);

fn scooter(caps: Vec<Capability>) -> VehicleInfo {
    VehicleInfo {
        id: VehicleId::new("kx1001").unwrap(),
        name: "Blue scooter".into(),
        manufacturer: "kingxun".into(),
        model: "E-motor".into(),
        reported_model: None,
        sw_version: Some("2.1".into()),
        custom_name: false,
        serial_number: Some("1001".into()),
        capabilities: caps.into(),
        event_types: vec!["tip_over".into()].into(),
    }
}

fn sample_state() -> VehicleState {
    let mut s = VehicleState {
        position: Position::new(31.2304, 121.4737),
        ..Default::default()
    };
    s.set(Field::Odometer, 1234i64)
        .set(Field::Speed, 0i64)
        .set(Field::BatteryLevel, 87i64);
    s.set(Field::Lock, "LOCKED").set(Field::SeatLock, false);
    s
}

/// A state update from the connector (`replace`: the whole state, else merged).
async fn send_state(
    bridge: &RunningBridge,
    vehicle: VehicleId,
    state: VehicleState,
    replace: bool,
) {
    bridge
        .ctx
        .updates
        .send(Update::State {
            vehicle,
            state,
            replace,
        })
        .await
        .unwrap();
}

async fn announce(bridge: &RunningBridge, info: VehicleInfo, state: VehicleState) {
    let id = info.id.clone();
    bridge
        .ctx
        .updates
        .send(Update::Vehicle(info))
        .await
        .unwrap();
    send_state(bridge, id, state, true).await;
}

/// Retained discovery configs (non-empty) for one base topic's node.
fn configs(probe: &Probe, node: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    for m in probe.messages() {
        if m.topic.contains(&format!("/{node}/")) && m.topic.ends_with("/config") {
            if m.payload.is_empty() {
                out.remove(&m.topic);
            } else {
                out.insert(m.topic.clone(), m.json());
            }
        }
    }
    out
}

#[tokio::test]
async fn discovery_documents_are_complete_stable_and_follow_fields() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let probe = Probe::connect(broker.port, &["homeassistant/#", &format!("{base}/#")]).await;

    let bridge = RunningBridge::start(config.clone()).await;
    announce(
        &bridge,
        scooter(vec![Capability::Lock, Capability::OpenSeat]),
        sample_state(),
    )
    .await;
    let odo_topic = format!("homeassistant/sensor/{base}/kx1001_odometer/config");
    probe.wait_topic(&odo_topic, T).await;
    probe
        .wait_for("state", T, |m| m.topic == format!("{base}/kx1001/state"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let first = configs(&probe, &base);
    for (topic, doc) in &first {
        for key in ["unique_id", "device", "origin"] {
            assert!(doc.get(key).is_some(), "{topic} lacks {key}: {doc}");
        }
        let component = topic.split('/').nth(1).unwrap();
        if doc["device"]["identifiers"][0] == "v2m_kx1001" {
            // Live readings follow the vehicle's availability; the rest (position,
            // odometer, lock...) keep their last value and follow the bridge only.
            let key = doc["unique_id"]
                .as_str()
                .unwrap()
                .trim_start_matches("v2m_kx1001_");
            if vehicle2mqtt::hass::keeps_last_value(key) {
                assert_eq!(
                    doc["availability_topic"],
                    format!("{base}/bridge/state"),
                    "{topic}"
                );
                assert!(doc.get("availability").is_none(), "{topic}");
            } else {
                assert_eq!(doc["availability_mode"], "all", "{topic}");
                assert_eq!(doc["availability"].as_array().unwrap().len(), 2, "{topic}");
            }
            assert_eq!(doc["device"]["via_device"], format!("v2m_bridge_{base}"));
            assert_eq!(doc["device"]["manufacturer"], "kingxun");
            assert_eq!(doc["device"]["sw_version"], "2.1");
            let uid = doc["unique_id"].as_str().unwrap();
            assert!(uid.starts_with("v2m_kx1001_"), "{uid}");
            let obj = doc["object_id"].as_str().unwrap();
            assert_eq!(doc["default_entity_id"], format!("{component}.{obj}"));
        }
    }
    let odo = &first[&odo_topic];
    assert_eq!(odo["device_class"], "distance");
    assert_eq!(odo["unit_of_measurement"], "km");
    assert_eq!(odo["state_class"], "total_increasing");
    let tracker = &first[&format!("homeassistant/device_tracker/{base}/kx1001_location/config")];
    assert_eq!(
        tracker["json_attributes_topic"],
        format!("{base}/kx1001/state")
    );
    let lock = &first[&format!("homeassistant/lock/{base}/kx1001_lock/config")];
    assert_eq!(lock["command_topic"], format!("{base}/kx1001/lock/set"));
    assert!(first.contains_key(&format!(
        "homeassistant/button/{base}/kx1001_open_seat/config"
    )));
    assert!(first.contains_key(&format!("homeassistant/event/{base}/kx1001_events/config")));
    assert!(first.contains_key(&format!(
        "homeassistant/sensor/{base}/kx1001_last_update/config"
    )));
    assert!(first.contains_key(&format!(
        "homeassistant/sensor/{base}/bridge_version/config"
    )));
    let battery = &first[&format!("homeassistant/sensor/{base}/kx1001_battery_level/config")];
    assert_eq!(battery["device_class"], "battery");
    let health = &first[&format!("homeassistant/sensor/{base}/kx1001_last_update/config")];
    assert_eq!(health["entity_category"], "diagnostic");

    // The state JSON carries the fields the entities read.
    let state = probe
        .wait_topic(&format!("{base}/kx1001/state"), T)
        .await
        .json();
    assert_eq!(state["odometer"], 1234);
    assert_eq!(state["latitude"], 31.2304);
    assert_eq!(state["lock"], "LOCKED");

    // A field the vehicle stops reporting keeps its entity (issue #12: a user may have
    // renamed it); only its value goes.
    let mut less = sample_state();
    less.values.remove(&Field::BatteryLevel);
    send_state(&bridge, VehicleId::new("kx1001").unwrap(), less, true).await;
    probe
        .wait_for("state without battery", T, |m| {
            m.topic == format!("{base}/kx1001/state") && m.json().get("battery_level").is_none()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !probe.messages().iter().any(|m| m.payload.is_empty()),
        "an entity was removed"
    );
    bridge.stop().await;

    // Restart: the same unique_ids come back.
    let probe2 = Probe::connect(broker.port, &[&format!("homeassistant/+/{base}/+/config")]).await;
    probe2.clear();
    let bridge = RunningBridge::start(config).await;
    announce(
        &bridge,
        scooter(vec![Capability::Lock, Capability::OpenSeat]),
        sample_state(),
    )
    .await;
    probe2.wait_topic(&odo_topic, T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let uids = |m: &std::collections::BTreeMap<String, serde_json::Value>| {
        m.values()
            .map(|d| d["unique_id"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let second = configs(&probe2, &base);
    assert_eq!(
        uids(&first),
        uids(&second),
        "unique_ids must survive a restart"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn ha_birth_resends_discovery() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![Capability::Lock]), sample_state()).await;
    let odo_topic = format!("homeassistant/sensor/{base}/kx1001_odometer/config");
    let probe = Probe::connect(broker.port, &[&odo_topic]).await;
    probe.wait_topic(&odo_topic, T).await; // the retained copy
    probe.clear();
    probe.publish("homeassistant/status", "online", false).await;
    let again = probe.wait_topic(&odo_topic, T).await;
    assert!(
        !again.retain,
        "a live re-send, not the broker's retained copy"
    );
    assert_eq!(again.json()["unique_id"], "v2m_kx1001_odometer");
    bridge.stop().await;
}

/// States made while the broker is away coalesce to the newest per vehicle: after the
/// reconnect the broker gets the latest state, not a replay of every stale one.
#[tokio::test]
async fn states_made_while_disconnected_coalesce_to_the_newest() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![Capability::Lock]), sample_state()).await;
    {
        let probe = Probe::connect(broker.port, &[&format!("{base}/kx1001/state")]).await;
        probe.wait_topic(&format!("{base}/kx1001/state"), T).await;
    }
    broker.stop();
    let disconnected = async {
        while vehicle2mqtt::state_dir::check_alive(dir.path())
            .err()
            .is_none_or(|e| !e.contains("MQTT is not connected"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(T, disconnected)
        .await
        .expect("the bridge saw the broker go");
    for odometer in 2000..2100i64 {
        let mut s = VehicleState::default();
        s.set(Field::Odometer, odometer);
        send_state(&bridge, VehicleId::new("kx1001").unwrap(), s, false).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart();
    let topic = format!("{base}/kx1001/state");
    let probe = Probe::connect(broker.port, &[&topic]).await;
    probe
        .wait_for("the newest state", Duration::from_secs(40), |m| {
            m.topic == topic && m.json()["odometer"] == 2099
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stale: Vec<i64> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == topic)
        .filter_map(|m| m.json()["odometer"].as_i64())
        .filter(|o| *o != 2099)
        .collect();
    assert!(
        stale.is_empty(),
        "stale states replayed after the reconnect: {stale:?}"
    );
    bridge.stop().await;
}

/// A retained message larger than the bridge accepts on a topic it subscribes to.
/// MQTT 5 (the default against mosquitto 2): the bridge's Maximum Packet Size makes the
/// broker drop it, so the connection never breaks and commands keep working.
#[tokio::test]
async fn an_oversized_retained_command_is_dropped_by_the_broker_with_mqtt5() {
    let (onlines, _) = oversized_retained(vehicle2mqtt::config::MqttProtocol::Auto, 10).await;
    println!("MQTT 5: reconnects in 10 s with an oversized retained command: {onlines}");
    assert_eq!(onlines, 0, "the connection broke {onlines} times");
}

/// The same over MQTT 3.1.1, which cannot refuse it: every connection ends. The bridge
/// must not spin: its reconnects slow down (measured: about 50 in 20 s before, a handful
/// now), and once the message is cleared it connects and works again.
#[tokio::test]
async fn an_oversized_retained_command_does_not_make_the_bridge_spin_with_mqtt311() {
    let (onlines, _) = oversized_retained(vehicle2mqtt::config::MqttProtocol::V311, 20).await;
    println!("MQTT 3.1.1: reconnects in 20 s with an oversized retained command: {onlines}");
    assert!(onlines <= 8, "{onlines} reconnects in 20 s");
    assert!(onlines >= 1, "the bridge never got back to the broker");
}

/// Puts a 1.5 MB retained command on the broker, counts the bridge's reconnects over
/// `seconds`, clears it and checks the bridge publishes again.
async fn oversized_retained(
    protocol: vehicle2mqtt::config::MqttProtocol,
    seconds: u64,
) -> (usize, ()) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&broker.url(), dir.path());
    config.mqtt.protocol = protocol;
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![Capability::Lock]), sample_state()).await;
    let bridge_state = format!("{base}/bridge/state");
    let state_topic = format!("{base}/kx1001/state");
    let probe = Probe::connect(broker.port, &[&bridge_state, &state_topic]).await;
    probe.wait_topic(&state_topic, T).await;
    probe.clear();

    let set = format!("{base}/kx1001/lock/set");
    probe.publish(&set, &"x".repeat(1_500_000), true).await;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let onlines = probe
        .messages()
        .iter()
        .filter(|m| m.topic == bridge_state && m.text() == "online")
        .count();

    // Cleared (an empty retained message): the bridge is (back) online and publishes.
    probe.publish(&set, "", true).await;
    if onlines > 0 {
        probe.clear();
        probe
            .wait_for("online again", Duration::from_secs(40), |m| {
                m.topic == bridge_state && m.text() == "online"
            })
            .await;
    }
    let mut s = VehicleState::default();
    s.set(Field::Odometer, 4321i64);
    send_state(&bridge, VehicleId::new("kx1001").unwrap(), s, false).await;
    probe
        .wait_for("a new state", T, |m| {
            m.topic == state_topic && m.json()["odometer"] == 4321
        })
        .await;
    bridge.stop().await;
    (onlines, ())
}

#[tokio::test]
async fn broker_restart_brings_state_and_discovery_back() {
    let mut broker = Mosquitto::start(); // persistence off: a restart forgets every retained message
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![Capability::Lock]), sample_state()).await;
    {
        let probe = Probe::connect(broker.port, &[&format!("{base}/kx1001/state")]).await;
        probe.wait_topic(&format!("{base}/kx1001/state"), T).await;
    }
    broker.restart();
    let probe = Probe::connect(
        broker.port,
        &[
            &format!("{base}/bridge/state"),
            &format!("{base}/kx1001/#"),
            &format!("homeassistant/sensor/{base}/#"),
        ],
    )
    .await;
    let state = probe
        .wait_topic(&format!("{base}/kx1001/state"), Duration::from_secs(40))
        .await;
    assert_eq!(state.json()["odometer"], 1234);
    probe
        .wait_for("bridge online", T, |m| {
            m.topic == format!("{base}/bridge/state") && m.text() == "online"
        })
        .await;
    probe
        .wait_for("availability", T, |m| {
            m.topic == format!("{base}/kx1001/availability") && m.text() == "online"
        })
        .await;
    probe
        .wait_topic(
            &format!("homeassistant/sensor/{base}/kx1001_odometer/config"),
            T,
        )
        .await;
    bridge.stop().await;
}

async fn command_setup(
    pin: Option<&str>,
    timeout: Duration,
) -> (Mosquitto, tempfile::TempDir, String, RunningBridge, Probe) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&broker.url(), dir.path());
    config.bridge.command_timeout = timeout;
    if let Some(pin) = pin {
        config.bridge.command_pin = Secret::new(pin);
    }
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    announce(
        &bridge,
        scooter(vec![Capability::Lock, Capability::Engine]),
        sample_state(),
    )
    .await;
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    probe.wait_topic(&format!("{base}/kx1001/state"), T).await;
    probe
        .wait_for("bridge online", T, |m| {
            m.topic == format!("{base}/bridge/state") && m.text() == "online"
        })
        .await;
    (broker, dir, base, bridge, probe)
}

fn results(probe: &Probe, base: &str) -> Vec<serde_json::Value> {
    probe
        .messages()
        .iter()
        .filter(|m| m.topic == format!("{base}/kx1001/command/result"))
        .map(|m| m.json())
        .collect()
}

#[tokio::test]
async fn unlock_goes_accepted_then_succeeded_with_unlocking_in_between() {
    let (_broker, _dir, base, mut bridge, probe) =
        command_setup(None, Duration::from_secs(10)).await;
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"action":"UNLOCK","id":"c-1"}"#,
            false,
        )
        .await;
    let req = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.command, vehicle2mqtt::model::Command::Unlock);
    assert_eq!(req.id, "c-1");
    probe
        .wait_for("UNLOCKING", T, |m| {
            m.topic == format!("{base}/kx1001/state") && m.json()["lock"] == "UNLOCKING"
        })
        .await;
    req.progress.send(CommandProgress::Accepted).await.unwrap();
    probe
        .wait_for("accepted", T, |m| {
            m.topic.ends_with("/command/result") && m.json()["status"] == "accepted"
        })
        .await;
    req.progress.send(CommandProgress::Succeeded).await.unwrap();
    probe
        .wait_for("succeeded", T, |m| {
            m.topic.ends_with("/command/result") && m.json()["status"] == "succeeded"
        })
        .await;
    probe
        .wait_for("UNLOCKED", T, |m| {
            m.topic == format!("{base}/kx1001/state") && m.json()["lock"] == "UNLOCKED"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = results(&probe, &base);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0]["id"], "c-1");
    assert_eq!(r[1]["command"], "unlock");
    assert!(r[1]["ts"].as_str().unwrap().ends_with('Z'));
    bridge.stop().await;
}

#[tokio::test]
async fn retained_command_is_never_executed() {
    // The danger: a retained UNLOCK sits on the broker and fires whenever the bridge
    // (re)subscribes. Put it there first, then start the bridge.
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let probe = Probe::connect(broker.port, &[&format!("{base}/+/command/result")]).await;
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"action":"UNLOCK","id":"kept"}"#,
            true,
        )
        .await;
    let mut bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![Capability::Lock]), sample_state()).await;
    let r = probe
        .wait_for("rejection", T, |m| m.topic.ends_with("/command/result"))
        .await
        .json();
    assert_eq!(r["status"], "rejected");
    assert_eq!(
        r["id"], "kept",
        "the rejection carries the payload's own id"
    );
    assert!(r["reason"].as_str().unwrap().contains("retained"), "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bridge.ctx.commands.try_recv().is_err(),
        "a retained command reached the connector"
    );
    probe
        .publish(&format!("{base}/kx1001/lock/set"), "", true)
        .await;
    bridge.stop().await;
}

#[tokio::test]
async fn silent_connector_yields_timeout_and_next_command_runs() {
    let (_broker, _dir, base, mut bridge, probe) =
        command_setup(None, Duration::from_millis(800)).await;
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"action":"LOCK","id":"first"}"#,
            false,
        )
        .await;
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"action":"UNLOCK","id":"second"}"#,
            false,
        )
        .await;
    let first = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, "first");
    // One in flight per vehicle: the second waits behind the first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bridge.ctx.commands.try_recv().is_err(),
        "second command ran while the first was in flight"
    );
    let r = probe
        .wait_for("timeout", T, |m| {
            m.topic.ends_with("/command/result") && m.json()["id"] == "first"
        })
        .await
        .json();
    assert_eq!(r["status"], "timeout");
    let second = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id, "second");
    drop(first);
    // Dropping the request without an answer is a failure, not a hang.
    drop(second);
    let r = probe
        .wait_for("failed", T, |m| {
            m.topic.ends_with("/command/result") && m.json()["id"] == "second"
        })
        .await
        .json();
    assert_eq!(r["status"], "failed");
    // The lock is back to its real state after the failed attempts.
    probe
        .wait_for("LOCKED", T, |m| {
            m.topic == format!("{base}/kx1001/state") && m.json()["lock"] == "LOCKED"
        })
        .await;
    bridge.stop().await;
}

#[tokio::test]
async fn events_availability_staleness_and_per_field_topics() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&broker.url(), dir.path());
    config.mqtt.per_field_topics = true;
    config.bridge.stale_after = Duration::from_millis(800);
    let base = config.mqtt.base_topic.clone();
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    let bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![]), sample_state()).await;
    let vid = VehicleId::new("kx1001").unwrap();
    probe
        .wait_for("odometer topic", T, |m| {
            m.topic == format!("{base}/kx1001/odometer") && m.text() == "1234"
        })
        .await;
    probe
        .wait_for("seat lock topic", T, |m| {
            m.topic == format!("{base}/kx1001/seat_lock") && m.text() == "OFF"
        })
        .await;
    probe
        .wait_for("online", T, |m| {
            m.topic == format!("{base}/kx1001/availability") && m.text() == "online"
        })
        .await;
    let info = probe
        .wait_for("bridge info", T, |m| {
            m.topic == format!("{base}/bridge/info") && m.json()["vehicles"] == 1
        })
        .await;
    assert_eq!(info.json()["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info.json()["connectors"][0]["name"], "test");

    let mut attributes = serde_json::Map::new();
    attributes.insert("speed".into(), 12.into());
    bridge
        .ctx
        .updates
        .send(Update::Event {
            vehicle: vid.clone(),
            event: VehicleEvent {
                event_type: "tip_over".into(),
                attributes,
            },
        })
        .await
        .unwrap();
    let ev = probe.wait_topic(&format!("{base}/kx1001/event"), T).await;
    assert_eq!(ev.json()["event_type"], "tip_over");
    assert_eq!(ev.json()["speed"], 12);
    assert!(!ev.retain);

    // No update within stale_after: offline. A new update: online again. (An "offline"
    // before the first "online" is the vehicle's first availability, published when a
    // stale check runs between its announcement and its first state: not the stale one.)
    let availability_topic = format!("{base}/kx1001/availability");
    let went_stale = || {
        let seen: Vec<String> = probe
            .messages()
            .iter()
            .filter(|m| m.topic == availability_topic)
            .map(|m| m.text())
            .collect();
        let online_at = seen.iter().position(|t| t == "online");
        online_at.is_some_and(|i| seen[i..].iter().any(|t| t == "offline"))
    };
    let deadline = std::time::Instant::now() + T;
    while !went_stale() {
        assert!(std::time::Instant::now() < deadline, "never went stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probe.clear();
    send_state(&bridge, vid.clone(), sample_state(), false).await;
    probe
        .wait_for("fresh", T, |m| {
            m.topic == format!("{base}/kx1001/availability") && m.text() == "online"
        })
        .await;
    // The connector says the vehicle is gone.
    bridge
        .ctx
        .updates
        .send(Update::Availability {
            vehicle: vid,
            online: false,
        })
        .await
        .unwrap();
    probe
        .wait_for("offline", T, |m| {
            m.topic == format!("{base}/kx1001/availability") && m.text() == "offline"
        })
        .await;

    bridge.stop().await;
}

#[tokio::test]
async fn overload_coalesces_states_and_keeps_results() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&broker.url(), dir.path());
    config.mqtt.queue_capacity = 4; // far too small: MQTT is "busy" all the time
    let base = config.mqtt.base_topic.clone();
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    let mut bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![Capability::Lock]), sample_state()).await;
    probe.wait_topic(&format!("{base}/kx1001/state"), T).await;
    let vid = VehicleId::new("kx1001").unwrap();
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"action":"LOCK","id":"busy-1"}"#,
            false,
        )
        .await;
    let req = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .unwrap()
        .unwrap();
    for odo in 0..3000i64 {
        let mut s = VehicleState::default();
        s.set(Field::Odometer, odo);
        send_state(&bridge, vid.clone(), s, false).await;
        if odo == 1500 {
            req.progress.send(CommandProgress::Succeeded).await.unwrap();
        }
    }
    let last = probe
        .wait_for("the newest state", T, |m| {
            m.topic == format!("{base}/kx1001/state") && m.json()["odometer"] == 2999
        })
        .await;
    assert_eq!(last.json()["lock"], "LOCKED");
    let r = probe
        .wait_for("the result", T, |m| m.topic.ends_with("/command/result"))
        .await
        .json();
    assert_eq!(
        (r["id"].as_str(), r["status"].as_str()),
        (Some("busy-1"), Some("succeeded"))
    );
    let states = probe
        .messages()
        .iter()
        .filter(|m| m.topic == format!("{base}/kx1001/state"))
        .count();
    assert!(
        states < 3000,
        "states should coalesce under overload, got {states}"
    );
    let info = probe
        .wait_for("coalesced count", T, |m| {
            m.topic == format!("{base}/bridge/info")
                && m.json()["coalesced_states"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert_eq!(
        info.json()["dropped_publishes"],
        0,
        "nothing is dropped, only superseded states"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn bridge_started_before_its_broker_serves_commands_once_it_appears() {
    // The broker comes up after the bridge, with a tiny client queue and constant
    // traffic: states flow and commands still arrive. (The exact queue-full case is the
    // unit test `subscribe_is_never_dropped_when_the_queue_is_full`.)
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&format!("mqtt://127.0.0.1:{port}"), dir.path());
    config.mqtt.queue_capacity = 1;
    let base = config.mqtt.base_topic.clone();
    let mut bridge = RunningBridge::start(config).await;
    for i in 0..20 {
        let mut info = scooter(vec![Capability::Lock]);
        info.id = VehicleId::new(&format!("kx{i}")).unwrap();
        announce(&bridge, info, sample_state()).await;
    }
    // Keep the client's queue full the whole time, as a busy fleet does.
    let updates = bridge.ctx.updates.clone();
    let pressure = tokio::spawn(async move {
        for odo in 0i64.. {
            let mut s = VehicleState::default();
            s.set(Field::Odometer, odo);
            let vehicle = VehicleId::new(&format!("kx{}", odo % 20)).unwrap();
            if updates
                .send(Update::State {
                    vehicle,
                    state: s,
                    replace: false,
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = Mosquitto::start_on(port);
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    probe
        .wait_for("states flowing", Duration::from_secs(40), |m| {
            m.topic == format!("{base}/kx19/state")
        })
        .await;
    probe
        .publish(&format!("{base}/kx3/lock/set"), "LOCK", false)
        .await;
    let req = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .expect("the command arrives")
        .unwrap();
    assert_eq!(req.vehicle.as_str(), "kx3");
    pressure.abort();
    bridge.stop().await;
}

/// Issue #12: a restart never removes an entity. Vehicles that stay silent after the
/// restart come back with their entities and last state before they report; a field a
/// vehicle stops reporting keeps its entity ("unknown"); entities go only on request.
#[tokio::test]
async fn entities_survive_restarts_and_go_only_on_request() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let topic = |vid: &str, component: &str, key: &str| {
        format!("homeassistant/{component}/{base}/{vid}_{key}/config")
    };
    let named = |id: &str| {
        let mut i = scooter(vec![Capability::Lock]);
        i.id = VehicleId::new(id).unwrap();
        i
    };
    // First run: kx1, kx1_2 (an id that starts with "kx1_") and kx9, all with a battery.
    let first = RunningBridge::start(config.clone()).await;
    let probe = Probe::connect(broker.port, &[&format!("homeassistant/+/{base}/+/config")]).await;
    for id in ["kx1", "kx1_2", "kx9"] {
        announce(&first, named(id), sample_state()).await;
    }
    for id in ["kx1", "kx1_2", "kx9"] {
        probe
            .wait_topic(&topic(id, "sensor", "battery_level"), T)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = configs(&probe, &base);
    first.stop().await;

    // Second run, nobody reports yet: nothing is removed, every document comes back
    // byte for byte, and so does the last state.
    probe.clear();
    let states = Probe::connect(broker.port, &[&format!("{base}/+/state")]).await;
    // The broker lost its store: clear the retained state the first run left.
    for id in ["kx1", "kx1_2", "kx9"] {
        states
            .publish(&format!("{base}/{id}/state"), "", true)
            .await;
    }
    states.clear();
    let second = RunningBridge::start(config.clone()).await;
    let kx9_state = states
        .wait_for("kx9's last state", T, |m| {
            m.topic == format!("{base}/kx9/state") && !m.payload.is_empty()
        })
        .await;
    assert_eq!(kx9_state.json()["odometer"], 1234, "last state restored");
    assert!(kx9_state.retain || !kx9_state.payload.is_empty());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !probe.messages().iter().any(|m| m.payload.is_empty()),
        "a restart removed an entity"
    );
    assert_eq!(
        configs(&probe, &base),
        before,
        "documents changed across the restart"
    );

    // kx1 reports without its battery: the entity stays, its value is gone.
    let mut less = sample_state();
    less.values.remove(&Field::BatteryLevel);
    announce(&second, named("kx1"), less).await;
    announce(&second, named("kx1_2"), sample_state()).await;
    let kx1_state = states
        .wait_for("kx1 without battery", T, |m| {
            m.topic == format!("{base}/kx1/state")
                && !m.payload.is_empty()
                && m.json().get("battery_level").is_none()
        })
        .await;
    assert_eq!(kx1_state.json()["odometer"], 1234);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !probe.messages().iter().any(|m| m.payload.is_empty()),
        "a field that went quiet lost its entity"
    );

    // Asked for: kx1's battery goes, silent kx9 goes entirely, kx1_2 keeps everything.
    probe
        .publish(&format!("{base}/bridge/purge/set"), "stale", false)
        .await;
    probe
        .wait_for("kx1 battery removed", T, |m| {
            m.topic == topic("kx1", "sensor", "battery_level") && m.payload.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let emptied: std::collections::BTreeSet<String> = probe
        .messages()
        .iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| m.topic.clone())
        .collect();
    let mut expected: std::collections::BTreeSet<String> = before
        .keys()
        .filter(|t| t.contains("/kx9_"))
        .cloned()
        .collect();
    expected.insert(topic("kx1", "sensor", "battery_level"));
    assert_eq!(emptied, expected, "exactly kx1's battery and all of kx9");
    second.stop().await;

    // Third run: kx9 stays forgotten; kx1_2's battery is still announced.
    probe.clear();
    let third = RunningBridge::start(config).await;
    probe
        .wait_topic(&topic("kx1_2", "sensor", "battery_level"), T)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!probe.messages().iter().any(|m| m.topic.contains("/kx9_")));
    third.stop().await;
}

/// Lock states strictly ordered: LOCKING/UNLOCKING before the final state, never after,
/// even when the device reports its new state before the command's answer.
#[tokio::test]
async fn lock_states_are_strictly_ordered() {
    let (_broker, _dir, base, mut bridge, probe) =
        command_setup(None, Duration::from_secs(10)).await;
    let vid = VehicleId::new("kx1001").unwrap();
    for round in 0..10 {
        probe.clear();
        let (action, pending, done) = if round % 2 == 0 {
            ("UNLOCK", "UNLOCKING", "UNLOCKED")
        } else {
            ("LOCK", "LOCKING", "LOCKED")
        };
        probe
            .publish(&format!("{base}/kx1001/lock/set"), action, false)
            .await;
        let req = tokio::time::timeout(T, bridge.ctx.commands.recv())
            .await
            .unwrap()
            .unwrap();
        // The device's report races the command's answer.
        let mut s = VehicleState::default();
        s.set(Field::Lock, done);
        send_state(&bridge, vid.clone(), s, false).await;
        req.progress.send(CommandProgress::Succeeded).await.unwrap();
        probe
            .wait_for("succeeded", T, |m| {
                m.topic.ends_with("/command/result") && m.json()["status"] == "succeeded"
            })
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let locks: Vec<String> = probe
            .messages()
            .iter()
            .filter(|m| m.topic == format!("{base}/kx1001/state"))
            .map(|m| m.json()["lock"].as_str().unwrap_or("").to_string())
            .collect();
        let first_done = locks.iter().position(|l| l == done);
        let last_pending = locks.iter().rposition(|l| l == pending);
        assert!(last_pending.is_some(), "{pending} never shown: {locks:?}");
        assert!(
            first_done.is_some() && last_pending < first_done,
            "round {round}: {pending} after {done}: {locks:?}"
        );
        assert_eq!(locks.last().map(String::as_str), Some(done), "{locks:?}");
    }
    bridge.stop().await;
}

/// evcc reads booleans only as `true`/`false`: with `per_field_booleans = "true_false"`
/// the per-field topics carry them that way (the state JSON is JSON either way).
#[tokio::test]
async fn per_field_booleans_for_evcc() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&broker.url(), dir.path());
    config.mqtt.per_field_topics = true;
    config.mqtt.per_field_booleans = vehicle2mqtt::config::BoolFormat::TrueFalse;
    let base = config.mqtt.base_topic.clone();
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    let bridge = RunningBridge::start(config).await;
    announce(&bridge, scooter(vec![]), sample_state()).await;
    probe
        .wait_for("seat lock as false", T, |m| {
            m.topic == format!("{base}/kx1001/seat_lock") && m.text() == "false"
        })
        .await;
    probe
        .wait_for("odometer unchanged", T, |m| {
            m.topic == format!("{base}/kx1001/odometer") && m.text() == "1234"
        })
        .await;
    bridge.stop().await;
}

/// Buttons run only on PRESS: an empty payload (how a retained message is cleared), NUL,
/// NO or a near miss is rejected with a result (carrying the payload's own id when it
/// has one) and never reaches the vehicle.
#[tokio::test]
async fn buttons_and_locks_run_only_on_their_exact_payloads() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let mut bridge = RunningBridge::start(config).await;
    announce(
        &bridge,
        scooter(vec![
            Capability::Lock,
            Capability::OpenSeat,
            Capability::HazardLights,
        ]),
        sample_state(),
    )
    .await;
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    probe.wait_topic(&format!("{base}/kx1001/state"), T).await;
    let seat = format!("{base}/kx1001/open_seat/set");
    let hazard = format!("{base}/kx1001/hazard_lights/set");
    let lock = format!("{base}/kx1001/lock/set");
    let bad: Vec<(&str, &str)> = vec![
        (&seat, ""),
        (&seat, "\u{0}"),
        (&seat, "NO"),
        (&seat, "press"),
        (&hazard, "1"),
        (&lock, "unlock"),
        (&lock, "UNLOCK!"),
        (&lock, r#"{"action":"unlock","id":"near-miss"}"#),
    ];
    for (topic, payload) in &bad {
        probe.publish(topic, payload, false).await;
    }
    probe
        .wait_for("every near miss rejected", T, |_| {
            results(&probe, &base)
                .iter()
                .filter(|r| r["status"] == "rejected")
                .count()
                == bad.len()
        })
        .await;
    assert!(
        results(&probe, &base)
            .iter()
            .any(|r| r["id"] == "near-miss"),
        "the rejection carries the payload's id"
    );
    assert!(
        bridge.ctx.commands.try_recv().is_err(),
        "a near miss reached the vehicle"
    );
    // The exact payloads work.
    probe.publish(&seat, "PRESS", false).await;
    let req = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.command, vehicle2mqtt::model::Command::OpenSeat);
    bridge.stop().await;
}
