//! The hub core, without I/O (the way rumqttc keeps `state.rs` apart from its event
//! loop). Inputs: connector updates, MQTT events, worker events and clock ticks, each
//! with the time ([`Now`]). Outputs: publishes through [`Mqtt`] (which never waits and
//! says when it has no room) and [`Action`]s the event loop carries out (hand a command
//! to its vehicle's worker, write records, show a snapshot).
//!
//! Inside, parts with private fields and one job each:
//! - `fleet`: vehicles, their state, clocks and availability;
//! - `outbox`: what found MQTT busy or away (retry queue, unsent states, owed discovery);
//! - `lifecycle`: what HA was told, and the only code that builds a discovery publish;
//! - `records`: what goes to `state_dir` and when;
//! - `gate`: PIN tries and lockouts, armed PINs, per-vehicle queues, lock transitions;
//! - `status`: connectors, errors, `bridge/info` and the snapshot.
//!
//! This file only routes inputs to those parts and their answers to MQTT; `cluster`
//! adds what an instance among several does (docs/cluster.md).

mod cluster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;
use serde_json::json;

use super::derivations::Derivations;
use super::fleet::{Fleet, Purge, Restored};
use super::gate::{self, CommandGate, Refusal};
use super::lifecycle::{self, Lifecycle};
use super::outbox::{Outbox, Sink};
use super::page::{self, Extras};
use super::records::{self, RecordKeeper};
use super::status::{Figures, Status};
use super::worker::{Queued, WorkerEvent};
use super::{command, store};
use crate::cluster::Answerer;
use crate::config::Config;
use crate::connector::Update;
use crate::hass::Topics;
use crate::model::{lock_state, Command, CommandStatus, Field, VehicleEvent, VehicleId};
use crate::mqtt::{MqttEvent, MqttStats, SubscribeOptions};
use crate::status_page::feed::{Entry, Feed, FleetPage, FleetQuery};

/// Messages (other than states) waiting for room in the MQTT client's queue, per message
/// the client itself queues (`mqtt.queue_capacity`, 1 000 by default: 50 000).
const RETRY_PER_QUEUED: usize = 50;

/// The time an input happened, given by whoever feeds the hub: the event loop reads the
/// clocks, tests make one up.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: DateTime<Utc>,
}

impl Now {
    pub fn real() -> Now {
        Now {
            mono: Instant::now(),
            wall: Utc::now(),
        }
    }

    /// `by` later on both clocks.
    #[cfg(test)]
    pub fn after(self, by: Duration) -> Now {
        Now {
            mono: self.mono + by,
            wall: self.wall + chrono::Duration::from_std(by).unwrap_or_default(),
        }
    }

    #[cfg(test)]
    pub fn rfc3339_for_tests(&self) -> String {
        self.rfc3339()
    }

