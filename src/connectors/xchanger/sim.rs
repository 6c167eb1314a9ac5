//! A fake xchanger cloud over real HTTP, for the tests and `vehicle2mqtt simulate
//! xchanger`. It serves the forum thread's status sample as it is (both position blocks
//! untrusted: docs/protocols/xchanger.md, "The status sample"), checks the v2 signature
//! (and refuses a reused nonce), checks the `authorization` header, expires tokens on
//! demand, rotates refresh tokens, fails on demand (HTTP status, bad JSON, error codes),
//! and changes the vehicle's state a moment after a command (1.5 s by default: what an
//! unlock took on a real car, issue #15).
//!
//! The login answers at the top level with `resultCode` / `resultMessage` and the tokens
//! (fineemb/Lynk-Co `__init__.py` `_login_lynkco` reads `resultMessage` and `accessToken`
//! from the answer itself); a refused password is `resultCode` 1501. Every other answer
//! wraps its payload as `{code, message, data, success}` (docs/protocols/xchanger.md,
//! "Vehicle status").

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::protocol::xchanger::sign;

/// The forum thread's full status sample, placeholders filled in
/// (docs/protocols/xchanger.md, "The status sample").
pub const STATUS_SAMPLE: &str = include_str!("data/xchanger_status.json");

#[derive(Debug, Clone)]
pub struct FakeVehicle {
    pub vin: String,
    pub plate: String,
    pub series: String,
}

#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// `Some`: v2, every request must carry a valid signature made with this key.
    pub app_key: Option<String>,
    pub username: String,
    pub password: String,
    pub auth_code: String,
    pub user_id: String,
    pub vehicles: Vec<FakeVehicle>,
    /// Seconds announced in `expiresIn`.
    pub token_ttl_s: i64,
    /// How long after an accepted command the car reports its new state.
    pub command_delay: Duration,
    /// Serve the status sample's position blocks trusted (the sample has both untrusted).
    pub trusted_position: bool,
    /// Answer expired tokens with HTTP 401 instead of code 1402.
    pub expired_as_401: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            app_key: None,
            username: "driver@example.com".into(),
            password: "correct horse".into(),
            auth_code: "742464028621668352".into(),
            user_id: "1231609".into(),
            vehicles: vec![FakeVehicle {
                vin: "L6T7722E0LN000001".into(),
                plate: "浙A12345".into(),
                series: "01".into(),
            }],
            token_ttl_s: 7200,
            command_delay: Duration::from_millis(1500),
            trusted_position: false,
            expired_as_401: false,
        }
    }
}

/// What the cloud was asked, for the tests to check.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    pub logins: u32,
    pub code_exchanges: u32,
    pub refreshes: u32,
    pub vehicle_lists: u32,
    pub flowinfo: u32,
    /// When each status request arrived (since the fake started), ms.
    pub status_at_ms: Vec<u64>,
    pub commands: Vec<Value>,
    pub bad_signatures: u32,
    pub unauthorised: u32,
    /// Headers of the last status request, lower-cased names.
    pub last_status_headers: Vec<(String, String)>,
}

