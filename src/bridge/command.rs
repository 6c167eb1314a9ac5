//! Turning a `/set` message into a validated [`Command`]. Pure: no I/O, no clock reads.

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::model::{Capability, Command, GuardPower};

/// A parsed `/set` payload: plain text (`UNLOCK`, `PRESS`, `200W`, `25`) or JSON
/// `{"action": "...", "code": "...", "id": "...", "ts": <unix s or ms>}`.
#[derive(Debug, Default, PartialEq)]
pub struct Payload {
    pub action: String,
    pub code: Option<String>,
    pub id: Option<String>,
    /// When the sender issued the command, in unix milliseconds.
    pub ts_ms: Option<i64>,
}

#[derive(Deserialize)]
struct JsonPayload {
    #[serde(default, alias = "state", alias = "value")]
    action: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    ts: Option<i64>,
}

/// Largest `/set` payload looked at; anything bigger is refused unread.
pub const MAX_PAYLOAD: usize = 4096;

pub fn parse_payload(raw: &[u8]) -> Result<Payload, String> {
    if raw.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload of {} bytes exceeds {MAX_PAYLOAD}",
            raw.len()
        ));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| "payload is not UTF-8".to_string())?
        .trim();
    if text.starts_with('{') {
        let p: JsonPayload =
            serde_json::from_str(text).map_err(|e| format!("bad JSON payload: {e}"))?;
        let action = match p.action {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(other) => return Err(format!("`action` must be a string or number, got {other}")),
            None => "PRESS".to_string(),
        };
        // Seconds or milliseconds: anything below 10^11 is seconds (year 5138 in ms).
        let ts_ms = p.ts.map(|t| {
            if t.abs() < 100_000_000_000 {
                t.saturating_mul(1000)
            } else {
                t
            }
        });
        let id =
            p.id.map(|s| s.chars().filter(|c| !c.is_control()).take(64).collect());
        Ok(Payload {
            action: action.trim().to_string(),
            code: p.code,
            id,
            ts_ms,
        })
    } else {
        Ok(Payload {
            action: text.to_string(),
            ..Default::default()
        })
    }
}

/// What a button runs on: its `payload_press`, exactly (or the JSON form without an
/// `action`, which means the same).
pub use crate::controls::PRESS;

/// Shown, at most this long, when a payload is refused (it may be anything).
fn shown(action: &str) -> String {
    let mut s: String = action
        .chars()
        .filter(|c| !c.is_control())
        .take(32)
        .collect();
    if action.chars().count() > 32 {
        s.push('…');
    }
    s
}

/// A poll interval: whole minutes `min..=max`, as HA's number sends them (`15`, `15.0`);
/// NaN, infinities, fractions, negatives and text are refused.
fn whole_minutes(action: &str, min: u16, max: u16) -> Result<u16, String> {
    let range = || format!("must be {min} to {max} minutes");
    let v: f64 = action
        .parse()
        .map_err(|_| format!("takes whole minutes, not `{}`", shown(action)))?;
    if !v.is_finite() || v.fract() != 0.0 {
        return Err(format!("takes whole minutes, not `{}`", shown(action)));
    }
    if !(f64::from(min)..=f64::from(max)).contains(&v) {
        return Err(range());
    }
    Ok(v as u16)
}

