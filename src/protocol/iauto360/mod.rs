//! iauto360 (车智汇) open platform, docs/protocols/iauto360.md: the pure parts.
//!
//! Every call is `POST /srv/{service}/{openId}/{sign}` with the JSON body
//! `{"time": <unix ms>, "data": {...}, "plan": <optional>}` where
//! `sign = md5hex(openId + body + secureCode + time)` over the exact body bytes sent.
//! Replies are `{"flag": 1|0, "data": {...}, "err": ...}`. Event pushes carry
//! `versign = md5hex(eventsJson + secureCode)`.
//!
//! `services`: every service answer and pushed event → the shared model.

pub mod services;

use md5::{Digest, Md5};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The request body, serialised once: these exact bytes are signed and sent.
pub fn request_body(time_ms: i64, data: &Value, plan: Option<i64>) -> String {
    match plan {
        Some(plan) => json!({"time": time_ms, "data": data, "plan": plan}).to_string(),
        None => json!({"time": time_ms, "data": data}).to_string(),
    }
}

/// `md5hex(openId + body + secureCode + time)`, lowercase.
pub fn sign(open_id: &str, body: &str, secure_code: &str, time_ms: i64) -> String {
    md5_hex(&[
        open_id.as_bytes(),
        body.as_bytes(),
        secure_code.as_bytes(),
        time_ms.to_string().as_bytes(),
    ])
}

/// `/srv/{service}/{openId}/{sign}`.
pub fn path(service: u16, open_id: &str, sign: &str) -> String {
    format!("/srv/{service}/{open_id}/{sign}")
}

/// Checks an event push's `versign` in constant time.
///
/// The platform's `vehicle_events.md` gives `md5hex(events + secureCode)` since its 2019
/// revision and SHA-1 of the same string in its 2018 ones (docs/protocols/iauto360.md,
/// "Event push"). Both are keyed by the shared secret, so both are accepted, told apart by
/// length (32 or 40 hex digits).
pub fn verify_push(events_json: &str, secure_code: &str, versign: &str) -> bool {
    let given = versign.trim().to_ascii_lowercase();
    let expected = match given.len() {
        32 => md5_hex(&[events_json.as_bytes(), secure_code.as_bytes()]),
        40 => {
            use sha1::Sha1;
            let mut h = Sha1::new();
            h.update(events_json.as_bytes());
            h.update(secure_code.as_bytes());
            hex::encode(h.finalize())
        }
        _ => return false,
    };
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// `versign` as this project's fake platform and tests make it (MD5;
/// docs/protocols/iauto360.md, "Event push").
pub fn push_signature(events_json: &str, secure_code: &str) -> String {
    md5_hex(&[events_json.as_bytes(), secure_code.as_bytes()])
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplyError {
    #[error("the platform refused the call: {0}")]
    Refused(String),
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// `flag 1` → `data`; `flag 0` → the typed error with `err`.
pub fn reply_data(reply: &Value) -> Result<&Value, ReplyError> {
    match reply.get("flag").and_then(|f| {
        f.as_i64()
            .or_else(|| f.as_str().and_then(|s| s.parse().ok()))
    }) {
        Some(1) => Ok(reply.get("data").unwrap_or(&Value::Null)),
        Some(0) => Err(ReplyError::Refused(match reply.get("err") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "no reason given".into(),
            Some(other) => other.to_string(),
        })),
        _ => Err(ReplyError::Malformed("no flag".into())),
    }
}

/// The status bits of a tyre (1019): bit0 low pressure, bit1 high pressure, bit2 high
/// temperature, bit3 leak suspected, bit4 low sensor battery, bit5 no signal; -1 means
/// the device is faulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TyreStatus {
    pub device_fault: bool,
    pub low_pressure: bool,
    pub high_pressure: bool,
    pub high_temperature: bool,
    pub leak_suspected: bool,
    pub low_battery: bool,
    pub no_signal: bool,
}

impl TyreStatus {
    pub fn from_code(code: i32) -> TyreStatus {
        if code < 0 {
            return TyreStatus {
                device_fault: true,
                ..Default::default()
            };
        }
        let bit = |n: u32| code & (1 << n) != 0;
        TyreStatus {
            device_fault: false,
            low_pressure: bit(0),
            high_pressure: bit(1),
            high_temperature: bit(2),
            leak_suspected: bit(3),
            low_battery: bit(4),
            no_signal: bit(5),
        }
    }

    pub fn any_problem(&self) -> bool {
        self.device_fault
            || self.low_pressure
            || self.high_pressure
            || self.high_temperature
            || self.leak_suspected
    }
}

/// One tyre: `"status|kPa|°C|time"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tyre {
    pub status: TyreStatus,
    pub pressure_kpa: Option<i32>,
    pub temperature_c: Option<i32>,
    /// Unix seconds; `None` when the tyre never reported (0).
    pub updated: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tyre string `{0}` is not \"status|kPa|°C|time\"")]
pub struct TyreError(pub String);

