//! xchanger connector (Lynk & Co / Geely cloud): logs in, lists the account's vehicles,
//! polls each one's status (adaptive, jittered, backing off when the cloud struggles),
//! sends RDL/RDU/RES/RHL and confirms them by the next status whose `updateTime` has
//! advanced, and reads the SIM's data plan.
//!
//! `auth` owns the tokens, `api` one HTTP call; this file owns the schedule.

mod api;
mod auth;
mod command;
mod config;
mod roster;
#[cfg(feature = "simulators")]
pub mod sim;
#[cfg(feature = "simulators")]
mod simulated;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use api::{classify, ApiError};
pub use auth::REFUSED_BACKOFF;
pub use config::{ApiVersion, DataUnit, Xchanger, XchangerConfig};

use api::{data, segment, Api, Body, Host};
use auth::{Auth, Tokens};
pub use command::*;
use roster::*;

use crate::connector::{
    CommandRequest, ConnectionStatus, Connector, ConnectorContext, ConnectorFuture, Update,
    UpdateSink,
};
use crate::connectors::poll::{jitter, poll_backoff, Hold, Intervals, Next, Schedule};
use crate::connectors::polling::{Plan, QuietHours, Settings, SettingsStore};
use crate::model::{
    lock_state, Capability, Command, CommandProgress, Field, VehicleId, VehicleInfo, VehicleState,
};
use crate::protocol::xchanger::status;

crate::named_counters! {
    /// Named error counters, in `bridge/info` and behind each logged event.
    pub struct Counters {
        logins,
        logins_refused,
        refreshes,
        polls,
        poll_errors,
        rate_limited,
        bad_answers,
        commands_sent,
        commands_failed,
    }
}

/// Commands queued per vehicle (the bridge already sends one at a time).
const VEHICLE_QUEUE: usize = 4;
/// Each car's polling as its owner set it (`connectors::polling`), in `state_dir`.
const POLLING_FILE: &str = "xchanger_polling.json";

pub use crate::connectors::poll::CONFIRM_AFTER;

pub struct XchangerConnector {
    config: XchangerConfig,
    state_dir: PathBuf,
}

impl XchangerConnector {
    /// Tokens are kept in `state_dir`.
    pub fn new(config: XchangerConfig, state_dir: PathBuf) -> XchangerConnector {
        XchangerConnector { config, state_dir }
    }
}

impl Connector for XchangerConnector {
    fn name(&self) -> &'static str {
        "xchanger"
    }

    /// One login per account, cluster-wide (docs/cluster.md).
    fn cloud_account(&self) -> Option<String> {
        Some(format!("xchanger:{}", self.config.account()))
    }

    fn fresh_copy(&self) -> Option<Box<dyn Connector>> {
        Some(Box::new(XchangerConnector::new(
            self.config.clone(),
            self.state_dir.clone(),
        )))
    }

    /// With `vins` set, those are the cars; else the account's list says (a roster).
    fn configured_vehicles(&self) -> Option<Vec<VehicleId>> {
        let vins = &self.config.vins;
        (!vins.is_empty()).then(|| {
            vins.iter()
                .filter_map(|v| VehicleId::for_upstream("", v))
                .collect()
        })
    }

    fn speed_limits(&self) -> crate::connector::SpeedLimits {
        // The cloud's VIN is the id; a key written in another case still counts.
        crate::connector::SpeedLimits::from_table(
            self.config.overspeed_kmh,
            &self.config.vehicle_overspeed_kmh,
            |vin| {
                [vin.to_string(), vin.to_ascii_uppercase()]
                    .into_iter()
                    .filter_map(|v| VehicleId::for_upstream("", &v))
            },
        )
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            crate::connectors::warn_if_plain_http("xchanger", &self.config.base_url());
            let counters = Arc::new(Counters::default());
            let quiet = |text: &str| QuietHours::parse(text);
            let shared = Arc::new(Shared {
                api: Api::new(&self.config)?.with_lease(ctx.lease.clone()),
                settings: SettingsStore::load(Some(self.state_dir.clone()), POLLING_FILE),
                auth: Auth::new(self.config.clone(), self.state_dir, counters.clone()),
                quiet: quiet(&self.config.quiet_hours),
                vehicle_quiet: self
                    .config
                    .vehicle_quiet_hours
                    .iter()
                    // VINs are upper case as the cloud lists them.
                    .filter_map(|(vin, q)| Some((vin.to_ascii_uppercase(), quiet(q)?)))
                    .collect(),
                // Checked by the config; China's zone if it was not.
                tz: crate::zone::Zone::parse(&self.config.timezone)
                    .unwrap_or(crate::zone::Zone::Named(chrono_tz::Asia::Shanghai)),
                cfg: self.config,
                updates: ctx.updates,
                counters,
                hold: Mutex::new(Hold::default()),
            });
            run(shared, ctx.commands, ctx.shutdown).await;
            Ok(())
        })
    }
}

