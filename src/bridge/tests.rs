//! Fast tests of the hub core: a made-up clock and a made-up MQTT client of any room, no
//! sockets, no tasks. What needs the real broker and the real process stays in
//! `tests/bridge.rs` and `tests/process.rs`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::hub::{Action, Hub, Mqtt, Now, Tick};
use super::outbox::Sink;
use super::records;
use super::store;
use super::worker::WorkerEvent;
use crate::config::{Config, Secret};
use crate::connector::Update;
use crate::model::{
    Capability, Command, CommandStatus, Field, Position, VehicleEvent, VehicleId, VehicleInfo,
    VehicleState,
};
use crate::mqtt::{MqttEvent, MqttStats, SubscribeOptions};

mod cluster;

#[derive(Clone, PartialEq)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: String = self.text().chars().take(60).collect();
        write!(
            f,
            "{} = {text:?}{}",
            self.topic,
            if self.retain { " (retained)" } else { "" }
        )
    }
}

impl Msg {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap_or("")
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_default()
    }
}

#[derive(Default)]
struct Client {
    /// Messages it takes before it is "full" (`usize::MAX`: always room).
    room: Cell<usize>,
    sent: RefCell<Vec<Msg>>,
    subscribed: RefCell<Vec<String>>,
    dropped: Cell<usize>,
    stats: MqttStats,
}

/// The MQTT client as a test sees it.
#[derive(Clone)]
struct FakeMqtt(Rc<Client>);

impl Sink for FakeMqtt {
    fn try_publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        let room = self.0.room.get();
        if room == 0 {
            return false;
        }
        self.0
            .room
            .set(
                room.saturating_sub(1)
                    .max(if room == usize::MAX { usize::MAX } else { 0 }),
            );
        self.0.sent.borrow_mut().push(Msg {
            topic: topic.to_string(),
            payload,
            retain,
        });
        true
    }
    fn dropped(&self, _topic: &str) {
        self.0.dropped.set(self.0.dropped.get() + 1);
    }
}

impl Mqtt for FakeMqtt {
    fn subscribe(&self, filter: &str, _opts: SubscribeOptions) {
        self.0.subscribed.borrow_mut().push(filter.to_string());
    }
    fn stats(&self) -> &MqttStats {
        &self.0.stats
    }
}

const BASE: &str = "v2m";

struct Rig {
    hub: Hub<FakeMqtt>,
    mqtt: FakeMqtt,
    now: Now,
    actions: Vec<Action>,
}

fn config() -> Config {
    let mut c = Config::default();
    c.mqtt.base_topic = BASE.into();
    c.mqtt.discovery_prefix = "homeassistant".into();
    c
}

fn vid(s: &str) -> VehicleId {
    VehicleId::new(s).unwrap()
}

fn scooter(id: &str) -> VehicleInfo {
    VehicleInfo {
        id: vid(id),
        name: format!("Scooter {id}"),
        manufacturer: "kingxun".into(),
        model: "Two-wheeler".into(),
        reported_model: Some("E-motor".into()),
        sw_version: Some("2.1".into()),
        custom_name: false,
        serial_number: Some(id.to_string()),
        capabilities: vec![Capability::Lock, Capability::Engine, Capability::Horn].into(),
        event_types: vec!["tip_over".into()].into(),
    }
}

fn state(battery: i64) -> VehicleState {
    let mut s = VehicleState {
        position: Position::new(31.2304, 121.4737),
        ..Default::default()
    };
    s.set(Field::BatteryLevel, battery)
        .set(Field::Odometer, 1234i64)
        .set(Field::Lock, "LOCKED");
    s
}

impl Rig {
    fn new(config: Config) -> Rig {
        Rig::with_records(config, BTreeMap::new())
    }

    fn with_records(config: Config, records: BTreeMap<VehicleId, store::Record>) -> Rig {
        let mqtt = FakeMqtt(Rc::new(Client::default()));
        mqtt.0.room.set(usize::MAX);
        let now = Now::real();
        let connectors = vec![("kingxun", None), ("exlive", None)];
        let hub = Hub::new(config, mqtt.clone(), connectors, records, now);
        let mut rig = Rig {
            hub,
            mqtt,
            now,
            actions: Vec::new(),
        };
        rig.collect();
        rig
    }

    fn collect(&mut self) {
        self.actions.extend(self.hub.take_actions());
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now.after(by);
    }

    fn connect(&mut self) {
        self.hub.on_mqtt(MqttEvent::Connected, self.now);
        self.collect();
    }

    fn disconnect(&mut self) {
        self.hub
            .on_mqtt(MqttEvent::Disconnected("gone".into()), self.now);
        self.collect();
    }

    fn update(&mut self, update: Update) {
        self.hub.on_update(0, update, self.now);
        self.collect();
    }

    fn report(&mut self, id: &str, state: VehicleState) {
        self.update(Update::State {
            vehicle: vid(id),
            state,
            replace: false,
        });
    }

    fn tick(&mut self, tick: Tick) {
        self.hub.on_tick(tick, self.now);
        self.collect();
    }

    fn message(&mut self, topic: &str, payload: &str, retain: bool) {
        let event = MqttEvent::Message {
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            retain,
            expires_in: None,
        };
        self.hub.on_mqtt(event, self.now);
        self.collect();
    }

    fn set(&mut self, vehicle: &str, entity: &str, payload: &str) {
        self.message(&format!("{BASE}/{vehicle}/{entity}/set"), payload, false);
    }

    fn worker(&mut self, event: WorkerEvent) {
        self.hub.on_worker(event, self.now);
        self.collect();
    }

    /// Everything published since the last call.
    fn published(&mut self) -> Vec<Msg> {
        std::mem::take(&mut *self.mqtt.0.sent.borrow_mut())
    }

    fn commands(&mut self) -> Vec<(VehicleId, Command, String)> {
        let mut out = Vec::new();
        self.actions.retain(|a| match a {
            Action::Command {
                vehicle, queued, ..
            } => {
                out.push((vehicle.clone(), queued.command.clone(), queued.id.clone()));
                false
            }
            _ => true,
        });
        out
    }

