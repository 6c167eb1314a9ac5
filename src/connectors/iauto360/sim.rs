//! A fake iauto360 (车智汇) open platform over real HTTP, for the tests and `vehicle2mqtt
//! simulate iauto360-platform`. It checks each call's signature and `time`, answers every
//! service the bridge uses with data shaped by the service document's field tables
//! (docs/protocols/iauto360.md), fails on demand, and pushes signed vehicle events
//! (including the outcome of a 5001 lock / unlock).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::geo::wgs84_to_gcj02;
use crate::protocol::iauto360 as proto;

/// Where the fake cars stand (WGS-84; served in GCJ-02): Guangzhou Tower.
pub const HOME: (f64, f64) = (23.1064, 113.3245);

#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub open_id: String,
    pub secure_code: String,
    pub devices: Vec<String>,
    /// Where events are pushed (the bridge's `push_listen` + `push_path`).
    pub push_url: Option<String>,
    /// How long after a 5001 the car's outcome is pushed.
    pub command_delay: Duration,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            open_id: "OPEN123".into(),
            secure_code: "SECRETcode".into(),
            devices: vec!["865432100012345".into()],
            push_url: None,
            command_delay: Duration::from_millis(300),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Fail {
    Http(u16),
    /// `flag 0` with this `err`.
    Refuse(&'static str),
    BadJson,
}

#[derive(Debug, Clone, Default)]
pub struct Calls {
    pub by_service: BTreeMap<u16, u32>,
    pub bad_signatures: u32,
    pub stale_time: u32,
    pub commands: Vec<Value>,
    pub pushes: Vec<u16>,
    /// 1011 calls per esn, answered or failed on demand (what a refresh or a schedule
    /// costs: each call is billed, `open_data_service_request.md` l.5-6).
    pub reads: BTreeMap<String, u32>,
}

struct Car {
    driving: bool,
    locked: bool,
    trips: Vec<Value>,
    /// 1001 `activeTime`: the box's last upload, unix s ("最后数据时间", seed
    /// 002_613f1e6a4516259b.txt l.127; iauto360/open-api `open_data_services.md` l.543).
    /// 1011 serves that upload ("最后上传坐标", seed l.244; `open_data_services.md` l.580):
    /// no call asks the box for a new one, so it only changes when the box uploads.
    active_time: i64,
    /// When the box uploads its next report (unix s), if it will.
    upload_at: Option<i64>,
}

struct Inner {
    opts: FakeOptions,
    cars: HashMap<String, Car>,
    fails: HashMap<u16, VecDeque<Fail>>,
    /// Lock outcomes pushed as failures from now on.
    car_refuses: bool,
    calls: Calls,
    next_event: i64,
}

pub struct FakeIauto360 {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for FakeIauto360 {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn trip(id: i64, end: i64, km: f64) -> Value {
    json!({"id": id, "startTime": end - 1800, "endTime": end, "mileage": km, "avgOil": 7.8,
        "totalOil": km * 0.078, "rapidAccelerate": 1, "rapidBreak": 0, "hotTime": 60,
        "idleTime": 120, "maxSpeed": 86.0})
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeIauto360 {
    pub async fn start(opts: FakeOptions, listen: SocketAddr) -> anyhow::Result<FakeIauto360> {
        let now = chrono::Utc::now().timestamp();
        let cars = opts
            .devices
            .iter()
            .map(|esn| {
                let car = Car {
                    driving: false,
                    locked: true,
                    trips: vec![trip(1, now - 86_400, 12.5)],
                    active_time: now - 60,
                    upload_at: None,
                };
                (esn.clone(), car)
            })
            .collect();
        let inner = Arc::new(Mutex::new(Inner {
            opts,
            cars,
            fails: HashMap::new(),
            car_refuses: false,
            calls: Calls::default(),
            next_event: 1000,
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let fake = FakeIauto360 {
            addr,
            inner: inner.clone(),
            http: http.clone(),
            shutdown: shutdown.clone(),
        };
        let app = axum::Router::new().route(
            "/srv/{service}/{open_id}/{sign}",
            axum::routing::post(
                move |Path((service, open_id, sign)): Path<(u16, String, String)>, body: Bytes| {
                    let (inner, http) = (inner.clone(), http.clone());
                    async move { handle(&inner, &http, service, &open_id, &sign, &body) }
                },
            ),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        });
        Ok(fake)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Calls {
        lock(&self.inner).calls.clone()
    }

    pub fn fail_next(&self, service: u16, fails: impl IntoIterator<Item = Fail>) {
        lock(&self.inner)
            .fails
            .entry(service)
            .or_default()
            .extend(fails);
    }

    pub fn set_push_url(&self, url: &str) {
        lock(&self.inner).opts.push_url = Some(url.to_string());
    }

    /// From now on the car reports that lock / unlock failed.
    pub fn car_refuses(&self, refuses: bool) {
        lock(&self.inner).car_refuses = refuses;
    }

    pub fn set_driving(&self, esn: &str, driving: bool) {
        if let Some(car) = lock(&self.inner).cars.get_mut(esn) {
            car.driving = driving;
        }
    }

    /// 1011 calls for `esn` so far.
    pub fn reads(&self, esn: &str) -> u32 {
        lock(&self.inner).calls.reads.get(esn).copied().unwrap_or(0)
    }

    /// The box's last upload (1001 `activeTime`) was at `unix_s`.
    pub fn set_active_time(&self, esn: &str, unix_s: i64) {
        if let Some(car) = lock(&self.inner).cars.get_mut(esn) {
            car.active_time = unix_s;
            car.upload_at = None;
        }
    }

    /// The box uploads a new report `after` from now (a car that woke up): from then on
    /// 1001 `activeTime` says so.
    pub fn upload_after(&self, esn: &str, after: Duration) {
        let at = chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
        if let Some(car) = lock(&self.inner).cars.get_mut(esn) {
            car.upload_at = Some(at.timestamp());
        }
    }

    /// `n` trips that ended an hour apart, the last one an hour ago (oldest first).
    pub fn add_trips(&self, esn: &str, n: usize) {
        let mut inner = lock(&self.inner);
        let Some(car) = inner.cars.get_mut(esn) else {
            return;
        };
        let now = chrono::Utc::now().timestamp();
        for i in 0..n {
            let id = car.trips.len() as i64 + 1;
            let end = now - 3600 * (n - i) as i64;
            car.trips.push(trip(id, end, 10.0 + i as f64));
        }
    }

    /// A trip that just ended, `km` long; returns its id.
    pub fn add_trip(&self, esn: &str, km: f64) -> i64 {
        let mut inner = lock(&self.inner);
        let Some(car) = inner.cars.get_mut(esn) else {
            return 0;
        };
        let id = car.trips.len() as i64 + 1;
        car.trips.push(trip(id, chrono::Utc::now().timestamp(), km));
        id
    }

    /// Pushes `records` signed with the platform's secret; returns the HTTP status.
    pub async fn push(&self, records: Value) -> anyhow::Result<u16> {
        let (url, code) = {
            let inner = lock(&self.inner);
            (inner.opts.push_url.clone(), inner.opts.secure_code.clone())
        };
        let url = url.ok_or_else(|| anyhow::anyhow!("no push_url"))?;
        let body = json!({"records": records}).to_string();
        let sign = proto::push_signature(&body, &code);
        push_raw(&self.http, &url, body, &sign).await
    }

    /// Pushes a body as given with a given `versign`.
    pub async fn push_raw(&self, body: String, versign: &str) -> anyhow::Result<u16> {
        let url = lock(&self.inner)
            .opts
            .push_url
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no push_url"))?;
        push_raw(&self.http, &url, body, versign).await
    }
}

async fn push_raw(
    http: &reqwest::Client,
    url: &str,
    body: String,
    versign: &str,
) -> anyhow::Result<u16> {
    let resp = http
        .post(url)
        .query(&[("versign", versign)])
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

fn ok(data: Value) -> Response {
    axum::Json(json!({"flag": 1, "data": data})).into_response()
}

fn refuse(err: &str) -> Response {
    axum::Json(json!({"flag": 0, "data": {}, "err": err})).into_response()
}

fn handle(
    state: &Arc<Mutex<Inner>>,
    http: &reqwest::Client,
    service: u16,
    open_id: &str,
    sign: &str,
    body: &[u8],
) -> Response {
    let mut inner = lock(state);
    *inner.calls.by_service.entry(service).or_default() += 1;
    let text = String::from_utf8_lossy(body);
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let time = req.get("time").and_then(Value::as_i64).unwrap_or(0);
    let expected = proto::sign(&inner.opts.open_id, &text, &inner.opts.secure_code, time);
    if open_id != inner.opts.open_id || sign != expected {
        inner.calls.bad_signatures += 1;
        return refuse("签名错误");
    }
    if (chrono::Utc::now().timestamp_millis() - time).abs() > 300_000 {
        inner.calls.stale_time += 1;
        return refuse("请求时间已过期");
    }
    let data = &req["data"];
    let esn = data["esn"].as_str().unwrap_or("").to_string();
    if !inner.cars.contains_key(&esn) {
        return refuse("终端不存在");
    }
    if service == 1011 {
        *inner.calls.reads.entry(esn.clone()).or_default() += 1;
    }
    if let Some(fail) = inner.fails.get_mut(&service).and_then(VecDeque::pop_front) {
        return match fail {
            Fail::Http(s) => (
                axum::http::StatusCode::from_u16(s).unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
                "busy",
            )
                .into_response(),
            Fail::Refuse(err) => refuse(err),
            Fail::BadJson => (axum::http::StatusCode::OK, "{\"flag\":1,\"data\":").into_response(),
        };
    }
    let now = chrono::Utc::now().timestamp();
    let (glat, glng) = wgs84_to_gcj02(HOME.0, HOME.1);
    if let Some(car) = inner.cars.get_mut(&esn) {
        if let Some(at) = car.upload_at.filter(|at| *at <= now) {
            car.active_time = at;
            car.upload_at = None;
        }
    }
    let Some(car) = inner.cars.get(&esn) else {
        return refuse("终端不存在");
    };
    match service {
        1001 => ok(
            json!({"bindStatus": 1, "mobile": "138****0000", "plateNo": "粤A12345", "inserted": 1, "activeTime": car.active_time}),
        ),
        1011 => {
            let mut d = json!({"location": [glng, glat], "mileage": 23456.7, "voltage": if car.driving { 14.1 } else { 12.6 },
                "driveStatus": i32::from(car.driving), "vin": "LSGBL5334HF000001"});
            if car.driving {
                d["speed"] = json!(48);
                d["enginRate"] = json!(2100);
                d["coldTemplate"] = json!(90);
                d["faultCode"] = json!(["P0171"]);
            }
            ok(d)
        }
        // docs/protocols/iauto360.md, "1012 trips": trips whose ignition time lies in
        // [timeFrom, timeTo], 10 per page, `page` defaults to 1, `totalCount` counts them
        // all. The order is not given; the oldest come first here, so a client reading
        // page 1 alone misses the newest trips once there are more than ten.
        1012 => {
            let from = data["timeFrom"].as_i64().unwrap_or(0);
            let to = data["timeTo"].as_i64().unwrap_or(i64::MAX);
            let page = data["page"].as_i64().unwrap_or(1).max(1) as usize;
            let matching: Vec<Value> = car
                .trips
                .iter()
                .filter(|t| {
                    t["startTime"]
                        .as_i64()
                        .is_some_and(|s| s >= from && s <= to)
                })
                .cloned()
                .collect();
            let records: Vec<Value> = matching
                .iter()
                .skip((page - 1) * 10)
                .take(10)
                .cloned()
                .collect();
            ok(json!({"records": records, "totalCount": matching.len(), "page": page}))
        }
        1013 => {
            let coords: Vec<Value> = (0..20)
                .map(|i| json!([glng + i as f64 * 0.001, glat + i as f64 * 0.0005]))
                .collect();
            ok(json!({"coords": coords}))
        }
        // History: the newest record is an hour old and lower than the live 1011 value,
        // as measured on a real box (issue #15: 12.6 live, 11.9 in the newest record).
        1016 | 1017 => ok(
            json!({"records": [{"val": 119, "time": now - 3600}, {"val": 124, "time": now - 10_800}]}),
        ),
        1018 => ok(
            json!({"airFlow": 325, "airlPress": 3400, "airTemplate": 3100, "coldTemplate": 8850, "oilPress": 30000,
            "doorTemplate": 1490, "enginRate": 780, "enginLoad": 2350, "diagnoseTime": now - 7200, "faultCodes": ["P0420"]}),
        ),
        1019 => ok(
            json!({"frontLeft": "0|230|31|1700000000", "frontRight": "0|232|32|1700000000",
            "rearLeft": "1|180|30|1700000000", "rearRight": "16|228|29|1700000000"}),
        ),
        1021 => ok(
            json!({"modelId": 1024, "mileage": 23456, "intervalMileage": "5000", "oilType": "95", "plateNo": "粤A12345",
            "vin": "LSGBL5334HF000001", "engineNo": "E123456", "plateType": "02", "insurer": "平安车险",
            "insuranceDate": "2026-03-15", "taxFeeDate": "2026-03-15", "carReviewDate": "2027-03-31"}),
        ),
        3004 => ok(
            json!({"accelerateTimes": 5980, "avgOilConsume": 1189, "avgSpeed": 35, "breakTimes": 3322, "cost": 2800,
            "goodWaterPercent": 92, "idlePercent": 8, "idleTime": 540, "mileage": 40, "primeCost": 71, "updateTime": now - 86_400}),
        ),
        5001 => {
            inner.calls.commands.push(data.clone());
            let locking = match data["opCode"].as_str() {
                Some("LOCK_DOOR") => true,
                Some("UNLOCK_DOOR") => false,
                _ => return refuse("opCode错误"),
            };
            let success = !inner.car_refuses;
            if success {
                if let Some(car) = inner.cars.get_mut(&esn) {
                    car.locked = locking;
                }
            }
            if let Some(url) = inner.opts.push_url.clone() {
                inner.next_event += 1;
                let (id, code, delay) = (
                    inner.next_event,
                    inner.opts.secure_code.clone(),
                    inner.opts.command_delay,
                );
                let (kind, verb) = if locking {
                    ("关锁", "关锁")
                } else {
                    ("开锁", "开锁")
                };
                let outcome = if success { "成功" } else { "失败" };
                let record = json!({"id": id, "esn": esn, "uid": "1424587", "type": kind, "time": now,
                    "text": format!("【粤A12345】于【{}】在【广州塔】附近{verb}【{outcome}】", chrono::Utc::now().format("%Y-%m-%d %H:%M")),
                    "location": [glng, glat]});
                let (http, state) = (http.clone(), state.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let body = json!({"records": [record]}).to_string();
                    let sign = proto::push_signature(&body, &code);
                    if let Ok(status) = push_raw(&http, &url, body, &sign).await {
                        lock(&state).calls.pushes.push(status);
                    }
                });
            }
            ok(json!({"status": 1}))
        }
        _ => refuse("服务不存在"),
    }
}

/// `simulate iauto360-platform`.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:8490")]
    listen: SocketAddr,
    /// The bridge's push endpoint, e.g. http://127.0.0.1:8089/iauto360/events.
    #[arg(long)]
    push_url: Option<String>,
}

impl crate::upstream::Simulated for super::Iauto360 {
    const COMMAND: &'static str = "iauto360-platform";
    const ABOUT: &'static str =
        "A fake iauto360 (车智汇) open platform with one OBD box: open_id `OPEN123`, \
        secure_code `SECRETcode`, esn 865432100012345";
    type Args = Args;

    async fn simulate(
        args: Args,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        let opts = FakeOptions {
            push_url: args.push_url,
            ..Default::default()
        };
        let started = FakeIauto360::start(opts, args.listen).await;
        let what = "fake iauto360 platform";
        crate::sim::serve_fake(what, args.listen, started, FakeIauto360::url, shutdown).await
    }

    const DEMO_PORTS: &'static [(&'static str, u16)] =
        &[("iauto360-port", 8490), ("push-port", 8089)];
    fn demo_config(i: &mut super::Iauto360Config, port: &dyn Fn(&str) -> u16) {
        i.enabled = true;
        i.base_url = format!("http://127.0.0.1:{}", port("iauto360-port"));
        let fake = FakeOptions::default();
        i.open_id = fake.open_id;
        i.secure_code = crate::shared::Secret::new(fake.secure_code);
        i.devices = vec![super::Iauto360Device {
            overspeed_kmh: None,
            esn: fake.devices[0].clone(),
            name: Some("Demo car".into()),
            quiet_hours: None,
        }];
        i.push_listen = Some(([127, 0, 0, 1], port("push-port")).into());
        i.poll_interval = Duration::from_secs(30);
        i.poll_interval_active = Some(Duration::from_secs(5));
        i.detail_interval = Duration::from_secs(300);
    }
    fn demo_addresses(i: &super::Iauto360Config) -> Vec<crate::upstream::DemoAddress> {
        let platform = crate::sim::local_port(&i.base_url).map(|a| (a, "iauto360-port"));
        platform
            .into_iter()
            .chain(i.push_listen.map(|a| (a, "push-port")))
            .collect()
    }
    async fn demo_before(
        i: &super::Iauto360Config,
    ) -> anyhow::Result<Option<crate::upstream::Running>> {
        let listen = crate::sim::local_port(&i.base_url)
            .ok_or_else(|| anyhow::anyhow!("demo: no port in {}", i.base_url))?;
        let push_url = i.push_listen.map(|a| format!("http://{a}{}", i.push_path));
        let opts = FakeOptions {
            push_url,
            ..Default::default()
        };
        Ok(Some(Box::new(FakeIauto360::start(opts, listen).await?)))
    }
    fn demo_vehicles(i: &super::Iauto360Config) -> String {
        let esn = i
            .devices
            .first()
            .map(|d| d.esn.as_str())
            .unwrap_or_default();
        format!("an OBD box ia{esn} (fake iauto360 platform)")
    }
}