/// What the connector's tasks (the roster loop, one task per vehicle) share.
struct Shared {
    cfg: XchangerConfig,
    api: Api,
    auth: Auth,
    updates: UpdateSink,
    counters: Arc<Counters>,
    /// Cloud-wide back-off: a 429 or 5xx for one vehicle slows every request of the account.
    hold: Mutex<Hold>,
    /// Each car's polling settings, kept across restarts.
    settings: SettingsStore,
    quiet: Option<QuietHours>,
    /// By VIN.
    vehicle_quiet: std::collections::HashMap<String, QuietHours>,
    tz: crate::zone::Zone,
}

struct Request {
    host: Host,
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Body,
}

impl Shared {
    fn path(&self, v1: &str, v2: &str, vin: &str) -> String {
        match self.api.version() {
            ApiVersion::V1 => format!("{v1}/{}", segment(vin)),
            ApiVersion::V2 => format!("{v2}/{}", segment(vin)),
        }
    }

    /// One authorised call: on an expired token, refresh (once for all waiters) and retry.
    async fn call(&self, build: impl Fn(&Tokens) -> Request) -> Result<Value, ApiError> {
        let result = async {
            let (tokens, generation) = self.auth.tokens(&self.api).await?;
            match self.send(&build(&tokens), &tokens).await {
                Err(ApiError::TokenExpired) => {
                    self.auth.expired(&self.api, generation).await?;
                }
                Err(ApiError::Refused(reason)) => {
                    self.auth.rejected(&self.api, generation, &reason).await?;
                }
                other => return other,
            }
            let (tokens, _) = self.auth.tokens(&self.api).await?;
            self.send(&build(&tokens), &tokens).await
        }
        .await;
        self.note(&result);
        result
    }

    async fn send(&self, req: &Request, tokens: &Tokens) -> Result<Value, ApiError> {
        let query: Vec<(&str, &str)> = req.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.api
            .call(
                req.host,
                req.method.clone(),
                &req.path,
                &query,
                req.body.clone(),
                Some(&tokens.access_token),
            )
            .await
    }

    fn note(&self, result: &Result<Value, ApiError>) {
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Err(e) if e.is_transient() => {
                if matches!(e, ApiError::RateLimited { .. }) {
                    self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                let at_least = match e {
                    ApiError::RateLimited { retry_after } => *retry_after,
                    _ => None,
                };
                let now = Instant::now();
                let until = hold.struggled(self.cfg.active_interval(), at_least, now);
                crate::status_page::problems::record(
                    "xchanger_hold",
                    "xchanger cloud",
                    format!("{e}: every request waits {} s", (until - now).as_secs()),
                );
                tracing::warn!(event = "xchanger_backoff", error = %e, failures = hold.failures(),
                    wait_ms = (until - now).as_millis() as u64, "xchanger cloud trouble; backing off");
            }
            // The cloud answered (even if with an error): it is not struggling.
            _ => hold.clear(),
        }
    }

    fn quiet_for(&self, vin: &str) -> Option<&QuietHours> {
        self.vehicle_quiet
            .get(&vin.to_ascii_uppercase())
            .or(self.quiet.as_ref())
    }

    fn held_until(&self) -> Option<Instant> {
        let hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        hold.until(Instant::now())
    }

    fn intervals(&self) -> Intervals {
        Intervals {
            idle: self.cfg.poll_interval,
            active: self.cfg.active_interval(),
        }
    }

    async fn report_error(&self, error: String) {
        let _ = self
            .updates
            .send(Update::Health {
                links: 0,
                error: Some(error),
            })
            .await;
    }
}