    fn persisted(&mut self) -> Vec<(VehicleId, store::Write)> {
        let mut out = Vec::new();
        for a in std::mem::take(&mut self.actions) {
            match a {
                Action::Persist(batch) => out.extend(batch),
                other => self.actions.push(other),
            }
        }
        out
    }

    /// Every record a shutdown leaves.
    fn shutdown_records(&mut self) -> BTreeMap<VehicleId, store::Record> {
        let mut records = BTreeMap::new();
        self.hub.records_written();
        while let Some(batch) = self.hub.final_records(self.now) {
            for (id, write) in batch {
                if let store::Write::Save { record, .. } = write {
                    records.insert(id, *record);
                }
            }
        }
        records
    }
}

fn results(msgs: &[Msg]) -> Vec<serde_json::Value> {
    msgs.iter()
        .filter(|m| m.topic.ends_with("/command/result"))
        .map(Msg::json)
        .collect()
}

/// The vehicles' discovery documents (the bridge's own left out).
fn configs(msgs: &[Msg]) -> BTreeMap<String, Vec<u8>> {
    msgs.iter()
        .filter(|m| m.topic.ends_with("/config") && !m.topic.contains("/bridge_"))
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect()
}

fn last_state(msgs: &[Msg], id: &str) -> Option<serde_json::Value> {
    msgs.iter()
        .rev()
        .find(|m| m.topic == format!("{BASE}/{id}/state"))
        .map(Msg::json)
}

#[test]
fn a_connection_publishes_online_subscribes_and_announces_the_bridge() {
    let mut rig = Rig::new(config());
    rig.connect();
    let sent = rig.published();
    assert_eq!(sent[0].topic, format!("{BASE}/bridge/state"));
    assert_eq!((sent[0].text(), sent[0].retain), ("online", true));
    let subscribed = rig.mqtt.0.subscribed.borrow().clone();
    assert!(
        subscribed.contains(&format!("{BASE}/+/+/set")),
        "{subscribed:?}"
    );
    assert!(subscribed.contains(&"homeassistant/status".to_string()));
    assert!(
        sent.iter()
            .any(|m| m.topic.starts_with("homeassistant/") && m.topic.contains("/v2m/bridge_")),
        "the bridge's own entities"
    );
    assert!(sent
        .iter()
        .any(|m| m.topic == format!("{BASE}/bridge/info")));
}

#[test]
fn a_vehicle_gets_its_documents_once_then_only_its_states() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.published();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(80));
    let first = rig.published();
    let docs = configs(&first);
    assert!(docs.len() >= 5, "{:?}", docs.keys());
    assert!(docs.values().all(|d| !d.is_empty()));
    let device = serde_json::from_slice::<serde_json::Value>(docs.values().next().unwrap())
        .unwrap()["device"]
        .clone();
    assert_eq!(device["model"], "E-motor", "the model the device reported");
    assert_eq!(device["sw_version"], "2.1");
    assert_eq!(last_state(&first, "kx1").unwrap()["battery_level"], 80);
    assert!(first
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/availability") && m.text() == "online"));
    // Same fields again: states only, no document.
    rig.report("kx1", state(79));
    let next = rig.published();
    assert!(configs(&next).is_empty(), "{next:?}");
    assert_eq!(last_state(&next, "kx1").unwrap()["battery_level"], 79);
    // A new field: its entity, once.
    let mut more = VehicleState::default();
    more.set(Field::Speed, 12i64);
    rig.report("kx1", more.clone());
    let grown = configs(&rig.published());
    assert_eq!(grown.len(), 1, "{:?}", grown.keys());
    assert!(grown.keys().next().unwrap().ends_with("kx1_speed/config"));
    rig.report("kx1", more);
    assert!(configs(&rig.published()).is_empty());
}

#[test]
fn a_restart_and_a_relink_publish_byte_identical_documents() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(80));
    let before = configs(&rig.published());
    let records = rig.shutdown_records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[&vid("kx1")].identity.model.as_deref(),
        Some("E-motor")
    );

    // The next run: what it restores, then the device linking again without saying its
    // model or firmware yet (the connector's first word), then with them.
    let mut rig = Rig::with_records(config(), records);
    rig.connect();
    let restored = configs(&rig.published());
    assert_eq!(restored, before, "restored documents are those announced");
    let mut relinked = scooter("kx1");
    relinked.reported_model = None;
    relinked.sw_version = None;
    rig.update(Update::Vehicle(relinked));
    rig.report("kx1", state(81));
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(82));
    let after = rig.published();
    assert!(
        configs(&after).is_empty(),
        "no document changes: {:?}",
        configs(&after).keys()
    );
    // A real change (new firmware) changes each document once.
    let mut updated = scooter("kx1");
    updated.sw_version = Some("2.2".into());
    rig.update(Update::Vehicle(updated.clone()));
    let changed = configs(&rig.published());
    assert_eq!(changed.len(), before.len());
    rig.update(Update::Vehicle(updated));
    assert!(configs(&rig.published()).is_empty());
}

#[test]
fn a_vehicle_no_longer_configured_loses_its_entities_and_record_at_start() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(80));
    let announced = configs(&rig.published());
    let records = rig.shutdown_records();
    let mqtt = FakeMqtt(Rc::new(Client::default()));
    mqtt.0.room.set(usize::MAX);
    let listed = [vid("kx2")].into_iter().collect();
    let mut hub = Hub::new(
        config(),
        mqtt.clone(),
        vec![("kingxun", Some(listed))],
        records,
        Now::real(),
    );
    let sent = std::mem::take(&mut *mqtt.0.sent.borrow_mut());
    for topic in announced.keys() {
        assert!(
            sent.iter()
                .any(|m| &m.topic == topic && m.payload.is_empty()),
            "{topic} removed"
        );
    }
    assert!(sent
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/state") && m.payload.is_empty() && m.retain));
    let actions = hub.take_actions();
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Forgotten(id) if id.as_str() == "kx1")));
    let removed = hub.final_records(Now::real()).unwrap_or_default();
    assert!(matches!(&removed[..], [(id, store::Write::Remove)] if id.as_str() == "kx1"));
}