    fn rfc3339(&self) -> String {
        self.wall.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// The MQTT client as the hub sees it: publishes that never wait (the outbox's [`Sink`]),
/// subscriptions, and the counters the client keeps.
pub trait Mqtt: Sink {
    fn subscribe(&self, filter: &str, opts: SubscribeOptions);
    fn stats(&self) -> &MqttStats;
}

/// What the hub asks the event loop to do.
#[derive(Debug)]
pub enum Action {
    /// Hand a validated command to the vehicle's worker (it runs them one at a time, in
    /// order, on connector `owner`); the gate keeps the queue bounded.
    Command {
        vehicle: VehicleId,
        owner: usize,
        queued: Queued,
    },
    /// The vehicle is gone: its worker may end.
    Forgotten(VehicleId),
    /// Another cluster instance owns the vehicle now: its commands here fail with
    /// `moved to <to>` and its connector lets the stale link go.
    Moved {
        vehicle: VehicleId,
        owner: Option<usize>,
        to: String,
    },
    /// Which cloud accounts (by connector index) this cluster instance may poll now.
    Permits(Vec<bool>),
    /// Until when this cluster instance's accounts may be spoken for (renewed with each
    /// heartbeat of its own heard back).
    Lease(Instant),
    /// Another instance with this cluster id runs: this one must stop (exit 2).
    Duplicate(String),
    /// Write these records to `state_dir` off the loop, then call `records_written`.
    Persist(records::Batch),
    /// Add this finished trip (the `trip` event's attributes, a derived one with its
    /// path) to the vehicle's trip log.
    LogTrip {
        vehicle: VehicleId,
        trip: serde_json::Map<String, serde_json::Value>,
    },
    /// Show this snapshot on `/metrics` and `/healthz`; with `alive`, also prove the
    /// loop alive in the liveness file.
    Observe {
        snapshot: Box<crate::observe::Snapshot>,
        alive: bool,
    },
}

/// The clock ticks the event loop feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Messages that found MQTT busy are tried again (`RETRY_EVERY`).
    Retry,
    /// Staleness and absent fields are looked at (`stale_check_every`).
    Stale,
    /// Records due are written (`PERSIST_EVERY`).
    Persist,
    /// `bridge/info` and the snapshot are brought up to date (every second).
    Info,
    /// The liveness file, and refused subscriptions asked for again.
    Alive,
    /// The delay after Home Assistant's birth is over (`rediscover_at`).
    Rediscover,
}

/// The connection to the broker as the hub knows it.
#[derive(Debug, Default)]
struct MqttLink {
    connected: bool,
    /// The broker refused a subscription; retried on the alive tick until it accepts.
    subscription_refused: bool,
    /// The refusal count when the subscriptions were last asked for again.
    refusals_at_retry: Option<u64>,
}

pub struct Hub<M: Mqtt> {
    config: Config,
    topics: Topics,
    mqtt: M,
    link: MqttLink,
    status: Status,
    fleet: Fleet,
    outbox: Outbox,
    lifecycle: Lifecycle,
    records: RecordKeeper,
    gate: CommandGate,
    /// Trips, zones and fleet events worked out of each vehicle's reports.
    derivations: Derivations,
    /// Per vehicle, per-field topic → payload as last published: only with
    /// `per_field_topics`, so only then does a vehicle hold a map for it.
    field_payloads: HashMap<VehicleId, BTreeMap<String, String>>,
    /// When discovery goes out again after Home Assistant's birth.
    rediscover_at: Option<Instant>,
    /// The status page's feed, when the page is served, and what only it shows.
    feed: Option<Feed>,
    extras: Extras,
    actions: Vec<Action>,
    now: Now,
    /// Cluster mode (`cluster.instance_id`): who owns which vehicle, who polls which account.
    cluster: Option<crate::cluster::Cluster>,
}

/// A connector as the hub is told of it: its name and the vehicles its config lists
/// (when it lists them all).
pub type ConnectorInfo = (&'static str, Option<HashSet<VehicleId>>);

fn new_command_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

impl<M: Mqtt> Hub<M> {
    /// A hub with what earlier runs left (`records`, empty without `remember_vehicles`):
    /// vehicles whose connector is gone, or whose connector's config no longer lists
    /// them, lose their entities now; the rest come back exactly as they were, before
    /// any data arrives.
    pub fn new(
        config: Config,
        mqtt: M,
        connectors: Vec<ConnectorInfo>,
        records: BTreeMap<VehicleId, store::Record>,
        now: Now,
    ) -> Hub<M> {
        let topics = Topics::new(&config.mqtt.base_topic, &config.mqtt.discovery_prefix);
        let retry_limit = config
            .mqtt
            .queue_capacity
            .saturating_mul(RETRY_PER_QUEUED)
            .max(100);
        let pin_required = !config.bridge.command_pin.is_empty();
        let cluster = config
            .cluster
            .settings()
            .map(|settings| crate::cluster::Cluster::new(&settings, Vec::new(), now.mono));
        let mut lifecycle = Lifecycle::new(topics.clone(), config.mqtt.discovery, pin_required);
        if let Some(c) = &cluster {
            lifecycle.set_instance(c.me().to_string());
        }
        let mut hub = Hub {
            cluster,
            lifecycle,
            records: RecordKeeper::new(config.bridge.remember_vehicles),
            gate: CommandGate::new(
                config.bridge.command_pin.clone(),
                config.bridge.command_queue,
                config.bridge.refresh_min_gap,
            ),
            derivations: Derivations::new(
                // Checked with the config; the defaults (and a word) if it was not.
                crate::derive::Settings::new(&config.derive).unwrap_or_else(|e| {
                    tracing::error!(event = "derive_settings_refused", error = %e,
                        "trips, events and zones run on their defaults");
                    Default::default()
                }),
            ),
            topics,
            mqtt,
            link: MqttLink::default(),
            status: Status::new(connectors),
            fleet: Fleet::default(),
            outbox: Outbox::new(retry_limit),
            field_payloads: HashMap::new(),
            rediscover_at: None,
            feed: None,
            extras: Extras::default(),
            actions: Vec::new(),
            now,
            config,
        };
        let restored = records.len();
        for (id, mut record) in records {
            let owner = hub.status.position(&record.connector);
            let listed = owner.is_some_and(|o| hub.status.lists(o, &id));
            let owner = owner.unwrap_or_default();
            let entities = hub
                .lifecycle
                .restored(std::mem::take(&mut record.discovery), &id);
            if !listed {
                tracing::info!(event = "vehicle_removed", vehicle = %id, connector = %record.connector,
                    "vehicle no longer in the config; removing its entities");
                let info = Restored::unlisted_info(&id, &record.connector);
                hub.fleet
                    .restore_unlisted(id.clone(), owner, info, entities);
                hub.forget_vehicle(&id);
                continue;
            }
            if let Some(saved) = &record.derive {
                hub.derivations.restore(&id, &record.connector, saved);
            }
            let vehicle = Restored::from_record(owner, &id, &record, entities);
            hub.fleet.restore(id, vehicle);
        }
        if restored > 0 {
            tracing::info!(
                event = "vehicles_restored",
                vehicles = hub.fleet.len(),
                "vehicles and their entities restored from state_dir"
            );
        }
        hub
    }

    /// The cloud account of each connector, by index (cluster mode: each is polled by one
    /// instance at a time).
    pub fn set_accounts(&mut self, accounts: Vec<Option<String>>) {
        if let Some(c) = &mut self.cluster {
            c.set_accounts(accounts);
        }
    }

    /// Events, results and live rows go to the status page from now on.
    pub fn set_feed(&mut self, feed: Feed) {
        self.feed = Some(feed);
    }

    /// One page of the status page's fleet table.
    pub fn fleet_page(&self, q: &FleetQuery) -> FleetPage {
        let names = self.status.names();
        page::page(
            &self.fleet,
            &names,
            &self.extras,
            |id| self.gate.pending_lock(id),
            q,
        )
    }

    /// Every vehicle with a position, for the page's map.
    pub fn positions(&self) -> Vec<crate::status_page::feed::MapPoint> {
        page::positions(&self.fleet)
    }

    /// The vehicle's row to whoever watches the page live.
    fn show_row(&self, id: &VehicleId) {
        let Some(feed) = self.feed.as_ref().filter(|f| f.watches(id.as_str())) else {
            return;
        };
        if let Some(v) = self.fleet.get(id) {
            let name = self.status.name(v.owner());
            feed.vehicle(page::row(
                id,
                v,
                name,
                &self.extras,
                self.gate.pending_lock(id),
            ));
        }
    }

    pub fn connector_name(&self, owner: usize) -> &'static str {
        self.status.name(owner)
    }

    /// What the event loop is to do now.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// When `Tick::Rediscover` is due, if at all.
    pub fn rediscover_at(&self) -> Option<Instant> {
        self.rediscover_at
    }

    /// Whether `Tick::Retry` has anything to do.
    pub fn wants_retry(&self) -> bool {
        self.link.connected && self.outbox.has_work()
    }

    /// How often `Tick::Stale` is due.
    pub fn stale_check_every(&self) -> Duration {
        (self.config.bridge.stale_after / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(30))
    }

    // ---- inputs ----------------------------------------------------------------------

    pub fn on_update(&mut self, owner: usize, update: Update, now: Now) {
        self.now = now;
        match update {
            Update::Vehicle(info) => {
                let id = info.id.clone();
                if self.fleet.announce(owner, info) {
                    tracing::info!(event = "vehicle_added", vehicle = %id, connector = self.status.name(owner), "new vehicle");
                    self.status.changed();
                }
                // Availability waits for the first state or the connector's word (or the
                // next stale check): never "online" for a device that has not linked.
                self.discover(&id, false);
            }
            Update::State {
                vehicle,
                state,
                replace,
            } => {
                let name = self.status.name(owner);
                let reported = self
                    .fleet
                    .report(owner, name, &vehicle, state, replace, now.wall);
                if reported.added {
                    tracing::info!(event = "vehicle_added", vehicle = %vehicle, connector = name, "new vehicle");
                }
                if let Some(v) = self.fleet.get_mut(&vehicle) {
                    v.record.state_changed();
                    if reported.grew {
                        v.record.entities_changed();
                    }
                }
                self.status.changed();
                // Only the account's poller has its reports (a report of a copy stopped a
                // moment ago claims nothing).
                if self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.is_account(owner) && c.permitted(owner))
                {
                    self.claim(&vehicle);
                }
                self.check_stale_one(&vehicle);
                let derived = match self.fleet.get(&vehicle) {
                    Some(v) => {
                        let at = v.reported_at().unwrap_or(now.wall);
                        let state = v.state();
                        self.derivations.report(&vehicle, name, at, now.wall, state)
                    }
                    None => Default::default(),
                };
                let grew = reported.grew | self.absorb_derived(&vehicle, derived.fields);
                // Documents depend on the shape (and the info, synced when it comes): a
                // status that adds no field costs no rebuild.
                if grew | self.first_report_since_claim(&vehicle) {
                    self.discover(&vehicle, false);
                }
                self.publish_state(&vehicle);
                self.publish_availability(&vehicle, false);
                self.publish_derived(&vehicle, derived.events, derived.trip_ended);
            }
            Update::Availability { vehicle, online } => {
                if self.fleet.set_online(&vehicle, online) {
                    self.publish_availability(&vehicle, false);
                }
                if online && self.fleet.contains(&vehicle) {
                    self.claim(&vehicle); // a proven link, or a login that carries it
                }
            }
            Update::Event { vehicle, event } => {
                if !self.speaks_for(&vehicle) {
                    return;
                }
                if event.event_type == "trip" && self.fleet.get(&vehicle).is_some() {
                    // A trip the device reported itself (kingxun 1008, iauto360 1012).
                    let mut trip = event.attributes.clone();
                    trip.insert("source".into(), self.status.name(owner).into());
                    self.actions.push(Action::LogTrip {
                        vehicle: vehicle.clone(),
                        trip,
                    });
                }
                self.publish_event(&vehicle, event)
            }
            Update::Roster(vehicles) => self.on_roster(owner, vehicles),
            Update::Counters(counters) => self.status.counters(owner, counters),
            Update::Recovered => self.status.recovered(owner),
            Update::Health { links, error } => self.status.health(owner, links, error),
        }
    }

