//! iauto360 (车智汇) connector: per device, polls the latest condition (1011) adaptively
//! and the slower services (1001, 1019, 1017, 1018, 1021, 1012/1013, 3004) every
//! `detail_interval`; sends 5001 lock / unlock; receives the platform's event pushes;
//! refreshes on demand and follows the owner's polling settings and quiet hours
//! (docs/protocols/iauto360.md, "Refresh" and "Polling").
//!
//! `api` is one signed call, `push` the HTTP endpoint; this file owns the schedule.

mod api;
mod config;
mod push;
#[cfg(feature = "simulators")]
pub mod sim;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use api::CallError;
pub use config::{Iauto360, Iauto360Config, Iauto360Device};

use api::Api;

use crate::connector::{
    CommandRequest, ConnectionStatus, Connector, ConnectorContext, ConnectorFuture, Update,
    UpdateSink,
};
use crate::connectors::poll::{jitter, Hold, Intervals, Next, Schedule, CONFIRM_AFTER};
use crate::connectors::polling::{
    Plan, QuietHours, Settings, SettingsStore, MAX_MINUTES, MIN_MINUTES, OFF_RECHECK,
};
use crate::connectors::Freshness;
use crate::model::{
    Capability, Command, CommandProgress, Field, PollingPhase, VehicleId, VehicleInfo, VehicleState,
};
use crate::protocol::iauto360::services::{self, PushedEvent};
use crate::zone::Zone;

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
        push_refused,
        push_slow,
    }
}

const QUEUE: usize = 16;
/// Trips looked up per detail round (1012 takes a time range).
const TRIP_WINDOW_S: i64 = 7 * 24 * 3600;
/// 1012 pages read per round at most (10 trips each): a week of heavy use.
const MAX_TRIP_PAGES: usize = 20;
/// New trips whose track (1013) is fetched per round; older ones are announced without it.
const MAX_TRACKS_PER_ROUND: usize = 3;
/// The last trip announced per box, so a restart neither repeats nor loses trips.
const TRIPS_FILE: &str = "iauto360_trips.json";
/// Pushed event ids remembered per device, so a re-delivered push counts once.
const SEEN_EVENTS: usize = 64;
/// Each box's polling as its owner set it over MQTT (`connectors::polling::Settings`).
const POLLING_FILE: &str = "iauto360_polling.json";

pub struct Iauto360Connector {
    config: Iauto360Config,
    state_dir: Option<std::path::PathBuf>,
}

impl Iauto360Connector {
    pub fn new(config: Iauto360Config) -> Iauto360Connector {
        Iauto360Connector {
            config,
            state_dir: None,
        }
    }

    /// Where the last announced trip of each box persists.
    pub fn with_state_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.state_dir = Some(dir);
        self
    }
}

/// The last trip announced: `(end, id)`, compared in that order.
type TripMark = (i64, i64);

/// Vehicle ids on the bridge: `ia<esn>`.
pub fn vehicle_id(esn: &str) -> Option<VehicleId> {
    VehicleId::for_upstream("ia", esn)
}