#[test]
fn states_made_while_away_coalesce_to_the_newest() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.disconnect();
    rig.published();
    for battery in 50..60 {
        rig.report("kx1", state(battery));
    }
    assert!(rig.published().iter().all(|m| !m.topic.ends_with("/state")));
    rig.connect();
    let sent = rig.published();
    let states: Vec<_> = sent
        .iter()
        .filter(|m| m.topic == format!("{BASE}/kx1/state"))
        .collect();
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].json()["battery_level"], 59);
    assert_eq!(
        rig.mqtt
            .0
            .stats
            .coalesced_states
            .load(std::sync::atomic::Ordering::Relaxed),
        9
    );
}

#[test]
fn a_busy_client_gets_messages_first_then_newest_states_then_owed_documents() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.published();
    rig.mqtt.0.room.set(0);
    let tip_over = || Update::Event {
        vehicle: vid("kx1"),
        event: VehicleEvent {
            event_type: "tip_over".into(),
            attributes: Default::default(),
        },
    };
    rig.update(tip_over());
    // Behind a waiting message: a new vehicle's documents are owed, not built.
    rig.update(Update::Vehicle(scooter("kx2")));
    rig.report("kx2", state(70));
    rig.report("kx1", state(70));
    rig.update(tip_over());
    rig.report("kx2", state(71));
    assert!(rig.published().is_empty());
    assert!(rig.hub.wants_retry());
    rig.mqtt.0.room.set(usize::MAX);
    rig.tick(Tick::Retry);
    let sent = rig.published();
    let topics: Vec<&str> = sent.iter().map(|m| m.topic.as_str()).collect();
    let events: Vec<usize> = (0..sent.len())
        .filter(|i| topics[*i].ends_with("/event"))
        .collect();
    let states: Vec<usize> = (0..sent.len())
        .filter(|i| topics[*i].ends_with("/state"))
        .collect();
    let docs: Vec<usize> = (0..sent.len())
        .filter(|i| topics[*i].ends_with("/config"))
        .collect();
    assert_eq!(events.len(), 2, "{sent:?}");
    assert_eq!(states.len(), 2, "one per vehicle, the newest: {sent:?}");
    assert!(!docs.is_empty());
    assert!(events[1] < states[0] && states[1] < docs[0], "{sent:?}");
    assert!(
        docs.iter().any(|i| topics[*i].contains("/kx2_")),
        "{sent:?}"
    );
    assert_eq!(last_state(&sent, "kx2").unwrap()["battery_level"], 71);
    assert_eq!(last_state(&sent, "kx1").unwrap()["battery_level"], 70);
    assert!(!rig.hub.wants_retry());
}

#[test]
fn an_unlock_shows_unlocking_then_its_outcome_and_the_lock_state() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(70));
    rig.published();
    rig.set("kx1", "lock", r#"{"action":"UNLOCK","id":"c-1"}"#);
    let commands = rig.commands();
    assert_eq!(
        commands,
        vec![(vid("kx1"), Command::Unlock, "c-1".to_string())]
    );
    assert_eq!(
        last_state(&rig.published(), "kx1").unwrap()["lock"],
        "UNLOCKING"
    );
    let outcome = |status| WorkerEvent::Outcome {
        vehicle: vid("kx1"),
        id: "c-1".into(),
        command: Command::Unlock,
        status,
        reason: None,
        reported_at: None,
    };
    rig.worker(outcome(CommandStatus::Accepted));
    let sent = rig.published();
    assert_eq!(results(&sent)[0]["status"], "accepted");
    assert!(last_state(&sent, "kx1").is_none(), "still unlocking");
    // A report while in flight keeps showing the transition.
    rig.report("kx1", state(69));
    assert_eq!(
        last_state(&rig.published(), "kx1").unwrap()["lock"],
        "UNLOCKING"
    );
    rig.worker(outcome(CommandStatus::Succeeded));
    let sent = rig.published();
    let r = results(&sent);
    assert_eq!(
        (r[0]["status"].as_str(), r[0]["id"].as_str()),
        (Some("succeeded"), Some("c-1"))
    );
    assert_eq!(r[0]["command"], "unlock");
    assert_eq!(last_state(&sent, "kx1").unwrap()["lock"], "UNLOCKED");
}

