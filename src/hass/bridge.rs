//! The bridge device's own entities.

use serde_json::{json, Value as Json};

use super::{origin, Entity, Topics, VERSION};

/// The key prefix of a cluster instance's own entities: `bridge_node-<instance>_<key>`.
pub const INSTANCE_KEY_PREFIX: &str = "node-";

/// The bridge's own device and its diagnostic sensors (fed by `<base>/bridge/info`).
/// Their discovery topics use the owner `bridge`: `.../<node>/bridge_<key>/config`.
///
/// In a cluster (`instance`), the bridge device is the cluster's and keeps only the
/// purge button; each instance is a device of its own (`via_device` the cluster's) whose
/// sensors read `<base>/bridge/<instance>/info` and follow its own state.
pub fn bridge_entities(topics: &Topics, instance: Option<&str>) -> Vec<Entity> {
    let cluster_device = json!({
        "identifiers": [topics.bridge_device_id()],
        "name": "vehicle2mqtt bridge",
        "manufacturer": "vehicle2mqtt",
        "model": "Bridge",
        "sw_version": VERSION,
    });
    let node = &topics.node;
    // Where the sensors live: the bridge device, or this instance's.
    let (device, key_prefix, id_prefix, info, availability) = match instance {
        None => (
            cluster_device.clone(),
            String::new(),
            String::new(),
            topics.bridge_info(),
            topics.bridge_state(),
        ),
        Some(me) => (
            json!({
                "identifiers": [format!("{}_{me}", topics.bridge_device_id())],
                "name": format!("vehicle2mqtt {me}"),
                "manufacturer": "vehicle2mqtt",
                "model": "Bridge instance",
                "sw_version": VERSION,
                "via_device": topics.bridge_device_id(),
            }),
            format!("{INSTANCE_KEY_PREFIX}{me}_"),
            format!("{me}_"),
            topics.instance_info(me),
            topics.instance_state(me),
        ),
    };
    let sensor = |key: &str, name: &str, template: &str, extra: Json| {
        let mut m = json!({
            "name": name,
            "unique_id": format!("v2m_bridge_{node}_{id_prefix}{key}"),
            "object_id": format!("{node}_bridge_{id_prefix}{key}"),
            "default_entity_id": format!("sensor.{node}_bridge_{id_prefix}{key}"),
            "state_topic": info,
            "value_template": template,
            "availability_topic": availability,
            "entity_category": "diagnostic",
            "device": device,
            "origin": origin(),
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        Entity {
            component: "sensor",
            key: format!("{key_prefix}{key}"),
            config: m,
        }
    };
    let purge = Entity {
        component: "button",
        key: "purge".into(),
        config: json!({
            "name": "Remove stale entities",
            "unique_id": format!("v2m_bridge_{node}_purge"),
            "object_id": format!("{node}_bridge_purge"),
            "default_entity_id": format!("button.{node}_bridge_purge"),
            "command_topic": format!("{}/bridge/purge/set", topics.base),
            "payload_press": "stale",
            "availability_topic": topics.bridge_state(),
            "entity_category": "config",
            "icon": "mdi:delete-sweep",
            "device": cluster_device,
            "origin": origin(),
        }),
    };
    vec![
        sensor(
            "version",
            "Version",
            "{{ value_json.version }}",
            json!({"icon": "mdi:tag"}),
        ),
        sensor(
            "links",
            "Connected links",
            "{{ value_json.links }}",
            json!({"state_class": "measurement", "icon": "mdi:lan-connect"}),
        ),
        sensor(
            "vehicles",
            "Vehicles",
            "{{ value_json.vehicles }}",
            json!({"state_class": "measurement", "icon": "mdi:car-multiple"}),
        ),
        sensor(
            "last_error",
            "Last error",
            "{{ value_json.last_error if value_json.last_error else 'none' }}",
            json!({"icon": "mdi:alert-circle-outline"}),
        ),
        sensor(
            "dropped",
            "Dropped messages",
            "{{ value_json.dropped_publishes }}",
            json!({"state_class": "total_increasing", "icon": "mdi:email-remove"}),
        ),
        sensor(
            "pin_failures",
            "Wrong PINs",
            "{{ value_json.pin_failures }}",
            json!({"state_class": "total_increasing", "icon": "mdi:form-textbox-password"}),
        ),
        purge,
    ]
}
