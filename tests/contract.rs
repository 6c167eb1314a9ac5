//! docs/mqtt-contract.md is a promise to Node-RED, evcc and dashboard users: every field
//! it documents must still exist, and every field the bridge can publish must be in it.

use std::collections::BTreeSet;

use vehicle2mqtt::model::Field;

fn doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/mqtt-contract.md"
    ))
    .unwrap()
}

fn documented_fields() -> BTreeSet<String> {
    let doc = doc();
    let section = doc
        .split("## State fields")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_documented_field_exists() {
    for key in documented_fields() {
        assert!(
            Field::from_key(&key).is_some(),
            "docs/mqtt-contract.md documents `{key}`, which the bridge no longer has"
        );
    }
}

#[test]
fn every_field_is_documented() {
    let documented = documented_fields();
    for f in Field::ALL {
        assert!(
            documented.contains(f.key()),
            "field `{}` is not in docs/mqtt-contract.md",
            f.key()
        );
    }
}

#[test]
fn result_schema_and_topics_are_documented() {
    let doc = doc();
    for key in [
        "\"id\"",
        "\"command\"",
        "\"status\"",
        "\"reason\"",
        "\"ts\"",
    ] {
        assert!(doc.contains(key), "result key {key} undocumented");
    }
    for status in ["accepted", "succeeded", "failed", "timeout", "rejected"] {
        assert!(
            doc.contains(&format!("`{status}`")),
            "status {status} undocumented"
        );
    }
    for topic in [
        "/bridge/state",
        "/bridge/info",
        "/state",
        "/availability",
        "/command/result",
        "/event",
        "/set",
    ] {
        assert!(doc.contains(topic), "topic {topic} undocumented");
    }
}

#[test]
fn node_red_example_uses_the_contract() {
    let raw = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/node-red-flow.json"
    ))
    .unwrap();
    let flow: serde_json::Value = serde_json::from_str(&raw).expect("valid JSON");
    let nodes = flow.as_array().unwrap();
    let ids: BTreeSet<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
    // Every wire points at a node of the flow.
    for n in nodes {
        for out in n["wires"].as_array().into_iter().flatten() {
            for target in out.as_array().unwrap() {
                assert!(
                    ids.contains(target.as_str().unwrap()),
                    "dangling wire to {target}"
                );
            }
        }
    }
    let topics: Vec<&str> = nodes.iter().filter_map(|n| n["topic"].as_str()).collect();
    assert!(topics.contains(&"vehicle2mqtt/kx1001/state"));
    assert!(topics.contains(&"vehicle2mqtt/kx1001/lock/set"));
    assert!(topics.contains(&"vehicle2mqtt/kx1001/command/result"));
    let out = nodes.iter().find(|n| n["type"] == "mqtt out").unwrap();
    assert_eq!(out["retain"], "false", "commands must never be retained");
    // The fields the summary reads exist.
    for key in ["lock", "battery_level", "odometer", "speed"] {
        assert!(Field::from_key(key).is_some());
    }
}
