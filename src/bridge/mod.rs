//! The hub: receives connector updates, keeps each vehicle's last state, publishes state,
//! availability and discovery, validates commands and routes them to their connector.
//!
//! Everything here runs on one task, so vehicle state needs no locks. The hub never waits
//! on MQTT (see [`crate::mqtt::Publisher`]); per-vehicle command workers do the waiting.

pub mod command;
mod lifecycle;
pub mod store;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerUrl, Config};
use crate::connector::{CommandRequest, Connector, ConnectorContext, Update, UpdateSink};
use crate::hass::{self, Topics};
use crate::model::{
    lock_state, Command, CommandStatus, Field, Value, VehicleEvent, VehicleId, VehicleInfo,
    VehicleState,
};
use crate::mqtt::{self, MqttEvent, Publisher};
use worker::{Queued, WorkerEvent};

/// Capacity of the connectors → hub queue.
const UPDATE_QUEUE: usize = 8192;
/// Capacity of each connector's command queue.
const CONNECTOR_COMMAND_QUEUE: usize = 64;
/// Messages (other than states) waiting for room in the MQTT client's queue.
const RETRY_QUEUE: usize = 50_000;
/// How often messages that found MQTT busy are retried.
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// How often vehicle records whose entities changed are written to `state_dir`.
const PERSIST_EVERY: Duration = Duration::from_secs(15);
/// A vehicle's changed state is written at most this often (and at shutdown): a scooter
/// reporting every 5 s must not wear out an SD card.
const PERSIST_STATE_EVERY: Duration = Duration::from_secs(300);
/// Records written per persist tick, at most (all of them at shutdown).
const PERSIST_BATCH: usize = 500;
/// How long a PIN entered in HA's `Command PIN` text stays good for one command.
const PIN_ARMED_FOR: Duration = Duration::from_secs(30);

struct ConnectorSlot {
    name: &'static str,
    commands: mpsc::Sender<CommandRequest>,
    links: usize,
    /// False once the connector stopped.
    running: bool,
    error: Option<String>,
    counters: BTreeMap<&'static str, u64>,
    /// Every vehicle the connector's config lists, when it lists them all.
    configured: Option<HashSet<VehicleId>>,
}

struct Vehicle {
    owner: usize,
    info: VehicleInfo,
    /// False for a vehicle restored from `state_dir` that its connector has not announced
    /// yet: its discovery documents are the remembered ones, not rebuilt.
    info_known: bool,
    state: VehicleState,
    /// The connector's view; a vehicle is offline until its connector says otherwise.
    online: bool,
    /// Whether the connector ever sent an availability: if not, a state means online.
    availability_told: bool,
    /// When the vehicle itself last reported (its own clock where the upstream gives one,
    /// never in the future).
    reported_at: Option<chrono::DateTime<Utc>>,
    /// Whether the upstream gives the vehicle's own time (then only that counts).
    own_clock: bool,
    /// When each field was last reported.
    field_times: store::FieldTimes,
    /// Fields reported since the bridge started (a purge keeps these).
    reported_this_run: hass::Shape,
    stale: bool,
    published_availability: Option<bool>,
    /// Discovery topic → payload, as last published.
    discovery: BTreeMap<String, String>,
    /// Every field ever reported and whether it had a position: the entity set.
    shape: hass::Shape,
    /// The shape and info discovery was last built from.
    built_from: Option<u64>,
    /// The state in its `state_dir` record is behind.
    dirty: bool,
    /// The entities in its record are behind (written at the next persist tick).
    entities_dirty: bool,
    /// When its record was last written.
    saved_at: Option<std::time::Instant>,
    /// A PIN entered in HA's `Command PIN` text, valid for one command until then.
    armed_pin: Option<std::time::Instant>,
    /// Per-field topic → payload, as last published (only with `per_field_topics`).
    field_payloads: BTreeMap<String, String>,
    /// LOCKING / UNLOCKING while a lock command is in flight.
    pending_lock: Option<&'static str>,
    worker: Option<mpsc::Sender<Queued>>,
}

impl Vehicle {
    fn new(owner: usize, info: VehicleInfo) -> Vehicle {
        Vehicle {
            owner,
            info,
            info_known: true,
            state: VehicleState::default(),
            online: false,
            availability_told: false,
            reported_at: None,
            own_clock: false,
            field_times: store::FieldTimes::default(),
            reported_this_run: hass::Shape::default(),
            stale: false,
            published_availability: None,
            discovery: BTreeMap::new(),
            shape: hass::Shape::default(),
            built_from: None,
            dirty: false,
            entities_dirty: false,
            saved_at: None,
            armed_pin: None,
            field_payloads: BTreeMap::new(),
            pending_lock: None,
            worker: None,
        }
    }

    fn available(&self) -> bool {
        self.online && !self.stale
    }
}