impl Connector for Iauto360Connector {
    fn name(&self) -> &'static str {
        "iauto360"
    }

    /// One poller per open_id, cluster-wide (docs/cluster.md).
    fn cloud_account(&self) -> Option<String> {
        Some(format!("iauto360:{}", self.config.open_id))
    }

    fn fresh_copy(&self) -> Option<Box<dyn Connector>> {
        Some(Box::new(Iauto360Connector {
            config: self.config.clone(),
            state_dir: self.state_dir.clone(),
        }))
    }

    fn configured_vehicles(&self) -> Option<Vec<VehicleId>> {
        Some(
            self.config
                .devices
                .iter()
                .filter_map(|d| vehicle_id(&d.esn))
                .collect(),
        )
    }

    fn speed_limits(&self) -> crate::connector::SpeedLimits {
        crate::connector::SpeedLimits {
            section: self.config.overspeed_kmh,
            vehicles: self
                .config
                .devices
                .iter()
                .filter_map(|d| Some((vehicle_id(&d.esn)?, d.overspeed_kmh?)))
                .collect(),
        }
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            let cfg = self.config;
            crate::connectors::warn_if_plain_http("iauto360", &cfg.base_url);
            let counters = Arc::new(Counters::default());
            let trips = self
                .state_dir
                .as_ref()
                .and_then(|d| std::fs::read(d.join(TRIPS_FILE)).ok())
                .and_then(|raw| serde_json::from_slice(&raw).ok())
                .unwrap_or_default();
            let tz = crate::shared::require_timezone("iauto360", &cfg.timezone)?;
            let shared = Arc::new(Shared {
                api: Api::new(&cfg)?.with_lease(ctx.lease.clone()),
                cfg: cfg.clone(),
                updates: ctx.updates.clone(),
                counters: counters.clone(),
                state_dir: self.state_dir.clone(),
                trips: std::sync::Mutex::new(trips),
                hold: std::sync::Mutex::new(Hold::default()),
                settings: SettingsStore::load(self.state_dir.clone(), POLLING_FILE),
                tz,
            });
            let ConnectorContext {
                mut commands,
                shutdown,
                ..
            } = ctx;
            // Device loops and the push endpoint: one that ends before shutdown ends the
            // connector (a dead push endpoint left every command unconfirmed, unnoticed).
            let mut tasks = crate::connectors::Tasks::default();
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
                let device = device_loop(
                    shared.clone(),
                    device.esn.clone(),
                    id,
                    cfg.quiet_hours(device),
                    cmd_rx,
                    push_rx,
                    shutdown.clone(),
                );
                tasks.spawn("iauto360 device", async move {
                    device.await;
                    Ok(())
                });
            }
            if let Some(listen) = cfg.push_listen {
                let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                    anyhow::anyhow!("iauto360 cannot listen for pushes on {listen}: {e}")
                })?;
                tracing::info!(event = "iauto360_push_listening", listen = %listener.local_addr()?, path = %cfg.push_path, "iauto360 event push endpoint listening");
                let (cfg, counters, shutdown) = (cfg.clone(), counters.clone(), shutdown.clone());
                tasks.spawn("iauto360 push endpoint", async move {
                    push::serve(&cfg, listener, push_routes, counters, shutdown).await
                });
            }
            let mut counters_tick = tokio::time::interval(crate::connector::COUNTERS_EVERY);
            let mut report = crate::connector::CountersReport::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(req) = commands.recv() => crate::connector::route_command(&command_routes, req).await,
                    _ = counters_tick.tick() => report.report(counters.snapshot(), &shared.updates).await,
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

/// What the connector's tasks (one per box) share.
struct Shared {
    cfg: Iauto360Config,
    api: Api,
    updates: UpdateSink,
    counters: Arc<Counters>,
    state_dir: Option<std::path::PathBuf>,
    /// esn → the last trip announced.
    trips: std::sync::Mutex<HashMap<String, TripMark>>,
    /// One open id, one plan: a 429 or 5xx holds every box's reads back.
    hold: std::sync::Mutex<Hold>,
    settings: SettingsStore,
    /// The local time of the quiet hours.
    tz: Zone,
}

impl Shared {
    /// The configured reading paces (the owner's settings may replace them).
    fn pace(&self) -> Intervals {
        Intervals {
            idle: self.cfg.poll_interval,
            active: self.cfg.active_interval(),
        }
    }

