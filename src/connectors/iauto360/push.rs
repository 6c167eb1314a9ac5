//! The event push endpoint: `POST <push_path>?versign=...` with `{"records":[...]}`.
//! The signature is checked in constant time over the exact body bytes (403 when wrong),
//! bodies over `push_max_body` get 413, and each good record goes to its device's task.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
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

struct Ctx {
    secure_code: crate::config::Secret,
    routes: HashMap<String, mpsc::Sender<PushedEvent>>,
    counters: Arc<Counters>,
    permits: Semaphore,
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
        counters,
        permits: Semaphore::new(MAX_CONCURRENT),
    });
    let app = axum::Router::new()
        .route(&cfg.push_path, axum::routing::post(receive))
        .layer(DefaultBodyLimit::max(cfg.push_max_body))
        .with_state(ctx);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(_permit) = ctx.permits.try_acquire() else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, 0, "busy");
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ctx.counters.push_oversized.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = "iauto360_push_oversized",
                    "event push over push_max_body refused"
                );
            }
            return reply(status, 0, "unreadable body");
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
