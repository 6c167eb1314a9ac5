//! Home Assistant discovery: the one place that decides which entities exist and what
//! their discovery documents say.
//!
//! Entities come from the model: a field a vehicle has reported becomes a sensor,
//! binary sensor or the state of a control; a capability becomes a control; a position
//! becomes a device tracker. Each entity has its own retained discovery topic
//! `<prefix>/<component>/<node>/<vehicle>_<key>/config`.

use serde_json::{json, Map, Value as Json};

use crate::model::{Capability, Field, FieldKind, GuardPower, VehicleInfo, VehicleState};

pub const ORIGIN_NAME: &str = "vehicle2mqtt";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Topic layout shared by discovery and the bridge.
#[derive(Debug, Clone)]
pub struct Topics {
    pub base: String,
    pub discovery_prefix: String,
    /// `base` with '/' replaced, used as the discovery node id.
    pub node: String,
}

impl Topics {
    pub fn new(base: &str, discovery_prefix: &str) -> Topics {
        Topics {
            base: base.to_string(),
            discovery_prefix: discovery_prefix.to_string(),
            node: base.replace('/', "_"),
        }
    }
    pub fn bridge_state(&self) -> String {
        format!("{}/bridge/state", self.base)
    }
    pub fn bridge_info(&self) -> String {
        format!("{}/bridge/info", self.base)
    }
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }
    pub fn command_filter(&self) -> String {
        format!("{}/+/+/set", self.base)
    }
    pub fn vehicle(&self, vehicle: &str, leaf: &str) -> String {
        format!("{}/{vehicle}/{leaf}", self.base)
    }
    /// Every retained discovery config of ours: `<prefix>/+/<node>/+/config`.
    pub fn our_configs_filter(&self) -> String {
        format!("{}/+/{}/+/config", self.discovery_prefix, self.node)
    }

    /// The object id of one of our discovery topics.
    pub fn config_object_id<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic
            .strip_prefix(&self.discovery_prefix)?
            .strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (_component, node, object, leaf) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        (node == self.node && leaf == "config" && parts.next().is_none()).then_some(object)
    }

    pub fn discovery(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{}/{object_id}/config",
            self.discovery_prefix, self.node
        )
    }
    fn bridge_device_id(&self) -> String {
        format!("v2m_bridge_{}", self.node)
    }
}

/// One entity's discovery document and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub component: &'static str,
    /// Unique within its vehicle (or the bridge); part of `unique_id`.
    pub key: String,
    pub config: Json,
}

impl Entity {
    pub fn topic(&self, topics: &Topics, owner: &str) -> String {
        topics.discovery(self.component, &format!("{owner}_{}", self.key))
    }
}

fn origin() -> Json {
    json!({
        "name": ORIGIN_NAME,
        "sw_version": VERSION,
        "support_url": "https://github.com/vehicle2mqtt/vehicle2mqtt",
    })
}

/// Builds a vehicle's discovery documents.
pub struct VehicleDiscovery<'a> {
    pub topics: &'a Topics,
    pub info: &'a VehicleInfo,
    /// Whether `bridge.command_pin` is set: the lock then asks HA for a code.
    pub pin_required: bool,
}