    pub fn on_mqtt(&mut self, event: MqttEvent, now: Now) {
        self.now = now;
        match event {
            MqttEvent::Connected => {
                self.link = MqttLink {
                    connected: true,
                    ..MqttLink::default()
                };
                self.observe(true);
                self.send(self.topics.bridge_state(), "online", true);
                self.cluster_connected();
                self.subscribe_all(true);
                self.publish_everything(false);
                self.flush_info(true);
            }
            MqttEvent::SubscribeRefused => {
                self.link.subscription_refused = true;
                self.status
                    .set_error("mqtt: the broker refused a subscription (check its ACL)".into());
                self.observe(true);
            }
            MqttEvent::Disconnected(reason) => {
                self.link.connected = false;
                self.observe(true);
                self.status.set_error(format!("mqtt: {reason}"));
            }
            MqttEvent::Message {
                topic,
                payload,
                retain,
                expires_in,
            } => self.on_message(&topic, &payload, retain, expires_in),
        }
    }

    pub fn on_worker(&mut self, event: WorkerEvent, now: Now) {
        self.now = now;
        match event {
            WorkerEvent::Started { vehicle, command } => {
                if let Some(pending) = lock_transition(&command) {
                    if self.fleet.contains(&vehicle) {
                        self.gate.lock_pending(&vehicle, pending);
                        self.publish_state(&vehicle);
                    }
                }
            }
            WorkerEvent::Outcome {
                vehicle,
                id,
                command,
                status,
                reason,
                reported_at,
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
                let (reason, reported_at) = (reason.as_deref(), reported_at.as_deref());
                self.publish_result(vehicle.as_str(), &id, &name, status, reason, reported_at);
                if !status.is_final() {
                    return;
                }
                self.gate.finished(&vehicle, &command);
                // Only a lock command's outcome ends LOCKING / UNLOCKING: a horn that
                // finishes while a lock waits behind it says nothing of the lock.
                if lock_transition(&command).is_some() && self.gate.lock_done(&vehicle) {
                    if status == CommandStatus::Succeeded {
                        self.fleet.set_locked(&vehicle, command == Command::Lock);
                        if let Some(v) = self.fleet.get_mut(&vehicle) {
                            v.record.state_changed();
                        }
                    }
                    self.publish_state(&vehicle);
                }
            }
        }
    }