impl Tyre {
    pub fn parse(s: &str) -> Result<Tyre, TyreError> {
        let bad = || TyreError(s.chars().take(64).collect());
        let parts: Vec<&str> = s.split('|').map(str::trim).collect();
        let [status, pressure, temperature, time] = parts[..] else {
            return Err(bad());
        };
        let status = TyreStatus::from_code(status.parse().map_err(|_| bad())?);
        let opt = |v: &str| {
            if v.is_empty() {
                Ok(None)
            } else {
                v.parse::<i32>().map(Some).map_err(|_| bad())
            }
        };
        let updated: i64 = time.parse().map_err(|_| bad())?;
        Ok(Tyre {
            status,
            pressure_kpa: opt(pressure)?,
            temperature_c: opt(temperature)?,
            updated: (updated > 0).then_some(updated),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected digests computed independently with Python's hashlib.

    #[test]
    fn request_signature() {
        let body = request_body(1_700_000_000_123, &json!({"esn": "865432100012345"}), None);
        assert_eq!(
            body,
            r#"{"data":{"esn":"865432100012345"},"time":1700000000123}"#
        );
        assert_eq!(
            sign("OPEN123", &body, "SECRETcode", 1_700_000_000_123),
            "b4930eeb0bbc1a086245bd479d9d3cdd"
        );
        let with_plan = request_body(
            1_700_000_000_123,
            &json!({"esn": "865432100012345"}),
            Some(3),
        );
        assert_eq!(
            with_plan,
            r#"{"data":{"esn":"865432100012345"},"plan":3,"time":1700000000123}"#
        );
        assert_eq!(
            sign("OPEN123", &with_plan, "SECRETcode", 1_700_000_000_123),
            "02b0538108ac20ce2f0dd45ea69a30a3"
        );
        // Key order matters: the signature is over the exact bytes sent.
        let reordered = r#"{"time":1700000000123,"data":{"esn":"865432100012345"}}"#;
        assert_eq!(
            sign("OPEN123", reordered, "SECRETcode", 1_700_000_000_123),
            "f8d87ed85a6268bca580a1e7f9259d8a"
        );
        assert_eq!(path(1011, "OPEN123", "abc"), "/srv/1011/OPEN123/abc");
    }

    #[test]
    fn push_signature() {
        let events = r#"[{"esn":"865432100012345","type":"UNLOCK_DOOR","result":1}]"#;
        assert!(verify_push(
            events,
            "SECRETcode",
            "dff6396443e1d806cf658ef4928dff82"
        ));
        assert!(verify_push(
            events,
            "SECRETcode",
            "DFF6396443E1D806CF658EF4928DFF82"
        ));
        assert!(!verify_push(
            events,
            "SECRETcode",
            "dff6396443e1d806cf658ef4928dff83"
        ));
        assert!(!verify_push(
            events,
            "other",
            "dff6396443e1d806cf658ef4928dff82"
        ));
        assert!(!verify_push(events, "SECRETcode", ""));
        // The platform document's SHA-1 form, with its own example secret.
        let doc = r#"{"records":[{"id":123,"esn":"351234567812345","type":"开锁","time":1487589471,"text":"成功"}]}"#;
        assert!(verify_push(
            doc,
            "Ax7scb224xf8z",
            "95abba4b6a5b9695a471276311df00fe6df93ff7"
        ));
        assert!(verify_push(
            doc,
            "Ax7scb224xf8z",
            "f1e79c8eb5361111dbc30ff4f089f66d"
        ));
        assert!(!verify_push(
            doc,
            "Ax7scb224xf8z",
            "95abba4b6a5b9695a471276311df00fe6df93ff8"
        ));
        assert_eq!(
            super::push_signature(doc, "Ax7scb224xf8z"),
            "f1e79c8eb5361111dbc30ff4f089f66d"
        );
    }

    #[test]
    fn every_tyre_status_bit() {
        type Check = fn(&TyreStatus) -> bool;
        let cases: [(i32, Check); 6] = [
            (1, |s| s.low_pressure),
            (2, |s| s.high_pressure),
            (4, |s| s.high_temperature),
            (8, |s| s.leak_suspected),
            (16, |s| s.low_battery),
            (32, |s| s.no_signal),
        ];
        for (code, check) in cases {
            let s = TyreStatus::from_code(code);
            assert!(check(&s), "bit {code}");
            let set = [
                s.low_pressure,
                s.high_pressure,
                s.high_temperature,
                s.leak_suspected,
                s.low_battery,
                s.no_signal,
            ];
            assert_eq!(set.iter().filter(|b| **b).count(), 1, "only bit {code}");
        }
        // The service document's example (docs/protocols/iauto360.md, "1019 tyres"):
        // 6 = high temperature and high pressure.
        let six = TyreStatus::from_code(6);
        assert!(six.high_pressure && six.high_temperature && !six.low_pressure);
        assert!(TyreStatus::from_code(-1).device_fault);
        assert!(
            !TyreStatus::from_code(16).any_problem(),
            "a low sensor battery is not a tyre problem"
        );
        assert!(!TyreStatus::from_code(0).any_problem());
    }

    #[test]
    fn tyre_strings() {
        assert_eq!(
            Tyre::parse("1|210|35|1700000000").unwrap(),
            Tyre {
                status: TyreStatus::from_code(1),
                pressure_kpa: Some(210),
                temperature_c: Some(35),
                updated: Some(1_700_000_000)
            }
        );
        let never = Tyre::parse("0|||0").unwrap();
        assert_eq!(
            (never.pressure_kpa, never.temperature_c, never.updated),
            (None, None, None)
        );
        assert!(Tyre::parse("-1|||0").unwrap().status.device_fault);
        for bad in ["", "1|2|3", "x|210|35|0", "1|2.1bar|35|0", "1|210|35|0|9"] {
            assert!(Tyre::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply_data(&json!({"flag": 1, "data": {"a": 1}})).unwrap()["a"],
            1
        );
        assert_eq!(
            reply_data(&json!({"flag": 0, "err": "bad sign"})),
            Err(ReplyError::Refused("bad sign".into()))
        );
        assert!(matches!(
            reply_data(&json!({"data": {}})),
            Err(ReplyError::Malformed(_))
        ));
    }
}
