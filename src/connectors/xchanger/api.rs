//! One HTTP call to the xchanger cloud: headers, the v2 signature, a bounded body, and
//! the answer classified into what the caller must do next.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use serde_json::Value;

use super::config::{ApiVersion, XchangerConfig};
use crate::protocol::xchanger::{code_text, sign};
use crate::shared::Secret;

/// Requests to the upstream at once (an account has few cars).
const MAX_IN_FLIGHT: usize = 4;

/// Largest answer read; the full status document is about 5 KiB.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ApiError {
    /// 401 or code 1402: refresh the token and try again.
    #[error("token expired")]
    TokenExpired,
    /// Code 1501 or a refused login: the credentials no longer work.
    #[error("credentials refused: {0}")]
    Refused(String),
    /// 429, or 403 about a quota.
    #[error("rate limited by the cloud")]
    RateLimited { retry_after: Option<Duration> },
    #[error("cloud error: HTTP {0}")]
    Server(u16),
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// A well-formed answer with an error code.
    #[error("code {code}: {text}")]
    Code { code: String, text: String },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("request timed out")]
    Timeout,
    #[error("malformed answer: {0}")]
    BadAnswer(String),
}

impl ApiError {
    /// Trouble on the cloud's side or on the way there: back off and retry.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited { .. }
                | ApiError::Server(_)
                | ApiError::Transport(_)
                | ApiError::Timeout
        )
    }
}

/// Path segments (VINs) are escaped; the query is built once by [`sign::canonical_query`].
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[derive(Clone)]
pub enum Body {
    None,
    Json(Value),
    Form(Vec<(String, String)>),
}

/// Which of the cloud's hosts a call goes to (see `XchangerConfig::auth_base_url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Login, tokens, the vehicle list, the data plan.
    Auth,
    /// Status and commands.
    Data,
}

/// Headers of the app's own v2 requests as the forum thread's 2023 capture shows them
/// (docs/protocols/xchanger.md, "v2 captured headers"), besides the signature headers and
/// `Accept`. X-VEHICLE-SERIES is per car and left out.
const CAPTURED_HEADERS: [(&str, &str); 6] = [
    ("X-ENV-TYPE", "production"),
    ("X-AGENT-TYPE", "iOS"),
    ("PLATFORM", "CMA"),
    ("X-DEVICE-TYPE", "mobile"),
    ("Accept-Language", "zh-Hans-US;q=1, en-US;q=0.9"),
    (
        "User-Agent",
        "GeelyLynkco/3.0.4 (iPhone; iOS 16.1.1; Scale/3.00)",
    ),
];

pub struct Api {
    http: reqwest::Client,
    /// Requests in flight at once: bounds the connections to the upstream.
    permits: tokio::sync::Semaphore,
    base: String,
    auth_base: String,
    /// X-CLIENT-ID: the capture's is "APPLE" and a redacted device id; ours is stable per
    /// account and reveals nothing (a hash of the account).
    client_id: String,
    version: ApiVersion,
    app_key: Secret,
    /// Cluster: no request once this instance's lease on the account ran out.
    lease: crate::connector::Lease,
}

impl Api {
    pub fn new(cfg: &XchangerConfig) -> anyhow::Result<Api> {
        let http = crate::connectors::http_client(cfg.request_timeout)?;
        Ok(Api {
            http,
            permits: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            base: cfg.base_url(),
            auth_base: cfg.auth_base_url(),
            client_id: client_id(&cfg.account()),
            version: cfg.api,
            app_key: cfg.app_key.clone(),
            lease: crate::connector::Lease::forever(),
        })
    }

    /// Requests only while `lease` holds (cluster mode).
    pub fn with_lease(mut self, lease: crate::connector::Lease) -> Api {
        self.lease = lease;
        self
    }

    pub fn version(&self) -> ApiVersion {
        self.version
    }

