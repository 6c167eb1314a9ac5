//! EXLIVE connector: terminates EXLIVE JSON links (server role), logs in to an EXLIVE
//! platform (client role), and turns pass-through commands into 1012 / 1013.
//!
//! Both roles share [`Shared`]: the translation of 1007 into vehicle state, the
//! `Terminals` (which link carries which vehicle, and the pending pass-through
//! commands).

mod client;
mod config;
mod server;
#[cfg(feature = "simulators")]
pub mod sim;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{NaiveDateTime, SecondsFormat};

use crate::zone::Zone;
use tokio::sync::mpsc;

pub use config::{Exlive, ExliveAccount, ExliveClientConfig, ExliveCommand, ExliveConfig};

use crate::connector::{
    Connector, ConnectorContext, ConnectorFuture, LinkGauge, Update, UpdateSink,
};
use crate::connectors::UpstreamIds;
use crate::model::{
    Capability, CommandProgress, Field, Position, VehicleEvent, VehicleId, VehicleInfo,
    VehicleState,
};
use crate::protocol::exlive::{self as proto, Message};

/// Outgoing lines queued per link before the link is considered stuck.
const LINK_QUEUE: usize = 256;
/// Distinct vehicles the connector keeps at most (links and platforms together): a
/// platform that may report any id cannot grow the maps without bound.
const MAX_VEHICLES: usize = 100_000;

crate::named_counters! {
    /// Named error counters, in `bridge/info` and behind each logged event.
    pub struct Counters {
        links_refused,
        logins_failed,
        malformed,
        oversized,
        heartbeat_timeouts,
        unknown_cmd,
        positions,
        malformed_closed,
        not_allowed,
        ids_refused,
    }
}

pub struct ExliveConnector {
    config: ExliveConfig,
}

impl ExliveConnector {
    pub fn new(config: ExliveConfig) -> ExliveConnector {
        ExliveConnector { config }
    }
}

impl Connector for ExliveConnector {
    fn name(&self) -> &'static str {
        "exlive"
    }

    /// The platform login (client role): one instance at a time in a cluster.
    fn cloud_account(&self) -> Option<String> {
        let client = self.config.client.as_ref()?;
        Some(format!("exlive:{}:{}", client.address, client.name))
    }

    fn speed_limits(&self) -> crate::connector::SpeedLimits {
        crate::connector::SpeedLimits::from_table(
            self.config.overspeed_kmh,
            &self.config.vehicle_overspeed_kmh,
            |id| VehicleId::for_upstream(ID_PREFIX, id),
        )
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            let tz = crate::shared::require_timezone("exlive", &self.config.timezone)?;
            let shared = Arc::new(Shared::new(self.config.clone(), tz, ctx.updates.clone()));
            let ConnectorContext {
                mut commands,
                shutdown,
                mut releases,
                permit,
                ..
            } = ctx;
            let mut tasks = crate::connectors::Tasks::default();
            if self.config.server {
                let listener = crate::connectors::listen(self.config.listen)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("exlive cannot listen on {}: {e}", self.config.listen)
                    })?;
                tracing::info!(event = "exlive_listening", listen = %listener.local_addr()?, "EXLIVE server listening");
                tasks.spawn(
                    "exlive server",
                    server::run(listener, shared.clone(), shutdown.clone()),
                );
            }
            if let Some(client) = self.config.client.clone() {
                tasks.spawn(
                    "exlive platform client",
                    client::run_permitted(client, shared.clone(), shutdown.clone(), permit),
                );
            }
            let mut counters_tick = tokio::time::interval(crate::connector::COUNTERS_EVERY);
            let mut report = crate::connector::CountersReport::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(req) = commands.recv() => shared.send_command(req),
                    Some(vehicle) = releases.recv() => shared.release(&vehicle),
                    _ = counters_tick.tick() => report.report(shared.counters.snapshot(), &shared.updates).await,
                    reason = tasks.ended() => {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        return Err(reason);
                    }
                }
            }
            tasks.stop().await;
            Ok(())
        })
    }
}

/// A link's handle in the [`Terminals`] route table.
#[derive(Clone)]
struct LinkHandle {
    id: u64,
    out: mpsc::Sender<String>,
}

/// What the bridge knows per terminal: its vehicle id, the link that carries it (the
/// route table), whether it was announced, its pending pass-through commands. Every map
/// is keyed by the EXLIVE id as the platform sends it (trimmed).
struct Terminals {
    /// EXLIVE id ⇄ the bridge's vehicle id.
    ids: UpstreamIds,
    /// EXLIVE id → the link that last reported it, and its vehicle.
    routes: HashMap<String, (LinkHandle, VehicleId)>,
    /// Vehicles already announced to the bridge, with their last alarm flag.
    announced: HashMap<String, bool>,
    /// terminalid → commands waiting for a 1013, oldest first.
    pending: HashMap<String, VecDeque<mpsc::Sender<CommandProgress>>>,
    /// EXLIVE id → the link it was let go from (cluster: another instance owns it): that
    /// link's reports of it are ignored, so it is not claimed back (docs/cluster.md).
    released: HashMap<String, u64>,
}

