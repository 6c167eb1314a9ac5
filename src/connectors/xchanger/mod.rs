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

    /// With `vins` set, those are the cars; else the account's list says (a roster).
    fn configured_vehicles(&self) -> Option<Vec<VehicleId>> {
        let vins = &self.config.vins;
        (!vins.is_empty()).then(|| {
            vins.iter()
                .filter_map(|v| VehicleId::for_upstream("", v))
                .collect()
        })
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            crate::connectors::warn_if_plain_http("xchanger", &self.config.base_url());
            let counters = Arc::new(Counters::default());
            let shared = Arc::new(Shared {
                api: Api::new(&self.config)?,
                auth: Auth::new(self.config.clone(), self.state_dir, counters.clone()),
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
                tracing::warn!(event = "xchanger_backoff", error = %e, failures = hold.failures(),
                    wait_ms = (until - now).as_millis() as u64, "xchanger cloud trouble; backing off");
            }
            // The cloud answered (even if with an error): it is not struggling.
            _ => hold.clear(),
        }
    }

    fn held_until(&self) -> Option<Instant> {
        let hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        hold.until(Instant::now())
    }

    /// When a read planned for `due` may run (the account may be held).
    fn due(&self, due: Instant) -> Instant {
        let hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        hold.due(due, Instant::now())
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

/// A command the cloud accepted, waiting for a status that shows it done.
struct Pending {
    progress: mpsc::Sender<CommandProgress>,
    /// `updateTime` when the command was sent: the car must report after it.
    baseline: Option<i64>,
    expect: Option<(Field, crate::model::Value)>,
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
}

async fn vehicle_loop(
    shared: Arc<Shared>,
    vin: String,
    id: VehicleId,
    mut commands: mpsc::Receiver<CommandRequest>,
    shutdown: CancellationToken,
    with_plan: bool,
) {
    let mut car = Car {
        shared,
        vin,
        id,
        last_update: None,
        engine_running: false,
        pending: None,
        schedule: Schedule::starting(Instant::now()),
        status: ConnectionStatus::default(),
    };
    let mut next_plan = Instant::now();
    loop {
        if car.pending.as_ref().is_some_and(|p| p.progress.is_closed()) {
            // The bridge gave up on it (its command_timeout): stop polling fast.
            car.pending = None;
        }
        let due = car.shared.due(car.schedule.due());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(req) = commands.recv() => {
                if car.command(req).await {
                    car.schedule.command_accepted(Instant::now());
                }
            }
            _ = tokio::time::sleep_until(due) => {
                car.poll().await;
                let cfg = &car.shared.cfg;
                if with_plan && Instant::now() >= next_plan && car.schedule.failures() == 0 {
                    next_plan = Instant::now() + cfg.data_plan_interval;
                    data_plan(&car.shared, &car.id).await;
                }
                let next = if car.pending.is_some() {
                    Next::Confirm
                } else if car.engine_running {
                    Next::Active
                } else {
                    Next::Idle
                };
                car.schedule.plan(next, car.shared.intervals(), Instant::now());
            }
        }
    }
}

impl Car {
    /// Sends a command; `true` when the cloud accepted it and a status must confirm it.
    async fn command(&mut self, req: CommandRequest) -> bool {
        if let Some(old) = self.pending.take() {
            let _ = old
                .progress
                .send(CommandProgress::Failed(
                    "superseded by a newer command".into(),
                ))
                .await;
        }
        self.pending = execute(&self.shared, &self.vin, req, self.last_update).await;
        self.pending.is_some()
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
                        let _ = p.progress.send(CommandProgress::Succeeded).await;
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