    /// A connector stopped. Returns whether the bridge is to end (`exit_on_connector_failure`).
    pub fn on_connector_exit(&mut self, owner: usize, reason: &str, now: Now) -> bool {
        self.now = now;
        tracing::error!(event = "connector_exited", connector = self.status.name(owner), reason = %reason, "connector stopped");
        self.status.stopped(owner, reason);
        self.observe(false);
        self.config.bridge.exit_on_connector_failure
    }

    pub fn on_tick(&mut self, tick: Tick, now: Now) {
        self.now = now;
        match tick {
            Tick::Retry => self.flush_retries(),
            Tick::Stale => {
                for id in self.fleet.due_stale_check() {
                    self.check_stale_one(&id);
                }
                self.forget_absent_fields();
                for (id, derived) in self.derivations.tick(now.wall) {
                    let changed = derived.fields != Default::default();
                    if self.absorb_derived(&id, derived.fields) {
                        self.discover(&id, false);
                    }
                    if changed {
                        self.publish_state(&id);
                    }
                    self.publish_derived(&id, derived.events, derived.trip_ended);
                }
            }
            Tick::Persist => self.persist(),
            Tick::Info => {
                self.cluster_tick();
                self.flush_info(false);
                self.observe(false);
            }
            Tick::Alive => {
                self.retry_refused_subscriptions();
                self.observe(true);
            }
            Tick::Rediscover => {
                if self.rediscover_at.is_some_and(|at| at <= now.mono) {
                    self.rediscover_at = None;
                    self.publish_everything(true);
                }
            }
        }
    }

    /// A connector's `overspeed_kmh` settings, given once at the start.
    pub fn speed_limits(&mut self, connector: &'static str, limits: crate::connector::SpeedLimits) {
        self.derivations.speed_limits(connector, limits);
        // Vehicles restored from their records have their deriver already.
        let owned: Vec<VehicleId> = self
            .fleet
            .iter()
            .filter(|(_, v)| self.status.name(v.owner()) == connector)
            .map(|(id, _)| id.clone())
            .collect();
        for id in owned {
            self.derivations.relimit(&id, connector);
        }
    }

    /// The last `Action::Persist` is on disk.
    pub fn records_written(&mut self) {
        self.records.written();
    }

    /// At shutdown: the next batch of every record still behind (call, write, and call
    /// again until `None`).
    pub fn final_records(&mut self, now: Now) -> Option<records::Batch> {
        let names = self.status.names();
        let batch = self.records.batch(
            &mut self.fleet,
            &self.lifecycle,
            &self.derivations,
            &names,
            true,
            now.mono,
        )?;
        // Written before the next batch is asked for.
        self.records.written();
        Some(batch)
    }

    /// The bridge stops: its retained state says so (in a cluster: its vehicles' and its
    /// own, and the cluster's only when it was the last instance).
    pub fn going_offline(&mut self) {
        if self.cluster_going_offline() {
            self.send(self.topics.bridge_state(), "offline", true);
        }
    }

    // ---- MQTT in ---------------------------------------------------------------------

    fn on_message(
        &mut self,
        topic: &str,
        payload: &Bytes,
        retain: bool,
        expires_in: Option<Duration>,
    ) {
        if self.topics.config_object_id(topic).is_some() {
            // Our own publishes echo back live (retain flag cleared); only the broker's
            // retained copies tell us what a previous run left.
            if retain && !payload.is_empty() {
                if let Some(stale) = self.lifecycle.retained_config(topic) {
                    self.send(stale, Vec::new(), true);
                }
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
                self.rediscover_at = Some(self.now.mono + delay);
            }
        } else if let Some(rest) = topic.strip_prefix(&format!("{}/", self.topics.base)) {
            let parts: Vec<&str> = rest.split('/').collect();
            if self.on_cluster_message(&parts, payload, retain) {
                return;
            }
            match parts[..] {
                ["bridge", lifecycle::PURGE_ENTITY, "set"] => self.on_purge(payload, retain),
                [vehicle, "pin", "set"] => self.on_pin(vehicle, payload, retain),
                [vehicle, entity, "set"] => {
                    self.on_command(vehicle, entity, payload, retain, expires_in)
                }
                _ => {}
            }
        }
    }

