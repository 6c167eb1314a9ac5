//! The status page on `bridge.http_listen` (beside `/metrics` and `/healthz`): the
//! fleet (filtered, sorted, paged by the hub, which holds the vehicles), why devices are
//! missing ([`problems`]), the connectors and MQTT, the last events and command results,
//! a map; live by server-sent events (`live`). Plain HTML tables that work without
//! JavaScript; `assets/status.js` only updates them.
//!
//! Actions (lock, unlock, refresh, purge) only for who [`auth`] admits, each with its
//! CSRF token; they go into the hub as the MQTT message that would ask for them, so they
//! pass the same checks (PIN, queue, capabilities) and get the same single result on
//! `<vehicle>/command/result`.
//!
//! Bounded: connections (`MAX_CONNECTIONS`), live streams (`MAX_LIVE`, the next is
//! answered 503), request bodies (`MAX_BODY`, 413), the filter text, fleet pages per
//! second (`PAGES_PER_SECOND`, then 503: each costs the hub a pass over the fleet).

mod auth;
pub mod feed;
pub mod problems;
mod render;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub use auth::login_failures;
use auth::{Auth, LoginError, Who};
use feed::{Ask, AskSender, Feed, FleetQuery, Live};

use crate::config::Secret;
use crate::model::VehicleId;
use crate::observe::SharedSnapshot;

/// Open connections at most; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Open connections from one address at most (half of all, and more than `MAX_LIVE`;
/// past it a new one is closed at once), so
/// one peer cannot hold every place and keep `/healthz` from its checker. The ingress
/// proxy's address is exempt: every panel user comes through it.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// Live streams (`live`) at most; the next is answered 503.
pub const MAX_LIVE: usize = 16;
/// Largest request body (a form holds a token, a CSRF token and a PIN).
pub const MAX_BODY: usize = 8 * 1024;
/// Longest filter text looked at.
const MAX_FILTER: usize = 100;
/// Fleet pages the hub builds per second at most (each goes over every vehicle, on the
/// hub's own loop: a few ms for 10 000), and at once.
const PAGES_PER_SECOND: f64 = 10.0;
const PAGES_AT_ONCE: f64 = 20.0;
/// How long the page waits for the hub's answer.
const HUB_ANSWER: Duration = Duration::from_secs(5);
/// How often the live stream looks for changed status figures.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Where `vehicle2mqtt addon` serves the page: `ingress_port` in addon/config.yaml.
pub const ADDON_LISTEN: &str = "0.0.0.0:8099";

/// What `vehicle2mqtt addon` sets for the page: ingress on (the Supervisor's proxy may
/// act), and the page on [`ADDON_LISTEN`] unless the options or the environment name
/// another address.
pub fn addon_page(bridge: &mut crate::config::BridgeConfig) {
    bridge.ingress = true;
    if bridge.http_listen.trim().is_empty() {
        bridge.http_listen = ADDON_LISTEN.into();
    }
}

/// What the page is told at start.
pub struct Settings {
    pub base_topic: String,
    pub token: Secret,
    /// The Supervisor's ingress proxy, with `bridge.ingress` on.
    pub ingress_from: Option<IpAddr>,
    pub map_tiles: String,
    /// The broker as shown: `embedded` or host:port, never a login.
    pub broker: String,
}

/// A token bucket for the fleet pages: a reloading crowd or a crawler cannot keep the
/// hub busy.
struct Budget(std::sync::Mutex<(f64, std::time::Instant)>);

impl Budget {
    fn new() -> Budget {
        Budget(std::sync::Mutex::new((
            PAGES_AT_ONCE,
            std::time::Instant::now(),
        )))
    }

    fn take(&self) -> bool {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * PAGES_PER_SECOND;
        *b = ((b.0 + refill).min(PAGES_AT_ONCE), now);
        if b.0 < 1.0 {
            return false;
        }
        b.0 -= 1.0;
        true
    }
}

