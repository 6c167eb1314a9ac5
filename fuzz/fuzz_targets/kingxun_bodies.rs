//! kingxun bodies: every body decoder (and decryption) on arbitrary bytes must return a
//! value or a typed error, never panic or allocate unboundedly; what decodes must
//! re-encode to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vehicle2mqtt::protocol::kingxun::*;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 10 {
        0 => {
            if let Ok(s) = Status::decode(body) {
                let again = Status::decode(&s.encode()).expect("re-decodes");
                assert_eq!(again.battery.map(|b| b.cells.len()), s.battery.map(|b| b.cells.len()));
            }
        }
        1 => {
            if let Ok(t) = Trip::decode(body) {
                assert_eq!(Trip::decode(&t.encode()).expect("re-decodes").points.len(), t.points.len());
            }
        }
        2 => {
            if let Ok(e) = Events::decode(body) {
                assert_eq!(Events::decode(&e.encode()).expect("re-decodes").events.len(), e.events.len());
            }
        }
        3 => drop(ChargeDone::decode(body)),
        4 => {
            drop(Register::decode(body));
            let r = Register::decode_lenient(body);
            assert!(r.version_count <= 6);
        }
        5 => drop(RangeQuery::decode(body)),
        6 => {
            for m in [id::UNLOCK, id::LOCK, id::GUARD, id::OPEN_LOCK, id::LIGHTS] {
                for p in [Profile::Classic, Profile::Doc2025, Profile::Kxsvr] {
                    if let Ok(c) = DeviceControl::decode(m, body, p) {
                        let bytes = c.encode(p).expect("what decodes in a profile encodes in it");
                        assert_eq!(DeviceControl::decode(m, &bytes, p), Ok(c));
                    }
                }
            }
        }
        7 => {
            for m in [id::APP_UNLOCK, id::APP_LOCK, id::APP_GUARD, id::APP_OPEN_LOCK, id::APP_LIGHTS] {
                if let Ok(c) = AppControl::decode(m, body) {
                    assert_eq!(AppControl::decode(m, &c.encode()), Ok(c));
                }
            }
        }
        8 => drop((WebConnect::decode(body), WebConnectAck::decode(body), WebHeartbeat::decode(body))),
        _ => {
            if let Ok(plain) = crypto::decrypt(&[0x42; 16], &[0x24; 16], body) {
                assert_eq!(crypto::encrypt(&[0x42; 16], &[0x24; 16], &plain), body);
            }
        }
    }
});