fn default_info(id: &VehicleId, connector: &str) -> VehicleInfo {
    VehicleInfo {
        id: id.clone(),
        name: id.to_string(),
        manufacturer: connector.to_string(),
        model: "Vehicle".into(),
        sw_version: None,
        custom_name: false,
        serial_number: None,
        capabilities: Vec::new(),
        event_types: Vec::new(),
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn new_command_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

struct Hub {
    config: Config,
    topics: Topics,
    publisher: Publisher,
    connectors: Vec<ConnectorSlot>,
    vehicles: HashMap<VehicleId, Vehicle>,
    worker_tx: mpsc::Sender<WorkerEvent>,
    last_error: Option<String>,
    info_dirty: bool,
    last_info: String,
    rediscover_at: Option<Instant>,
    /// Non-state messages that found the MQTT queue full, oldest first.
    retry: VecDeque<(String, Vec<u8>, bool)>,
    mqtt_connected: bool,
    /// The broker refused a subscription; retried on the alive tick until it accepts.
    subscription_refused: bool,
    /// The refusal count when the subscriptions were last asked for again.
    refusals_at_retry: Option<u64>,
    /// Vehicles whose newest state is not yet published (states coalesce: only the
    /// newest matters, so this is a set, not a queue).
    unsent_states: HashSet<VehicleId>,
    /// Retained discovery configs of ours found on the broker (a purge removes those no
    /// vehicle claims).
    unclaimed_configs: HashSet<String>,
    /// Vehicles whose record in `state_dir` is to be deleted.
    forgotten: Vec<VehicleId>,
    /// The write of vehicle records in progress.
    persisting: Option<tokio::task::JoinHandle<()>>,
    /// Command results by status, for `/metrics`.
    command_results: BTreeMap<String, u64>,
    /// Wrong PINs per vehicle and across all of them, with their lockouts.
    pin_tries: HashMap<VehicleId, command::PinTries>,
    pin_tries_overall: command::PinTries,
    /// Every wrong PIN since start.
    pin_failures: u64,
    /// What `/metrics`, `/healthz` and the liveness file show.
    snapshot: crate::observe::SharedSnapshot,
}

/// Runs the bridge until `shutdown` is cancelled: starts the broker (if embedded), the
/// MQTT client and every connector.
pub async fn run(
    mut config: Config,
    connectors: Vec<Box<dyn Connector>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.mqtt.url == "embedded" && config.mqtt.username.is_empty() {
        // Never an anonymous broker: a login made once, kept in state_dir (0600).
        let (user, password) = crate::state_dir::embedded_login(&config.bridge.state_dir)?;
        config.mqtt.username = user;
        config.mqtt.password = crate::config::Secret::new(password);
    }
    if config.mqtt.client_id.is_empty() {
        config.mqtt.client_id = crate::state_dir::client_id(&config.bridge.state_dir)?;
    }
    let endpoint = match config
        .mqtt
        .broker_url()
        .map_err(anyhow::Error::msg)
        .context("mqtt.url")?
    {
        BrokerUrl::Embedded => start_embedded(&config)?,
        BrokerUrl::Tcp { host, port, tls } => mqtt::Endpoint { host, port, tls },
    };
    let (mqtt_tx, mut mqtt_rx) = mpsc::channel(1024);
    // The embedded broker (rumqttd's 3.1.1 listener) is spoken to in 3.1.1.
    let protocol = match config.mqtt.url == "embedded" {
        true => crate::config::MqttProtocol::V311,
        false => config.mqtt.protocol,
    };
    let (publisher, mqtt_task) = mqtt::start(&config.mqtt, &endpoint, protocol, mqtt_tx)?;

    let (update_tx, mut update_rx) = mpsc::channel(UPDATE_QUEUE);
    let (worker_tx, mut worker_rx) = mpsc::channel(1024);
    let (exit_tx, mut exit_rx) = mpsc::channel::<(usize, String)>(16);
    let mut slots = Vec::new();
    for (index, connector) in connectors.into_iter().enumerate() {
        let name = connector.name();
        let configured = connector
            .configured_vehicles()
            .map(|ids| ids.into_iter().collect());
        let (cmd_tx, cmd_rx) = mpsc::channel(CONNECTOR_COMMAND_QUEUE);
        let ctx = ConnectorContext {
            updates: UpdateSink::new(index, update_tx.clone()),
            commands: cmd_rx,
            shutdown: shutdown.child_token(),
        };
        let exit_tx = exit_tx.clone();
        tokio::spawn(async move {
            let result = connector.run(ctx).await;
            let reason = match result {
                Ok(()) => "stopped".to_string(),
                Err(err) => format!("{err:#}"),
            };
            let _ = exit_tx.send((index, reason)).await;
        });
        tracing::info!(
            event = "connector_started",
            connector = name,
            "connector started"
        );
        slots.push(ConnectorSlot {
            name,
            commands: cmd_tx,
            links: 0,
            running: true,
            error: None,
            counters: BTreeMap::new(),
            configured,
        });
    }
    drop(update_tx);

    let topics = Topics::new(&config.mqtt.base_topic, &config.mqtt.discovery_prefix);
    let mut hub = Hub {
        config,
        topics,
        publisher: publisher.clone(),
        connectors: slots,
        vehicles: HashMap::new(),
        worker_tx,
        last_error: None,
        info_dirty: true,
        last_info: String::new(),
        rediscover_at: None,
        retry: VecDeque::new(),
        mqtt_connected: false,
        subscription_refused: false,
        refusals_at_retry: None,
        unsent_states: HashSet::new(),
        unclaimed_configs: HashSet::new(),
        forgotten: Vec::new(),
        persisting: None,
        command_results: BTreeMap::new(),
        pin_tries: HashMap::new(),
        pin_tries_overall: command::PinTries::default(),
        pin_failures: 0,
        snapshot: crate::observe::SharedSnapshot::default(),
    };
    hub.restore();
    if !hub.config.bridge.http_listen.trim().is_empty() {
        let addr = hub.config.bridge.http_listen.trim().to_string();
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("bridge.http_listen: cannot listen on {addr}"))?;
        tracing::info!(event = "http_listening", listen = %addr, "serving /metrics and /healthz");
        let (snapshot, stop) = (hub.snapshot.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::observe::serve(listener, snapshot, stop).await {
                tracing::error!(event = "http_stopped", error = %e, "metrics endpoint stopped");
            }
        });
    }
    let mut retry_tick = tokio::time::interval(RETRY_EVERY);
    let stale_check = (hub.config.bridge.stale_after / 4)
        .clamp(Duration::from_millis(200), Duration::from_secs(30));
    let mut stale_tick = tokio::time::interval(stale_check);
    let mut info_tick = tokio::time::interval(Duration::from_secs(1));
    let mut alive_tick = tokio::time::interval(crate::state_dir::ALIVE_EVERY);
    let mut persist_tick = tokio::time::interval(PERSIST_EVERY);

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((index, update)) = update_rx.recv() => hub.on_update(index, update),
            Some(event) = mqtt_rx.recv() => hub.on_mqtt(event),
            Some(event) = worker_rx.recv() => hub.on_worker(event),
            Some((index, reason)) = exit_rx.recv() => {
                let name = hub.connectors[index].name;
                if !shutdown.is_cancelled() {
                    tracing::error!(event = "connector_exited", connector = name, reason = %reason, "connector stopped");
                    hub.connectors[index].running = false;
                    hub.connectors[index].error = Some(reason.clone());
                    hub.set_error(format!("{name}: {reason}"));
                    hub.update_snapshot();
                    if hub.config.bridge.exit_on_connector_failure {
                        hub.send(hub.topics.bridge_state(), "offline", true);
                        publisher.disconnect().await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), mqtt_task).await;
                        crate::state_dir::remove_alive(&hub.config.bridge.state_dir);
                        anyhow::bail!("{name} cannot go on: {reason}");
                    }
                }
            }
            _ = async { tokio::time::sleep_until(hub.rediscover_at.unwrap_or_else(Instant::now)).await },
                if hub.rediscover_at.is_some() => {
                hub.rediscover_at = None;
                hub.publish_everything(true);
            }
            _ = stale_tick.tick() => {
                hub.check_stale();
                hub.forget_absent_fields();
            }
            _ = persist_tick.tick() => hub.persist(false),
            _ = info_tick.tick() => {
                hub.flush_info();
                hub.update_snapshot();
            }
            _ = alive_tick.tick() => {
                hub.retry_refused_subscriptions();
                hub.write_alive();
            }
            _ = retry_tick.tick(), if hub.mqtt_connected && (!hub.retry.is_empty() || !hub.unsent_states.is_empty()) => hub.flush_retries(),
        }
    }

    tracing::info!(event = "shutdown", "shutting down: publishing offline");
    if let Some(writing) = hub.persisting.take() {
        let _ = writing.await;
    }
    hub.persist(true);
    if let Some(writing) = hub.persisting.take() {
        let _ = writing.await;
    }
    // A stopped bridge is not alive, whatever the file said a moment ago.
    crate::state_dir::remove_alive(&hub.config.bridge.state_dir);
    hub.send(hub.topics.bridge_state(), "offline", true);
    publisher.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(5), mqtt_task)
        .await
        .is_err()
    {
        tracing::warn!(
            event = "shutdown_flush_timeout",
            "MQTT did not flush within 5 s"
        );
    }
    Ok(())
}

