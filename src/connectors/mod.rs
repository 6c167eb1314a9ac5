//! One connector per upstream. Each owns its I/O and speaks to the bridge only through
//! [`crate::connector`].

pub mod exlive;
pub mod iauto360;
pub mod kingxun;
pub mod xchanger;

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

/// Consecutive failed polls before a polled (cloud) vehicle is shown offline.
pub(crate) const OFFLINE_AFTER: u32 = 3;

/// ±10 %, so that many vehicles (or bridges) do not poll in step.
pub(crate) fn jitter(d: std::time::Duration) -> std::time::Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// The wait after `failures` (≥ 1) transient failures in a row: `base`, 2×, 4×… up to
/// 30 minutes.
pub(crate) fn poll_backoff(base: std::time::Duration, failures: u32) -> std::time::Duration {
    base.saturating_mul(1 << failures.saturating_sub(1).min(12))
        .min(std::time::Duration::from_secs(30 * 60))
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