impl VehicleDiscovery<'_> {
    fn vid(&self) -> &str {
        self.info.id.as_str()
    }

    fn base(&self, component: &str, key: &str, name: Option<&str>) -> Map<String, Json> {
        let vid = self.vid();
        let mut m = Map::new();
        m.insert("name".into(), name.map(Json::from).unwrap_or(Json::Null));
        m.insert("unique_id".into(), format!("v2m_{vid}_{key}").into());
        m.insert("object_id".into(), format!("{vid}_{key}").into());
        m.insert(
            "default_entity_id".into(),
            format!("{component}.{vid}_{key}").into(),
        );
        m.insert("origin".into(), origin());
        let mut device = json!({
            "identifiers": [format!("v2m_{vid}")],
            "name": self.info.name,
            "manufacturer": self.info.manufacturer,
            "model": self.info.model,
            "via_device": self.topics.bridge_device_id(),
        });
        if let Some(sw) = &self.info.sw_version {
            device["sw_version"] = sw.clone().into();
        }
        m.insert("device".into(), device);
        m.insert(
            "availability".into(),
            json!([
                {"topic": self.topics.bridge_state()},
                {"topic": self.topics.vehicle(vid, "availability")},
            ]),
        );
        m.insert("availability_mode".into(), "all".into());
        m
    }

    fn state_topic(&self) -> String {
        self.topics.vehicle(self.vid(), "state")
    }

    fn command_topic(&self, key: &str) -> String {
        self.topics.vehicle(self.vid(), &format!("{key}/set"))
    }

    /// Every entity this vehicle has given its current state.
    pub fn entities(&self, state: &VehicleState) -> Vec<Entity> {
        let mut out = Vec::new();
        for field in state.fields() {
            if let Some(e) = self.field_entity(field) {
                out.push(e);
            }
        }
        if state.position.is_some() {
            let mut m = self.base("device_tracker", "location", Some("Location"));
            m.insert("json_attributes_topic".into(), self.state_topic().into());
            m.insert(
                "json_attributes_template".into(),
                "{{ {'latitude': value_json.latitude, 'longitude': value_json.longitude, \
                 'gps_accuracy': value_json.get('gps_accuracy', 0)} | tojson }}"
                    .into(),
            );
            m.insert("source_type".into(), "gps".into());
            out.push(Entity {
                component: "device_tracker",
                key: "location".into(),
                config: m.into(),
            });
        }
        for cap in &self.info.capabilities {
            out.push(self.control_entity(cap, state));
        }
        if !self.info.capabilities.is_empty() {
            let mut m = self.base("event", "command_result", Some("Command result"));
            m.insert(
                "state_topic".into(),
                self.topics.vehicle(self.vid(), "command/result").into(),
            );
            m.insert(
                "event_types".into(),
                json!(["accepted", "succeeded", "failed", "timeout", "rejected"]),
            );
            m.insert(
                "value_template".into(),
                "{{ {'event_type': value_json.status, 'command': value_json.command, \
                 'reason': value_json.reason, 'id': value_json.id} | tojson }}"
                    .into(),
            );
            m.insert("entity_category".into(), "diagnostic".into());
            out.push(Entity {
                component: "event",
                key: "command_result".into(),
                config: m.into(),
            });
        }
        if !self.info.event_types.is_empty() {
            let mut m = self.base("event", "events", Some("Events"));
            m.insert(
                "state_topic".into(),
                self.topics.vehicle(self.vid(), "event").into(),
            );
            m.insert("event_types".into(), json!(self.info.event_types));
            out.push(Entity {
                component: "event",
                key: "events".into(),
                config: m.into(),
            });
        }
        out
    }

    fn field_entity(&self, field: Field) -> Option<Entity> {
        let spec = field.spec();
        let component = match spec.kind {
            FieldKind::Number
            | FieldKind::Text
            | FieldKind::Timestamp
            | FieldKind::Date
            | FieldKind::Enum => "sensor",
            FieldKind::Binary => "binary_sensor",
            // Shown by the control that owns it (lock, select, number).
            FieldKind::Control => return None,
        };
        let key = spec.key;
        let mut m = self.base(component, key, Some(spec.name));
        m.insert("state_topic".into(), self.state_topic().into());
        let template = match spec.kind {
            FieldKind::Binary => format!(
                "{{% set v = value_json.get('{key}') %}}{{{{ 'None' if v is none else ('ON' if v else 'OFF') }}}}"
            ),
            _ => format!("{{{{ value_json.get('{key}') }}}}"),
        };
        m.insert("value_template".into(), template.into());
        if let Some(dc) = spec.device_class {
            m.insert("device_class".into(), dc.into());
        }
        if spec.kind == FieldKind::Enum {
            m.insert("options".into(), json!(field.options()));
        }
        if let Some(unit) = spec.unit {
            m.insert("unit_of_measurement".into(), unit.into());
        }
        if let Some(sc) = spec.state_class {
            m.insert("state_class".into(), sc.into());
        }
        if spec.diagnostic {
            m.insert("entity_category".into(), "diagnostic".into());
        }
        if let Some(icon) = spec.icon {
            m.insert("icon".into(), icon.into());
        }
        // Extra data without an entity of its own (cell voltages, battery id, ...) shows as
        // attributes of the battery sensor and of every vehicle's last-update sensor.
        if matches!(field, Field::BatteryLevel | Field::LastUpdate) {
            m.insert("json_attributes_topic".into(), self.state_topic().into());
            m.insert(
                "json_attributes_template".into(),
                "{{ value_json.get('attributes', {}) | tojson }}".into(),
            );
        }
        Some(Entity {
            component,
            key: key.into(),
            config: m.into(),
        })
    }

    fn button(&self, key: &str, name: &str, icon: &str) -> Entity {
        let mut m = self.base("button", key, Some(name));
        m.insert("command_topic".into(), self.command_topic(key).into());
        m.insert("payload_press".into(), "PRESS".into());
        m.insert("icon".into(), icon.into());
        Entity {
            component: "button",
            key: key.into(),
            config: m.into(),
        }
    }

    fn control_entity(&self, cap: &Capability, state: &VehicleState) -> Entity {
        let state_topic = self.state_topic();
        match cap {
            Capability::Lock => {
                let mut m = self.base("lock", "lock", None);
                m.insert("command_topic".into(), self.command_topic("lock").into());
                m.insert("state_topic".into(), state_topic.into());
                m.insert(
                    "value_template".into(),
                    "{{ value_json.get('lock') }}".into(),
                );
                m.insert("payload_lock".into(), "LOCK".into());
                m.insert("payload_unlock".into(), "UNLOCK".into());
                m.insert("state_locked".into(), "LOCKED".into());
                m.insert("state_unlocked".into(), "UNLOCKED".into());
                m.insert("state_locking".into(), "LOCKING".into());
                m.insert("state_unlocking".into(), "UNLOCKING".into());
                m.insert("state_jammed".into(), "JAMMED".into());
                m.insert("optimistic".into(), false.into());
                if self.pin_required {
                    m.insert("code_format".into(), "^.+$".into());
                    m.insert(
                        "command_template".into(),
                        "{\"action\": \"{{ value }}\", \"code\": \"{{ code }}\"}".into(),
                    );
                }
                Entity {
                    component: "lock",
                    key: "lock".into(),
                    config: m.into(),
                }
            }
            Capability::Engine => {
                let mut m = self.base("switch", "engine", Some("Engine"));
                m.insert("command_topic".into(), self.command_topic("engine").into());
                m.insert("state_topic".into(), state_topic.into());
                m.insert(
                    "value_template".into(),
                    "{{ 'ON' if value_json.get('engine_running') else 'OFF' }}".into(),
                );
                m.insert("payload_on".into(), "ON".into());
                m.insert("payload_off".into(), "OFF".into());
                m.insert("optimistic".into(), false.into());
                m.insert("icon".into(), "mdi:engine".into());
                Entity {
                    component: "switch",
                    key: "engine".into(),
                    config: m.into(),
                }
            }
            Capability::HornAndLights => {
                self.button("horn_lights", "Horn and lights", "mdi:car-light-alert")
            }
            Capability::FlashLights => {
                self.button("flash_lights", "Flash lights", "mdi:car-light-high")
            }
            Capability::Horn => self.button("horn", "Horn", "mdi:bullhorn"),
            Capability::OpenSeat => self.button("open_seat", "Open seat", "mdi:seat"),
            Capability::OpenGlovebox => {
                self.button("open_glovebox", "Open glovebox", "mdi:archive-lock-open")
            }
            Capability::OpenHelmet => {
                self.button("open_helmet", "Release helmet", "mdi:racing-helmet")
            }
            Capability::HazardLights => {
                self.button("hazard_lights", "Hazard lights", "mdi:hazard-lights")
            }
            Capability::GuardPower => {
                let key = Field::GuardPower.key();
                let mut m = self.base("select", key, Some("Guard power"));
                m.insert("command_topic".into(), self.command_topic(key).into());
                m.insert("options".into(), json!(GuardPower::OPTIONS));
                if state.values.contains_key(&Field::GuardPower) {
                    m.insert("state_topic".into(), state_topic.into());
                    m.insert(
                        "value_template".into(),
                        format!("{{{{ value_json.get('{key}') }}}}").into(),
                    );
                }
                m.insert("icon".into(), "mdi:shield-lock".into());
                Entity {
                    component: "select",
                    key: key.into(),
                    config: m.into(),
                }
            }
            Capability::MaxSpeed { max } => {
                let key = Field::MaxSpeed.key();
                let mut m = self.base("number", key, Some("Max speed"));
                m.insert("command_topic".into(), self.command_topic(key).into());
                m.insert("min".into(), 1.into());
                m.insert("max".into(), (*max).into());
                m.insert("step".into(), 1.into());
                m.insert("mode".into(), "box".into());
                m.insert("unit_of_measurement".into(), "km/h".into());
                m.insert("device_class".into(), "speed".into());
                if state.values.contains_key(&Field::MaxSpeed) {
                    m.insert("state_topic".into(), state_topic.into());
                    m.insert(
                        "value_template".into(),
                        format!("{{{{ value_json.get('{key}') }}}}").into(),
                    );
                }
                Entity {
                    component: "number",
                    key: key.into(),
                    config: m.into(),
                }
            }
            Capability::Passthrough(name) => {
                let key = format!("cmd_{name}");
                self.button(&key, name, "mdi:console-line")
            }
        }
    }
}