/// A vehicle of the account.
#[derive(Debug, Clone)]
struct Listed {
    vin: String,
    plate: Option<String>,
    series: Option<String>,
}

async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<CommandRequest>,
    shutdown: CancellationToken,
) {
    let mut counters_tick = tokio::time::interval(crate::connector::COUNTERS_EVERY);
    let mut report = crate::connector::CountersReport::default();
    // Until the vehicles are known, commands have nowhere to go.
    let mut attempt = 0u32;
    let vehicles = loop {
        let wait = match discover(&shared).await {
            Ok(v) => {
                if attempt > 0 {
                    let _ = shared.updates.send(Update::Recovered).await;
                }
                break v;
            }
            Err(e) => {
                attempt += 1;
                let reason = format!("cannot list the account's vehicles: {e}");
                tracing::warn!(event = "xchanger_discovery_failed", error = %e, attempt, "{reason}");
                shared.report_error(reason).await;
                match e {
                    ApiError::Refused(_) => REFUSED_BACKOFF,
                    _ => shared.held_until().map_or_else(
                        || jitter(poll_backoff(shared.cfg.active_interval(), attempt + 1)),
                        |u| u - Instant::now(),
                    ),
                }
            }
        };
        let deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                Some(req) = commands.recv() => {
                    let _ = req.progress.send(CommandProgress::Failed("xchanger is not logged in".into())).await;
                }
            }
        }
    };

    let mut routes = std::collections::HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, listed) in vehicles.into_iter().enumerate() {
        let Some(id) = VehicleId::for_upstream("", &listed.vin) else {
            continue;
        };
        let (tx, rx) = mpsc::channel(VEHICLE_QUEUE);
        routes.insert(id.clone(), tx);
        let _ = shared
            .updates
            .send(Update::Vehicle(info(&id, &listed)))
            .await;
        let with_plan = index == 0 && !shared.cfg.iccid.is_empty();
        tasks.spawn(vehicle_loop(
            shared.clone(),
            listed.vin,
            id,
            rx,
            shutdown.clone(),
            with_plan,
        ));
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(req) = commands.recv() => crate::connector::route_command(&routes, req).await,
            _ = counters_tick.tick() => report.report(shared.counters.snapshot(), &shared.updates).await,
            Some(_) = tasks.join_next() => {}
        }
    }
    tasks.shutdown().await;
}

/// A command the cloud accepted (or a refresh), waiting for a status that shows it done.
struct Pending {
    progress: mpsc::Sender<CommandProgress>,
    /// `updateTime` when the command was sent (a refresh: the press): the car must report
    /// after it.
    baseline: Option<i64>,
    expect: Option<(Field, crate::model::Value)>,
    /// A refresh: done by any report newer than the press, answered with its time.
    refresh: bool,
}

impl Pending {
    /// The car reported after the command, and (when the command shows in the state)
    /// the state is what it asked for.
    fn confirmed_by(&self, status: &status::Status) -> bool {
        let advanced = match (status.update_time, self.baseline) {
            (Some(now), Some(before)) => now > before,
            (Some(_), None) => true,
            _ => false,
        };
        advanced
            && self
                .expect
                .as_ref()
                .is_none_or(|(f, v)| status.state.get(*f) == Some(v))
    }
}

/// One car's schedule and command state.
struct Car {
    shared: Arc<Shared>,
    vin: String,
    id: VehicleId,
    /// The newest `updateTime` seen (ms).
    last_update: Option<i64>,
    engine_running: bool,
    pending: Option<Pending>,
    /// When it is read next; failed reads in a row.
    schedule: Schedule,
    status: ConnectionStatus,
    /// Its owner's polling settings.
    settings: Settings,
    /// The polling phase and next poll (whole seconds) last shown.
    shown_plan: Option<(crate::model::PollingPhase, Option<u64>)>,
}