/// Maps an entity key and action onto a command the vehicle supports. Every command runs
/// only on its exact payloads (those the HA entity sends): an empty payload (how retained
/// messages are cleared), `NO`, `\0` or `unlock` in lower case is refused, never guessed.
pub fn to_command(entity: &str, action: &str, caps: &[Capability]) -> Result<Command, String> {
    let has = |c: &Capability| caps.contains(c);
    let unsupported = || format!("vehicle does not support `{entity}`");
    let press = |cmd: Command| {
        if action == PRESS {
            Ok(cmd)
        } else {
            Err(format!(
                "`{entity}` runs only on the payload {PRESS}, not `{}`",
                shown(action)
            ))
        }
    };
    if let Some(control) = crate::controls::by_key(entity).filter(|c| has(&c.capability)) {
        return control
            .command(action)
            .ok_or_else(|| match control.payloads {
                [(PRESS, _, _)] => format!(
                    "`{entity}` runs only on the payload {PRESS}, not `{}`",
                    shown(action)
                ),
                payloads => format!(
                    "{entity} takes {}, not `{}`",
                    payloads
                        .iter()
                        .map(|p| p.0)
                        .collect::<Vec<_>>()
                        .join(" or "),
                    shown(action)
                ),
            });
    }
    let cmd = match entity {
        "guard_power" if has(&Capability::GuardPower) => Command::Guard(
            GuardPower::parse(action)
                .ok_or_else(|| format!("guard_power takes one of {:?}", GuardPower::OPTIONS))?,
        ),
        "max_speed" => {
            let max = caps
                .iter()
                .find_map(|c| match c {
                    Capability::MaxSpeed { max } => Some(*max),
                    _ => None,
                })
                .ok_or_else(unsupported)?;
            let v: f64 = action
                .parse()
                .map_err(|_| format!("max_speed takes a number, not `{action}`"))?;
            if !(1.0..=f64::from(max)).contains(&v) {
                return Err(format!("max_speed must be 1 to {max} km/h"));
            }
            Command::MaxSpeed(v.round() as u16)
        }
        "poll_interval" | "poll_interval_active" => {
            let (min, max) = caps
                .iter()
                .find_map(|c| match c {
                    Capability::PollIntervals { min, max } => Some((*min, *max)),
                    _ => None,
                })
                .ok_or_else(unsupported)?;
            let minutes =
                whole_minutes(action, min, max).map_err(|why| format!("{entity} {why}"))?;
            match entity {
                "poll_interval" => Command::PollInterval(minutes),
                _ => Command::PollIntervalActive(minutes),
            }
        }
        _ => match entity.strip_prefix("cmd_") {
            Some(name) if has(&Capability::Passthrough(name.to_string())) => {
                press(Command::Passthrough(name.to_string()))?
            }
            _ => return Err(unsupported()),
        },
    };
    Ok(cmd)
}

/// Wrong PINs allowed per vehicle before it locks out, and across all vehicles.
pub const PIN_TRIES_PER_VEHICLE: u32 = 5;
pub const PIN_TRIES_OVERALL: u32 = 20;
/// The first lockout; each further wrong PIN doubles it, up to `PIN_LOCKOUT_MAX`.
pub const PIN_LOCKOUT: std::time::Duration = std::time::Duration::from_secs(60);
pub const PIN_LOCKOUT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

/// Wrong PINs in a row and the lockout they earned (sans-IO: the caller gives the time).
#[derive(Debug, Default, Clone, Copy)]
pub struct PinTries {
    failures: u32,
    locked_until: Option<std::time::Instant>,
}

impl PinTries {
    /// Seconds of lockout left, if locked.
    pub fn locked(&self, now: std::time::Instant) -> Option<u64> {
        self.locked_until
            .filter(|until| *until > now)
            .map(|until| (until - now).as_secs().max(1))
    }

    /// Counts a wrong PIN; past `allowed`, locks out for 1 min, doubling, capped at 1 h.
    pub fn failed(&mut self, now: std::time::Instant, allowed: u32) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= allowed {
            let doublings = (self.failures - allowed).min(16);
            let lockout = PIN_LOCKOUT
                .saturating_mul(1 << doublings)
                .min(PIN_LOCKOUT_MAX);
            self.locked_until = Some(now + lockout);
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        *self = PinTries::default();
    }
}

/// Compares a PIN in constant time (for equal lengths; a length mismatch is rejected
/// after the same amount of work).
pub fn pin_matches(expected: &str, given: Option<&str>) -> bool {
    let given = given.unwrap_or("").as_bytes();
    let expected = expected.as_bytes();
    if given.len() != expected.len() {
        // Burn comparable time so a wrong length is not cheaper to detect.
        let _ = expected.ct_eq(expected);
        return false;
    }
    expected.ct_eq(given).into()
}