/// Whether `key` is an entity key a vehicle can have (the part after `<vehicle>_`).
pub fn is_entity_key(key: &str) -> bool {
    const CONTROLS: &[&str] = &[
        "lock",
        "engine",
        "location",
        "command_result",
        "events",
        "horn_lights",
        "flash_lights",
        "horn",
        "open_seat",
        "open_glovebox",
        "open_helmet",
        "hazard_lights",
        "guard_power",
        "max_speed",
    ];
    Field::from_key(key).is_some()
        || CONTROLS.contains(&key)
        || key.strip_prefix("cmd_").is_some_and(|n| !n.is_empty())
}

/// The bridge's own device and its diagnostic sensors (fed by `<base>/bridge/info`).
/// Their discovery topics use the owner `bridge`: `.../<node>/bridge_<key>/config`.
pub fn bridge_entities(topics: &Topics) -> Vec<Entity> {
    let device = json!({
        "identifiers": [topics.bridge_device_id()],
        "name": "vehicle2mqtt bridge",
        "manufacturer": "vehicle2mqtt",
        "model": "Bridge",
        "sw_version": VERSION,
    });
    let sensor = |key: &str, name: &str, template: &str, extra: Json| {
        let node = &topics.node;
        let mut m = json!({
            "name": name,
            "unique_id": format!("v2m_bridge_{node}_{key}"),
            "object_id": format!("{node}_bridge_{key}"),
            "default_entity_id": format!("sensor.{node}_bridge_{key}"),
            "state_topic": topics.bridge_info(),
            "value_template": template,
            "availability_topic": topics.bridge_state(),
            "entity_category": "diagnostic",
            "device": device,
            "origin": origin(),
        });
        if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        Entity {
            component: "sensor",
            key: key.to_string(),
            config: m,
        }
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
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Position, VehicleId};

    fn info(caps: Vec<Capability>) -> VehicleInfo {
        VehicleInfo {
            id: VehicleId::new("kx42").unwrap(),
            name: "Scooter".into(),
            manufacturer: "kingxun".into(),
            model: "E-motor".into(),
            sw_version: Some("1.2".into()),
            capabilities: caps,
            event_types: vec!["tip_over".into()],
        }
    }

    #[test]
    fn sensor_document_has_every_required_field() {
        let topics = Topics::new("v2m", "homeassistant");
        let info = info(vec![]);
        let d = VehicleDiscovery {
            topics: &topics,
            info: &info,
            pin_required: false,
        };
        let mut state = VehicleState::default();
        state.set(Field::Odometer, 12i64);
        let e = d
            .entities(&state)
            .into_iter()
            .find(|e| e.key == "odometer")
            .unwrap();
        assert_eq!(
            e.topic(&topics, "kx42"),
            "homeassistant/sensor/v2m/kx42_odometer/config"
        );
        let c = &e.config;
        assert_eq!(c["unique_id"], "v2m_kx42_odometer");
        assert_eq!(c["default_entity_id"], "sensor.kx42_odometer");
        assert_eq!(c["device_class"], "distance");
        assert_eq!(c["unit_of_measurement"], "km");
        assert_eq!(c["state_class"], "total_increasing");
        assert_eq!(c["availability_mode"], "all");
        assert_eq!(c["availability"][1]["topic"], "v2m/kx42/availability");
        assert_eq!(c["device"]["via_device"], "v2m_bridge_v2m");
        assert_eq!(c["origin"]["name"], "vehicle2mqtt");
    }

    #[test]
    fn extra_attributes_reach_ha() {
        let topics = Topics::new("v2m", "homeassistant");
        let info = info(vec![]);
        let d = VehicleDiscovery {
            topics: &topics,
            info: &info,
            pin_required: false,
        };
        let mut state = VehicleState::default();
        state
            .set(Field::BatteryLevel, 80i64)
            .set(Field::LastUpdate, "2026-01-01T00:00:00Z")
            .set(Field::Speed, 1i64);
        let entities = d.entities(&state);
        for key in ["battery_level", "last_update"] {
            let e = entities.iter().find(|e| e.key == key).unwrap();
            assert_eq!(e.config["json_attributes_topic"], "v2m/kx42/state", "{key}");
            assert!(e.config["json_attributes_template"]
                .as_str()
                .unwrap()
                .contains("attributes"));
        }
        let speed = entities.iter().find(|e| e.key == "speed").unwrap();
        assert!(speed.config.get("json_attributes_topic").is_none());
    }

    #[test]
    fn lock_asks_for_code_only_with_pin() {
        let topics = Topics::new("v2m", "homeassistant");
        let info = info(vec![Capability::Lock]);
        let state = VehicleState::default();
        for pin in [false, true] {
            let d = VehicleDiscovery {
                topics: &topics,
                info: &info,
                pin_required: pin,
            };
            let lock = d
                .entities(&state)
                .into_iter()
                .find(|e| e.component == "lock")
                .unwrap();
            assert_eq!(lock.config.get("code_format").is_some(), pin);
            assert_eq!(lock.config["state_unlocking"], "UNLOCKING");
        }
    }

    #[test]
    fn tracker_exists_only_with_position() {
        let topics = Topics::new("v2m", "homeassistant");
        let info = info(vec![]);
        let d = VehicleDiscovery {
            topics: &topics,
            info: &info,
            pin_required: false,
        };
        let mut state = VehicleState::default();
        assert!(!d
            .entities(&state)
            .iter()
            .any(|e| e.component == "device_tracker"));
        state.position = Position::new(31.2, 121.5);
        assert!(d
            .entities(&state)
            .iter()
            .any(|e| e.component == "device_tracker"));
    }
}
