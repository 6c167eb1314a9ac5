//! One connector per upstream. Each owns its I/O and speaks to the bridge only through
//! [`crate::connector`].

pub mod client;
#[cfg(test)]
pub mod echo;
pub mod exlive;
pub mod iauto360;
pub mod kingxun;
pub mod link;
pub mod poll;
pub mod polling;
pub mod tasks;
pub mod throttle;
pub mod upstream_ids;
pub mod xchanger;

pub use link::{listen, LISTEN_BACKLOG};
pub use tasks::Tasks;
pub use throttle::GuessThrottle;
pub use upstream_ids::UpstreamIds;

/// The HTTP client of a polling connector: bounded request and connect times, our user
/// agent, a small idle pool.
pub(crate) fn http_client(timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(10).min(timeout))
        .user_agent(concat!("vehicle2mqtt/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(4)
        .build()
}

/// Credentials and tokens cross a plain `http://` upstream unencrypted: say so at start,
/// unless it is this machine (tests, demo, a local proxy).
pub(crate) fn warn_if_plain_http(connector: &str, base_url: &str) {
    let Some(rest) = base_url.strip_prefix("http://") else {
        return;
    };
    let local =
        rest.starts_with("127.") || rest.starts_with("localhost") || rest.starts_with("[::1]");
    if !local {
        tracing::warn!(
            event = "plain_http_upstream",
            connector,
            base_url,
            "the upstream is plain http://: credentials and tokens travel unencrypted"
        );
    }
}

/// Reads a whole response body, refusing more than `max` bytes (`None`).
pub(crate) async fn read_bounded(
    resp: &mut reqwest::Response,
    max: usize,
) -> reqwest::Result<Option<Vec<u8>>> {
    let mut raw = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if raw.len() + chunk.len() > max {
            return Ok(None);
        }
        raw.extend_from_slice(&chunk);
    }
    Ok(Some(raw))
}

/// Newest value wins across an upstream's services: the time each published field was
/// measured. A value measured before the one already shown (a history record, an older
/// trip, a late push) is dropped instead of overwriting it.
#[derive(Debug, Default)]
pub struct Freshness {
    at: std::collections::HashMap<crate::model::Field, i64>,
    position: Option<i64>,
}

