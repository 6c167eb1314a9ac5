//! iauto360 (车智汇) connector: per device, polls the latest condition (1011) adaptively
//! and the slower services (1001, 1019, 1017, 1018, 1021, 1012/1013, 3004) every
//! `detail_interval`; sends 5001 lock / unlock; receives the platform's event pushes.
//!
//! `api` is one signed call, `push` the HTTP endpoint; this file owns the schedule.

mod api;
mod config;
mod push;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use api::CallError;
pub use config::{Iauto360Config, Iauto360Device};

use api::Api;

use crate::connector::{
    CommandRequest, ConnectionStatus, Connector, ConnectorContext, ConnectorFuture, Update,
    UpdateSink,
};
use crate::connectors::{jitter, poll_backoff, OFFLINE_AFTER};
use crate::model::{
    Capability, Command, CommandProgress, Field, VehicleId, VehicleInfo, VehicleState,
};
use crate::protocol::iauto360::services::{self, PushedEvent};

crate::named_counters! {
    /// Named error counters, in `bridge/info` and behind each logged event.
    pub struct Counters {
        polls,
        poll_errors,
        refused,
        bad_answers,
        commands_sent,
        commands_failed,
        pushes,
        push_bad_signature,
        push_oversized,
        push_malformed,
        push_unknown_device,
        push_dropped,
    }
}

const QUEUE: usize = 16;
/// Trips looked up per detail round (1012 takes a time range).
const TRIP_WINDOW_S: i64 = 7 * 24 * 3600;
/// Pushed event ids remembered per device, so a re-delivered push counts once.
const SEEN_EVENTS: usize = 64;

pub struct Iauto360Connector {
    config: Iauto360Config,
}

impl Iauto360Connector {
    pub fn new(config: Iauto360Config) -> Iauto360Connector {
        Iauto360Connector { config }
    }
}

/// Vehicle ids on the bridge: `ia<esn>`.
pub fn vehicle_id(esn: &str) -> Option<VehicleId> {
    VehicleId::new(&format!("ia{esn}"))
}

impl Connector for Iauto360Connector {
    fn name(&self) -> &'static str {
        "iauto360"
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            let cfg = self.config;
            crate::connectors::warn_if_plain_http("iauto360", &cfg.base_url);
            let counters = Arc::new(Counters::default());
            let shared = Arc::new(Shared {
                api: Api::new(&cfg)?,
                cfg: cfg.clone(),
                updates: ctx.updates.clone(),
                counters: counters.clone(),
            });
            let ConnectorContext {
                mut commands,
                shutdown,
                ..
            } = ctx;
            let mut tasks = tokio::task::JoinSet::new();
            let mut command_routes = HashMap::new();
            let mut push_routes = HashMap::new();
            for device in &cfg.devices {
                let Some(id) = vehicle_id(&device.esn) else {
                    continue;
                };
                let (cmd_tx, cmd_rx) = mpsc::channel(4);
                let (push_tx, push_rx) = mpsc::channel(QUEUE);
                command_routes.insert(id.clone(), cmd_tx);
                push_routes.insert(device.esn.clone(), push_tx);
                let _ = shared
                    .updates
                    .send(Update::Vehicle(info(&id, device)))
                    .await;
                tasks.spawn(device_loop(
                    shared.clone(),
                    device.esn.clone(),
                    id,
                    cmd_rx,
                    push_rx,
                    shutdown.clone(),
                ));
            }
            if let Some(listen) = cfg.push_listen {
                let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                    anyhow::anyhow!("iauto360 cannot listen for pushes on {listen}: {e}")
                })?;
                tracing::info!(event = "iauto360_push_listening", listen = %listener.local_addr()?, path = %cfg.push_path, "iauto360 event push endpoint listening");
                let (cfg, counters, shutdown) = (cfg.clone(), counters.clone(), shutdown.clone());
                tasks.spawn(async move {
                    if let Err(e) = push::serve(&cfg, listener, push_routes, counters, shutdown).await {
                        tracing::error!(event = "iauto360_push_stopped", error = %e, "event push endpoint stopped");
                    }
                });
            }
            let mut counters_tick = tokio::time::interval(crate::connector::COUNTERS_EVERY);
            let mut report = crate::connector::CountersReport::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(req) = commands.recv() => crate::connector::dispatch(&command_routes, req).await,
                    _ = counters_tick.tick() => report.report(counters.snapshot(), &shared.updates).await,
                    Some(_) = tasks.join_next() => {}
                }
            }
            tasks.shutdown().await;
            Ok(())
        })
    }
}

struct Shared {
    cfg: Iauto360Config,
    api: Api,
    updates: UpdateSink,
    counters: Arc<Counters>,
}