    /// Sends one request and returns the answer's JSON when it means success.
    pub async fn call(
        &self,
        host: Host,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Body,
        token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let query = sign::canonical_query(query);
        let (bytes, content_type) = match &body {
            Body::None => (Vec::new(), None),
            Body::Json(v) => (v.to_string().into_bytes(), Some("application/json")),
            Body::Form(pairs) => {
                let pairs: Vec<(&str, &str)> = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                (
                    sign::canonical_query(&pairs).into_bytes(),
                    Some("application/x-www-form-urlencoded"),
                )
            }
        };
        let base = match host {
            Host::Auth => &self.auth_base,
            Host::Data => &self.base,
        };
        let url = if query.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{query}")
        };
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("x-operator-code", "LYNKCO")
            .header("X-APP-ID", "lynkco");
        if self.version == ApiVersion::V2 {
            for (name, value) in CAPTURED_HEADERS {
                req = req.header(name, value);
            }
            req = req.header("X-CLIENT-ID", &self.client_id);
        } else {
            req = req.header("X-DEVICE-TYPE", "mobile");
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        if let Some(token) = token {
            req = req.header("authorization", token);
        }
        if self.version == ApiVersion::V2 {
            let nonce = nonce();
            let timestamp_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
            let signature = sign::signature(&sign::SignInput {
                app_key: self.app_key.expose().as_bytes(),
                nonce: &nonce,
                timestamp_ms,
                method: method.as_str(),
                path,
                query: &query,
                body: &bytes,
            });
            req = req
                .header("Accept", sign::ACCEPT)
                .header("X-TIMESTAMP", timestamp_ms.to_string())
                .header("x-api-signature-nonce", nonce)
                .header("x-api-signature-version", "1.0")
                .header("X-SIGNATURE", signature);
        } else {
            req = req.header("Accept", "application/json");
        }
        if content_type.is_some() {
            req = req.body(bytes);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::Transport("client closed".into()))?;
        if !self.lease.valid() {
            return Err(ApiError::Transport(
                "this cluster instance's lease on the account ran out".into(),
            ));
        }
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let raw = crate::connectors::read_bounded(&mut resp, MAX_BODY)
            .await
            .map_err(transport)?
            .ok_or_else(|| ApiError::BadAnswer(format!("answer larger than {MAX_BODY} bytes")))?;
        classify(status, retry_after, &raw)
    }
}

fn transport(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::Timeout
    } else {
        // Without the URL: it carries the VIN and user id.
        ApiError::Transport(e.without_url().to_string())
    }
}

/// "APPLE" and 12 hex digits of the account's MD5: stable, and says nothing of it.
fn client_id(account: &str) -> String {
    use md5::{Digest, Md5};
    let digest = hex::encode_upper(Md5::digest(account.as_bytes()));
    format!("APPLE{}", &digest[..12])
}

