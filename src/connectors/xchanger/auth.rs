//! Tokens: obtained with whichever credentials the config gives, kept in `state_dir`
//! (0600, atomic) and reused after a restart, refreshed one at a time however many
//! requests wait, rotated pairs persisted at once. Refused credentials are remembered
//! for [`REFUSED_BACKOFF`]: the account is never hammered with logins.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::api::{data, Api, ApiError, Body, Host};
use super::config::{Credentials, XchangerConfig};
use super::Counters;

/// After refused credentials, no login for this long.
pub const REFUSED_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// Tokens younger than this that the cloud calls invalid mean the account itself is
/// refused: no new login for [`REFUSED_BACKOFF`].
const MIN_TOKEN_AGE: Duration = Duration::from_secs(10 * 60);
/// Refresh this long before the access token runs out.
const REFRESH_AHEAD_S: i64 = 300;
const TOKEN_FILE: &str = "xchanger_tokens.json";

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    pub account: String,
    pub access_token: String,
    pub refresh_token: String,
    pub user_id: String,
    /// Unix seconds; `None` when the cloud did not say.
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("account", &self.account)
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

struct State {
    tokens: Option<Tokens>,
    /// Bumped whenever the tokens change: a request that failed with generation `g`
    /// refreshes only if nobody did since.
    generation: u64,
    refused: Option<(Instant, String)>,
    /// When the current tokens were obtained or loaded.
    obtained_at: Instant,
    /// Configured tokens and auth codes are tried once; after that only login or the
    /// persisted/rotated pair can help.
    configured_tokens_used: bool,
    auth_code_used: bool,
}

pub struct Auth {
    cfg: XchangerConfig,
    state_dir: PathBuf,
    counters: Arc<Counters>,
    state: Mutex<State>,
}

impl Auth {
    pub fn new(cfg: XchangerConfig, state_dir: PathBuf, counters: Arc<Counters>) -> Auth {
        let tokens = load(&state_dir, &cfg.account());
        if tokens.is_some() {
            tracing::info!(
                event = "xchanger_tokens_loaded",
                "reusing the token pair saved in state_dir"
            );
        }
        Auth {
            cfg,
            state_dir,
            counters,
            state: Mutex::new(State {
                tokens,
                generation: 0,
                refused: None,
                // Saved tokens may be long dead: never count them as fresh.
                obtained_at: Instant::now()
                    .checked_sub(MIN_TOKEN_AGE)
                    .unwrap_or_else(Instant::now),
                configured_tokens_used: false,
                auth_code_used: false,
            }),
        }
    }

    /// A usable token pair and its generation; logs in or refreshes when needed.
    pub async fn tokens(&self, api: &Api) -> Result<(Tokens, u64), ApiError> {
        let mut st = self.state.lock().await;
        if let Some((until, reason)) = &st.refused {
            if Instant::now() < *until {
                return Err(ApiError::Refused(reason.clone()));
            }
            st.refused = None;
        }
        if st.tokens.is_none() {
            self.obtain(&mut st, api).await?;
        } else if st
            .tokens
            .as_ref()
            .and_then(|t| t.expires_at)
            .is_some_and(|at| at - chrono::Utc::now().timestamp() < REFRESH_AHEAD_S)
        {
            self.refresh(&mut st, api).await?;
        }
        match &st.tokens {
            Some(t) => Ok((t.clone(), st.generation)),
            None => Err(ApiError::Refused("no tokens".into())),
        }
    }

    /// A request with generation `generation` was told its token expired: refresh once,
    /// unless another request already did.
    pub async fn expired(&self, api: &Api, generation: u64) -> Result<(), ApiError> {
        let mut st = self.state.lock().await;
        if st.generation != generation {
            return Ok(());
        }
        if st.tokens.is_none() {
            return self.obtain(&mut st, api).await;
        }
        self.refresh(&mut st, api).await
    }

    /// A request with generation `generation` was answered "main token invalid" (1501):
    /// log in again once, unless the tokens are fresh (then the account is refused).
    pub async fn rejected(&self, api: &Api, generation: u64, reason: &str) -> Result<(), ApiError> {
        let mut st = self.state.lock().await;
        if st.generation != generation {
            return Ok(());
        }
        if st.obtained_at.elapsed() < MIN_TOKEN_AGE {
            self.counters.logins_refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(event = "xchanger_tokens_rejected", reason = %reason,
                retry_in_s = REFUSED_BACKOFF.as_secs(), "fresh tokens rejected; not logging in again soon");
            st.refused = Some((Instant::now() + REFUSED_BACKOFF, reason.to_string()));
            return Err(ApiError::Refused(reason.to_string()));
        }
        tracing::warn!(event = "xchanger_tokens_rejected", reason = %reason, "tokens rejected; logging in again");
        st.tokens = None;
        self.obtain(&mut st, api).await
    }

    async fn refresh(&self, st: &mut State, api: &Api) -> Result<(), ApiError> {
        let Some(old) = st.tokens.clone() else {
            return self.obtain(st, api).await;
        };
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let answer = api
            .call(
                Host::Auth,
                Method::PUT,
                "/auth/account/token",
                &[],
                Body::Json(json!({"refreshToken": old.refresh_token})),
                Some(&old.access_token),
            )
            .await;
        match answer.and_then(|doc| self.tokens_from(&doc, Some(&old.user_id))) {
            Ok(tokens) => {
                tracing::info!(event = "xchanger_token_refreshed", "access token refreshed");
                self.store(st, tokens);
                Ok(())
            }
            Err(e) if e.is_transient() => Err(e),
            Err(e) => {
                tracing::warn!(event = "xchanger_refresh_refused", error = %e, "the refresh token was refused; logging in again");
                st.tokens = None;
                self.obtain(st, api).await
            }
        }
    }