/// A failure served instead of the next status answer.
#[derive(Debug, Clone)]
pub enum Fail {
    Http(u16),
    BadJson,
    Code(&'static str),
}

struct Inner {
    opts: FakeOptions,
    /// Valid access tokens → whether they have been expired.
    access: HashMap<String, bool>,
    refresh: Option<String>,
    status: HashMap<String, Value>,
    fails: VecDeque<Fail>,
    command_code: Option<&'static str>,
    apply_commands: bool,
    nonces: HashSet<String>,
    calls: Calls,
    serial: u64,
}

pub struct FakeXchanger {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
}

impl Drop for FakeXchanger {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl FakeXchanger {
    pub async fn start(opts: FakeOptions, listen: SocketAddr) -> anyhow::Result<FakeXchanger> {
        let sample: Value = serde_json::from_str(STATUS_SAMPLE)?;
        let mut status = HashMap::new();
        for v in &opts.vehicles {
            let mut doc = sample.clone();
            doc["data"]["result"]["vin"] = json!(v.vin);
            // The captured sample dates from 2020; the simulated car has just reported.
            doc["data"]["vehicleStatus"]["updateTime"] =
                json!(chrono::Utc::now().timestamp_millis());
            if opts.trusted_position {
                for block in ["position", "extPosition"] {
                    doc["data"]["vehicleStatus"]["basicVehicleStatus"][block]["posCanBeTrusted"] =
                        json!(true);
                }
            }
            status.insert(v.vin.clone(), doc);
        }
        let inner = Arc::new(Mutex::new(Inner {
            opts,
            access: HashMap::new(),
            refresh: None,
            status,
            fails: VecDeque::new(),
            command_code: None,
            apply_commands: true,
            nonces: HashSet::new(),
            calls: Calls::default(),
            serial: 0,
        }));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let state = inner.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { handle(&state, started, method, uri, headers, body).await }
            },
        );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(FakeXchanger {
            addr,
            inner,
            shutdown,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn calls(&self) -> Calls {
        self.with(|i| i.calls.clone())
    }

    /// The next status answers are these failures, in order.
    pub fn fail_next(&self, fails: impl IntoIterator<Item = Fail>) {
        self.with(|i| i.fails.extend(fails));
    }

    /// Every access token issued so far now answers "expired".
    pub fn expire_tokens(&self) {
        self.with(|i| i.access.values_mut().for_each(|e| *e = true));
    }

    /// Issues a pair as if the app had logged in (for the token-config path).
    pub fn issue_tokens(&self) -> (String, String) {
        self.with(|i| {
            let t = i.issue();
            (
                t["accessToken"].as_str().unwrap_or_default().to_string(),
                t["refreshToken"].as_str().unwrap_or_default().to_string(),
            )
        })
    }

    /// Commands are answered with this error code (None: accepted).
    pub fn refuse_commands(&self, code: Option<&'static str>) {
        self.with(|i| i.command_code = code);
    }

    /// Accepted commands change the car's state (default) or never do.
    pub fn apply_commands(&self, apply: bool) {
        self.with(|i| i.apply_commands = apply);
    }

    /// Edits a vehicle's status document (`data.vehicleStatus`) and advances `updateTime`.
    pub fn edit_status(&self, vin: &str, f: impl FnOnce(&mut Value)) {
        self.with(|i| {
            if let Some(doc) = i.status.get_mut(vin) {
                f(&mut doc["data"]["vehicleStatus"]);
                doc["data"]["vehicleStatus"]["updateTime"] =
                    json!(chrono::Utc::now().timestamp_millis());
            }
        });
    }
}

impl Inner {
    fn issue(&mut self) -> Value {
        self.serial += 1;
        let access = format!(
            "eyJhbGciOiJIUzI1NiJ9.fake{}.{}",
            self.serial,
            hex::encode(rand::random::<[u8; 8]>())
        );
        let refresh = format!(
            "rt{}-{}=",
            self.serial,
            hex::encode(rand::random::<[u8; 8]>())
        );
        self.access.insert(access.clone(), false);
        self.refresh = Some(refresh.clone());
        json!({"expiresIn": self.opts.token_ttl_s, "deviceType": "mobile", "accessToken": access,
            "refreshToken": refresh, "userId": self.opts.user_id, "resultCode": "0", "resultMessage": "Success"})
    }
}

fn ok(data: Value) -> Response {
    Json(json!({"code": "1000", "message": null, "data": data, "success": true}))
}

fn code(code: &str, message: &str) -> Response {
    Json(json!({"code": code, "message": message, "data": null, "success": false}))
}

#[allow(non_snake_case)]
fn Json(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .to_string()
            };
            (decode(k), decode(v))
        })
        .collect()
}

