//! xchanger connector (Lynk & Co / Geely cloud): logs in, lists the account's vehicles,
//! polls each one's status (adaptive, jittered, backing off when the cloud struggles),
//! sends RDL/RDU/RES/RHL and confirms them by the next status whose `updateTime` has
//! advanced, and reads the SIM's data plan.
//!
//! `auth` owns the tokens, `api` one HTTP call; this file owns the schedule.

mod api;
mod auth;
mod config;
#[cfg(feature = "simulators")]
pub mod sim;

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

use crate::connector::{
    CommandRequest, ConnectionStatus, Connector, ConnectorContext, ConnectorFuture, Update,
    UpdateSink,
};
use crate::connectors::{jitter, poll_backoff, OFFLINE_AFTER};
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

/// When to re-read after the cloud accepted a command, whatever the polling intervals:
/// a car reports within seconds (an unlock showed at +1.5 s), so confirmation starts
/// soon and backs off; the last step repeats until the bridge's `command_timeout`. About
/// seven reads a minute for one car, and the account-wide hold still applies.
pub const CONFIRM_AFTER: [std::time::Duration; 6] = [
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(3),
    std::time::Duration::from_secs(5),
    std::time::Duration::from_secs(8),
    std::time::Duration::from_secs(13),
    std::time::Duration::from_secs(15),
];

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
        (!vins.is_empty()).then(|| vins.iter().filter_map(|v| VehicleId::new(v)).collect())
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

/// Cloud-wide backoff: a 429 or 5xx for one vehicle slows every request of the account.
#[derive(Default)]
struct Hold {
    failures: u32,
    until: Option<Instant>,
}

struct Shared {
    cfg: XchangerConfig,
    api: Api,
    auth: Auth,
    updates: UpdateSink,
    counters: Arc<Counters>,
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
                hold.failures = hold.failures.saturating_add(1);
                let mut delay = poll_backoff(self.cfg.active_interval(), hold.failures);
                if let ApiError::RateLimited {
                    retry_after: Some(at_least),
                } = e
                {
                    delay = delay.max(*at_least);
                }
                let until = Instant::now() + jitter(delay);
                tracing::warn!(event = "xchanger_backoff", error = %e, failures = hold.failures,
                    wait_ms = (until - Instant::now()).as_millis() as u64, "xchanger cloud trouble; backing off");
                hold.until = Some(until);
            }
            // The cloud answered (even if with an error): it is not struggling.
            _ => {
                hold.failures = 0;
                hold.until = None;
            }
        }
    }

    fn held_until(&self) -> Option<Instant> {
        let hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        hold.until.filter(|u| *u > Instant::now())
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
        let Some(id) = VehicleId::new(&listed.vin) else {
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
            Some(req) = commands.recv() => crate::connector::dispatch(&routes, req).await,
            _ = counters_tick.tick() => report.report(shared.counters.snapshot(), &shared.updates).await,
            Some(_) = tasks.join_next() => {}
        }
    }
    tasks.shutdown().await;
}