async fn vehicle_loop(
    shared: Arc<Shared>,
    vin: String,
    id: VehicleId,
    mut commands: mpsc::Receiver<CommandRequest>,
    shutdown: CancellationToken,
    with_plan: bool,
) {
    let settings = shared.settings.get(&vin);
    let mut car = Car {
        shared,
        vin,
        id,
        last_update: None,
        engine_running: false,
        pending: None,
        schedule: Schedule::starting(Instant::now()),
        status: ConnectionStatus::default(),
        settings,
        shown_plan: None,
    };
    car.show_settings().await;
    let mut next_plan = Instant::now();
    loop {
        if car.pending.as_ref().is_some_and(|p| p.progress.is_closed()) {
            // The bridge gave up on it (its command_timeout): stop polling fast.
            car.pending = None;
        }
        let plan = car.plan(Instant::now());
        car.show_plan(&plan).await;
        // Polling off: no read until a command (or the switch) wakes the car's loop.
        let wait = async {
            match plan.wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(req) = commands.recv() => car.command(req).await,
            _ = wait => {
                // Plans change while a car sleeps (quiet hours begin, another car's read
                // holds the account back): read only if the plan still says now.
                if car.plan(Instant::now()).wait != Some(std::time::Duration::ZERO) {
                    continue;
                }
                car.poll().await;
                let cfg = &car.shared.cfg;
                if with_plan && Instant::now() >= next_plan && car.schedule.failures() == 0 {
                    next_plan = Instant::now() + cfg.data_plan_interval;
                    data_plan(&car.shared, &car.id).await;
                }
                car.give_up_refresh().await;
                car.plan_next();
            }
        }
    }
}

impl Car {
    /// The intervals in force: the owner's, else the config's.
    fn intervals(&self) -> Intervals {
        self.settings.intervals(self.shared.intervals())
    }

    /// Plans the read after one ran.
    fn plan_next(&mut self) {
        let next = if self.pending.is_some() {
            Next::Confirm
        } else if self.engine_running {
            Next::Active
        } else {
            Next::Idle
        };
        self.schedule.plan(next, self.intervals(), Instant::now());
    }

    /// When the next read is due and why: the schedule, the account's hold, the owner's
    /// settings and the quiet hours.
    fn plan(&self, now: Instant) -> Plan {
        let shared = &self.shared;
        let local = shared.tz.local_time(chrono::Utc::now());
        Plan::new(
            self.schedule.planned(),
            self.schedule.due().saturating_duration_since(now),
            shared
                .held_until()
                .map(|u| u.saturating_duration_since(now)),
            &self.settings,
            shared.quiet_for(&self.vin),
            local,
        )
    }

    /// Publishes the polling phase and the next poll when either changed.
    async fn show_plan(&mut self, plan: &Plan) {
        let now = chrono::Utc::now();
        let next = plan
            .wait
            .map(|w| (now.timestamp() as u64).saturating_add(w.as_secs()));
        let shown = Some((plan.phase, next));
        if self.shown_plan == shown {
            return;
        }
        self.shown_plan = shown;
        self.shared
            .updates
            .merge_state(self.id.clone(), plan.state(now))
            .await;
    }

    /// Publishes the owner's settings (the switch's and the numbers' state).
    async fn show_settings(&self) {
        let state = self.settings.state(self.shared.intervals());
        self.shared
            .updates
            .merge_state(self.id.clone(), state)
            .await;
    }

    /// A command: polling settings change here, a refresh reads now, the rest go to the
    /// cloud.
    async fn command(&mut self, req: CommandRequest) {
        match req.command {
            Command::Polling(_) | Command::PollInterval(_) | Command::PollIntervalActive(_) => {
                self.settings.apply(&req.command);
                self.shared.settings.set(&self.vin, self.settings);
                tracing::info!(event = "xchanger_polling_set", vehicle = %self.id, command = %req.command.name(), "polling changed by its owner");
                let _ = req.progress.send(CommandProgress::Succeeded).await;
                self.show_settings().await;
                if self.schedule.planned() != Next::Confirm {
                    // The next read follows the new setting from now.
                    self.plan_next();
                }
                return;
            }
            Command::Refresh => return self.refresh(req).await,
            _ => {}
        }
        self.supersede().await;
        self.pending = execute(&self.shared, &self.vin, req, self.last_update).await;
        if self.pending.is_some() {
            self.schedule.command_accepted(Instant::now());
        }
    }

    async fn supersede(&mut self) {
        if let Some(old) = self.pending.take() {
            let _ = old
                .progress
                .send(CommandProgress::Failed(
                    "superseded by a newer command".into(),
                ))
                .await;
        }
    }