    /// Gets a fresh pair from the credentials, in config order.
    async fn obtain(&self, st: &mut State, api: &Api) -> Result<(), ApiError> {
        let mut last = ApiError::Refused("no usable credentials left; give new ones".into());
        for way in self.cfg.credentials() {
            let result = match way {
                Credentials::Password => self.login(api).await,
                Credentials::AuthCode if !st.auth_code_used => {
                    st.auth_code_used = true;
                    self.exchange_code(api).await
                }
                Credentials::Tokens if !st.configured_tokens_used => {
                    st.configured_tokens_used = true;
                    Ok(Tokens {
                        account: self.cfg.account(),
                        access_token: self.cfg.access_token.expose().to_string(),
                        refresh_token: self.cfg.refresh_token.expose().to_string(),
                        user_id: self.cfg.user_id.clone(),
                        expires_at: None,
                    })
                }
                _ => continue,
            };
            match result {
                Ok(tokens) => {
                    tracing::info!(event = "xchanger_logged_in", how = ?way, user_id = %tokens.user_id, "xchanger tokens obtained");
                    self.store(st, tokens);
                    return Ok(());
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::warn!(event = "xchanger_credentials_refused", how = ?way, error = %e, "credentials refused");
                    last = match e {
                        ApiError::Refused(r) => ApiError::Refused(r),
                        other => ApiError::Refused(other.to_string()),
                    };
                }
            }
        }
        self.counters.logins_refused.fetch_add(1, Ordering::Relaxed);
        let reason = last.to_string();
        tracing::error!(event = "xchanger_login_refused", reason = %reason,
            retry_in_s = REFUSED_BACKOFF.as_secs(), "xchanger refused every credential; not retrying soon");
        st.refused = Some((Instant::now() + REFUSED_BACKOFF, reason));
        Err(last)
    }

    async fn login(&self, api: &Api) -> Result<Tokens, ApiError> {
        self.counters.logins.fetch_add(1, Ordering::Relaxed);
        let password = hex::encode(Md5::digest(self.cfg.password.expose().as_bytes()));
        let doc = api
            .call(
                Host::Auth,
                Method::POST,
                "/api/v1/user/login",
                &[],
                Body::Form(vec![
                    ("username".into(), self.cfg.username.clone()),
                    ("password".into(), password),
                ]),
                None,
            )
            .await?;
        self.tokens_from(&doc, None)
    }

    async fn exchange_code(&self, api: &Api) -> Result<Tokens, ApiError> {
        self.counters.logins.fetch_add(1, Ordering::Relaxed);
        let doc = api
            .call(
                Host::Auth,
                Method::POST,
                "/auth/account/token",
                &[("identity_type", "lid")],
                Body::Json(json!({
                    "redirectUri": self.cfg.redirect_uri,
                    "authCode": self.cfg.auth_code.expose(),
                })),
                None,
            )
            .await?;
        self.tokens_from(&doc, None)
    }

    fn tokens_from(&self, doc: &Value, user_id: Option<&str>) -> Result<Tokens, ApiError> {
        let d = data(doc);
        let s = |k: &str| match d.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let (Some(access_token), Some(refresh_token)) = (s("accessToken"), s("refreshToken"))
        else {
            return Err(ApiError::BadAnswer(
                "token answer without accessToken/refreshToken".into(),
            ));
        };
        let user_id = s("userId")
            .or_else(|| user_id.map(str::to_string))
            .or_else(|| (!self.cfg.user_id.is_empty()).then(|| self.cfg.user_id.clone()))
            .ok_or_else(|| ApiError::BadAnswer("token answer without userId".into()))?;
        let expires_at = d
            .get("expiresIn")
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
            .filter(|s| *s > 0)
            .map(|s| chrono::Utc::now().timestamp() + s);
        Ok(Tokens {
            account: self.cfg.account(),
            access_token,
            refresh_token,
            user_id,
            expires_at,
        })
    }

    fn store(&self, st: &mut State, tokens: Tokens) {
        match serde_json::to_vec(&tokens) {
            // The writer's thread does the fsync, at once: never on this worker, never
            // under the state's lock. A failure is logged as `xchanger_tokens_not_saved`
            // (a restart then needs to log in again).
            Ok(bytes) => crate::state_dir::writer::write(
                &self.state_dir,
                TOKEN_FILE,
                bytes,
                "xchanger_tokens_not_saved",
            ),
            Err(e) => tracing::error!(event = "xchanger_tokens_not_saved", error = %e),
        }
        st.tokens = Some(tokens);
        st.obtained_at = Instant::now();
        st.generation += 1;
    }
}

fn load(dir: &std::path::Path, account: &str) -> Option<Tokens> {
    let bytes = std::fs::read(dir.join(TOKEN_FILE)).ok()?;
    match serde_json::from_slice::<Tokens>(&bytes) {
        Ok(t) if t.account == account => Some(t),
        Ok(_) => {
            tracing::info!(
                event = "xchanger_tokens_other_account",
                "saved tokens belong to another account; ignoring them"
            );
            None
        }
        Err(e) => {
            tracing::warn!(event = "xchanger_tokens_unreadable", error = %e, "saved tokens unreadable; ignoring them");
            None
        }
    }
}