impl Freshness {
    /// Removes from `state` every field a newer value already answers and records the rest
    /// as measured at `at` (unix seconds). Returns how many were dropped.
    pub fn admit(&mut self, state: &mut crate::model::VehicleState, at: i64) -> usize {
        let stale: Vec<_> = state
            .fields()
            .filter(|f| self.at.get(f).is_some_and(|newer| *newer > at))
            .collect();
        for f in &stale {
            state.values.remove(f);
            state.cleared.remove(f);
        }
        for f in state.fields().collect::<Vec<_>>() {
            self.at.insert(f, at);
        }
        let mut dropped = stale.len();
        if state.position.is_some() {
            if self.position.is_some_and(|newer| newer > at) {
                state.position = None;
                dropped += 1;
            } else {
                self.position = Some(at);
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Field, Value, VehicleState};
    use std::net::IpAddr;

    #[test]
    fn peer_links_are_counted_per_address_and_freed_on_drop() {
        let peers = std::sync::Arc::new(PeerLinks::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = peers.admit(a, 2).unwrap();
        let _second = peers.admit(a, 2).unwrap();
        assert!(peers.admit(a, 2).is_none(), "a third link from one address");
        assert!(
            peers.admit(b, 2).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(peers.admit(a, 2).is_some(), "a closed link frees its slot");
    }

    #[test]
    fn accept_failures_back_off_and_log_sparsely() {
        let mut b = AcceptBackoff::default();
        let runs: Vec<(u64, bool)> = (0..10)
            .map(|_| {
                let (wait, log) = b.failed();
                (wait.as_millis() as u64, log)
            })
            .collect();
        assert_eq!(runs[0], (20, true));
        assert_eq!(runs[2], (80, false), "the 3rd failure is not logged");
        assert_eq!(runs[3], (160, true));
        assert_eq!(runs[9].0, 1280, "capped");
        assert_eq!(runs.iter().filter(|r| r.1).count(), 4, "1st, 2nd, 4th, 8th");
        b.succeeded();
        assert_eq!(b.failed(), (std::time::Duration::from_millis(20), true));
    }

    #[test]
    fn an_older_value_never_overwrites_a_newer_one() {
        let mut f = Freshness::default();
        let mut live = VehicleState::default();
        live.set_f64(Field::AuxBatteryVoltage, 12.6);
        assert_eq!(f.admit(&mut live, 1_000), 0);
        let mut history = VehicleState::default();
        history.set_f64(Field::AuxBatteryVoltage, 11.9);
        history.set_f64(Field::Odometer, 5.0);
        assert_eq!(f.admit(&mut history, 400), 1, "the hour-old record loses");
        assert!(history.get(Field::AuxBatteryVoltage).is_none());
        assert_eq!(history.get(Field::Odometer), Some(&Value::Int(5)));
        let mut newer = VehicleState::default();
        newer.set_f64(Field::AuxBatteryVoltage, 12.4);
        assert_eq!(f.admit(&mut newer, 1_001), 0);
        assert_eq!(
            newer.get(Field::AuxBatteryVoltage),
            Some(&Value::Float(12.4))
        );
    }
}

/// Bad-input logging that a flood cannot turn into a full disk: the first few lines of
/// each link, and per listener at most `burst` lines per `window`; what is held back is
/// counted and reported in one summary line once the window has passed.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: std::time::Duration,
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl LogLimiter {
    pub fn new(burst: u32, window: std::time::Duration) -> LogLimiter {
        LogLimiter {
            burst,
            window,
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// Whether the `nth_in_a_row` bad input of one link may be logged: the first few of
    /// a link, within this limiter's budget; what the budget held back is summarised once
    /// (every occurrence is counted elsewhere).
    pub fn allow_bad_input(&self, nth_in_a_row: u32, connector: &'static str) -> bool {
        if nth_in_a_row > 3 {
            return false; // this link said enough
        }
        match self.allow() {
            Ok(allowed) => allowed,
            Err(held) => {
                tracing::warn!(
                    event = "bad_input_summary",
                    connector,
                    suppressed = held,
                    "bad input not logged one by one (see the counters)"
                );
                true
            }
        }
    }

    /// Whether this occurrence may be logged; when a new window opens after suppressed
    /// lines, `Err(n)`: log one summary of the `n` held back (and this one is allowed).
    pub fn allow(&self) -> Result<bool, u64> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(false);
        };
        let now = std::time::Instant::now();
        if now.duration_since(s.0) >= self.window {
            let held = s.2;
            *s = (now, 1, 0);
            return if held > 0 { Err(held) } else { Ok(true) };
        }
        if s.1 < self.burst {
            s.1 += 1;
            Ok(true)
        } else {
            s.2 += 1;
            Ok(false)
        }
    }
}

/// Bad frames or messages in a row after which a listener closes a link: a peer that
/// loses sync once recovers on its next good one, a flood costs at most this many.
pub const BAD_IN_A_ROW: u32 = 20;

/// Links open per source address, so one peer cannot take every slot of a listener.
#[derive(Default)]
pub struct PeerLinks {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One admitted link; dropping it frees its address's slot.
pub struct PeerLink {
    peers: std::sync::Arc<PeerLinks>,
    ip: std::net::IpAddr,
}

impl PeerLinks {
    /// A slot for a link from `ip`, or `None` when it already has `max` open.
    pub fn admit(
        self: &std::sync::Arc<Self>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<PeerLink> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerLink {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        if let Ok(mut open) = self.peers.open.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

/// After a failed accept (usually no file descriptor left): wait 20 ms doubling to
/// 1.3 s while failures go on, and log only the 1st, 2nd, 4th, 8th... Shared by every
/// listener, so none spins or floods the log when the process runs out of descriptors.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// The wait before the next accept, and whether this failure is worth a log line.
    pub fn failed(&mut self) -> (std::time::Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        let wait = std::time::Duration::from_millis(10 << self.failures.min(7));
        (wait, self.failures.is_power_of_two())
    }
}

/// The address block a peer counts in for failure bookkeeping: its /24 (IPv4) or /64
/// (IPv6), so an attacker rotating through many addresses of one block is still one peer.
pub fn address_block(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(o[0], o[1], o[2], 0))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_burst_then_one_summary() {
        let l = LogLimiter::new(3, std::time::Duration::from_millis(50));
        let allowed = (0..1000).filter(|_| l.allow() == Ok(true)).count();
        assert_eq!(allowed, 3);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(l.allow(), Err(997), "one summary of what was held back");
        assert_eq!(l.allow(), Ok(true));
    }

    #[test]
    fn address_blocks() {
        assert_eq!(
            address_block("127.4.5.6".parse().unwrap()),
            "127.4.5.0".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            address_block("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<std::net::IpAddr>().unwrap()
        );
    }
}
