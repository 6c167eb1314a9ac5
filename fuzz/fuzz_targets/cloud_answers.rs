//! xchanger and iauto360: any answer body must never panic the classification or the
//! mapping into the model, and whatever maps must produce only finite numbers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vehicle2mqtt::connectors::xchanger::{classify, data_plan_state, DataUnit};
use vehicle2mqtt::protocol::iauto360::{reply_data, services, verify_push, Tyre};
use vehicle2mqtt::protocol::xchanger::status;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let http = [200u16, 401, 403, 429, 500][usize::from(selector) % 5];
    if let Ok(doc) = classify(http, None, body) {
        if let Ok(st) = status::parse(&doc, selector & 1 == 0) {
            assert!(st.state.to_json().to_string().len() < 1 << 20);
        }
        let _ = data_plan_state(&doc, DataUnit::Kib);
        let _ = data_plan_state(&doc, DataUnit::Bytes);
    }
    let text = String::from_utf8_lossy(body);
    let _ = Tyre::parse(&text);
    let _ = verify_push(&text, "secret", &text);
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Ok(d) = reply_data(&doc) {
            let _ = services::condition(d);
            let _ = services::binding(d);
            let _ = services::tyres(d);
            let _ = services::battery_history(d);
            let _ = services::health(d);
            let _ = services::vehicle_info(d);
            let _ = services::fuel_yesterday(d);
            if let Some(t) = services::latest_trip(d) {
                let _ = services::trip(&t, Some(d));
            }
        }
        if let Some(records) = doc.get("records").and_then(|r| r.as_array()) {
            for r in records {
                let _ = services::pushed_event(r);
            }
        }
    }
});