struct App {
    settings: Settings,
    pages: Budget,
    auth: Auth,
    snapshot: SharedSnapshot,
    feed: Feed,
    ask: AskSender,
    live: Arc<Semaphore>,
    shutdown: CancellationToken,
}

type Shared = State<Arc<App>>;

/// The peer's address (the connect info of [`Limited`] connections).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A TCP listener that holds at most `MAX_CONNECTIONS` connections open.
struct Limited {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    per_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    /// The ingress proxy (`bridge.ingress_from`, when ingress is on).
    exempt: Option<std::net::IpAddr>,
}

/// One connection's share of its address's count, given back when it closes.
struct AddressShare {
    ip: std::net::IpAddr,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A connection and its place among the open ones, closed when nothing went either
/// way for `IDLE` (an idle keep-alive or a stalled client gives its place back; a live
/// stream writes a keep-alive every 15 s).
struct Counted {
    stream: TcpStream,
    last: tokio::time::Instant,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
    _share: Option<AddressShare>,
}

/// Connections closed for `MAX_CONNECTIONS_PER_ADDRESS`.
pub static REFUSED_PER_ADDRESS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A connection with no traffic this long is closed.
const IDLE: Duration = Duration::from_secs(60);

impl Counted {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        share: Option<AddressShare>,
    ) -> Counted {
        Counted {
            stream,
            last: tokio::time::Instant::now(),
            idle: Box::pin(tokio::time::sleep(IDLE)),
            _permit: permit,
            _share: share,
        }
    }

