//! docs/evcc.yaml is a working evcc vehicle: it parses, every topic it reads is a field the
//! bridge publishes on its per-field topics, and the boolean it reads (`climater`) is one
//! the bridge can send as `true`/`false`, the only form evcc accepts.

use serde_yaml::Value;
use vehicle2mqtt::config::{BoolFormat, Config};
use vehicle2mqtt::model::{Field, FieldKind, Value as V};

#[test]
fn the_evcc_template_reads_real_fields() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/evcc.yaml")).unwrap();
    let doc: Value = serde_yaml::from_str(&text).expect("valid YAML");
    let vehicle = &doc["vehicles"][0];
    assert_eq!(vehicle["type"], "custom");
    assert!(vehicle["capacity"].as_f64().is_some());
    let base = Config::default().mqtt.base_topic;
    let mut read = 0;
    for key in ["soc", "range", "odometer", "climater"] {
        let plugin = &vehicle[key];
        assert_eq!(plugin["source"], "mqtt", "{key}");
        let topic = plugin["topic"].as_str().unwrap();
        let field = topic
            .strip_prefix(&format!("{base}/VEHICLE_ID/"))
            .unwrap_or_else(|| panic!("{key}: {topic} is not a per-field topic"));
        let field = Field::from_key(field).unwrap_or_else(|| panic!("{key}: no field {field}"));
        if key == "climater" {
            assert_eq!(field.spec().kind, FieldKind::Binary);
        } else {
            assert_eq!(field.spec().kind, FieldKind::Number, "{key}");
        }
        read += 1;
    }
    assert_eq!(read, 4);
    // Charge status from the two booleans, each a real binary field.
    let status = &vehicle["status"];
    assert_eq!(status["source"], "combined");
    for part in ["plugged", "charging"] {
        let topic = status[part]["topic"].as_str().unwrap();
        let key = topic.strip_prefix(&format!("{base}/VEHICLE_ID/")).unwrap();
        let field = Field::from_key(key).unwrap_or_else(|| panic!("{part}: no field {key}"));
        assert_eq!(field.spec().kind, FieldKind::Binary, "{part}");
    }
    // The wake-up presses Refresh: a command the bridge takes from exactly this payload
    // (run against a bridge in tests/xchanger.rs, `evccs_wakeup_refreshes_the_car`).
    let wakeup = &vehicle["wakeup"];
    assert_eq!(wakeup["source"], "mqtt");
    assert_eq!(
        wakeup["topic"].as_str().unwrap(),
        format!("{base}/VEHICLE_ID/refresh/set")
    );
    let payload = wakeup["payload"].as_str().unwrap();
    let caps = [vehicle2mqtt::model::Capability::Refresh];
    assert_eq!(
        vehicle2mqtt::bridge::command::to_command("refresh", payload, &caps),
        Ok(vehicle2mqtt::model::Command::Refresh)
    );
    assert!(text.contains("per_field_booleans = \"true_false\""));
    // What the bridge then sends for a boolean.
    let _ = BoolFormat::TrueFalse;
    assert_eq!(V::Bool(true).to_payload_with(true), "true");
    assert_eq!(V::Bool(false).to_payload_with(true), "false");
    assert_eq!(V::Bool(true).to_payload(), "ON");
}