async fn handle(
    state: &Arc<Mutex<Inner>>,
    started: tokio::time::Instant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
    let inner = &mut *guard;

    if let Some(key) = inner.opts.app_key.clone() {
        let nonce = header(&headers, "x-api-signature-nonce").to_string();
        let ts: u64 = header(&headers, "x-timestamp").parse().unwrap_or(0);
        let skew = (chrono::Utc::now().timestamp_millis() - ts as i64).abs();
        let expected = sign::signature(&sign::SignInput {
            app_key: key.as_bytes(),
            nonce: &nonce,
            timestamp_ms: ts,
            method: method.as_str(),
            path: &path,
            query: &query,
            body: &body,
        });
        let good = header(&headers, "x-signature") == expected
            && header(&headers, "x-api-signature-version") == "1.0"
            && header(&headers, "accept") == sign::ACCEPT
            && skew < 300_000;
        if !good || nonce.is_empty() {
            inner.calls.bad_signatures += 1;
            return (StatusCode::FORBIDDEN, "signature mismatch").into_response();
        }
        if !inner.nonces.insert(nonce) {
            return code("1443", "nonce used before");
        }
    }

    // Token-less endpoints.
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/user/login") => {
            inner.calls.logins += 1;
            let f = form(&body);
            let want = hex::encode(Md5::digest(inner.opts.password.as_bytes()));
            if f.get("username") == Some(&inner.opts.username) && f.get("password") == Some(&want) {
                return Json(inner.issue());
            }
            return Json(
                json!({"resultCode": "1501", "resultMessage": "wrong username or password"}),
            );
        }
        ("POST", "/auth/account/token") => {
            inner.calls.code_exchanges += 1;
            let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if query != "identity_type=lid"
                || doc["authCode"] != json!(inner.opts.auth_code)
                || doc["redirectUri"].as_str().is_none()
            {
                return code("1501", "invalid auth code");
            }
            return ok(inner.issue());
        }
        _ => {}
    }

    // Everything else needs the authorization header (raw token, no "Bearer").
    let token = header(&headers, "authorization").to_string();
    match inner.access.get(&token) {
        None => {
            inner.calls.unauthorised += 1;
            return code("1501", "main token invalid");
        }
        Some(true) if !(method == Method::PUT && path == "/auth/account/token") => {
            inner.calls.unauthorised += 1;
            if inner.opts.expired_as_401 {
                return (StatusCode::UNAUTHORIZED, "token expired").into_response();
            }
            return code("1402", "token expired");
        }
        Some(_) => {}
    }

    if method == Method::PUT && path == "/auth/account/token" {
        inner.calls.refreshes += 1;
        let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if doc["refreshToken"].as_str().is_none()
            || doc["refreshToken"].as_str() != inner.refresh.as_deref()
        {
            return code("1501", "refresh token invalid");
        }
        // The old access token dies with the rotation.
        inner.access.remove(&token);
        return ok(inner.issue());
    }

    let user_ok =
        |q: &str, key: &str, want: &str| q.split('&').any(|kv| kv == format!("{key}={want}"));
    if method == Method::GET && path == "/device_platform/user/vehicle" {
        inner.calls.vehicle_lists += 1;
        if !user_ok(&query, "id", &inner.opts.user_id) {
            return code("8160", "no permission");
        }
        let list: Vec<Value> = inner
            .opts
            .vehicles
            .iter()
            .map(|v| json!({"vin": v.vin, "plateNo": v.plate, "seriesName": v.series}))
            .collect();
        return ok(json!({"list": list}));
    }
    if method == Method::GET && path == "/api/v1/flowinfo" {
        inner.calls.flowinfo += 1;
        return Json(json!({"sum": 3145728, "left": 3074339, "used": 71389,
            "basic_package": {"auth_time": 1530770944000i64, "start_time": 1530770944000i64, "limit_time": 1688537344000i64, "available_days": 1058},
            "timestamp": 1597070724}));
    }

    let vin_of = |prefixes: &[&str]| {
        prefixes
            .iter()
            .find_map(|p| path.strip_prefix(p))
            .map(str::to_string)
    };
    let v1 = inner.opts.app_key.is_none();
    let (status_prefix, control_prefix) = if v1 {
        (
            "/geelyTCAccess/tcservices/vehicle/status/",
            "/geelyTCAccess/tcservices/vehicle/telematics/",
        )
    } else {
        (
            "/remote-control/vehicle/status/",
            "/remote-control/vehicle/telematics/",
        )
    };
    if method == Method::GET {
        if let Some(vin) = vin_of(&[status_prefix]) {
            inner
                .calls
                .status_at_ms
                .push(started.elapsed().as_millis() as u64);
            inner.calls.last_status_headers = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            if !user_ok(&query, "userId", &inner.opts.user_id)
                || !query.contains("target=basic%2Cmore")
            {
                return code("8160", "no permission");
            }
            if let Some(fail) = inner.fails.pop_front() {
                return match fail {
                    Fail::Http(s) => (
                        StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                        "try later",
                    )
                        .into_response(),
                    Fail::BadJson => {
                        (StatusCode::OK, "{\"code\":\"1000\",\"data\":{\"vehicleSt").into_response()
                    }
                    Fail::Code(c) => code(c, "refused"),
                };
            }
            return match inner.status.get(&vin) {
                Some(doc) => Json(doc.clone()),
                None => code("8040", "vehicle not bound"),
            };
        }
    }
    if method == Method::PUT {
        if let Some(vin) = vin_of(&[control_prefix]) {
            let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            inner.calls.commands.push(doc.clone());
            if !inner.status.contains_key(&vin) {
                return code("8040", "vehicle not bound");
            }
            if doc["userId"] != json!(inner.opts.user_id) || doc["creator"] != "tc" {
                return code("8160", "no permission");
            }
            if let Some(c) = inner.command_code {
                return code(c, "refused");
            }
            if inner.apply_commands {
                let change = command_effect(&doc);
                let delay = inner.opts.command_delay;
                let state = state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut inner = state.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(doc) = inner.status.get_mut(&vin) {
                        let vs = &mut doc["data"]["vehicleStatus"];
                        change(vs);
                        vs["updateTime"] = json!(chrono::Utc::now().timestamp_millis());
                    }
                });
            }
            return ok(
                json!({"vin": path.rsplit('/').next(), "sessionId": format!("{:032x}", rand::random::<u128>())}),
            );
        }
    }
    (StatusCode::NOT_FOUND, "no such endpoint").into_response()
}

