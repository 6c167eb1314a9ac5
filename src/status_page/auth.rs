//! Who may act on the status page: requests from the Home Assistant Supervisor's ingress
//! proxy (only when `bridge.ingress` is on; HA has authenticated the user), or a browser
//! that logged in with `bridge.http_token` (a session cookie, HttpOnly and
//! SameSite=Strict). Every action also carries the CSRF token the page gave out, and is
//! compared in constant time. Wrong tokens wait longer each time, per address block,
//! with the same throttle as every other login of the bridge.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::connectors::throttle::GuessThrottle;

/// The session cookie's name.
pub const COOKIE: &str = "v2m_session";
/// How long a login lasts.
pub const SESSION_FOR: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; a new login past it ends the oldest.
const MAX_SESSIONS: usize = 32;
/// A guesser's wait past this is answered 429 at once instead of held.
const MAX_WAIT: Duration = Duration::from_secs(10);

static LOGIN_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Wrong tokens given to the login since the start.
pub fn login_failures() -> u64 {
    LOGIN_FAILURES.load(Ordering::Relaxed)
}

fn random_hex() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Through Home Assistant's ingress.
    Ingress,
    /// Logged in with the token; its session's CSRF token.
    Session {
        id: String,
        csrf: String,
    },
    Anonymous,
}

impl Who {
    pub fn csrf<'a>(&'a self, auth: &'a Auth) -> Option<&'a str> {
        match self {
            Who::Ingress => Some(&auth.ingress_csrf),
            Who::Session { csrf, .. } => Some(csrf),
            Who::Anonymous => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("this bridge has no bridge.http_token: the page is read-only")]
    NoToken,
    #[error("wrong token")]
    Wrong,
    #[error("too many wrong tokens from this address: try again later")]
    TooMany,
}

struct Session {
    csrf: String,
    until: Instant,
}

pub struct Auth {
    token: Secret,
    ingress_from: Option<IpAddr>,
    /// One CSRF token for ingress requests (they carry no session of ours).
    ingress_csrf: String,
    sessions: Mutex<HashMap<String, Session>>,
    throttle: GuessThrottle,
}

impl Auth {
    pub fn new(token: Secret, ingress_from: Option<IpAddr>) -> Auth {
        Auth {
            token,
            ingress_from,
            ingress_csrf: random_hex(),
            sessions: Mutex::new(HashMap::new()),
            throttle: GuessThrottle::one_at_a_time(),
        }
    }

    pub fn has_token(&self) -> bool {
        !self.token.is_empty()
    }

    pub fn ingress(&self) -> bool {
        self.ingress_from.is_some()
    }

    /// The asker, by its address and its session cookie.
    pub fn who(&self, peer: IpAddr, cookie: Option<&str>) -> Who {
        if self.ingress_from == Some(peer) {
            return Who::Ingress;
        }
        let Some(id) = cookie.filter(|_| self.has_token()) else {
            return Who::Anonymous;
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.until > now);
        // A map lookup by the secret's hash is not constant-time; a match is confirmed so.
        match sessions.iter().find(|(k, _)| same(k, id)) {
            Some((k, s)) => Who::Session {
                id: k.clone(),
                csrf: s.csrf.clone(),
            },
            None => Who::Anonymous,
        }
    }

    /// Whether `given` is the asker's CSRF token.
    pub fn csrf_ok(&self, who: &Who, given: &str) -> bool {
        who.csrf(self).is_some_and(|c| same(c, given))
    }

    /// A login: the new session's id (the cookie's value) when `given` is the token.
    pub async fn login(&self, peer: IpAddr, given: &str) -> Result<String, LoginError> {
        if !self.has_token() {
            return Err(LoginError::NoToken);
        }
        let Ok(attempt) = self.throttle.attempt(peer, MAX_WAIT).await else {
            return Err(LoginError::TooMany);
        };
        if !same(self.token.expose(), given) {
            attempt.failed();
            if let Some(n) = crate::observe::count_sampled(&LOGIN_FAILURES) {
                tracing::warn!(event = "page_login_refused", peer = %peer, total = n,
                    "status page: wrong bridge.http_token");
            }
            super::problems::record(
                "page_login_refused",
                peer,
                "wrong bridge.http_token on the status page",
            );
            return Err(LoginError::Wrong);
        }
        attempt.succeeded();
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.until)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: random_hex(),
                until: Instant::now() + SESSION_FOR,
            },
        );
        tracing::info!(event = "page_login", peer = %peer, "status page: logged in");
        Ok(id)
    }

    pub fn logout(&self, who: &Who) {
        if let Who::Session { id, .. } = who {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const SUPERVISOR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(172, 30, 32, 2));

    #[tokio::test]
    async fn a_login_gives_a_session_with_its_own_csrf() {
        let auth = Auth::new(Secret::new("0123456789abcdef"), None);
        assert_eq!(auth.login(PEER, "nope").await, Err(LoginError::Wrong));
        let id = auth.login(PEER, "0123456789abcdef").await.unwrap();
        let who = auth.who(PEER, Some(&id));
        let Who::Session { csrf, .. } = &who else {
            panic!("not a session: {who:?}");
        };
        assert!(auth.csrf_ok(&who, csrf));
        assert!(!auth.csrf_ok(&who, ""));
        assert_eq!(auth.who(PEER, Some("forged")), Who::Anonymous);
        auth.logout(&who);
        assert_eq!(auth.who(PEER, Some(&id)), Who::Anonymous);
    }

    #[tokio::test]
    async fn ingress_only_from_its_address_and_only_when_on() {
        let off = Auth::new(Secret::default(), None);
        assert_eq!(off.who(SUPERVISOR, None), Who::Anonymous);
        assert_eq!(off.login(PEER, "x").await, Err(LoginError::NoToken));
        let on = Auth::new(Secret::default(), Some(SUPERVISOR));
        assert_eq!(on.who(SUPERVISOR, None), Who::Ingress);
        assert_eq!(on.who(PEER, None), Who::Anonymous);
        assert!(!on.csrf_ok(&Who::Anonymous, ""));
        assert!(on.csrf_ok(&Who::Ingress, &on.ingress_csrf.clone()));
    }
}