#[test]
fn retained_unknown_malformed_unsupported_and_expired_commands_never_run() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.published();
    rig.message(&format!("{BASE}/kx1/lock/set"), "UNLOCK", true);
    rig.set("kx9", "lock", "UNLOCK");
    rig.set("kx1", "lock", "unlock");
    rig.set("kx1", "lock", "");
    rig.set("kx1", "hazard_lights", "PRESS");
    rig.set("kx1", "lock", &"x".repeat(5000));
    let old = rig.now.wall.timestamp() - 3600;
    rig.set(
        "kx1",
        "lock",
        &format!(r#"{{"action":"UNLOCK","ts":{old}}}"#),
    );
    rig.set("kx1", "lock", r#"{"action":"UNLOCK","ts":"1"}"#);
    assert!(rig.commands().is_empty());
    let r = results(&rig.published());
    assert_eq!(r.len(), 8, "{r:?}");
    assert!(r.iter().all(|r| r["status"] == "rejected"));
    let reasons: Vec<&str> = r.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(reasons[0].starts_with("retained command ignored"));
    assert_eq!(reasons[1], "unknown vehicle");
    assert!(reasons[4].contains("does not support"), "{}", reasons[4]);
    assert!(reasons[6].starts_with("expired"));
    // A fresh ts is fine.
    let fresh = rig.now.wall.timestamp_millis();
    rig.set(
        "kx1",
        "lock",
        &format!(r#"{{"action":"UNLOCK","ts":{fresh}}}"#),
    );
    assert_eq!(rig.commands().len(), 1);
}

#[test]
fn a_pin_guards_unlock_and_a_wrong_one_locks_out_by_the_clock() {
    let mut c = config();
    c.bridge.command_pin = Secret::new("2468");
    let mut rig = Rig::new(c);
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.published();
    rig.set("kx1", "lock", "LOCK");
    assert_eq!(rig.commands().len(), 1, "locking needs no PIN");
    rig.set("kx1", "lock", "UNLOCK");
    rig.set("kx1", "lock", r#"{"action":"UNLOCK","code":"1111"}"#);
    rig.set("kx1", "engine", "ON");
    assert!(rig.commands().is_empty());
    let r = results(&rig.published());
    assert_eq!(r.len(), 3);
    assert!(
        r.iter().all(|r| r["reason"] == "wrong or missing PIN"),
        "{r:?}"
    );
    rig.set("kx1", "lock", r#"{"action":"UNLOCK","code":"2468"}"#);
    assert_eq!(rig.commands().len(), 1);
    // Brute force: five wrong PINs in a row lock the vehicle out; then even the right
    // one is refused with the reason; locking still works; every wrong PIN is counted.
    for i in 0..5 {
        rig.set(
            "kx1",
            "lock",
            &format!(
                r#"{{"action":"UNLOCK","code":"{:04}","id":"g{i}"}}"#,
                1000 + i
            ),
        );
    }
    rig.set(
        "kx1",
        "lock",
        r#"{"action":"UNLOCK","code":"2468","id":"right"}"#,
    );
    assert!(rig.commands().is_empty(), "locked out: not even compared");
    let r = results(&rig.published());
    let right = r.iter().find(|r| r["id"] == "right").unwrap();
    assert_eq!(right["status"], "rejected");
    assert!(right["reason"]
        .as_str()
        .unwrap()
        .starts_with("PIN locked for"));
    rig.tick(Tick::Info);
    let info = rig
        .published()
        .into_iter()
        .find(|m| m.topic == format!("{BASE}/bridge/info"))
        .expect("bridge/info");
    assert_eq!(
        info.json()["pin_failures"],
        8,
        "3 missing or wrong, 5 guesses"
    );
    rig.set("kx1", "lock", "LOCK");
    assert_eq!(rig.commands().len(), 1, "locking during the lockout");
    rig.advance(Duration::from_secs(3601));
    rig.set("kx1", "lock", r#"{"action":"UNLOCK","code":"2468"}"#);
    assert_eq!(rig.commands().len(), 1, "the lockout ends by the clock");
}

#[test]
fn the_pin_text_arms_one_command_and_is_cleared_at_once() {
    let mut c = config();
    c.bridge.command_pin = Secret::new("2468");
    let mut rig = Rig::new(c);
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    let docs = configs(&rig.published());
    let doc = |topic: &str| -> serde_json::Value {
        serde_json::from_slice(&docs[&format!("homeassistant/{topic}/config")]).unwrap()
    };
    let pin = doc("text/v2m/kx1_pin");
    assert_eq!(pin["mode"], "password");
    assert_eq!(pin["command_topic"], format!("{BASE}/kx1/pin/set"));
    let lock = doc("lock/v2m/kx1_lock");
    assert_eq!(
        lock["code_format"], "^.{0,64}$",
        "an empty code (locking) passes HA's check"
    );
    rig.set("kx1", "pin", "1111");
    rig.set("kx1", "engine", "ON");
    assert!(rig.commands().is_empty(), "a wrong PIN arms nothing");
    let r = results(&rig.published());
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| r["status"] == "rejected"));
    rig.set("kx1", "pin", "2468");
    let sent = rig.published();
    assert!(
        !sent.iter().any(|m| m.text().contains("2468")),
        "the PIN is never echoed"
    );
    assert!(sent
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/pin") && m.payload.is_empty()));
    assert_eq!(results(&sent)[0]["status"], "succeeded");
    rig.set("kx1", "engine", "ON");
    rig.set("kx1", "engine", "ON");
    let ran = rig.commands();
    assert_eq!(ran.len(), 1, "armed once");
    assert_eq!(ran[0].1, Command::EngineStart);
    let r = results(&rig.published());
    assert_eq!(r.last().unwrap()["reason"], "wrong or missing PIN");
    rig.set("kx1", "pin", "2468");
    rig.advance(Duration::from_secs(31));
    rig.set("kx1", "engine", "ON");
    assert!(rig.commands().is_empty(), "armed for 30 s");
    // Without a PIN set, the text is refused and nothing is cleared.
    let mut open = Rig::new(config());
    open.connect();
    open.update(Update::Vehicle(scooter("kx1")));
    open.published();
    open.set("kx1", "pin", "2468");
    let sent = open.published();
    assert!(!sent.iter().any(|m| m.topic == format!("{BASE}/kx1/pin")));
    assert_eq!(results(&sent)[0]["reason"], "no command_pin is set");
}

#[test]
fn a_vehicle_queues_command_queue_behind_the_running_one() {
    let mut c = config();
    c.bridge.command_queue = 2;
    let mut rig = Rig::new(c);
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.published();
    for _ in 0..4 {
        rig.set("kx1", "horn", "PRESS");
    }
    assert_eq!(rig.commands().len(), 3);
    let r = results(&rig.published());
    assert_eq!(r[0]["reason"], "command queue for this vehicle is full");
    rig.worker(WorkerEvent::Outcome {
        vehicle: vid("kx1"),
        id: "x".into(),
        command: Command::Horn,
        status: CommandStatus::Timeout,
        reason: None,
        reported_at: None,
    });
    rig.set("kx1", "horn", "PRESS");
    assert_eq!(rig.commands().len(), 1, "a final outcome frees a place");
}

#[test]
fn staleness_follows_the_vehicles_own_clock_with_one_grace_at_start() {
    let mut c = config();
    c.bridge.stale_after = Duration::from_secs(600);
    let mut rig = Rig::new(c);
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.update(Update::Vehicle(scooter("kx2")));
    rig.published();
    rig.tick(Tick::Stale);
    assert!(
        !rig.published()
            .iter()
            .any(|m| m.topic.ends_with("/availability")),
        "the first check waits for a first state"
    );
    rig.tick(Tick::Stale);
    let sent = rig.published();
    assert_eq!(
        sent.iter()
            .filter(|m| m.topic.ends_with("/availability") && m.text() == "offline")
            .count(),
        2
    );
    // kx1 reports with its own time, from 2020: not online, and its state says when.
    let mut old = state(50);
    old.set(Field::LastUpdate, "2020-08-10T12:24:50.325Z");
    rig.report("kx1", old);
    let sent = rig.published();
    assert_eq!(
        last_state(&sent, "kx1").unwrap()["last_update"],
        "2020-08-10T12:24:50.325Z"
    );
    assert!(!sent
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/availability") && m.text() == "online"));
    // A fresh report of its own time: online again.
    let mut fresh = state(50);
    fresh.set(Field::LastUpdate, rig.now.rfc3339_for_tests());
    rig.report("kx1", fresh);
    assert!(rig
        .published()
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/availability") && m.text() == "online"));
    // kx2 reports now, then nothing for 601 s.
    rig.report("kx2", state(50));
    assert!(rig
        .published()
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx2/availability") && m.text() == "online"));
    rig.advance(Duration::from_secs(599));
    rig.tick(Tick::Stale);
    assert!(!rig
        .published()
        .iter()
        .any(|m| m.topic.ends_with("/availability")));
    rig.advance(Duration::from_secs(2));
    rig.tick(Tick::Stale);
    let sent = rig.published();
    let offline: Vec<&str> = sent
        .iter()
        .filter(|m| m.topic.ends_with("/availability"))
        .map(|m| m.text())
        .collect();
    assert_eq!(
        offline,
        ["offline", "offline"],
        "both reported 601 s ago: {sent:?}"
    );
    assert_eq!(
        sent.iter()
            .filter(|m| m.topic == format!("{BASE}/kx2/availability"))
            .count(),
        1
    );
}

#[test]
fn absent_fields_lose_their_entity_only_when_configured() {
    for after in [Duration::ZERO, Duration::from_secs(3600)] {
        let mut c = config();
        c.bridge.forget_absent_entities_after = after;
        c.bridge.stale_after = Duration::from_secs(86400);
        let mut rig = Rig::new(c);
        rig.connect();
        rig.update(Update::Vehicle(scooter("kx1")));
        rig.report("kx1", state(50));
        rig.published();
        // Everything but the battery, for longer than `after`.
        let mut less = state(50);
        less.values.remove(&Field::BatteryLevel);
        rig.advance(Duration::from_secs(3601));
        rig.report("kx1", less);
        rig.tick(Tick::Stale);
        let removed: Vec<String> = rig
            .published()
            .into_iter()
            .filter(|m| m.topic.ends_with("/config") && m.payload.is_empty())
            .map(|m| m.topic)
            .collect();
        if after.is_zero() {
            assert!(removed.is_empty(), "{removed:?}");
        } else {
            assert_eq!(
                removed,
                vec!["homeassistant/sensor/v2m/kx1_battery_level/config".to_string()],
                "only the absent field goes"
            );
        }
    }
}

#[test]
fn a_vehicle_that_left_the_account_goes_with_its_retained_topics_and_record() {
    let mut rig = Rig::new(config());
    rig.connect();
    for id in ["kx1", "kx2"] {
        rig.update(Update::Vehicle(scooter(id)));
        rig.report(id, state(50));
    }
    let kx1: Vec<String> = configs(&rig.mqtt.0.sent.borrow())
        .into_keys()
        .filter(|t| t.contains("/kx1_"))
        .collect();
    rig.tick(Tick::Persist);
    assert_eq!(rig.persisted().len(), 2);
    rig.hub.records_written();
    rig.published();
    rig.update(Update::Roster(vec![vid("kx2")]));
    let sent = rig.published();
    for leaf in ["state", "availability"] {
        assert!(sent
            .iter()
            .any(|m| m.topic == format!("{BASE}/kx1/{leaf}") && m.payload.is_empty() && m.retain));
    }
    let emptied: Vec<String> = configs(&sent).into_keys().collect();
    assert_eq!(emptied, kx1, "all of kx1's entities, nothing of kx2's");
    assert!(sent.iter().all(|m| m.payload.is_empty()));
    assert!(!sent.iter().any(|m| m.topic.contains("kx2")));
    rig.tick(Tick::Persist);
    let writes = rig.persisted();
    assert!(matches!(&writes[..], [(id, store::Write::Remove)] if id.as_str() == "kx1"));
    // Commands for it are refused now.
    rig.set("kx1", "horn", "PRESS");
    assert!(rig.commands().is_empty());
}

#[test]
fn records_follow_entities_at_once_and_states_every_five_minutes() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(50));
    rig.tick(Tick::Persist);
    let first = rig.persisted();
    assert!(matches!(
        &first[..],
        [(
            _,
            store::Write::Save {
                keep_discovery: false,
                ..
            }
        )]
    ));
    rig.tick(Tick::Persist);
    assert!(rig.persisted().is_empty(), "one write at a time");
    rig.hub.records_written();
    rig.report("kx1", state(49));
    rig.advance(Duration::from_secs(60));
    rig.tick(Tick::Persist);
    assert!(rig.persisted().is_empty(), "a state alone waits");
    rig.advance(Duration::from_secs(241));
    rig.tick(Tick::Persist);
    let later = rig.persisted();
    match &later[..] {
        [(
            _,
            store::Write::Save {
                record,
                keep_discovery: true,
            },
        )] => assert_eq!(record.state["battery_level"], 49),
        other => panic!("{other:?}"),
    }
}

#[test]
fn home_assistant_coming_online_gets_every_document_again_after_a_delay() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    let announced = configs(&rig.published());
    rig.message("homeassistant/status", "online", true);
    assert!(
        rig.hub.rediscover_at().is_none(),
        "a retained birth is old news"
    );
    rig.message("homeassistant/status", "online", false);
    let at = rig.hub.rediscover_at().expect("a rediscovery is due");
    assert!(at >= rig.now.mono + Duration::from_millis(500));
    rig.tick(Tick::Rediscover);
    assert!(rig.published().is_empty(), "not yet");
    rig.advance(Duration::from_millis(2500));
    rig.tick(Tick::Rediscover);
    let again = configs(&rig.published());
    assert_eq!(again, announced);
    assert!(rig.hub.rediscover_at().is_none());
}

#[test]
fn a_stale_purge_removes_only_what_nothing_reports_and_unclaimed_configs() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(50));
    let records = rig.shutdown_records();
    let mut rig = Rig::with_records(config(), records);
    rig.connect();
    // A config some old run left, retained on the broker; one of our current ones.
    let orphan = "homeassistant/sensor/v2m/kx77_speed/config";
    rig.message(orphan, "{}", true);
    rig.message("homeassistant/sensor/v2m/bridge_gone/config", "{}", true);
    let sent = rig.published();
    assert!(sent
        .iter()
        .any(|m| m.topic.ends_with("bridge_gone/config") && m.payload.is_empty()));
    rig.message(&format!("{BASE}/bridge/purge/set"), "stale", true);
    assert!(rig.published().is_empty(), "a retained purge is ignored");
    rig.update(Update::Vehicle(scooter("kx1")));
    let mut battery = VehicleState::default();
    battery.set(Field::BatteryLevel, 10i64);
    rig.report("kx1", battery);
    rig.published();
    rig.message(&format!("{BASE}/bridge/purge/set"), "stale", false);
    let removed: Vec<String> = rig
        .published()
        .into_iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| m.topic)
        .collect();
    assert!(removed.contains(&orphan.to_string()));
    assert!(removed.iter().any(|t| t.ends_with("kx1_odometer/config")));
    assert!(!removed
        .iter()
        .any(|t| t.ends_with("kx1_battery_level/config")));
}

#[test]
fn per_field_topics_publish_changed_fields_only() {
    let mut c = config();
    c.mqtt.per_field_topics = true;
    let mut rig = Rig::new(c);
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(50));
    let sent = rig.published();
    assert!(sent
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/battery_level") && m.text() == "50"));
    assert!(sent
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/latitude")));
    rig.report("kx1", state(49));
    let fields: Vec<String> = rig
        .published()
        .into_iter()
        .map(|m| m.topic)
        .filter(|t| !t.ends_with("/state") && !t.ends_with("/last_update"))
        .collect();
    assert_eq!(fields, vec![format!("{BASE}/kx1/battery_level")]);
}

#[test]
fn a_connector_that_stops_says_whether_the_bridge_ends() {
    for exit in [true, false] {
        let mut c = config();
        c.bridge.exit_on_connector_failure = exit;
        let mut rig = Rig::new(c);
        assert_eq!(rig.hub.on_connector_exit(1, "port taken", rig.now), exit);
        rig.collect();
        let observed = rig.actions.iter().find_map(|a| match a {
            Action::Observe { snapshot, .. } => Some(snapshot.clone()),
            _ => None,
        });
        let snapshot = observed.expect("a snapshot");
        assert!(!snapshot.connectors[1].running);
        assert_eq!(snapshot.connectors[1].error.as_deref(), Some("port taken"));
        assert!(snapshot.health().is_err());
    }
}

#[test]
fn a_vehicle_can_have_its_own_stale_after() {
    let mut c = config();
    c.bridge.stale_after = Duration::from_secs(600);
    c.bridge.vehicle_stale_after.insert(
        "kx1".into(),
        crate::config::StaleAfter(Duration::from_secs(60)),
    );
    let mut rig = Rig::new(c);
    rig.connect();
    for id in ["kx1", "kx2"] {
        rig.update(Update::Vehicle(scooter(id)));
        rig.report(id, state(50));
    }
    rig.published();
    rig.advance(Duration::from_secs(61));
    rig.tick(Tick::Stale);
    let sent = rig.published();
    let availability: Vec<(&str, &str)> = sent
        .iter()
        .filter(|m| m.topic.ends_with("/availability"))
        .map(|m| (m.topic.as_str(), m.text()))
        .collect();
    assert_eq!(availability, [("v2m/kx1/availability", "offline")]);
}

#[test]
fn a_refresh_is_gated_per_vehicle_and_its_result_carries_the_reports_time() {
    let mut rig = Rig::new(config());
    rig.connect();
    let mut info = scooter("kx1");
    info.capabilities = vec![Capability::Refresh].into();
    rig.update(Update::Vehicle(info));
    rig.published();
    rig.set("kx1", "refresh", r#"{"action":"PRESS","id":"r1"}"#);
    rig.set("kx1", "refresh", r#"{"action":"PRESS","id":"r2"}"#);
    assert_eq!(rig.commands().len(), 1);
    let r = results(&rig.published());
    assert_eq!(r[0]["id"], "r2");
    assert_eq!(r[0]["reason"], "a refresh of this vehicle is still running");
    rig.worker(WorkerEvent::Outcome {
        vehicle: vid("kx1"),
        id: "r1".into(),
        command: Command::Refresh,
        status: CommandStatus::Succeeded,
        reason: Some("the vehicle reported at 2026-12-07T02:00:00Z".into()),
        reported_at: Some("2026-12-07T02:00:00Z".into()),
    });
    let r = results(&rig.published());
    assert_eq!(r[0]["reported_at"], "2026-12-07T02:00:00Z");
    rig.set("kx1", "refresh", "PRESS");
    assert!(rig.commands().is_empty(), "within refresh_min_gap");
    rig.advance(Duration::from_secs(30));
    rig.set("kx1", "refresh", "PRESS");
    assert_eq!(rig.commands().len(), 1, "after the gap");
    // Other results have no `reported_at`.
    rig.set("kx1", "horn", "PRESS");
    let r = results(&rig.published());
    assert!(r.iter().all(|r| r.get("reported_at").is_none()), "{r:?}");
}

#[test]
fn another_commands_outcome_leaves_a_waiting_locks_transition_alone() {
    let mut rig = Rig::new(config());
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(70));
    rig.set("kx1", "horn", r#"{"action":"PRESS","id":"h"}"#);
    rig.set("kx1", "lock", r#"{"action":"UNLOCK","id":"u"}"#);
    assert_eq!(rig.commands().len(), 2);
    rig.published();
    rig.worker(WorkerEvent::Outcome {
        vehicle: vid("kx1"),
        id: "h".into(),
        command: Command::Horn,
        status: CommandStatus::Succeeded,
        reason: None,
        reported_at: None,
    });
    let sent = rig.published();
    assert!(
        last_state(&sent, "kx1").is_none_or(|s| s["lock"] == "UNLOCKING"),
        "the horn's success says nothing of the lock: {sent:?}"
    );
    rig.report("kx1", state(69));
    assert_eq!(
        last_state(&rig.published(), "kx1").unwrap()["lock"],
        "UNLOCKING"
    );
    rig.worker(WorkerEvent::Outcome {
        vehicle: vid("kx1"),
        id: "u".into(),
        command: Command::Unlock,
        status: CommandStatus::Failed,
        reason: Some("no answer".into()),
        reported_at: None,
    });
    assert_eq!(
        last_state(&rig.published(), "kx1").unwrap()["lock"],
        "LOCKED",
        "a failed unlock shows the lock as the car last reported it"
    );
}

#[test]
fn a_full_queue_does_not_use_up_an_armed_pin() {
    let mut c = config();
    c.bridge.command_pin = Secret::new("2468");
    c.bridge.command_queue = 1;
    let mut rig = Rig::new(c);
    rig.connect();
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.set("kx1", "horn", "PRESS");
    rig.set("kx1", "horn", "PRESS");
    assert_eq!(rig.commands().len(), 2, "one running, one waiting");
    rig.set("kx1", "pin", "2468");
    rig.set("kx1", "engine", "ON");
    let r = results(&rig.published());
    assert_eq!(
        r.last().unwrap()["reason"],
        "command queue for this vehicle is full"
    );
    rig.worker(WorkerEvent::Outcome {
        vehicle: vid("kx1"),
        id: "x".into(),
        command: Command::Horn,
        status: CommandStatus::Succeeded,
        reason: None,
        reported_at: None,
    });
    rig.set("kx1", "engine", "ON");
    assert_eq!(rig.commands().len(), 1, "the armed PIN is still good");
}

mod interleavings {
    //! Any interleaving of updates, MQTT loss, a client with no room and restarts never
    //! publishes an empty retained discovery payload for a configured vehicle, and ends
    //! with every vehicle's newest state published.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Announce(usize),
        Report(usize, i64),
        Disconnect,
        Connect,
        Room(usize),
        Tick(u8),
        Restart,
        Birth,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize).prop_map(Step::Announce),
            (0..3usize, 0..100i64).prop_map(|(v, b)| Step::Report(v, b)),
            (0..3usize, 0..100i64).prop_map(|(v, b)| Step::Report(v, b)),
            Just(Step::Disconnect),
            Just(Step::Connect),
            (0..6usize).prop_map(Step::Room),
            (0..4u8).prop_map(Step::Tick),
            Just(Step::Restart),
            Just(Step::Birth),
        ]
    }

    const IDS: [&str; 3] = ["kx1", "kx2", "kx3"];

    fn configured() -> Vec<super::super::hub::ConnectorInfo> {
        vec![("kingxun", Some(IDS.iter().map(|s| vid(s)).collect()))]
    }

    fn hub(
        mqtt: &FakeMqtt,
        records: BTreeMap<VehicleId, store::Record>,
        now: Now,
    ) -> Hub<FakeMqtt> {
        let mut c = config();
        c.mqtt.queue_capacity = 1; // a retry queue of 100: overflow is part of the game
        Hub::new(c, mqtt.clone(), configured(), records, now)
    }

    /// What `store::save_all` would leave on disk.
    fn write(disk: &mut BTreeMap<VehicleId, store::Record>, batch: records::Batch) {
        for (id, w) in batch {
            match w {
                store::Write::Remove => {
                    disk.remove(&id);
                }
                store::Write::Save {
                    mut record,
                    keep_discovery,
                } => {
                    if keep_discovery {
                        record.discovery = disk
                            .get(&id)
                            .map(|r| r.discovery.clone())
                            .unwrap_or_default();
                    }
                    disk.insert(id, *record);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn no_configured_vehicle_loses_its_documents_and_the_newest_state_wins(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            let mqtt = FakeMqtt(Rc::new(Client::default()));
            mqtt.0.room.set(usize::MAX);
            let mut now = Now::real();
            let mut h = hub(&mqtt, BTreeMap::new(), now);
            let mut newest: BTreeMap<usize, i64> = BTreeMap::new();
            let mut disk = BTreeMap::new();
            let mut connected = false;
            for s in steps {
                now = now.after(Duration::from_millis(700));
                match s {
                    Step::Announce(v) => h.on_update(0, Update::Vehicle(scooter(IDS[v])), now),
                    Step::Report(v, b) => {
                        newest.insert(v, b);
                        h.on_update(0, Update::State { vehicle: vid(IDS[v]), state: state(b), replace: false }, now);
                    }
                    Step::Disconnect => {
                        connected = false;
                        h.on_mqtt(MqttEvent::Disconnected("x".into()), now);
                    }
                    Step::Connect => {
                        connected = true;
                        h.on_mqtt(MqttEvent::Connected, now);
                    }
                    Step::Room(n) => mqtt.0.room.set(if n == 5 { usize::MAX } else { n }),
                    Step::Tick(t) => h.on_tick([Tick::Retry, Tick::Stale, Tick::Persist, Tick::Info][t as usize], now),
                    Step::Restart => {
                        // What a shutdown writes is what the next run starts from.
                        h.records_written();
                        while let Some(batch) = h.final_records(now) {
                            write(&mut disk, batch);
                        }
                        h = hub(&mqtt, disk.clone(), now);
                        connected = false;
                    }
                    Step::Birth => {
                        let birth = MqttEvent::Message {
                            topic: "homeassistant/status".into(),
                            payload: Bytes::from_static(b"online"),
                            retain: false,
                            expires_in: None,
                        };
                        h.on_mqtt(birth, now);
                        h.on_tick(Tick::Rediscover, now.after(Duration::from_secs(3)));
                    }
                }
                for action in h.take_actions() {
                    if let Action::Persist(batch) = action {
                        write(&mut disk, batch);
                        h.records_written();
                    }
                }
                let sent = mqtt.0.sent.borrow();
                let removal = sent.iter().find(|m| m.topic.ends_with("/config") && m.payload.is_empty() && m.retain);
                prop_assert!(removal.is_none(), "a configured vehicle lost an entity: {:?}", removal);
            }
            // MQTT comes back with room: every vehicle's newest state goes out.
            mqtt.0.room.set(usize::MAX);
            if !connected {
                h.on_mqtt(MqttEvent::Connected, now);
            }
            for _ in 0..5 {
                h.on_tick(Tick::Retry, now);
            }
            let sent = mqtt.0.sent.borrow();
            for (v, battery) in newest {
                let last = last_state(&sent, IDS[v]);
                prop_assert_eq!(last.map(|s| s["battery_level"].clone()), Some(serde_json::json!(battery)), "{}", IDS[v]);
            }
        }
    }
}

/// The status page's fleet table: filtered, sorted and paged by the hub, with since when
/// each vehicle shows what it shows and its last command; events and results in the feed.
#[test]
fn the_fleet_page_filters_sorts_pages_and_shows_the_last_command() {
    use crate::status_page::feed::{Feed, FleetQuery, SortKey, StateFilter};
    let mut rig = Rig::new(config());
    let feed = Feed::default();
    rig.hub.set_feed(feed.clone());
    rig.connect();
    for i in 0..250i64 {
        let (owner, id) = if i % 5 == 0 {
            (1, format!("ex{i}"))
        } else {
            (0, format!("kx{i}"))
        };
        let mut info = scooter(&id);
        info.name = if i % 2 == 0 {
            format!("scooter {i:03}")
        } else {
            format!("Scooter {i:03}")
        };
        rig.hub.on_update(owner, Update::Vehicle(info), rig.now);
        rig.hub.on_update(
            owner,
            Update::State {
                vehicle: vid(&id),
                state: state(i % 100),
                replace: false,
            },
            rig.now,
        );
        if i % 10 == 3 {
            rig.hub.on_update(
                owner,
                Update::Availability {
                    vehicle: vid(&id),
                    online: false,
                },
                rig.now,
            );
        }
        rig.collect();
    }
    let page = |q: FleetQuery| rig.hub.fleet_page(&q);
    let all = page(FleetQuery::default());
    assert_eq!(
        (all.total, all.matched, all.pages, all.page, all.rows.len()),
        (250, 250, 3, 1, 100)
    );
    let names: Vec<&str> = all.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names[..3],
        ["scooter 000", "Scooter 001", "scooter 002"],
        "by name, any case"
    );
    let first = &all.rows[0];
    assert_eq!((first.upstream, first.online), ("exlive", Some(true)));
    assert!(first.since.is_some() && first.reported_at.is_some());
    assert_eq!(first.energy.as_deref(), Some("battery 0 %"));
    assert_eq!(first.actions, ["lock"]);

    let last = page(FleetQuery {
        page: 9,
        ..Default::default()
    });
    assert_eq!(
        (last.page, last.rows.len()),
        (3, 50),
        "a page past the end is the last"
    );
    let ex = page(FleetQuery {
        q: "EXLIVE".into(),
        ..Default::default()
    });
    assert_eq!(ex.matched, 50);
    assert!(ex.rows.iter().all(|r| r.upstream == "exlive"));
    let off = page(FleetQuery {
        state: StateFilter::Offline,
        ..Default::default()
    });
    assert_eq!(off.matched, 25);
    assert!(off.rows.iter().all(|r| r.online == Some(false)));
    let full = page(FleetQuery {
        sort: SortKey::Battery,
        desc: true,
        ..Default::default()
    });
    assert_eq!(full.rows[0].energy.as_deref(), Some("battery 99 %"));
    let state_first = page(FleetQuery {
        sort: SortKey::State,
        ..Default::default()
    });
    assert_eq!(state_first.rows[0].online, Some(true));
    let state_last = page(FleetQuery {
        sort: SortKey::State,
        page: 3,
        ..Default::default()
    });
    assert_eq!(state_last.rows.last().and_then(|r| r.online), Some(false));

    // A command and its result: the row's last command, and an entry in the feed.
    rig.set("kx1", "lock", r#"{"action":"UNLOCK","id":"page-1"}"#);
    assert_eq!(rig.commands().len(), 1);
    rig.worker(WorkerEvent::Outcome {
        vehicle: vid("kx1"),
        id: "page-1".into(),
        command: Command::Unlock,
        status: CommandStatus::Succeeded,
        reason: None,
        reported_at: None,
    });
    let row = rig
        .hub
        .fleet_page(&FleetQuery {
            q: "kx1".into(),
            ..Default::default()
        })
        .rows;
    let kx1 = row.iter().find(|r| r.id == "kx1").unwrap();
    assert!(
        kx1.command
            .as_deref()
            .is_some_and(|c| c.starts_with("unlock: succeeded at ")),
        "{kx1:?}"
    );
    let (entries, _) = feed.entries(1);
    assert_eq!(
        (entries[0].kind, entries[0].what.as_str()),
        ("result", "unlock: succeeded")
    );
    assert!(entries[0].detail.contains("page-1"));
}
