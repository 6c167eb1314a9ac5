//! The hub: receives connector updates, keeps each vehicle's last state, publishes state,
//! availability and discovery, validates commands and routes them to their connector.
//!
//! Everything here runs on one task, so vehicle state needs no locks. The hub never waits
//! on MQTT (see [`crate::mqtt::Publisher`]); per-vehicle command workers do the waiting.
//!
//! This file holds the hub's state and its loop; `updates` takes what connectors say,
//! `publish` sends, `dispatch` runs commands, `lifecycle` owns Home Assistant entities
//! (`store` remembers them), `health` feeds `/metrics`, `/healthz` and staleness.

pub mod command;
mod dispatch;
mod gate;
mod health;
mod lifecycle;
mod outbox;
mod publish;
pub mod store;
mod updates;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
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
/// Messages (other than states) waiting for room in the MQTT client's queue, per message
/// the client itself queues (`mqtt.queue_capacity`, 1 000 by default: 50 000).
const RETRY_PER_QUEUED: usize = 50;
/// How often messages that found MQTT busy are retried.
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// How often vehicle records whose entities changed are written to `state_dir`.
const PERSIST_EVERY: Duration = Duration::from_secs(15);
/// A vehicle's changed state is written at most this often (and at shutdown): a scooter
/// reporting every 5 s must not wear out an SD card.
const PERSIST_STATE_EVERY: Duration = Duration::from_secs(300);
/// Records written per persist tick, at most (all of them at shutdown).
const PERSIST_BATCH: usize = 500;

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
    /// The stale check has already waited once for this vehicle's first availability.
    grace_used: bool,
    /// What HA was told about its entities (`hass::Announced`).
    announced: hass::Announced,
    /// Every field ever reported and whether it had a position: the entity set.
    shape: hass::Shape,
    /// The state in its `state_dir` record is behind.
    dirty: bool,
    /// The entities in its record are behind (written at the next persist tick).
    entities_dirty: bool,
    /// When its record was last written.
    saved_at: Option<std::time::Instant>,
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
            grace_used: false,
            announced: hass::Announced::default(),
            shape: hass::Shape::default(),
            dirty: false,
            entities_dirty: false,
            saved_at: None,
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
        manufacturer: connector.to_string().into(),
        model: "Vehicle".into(),
        reported_model: None,
        sw_version: None,
        custom_name: false,
        serial_number: None,
        capabilities: Default::default(),
        event_types: Default::default(),
    }
}

/// Removes the liveness file once every state write handed over is done (tokens, guard
/// settings, trips), off the hub's task.
async fn remove_alive(dir: &std::path::Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || crate::state_dir::remove_alive(&dir)).await;
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
    /// Boxed: the map's slots stay small (a fleet's map has 16 384 of them).
    vehicles: HashMap<VehicleId, Box<Vehicle>>,
    /// Every entity name any vehicle has, once (see `Vehicle::discovery`).
    entity_names: hass::EntityNames,
    worker_tx: mpsc::Sender<WorkerEvent>,
    last_error: Option<String>,
    info_dirty: bool,
    last_info: String,
    rediscover_at: Option<Instant>,
    /// What found MQTT busy or away: messages, owed states, owed discovery.
    outbox: outbox::Outbox,
    mqtt_connected: bool,
    /// The broker refused a subscription; retried on the alive tick until it accepts.
    subscription_refused: bool,
    /// The refusal count when the subscriptions were last asked for again.
    refusals_at_retry: Option<u64>,
    /// Per vehicle, per-field topic → payload as last published: only with
    /// `per_field_topics`, so only then does a vehicle hold a map for it.
    field_payloads: HashMap<VehicleId, BTreeMap<String, String>>,
    /// Retained discovery configs of ours found on the broker (a purge removes those no
    /// vehicle claims).
    unclaimed_configs: HashSet<String>,
    /// Vehicles whose record in `state_dir` is to be deleted.
    forgotten: Vec<VehicleId>,
    /// The write of vehicle records in progress.
    persisting: Option<tokio::task::JoinHandle<()>>,
    /// Command results by status, for `/metrics`.
    command_results: BTreeMap<String, u64>,
    /// Who may run a PIN command: tries, lockouts, armed PINs.
    gate: gate::CommandGate,
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
    let retry_limit = config
        .mqtt
        .queue_capacity
        .saturating_mul(RETRY_PER_QUEUED)
        .max(100);
    let gate = gate::CommandGate::new(config.bridge.command_pin.clone());
    let mut hub = Hub {
        config,
        topics,
        publisher: publisher.clone(),
        connectors: slots,
        vehicles: HashMap::new(),
        entity_names: hass::EntityNames::default(),
        worker_tx,
        last_error: None,
        info_dirty: true,
        last_info: String::new(),
        rediscover_at: None,
        outbox: outbox::Outbox::new(retry_limit),
        mqtt_connected: false,
        subscription_refused: false,
        refusals_at_retry: None,
        field_payloads: HashMap::new(),
        unclaimed_configs: HashSet::new(),
        forgotten: Vec::new(),
        persisting: None,
        command_results: BTreeMap::new(),
        gate,
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
                        remove_alive(&hub.config.bridge.state_dir).await;
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
            _ = persist_tick.tick() => { hub.persist(false); }
            _ = info_tick.tick() => {
                hub.flush_info();
                hub.update_snapshot();
            }
            _ = alive_tick.tick() => {
                hub.retry_refused_subscriptions();
                hub.write_alive();
            }
            _ = retry_tick.tick(), if hub.mqtt_connected && hub.outbox.has_work() => hub.flush_retries(),
        }
    }

    tracing::info!(event = "shutdown", "shutting down: publishing offline");
    if let Some(writing) = hub.persisting.take() {
        let _ = writing.await;
    }
    while hub.persist(true) {
        if let Some(writing) = hub.persisting.take() {
            let _ = writing.await;
        }
    }
    // A stopped bridge is not alive, whatever the file said a moment ago.
    remove_alive(&hub.config.bridge.state_dir).await;
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
}

#[cfg(test)]
mod size_tests {
    /// Each vehicle, linked or only configured, is one of these (boxed): 496 bytes under
    /// `cargo test` (debug), what grows with every field added here. Shrinking passes,
    /// growing fails: see docs/ARCHITECTURE.md, "Memory" (`-Zprint-type-sizes`).
    #[test]
    fn a_hub_vehicle_keeps_its_size() {
        let size = std::mem::size_of::<super::Vehicle>();
        assert!(
            size <= 496,
            "the hub's Vehicle grew to {size} bytes (496): box what few vehicles use, \
             see docs/ARCHITECTURE.md \"Memory\" (-Zprint-type-sizes shows the layout)"
        );
    }
}