    /// A call's outcome for the account-wide hold: a 429 or a 5xx holds every read back;
    /// any answer of the platform's ends the hold; a timeout or a broken connection says
    /// nothing of the platform and leaves it (the box's own back-off handles those).
    fn note(&self, result: &Result<Value, CallError>) {
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(CallError::RateLimited | CallError::Server(_)) => {
                let now = Instant::now();
                let until = hold.struggled(self.cfg.active_interval(), None, now);
                crate::status_page::problems::record(
                    "iauto360_hold",
                    "iauto360 platform",
                    format!(
                        "{}: every read waits {} s",
                        match result {
                            Err(CallError::RateLimited) => "rate limited (429)",
                            _ => "server error",
                        },
                        (until - now).as_secs()
                    ),
                );
                tracing::warn!(
                    event = "iauto360_backoff",
                    failures = hold.failures(),
                    wait_ms = u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX),
                    "iauto360 platform trouble; every read waits"
                );
            }
            Err(CallError::Transport(_) | CallError::Timeout) => {}
            _ => hold.clear(),
        }
    }

    /// How long the account's reads are still held back, if they are.
    fn held(&self) -> Option<std::time::Duration> {
        let now = Instant::now();
        let hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        hold.until(now).map(|u| u - now)
    }

    fn last_trip(&self, esn: &str) -> Option<TripMark> {
        self.trips.lock().ok()?.get(esn).copied()
    }

    fn remember_trip(&self, esn: &str, mark: TripMark) {
        let bytes = {
            let Ok(mut trips) = self.trips.lock() else {
                return;
            };
            trips.insert(esn.to_string(), mark);
            serde_json::to_vec(&*trips)
        };
        let Some(dir) = &self.state_dir else { return };
        match bytes {
            // The writer's thread does the fsync: never on this worker, never under the lock.
            Ok(bytes) => {
                crate::state_dir::writer::write(dir, TRIPS_FILE, bytes, "iauto360_trips_not_saved")
            }
            Err(e) => tracing::warn!(event = "iauto360_trips_not_saved", error = %e),
        }
    }
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
        reported_model: None,
        sw_version: None,
        custom_name: device.name.is_some(),
        serial_number: Some(device.esn.clone()),
        // docs/protocols/iauto360.md, "Refresh" and "Polling".
        capabilities: vec![
            Capability::Lock,
            Capability::Refresh,
            Capability::Polling,
            Capability::PollIntervals {
                min: MIN_MINUTES,
                max: MAX_MINUTES,
            },
        ]
        .into(),
        event_types: services::EVENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into(),
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

/// A refresh waiting for a report newer than its press (docs/protocols/iauto360.md,
/// "Refresh").
struct Refresh {
    progress: mpsc::Sender<CommandProgress>,
    /// A 1001 `activeTime` after this is a new report: the newest one seen before the
    /// press (the platform's own clock), or the press on the bridge's clock when none was
    /// seen yet.
    pressed_at: i64,
    /// Reads made for it so far: the one at once, then one per `CONFIRM_AFTER` step.
    reads: usize,
    /// The newest `activeTime` seen, for the reason when none was newer.
    last_report: Option<i64>,
}

struct Device {
    shared: Arc<Shared>,
    esn: String,
    id: VehicleId,
    /// When it is read next; failed reads in a row.
    schedule: Schedule,
    running: bool,
    pending: Option<Pending>,
    refresh: Option<Refresh>,
    status: ConnectionStatus,
    seen: VecDeque<i64>,
    /// When each published value was measured: the newest wins.
    fresh: Freshness,
    /// The owner's polling, and this box's quiet hours.
    settings: Settings,
    quiet: Option<QuietHours>,
    /// The polling phase and next poll (unix s) last published: only changes are sent.
    shown_plan: Option<(PollingPhase, Option<i64>)>,
    /// When the slower services are read again (with the first scheduled read after).
    next_detail: Instant,
    /// The newest 1001 `activeTime` seen (the platform's clock): a refresh waits for a
    /// newer one.
    newest_report: Option<i64>,
}

async fn device_loop(
    shared: Arc<Shared>,
    esn: String,
    id: VehicleId,
    quiet: Option<QuietHours>,
    mut commands: mpsc::Receiver<CommandRequest>,
    mut pushes: mpsc::Receiver<PushedEvent>,
    shutdown: CancellationToken,
) {
    let (boxes, idle) = (shared.cfg.devices.len(), shared.cfg.poll_interval);
    let share = rand::rng().random_range(0.0..1.0);
    let settings = shared.settings.get(id.as_str());
    let now = Instant::now();
    let mut d = Device {
        shared,
        esn,
        id,
        schedule: Schedule::spread(boxes, idle, share, now),
        running: false,
        pending: None,
        refresh: None,
        status: ConnectionStatus::default(),
        seen: VecDeque::new(),
        fresh: Freshness::default(),
        settings,
        quiet,
        shown_plan: None,
        next_detail: now,
        newest_report: None,
    };
    // HA's switch and numbers show the settings from the start.
    let shown = d.settings.state(d.shared.pace());
    d.merge(shown, chrono::Utc::now().timestamp()).await;
    loop {
        if d.pending.as_ref().is_some_and(|p| p.progress.is_closed()) {
            d.pending = None;
        }
        if d.refresh.as_ref().is_some_and(|r| r.progress.is_closed()) {
            d.refresh = None;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(req) = commands.recv() => d.command(req).await,
            Some(ev) = pushes.recv() => d.pushed(ev).await,
            _ = tokio::time::sleep_until(d.schedule.due()) => d.due().await,
        }
    }
}