    /// Pending while there was traffic within `IDLE`; an error once there was none.
    fn idle_check(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
            let due = self.last + IDLE;
            if due <= tokio::time::Instant::now() {
                return std::task::Poll::Ready(std::io::ErrorKind::TimedOut.into());
            }
            self.idle.as_mut().reset(due);
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        match std::pin::Pin::new(&mut me.stream).poll_read(cx, buf) {
            std::task::Poll::Pending => me.idle_check(cx).map(Err),
            ready => {
                me.last = tokio::time::Instant::now();
                ready
            }
        }
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        match std::pin::Pin::new(&mut me.stream).poll_write(cx, buf) {
            // A client that stopped reading is idle too.
            std::task::Poll::Pending => me.idle_check(cx).map(Err),
            ready => {
                me.last = tokio::time::Instant::now();
                ready
            }
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for Limited {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Counted, SocketAddr) {
        loop {
            let permit = match self.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                // Never closed; were it, no connection would be taken any more.
                Err(_) => std::future::pending().await,
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let ip = peer.ip();
                    if self.exempt == Some(ip) {
                        return (Counted::new(stream, permit, None), peer);
                    }
                    let mut counts = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
                    let n = counts.entry(ip).or_default();
                    if *n >= MAX_CONNECTIONS_PER_ADDRESS {
                        // Closed at once (the stream and the permit dropped), counted and
                        // logged sparsely.
                        drop(counts);
                        if let Some(total) = crate::observe::count_sampled(&REFUSED_PER_ADDRESS) {
                            tracing::warn!(event = "page_connection_refused", peer = %ip, refused_total = total,
                                "status page: {MAX_CONNECTIONS_PER_ADDRESS} connections from this address already; closed");
                        }
                        continue;
                    }
                    *n += 1;
                    drop(counts);
                    let share = AddressShare {
                        ip,
                        counts: self.per_address.clone(),
                    };
                    return (Counted::new(stream, permit, Some(share)), peer);
                }
                // Usually out of file descriptors: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Connected<axum::serve::IncomingStream<'_, Limited>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Limited>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// Serves the page, `/metrics` and `/healthz` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    snapshot: SharedSnapshot,
    feed: Feed,
    ask: AskSender,
    settings: Settings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let settings_ingress = settings.ingress_from;
    let app = Arc::new(App {
        auth: Auth::new(settings.token.clone(), settings.ingress_from),
        settings,
        snapshot: snapshot.clone(),
        feed,
        ask,
        live: Arc::new(Semaphore::new(MAX_LIVE)),
        shutdown: shutdown.clone(),
        pages: Budget::new(),
    });
    let page = axum::Router::new()
        .route("/", get(index))
        .route("/live", get(live))
        .route("/positions.json", get(positions))
        .route("/assets/{name}", get(asset))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/action", post(action))
        .with_state(app);
    let router = crate::observe::router(snapshot)
        .merge(page)
        .layer(DefaultBodyLimit::max(MAX_BODY));
    let listener = Limited {
        listener,
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        per_address: Arc::default(),
        exempt: settings_ingress,
    };
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(auth::COOKIE)?.strip_prefix('='))
}

fn who(app: &App, peer: Peer, headers: &HeaderMap) -> Who {
    app.auth.who(peer.0.ip(), cookie(headers))
}

/// The page's own rules for the browser: scripts and styles from here only, images from
/// here and the tile server.
fn page_headers(app: &App) -> [(header::HeaderName, String); 3] {
    let tiles = app.settings.map_tiles.as_str();
    // The tile server's origin: scheme and host (a {s} subdomain is any subdomain).
    let origin = tiles
        .find("://")
        .and_then(|at| {
            let rest = &tiles[at + 3..];
            rest.find('/').map(|end| &tiles[..at + 3 + end])
        })
        .unwrap_or("")
        .replace("{s}", "*");
    [
        (header::CACHE_CONTROL, "no-store".into()),
        (
            header::CONTENT_SECURITY_POLICY,
            format!(
                "default-src 'self'; img-src 'self' data: {origin}; script-src 'self'; \
                 style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'self'; \
                 form-action 'self'; base-uri 'none'"
            ),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
    ]
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Notice {
    /// The command id an action got (only its letters, digits and dashes are shown).
    sent: Option<String>,
    /// Every kept event, result and problem.
    full: bool,
}

/// What the hub answers `ask` with, within the page budget (each answer is a pass of
/// the hub over the fleet, on its own loop); the response to send otherwise.
async fn ask_hub<T>(app: &App, ask: impl FnOnce(oneshot::Sender<T>) -> Ask) -> Result<T, Response> {
    let unavailable = |text: &'static str| (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    if !app.pages.take() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "the page is asked for too often: try again in a second\n",
        )
            .into_response());
    }
    let (tx, rx) = oneshot::channel();
    if app.ask.send(ask(tx)).await.is_err() {
        return Err(unavailable("the bridge is stopping\n"));
    }
    match tokio::time::timeout(HUB_ANSWER, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(unavailable("the bridge did not answer in time\n")),
    }
}

/// Every vehicle with a position, for the map (asked for once per page load, counted
/// with the pages).
async fn positions(State(app): Shared) -> Response {
    match ask_hub(&app, Ask::Positions).await {
        Ok(points) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(points)).into_response(),
        Err(response) => response,
    }
}