/// What a telematics command does to the car's status document.
fn command_effect(cmd: &Value) -> Box<dyn FnOnce(&mut Value) + Send> {
    let service = cmd["serviceId"].as_str().unwrap_or("").to_string();
    let start = cmd["command"] == "start";
    Box::new(move |vs: &mut Value| {
        let safety = &mut vs["additionalVehicleStatus"]["drivingSafetyStatus"];
        match service.as_str() {
            "RDL" | "RDU" => {
                let locked = if service == "RDL" { 1 } else { 0 };
                for k in [
                    "doorLockStatusDriver",
                    "doorLockStatusPassenger",
                    "doorLockStatusDriverRear",
                    "doorLockStatusPassengerRear",
                ] {
                    safety[k] = json!(locked);
                }
            }
            // A position wake-up: the car uploads a fresh report, nothing else changes
            // (YossiKon/geely-connect `api.py` l.1050-1068, `request_position_refresh`:
            // "wake the car and request a fresh GPS upload"; docs/protocols/xchanger.md,
            // "Refresh"). The `updateTime` advance below is that upload.
            "PAI" => {}
            "RES" => {
                vs["basicVehicleStatus"]["engineStatus"] = json!(if start {
                    "ENGINE_RUNNING"
                } else {
                    "ENGINE_OFF"
                });
            }
            _ => {}
        }
    })
}
