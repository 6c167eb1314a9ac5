//! Round-trip properties of the cloud protocols' pure parts.

use proptest::prelude::*;
use vehicle2mqtt::protocol::iauto360::{request_body, sign, Tyre, TyreStatus};
use vehicle2mqtt::protocol::xchanger::sign::canonical_query;

proptest! {
    /// The query signed is the query sent: decoding it gives back every pair, sorted,
    /// and it holds nothing a URL parser could re-encode.
    #[test]
    fn canonical_query_round_trips(pairs in proptest::collection::vec(("[ -~ü中]{0,8}", "[ -~ü中]{0,12}"), 0..6)) {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let q = canonical_query(&refs);
        prop_assert!(q.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%=&".contains(&b)), "{}", q);
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().unwrap().to_string();
        let back: Vec<(String, String)> = if q.is_empty() {
            Vec::new()
        } else {
            q.split('&').map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (decode(k), decode(v))
            }).collect()
        };
        let mut want = pairs.clone();
        want.sort();
        if pairs.is_empty() { prop_assert!(back.is_empty()); } else { prop_assert_eq!(back, want); }
    }

    /// `"status|kPa|°C|time"` written and read back.
    #[test]
    fn tyre_strings_round_trip(code in -1i32..64, kpa in proptest::option::of(0i32..1000), temp in proptest::option::of(-40i32..150), time in 0i64..2_000_000_000) {
        let opt = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
        let s = format!("{code}|{}|{}|{time}", opt(kpa), opt(temp));
        let t = Tyre::parse(&s).unwrap();
        prop_assert_eq!(t.status, TyreStatus::from_code(code));
        prop_assert_eq!((t.pressure_kpa, t.temperature_c), (kpa, temp));
        prop_assert_eq!(t.updated, (time > 0).then_some(time));
    }

    /// The body signed is valid JSON carrying exactly the time, data and plan given, and
    /// any change to it changes the signature.
    #[test]
    fn iauto360_body_round_trips(time in 0i64..4_000_000_000_000, esn in "[0-9]{8,15}", plan in proptest::option::of(0i64..100)) {
        let data = serde_json::json!({"esn": esn});
        let body = request_body(time, &data, plan);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(v["time"].as_i64(), Some(time));
        prop_assert_eq!(&v["data"], &data);
        prop_assert_eq!(v.get("plan").and_then(|p| p.as_i64()), plan);
        let s = sign("OPEN", &body, "secret", time);
        prop_assert_eq!(s.len(), 32);
        prop_assert_ne!(s, sign("OPEN", &format!("{body} "), "secret", time));
    }
}