impl Device {
    /// The intervals in force: the owner's, else the configured ones.
    fn intervals(&self) -> Intervals {
        self.settings.intervals(self.shared.pace())
    }

    /// What follows a read that answered: confirming while a command or a refresh waits.
    fn next_after_read(&self) -> Next {
        if self.refresh.is_some()
            || self
                .pending
                .as_ref()
                .is_some_and(|p| !p.progress.is_closed())
        {
            Next::Confirm
        } else if self.running {
            Next::Active
        } else {
            Next::Idle
        }
    }

    /// Moves the planned read by the hold, the settings and the quiet hours
    /// (`connectors::polling::Plan`); returns the plan and the phase's state when that
    /// changed since it was last shown.
    fn follow_plan(&mut self) -> (Plan, Option<VehicleState>) {
        let now = Instant::now();
        let local = self.shared.tz.local_time(chrono::Utc::now());
        let planned = self.schedule.due().saturating_duration_since(now);
        let plan = Plan::new(
            self.schedule.planned(),
            planned,
            self.shared.held(),
            &self.settings,
            self.quiet.as_ref(),
            local,
        );
        // Polling off: woken by the command that turns it on; OFF_RECHECK bounds the rest.
        self.schedule
            .postpone(now + plan.wait.unwrap_or(OFF_RECHECK));
        let utc = chrono::Utc::now();
        let next_poll = plan
            .wait
            .and_then(|w| chrono::Duration::from_std(w).ok())
            .map(|w| (utc + w).timestamp());
        let key = (plan.phase, next_poll);
        if self.shown_plan == Some(key) {
            return (plan, None);
        }
        self.shown_plan = Some(key);
        (plan, Some(plan.state(utc)))
    }

    /// Publishes `state` with the phase, when that changed after a re-plan.
    async fn publish_plan(&mut self, mut state: VehicleState) {
        if let (_, Some(plan)) = self.follow_plan() {
            state.merge(plan);
        }
        self.merge(state, chrono::Utc::now().timestamp()).await;
    }

    /// The planned read is due: read unless the hold, the settings or the quiet hours
    /// moved it since it was planned.
    async fn due(&mut self) {
        let shown = self.shown_plan;
        let (plan, news) = self.follow_plan();
        if plan.wait != Some(std::time::Duration::ZERO) {
            if let Some(news) = news {
                self.merge(news, chrono::Utc::now().timestamp()).await;
            }
            return;
        }
        // Reading now: what the read plans next is what shows.
        self.shown_plan = shown;
        let scheduled = self.schedule.planned() != Next::Confirm;
        let read = self.poll().await;
        let answered = read.is_ok();
        let mut state = VehicleState::default();
        let next = match read {
            Err(e) => {
                if let Some(r) = self.refresh.take() {
                    let _ = r
                        .progress
                        .send(CommandProgress::Failed(format!("the read failed: {e}")))
                        .await;
                }
                if e.is_transient() {
                    Next::BackOff
                } else {
                    self.next_after_read()
                }
            }
            Ok(read) => {
                state.merge(read);
                if self.refresh.is_some() {
                    state.merge(self.refresh_read().await);
                }
                self.next_after_read()
            }
        };
        let now = Instant::now();
        self.schedule.plan(next, self.intervals(), now);
        if let (_, Some(plan)) = self.follow_plan() {
            state.merge(plan);
        }
        self.merge(state, chrono::Utc::now().timestamp()).await;
        if answered {
            let updates = self.shared.updates.clone();
            self.status
                .set(&updates, &self.id, ConnectionStatus::OK)
                .await;
        }
        // Only scheduled reads bring the slower services along, and only after 1011
        // answered (after trouble they wait for the condition poll to succeed again).
        if scheduled && answered && now >= self.next_detail {
            self.details().await;
            self.next_detail = Instant::now() + jitter(self.shared.cfg.detail_interval);
        }
    }