/// Whether a command stamped `ts_ms` is too old (or too far in the future) at `now_ms`.
pub fn is_expired(ts_ms: Option<i64>, now_ms: i64, max_age_ms: i64) -> bool {
    match ts_ms {
        Some(ts) => {
            now_ms.saturating_sub(ts) > max_age_ms || ts.saturating_sub(now_ms) > max_age_ms
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_json_payloads() {
        assert_eq!(parse_payload(b" UNLOCK\n").unwrap().action, "UNLOCK");
        let p = parse_payload(br#"{"action":"UNLOCK","code":"1234","id":"a1","ts":1700000000}"#)
            .unwrap();
        assert_eq!(p.action, "UNLOCK");
        assert_eq!(p.code.as_deref(), Some("1234"));
        assert_eq!(p.id.as_deref(), Some("a1"));
        assert_eq!(p.ts_ms, Some(1_700_000_000_000));
        assert_eq!(
            parse_payload(br#"{"ts":1700000000123}"#).unwrap().ts_ms,
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_payload(br#"{"value":25}"#).unwrap().action, "25");
        assert!(parse_payload(b"{not json").is_err());
        assert!(parse_payload(&[0xff, 0xfe]).is_err());
        assert!(parse_payload(&vec![b'a'; MAX_PAYLOAD + 1]).is_err());
    }

    #[test]
    fn commands_need_capabilities() {
        let caps = vec![
            Capability::Lock,
            Capability::MaxSpeed { max: 45 },
            Capability::Passthrough("reboot".into()),
        ];
        assert_eq!(to_command("lock", "UNLOCK", &caps), Ok(Command::Unlock));
        assert!(to_command("lock", "unlock", &caps).is_err(), "near miss");
        assert_eq!(to_command("lock", "LOCK", &caps), Ok(Command::Lock));
        assert!(to_command("lock", "OPEN", &caps).is_err());
        assert!(to_command("engine", "ON", &caps).is_err());
        assert_eq!(
            to_command("max_speed", "25", &caps),
            Ok(Command::MaxSpeed(25))
        );
        assert!(to_command("max_speed", "46", &caps).is_err());
        assert!(to_command("max_speed", "fast", &caps).is_err());
        assert_eq!(
            to_command("cmd_reboot", "PRESS", &caps),
            Ok(Command::Passthrough("reboot".into()))
        );
        assert!(to_command("cmd_other", "PRESS", &caps).is_err());
        // Buttons: PRESS only; an empty payload, NUL, NO or a near miss runs nothing.
        for bad in ["", "\0", "NO", "press", "PRESS ", "1"] {
            assert!(to_command("cmd_reboot", bad, &caps).is_err(), "{bad:?}");
        }
        assert!(to_command("horn", "PRESS", &caps).is_err());
    }

    #[test]
    fn pin_lockout_grows() {
        let t0 = std::time::Instant::now();
        let mut tries = PinTries::default();
        for _ in 0..4 {
            tries.failed(t0, 5);
            assert_eq!(tries.locked(t0), None, "four wrong PINs lock nothing");
        }
        tries.failed(t0, 5);
        assert_eq!(tries.locked(t0), Some(60));
        tries.failed(t0, 5);
        assert_eq!(tries.locked(t0), Some(120), "doubling");
        for _ in 0..20 {
            tries.failed(t0, 5);
        }
        assert_eq!(tries.locked(t0), Some(3600), "capped");
        assert_eq!(tries.locked(t0 + PIN_LOCKOUT_MAX), None, "and it ends");
        tries.reset();
        assert_eq!(tries.failures(), 0);
    }

    #[test]
    fn pin_comparison() {
        assert!(pin_matches("1234", Some("1234")));
        assert!(!pin_matches("1234", Some("1235")));
        assert!(!pin_matches("1234", Some("12345")));
        assert!(!pin_matches("1234", None));
    }

    #[test]
    fn expiry() {
        assert!(!is_expired(None, 1_000_000, 60_000));
        assert!(!is_expired(Some(990_000), 1_000_000, 60_000));
        assert!(is_expired(Some(900_000), 1_000_000, 60_000));
        assert!(is_expired(Some(1_100_000), 1_000_000, 60_000));
    }
}