async fn discover(shared: &Shared) -> Result<Vec<Listed>, ApiError> {
    let answer = shared
        .call(|t| Request {
            host: Host::Auth,
            method: Method::GET,
            path: "/device_platform/user/vehicle".into(),
            query: vec![("id", t.user_id.clone())],
            body: Body::None,
        })
        .await;
    let listed = match answer {
        Ok(doc) => parse_vehicle_list(&doc)?,
        // Configured VINs can be polled without the list (names are then unknown).
        Err(e) if !shared.cfg.vins.is_empty() && !matches!(e, ApiError::Refused(_)) => {
            tracing::warn!(event = "xchanger_vehicle_list_failed", error = %e, "using the configured VINs without the vehicle list");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    if shared.cfg.vins.is_empty() {
        if listed.is_empty() {
            tracing::warn!(
                event = "xchanger_no_vehicles",
                "the account has no vehicles"
            );
        }
        return Ok(listed);
    }
    Ok(shared
        .cfg
        .vins
        .iter()
        .map(|vin| {
            listed
                .iter()
                .find(|l| l.vin.eq_ignore_ascii_case(vin))
                .cloned()
                .unwrap_or(Listed {
                    vin: vin.clone(),
                    plate: None,
                    series: None,
                })
        })
        .collect())
}

/// `list[]{vin, plateNo, seriesName}`, at the top, under `data` or as `data` itself.
fn parse_vehicle_list(doc: &Value) -> Result<Vec<Listed>, ApiError> {
    let list = doc
        .get("list")
        .or_else(|| data(doc).get("list"))
        .or_else(|| Some(data(doc)).filter(|d| d.is_array()))
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadAnswer("vehicle list without `list`".into()))?;
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(list
        .iter()
        .filter_map(|v| {
            let vin = text(v, "vin").filter(|vin| config::valid_vin(vin))?;
            Some(Listed {
                vin,
                plate: text(v, "plateNo"),
                series: text(v, "seriesName"),
            })
        })
        .collect())
}

fn info(id: &VehicleId, listed: &Listed) -> VehicleInfo {
    let tail = &listed.vin[listed.vin.len().saturating_sub(6)..];
    VehicleInfo {
        id: id.clone(),
        name: listed
            .plate
            .clone()
            .or_else(|| listed.series.as_ref().map(|s| format!("Lynk & Co {s}")))
            .unwrap_or_else(|| format!("Lynk & Co {tail}")),
        manufacturer: "Lynk & Co".into(),
        model: listed.series.clone().unwrap_or_else(|| "Vehicle".into()),
        sw_version: None,
        custom_name: false,
        serial_number: Some(listed.vin.clone()),
        capabilities: vec![
            Capability::Lock,
            Capability::Engine,
            Capability::HornAndLights,
            Capability::FlashLights,
            Capability::Horn,
        ],
        event_types: Vec::new(),
    }
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
    /// Reads made to confirm `pending` (indexes `CONFIRM_AFTER`).
    confirm_reads: usize,
    failures: u32,
    status: ConnectionStatus,
}

impl Car {
    /// When the next confirmation read is due.
    fn confirm_delay(&mut self) -> std::time::Duration {
        let d = CONFIRM_AFTER[self.confirm_reads.min(CONFIRM_AFTER.len() - 1)];
        self.confirm_reads += 1;
        d
    }
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
        confirm_reads: 0,
        failures: 0,
        status: ConnectionStatus::default(),
    };
    let mut next_poll = Instant::now();
    let mut next_plan = Instant::now();
    loop {
        if car.pending.as_ref().is_some_and(|p| p.progress.is_closed()) {
            // The bridge gave up on it (its command_timeout): stop polling fast.
            car.pending = None;
        }
        let due = next_poll.max(car.shared.held_until().unwrap_or(next_poll));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(req) = commands.recv() => {
                if car.command(req).await {
                    car.confirm_reads = 0;
                    next_poll = Instant::now() + car.confirm_delay();
                }
            }
            _ = tokio::time::sleep_until(due) => {
                car.poll().await;
                let cfg = &car.shared.cfg;
                if with_plan && Instant::now() >= next_plan && car.failures == 0 {
                    next_plan = Instant::now() + cfg.data_plan_interval;
                    data_plan(&car.shared, &car.id).await;
                }
                next_poll = if car.pending.is_some() {
                    Instant::now() + car.confirm_delay()
                } else {
                    let interval = if car.engine_running { cfg.active_interval() } else { cfg.poll_interval };
                    Instant::now() + jitter(interval)
                };
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
                self.failures = 0;
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
                self.failures += 1;
                shared.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e, ApiError::BadAnswer(_)) {
                    shared.counters.bad_answers.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(event = "xchanger_poll_failed", vehicle = %self.id, error = %e,
                    failures = self.failures, "status poll failed");
                if self.failures >= OFFLINE_AFTER || matches!(e, ApiError::Refused(_)) {
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

/// What a command becomes on the cloud, and the state that proves it done.
#[derive(Debug, PartialEq)]
struct Telematics {
    service: &'static str,
    /// `start`, or `stop` for RES.
    command: &'static str,
    params: Vec<(&'static str, String)>,
    /// `None`: nothing in the status shows it (horn, lights): the cloud's acknowledgement
    /// is all there is, and the result says so.
    expect: Option<(Field, crate::model::Value)>,
}

fn telematics(cmd: &Command, unlock_window_min: u32) -> Option<Telematics> {
    let t = |service, command, params, expect| {
        Some(Telematics {
            service,
            command,
            params,
            expect,
        })
    };
    let lock = |s: &str| Some((Field::Lock, crate::model::Value::from(s)));
    let engine = |on: bool| Some((Field::EngineRunning, crate::model::Value::from(on)));
    let rhl = |v: &str| vec![("rhl", v.to_string())];
    match cmd {
        Command::Lock => t("RDL", "start", vec![], lock(lock_state::LOCKED)),
        Command::Unlock => t(
            "RDU",
            "start",
            vec![("time.window", unlock_window_min.to_string())],
            lock(lock_state::UNLOCKED),
        ),
        Command::EngineStart => t("RES", "start", vec![], engine(true)),
        Command::EngineStop => t("RES", "stop", vec![], engine(false)),
        Command::HornAndLights => t("RHL", "start", rhl("horn-light-flash"), None),
        Command::FlashLights => t("RHL", "start", rhl("light-flash"), None),
        Command::Horn => t("RHL", "start", rhl("horn-flash"), None),
        _ => None,
    }
}

/// The telematics body (seed 000), exactly as the app sends it.
pub fn telematics_body(
    service_id: &str,
    command: &str,
    params: &[(&str, String)],
    user_id: &str,
    timestamp_ms: i64,
) -> Value {
    json!({
        "command": command,
        "creator": "tc",
        "operationScheduling": {"duration": 0, "interval": 0, "occurs": 1, "recurrentOperation": false},
        "serviceId": service_id,
        "serviceParameters": params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        "timestamp": timestamp_ms,
        "userId": user_id,
    })
}

/// Sends one command; `Some` when the cloud accepted it and a status must confirm it.
async fn execute(
    shared: &Shared,
    vin: &str,
    req: CommandRequest,
    last_update: Option<i64>,
) -> Option<Pending> {
    let Some(Telematics {
        service,
        command,
        params,
        expect,
    }) = telematics(&req.command, shared.cfg.unlock_window_min)
    else {
        let _ = req
            .progress
            .send(CommandProgress::Failed("not supported by xchanger".into()))
            .await;
        return None;
    };
    shared
        .counters
        .commands_sent
        .fetch_add(1, Ordering::Relaxed);
    let result = shared
        .call(|t| Request {
            host: Host::Data,
            method: Method::PUT,
            path: shared.path(
                "/geelyTCAccess/tcservices/vehicle/telematics",
                "/remote-control/vehicle/telematics",
                vin,
            ),
            query: vec![],
            body: Body::Json(telematics_body(
                service,
                command,
                &params,
                &t.user_id,
                chrono::Utc::now().timestamp_millis(),
            )),
        })
        .await;
    match result {
        Ok(_) if expect.is_none() => {
            tracing::info!(event = "xchanger_command_accepted", vehicle = %req.vehicle, command = %req.command.name(), service, "command accepted by the cloud");
            let _ = req
                .progress
                .send(CommandProgress::SucceededBecause(
                    "the cloud acknowledged it; horn and lights leave nothing in the car's status to confirm".into(),
                ))
                .await;
            None
        }
        Ok(_) => {
            tracing::info!(event = "xchanger_command_accepted", vehicle = %req.vehicle, command = %req.command.name(), service, "command accepted by the cloud");
            let _ = req.progress.send(CommandProgress::Accepted).await;
            Some(Pending {
                progress: req.progress,
                baseline: last_update,
                expect,
            })
        }
        Err(e) => {
            shared
                .counters
                .commands_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = "xchanger_command_failed", vehicle = %req.vehicle, command = %req.command.name(), error = %e, "command refused");
            let _ = req
                .progress
                .send(CommandProgress::Failed(e.to_string()))
                .await;
            None
        }
    }
}

/// `flowinfo`: KiB (or bytes, as configured) → MiB, the basic package's end as the
/// plan's expiry.
pub fn data_plan_state(doc: &Value, unit: DataUnit) -> VehicleState {
    let d = if doc.get("sum").is_some() {
        doc
    } else {
        data(doc)
    };
    let mut st = VehicleState::default();
    let per_mib = match unit {
        DataUnit::Kib => 1024.0,
        DataUnit::Bytes => 1_048_576.0,
    };
    let mib = |k: &str| crate::protocol::json::number(d.get(k)).map(|v| v / per_mib);
    for (key, field) in [
        ("used", Field::DataUsed),
        ("left", Field::DataLeft),
        ("sum", Field::DataTotal),
    ] {
        if let Some(v) = mib(key) {
            st.set_f64(field, v);
        }
    }
    if let Some(t) = d
        .get("basic_package")
        .and_then(|b| b.get("limit_time"))
        .and_then(Value::as_i64)
        .and_then(chrono::DateTime::from_timestamp_millis)
    {
        st.set(
            Field::DataExpiry,
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    st
}

async fn data_plan(shared: &Shared, id: &VehicleId) {
    let iccid = shared.cfg.iccid.clone();
    let result = shared
        .call(|_| Request {
            host: Host::Auth,
            method: Method::GET,
            path: "/api/v1/flowinfo".into(),
            query: vec![("type", "iccid".into()), ("iccid", iccid.clone())],
            body: Body::None,
        })
        .await;
    match result {
        Ok(doc) => {
            let st = data_plan_state(&doc, shared.cfg.data_plan_unit);
            if st.values.is_empty() {
                shared.counters.bad_answers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = "xchanger_data_plan_malformed",
                    "flowinfo answer without sum/left/used"
                );
            } else {
                shared.updates.merge_state(id.clone(), st).await;
            }
        }
        Err(e) => {
            tracing::warn!(event = "xchanger_data_plan_failed", error = %e, "could not read the data plan")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicle_lists_in_every_shape() {
        let a = json!({"list": [{"vin": "L6T7722E0LN000001", "plateNo": "浙A12345", "seriesName": "01"}]});
        let b = json!({"code": "1000", "data": {"list": [{"vin": "L6T7722E0LN000001"}, {"vin": "../bad"}]}});
        let c = json!({"data": [{"vin": "L6T7722E0LN000001"}]});
        assert_eq!(
            parse_vehicle_list(&a).unwrap()[0].plate.as_deref(),
            Some("浙A12345")
        );
        assert_eq!(
            parse_vehicle_list(&b).unwrap().len(),
            1,
            "bad VINs are skipped"
        );
        assert_eq!(parse_vehicle_list(&c).unwrap().len(), 1);
        assert!(parse_vehicle_list(&json!({"code": "1000"})).is_err());
    }

    #[test]
    fn data_plan_from_the_seed_sample() {
        let doc = json!({"sum": 3145728, "left": 3074339, "used": 71389,
            "basic_package": {"limit_time": 1688537344000i64}});
        // KiB: 3 145 728 KiB is a 3 GiB plan (PROTOCOLS.md §5).
        let st = data_plan_state(&doc, DataUnit::Kib);
        assert_eq!(
            st.get(Field::DataTotal),
            Some(&crate::model::Value::Int(3072))
        );
        assert_eq!(
            st.get(Field::DataUsed),
            Some(&crate::model::Value::Float(69.716))
        );
        let bytes = data_plan_state(&doc, DataUnit::Bytes);
        assert_eq!(
            bytes.get(Field::DataTotal),
            Some(&crate::model::Value::Int(3))
        );
        assert_eq!(
            st.get(Field::DataExpiry),
            Some(&crate::model::Value::from("2023-07-05T06:09:04Z"))
        );
    }

    #[test]
    fn commands_map_to_services() {
        let unlock = telematics(&Command::Unlock, 3).unwrap();
        assert_eq!((unlock.service, unlock.command), ("RDU", "start"));
        assert_eq!(unlock.params, vec![("time.window", "3".to_string())]);
        assert_eq!(unlock.expect, Some((Field::Lock, "UNLOCKED".into())));
        assert_eq!(telematics(&Command::EngineStop, 1).unwrap().command, "stop");
        assert_eq!(
            telematics(&Command::FlashLights, 1).unwrap().params,
            vec![("rhl", "light-flash".to_string())]
        );
        assert!(telematics(&Command::OpenSeat, 1).is_none());
        let body = telematics_body("RDL", "start", &[], "1231609", 1_676_625_476_579);
        assert_eq!(body["serviceParameters"], json!([]));
        assert_eq!(body["operationScheduling"]["occurs"], 1);
    }
}