    /// Refresh: refused while the account is held back (nothing is read); else wake the
    /// car for a fresh position (`refresh_wakeup`), read now, and confirm until a status
    /// newer than the press arrives (docs/protocols/xchanger.md, "Refresh").
    async fn refresh(&mut self, req: CommandRequest) {
        if let Some(until) = self.shared.held_until() {
            let secs = until.saturating_duration_since(Instant::now()).as_secs();
            let reason = format!(
                "the cloud is holding reads back for {secs} s more (rate limit or server error): nothing was read"
            );
            let _ = req.progress.send(CommandProgress::Refused(reason)).await;
            return;
        }
        self.supersede().await;
        if self.shared.cfg.refresh_wakeup {
            wake_for_position(&self.shared, &self.vin, &self.id).await;
        }
        let _ = req.progress.send(CommandProgress::Accepted).await;
        // Newer than the newest report seen, on the car's own clock (never the bridge's:
        // the two need not agree).
        self.pending = Some(Pending {
            progress: req.progress,
            baseline: self.last_update,
            expect: None,
            refresh: true,
        });
        self.schedule.read_now(Instant::now());
    }

    /// A refresh whose confirming reads all showed an older report fails.
    async fn give_up_refresh(&mut self) {
        let exhausted = self.schedule.confirm_reads() >= CONFIRM_AFTER.len();
        if !exhausted || !self.pending.as_ref().is_some_and(|p| p.refresh) {
            return;
        }
        if let Some(p) = self.pending.take() {
            let last = self
                .last_update
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map_or("never".into(), |t| {
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                });
            let reason = format!(
                "no report newer than the press after {} reads; the car last reported at {last}",
                CONFIRM_AFTER.len() + 1
            );
            let _ = p.progress.send(CommandProgress::Failed(reason)).await;
        }
    }

    /// One status poll: state, availability, connection status, and the pending
    /// command's confirmation.
    async fn poll(&mut self) {
        let shared = &self.shared;
        shared.counters.polls.fetch_add(1, Ordering::Relaxed);
        let status_text = match poll(shared, &self.vin).await {
            Ok(status) => {
                self.schedule.answered();
                if status.update_time.is_some() {
                    self.last_update = status.update_time.max(self.last_update);
                }
                if let Some(r) = status.engine_running {
                    self.engine_running = r;
                }
                let confirmed = self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.confirmed_by(&status));
                shared.updates.availability(self.id.clone(), true).await;
                shared
                    .updates
                    .merge_state(self.id.clone(), status.state)
                    .await;
                if confirmed {
                    if let Some(p) = self.pending.take() {
                        let answer = match (p.refresh, status.update_time) {
                            (true, Some(ms)) => CommandProgress::Fresh {
                                reported_at: chrono::DateTime::from_timestamp_millis(ms)
                                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                                    .unwrap_or_default(),
                            },
                            _ => CommandProgress::Succeeded,
                        };
                        let _ = p.progress.send(answer).await;
                    }
                }
                ConnectionStatus::OK.to_string()
            }
            Err(e) => {
                let offline = self.schedule.failed();
                shared.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e, ApiError::BadAnswer(_)) {
                    shared.counters.bad_answers.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(event = "xchanger_poll_failed", vehicle = %self.id, error = %e,
                    failures = self.schedule.failures(), "status poll failed");
                if offline || matches!(e, ApiError::Refused(_)) {
                    shared.updates.availability(self.id.clone(), false).await;
                }
                match &e {
                    ApiError::Refused(reason) => {
                        let text = format!("login refused: {reason}");
                        shared.report_error(text.clone()).await;
                        text
                    }
                    other => other.to_string(),
                }
            }
        };
        self.status
            .set(&shared.updates, &self.id, &status_text)
            .await;
    }
}

async fn poll(shared: &Shared, vin: &str) -> Result<status::Status, ApiError> {
    let doc = shared
        .call(|t| Request {
            host: Host::Data,
            method: Method::GET,
            path: shared.path(
                "/geelyTCAccess/tcservices/vehicle/status",
                "/remote-control/vehicle/status",
                vin,
            ),
            query: vec![
                ("latest", "false".into()),
                ("target", "basic,more".into()),
                ("userId", t.user_id.clone()),
            ],
            body: Body::None,
        })
        .await?;
    status::parse(&doc, shared.cfg.hide_untrusted_position)
        .map_err(|e| ApiError::BadAnswer(e.to_string()))
}

#[cfg(test)]
mod tests;