    /// A refresh's 1001: a report newer than the press ends it as fresh; none after the
    /// last `CONFIRM_AFTER` step ends it as failed (docs/protocols/iauto360.md, "Refresh").
    async fn refresh_read(&mut self) -> VehicleState {
        let answer = self.call(1001, json!({})).await;
        let Some(mut r) = self.refresh.take() else {
            return VehicleState::default();
        };
        r.reads += 1;
        let (state, reported) = match &answer {
            Ok(d) => (services::binding(d), services::last_data_time(d)),
            Err(_) => (VehicleState::default(), None),
        };
        r.last_report = reported.max(r.last_report);
        self.newest_report = reported.max(self.newest_report);
        let at = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        if let Some(reported_at) = reported.filter(|t| *t > r.pressed_at).and_then(at) {
            tracing::info!(event = "iauto360_refreshed", vehicle = %self.id, reported_at, reads = r.reads);
            let _ = r
                .progress
                .send(CommandProgress::Fresh { reported_at })
                .await;
        } else if r.reads > CONFIRM_AFTER.len() {
            let last = r
                .last_report
                .and_then(at)
                .unwrap_or_else(|| "unknown".into());
            let why = format!(
                "no report newer than the press after {} reads (last report at {last})",
                r.reads
            );
            let _ = r.progress.send(CommandProgress::Failed(why)).await;
        } else {
            self.refresh = Some(r);
        }
        state
    }