impl Default for Terminals {
    fn default() -> Terminals {
        Terminals {
            ids: UpstreamIds::new(ID_PREFIX, MAX_VEHICLES),
            routes: HashMap::new(),
            announced: HashMap::new(),
            pending: HashMap::new(),
            released: HashMap::new(),
        }
    }
}

/// What the connector's tasks (the server's links, the client) share.
pub(crate) struct Shared {
    config: ExliveConfig,
    tz: Zone,
    updates: UpdateSink,
    terminals: Mutex<Terminals>,
    next_link: AtomicU64,
    links: LinkGauge,
    pub counters: Counters,
    /// Bad input is logged at most 10 lines per 10 s per listener, then summarised.
    bad_input_log: crate::connectors::LogLimiter,
    /// Every vehicle's commands: the configured pass-through commands, one list for all.
    capabilities: std::sync::Arc<[Capability]>,
}

/// Vehicle ids on the bridge: `ex<id>`, with a hash where the id has characters a topic
/// cannot carry ([`VehicleId::for_upstream`]); [`Terminals`]' `ids` keeps both ways.
const ID_PREFIX: &str = "ex";

/// Parses `gpstime` ("yyyy-MM-dd HH:mm:ss", local to `tz`) into RFC 3339 UTC.
pub fn gps_time_utc(gpstime: &str, tz: Zone) -> Option<String> {
    let naive = NaiveDateTime::parse_from_str(gpstime.trim(), "%Y-%m-%d %H:%M:%S").ok()?;
    Some(tz.to_utc(naive)?.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Translates a 1007 into vehicle state. Absent or unparsable values stay absent.
pub fn position_state(p: &proto::Position, tz: Zone) -> VehicleState {
    let mut s = VehicleState::default();
    if let (Some(lat), Some(lng)) = (p.lat, p.lng) {
        s.position = Position::new(lat, lng);
    }
    if let Some(v) = p.veo {
        s.set_f64(Field::Speed, v);
        s.set(Field::Driving, v > 1.0);
    }
    if let Some(v) = p.dir {
        s.set_f64(Field::Heading, v);
    }
    if let Some(v) = p.av {
        s.set(Field::GpsValid, v);
    }
    if let Some(v) = p.alarm {
        s.set(Field::Alarm, v);
    }
    if let Some(v) = p.oil {
        s.set_f64(Field::FuelVolume, v);
    }
    if let Some(v) = p.dis {
        s.set_f64(Field::Odometer, v);
    }
    if let Some(v) = &p.cstate {
        s.set(Field::StatusText, v.as_str());
    }
    if let Some(v) = &p.posinfo {
        s.set(Field::Address, v.as_str());
    }
    if let Some(t) = p.gpstime.as_deref().and_then(|t| gps_time_utc(t, tz)) {
        // The tracker's own time: HA's "Last update" and staleness follow it.
        s.set(Field::LastUpdate, t.clone());
        s.set(Field::GpsTime, t);
    }
    if !p.code.is_empty() {
        s.set(Field::Plate, p.code.as_str());
    }
    if let Some(w) = &p.wstate {
        s.attributes.insert("wstate".into(), w.as_str().into());
    }
    s
}

impl Shared {
    fn new(config: ExliveConfig, tz: Zone, updates: UpdateSink) -> Shared {
        Shared {
            capabilities: config
                .commands
                .iter()
                .map(|c| Capability::Passthrough(c.name.clone()))
                .collect(),
            bad_input_log: crate::connectors::LogLimiter::new(
                10,
                std::time::Duration::from_secs(10),
            ),
            config,
            tz,
            updates,
            terminals: Mutex::new(Terminals::default()),
            next_link: AtomicU64::new(1),
            links: LinkGauge::default(),
            counters: Counters::default(),
        }
    }

    fn terminals(&self) -> std::sync::MutexGuard<'_, Terminals> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters more than losing the connector, so recover the guard.
        self.terminals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The vehicle of an EXLIVE id (trimmed); `None` (counted, logged sampled) when it
    /// has none.
    fn vehicle(&self, terminals: &mut Terminals, exlive_id: &str) -> Option<VehicleId> {
        match terminals.ids.vehicle(exlive_id) {
            Ok(id) => Some(id),
            Err(err) => {
                let n = self.counters.ids_refused.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    tracing::warn!(event = "exlive_id_refused", refused = n + 1, error = %err,
                        "EXLIVE vehicle id refused");
                }
                None
            }
        }
    }

    fn info(&self, id: &VehicleId, exlive_id: &str, code: &str) -> VehicleInfo {
        VehicleInfo {
            id: id.clone(),
            name: if code.trim().is_empty() {
                format!("EXLIVE {}", id.as_str())
            } else {
                code.trim().to_string()
            },
            manufacturer: "EXLIVE".into(),
            model: "GPS tracker".into(),
            reported_model: None,
            sw_version: None,
            custom_name: false,
            serial_number: Some(exlive_id.to_string()),
            capabilities: self.capabilities.clone(),
            event_types: vec!["message".into(), "alarm".into(), "terminal_reply".into()].into(),
        }
    }

    fn new_link(&self, out: mpsc::Sender<String>) -> LinkHandle {
        LinkHandle {
            id: self.next_link.fetch_add(1, Ordering::Relaxed),
            out,
        }
    }

    /// Another cluster instance owns the vehicle now: its route goes, and the link that
    /// carried it is not listened to about it any more (a new link is).
    fn release(&self, vehicle: &VehicleId) {
        let mut terminals = self.terminals();
        let Some(exlive_id) = terminals.ids.upstream_id(vehicle).map(str::to_string) else {
            return;
        };
        if let Some((link, _)) = terminals.routes.remove(&exlive_id) {
            tracing::info!(event = "exlive_released", vehicle = %vehicle, link = link.id,
                "another instance owns the vehicle: this link's reports of it are ignored");
            terminals.released.insert(exlive_id, link.id);
        }
    }

    /// Whether `link` let the terminal go (and a new link takes it back).
    fn let_go(terminals: &mut Terminals, exlive_id: &str, link: &LinkHandle) -> bool {
        match terminals.released.get(exlive_id) {
            Some(from) if *from == link.id => true,
            Some(_) => {
                terminals.released.remove(exlive_id);
                false
            }
            None => false,
        }
    }

    /// A vehicle was announced by a platform (1011) without a position yet.
    async fn announce(&self, link: &LinkHandle, exlive_id: &str, code: &str) {
        let exlive_id = exlive_id.trim();
        let (id, first) = {
            let mut terminals = self.terminals();
            if Self::let_go(&mut terminals, exlive_id, link) {
                return;
            }
            let Some(id) = self.vehicle(&mut terminals, exlive_id) else {
                return;
            };
            terminals
                .routes
                .insert(exlive_id.to_string(), (link.clone(), id.clone()));
            let first = terminals
                .announced
                .insert(exlive_id.to_string(), false)
                .is_none();
            (id, first)
        };
        if first {
            let _ = self
                .updates
                .send(Update::Vehicle(self.info(&id, exlive_id, code)))
                .await;
        }
    }

    async fn on_position(&self, link: &LinkHandle, p: proto::Position) {
        self.counters.positions.fetch_add(1, Ordering::Relaxed);
        let exlive_id = p.id.trim();
        if exlive_id.is_empty() {
            tracing::debug!(
                event = "exlive_position_without_id",
                "1007 without an id ignored"
            );
            return;
        }
        let alarm = p.alarm.unwrap_or(false);
        let (id, first, moved, alarm_rose) = {
            let mut terminals = self.terminals();
            if Self::let_go(&mut terminals, exlive_id, link) {
                return;
            }
            let Some(id) = self.vehicle(&mut terminals, exlive_id) else {
                return;
            };
            let moved = terminals
                .routes
                .get(exlive_id)
                .is_none_or(|(l, _)| l.id != link.id);
            if moved {
                terminals
                    .routes
                    .insert(exlive_id.to_string(), (link.clone(), id.clone()));
            }
            let prev = match terminals.announced.get_mut(exlive_id) {
                Some(flag) => Some(std::mem::replace(flag, alarm)),
                None => terminals.announced.insert(exlive_id.to_string(), alarm),
            };
            (id, prev.is_none(), moved, alarm && prev == Some(false))
        };
        if first {
            let _ = self
                .updates
                .send(Update::Vehicle(self.info(&id, exlive_id, &p.code)))
                .await;
        }
        if moved {
            self.updates.availability(id.clone(), true).await;
        }
        if alarm_rose {
            let mut attributes = serde_json::Map::new();
            attributes.insert("status".into(), p.cstate.clone().unwrap_or_default().into());
            let event = VehicleEvent {
                event_type: "alarm".into(),
                attributes,
            };
            self.updates.event(id.clone(), event).await;
        }
        let state = position_state(&p, self.tz);
        self.updates.merge_state(id, state).await;
    }

    /// The vehicles a link carries now.
    fn vehicles_on(terminals: &Terminals, link: &LinkHandle) -> Vec<VehicleId> {
        terminals
            .routes
            .values()
            .filter(|(l, _)| l.id == link.id)
            .map(|(_, id)| id.clone())
            .collect()
    }

    async fn on_text(&self, link: &LinkHandle, msg: String) {
        let ids = Self::vehicles_on(&self.terminals(), link);
        tracing::info!(
            event = "exlive_message",
            link = link.id,
            vehicles = ids.len(),
            "EXLIVE 1003 message"
        );
        for id in ids {
            let mut attributes = serde_json::Map::new();
            attributes.insert("msg".into(), msg.clone().into());
            let event = VehicleEvent {
                event_type: "message".into(),
                attributes,
            };
            self.updates.event(id, event).await;
        }
    }

    async fn on_passthrough_data(&self, terminalid: String, data: String) {
        let terminalid = terminalid.trim();
        let (waiter, id) = {
            let mut terminals = self.terminals();
            // A reply names a vehicle already reported; it mints none.
            let id = terminals.ids.known(terminalid);
            let mut found = None;
            if let Some(queue) = terminals.pending.get_mut(terminalid) {
                while let Some(tx) = queue.pop_front() {
                    if !tx.is_closed() {
                        found = Some(tx);
                        break;
                    }
                }
                if queue.is_empty() {
                    terminals.pending.remove(terminalid);
                }
            }
            (found, id)
        };
        if let Some(tx) = waiter {
            let _ = tx.send(CommandProgress::Succeeded).await;
        }
        if let Some(id) = id {
            let mut attributes = serde_json::Map::new();
            attributes.insert("data".into(), data.into());
            let event = VehicleEvent {
                event_type: "terminal_reply".into(),
                attributes,
            };
            self.updates.event(id, event).await;
        }
    }

    /// A link closed: its vehicles go offline.
    async fn link_closed(&self, link: &LinkHandle) {
        let gone = {
            let mut terminals = self.terminals();
            let gone = Self::vehicles_on(&terminals, link);
            terminals.routes.retain(|_, (l, _)| l.id != link.id);
            gone
        };
        for id in gone {
            self.updates.availability(id, false).await;
        }
    }

    /// Sends a pass-through command as 1012 on the link that carries the vehicle.
    fn send_command(&self, req: crate::connector::CommandRequest) {
        let crate::model::Command::Passthrough(name) = &req.command else {
            let _ = req.progress.try_send(CommandProgress::Failed(
                "EXLIVE supports only pass-through commands".into(),
            ));
            return;
        };
        let Some(cmd) = self.config.commands.iter().find(|c| &c.name == name) else {
            let _ = req.progress.try_send(CommandProgress::Failed(format!(
                "no command `{name}` configured"
            )));
            return;
        };
        let mut terminals = self.terminals();
        let route = terminals
            .ids
            .upstream_id(&req.vehicle)
            .and_then(|exlive_id| {
                let (link, _) = terminals.routes.get(exlive_id)?;
                Some((exlive_id.to_string(), link.clone()))
            });
        let Some((exlive_id, link)) = route else {
            let _ = req
                .progress
                .try_send(CommandProgress::Failed("offline".into()));
            return;
        };
        let msg = Message::Passthrough {
            terminalid: exlive_id.clone(),
            code: String::new(),
            data: cmd.data.clone(),
        };
        match link.out.try_send(msg.encode()) {
            Ok(()) => {
                tracing::info!(event = "exlive_passthrough_sent", vehicle = %req.vehicle, command = %name, id = %req.id);
                let _ = req.progress.try_send(CommandProgress::Accepted);
                let queue = terminals.pending.entry(exlive_id).or_default();
                queue.retain(|tx| !tx.is_closed());
                queue.push_back(req.progress);
            }
            Err(_) => {
                let _ = req
                    .progress
                    .try_send(CommandProgress::Failed("link is not accepting data".into()));
            }
        }
    }

    /// Handles a message common to both roles; returns false when the link should close.
    async fn on_message(&self, link: &LinkHandle, msg: Message) -> bool {
        match msg {
            Message::Position(p) => self.on_position(link, p).await,
            Message::Heartbeat | Message::Ack { .. } => {}
            Message::Logout => return false,
            Message::Text { msg } => self.on_text(link, msg).await,
            Message::PassthroughData {
                terminalid, data, ..
            } => self.on_passthrough_data(terminalid, data).await,
            Message::Vehicle { id, code, .. } => self.announce(link, &id, &code).await,
            Message::Unknown { cmd, .. } => {
                self.counters.unknown_cmd.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    event = "exlive_unknown_cmd",
                    link = link.id,
                    cmd,
                    "unknown EXLIVE command ignored"
                );
            }
            other => {
                tracing::debug!(
                    event = "exlive_unhandled",
                    link = link.id,
                    cmd = other.cmd(),
                    "EXLIVE message not used by the bridge"
                );
            }
        }
        true
    }
}