#[cfg(feature = "embedded-broker")]
fn start_embedded(config: &Config) -> anyhow::Result<mqtt::Endpoint> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let listen = mqtt::broker::start(&config.mqtt, 20_000)?;
    let host = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
        IpAddr::V6(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.to_string(),
        ip => ip.to_string(),
    };
    tracing::info!(event = "embedded_broker_started", listen = %listen,
        "embedded MQTT broker listening on {listen}: point Home Assistant's MQTT integration here");
    Ok(mqtt::Endpoint {
        host,
        port: listen.port(),
        tls: false,
    })
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded(_config: &Config) -> anyhow::Result<mqtt::Endpoint> {
    anyhow::bail!(
        "mqtt.url = \"embedded\" but this build has no embedded broker (feature `embedded-broker`)"
    )
}

impl Hub {
    fn set_error(&mut self, error: String) {
        self.last_error = Some(error);
        self.info_dirty = true;
    }

    // ---- connector updates -------------------------------------------------------

    fn on_update(&mut self, owner: usize, update: Update) {
        match update {
            Update::Vehicle(info) => {
                let id = info.id.clone();
                match self.vehicles.get_mut(&id) {
                    Some(v) => {
                        v.owner = owner;
                        v.info = info;
                        v.info_known = true;
                    }
                    None => {
                        tracing::info!(event = "vehicle_added", vehicle = %id, connector = self.connectors[owner].name, "new vehicle");
                        self.vehicles.insert(id.clone(), Vehicle::new(owner, info));
                        self.info_dirty = true;
                    }
                }
                // Availability waits for the first state or the connector's word (or the
                // next stale check): never "online" for a device that has not linked.
                self.sync_discovery(&id, false);
            }
            Update::State {
                vehicle,
                state,
                replace,
            } => {
                let name = self.connectors[owner].name;
                let v = self.vehicles.entry(vehicle.clone()).or_insert_with(|| {
                    tracing::info!(event = "vehicle_added", vehicle = %vehicle, connector = name, "new vehicle");
                    Vehicle::new(owner, default_info(&vehicle, name))
                });
                // The vehicle's own time when the upstream gives one, else now; never
                // ahead of the bridge's clock.
                let now = Utc::now();
                let own_time = state
                    .get(Field::LastUpdate)
                    .and_then(|t| match t {
                        Value::Text(t) => chrono::DateTime::parse_from_rfc3339(t).ok(),
                        _ => None,
                    })
                    .map(|t| t.with_timezone(&Utc).min(now));
                // Once the upstream gives the vehicle's own time, updates without one
                // (a data plan, a connection status) do not make it "just reported".
                v.own_clock |= own_time.is_some();
                let reported = own_time.unwrap_or(now);
                let advances = own_time.is_some() || !v.own_clock;
                for field in state.values.keys() {
                    v.field_times.insert(*field, reported);
                }
                v.reported_this_run.absorb(&state);
                if v.shape.absorb(&state) {
                    v.entities_dirty = true;
                }
                if replace {
                    // Fields absent now show "unknown"; their entities stay (see
                    // `lifecycle`), and so does the last known position.
                    let position = v.state.position;
                    v.state = state;
                    v.state.position = v.state.position.or(position);
                } else {
                    v.state.merge(state);
                }
                if advances {
                    v.reported_at = Some(v.reported_at.map_or(reported, |r| r.max(reported)));
                }
                let last = v.reported_at.unwrap_or(reported);
                v.state.set(
                    Field::LastUpdate,
                    last.to_rfc3339_opts(SecondsFormat::Millis, true),
                );
                v.field_times.insert(Field::LastUpdate, last);
                v.shape.fields.insert(Field::LastUpdate);
                v.reported_this_run.fields.insert(Field::LastUpdate);
                v.dirty = true;
                if !v.availability_told {
                    v.online = true;
                }
                self.info_dirty = true;
                self.check_stale_one(&vehicle);
                self.sync_discovery(&vehicle, false);
                self.publish_state(&vehicle);
                self.publish_availability(&vehicle, false);
            }
            Update::Availability { vehicle, online } => {
                if let Some(v) = self.vehicles.get_mut(&vehicle) {
                    v.online = online;
                    v.availability_told = true;
                    self.publish_availability(&vehicle, false);
                }
            }
            Update::Event { vehicle, event } => self.publish_event(&vehicle, event),
            Update::Roster(vehicles) => self.on_roster(owner, vehicles),
            Update::Counters(counters) => {
                self.connectors[owner].counters = counters;
                self.info_dirty = true;
            }
            Update::Recovered => {
                let slot = &mut self.connectors[owner];
                if slot.error.take().is_some() {
                    tracing::info!(event = "connector_recovered", connector = %slot.name, "connector works again");
                    self.info_dirty = true;
                }
            }
            Update::Health { links, error } => {
                let slot = &mut self.connectors[owner];
                slot.links = links;
                if let Some(err) = error {
                    let msg = format!("{}: {err}", slot.name);
                    slot.error = Some(err);
                    self.set_error(msg);
                }
                self.info_dirty = true;
            }
        }
    }