    async fn call(&self, service: u16, extra: Value) -> Result<Value, CallError> {
        let mut data = json!({"esn": self.esn});
        if let (Some(obj), Value::Object(extra)) = (data.as_object_mut(), extra) {
            obj.extend(extra);
        }
        let result = self.shared.api.call(service, &data).await;
        self.shared.note(&result);
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

    /// Publishes what is newer than what is shown (`measured_at`: unix seconds).
    async fn merge(&mut self, mut state: VehicleState, measured_at: i64) {
        self.fresh.admit(&mut state, measured_at);
        if !state.values.is_empty()
            || !state.cleared.is_empty()
            || !state.attributes.is_empty()
            || state.position.is_some()
        {
            self.shared
                .updates
                .merge_state(self.id.clone(), state)
                .await;
        }
    }

    /// 1011, the latest condition: its state, for the caller to publish.
    async fn poll(&mut self) -> Result<VehicleState, CallError> {
        self.shared.counters.polls.fetch_add(1, Ordering::Relaxed);
        let updates = &self.shared.updates;
        match self.call(1011, json!({})).await {
            Ok(data) => {
                self.schedule.answered();
                let (state, running) = services::condition(&data);
                if let Some(r) = running {
                    self.running = r;
                }
                updates.availability(self.id.clone(), true).await;
                // 1011 has no time of its own: it is the car as of now (the caller merges
                // it, then shows the connection ok).
                Ok(state)
            }
            Err(e) => {
                let offline = self.schedule.failed();
                self.shared
                    .counters
                    .poll_errors
                    .fetch_add(1, Ordering::Relaxed);
                if offline {
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
        let table: [(u16, Mapping); 5] = [
            (1001, services::binding),
            (1019, services::tyres),
            (1018, services::health),
            (1021, services::vehicle_info),
            (3004, services::fuel_yesterday),
        ];
        for (service, map) in table {
            if let Ok(d) = self.call(service, json!({})).await {
                if service == 1001 {
                    self.newest_report = services::last_data_time(&d).max(self.newest_report);
                }
                self.merge(map(&d), chrono::Utc::now().timestamp()).await;
            }
        }
        // 1017 is history: its newest record counts as of its own time, so a value an
        // hour old never replaces the live 1011 voltage.
        if let Ok(d) = self.call(1017, json!({})).await {
            let (state, at) = services::battery_history(&d);
            self.merge(state, at.unwrap_or(0)).await;
        }
        self.trips().await;
    }

    /// Every trip of the last week, page by page (10 per page); trips newer than the last
    /// one announced become events, oldest first; the newest sets the last-trip sensors.
    async fn trips(&mut self) {
        let now = chrono::Utc::now().timestamp();
        let mut all = Vec::new();
        for page in 1..=MAX_TRIP_PAGES {
            let window = json!({"timeFrom": now - TRIP_WINDOW_S, "timeTo": now, "page": page});
            let Ok(d) = self.call(1012, window).await else {
                // A gap would announce trips out of order: try the whole list next round.
                return;
            };
            let got = services::trips(&d);
            let count = got.len();
            all.extend(got);
            let total = services::trip_count(&d);
            if count < services::TRIPS_PER_PAGE
                || total.is_some_and(|t| page * services::TRIPS_PER_PAGE >= t)
            {
                break;
            }
        }
        all.sort_by_key(|t| (t.end, t.id));
        all.dedup_by_key(|t| t.id);
        let Some(newest) = all.last().cloned() else {
            return;
        };
        let mark = |t: &services::Trip| (t.end, t.id);
        let last = self.shared.last_trip(&self.esn);
        if last.is_some_and(|l| l >= mark(&newest)) {
            return;
        }
        // Never announced anything for this box: the newest trip only sets the sensors
        // (announcing a week of history at first start would be noise).
        let fresh: Vec<services::Trip> = match last {
            None => Vec::new(),
            Some(l) => all.into_iter().filter(|t| mark(t) > l).collect(),
        };
        let with_track = fresh.len().saturating_sub(MAX_TRACKS_PER_ROUND);
        for (i, trip) in fresh.iter().enumerate() {
            let track = if i >= with_track {
                self.call(1013, json!({"recordId": trip.id})).await.ok()
            } else {
                None
            };
            let (_, event) = services::trip(trip, track.as_ref());
            self.shared.updates.event(self.id.clone(), event).await;
        }
        let (state, _) = services::trip(&newest, None);
        self.merge(state, newest.end).await;
        self.shared.remember_trip(&self.esn, mark(&newest));
    }

    async fn command(&mut self, req: CommandRequest) {
        let lock = match req.command {
            Command::Lock => true,
            Command::Unlock => false,
            Command::Refresh => return self.refresh(req).await,
            Command::Polling(_) | Command::PollInterval(_) | Command::PollIntervalActive(_) => {
                return self.set_polling(req).await
            }
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
                // Confirming reads until the outcome (docs/protocols/iauto360.md, "Polling").
                self.schedule.command_accepted(Instant::now());
                self.publish_plan(VehicleState::default()).await;
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

    /// A refresh: 1011 at once, then on the `CONFIRM_AFTER` steps until 1001 shows a
    /// report newer than the press; refused without a read while the account is held
    /// (docs/protocols/iauto360.md, "Refresh").
    async fn refresh(&mut self, req: CommandRequest) {
        if let Some(left) = self.shared.held() {
            let until = chrono::Duration::from_std(left)
                .ok()
                .map(|l| chrono::Utc::now() + l)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "later".into());
            let why = format!(
                "the cloud is holding reads back until {until} (rate limit or server error): nothing was read"
            );
            let _ = req.progress.send(CommandProgress::Refused(why)).await;
            return;
        }
        if let Some(old) = self.refresh.take() {
            let _ = old
                .progress
                .send(CommandProgress::Failed(
                    "superseded by a newer refresh".into(),
                ))
                .await;
        }
        let _ = req.progress.send(CommandProgress::Accepted).await;
        self.refresh = Some(Refresh {
            progress: req.progress,
            pressed_at: self
                .newest_report
                .unwrap_or_else(|| chrono::Utc::now().timestamp()),
            reads: 0,
            last_report: None,
        });
        self.schedule.read_now(Instant::now());
    }

    /// Polling on / off and the intervals: kept in `state_dir`, shown at once, and the
    /// next scheduled read planned again at the new pace from now.
    async fn set_polling(&mut self, req: CommandRequest) {
        self.settings.apply(&req.command);
        self.shared.settings.set(self.id.as_str(), self.settings);
        tracing::info!(event = "iauto360_polling_set", vehicle = %self.id, command = %req.command.name(), "polling settings changed");
        let _ = req.progress.send(CommandProgress::Succeeded).await;
        // A command's or a refresh's confirming reads keep their steps.
        if self.schedule.planned() != Next::Confirm {
            self.schedule
                .plan(self.schedule.planned(), self.intervals(), Instant::now());
        }
        let shown = self.settings.state(self.shared.pace());
        self.publish_plan(shown).await;
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
            self.merge(ev.state, ev.time.unwrap_or(now)).await;
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
                    // Confirmed: back to the pace, unless a refresh still waits.
                    if self.refresh.is_none() && self.schedule.planned() == Next::Confirm {
                        let next = self.next_after_read();
                        self.schedule.plan(next, self.intervals(), Instant::now());
                        self.publish_plan(VehicleState::default()).await;
                    }
                }
            }
        }
    }
}

#[cfg(all(test, feature = "simulators"))]
mod tests;
