//! The event push endpoint: `POST <push_path>?versign=...` with `{"records":[...]}`.
//! The signature is checked in constant time over the exact body bytes (403 when wrong),
//! bodies over `push_max_body` get 413, and each good record goes to its device's task.
//!
//! The listener is bounded as a server on the open internet must be: at most
//! `push_max_connections` connections (more are closed at once and counted), headers and
//! body within `push_read_timeout` each, and no connection, idle keep-alive or not, lives
//! longer than `CONNECTION_LIFETIME`. Accept errors (say, out of file descriptors) back off
//! instead of spinning.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Counters, Iauto360Config};
use crate::protocol::iauto360::services::{pushed_event, PushedEvent};
use crate::protocol::iauto360::verify_push;

/// Pushes handled at once; more get 503 and the platform retries.
const MAX_CONCURRENT: usize = 32;
/// The longest any one connection may stay open (a push takes milliseconds).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

struct Ctx {
    secure_code: crate::shared::Secret,
    routes: HashMap<String, mpsc::Sender<PushedEvent>>,
    counters: Arc<Counters>,
    permits: Semaphore,
    max_body: usize,
    read_timeout: std::time::Duration,
}

pub async fn serve(
    cfg: &Iauto360Config,
    listener: tokio::net::TcpListener,
    routes: HashMap<String, mpsc::Sender<PushedEvent>>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx = Arc::new(Ctx {
        secure_code: cfg.secure_code.clone(),
        routes,
        counters: counters.clone(),
        permits: Semaphore::new(MAX_CONCURRENT),
        max_body: cfg.push_max_body,
        read_timeout: cfg.push_read_timeout,
    });
    let app = axum::Router::new()
        .route(&cfg.push_path, axum::routing::post(receive))
        .with_state(ctx);
    let connections = Arc::new(Semaphore::new(cfg.push_max_connections));
    let mut accept_backoff = crate::connectors::AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => {
                accept_backoff.succeeded();
                a
            }
            Err(e) => {
                // EMFILE and friends: wait for descriptors to free up, do not spin.
                let (wait, log) = accept_backoff.failed();
                if log {
                    tracing::warn!(event = "iauto360_push_accept_failed", error = %e, wait_ms = wait.as_millis() as u64, "cannot accept a push connection");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Some(n) = crate::observe::count_sampled(&counters.push_refused) {
                tracing::warn!(
                    event = "iauto360_push_connection_refused",
                    total = n,
                    "push connection refused: push_max_connections reached"
                );
            }
            drop(stream);
            continue;
        };
        let (app, read_timeout) = (app.clone(), cfg.push_read_timeout);
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, flag: u8, err: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"flag": flag, "err": err})),
    )
        .into_response()
}

async fn receive(
    State(ctx): State<Arc<Ctx>>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Response {
    let Ok(_permit) = ctx.permits.try_acquire() else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, 0, "busy");
    };
    let body: Bytes = match tokio::time::timeout(
        ctx.read_timeout,
        axum::body::to_bytes(body, ctx.max_body),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            ctx.counters.push_oversized.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                event = "iauto360_push_oversized",
                "event push over push_max_body (or broken) refused"
            );
            return reply(StatusCode::PAYLOAD_TOO_LARGE, 0, "body too large");
        }
        Err(_) => {
            ctx.counters.push_slow.fetch_add(1, Ordering::Relaxed);
            return reply(StatusCode::REQUEST_TIMEOUT, 0, "body too slow");
        }
    };
    let versign = query.get("versign").map(String::as_str).unwrap_or("");
    let text = String::from_utf8_lossy(&body);
    if !verify_push(&text, ctx.secure_code.expose(), versign) {
        ctx.counters
            .push_bad_signature
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            event = "iauto360_push_bad_signature",
            "event push with a wrong versign refused"
        );
        return reply(StatusCode::FORBIDDEN, 0, "bad versign");
    }
    let doc: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            ctx.counters.push_malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = "iauto360_push_malformed", error = %e, "event push is not JSON");
            return reply(StatusCode::BAD_REQUEST, 0, "not JSON");
        }
    };
    let records = doc
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for record in &records {
        let Some(event) = pushed_event(record) else {
            ctx.counters.push_malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                event = "iauto360_push_record_malformed",
                "pushed record without id/esn/type skipped"
            );
            continue;
        };
        ctx.counters.pushes.fetch_add(1, Ordering::Relaxed);
        match ctx.routes.get(&event.esn) {
            // A full queue means the device task is far behind: drop (and count) rather
            // than make the platform wait.
            Some(tx) => {
                if tx.try_send(event).is_err() {
                    ctx.counters.push_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                ctx.counters
                    .push_unknown_device
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = "iauto360_push_unknown_device", esn = %event.esn, "event for a device not in the config");
            }
        }
    }
    reply(StatusCode::OK, 1, "")
}