    // ---- publishing ----------------------------------------------------------------

    /// Publishes a vehicle's state now, or remembers that it is owed when MQTT is busy or
    /// away: owed states coalesce to the newest, so a reconnect sends the latest state of
    /// each vehicle, never a replay of the stale ones queued in the client.
    fn publish_state(&mut self, id: &VehicleId) {
        let owed = !self.mqtt_connected || !self.retry.is_empty() || !self.try_publish_state(id);
        if !owed {
            self.unsent_states.remove(id);
        } else if !self.unsent_states.insert(id.clone()) {
            self.publisher
                .stats()
                .coalesced_states
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn try_publish_state(&mut self, id: &VehicleId) -> bool {
        let Some(v) = self.vehicles.get_mut(id) else {
            return true;
        };
        let mut json = v.state.to_json();
        if let Some(pending) = v.pending_lock {
            json["lock"] = pending.into();
        }
        let topic = self.topics.vehicle(id.as_str(), "state");
        if !self.publisher.try_publish(&topic, json.to_string(), true) {
            return false;
        }
        if self.config.mqtt.per_field_topics {
            let json_booleans =
                self.config.mqtt.per_field_booleans == crate::config::BoolFormat::TrueFalse;
            let mut fields: Vec<(String, String)> = v
                .state
                .values
                .iter()
                .map(|(field, value)| {
                    let payload = match (field, v.pending_lock) {
                        (Field::Lock, Some(p)) => p.to_string(),
                        _ => value.to_payload_with(json_booleans),
                    };
                    (self.topics.vehicle(id.as_str(), field.key()), payload)
                })
                .collect();
            if let Some(p) = v.state.position {
                fields.push((
                    self.topics.vehicle(id.as_str(), "latitude"),
                    p.latitude.to_string(),
                ));
                fields.push((
                    self.topics.vehicle(id.as_str(), "longitude"),
                    p.longitude.to_string(),
                ));
            }
            for (topic, payload) in fields {
                if v.field_payloads.get(&topic) != Some(&payload) {
                    if !self.publisher.try_publish(&topic, payload.clone(), true) {
                        return false; // the rest goes out with the retry
                    }
                    v.field_payloads.insert(topic, payload);
                }
            }
        }
        true
    }

    /// Publishes now if MQTT has room (and nothing older is waiting), else queues it.
    fn send(&mut self, topic: String, payload: impl Into<Vec<u8>>, retain: bool) {
        let payload = payload.into();
        if self.retry.is_empty() && self.publisher.try_publish(&topic, payload.clone(), retain) {
            return;
        }
        if self.retry.len() >= RETRY_QUEUE {
            if let Some((dropped, _, _)) = self.retry.pop_front() {
                self.publisher.dropped(&dropped);
                self.info_dirty = true;
            }
        }
        self.retry.push_back((topic, payload, retain));
    }

    fn flush_retries(&mut self) {
        if !self.mqtt_connected {
            return; // the reconnect publishes everything owed
        }
        while let Some((topic, payload, retain)) = self.retry.pop_front() {
            if !self.publisher.try_publish(&topic, payload.clone(), retain) {
                self.retry.push_front((topic, payload, retain));
                return;
            }
        }
        let ids: Vec<VehicleId> = self.unsent_states.drain().collect();
        let mut ids = ids.into_iter();
        for id in ids.by_ref() {
            if !self.try_publish_state(&id) {
                self.unsent_states.insert(id);
                break;
            }
        }
        self.unsent_states.extend(ids);
    }

    fn publish_availability(&mut self, id: &VehicleId, force: bool) {
        let Some(v) = self.vehicles.get_mut(id) else {
            return;
        };
        let available = v.available();
        if force || v.published_availability != Some(available) {
            v.published_availability = Some(available);
            let topic = self.topics.vehicle(id.as_str(), "availability");
            self.send(topic, if available { "online" } else { "offline" }, true);
        }
    }

    fn publish_event(&mut self, id: &VehicleId, event: VehicleEvent) {
        let mut payload = event.attributes;
        payload.insert("event_type".into(), event.event_type.into());
        payload.insert("ts".into(), now_rfc3339().into());
        let topic = self.topics.vehicle(id.as_str(), "event");
        self.send(topic, serde_json::Value::Object(payload).to_string(), false);
    }

    fn publish_result(
        &mut self,
        vehicle: &str,
        id: &str,
        command: &str,
        status: CommandStatus,
        reason: Option<&str>,
    ) {
        *self
            .command_results
            .entry(
                serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            )
            .or_default() += 1;
        let payload = json!({
            "id": id,
            "command": command,
            "status": status,
            "reason": reason,
            "ts": now_rfc3339(),
        });
        let topic = self.topics.vehicle(vehicle, "command/result");
        self.send(topic, payload.to_string(), false);
    }

    /// Proves the loop is alive and records its health verdict (`vehicle2mqtt health`).
    fn write_alive(&mut self) {
        self.update_snapshot();
        let verdict = self.snapshot.read().map(|s| s.health()).unwrap_or(Ok(()));
        if let Err(err) = crate::state_dir::write_alive(
            &self.config.bridge.state_dir,
            self.mqtt_connected,
            verdict,
        ) {
            tracing::warn!(
                event = "alive_write_failed",
                error = format!("{err:#}"),
                "cannot write the liveness file"
            );
        }
    }

    /// Refreshes what `/metrics`, `/healthz` and the liveness file show.
    fn update_snapshot(&mut self) {
        let stats = self.publisher.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let snap = crate::observe::Snapshot {
            mqtt_connected: self.mqtt_connected,
            connectors: self
                .connectors
                .iter()
                .map(|c| crate::observe::ConnectorView {
                    name: c.name,
                    links: c.links,
                    error: c.error.clone(),
                    running: c.running,
                    counters: c.counters.clone(),
                })
                .collect(),
            vehicles: self.vehicles.len(),
            vehicles_online: self
                .vehicles
                .values()
                .filter(|v| v.published_availability == Some(true))
                .count(),
            commands: self.command_results.clone(),
            pin_failures: self.pin_failures,
            mqtt_published: load(&stats.published),
            mqtt_dropped: load(&stats.dropped_publishes),
            mqtt_coalesced: load(&stats.coalesced_states),
            mqtt_reconnects: load(&stats.reconnects),
            mqtt_subscribe_refused: load(&stats.subscribe_refused),
            mqtt_oversized_incoming: load(&stats.oversized_incoming),
            mqtt_protocol: load(&stats.protocol),
            subscription_refused: self.subscription_refused,
        };
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
    }

    fn bridge_info(&self) -> serde_json::Value {
        let connectors: Vec<_> = self
            .connectors
            .iter()
            .map(|c| json!({"name": c.name, "links": c.links, "error": c.error, "counters": c.counters}))
            .collect();
        json!({
            "version": hass::VERSION,
            "connectors": connectors,
            "vehicles": self.vehicles.len(),
            "links": self.connectors.iter().map(|c| c.links).sum::<usize>(),
            "last_error": self.last_error,
            "pin_failures": self.pin_failures,
            "dropped_publishes": self.publisher.stats().dropped_publishes.load(std::sync::atomic::Ordering::Relaxed),
            "coalesced_states": self.publisher.stats().coalesced_states.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn flush_info(&mut self) {
        if !self.info_dirty {
            return;
        }
        self.info_dirty = false;
        let info = self.bridge_info().to_string();
        if info != self.last_info {
            self.send(self.topics.bridge_info(), info.clone(), true);
            self.last_info = info;
        }
    }

    /// On every (re)connection and after HA's birth message: everything retained again.
    fn publish_everything(&mut self, discovery_only: bool) {
        if self.config.mqtt.discovery {
            for e in hass::bridge_entities(&self.topics) {
                self.send(e.topic(&self.topics, "bridge"), e.config.to_string(), true);
            }
        }
        let ids: Vec<VehicleId> = self.vehicles.keys().cloned().collect();
        for id in &ids {
            self.sync_discovery(id, true);
            if !discovery_only {
                if let Some(v) = self.vehicles.get_mut(id) {
                    v.field_payloads.clear();
                }
                if self
                    .vehicles
                    .get(id)
                    .is_some_and(|v| v.reported_at.is_some())
                {
                    self.publish_state(id);
                }
                self.publish_availability(id, true);
            }
        }
    }

    /// Marks offline every vehicle whose newest report is older than `stale_after`.
    fn check_stale(&mut self) {
        let ids: Vec<VehicleId> = self.vehicles.keys().cloned().collect();
        for id in ids {
            self.check_stale_one(&id);
        }
    }

    /// Staleness follows the vehicle's own time: a cloud serving data from last year is
    /// not "updated just now".
    fn check_stale_one(&mut self, id: &VehicleId) {
        let Ok(stale_after) = chrono::Duration::from_std(self.config.bridge.stale_after) else {
            return;
        };
        let now = Utc::now();
        let Some(v) = self.vehicles.get_mut(id) else {
            return;
        };
        let stale = v.reported_at.is_some_and(|t| now - t > stale_after);
        if stale != v.stale || v.published_availability.is_none() {
            v.stale = stale;
            if stale {
                tracing::info!(event = "vehicle_stale", vehicle = %id, "no report within stale_after; marking offline");
            }
            self.publish_availability(id, false);
        }
    }

    // ---- MQTT in -------------------------------------------------------------------

    /// A refused subscription is asked for again every tick (the broker's ACL may have
    /// been fixed); a tick with no new refusal since the last retry clears the flag.
    fn retry_refused_subscriptions(&mut self) {
        if !self.subscription_refused || !self.mqtt_connected {
            return;
        }
        let refusals = self
            .publisher
            .stats()
            .subscribe_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.refusals_at_retry == Some(refusals) {
            self.subscription_refused = false;
            self.refusals_at_retry = None;
            tracing::info!(
                event = "mqtt_subscribe_accepted",
                "the broker now accepts the bridge's subscriptions"
            );
            return;
        }
        self.refusals_at_retry = Some(refusals);
        self.subscribe_all(false);
    }

    /// The bridge's subscriptions. Commands keep their retain flag on live delivery
    /// (MQTT 5), so a retained command is never executed; our own discovery configs are
    /// not echoed back (only the broker's retained copies tell what a previous run left).
    fn subscribe_all(&self, with_configs: bool) {
        use crate::mqtt::SubscribeOptions;
        let commands = SubscribeOptions {
            retain_as_published: true,
            no_local: false,
        };
        self.publisher
            .subscribe(&self.topics.command_filter(), commands);
        if self.config.mqtt.discovery {
            self.publisher
                .subscribe(&self.topics.ha_status(), SubscribeOptions::default());
            if with_configs {
                let configs = SubscribeOptions {
                    retain_as_published: false,
                    no_local: true,
                };
                self.publisher
                    .subscribe(&self.topics.our_configs_filter(), configs);
            }
        }
    }

    fn on_mqtt(&mut self, event: MqttEvent) {
        match event {
            MqttEvent::Connected => {
                self.mqtt_connected = true;
                self.subscription_refused = false;
                self.refusals_at_retry = None;
                self.write_alive();
                self.send(self.topics.bridge_state(), "online", true);
                self.subscribe_all(true);
                self.publish_everything(false);
                self.last_info.clear();
                self.info_dirty = true;
                self.flush_info();
            }
            MqttEvent::SubscribeRefused => {
                self.subscription_refused = true;
                self.set_error("mqtt: the broker refused a subscription (check its ACL)".into());
                self.write_alive();
            }
            MqttEvent::Disconnected(reason) => {
                self.mqtt_connected = false;
                self.write_alive();
                self.set_error(format!("mqtt: {reason}"));
            }
            MqttEvent::Message {
                topic,
                payload,
                retain,
                expires_in,
            } => {
                if self.topics.config_object_id(&topic).is_some() {
                    // Our own publishes echo back live (retain flag cleared); only the
                    // broker's retained copies tell us what a previous run left.
                    if retain && !payload.is_empty() {
                        self.on_retained_config(&topic);
                    }
                } else if topic == self.topics.ha_status() {
                    if &payload[..] == b"online" && !retain {
                        // Spread HA restarts across bridges: 0.5–2.5 s.
                        let delay = Duration::from_millis(rand::rng().random_range(500..2500));
                        tracing::info!(
                            event = "ha_birth",
                            delay_ms = delay.as_millis() as u64,
                            "Home Assistant came online; re-sending discovery"
                        );
                        self.rediscover_at = Some(Instant::now() + delay);
                    }
                } else if let Some(rest) = topic.strip_prefix(&format!("{}/", self.topics.base)) {
                    let parts: Vec<&str> = rest.split('/').collect();
                    match parts[..] {
                        ["bridge", lifecycle::PURGE_ENTITY, "set"] => {
                            self.on_purge(&payload, retain)
                        }
                        [vehicle, "pin", "set"] => self.on_pin(vehicle, &payload, retain),
                        [vehicle, entity, "set"] => {
                            self.on_command(vehicle, entity, &payload, retain, expires_in)
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn reject(&mut self, vehicle: &str, id: &str, command: &str, reason: &str) {
        tracing::warn!(
            event = "command_rejected",
            vehicle,
            command,
            reason,
            "command rejected"
        );
        self.publish_result(vehicle, id, command, CommandStatus::Rejected, Some(reason));
    }

    fn on_command(
        &mut self,
        vehicle: &str,
        entity: &str,
        raw: &Bytes,
        retain: bool,
        expires_in: Option<Duration>,
    ) {
        let parsed = command::parse_payload(raw);
        // A rejection carries the payload's own id when it has one, so the sender can match it.
        let id = parsed
            .as_ref()
            .ok()
            .and_then(|p| p.id.clone())
            .unwrap_or_else(new_command_id);
        if retain {
            // A retained command would fire again on every reconnect: never execute it.
            self.reject(
                vehicle,
                &id,
                entity,
                "retained command ignored: publish commands without the retain flag",
            );
            return;
        }
        let payload = match parsed {
            Ok(p) => p,
            Err(reason) => return self.reject(vehicle, &id, entity, &reason),
        };
        let Some(v) = VehicleId::new(vehicle).and_then(|vid| self.vehicles.get(&vid)) else {
            return self.reject(vehicle, &id, entity, "unknown vehicle");
        };
        let timeout_ms = self.config.bridge.command_timeout.as_millis() as i64;
        if expires_in.is_some_and(|left| left.is_zero())
            || command::is_expired(payload.ts_ms, Utc::now().timestamp_millis(), timeout_ms)
        {
            return self.reject(
                vehicle,
                &id,
                entity,
                "expired: its ts is older than command_timeout",
            );
        }
        let command = match command::to_command(entity, &payload.action, &v.info.capabilities) {
            Ok(c) => c,
            Err(reason) => return self.reject(vehicle, &id, entity, &reason),
        };
        let vid = v.info.id.clone();
        let owner = v.owner;
        if command.needs_pin() && !self.config.bridge.command_pin.is_empty() {
            // A PIN entered in HA's `Command PIN` text a moment ago stands in for a code.
            let armed = payload.code.is_none()
                && self.vehicles.get_mut(&vid).is_some_and(|v| {
                    v.armed_pin
                        .take()
                        .is_some_and(|until| std::time::Instant::now() < until)
                });
            if !armed {
                if let Err(reason) = self.check_pin(&vid, payload.code.as_deref()) {
                    return self.reject(vehicle, &id, &command.name(), &reason);
                }
            }
        }
        let queue = self.config.bridge.command_queue;
        let timeout = self.config.bridge.command_timeout;
        let connector = self.connectors[owner].commands.clone();
        let worker_tx = self.worker_tx.clone();
        let Some(v) = self.vehicles.get_mut(&vid) else {
            return;
        };
        let sender = v.worker.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(queue);
            tokio::spawn(worker::run(vid.clone(), rx, connector, worker_tx, timeout));
            tx
        });
        let name = command.name();
        tracing::info!(event = "command_received", vehicle = %vid, command = %name, id = %id, "command queued");
        let pending = match command {
            Command::Lock => Some(lock_state::LOCKING),
            Command::Unlock => Some(lock_state::UNLOCKING),
            _ => None,
        };
        if sender
            .try_send(Queued {
                id: id.clone(),
                command,
                // MQTT 5 message expiry: a command still queued past it is not sent.
                expires: expires_in.map(|left| Instant::now() + left),
            })
            .is_ok()
        {
            // LOCKING/UNLOCKING goes out before the command reaches the connector, so no
            // device report can be overtaken by it: the final state always comes last.
            if let Some(p) = pending {
                v.pending_lock = Some(p);
                self.publish_state(&vid);
            }
        } else {
            self.reject(
                vehicle,
                &id,
                &name,
                "command queue for this vehicle is full",
            );
        }
    }

    /// Checks a PIN against `bridge.command_pin`, counting wrong ones and locking out.
    fn check_pin(&mut self, vid: &VehicleId, code: Option<&str>) -> Result<(), String> {
        let now = std::time::Instant::now();
        let tries = self.pin_tries.entry(vid.clone()).or_default();
        // While locked out the PIN is not even compared: guessing gains nothing.
        if let Some(left) = tries.locked(now).or(self.pin_tries_overall.locked(now)) {
            return Err(format!("PIN locked for {left} s after repeated wrong PINs"));
        }
        if !command::pin_matches(self.config.bridge.command_pin.expose(), code) {
            tries.failed(now, command::PIN_TRIES_PER_VEHICLE);
            self.pin_tries_overall
                .failed(now, command::PIN_TRIES_OVERALL);
            self.pin_failures += 1;
            self.info_dirty = true;
            let failures = tries.failures();
            tracing::warn!(event = "wrong_pin", vehicle = %vid, failures, "wrong or missing PIN");
            return Err("wrong or missing PIN".into());
        }
        tries.reset();
        self.pin_tries_overall.reset();
        Ok(())
    }

    /// `<vehicle>/pin/set`: HA's `Command PIN` text. A right PIN arms the vehicle's next
    /// PIN command for `PIN_ARMED_FOR`; a wrong one counts like any wrong PIN.
    fn on_pin(&mut self, vehicle: &str, raw: &Bytes, retain: bool) {
        let id = new_command_id();
        if retain {
            return self.reject(vehicle, &id, "pin", "retained PIN ignored");
        }
        let Some(vid) = VehicleId::new(vehicle).filter(|vid| self.vehicles.contains_key(vid))
        else {
            return self.reject(vehicle, &id, "pin", "unknown vehicle");
        };
        if self.config.bridge.command_pin.is_empty() {
            return self.reject(vehicle, &id, "pin", "no command_pin is set");
        }
        // HA's text entity never shows what was typed: clear it at once.
        self.send(self.topics.vehicle(vehicle, "pin"), "", false);
        let code = std::str::from_utf8(raw).ok();
        if let Err(reason) = self.check_pin(&vid, code) {
            return self.reject(vehicle, &id, "pin", &reason);
        }
        if let Some(v) = self.vehicles.get_mut(&vid) {
            v.armed_pin = Some(std::time::Instant::now() + PIN_ARMED_FOR);
        }
        let reason = format!(
            "armed: the next command within {} s",
            PIN_ARMED_FOR.as_secs()
        );
        self.publish_result(vehicle, &id, "pin", CommandStatus::Succeeded, Some(&reason));
    }

    fn on_worker(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Started { vehicle, command } => {
                let pending = match command {
                    Command::Lock => Some(lock_state::LOCKING),
                    Command::Unlock => Some(lock_state::UNLOCKING),
                    _ => None,
                };
                if let (Some(p), Some(v)) = (pending, self.vehicles.get_mut(&vehicle)) {
                    v.pending_lock = Some(p);
                    self.publish_state(&vehicle);
                }
            }
            WorkerEvent::Outcome {
                vehicle,
                id,
                command,
                status,
                reason,
            } => {
                let name = command.name();
                match status {
                    CommandStatus::Succeeded | CommandStatus::Accepted => {
                        tracing::info!(event = "command_outcome", vehicle = %vehicle, command = %name, id = %id, status = ?status)
                    }
                    _ => {
                        tracing::warn!(event = "command_outcome", vehicle = %vehicle, command = %name, id = %id,
                        status = ?status, reason = reason.as_deref().unwrap_or(""), "command did not succeed")
                    }
                }
                self.publish_result(vehicle.as_str(), &id, &name, status, reason.as_deref());
                if !status.is_final() {
                    return;
                }
                let Some(v) = self.vehicles.get_mut(&vehicle) else {
                    return;
                };
                if v.pending_lock.take().is_some() {
                    if status == CommandStatus::Succeeded {
                        let locked = command == Command::Lock;
                        v.state.set(
                            Field::Lock,
                            Value::from(if locked {
                                lock_state::LOCKED
                            } else {
                                lock_state::UNLOCKED
                            }),
                        );
                        self.sync_discovery(&vehicle, false);
                    }
                    self.publish_state(&vehicle);
                }
            }
        }
    }
}