    /// The bridge's subscriptions. Commands keep their retain flag on live delivery
    /// (MQTT 5), so a retained command is never executed; our own discovery configs are
    /// not echoed back (only the broker's retained copies tell what a previous run left).
    fn subscribe_all(&self, with_configs: bool) {
        let commands = SubscribeOptions {
            retain_as_published: true,
            no_local: false,
        };
        self.mqtt.subscribe(&self.topics.command_filter(), commands);
        if self.cluster.is_none() {
            // Its own state coming back tells a stop that its last words were taken (in a
            // cluster, `cluster_filters` has it).
            self.mqtt
                .subscribe(&self.topics.bridge_state(), SubscribeOptions::default());
        }
        if self.config.mqtt.discovery {
            self.mqtt
                .subscribe(&self.topics.ha_status(), SubscribeOptions::default());
            if with_configs {
                let configs = SubscribeOptions {
                    retain_as_published: false,
                    no_local: true,
                };
                self.mqtt
                    .subscribe(&self.topics.our_configs_filter(), configs);
            }
        }
    }

    /// A refused subscription is asked for again every alive tick (the broker's ACL may
    /// have been fixed); a tick with no new refusal since the last retry clears the flag.
    fn retry_refused_subscriptions(&mut self) {
        if !self.link.subscription_refused || !self.link.connected {
            return;
        }
        let refusals = self
            .mqtt
            .stats()
            .subscribe_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.link.refusals_at_retry == Some(refusals) {
            self.link.subscription_refused = false;
            self.link.refusals_at_retry = None;
            tracing::info!(
                event = "mqtt_subscribe_accepted",
                "the broker now accepts the bridge's subscriptions"
            );
            return;
        }
        self.link.refusals_at_retry = Some(refusals);
        self.subscribe_all(false);
    }

    // ---- commands --------------------------------------------------------------------

    fn reject(&mut self, vehicle: &str, id: &str, command: &str, reason: &str) {
        tracing::warn!(
            event = "command_rejected",
            vehicle,
            command,
            reason,
            "command rejected"
        );
        self.publish_result(
            vehicle,
            id,
            command,
            CommandStatus::Rejected,
            Some(reason),
            None,
        );
    }

