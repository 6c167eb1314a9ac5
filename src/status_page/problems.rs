//! The "why not" ring: the newest reasons a device is not shown (unknown ids, unproven
//! links, refused logins, cloud errors and holds), fed from the same places that count
//! them, bounded, newest first. One ring per process (the places that count are deep in
//! the connectors; a global keeps them free of any handle), with a live channel for the
//! page's server-sent events.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

/// Problems kept.
pub const KEPT: usize = 200;
/// Longest detail or peer kept (a peer's text is the peer's choice).
const MAX_TEXT: usize = 200;

/// One reason a device is not shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// RFC 3339, UTC.
    pub at: String,
    /// What kind, e.g. `kingxun_unknown_device`, `exlive_login_refused`.
    pub kind: &'static str,
    /// Who: an address, an account, a connector.
    pub peer: String,
    pub detail: String,
}

pub struct Problems {
    ring: Mutex<VecDeque<Problem>>,
    live: broadcast::Sender<Problem>,
}

impl Default for Problems {
    fn default() -> Self {
        Problems {
            ring: Mutex::new(VecDeque::with_capacity(KEPT)),
            live: broadcast::channel(64).0,
        }
    }
}

fn clipped(text: String) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => text[..at].to_string(),
        None => text,
    }
}

impl Problems {
    pub fn record(&self, kind: &'static str, peer: String, detail: String) {
        let problem = Problem {
            at: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            kind,
            peer: clipped(peer),
            detail: clipped(detail),
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() >= KEPT {
                ring.pop_back();
            }
            ring.push_front(problem.clone());
        }
        // No page open: nobody listens, and that is fine.
        let _ = self.live.send(problem);
    }

    /// The newest `n`, newest first, and how many are kept.
    pub fn recent(&self, n: usize) -> (Vec<Problem>, usize) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        (ring.iter().take(n).cloned().collect(), ring.len())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Problem> {
        self.live.subscribe()
    }
}

/// The process's ring.
pub fn global() -> &'static Problems {
    static RING: OnceLock<Problems> = OnceLock::new();
    RING.get_or_init(Problems::default)
}

/// Records a problem in the process's ring.
pub fn record(kind: &'static str, peer: impl std::fmt::Display, detail: impl Into<String>) {
    global().record(kind, peer.to_string(), detail.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_and_bounded() {
        let p = Problems::default();
        for i in 0..KEPT + 5 {
            p.record("test", format!("10.0.0.{i}"), format!("n{i}"));
        }
        let mut live = p.subscribe();
        p.record("test", "10.0.0.1".into(), "live".into());
        assert_eq!(live.try_recv().map(|p| p.detail), Ok("live".to_string()));
        let (recent, kept) = p.recent(usize::MAX);
        assert_eq!(kept, KEPT);
        assert_eq!(p.recent(3).0[..], recent[..3]);
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].detail, "live");
        assert_eq!(recent[1].detail, format!("n{}", KEPT + 4));
        assert_eq!(recent[KEPT - 1].detail, "n6");
    }

    #[test]
    fn long_text_is_clipped_on_a_char_boundary() {
        let p = Problems::default();
        p.record("test", "é".repeat(500), "x".repeat(500));
        let got = &p.recent(1).0[0];
        assert_eq!(got.peer.chars().count(), MAX_TEXT);
        assert_eq!(got.detail.len(), MAX_TEXT);
    }
}
