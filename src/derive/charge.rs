//! Charging sessions, from the `charging` field: a session starts with a report that
//! says charging and ends with the first that says not.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::trip::MAX_GAP_MS;
use super::Sample;

/// A finished charging session, as the `charge_session` event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChargeSession {
    #[serde(with = "super::rfc3339")]
    pub start: DateTime<Utc>,
    #[serde(with = "super::rfc3339")]
    pub end: DateTime<Utc>,
    pub duration_s: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub soc_from: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub soc_to: Option<f64>,
    /// `soc_to - soc_from`, when both are known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub soc_added: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct OpenCharge {
    start_ms: i64,
    soc_from: Option<f32>,
    /// The latest report that said charging, and its level.
    last_ms: i64,
    soc_last: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChargeTracker {
    open: Option<OpenCharge>,
}

impl ChargeTracker {
    pub(crate) fn report(&mut self, s: &Sample) -> Option<ChargeSession> {
        let soc = s.soc.map(|v| v as f32);
        match (s.charging?, self.open.as_mut()) {
            (true, Some(open)) => {
                open.last_ms = s.at_ms;
                open.soc_last = soc.or(open.soc_last);
                None
            }
            (true, None) => {
                self.open = Some(OpenCharge {
                    start_ms: s.at_ms,
                    soc_from: soc,
                    last_ms: s.at_ms,
                    soc_last: soc,
                });
                None
            }
            (false, Some(open)) => {
                let open = *open;
                self.open = None;
                // After a long silence the charge ended some time in it: take the last
                // report that saw it charging rather than stretching it over the gap.
                let (end_ms, soc_to) = if s.at_ms - open.last_ms > MAX_GAP_MS {
                    (open.last_ms, open.soc_last)
                } else {
                    (s.at_ms, soc.or(open.soc_last))
                };
                session(open, end_ms, soc_to)
            }
            (false, None) => None,
        }
    }

    /// Ends an open session at its last charging report (the vehicle's clock was reset).
    pub fn end(&mut self) -> Option<ChargeSession> {
        let open = self.open.take()?;
        session(open, open.last_ms, open.soc_last)
    }
}

fn session(open: OpenCharge, end_ms: i64, soc_to: Option<f32>) -> Option<ChargeSession> {
    let round1 = |v: f32| (f64::from(v) * 10.0).round() / 10.0;
    let (soc_from, soc_to) = (open.soc_from.map(round1), soc_to.map(round1));
    Some(ChargeSession {
        start: DateTime::from_timestamp_millis(open.start_ms)?,
        end: DateTime::from_timestamp_millis(end_ms)?,
        duration_s: (end_ms - open.start_ms) / 1000,
        soc_from,
        soc_to,
        soc_added: soc_from
            .zip(soc_to)
            .map(|(a, b)| ((b - a) * 10.0).round() / 10.0),
    })
}