/// A fresh nonce per request, shaped like the app's (an upper-case UUID).
fn nonce() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// HTTP status + body → success JSON or the error that says what to do.
pub fn classify(status: u16, retry_after: Option<Duration>, raw: &[u8]) -> Result<Value, ApiError> {
    let text = String::from_utf8_lossy(raw);
    match status {
        401 => return Err(ApiError::TokenExpired),
        429 => return Err(ApiError::RateLimited { retry_after }),
        403 if text.to_ascii_lowercase().contains("quota") => {
            return Err(ApiError::RateLimited { retry_after })
        }
        500..=599 => return Err(ApiError::Server(status)),
        200..=299 => {}
        _ => {
            return Err(ApiError::Http {
                status,
                message: text.chars().take(200).collect(),
            })
        }
    }
    let doc: Value =
        serde_json::from_slice(raw).map_err(|e| ApiError::BadAnswer(format!("not JSON: {e}")))?;
    if !doc.is_object() {
        return Err(ApiError::BadAnswer("not a JSON object".into()));
    }
    // Data answers carry `code`; the login answers `resultCode` / `resultMessage`
    // (fineemb/Lynk-Co `__init__.py` `_login_lynkco` checks `resultMessage == 'Success'`).
    let code = match doc.get("code").or_else(|| doc.get("resultCode")) {
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let failed = doc.get("success") == Some(&Value::Bool(false));
    match code.as_deref() {
        Some("1000") | Some("0") | Some("200") => Ok(doc),
        Some("1402") => Err(ApiError::TokenExpired),
        Some("1501") => Err(ApiError::Refused(wrong_credentials(&doc))),
        Some(code) => Err(ApiError::Code {
            code: code.to_string(),
            text: message(&doc, code),
        }),
        None if failed => Err(ApiError::Code {
            code: "?".into(),
            text: message(&doc, ""),
        }),
        None => Ok(doc),
    }
}

/// 1501: the account's credentials (or its main token) no longer work, said plainly,
/// with the cloud's own words when it gives some.
fn wrong_credentials(doc: &Value) -> String {
    let said = doc
        .get("message")
        .or_else(|| doc.get("resultMessage"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty());
    match said {
        Some(m) => format!(
            "wrong credentials ({})",
            m.chars().take(120).collect::<String>()
        ),
        None => "wrong credentials".into(),
    }
}

/// Our text for the code and the cloud's own message, when it gives one.
fn message(doc: &Value, code: &str) -> String {
    let known = code_text(code);
    let text = doc
        .get("message")
        .or_else(|| doc.get("resultMessage"))
        .and_then(Value::as_str)
        .map(str::trim);
    match text {
        Some(m) if !m.is_empty() && known == "unknown error" => m.chars().take(120).collect(),
        Some(m) if !m.is_empty() => {
            format!("{known} ({})", m.chars().take(120).collect::<String>())
        }
        _ => known.to_string(),
    }
}

/// `data` when the answer wraps its payload, else the whole answer.
pub fn data(doc: &Value) -> &Value {
    doc.get("data").filter(|d| !d.is_null()).unwrap_or(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(401, None, b""), Err(ApiError::TokenExpired));
        assert_eq!(
            classify(429, Some(Duration::from_secs(3)), b""),
            Err(ApiError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            })
        );
        assert!(matches!(
            classify(403, None, b"{\"message\":\"Quota exceeded\"}"),
            Err(ApiError::RateLimited { .. })
        ));
        assert!(matches!(
            classify(403, None, b"forbidden"),
            Err(ApiError::Http { status: 403, .. })
        ));
        assert_eq!(classify(502, None, b""), Err(ApiError::Server(502)));
        assert!(matches!(
            classify(200, None, b"<html>"),
            Err(ApiError::BadAnswer(_))
        ));
        assert_eq!(
            classify(200, None, br#"{"code":1402}"#),
            Err(ApiError::TokenExpired)
        );
        assert!(matches!(
            classify(200, None, br#"{"code":"1501","message":"x"}"#),
            Err(ApiError::Refused(_))
        ));
        // The login's own shape (fineemb/Lynk-Co `_login_lynkco`): resultCode/resultMessage.
        assert_eq!(
            classify(
                200,
                None,
                br#"{"resultCode":"1501","resultMessage":"wrong username or password"}"#
            ),
            Err(ApiError::Refused(
                "wrong credentials (wrong username or password)".into()
            ))
        );
        assert!(classify(
            200,
            None,
            br#"{"resultCode":"0","resultMessage":"Success","accessToken":"a"}"#
        )
        .is_ok());
        assert_eq!(
            classify(200, None, br#"{"code":"8160","success":false}"#),
            Err(ApiError::Code {
                code: "8160".into(),
                text: "no permission".into()
            })
        );
        assert!(classify(200, None, br#"{"code":"1000","data":{}}"#).is_ok());
        assert!(ApiError::Server(503).is_transient());
        assert!(!ApiError::TokenExpired.is_transient());
    }

    #[test]
    fn nonces_are_unique_and_uuid_shaped() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