    /// A `/set` message: validated (retain, expiry, exact payload, PIN with lockout, room
    /// in the vehicle's queue) and handed to the vehicle's worker.
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
        let given_id = parsed.as_ref().ok().and_then(|p| p.id.as_deref());
        match self.answerer(vehicle) {
            Answerer::Elsewhere => return, // its owner (or its home) answers
            _ if self.repeated(vehicle, given_id) => {
                tracing::warn!(event = "command_repeated", vehicle, id = %id,
                    "a command id seen before in the cluster: not run again");
                return;
            }
            Answerer::Home => return self.answer_as_home(vehicle, &id, entity),
            Answerer::Owner => {}
        }
        if retain {
            // A retained command would fire again on every reconnect: never execute it.
            return self.reject(
                vehicle,
                &id,
                entity,
                "retained command ignored: publish commands without the retain flag",
            );
        }
        let payload = match parsed {
            Ok(p) => p,
            Err(reason) => return self.reject(vehicle, &id, entity, &reason),
        };
        let Some(v) = VehicleId::new(vehicle).and_then(|vid| self.fleet.get(&vid)) else {
            return self.reject(vehicle, &id, entity, "unknown vehicle");
        };
        let timeout_ms = self.config.bridge.command_timeout.as_millis() as i64;
        if expires_in.is_some_and(|left| left.is_zero())
            || command::is_expired(payload.ts_ms, self.now.wall.timestamp_millis(), timeout_ms)
        {
            return self.reject(
                vehicle,
                &id,
                entity,
                "expired: its ts is older than command_timeout",
            );
        }
        let command = match command::to_command(entity, &payload.action, &v.info().capabilities) {
            Ok(c) => c,
            Err(reason) => return self.reject(vehicle, &id, entity, &reason),
        };
        let (vid, owner) = (v.info().id.clone(), v.owner());
        let admitted = self
            .gate
            .has_room(&vid)
            .and_then(|()| {
                self.gate
                    .admit(&vid, &command, payload.code.as_deref(), self.now.mono)
            })
            .and_then(|()| self.gate.enqueue(&vid, &command, self.now.mono));
        if let Err(refusal) = admitted {
            if refusal == Refusal::WrongPin {
                self.status.changed();
            }
            return self.reject(vehicle, &id, &command.name(), &refusal.to_string());
        }
        tracing::info!(event = "command_received", vehicle = %vid, command = %command.name(), id = %id, "command queued");
        let pending = lock_transition(&command);
        self.actions.push(Action::Command {
            vehicle: vid.clone(),
            owner,
            queued: Queued {
                id,
                command,
                // MQTT 5 message expiry: a command still queued past it is not sent.
                expires: expires_in.map(|left| self.now.mono + left),
            },
        });
        // LOCKING/UNLOCKING goes out before the command reaches the connector, so no
        // device report can be overtaken by it: the final state always comes last.
        if let Some(p) = pending {
            self.gate.lock_pending(&vid, p);
            self.publish_state(&vid);
        }
    }

    /// `<vehicle>/pin/set`: HA's `Command PIN` text (the gate arms the vehicle's next PIN
    /// command, or counts a wrong PIN like any other).
    fn on_pin(&mut self, vehicle: &str, raw: &Bytes, retain: bool) {
        let id = new_command_id();
        match self.answerer(vehicle) {
            Answerer::Elsewhere => return,
            Answerer::Home => return self.answer_as_home(vehicle, &id, "pin"),
            Answerer::Owner => {}
        }
        if retain {
            return self.reject(vehicle, &id, "pin", "retained PIN ignored");
        }
        let Some(vid) = VehicleId::new(vehicle).filter(|vid| self.fleet.contains(vid)) else {
            return self.reject(vehicle, &id, "pin", "unknown vehicle");
        };
        let code = std::str::from_utf8(raw).ok();
        let armed = self.gate.arm(&vid, code, self.now.mono);
        if armed != Err(Refusal::NoPinSet) {
            // HA's text entity never shows what was typed: clear it at once.
            self.send(self.topics.vehicle(vehicle, "pin"), "", false);
        }
        if let Err(refusal) = armed {
            if refusal == Refusal::WrongPin {
                self.status.changed();
            }
            return self.reject(vehicle, &id, "pin", &refusal.to_string());
        }
        let reason = format!(
            "armed: the next command within {} s",
            gate::ARMED_FOR.as_secs()
        );
        self.publish_result(
            vehicle,
            &id,
            "pin",
            CommandStatus::Succeeded,
            Some(&reason),
            None,
        );
    }

    // ---- the fleet's lifecycle -------------------------------------------------------

    /// Asks the lifecycle to bring HA in line with the vehicle (`force`: every document
    /// again); while MQTT is behind, the vehicle is owed instead and built when there is
    /// room. The only way to a discovery publish.
    fn discover(&mut self, id: &VehicleId, force: bool) {
        if !self.lifecycle.enabled() || !self.speaks_for(id) {
            return;
        }
        if self.outbox.is_behind() {
            self.outbox.owe_discovery(id.clone(), force);
            return;
        }
        let Some(v) = self.fleet.get_mut(id) else {
            return;
        };
        for (topic, payload) in self.lifecycle.sync(id, v, force) {
            self.send(topic, payload, true);
        }
    }

    /// `<base>/bridge/purge/set`: `stale` removes every entity nothing reports any more
    /// (vehicles not heard from since the start, fields a vehicle stopped reporting,
    /// retained configs of ours no vehicle claims); a vehicle id does so for that vehicle.
    fn on_purge(&mut self, payload: &[u8], retain: bool) {
        if retain {
            tracing::warn!(
                event = "purge_ignored",
                "retained purge request ignored: publish it without the retain flag"
            );
            return;
        }
        let text = String::from_utf8_lossy(payload);
        let target = text.trim();
        let ids: Vec<VehicleId> = if target == "stale" {
            // In a cluster each instance purges what it owns.
            let ids = self.fleet.ids();
            ids.into_iter().filter(|id| self.speaks_for(id)).collect()
        } else {
            match VehicleId::new(target).filter(|id| self.fleet.contains(id)) {
                Some(id) if !self.speaks_for(&id) => return, // its owner purges it
                Some(id) => vec![id],
                None => {
                    tracing::warn!(event = "purge_ignored", target = %target.chars().take(64).collect::<String>(),
                        "purge: expected `stale` or a known vehicle id");
                    return;
                }
            }
        };
        let mut removed = 0usize;
        for id in &ids {
            removed += self.purge_vehicle(id);
        }
        if target == "stale" && self.cluster.as_ref().is_none_or(|c| c.alone()) {
            let unclaimed = self.lifecycle.take_unclaimed(&self.fleet);
            removed += unclaimed.len();
            for topic in unclaimed {
                self.send(topic, Vec::new(), true);
            }
        }
        tracing::info!(event = "entities_purged", target = %target, removed, "stale entities removed on request");
    }

    /// Removes what `id` has not reported since the start; all of it (and the vehicle)
    /// when it has not reported at all. Returns the number of entities removed.
    fn purge_vehicle(&mut self, id: &VehicleId) -> usize {
        let entities = |fleet: &Fleet| fleet.get(id).map_or(0, |v| Lifecycle::len(&v.entities));
        let before = entities(&self.fleet);
        match self.fleet.purge(id) {
            Purge::Unknown => 0,
            Purge::Forget => self.forget_vehicle(id),
            Purge::Shrunk => {
                if let Some(v) = self.fleet.get_mut(id) {
                    v.record.entities_changed();
                }
                self.discover(id, false);
                before.saturating_sub(entities(&self.fleet))
            }
        }
    }

    /// Removes a vehicle: its entities, its retained state and availability, its record,
    /// its worker. Returns the number of entities removed.
    fn forget_vehicle(&mut self, id: &VehicleId) -> usize {
        // In a cluster, what HA shows of it is its owner's to remove.
        let speaks = self.speaks_for(id);
        let Some(mut v) = self.fleet.remove(id) else {
            return 0;
        };
        self.field_payloads.remove(id);
        self.extras.forget(id);
        self.gate.forget(id);
        self.derivations.forget(id);
        let removals = self.lifecycle.remove_all(id, &mut v.entities);
        let n = if speaks { removals.len() } else { 0 };
        if speaks {
            for (topic, payload) in removals {
                self.send(topic, payload, true);
            }
            self.send(self.topics.vehicle(id.as_str(), "state"), Vec::new(), true);
            self.send(
                self.topics.vehicle(id.as_str(), "availability"),
                Vec::new(),
                true,
            );
            self.unclaim(id);
        }
        self.outbox.forget(id);
        self.records.forget(id.clone());
        self.status.changed();
        self.actions.push(Action::Forgotten(id.clone()));
        n
    }

    /// A connector's full vehicle list: its vehicles missing from it left the account.
    fn on_roster(&mut self, owner: usize, vehicles: Vec<VehicleId>) {
        let keep: HashSet<VehicleId> = vehicles.into_iter().collect();
        for id in self.fleet.left(owner, &keep) {
            let removed = self.forget_vehicle(&id);
            tracing::info!(event = "vehicle_removed", vehicle = %id, connector = self.status.name(owner), removed,
                "vehicle left the upstream account; its entities are removed");
        }
    }

    /// With `forget_absent_entities_after`, a field the vehicle has not reported for that
    /// long, while it kept reporting, loses its entity.
    fn forget_absent_fields(&mut self) {
        let after = self.config.bridge.forget_absent_entities_after;
        if after.is_zero() {
            return;
        }
        let Ok(after) = chrono::Duration::from_std(after) else {
            return;
        };
        for id in self.fleet.forget_absent_fields(after) {
            if let Some(v) = self.fleet.get_mut(&id) {
                v.record.state_changed();
            }
            self.discover(&id, false);
        }
    }

    /// Staleness by `bridge.vehicle_stale_after` for this vehicle, else `stale_after`.
    /// Derived fields into the vehicle's state (its record is behind then). Returns
    /// whether its entity set grew.
    fn absorb_derived(&mut self, id: &VehicleId, fields: crate::model::VehicleState) -> bool {
        if fields == Default::default() {
            return false;
        }
        let grew = self.fleet.absorb_derived(id, fields);
        if let Some(v) = self.fleet.get_mut(id) {
            v.record.state_changed();
            if grew {
                v.record.entities_changed();
            }
        }
        grew
    }

    /// Derived events on `<vehicle>/event`, and a finished trip retained on
    /// `<vehicle>/trip/last` (the trip event's JSON, without its path).
    fn publish_derived(
        &mut self,
        id: &VehicleId,
        events: Vec<VehicleEvent>,
        trip: Option<crate::derive::Trip>,
    ) {
        if !self.speaks_for(id) {
            return;
        }
        for event in events {
            self.publish_event(id, event);
        }
        if let Some(trip) = trip {
            if let Ok(serde_json::Value::Object(logged)) = serde_json::to_value(&trip) {
                let mut last = logged.clone();
                last.remove("path");
                let topic = self.topics.vehicle(id.as_str(), "trip/last");
                self.send(topic, serde_json::Value::Object(last).to_string(), true);
                self.actions.push(Action::LogTrip {
                    vehicle: id.clone(),
                    trip: logged,
                });
            }
        }
    }

    /// Staleness by `bridge.vehicle_stale_after` for this vehicle, else `stale_after`.
    fn check_stale_one(&mut self, id: &VehicleId) {
        let bridge = &self.config.bridge;
        let after = bridge
            .vehicle_stale_after
            .get(id.as_str())
            .map_or(bridge.stale_after, |a| a.0);
        let Ok(stale_after) = chrono::Duration::from_std(after) else {
            return;
        };
        if self.fleet.check_stale(id, self.now.wall, stale_after) {
            self.publish_availability(id, false);
        }
    }

    fn persist(&mut self) {
        let names = self.status.names();
        if let Some(batch) = self.records.batch(
            &mut self.fleet,
            &self.lifecycle,
            &self.derivations,
            &names,
            false,
            self.now.mono,
        ) {
            self.actions.push(Action::Persist(batch));
        }
    }

    // ---- MQTT out --------------------------------------------------------------------

    /// Publishes now if MQTT has room (and nothing older is waiting), else queues it.
    fn send(&mut self, topic: String, payload: impl Into<Vec<u8>>, retain: bool) {
        if self.outbox.send(&self.mqtt, topic, payload.into(), retain) {
            self.status.changed(); // `dropped_publishes` grew
        }
    }

    /// Publishes a vehicle's state now, or remembers that it is owed when MQTT is busy or
    /// away: owed states coalesce to the newest, so a reconnect sends the latest state of
    /// each vehicle, never a replay of the stale ones queued in the client.
    fn publish_state(&mut self, id: &VehicleId) {
        self.show_row(id);
        if !self.speaks_for(id) {
            return;
        }
        let owed = !self.link.connected || self.outbox.is_behind() || !self.try_publish_state(id);
        if !owed {
            self.outbox.state_sent(id);
        } else if self.outbox.owe_state(id.clone()) {
            self.mqtt
                .stats()
                .coalesced_states
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn try_publish_state(&mut self, id: &VehicleId) -> bool {
        let Some(v) = self.fleet.get(id).filter(|_| self.speaks_for(id)) else {
            return true;
        };
        let pending = self.gate.pending_lock(id);
        let mut json = v.state().to_json();
        if let Some(pending) = pending {
            json["lock"] = pending.into();
        }
        let topic = self.topics.vehicle(id.as_str(), "state");
        if !self
            .mqtt
            .try_publish(&topic, json.to_string().into_bytes(), true)
        {
            return false;
        }
        if !self.config.mqtt.per_field_topics {
            return true;
        }
        let json_booleans =
            self.config.mqtt.per_field_booleans == crate::config::BoolFormat::TrueFalse;
        let state = v.state();
        let mut fields: Vec<(String, String)> = state
            .values
            .iter()
            .map(|(field, value)| {
                let payload = match (field, pending) {
                    (Field::Lock, Some(p)) => p.to_string(),
                    _ => value.to_payload_with(json_booleans),
                };
                (self.topics.vehicle(id.as_str(), field.key()), payload)
            })
            .collect();
        if let Some(p) = state.position {
            fields.push((
                self.topics.vehicle(id.as_str(), "latitude"),
                p.latitude.to_string(),
            ));
            fields.push((
                self.topics.vehicle(id.as_str(), "longitude"),
                p.longitude.to_string(),
            ));
        }
        let sent = self.field_payloads.entry(id.clone()).or_default();
        for (topic, payload) in fields {
            if sent.get(&topic) != Some(&payload) {
                if !self
                    .mqtt
                    .try_publish(&topic, payload.clone().into_bytes(), true)
                {
                    return false; // the rest goes out with the retry
                }
                sent.insert(topic, payload);
            }
        }
        true
    }

    fn flush_retries(&mut self) {
        if !self.link.connected {
            return; // the reconnect publishes everything owed
        }
        if !self.outbox.flush_messages(&self.mqtt) {
            return;
        }
        let mut ids = self.outbox.take_unsent_states().into_iter();
        for id in ids.by_ref() {
            if !self.try_publish_state(&id) {
                self.outbox.owe_state(id);
                break;
            }
        }
        for id in ids {
            self.outbox.owe_state(id);
        }
        // Discovery last, and only while nothing else waits.
        while let Some((id, force)) = self.outbox.next_owed_discovery() {
            self.discover(&id, force);
        }
        self.outbox.release_empty();
    }

    fn publish_availability(&mut self, id: &VehicleId, force: bool) {
        if !self.speaks_for(id) {
            return;
        }
        let before = self.fleet.get(id).and_then(|v| v.shown_online());
        if let Some(available) = self.fleet.availability_to_publish(id, force) {
            // Kept only while the page is served (a fleet's map otherwise).
            if before != Some(available) && self.feed.is_some() {
                self.extras.availability(id, self.now.wall);
                self.show_row(id);
            }
            let topic = self.topics.vehicle(id.as_str(), "availability");
            self.send(topic, if available { "online" } else { "offline" }, true);
        }
    }

    fn publish_event(&mut self, id: &VehicleId, event: VehicleEvent) {
        if !self.speaks_for(id) {
            return;
        }
        let mut payload = event.attributes;
        if let Some(feed) = &self.feed {
            feed.entry(Entry {
                at: self.now.rfc3339(),
                vehicle: id.to_string(),
                kind: "event",
                what: event.event_type.to_string(),
                detail: serde_json::Value::Object(payload.clone()).to_string(),
            });
        }
        payload.insert("event_type".into(), event.event_type.into());
        payload.insert("ts".into(), self.now.rfc3339().into());
        let topic = self.topics.vehicle(id.as_str(), "event");
        self.send(topic, serde_json::Value::Object(payload).to_string(), false);
    }

    /// A command's result on `command/result`; a refresh's carries `reported_at`, the
    /// time of the report that answered it.
    fn publish_result(
        &mut self,
        vehicle: &str,
        id: &str,
        command: &str,
        status: CommandStatus,
        reason: Option<&str>,
        reported_at: Option<&str>,
    ) {
        self.status.count_result(status);
        let mut payload = json!({
            "id": id,
            "command": command,
            "status": status,
            "reason": reason,
            "ts": self.now.rfc3339(),
        });
        if let Some(at) = reported_at {
            payload["reported_at"] = at.into();
        }
        if let Some(feed) = &self.feed {
            feed.entry(Entry {
                at: self.now.rfc3339(),
                vehicle: vehicle.to_string(),
                kind: "result",
                what: format!("{command}: {}", payload["status"].as_str().unwrap_or("")),
                detail: format!(
                    "id {id}{}",
                    reason.map(|r| format!(", {r}")).unwrap_or_default()
                ),
            });
        }
        let known =
            VehicleId::new(vehicle).filter(|v| self.feed.is_some() && self.fleet.contains(v));
        if let Some(vid) = known {
            self.extras.result(&vid, command, status, self.now.wall);
            self.show_row(&vid);
        }
        let topic = self.topics.vehicle(vehicle, "command/result");
        self.send(topic, payload.to_string(), false);
    }

    /// `bridge/info` when it changed (`force`: again, on a new connection).
    fn flush_info(&mut self, force: bool) {
        let figures = figures(&self.fleet, &self.gate, &self.link, self.mqtt.stats());
        if let Some(info) = self.status.info_to_publish(&figures, force) {
            self.send(self.info_topic(), info, true);
        }
    }

    fn observe(&mut self, alive: bool) {
        let figures = figures(&self.fleet, &self.gate, &self.link, self.mqtt.stats());
        let mut snapshot = Box::new(self.status.snapshot(&figures));
        (snapshot.retry_queue, snapshot.unsent_states) = self.outbox.waiting();
        self.actions.push(Action::Observe { snapshot, alive });
    }

    /// On every (re)connection and after HA's birth message: everything retained again.
    fn publish_everything(&mut self, discovery_only: bool) {
        for (topic, payload) in self.lifecycle.bridge_documents() {
            self.send(topic, payload, true);
        }
        for id in &self.fleet.ids() {
            self.discover(id, true);
            if !discovery_only {
                self.field_payloads.remove(id);
                if self.fleet.get(id).is_some_and(|v| v.has_reported()) {
                    self.publish_state(id);
                }
                self.publish_availability(id, true);
            }
        }
    }
}

/// LOCKING / UNLOCKING for a lock command.
fn lock_transition(command: &Command) -> Option<&'static str> {
    match command {
        Command::Lock => Some(lock_state::LOCKING),
        Command::Unlock => Some(lock_state::UNLOCKING),
        _ => None,
    }
}

fn figures<'a>(
    fleet: &Fleet,
    gate: &CommandGate,
    link: &MqttLink,
    stats: &'a MqttStats,
) -> Figures<'a> {
    Figures {
        vehicles: fleet.len(),
        vehicles_online: fleet.online(),
        pin_failures: gate.failures(),
        mqtt_connected: link.connected,
        subscription_refused: link.subscription_refused,
        stats,
    }
}