async fn index(
    State(app): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Query(mut q): Query<FleetQuery>,
    Query(notice): Query<Notice>,
) -> Response {
    q.q = q.q.chars().take(MAX_FILTER).collect();
    let fleet = match ask_hub(&app, |tx| Ask::Fleet(q.clone(), tx)).await {
        Ok(fleet) => fleet,
        Err(response) => return response,
    };
    let snapshot = app.snapshot.read().map(|s| s.clone()).unwrap_or_default();
    let who = who(&app, peer, &headers);
    let notice_full = notice.full;
    let notice = notice.sent.map(|id| {
        let id: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect();
        format!(
            "Sent (command id {id}): its result shows under Events and results and on <vehicle>/command/result."
        )
    });
    let view = render::View {
        csrf: who.csrf(&app.auth),
        has_token: app.auth.has_token(),
        ingress: app.auth.ingress(),
        logged_in: matches!(who, Who::Session { .. }),
        map_tiles: &app.settings.map_tiles,
        notice: notice.as_deref(),
    };
    let html = render::page(
        &view,
        &q,
        &fleet,
        &snapshot,
        &app.settings.broker,
        problems::global().recent(match notice_full {
            true => problems::KEPT,
            false => render::PROBLEMS_SHOWN,
        }),
        app.feed.entries(match notice_full {
            true => feed::ENTRIES,
            false => render::ENTRIES_SHOWN,
        }),
    );
    (
        page_headers(&app),
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static str, &str) = match name.as_str() {
        "status.js" => (include_str!("../../assets/status.js"), "text/javascript"),
        "status.css" => (include_str!("../../assets/status.css"), "text/css"),
        "leaflet.js" => (
            include_str!("../../assets/leaflet/leaflet.js"),
            "text/javascript",
        ),
        "leaflet.css" => (include_str!("../../assets/leaflet/leaflet.css"), "text/css"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("{kind}; charset=utf-8"))
                    .unwrap_or(HeaderValue::from_static("text/plain")),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=3600"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// One live stream: rows, events and results, problems, status figures.
struct Stream {
    feed: broadcast::Receiver<Live>,
    problems: broadcast::Receiver<problems::Problem>,
    status: tokio::time::Interval,
    last_status: String,
    app: Arc<App>,
    _watching: feed::Watching,
    _permit: OwnedSemaphorePermit,
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_default())
}

impl Stream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                _ = self.app.shutdown.cancelled() => return None,
                live = self.feed.recv() => match live {
                    Ok(Live::Vehicle(row)) => return Some(json_event("row", &row)),
                    Ok(Live::Entry(entry)) => return Some(json_event("entry", &entry)),
                    // Behind: what was missed shows on the next report or reload.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                p = self.problems.recv() => match p {
                    Ok(p) => return Some(json_event("problem", &p)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.status.tick() => {
                    let snapshot = self.app.snapshot.read().map(|s| s.clone()).unwrap_or_default();
                    let cells = render::status_cells(&snapshot, &self.app.settings.broker);
                    let text = serde_json::to_string(&cells).unwrap_or_default();
                    if text != self.last_status {
                        self.last_status = text.clone();
                        return Some(Event::default().event("status").data(text));
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LiveQuery {
    /// The vehicles the page shows, comma-separated.
    ids: String,
}

async fn live(State(app): Shared, Query(q): Query<LiveQuery>) -> Response {
    let Ok(permit) = app.live.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "30")],
            format!("{MAX_LIVE} live pages are open already\n"),
        )
            .into_response();
    };
    let stream = Stream {
        feed: app.feed.subscribe(),
        problems: problems::global().subscribe(),
        status: tokio::time::interval(STATUS_EVERY),
        last_status: String::new(),
        _watching: app.feed.watch(
            q.ids
                .split(',')
                .filter(|id| VehicleId::new(id).is_some_and(|v| v.as_str() == *id))
                .take(feed::PER_PAGE)
                .map(str::to_string)
                .collect(),
        ),
        app: app.clone(),
        _permit: permit,
    };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        s.next().await.map(|e| (Ok::<_, Infallible>(e), s))
    });
    (
        [(header::CACHE_CONTROL, "no-store")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

async fn login_form(State(app): Shared) -> Response {
    let message = (!app.auth.has_token())
        .then_some("This bridge has no bridge.http_token: the page is read-only.");
    (
        page_headers(&app),
        axum::response::Html(render::login(message)),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(app): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Form(form): Form<LoginForm>,
) -> Response {
    match app.auth.login(peer.0.ip(), &form.token).await {
        Ok(id) => {
            let cookie = format!(
                "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                auth::COOKIE,
                auth::SESSION_FOR.as_secs()
            );
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, "./".to_string()),
                ],
            )
                .into_response()
        }
        Err(err) => {
            let status = match err {
                LoginError::NoToken => StatusCode::FORBIDDEN,
                LoginError::Wrong => StatusCode::UNAUTHORIZED,
                LoginError::TooMany => StatusCode::TOO_MANY_REQUESTS,
            };
            (
                status,
                page_headers(&app),
                axum::response::Html(render::login(Some(&err.to_string()))),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default, rename = "do")]
    what: String,
    #[serde(default)]
    pin: String,
}

fn refused(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

async fn logout(
    State(app): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let who = who(&app, peer, &headers);
    if !app.auth.csrf_ok(&who, &form.csrf) {
        return refused(StatusCode::FORBIDDEN, "CSRF token missing or wrong");
    }
    app.auth.logout(&who);
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "./".to_string()),
        ],
    )
        .into_response()
}

