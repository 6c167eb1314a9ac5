//! One signed service call: `POST /srv/{service}/{openId}/{sign}` with the body signed
//! exactly as sent; the reply's `flag` decides.

use serde_json::Value;

use super::config::Iauto360Config;
use crate::protocol::iauto360::{self as proto, ReplyError};

/// Requests to the upstream at once (a fleet polls many boxes).
const MAX_IN_FLIGHT: usize = 8;

/// Largest reply read; a long trip track is the biggest (tens of KiB).
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CallError {
    /// `flag 0`: the platform refused the call, with its `err`.
    #[error("refused: {0}")]
    Refused(String),
    #[error("rate limited")]
    RateLimited,
    #[error("platform error: HTTP {0}")]
    Server(u16),
    #[error("HTTP {0}")]
    Http(u16),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("request timed out")]
    Timeout,
    #[error("malformed reply: {0}")]
    BadAnswer(String),
}

impl CallError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CallError::RateLimited
                | CallError::Server(_)
                | CallError::Transport(_)
                | CallError::Timeout
        )
    }
}

pub struct Api {
    http: reqwest::Client,
    /// Requests in flight at once: bounds the connections to the upstream.
    permits: tokio::sync::Semaphore,
    base: String,
    open_id: String,
    secure_code: crate::shared::Secret,
    plan: Option<i64>,
    /// Cluster: no request once this instance's lease on the account ran out.
    lease: crate::connector::Lease,
}

impl Api {
    pub fn new(cfg: &Iauto360Config) -> anyhow::Result<Api> {
        let http = crate::connectors::http_client(cfg.request_timeout)?;
        Ok(Api {
            http,
            permits: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            base: cfg.base_url.trim_end_matches('/').to_string(),
            open_id: cfg.open_id.clone(),
            secure_code: cfg.secure_code.clone(),
            plan: cfg.plan,
            lease: crate::connector::Lease::forever(),
        })
    }

    /// Requests only while `lease` holds (cluster mode).
    pub fn with_lease(mut self, lease: crate::connector::Lease) -> Api {
        self.lease = lease;
        self
    }

    /// Calls `service` with `data`; returns the reply's `data`.
    pub async fn call(&self, service: u16, data: &Value) -> Result<Value, CallError> {
        let time = chrono::Utc::now().timestamp_millis();
        let body = proto::request_body(time, data, self.plan);
        let sign = proto::sign(&self.open_id, &body, self.secure_code.expose(), time);
        let url = format!(
            "{}{}",
            self.base,
            proto::path(service, &self.open_id, &sign)
        );
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| CallError::Transport("client closed".into()))?;
        if !self.lease.valid() {
            return Err(CallError::Transport(
                "this cluster instance's lease on the account ran out".into(),
            ));
        }
        let mut resp = self
            .http
            .post(url)
            .header("Content-Type", "application/json;charset=UTF-8")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        match status {
            429 => return Err(CallError::RateLimited),
            500..=599 => return Err(CallError::Server(status)),
            200..=299 => {}
            _ => return Err(CallError::Http(status)),
        }
        let raw = crate::connectors::read_bounded(&mut resp, MAX_BODY)
            .await
            .map_err(transport)?
            .ok_or_else(|| CallError::BadAnswer(format!("reply larger than {MAX_BODY} bytes")))?;
        let reply: Value = serde_json::from_slice(&raw)
            .map_err(|e| CallError::BadAnswer(format!("not JSON: {e}")))?;
        match proto::reply_data(&reply) {
            Ok(d) => Ok(d.clone()),
            Err(ReplyError::Refused(e)) => Err(CallError::Refused(e)),
            Err(ReplyError::Malformed(e)) => Err(CallError::BadAnswer(e)),
        }
    }
}

fn transport(e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout
    } else {
        // Without the URL: it carries the open id and the signature.
        CallError::Transport(e.without_url().to_string())
    }
}