fn info(id: &VehicleId, device: &Iauto360Device) -> VehicleInfo {
    VehicleInfo {
        id: id.clone(),
        name: device
            .name
            .clone()
            .unwrap_or_else(|| format!("iauto360 {}", device.esn)),
        manufacturer: "iauto360".into(),
        model: "OBD box".into(),
        sw_version: None,
        capabilities: vec![Capability::Lock],
        event_types: services::EVENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

/// A 5001 the platform took, waiting for its pushed outcome.
struct Pending {
    progress: mpsc::Sender<CommandProgress>,
    lock: bool,
    /// Unix seconds when the command was sent: an outcome from before it (a replayed
    /// push) does not count.
    sent_at: i64,
}

/// Pushed events older than this update no state.
const STALE_EVENT_S: i64 = 600;
/// Clock skew allowed between the platform and us when matching an outcome.
const OUTCOME_SKEW_S: i64 = 120;

struct Device {
    shared: Arc<Shared>,
    esn: String,
    id: VehicleId,
    failures: u32,
    running: bool,
    pending: Option<Pending>,
    status: ConnectionStatus,
    last_trip: Option<i64>,
    seen: VecDeque<i64>,
}

async fn device_loop(
    shared: Arc<Shared>,
    esn: String,
    id: VehicleId,
    mut commands: mpsc::Receiver<CommandRequest>,
    mut pushes: mpsc::Receiver<PushedEvent>,
    shutdown: CancellationToken,
) {
    let mut d = Device {
        shared,
        esn,
        id,
        failures: 0,
        running: false,
        pending: None,
        status: ConnectionStatus::default(),
        last_trip: None,
        seen: VecDeque::new(),
    };
    // Spread a fleet's first polls (50 ms per box, at most half an interval) instead of
    // calling for every box at once; a single box starts at once.
    let boxes = d.shared.cfg.devices.len() as u32;
    let spread = (d.shared.cfg.poll_interval / 2).min(Duration::from_millis(50) * boxes);
    let mut next_poll = Instant::now() + spread.mul_f64(rand::rng().random_range(0.0..1.0));
    let mut next_detail = next_poll;
    loop {
        if d.pending.as_ref().is_some_and(|p| p.progress.is_closed()) {
            d.pending = None;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(req) = commands.recv() => d.command(req).await,
            Some(ev) = pushes.recv() => d.pushed(ev).await,
            _ = tokio::time::sleep_until(next_poll.min(next_detail)) => {
                let now = Instant::now();
                let mut result = Ok(());
                if now >= next_poll {
                    result = d.poll().await;
                }
                if now >= next_detail && result.is_ok() {
                    d.details().await;
                    next_detail = Instant::now() + jitter(d.shared.cfg.detail_interval);
                }
                let cfg = &d.shared.cfg;
                let wait = match &result {
                    Err(e) if e.is_transient() => poll_backoff(cfg.poll_interval_active, d.failures),
                    _ if d.running || d.pending.is_some() => cfg.poll_interval_active,
                    _ => cfg.poll_interval,
                };
                if now >= next_poll {
                    next_poll = Instant::now() + jitter(wait);
                }
                // After trouble, details wait for the condition poll to succeed again.
                if result.is_err() {
                    next_detail = next_detail.max(next_poll);
                }
            }
        }
    }
}

impl Device {
    async fn call(&self, service: u16, extra: Value) -> Result<Value, CallError> {
        let mut data = json!({"esn": self.esn});
        if let (Some(obj), Value::Object(extra)) = (data.as_object_mut(), extra) {
            obj.extend(extra);
        }
        let result = self.shared.api.call(service, &data).await;
        if let Err(e) = &result {
            match e {
                CallError::Refused(_) => {
                    self.shared.counters.refused.fetch_add(1, Ordering::Relaxed)
                }
                CallError::BadAnswer(_) => self
                    .shared
                    .counters
                    .bad_answers
                    .fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            tracing::warn!(event = "iauto360_call_failed", vehicle = %self.id, service, error = %e, "iauto360 call failed");
        }
        result
    }

    async fn merge(&self, state: VehicleState) {
        if !state.values.is_empty() || !state.attributes.is_empty() || state.position.is_some() {
            self.shared
                .updates
                .merge_state(self.id.clone(), state)
                .await;
        }
    }

    /// 1011, the latest condition.
    async fn poll(&mut self) -> Result<(), CallError> {
        self.shared.counters.polls.fetch_add(1, Ordering::Relaxed);
        let updates = &self.shared.updates;
        match self.call(1011, json!({})).await {
            Ok(data) => {
                self.failures = 0;
                let (state, running) = services::condition(&data);
                if let Some(r) = running {
                    self.running = r;
                }
                updates.availability(self.id.clone(), true).await;
                self.merge(state).await;
                self.status
                    .set(updates, &self.id, ConnectionStatus::OK)
                    .await;
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                self.shared
                    .counters
                    .poll_errors
                    .fetch_add(1, Ordering::Relaxed);
                if self.failures >= OFFLINE_AFTER {
                    updates.availability(self.id.clone(), false).await;
                }
                if let CallError::Refused(reason) = &e {
                    let _ = updates
                        .send(Update::Health {
                            links: 0,
                            error: Some(format!("{}: {reason}", self.esn)),
                        })
                        .await;
                }
                self.status.set(updates, &self.id, &e.to_string()).await;
                Err(e)
            }
        }
    }

    /// The slower services, each on its own: one failing costs only its own sensors.
    async fn details(&mut self) {
        type Mapping = fn(&Value) -> VehicleState;
        let table: [(u16, Mapping); 6] = [
            (1001, services::binding),
            (1019, services::tyres),
            (1017, services::battery_history),
            (1018, services::health),
            (1021, services::vehicle_info),
            (3004, services::fuel_yesterday),
        ];
        for (service, map) in table {
            if let Ok(d) = self.call(service, json!({})).await {
                self.merge(map(&d)).await;
            }
        }
        let now = chrono::Utc::now().timestamp();
        let trips = self
            .call(
                1012,
                json!({"timeFrom": now - TRIP_WINDOW_S, "timeTo": now, "page": 1}),
            )
            .await;
        if let Some(trip) = trips.ok().as_ref().and_then(services::latest_trip) {
            // The first trip seen after start only sets the sensors; later ones are news.
            let new = self.last_trip.is_some_and(|last| trip.id != last);
            if self.last_trip != Some(trip.id) {
                let track = if new {
                    self.call(1013, json!({"recordId": trip.id})).await.ok()
                } else {
                    None
                };
                let (state, event) = services::trip(&trip, track.as_ref());
                self.merge(state).await;
                if new {
                    self.shared.updates.event(self.id.clone(), event).await;
                }
                self.last_trip = Some(trip.id);
            }
        }
    }

    async fn command(&mut self, req: CommandRequest) {
        let lock = match req.command {
            Command::Lock => true,
            Command::Unlock => false,
            _ => {
                let _ = req
                    .progress
                    .send(CommandProgress::Failed("not supported by iauto360".into()))
                    .await;
                return;
            }
        };
        if let Some(old) = self.pending.take() {
            let _ = old
                .progress
                .send(CommandProgress::Failed(
                    "superseded by a newer command".into(),
                ))
                .await;
        }
        self.shared
            .counters
            .commands_sent
            .fetch_add(1, Ordering::Relaxed);
        let op = if lock { "LOCK_DOOR" } else { "UNLOCK_DOOR" };
        let answer = self.call(5001, json!({"opCode": op})).await;
        let status = answer
            .as_ref()
            .ok()
            .and_then(|d| d.get("status"))
            .and_then(|s| {
                s.as_i64()
                    .or_else(|| s.as_str().and_then(|s| s.trim().parse().ok()))
            });
        match (answer, status) {
            (Ok(_), Some(1)) => {
                tracing::info!(event = "iauto360_command_accepted", vehicle = %self.id, op, "command sent to the car");
                let _ = req.progress.send(CommandProgress::Accepted).await;
                if self.shared.cfg.push_listen.is_none() {
                    tracing::info!(event = "iauto360_command_unconfirmable", vehicle = %self.id,
                        "no push_listen: the outcome cannot be confirmed and will end as timeout");
                }
                self.pending = Some(Pending {
                    progress: req.progress,
                    lock,
                    sent_at: chrono::Utc::now().timestamp(),
                });
            }
            (Ok(_), _) => {
                self.fail(
                    req,
                    "the platform could not send the request (status 0)".into(),
                )
                .await
            }
            (Err(e), _) => self.fail(req, e.to_string()).await,
        }
    }

    async fn fail(&self, req: CommandRequest, reason: String) {
        self.shared
            .counters
            .commands_failed
            .fetch_add(1, Ordering::Relaxed);
        let _ = req.progress.send(CommandProgress::Failed(reason)).await;
    }

    async fn pushed(&mut self, ev: PushedEvent) {
        if self.seen.contains(&ev.id) {
            return;
        }
        if self.seen.len() >= SEEN_EVENTS {
            self.seen.pop_front();
        }
        self.seen.push_back(ev.id);
        if let Some(r) = ev.state.get(Field::EngineRunning) {
            self.running = r == &crate::model::Value::Bool(true);
        }
        // An event from long ago (a late or replayed push) is news, but not the state now.
        let now = chrono::Utc::now().timestamp();
        if ev.time.is_none_or(|t| now - t <= STALE_EVENT_S) {
            self.merge(ev.state).await;
        }
        self.shared.updates.event(self.id.clone(), ev.event).await;
        if let Some(outcome) = ev.lock {
            if self.pending.as_ref().is_some_and(|p| {
                p.lock == outcome.locked && ev.time.is_none_or(|t| t >= p.sent_at - OUTCOME_SKEW_S)
            }) {
                if let Some(p) = self.pending.take() {
                    let progress = if outcome.success {
                        CommandProgress::Succeeded
                    } else {
                        CommandProgress::Failed("the car reported that it failed".into())
                    };
                    let _ = p.progress.send(progress).await;
                }
            }
        }
    }
}