/// An action as the MQTT message that asks for it: topic and payload.
fn as_message(
    base: &str,
    what: &str,
    pin: &str,
    id: &str,
) -> Result<(String, Vec<u8>), &'static str> {
    if what == "purge" {
        return Ok((format!("{base}/bridge/purge/set"), b"stale".to_vec()));
    }
    let (verb, vehicle) = what.split_once(':').ok_or("unknown action")?;
    // Exactly a vehicle id (`new` would make `a/b` into another vehicle's `a_b`).
    let vehicle = VehicleId::new(vehicle)
        .filter(|id| id.as_str() == vehicle)
        .ok_or("not a vehicle id")?;
    let (entity, payload) = match verb {
        "lock" => ("lock", "LOCK"),
        "unlock" => ("lock", "UNLOCK"),
        "refresh" => ("refresh", crate::controls::PRESS),
        _ => return Err("unknown action"),
    };
    let mut json = serde_json::json!({"action": payload, "id": id});
    if !pin.is_empty() {
        json["code"] = pin.into();
    }
    Ok((
        format!("{base}/{vehicle}/{entity}/set"),
        json.to_string().into_bytes(),
    ))
}

async fn action(
    State(app): Shared,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let who = who(&app, peer, &headers);
    if who == Who::Anonymous {
        return refused(
            StatusCode::FORBIDDEN,
            "read-only: log in with bridge.http_token (or use the Home Assistant panel) to act",
        );
    }
    if !app.auth.csrf_ok(&who, &form.csrf) {
        return refused(StatusCode::FORBIDDEN, "CSRF token missing or wrong");
    }
    let id = format!("page-{:08x}", rand::random::<u32>());
    let (topic, payload) = match as_message(&app.settings.base_topic, &form.what, &form.pin, &id) {
        Ok(m) => m,
        Err(why) => return refused(StatusCode::BAD_REQUEST, why),
    };
    tracing::info!(event = "page_action", peer = %peer.0, topic = %topic, id = %id, "status page action");
    if app.ask.send(Ask::Message { topic, payload }).await.is_err() {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "the bridge is stopping");
    }
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("./?sent={id}#events"))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_become_the_mqtt_messages_that_ask_for_them() {
        let (topic, payload) = as_message("v2m", "unlock:kx1001", "1234", "page-1").unwrap();
        assert_eq!(topic, "v2m/kx1001/lock/set");
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"action": "UNLOCK", "id": "page-1", "code": "1234"})
        );
        assert_eq!(
            as_message("v2m", "purge", "", "x").unwrap().0,
            "v2m/bridge/purge/set"
        );
        // No topic can be made of a hostile id.
        assert!(as_message("v2m", "lock:a/b", "", "x").is_err());
        assert!(as_message("v2m", "lock:#", "", "x").is_err());
        assert!(as_message("v2m", "horn:kx1", "", "x").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_and_gives_its_place_back() {
        use axum::serve::Listener;
        use tokio::io::AsyncReadExt;
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut listener = Limited {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            permits: permits.clone(),
            per_address: Arc::default(),
            exempt: None,
        };
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut conn, _) = listener.accept().await;
        assert_eq!(permits.available_permits(), MAX_CONNECTIONS - 1);
        // The client sends nothing: the paused clock runs on to the idle limit.
        let err = conn.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(conn);
        assert_eq!(permits.available_permits(), MAX_CONNECTIONS);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; v2m_session=abc; b=2"),
        );
        assert_eq!(cookie(&h), Some("abc"));
    }
}
