//! A vehicle's discovery documents.

use serde_json::{json, Map, Value as Json};

use super::{display_precision, keeps_last_value, origin, Entity, Shape, Topics};
use crate::model::{Capability, Field, FieldKind, GuardPower, VehicleInfo};

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

    /// The first part of entity ids: the vehicle's name when the user gave one (as an HA
    /// slug), else its id.
    fn object_prefix(&self) -> String {
        let vid = self.vid();
        if !self.info.custom_name {
            return vid.to_string();
        }
        let mut slug = String::new();
        for c in self.info.name.chars() {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.is_empty() && !slug.ends_with('_') {
                slug.push('_');
            }
        }
        let slug = slug.trim_end_matches('_');
        if slug.is_empty() {
            vid.to_string()
        } else {
            slug.to_string()
        }
    }

    fn base(&self, component: &str, key: &str, name: Option<&str>) -> Map<String, Json> {
        let vid = self.vid();
        let object = format!("{}_{key}", self.object_prefix());
        let mut m = Map::new();
        m.insert("name".into(), name.map(Json::from).unwrap_or(Json::Null));
        m.insert("unique_id".into(), format!("v2m_{vid}_{key}").into());
        m.insert("object_id".into(), object.clone().into());
        m.insert(
            "default_entity_id".into(),
            format!("{component}.{object}").into(),
        );
        m.insert("origin".into(), origin());
        let mut device = json!({
            "identifiers": [format!("v2m_{vid}")],
            "name": self.info.name,
            "manufacturer": self.info.manufacturer,
            "model": self.info.reported_model.as_deref().unwrap_or(&self.info.model),
            "via_device": self.topics.bridge_device_id(),
        });
        if let Some(sw) = &self.info.sw_version {
            device["sw_version"] = sw.clone().into();
        }
        if let Some(serial) = &self.info.serial_number {
            device["serial_number"] = serial.clone().into();
        }
        m.insert("device".into(), device);
        if keeps_last_value(key) {
            // Shown while the vehicle is away (parked, asleep, link down): a position or
            // an odometer is most wanted exactly then. `connected` tells the link.
            m.insert(
                "availability_topic".into(),
                self.topics.bridge_state().into(),
            );
        } else {
            m.insert(
                "availability".into(),
                json!([
                    {"topic": self.topics.bridge_state()},
                    {"topic": self.topics.vehicle(vid, "availability")},
                ]),
            );
            m.insert("availability_mode".into(), "all".into());
        }
        m
    }

    fn state_topic(&self) -> String {
        self.topics.vehicle(self.vid(), "state")
    }

    fn command_topic(&self, key: &str) -> String {
        self.topics.vehicle(self.vid(), &format!("{key}/set"))
    }

    /// Every entity of a vehicle with this shape (the fields it has ever reported).
    pub fn entities(&self, shape: &Shape) -> Vec<Entity> {
        let mut out = Vec::new();
        for field in shape.fields.iter() {
            if let Some(e) = self.field_entity(field) {
                out.push(e);
            }
        }
        out.push(self.connected_entity());
        if shape.position {
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
        out.extend(
            self.info
                .capabilities
                .iter()
                .filter_map(|cap| self.control_entity(cap)),
        );
        for cap in self.info.capabilities.iter() {
            if let Capability::PollIntervals { min, max } = cap {
                for field in [Field::PollInterval, Field::PollIntervalActive] {
                    out.push(self.poll_interval_entity(field, *min, *max));
                }
            }
        }
        if self.pin_required
            && self
                .info
                .capabilities
                .iter()
                .any(|c| crate::controls::by_capability(c).is_some_and(|c| c.needs_pin()))
        {
            out.push(self.pin_entity());
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
        {
            // What the device reports, then what the bridge works out of every vehicle's
            // reports (trips, zones, fleet events: `crate::derive`).
            let mut types: Vec<&str> = self.info.event_types.iter().map(String::as_str).collect();
            for t in crate::derive::EVENT_TYPES {
                if !types.contains(t) {
                    types.push(t);
                }
            }
            let mut m = self.base("event", "events", Some("Events"));
            m.insert(
                "state_topic".into(),
                self.topics.vehicle(self.vid(), "event").into(),
            );
            m.insert("event_types".into(), json!(types));
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
            if let Some(digits) = display_precision(unit) {
                m.insert("suggested_display_precision".into(), digits.into());
            }
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

    /// A control of the catalog, shown as its row says.
    fn catalog_entity(&self, control: &crate::controls::Control) -> Entity {
        use crate::controls::Widget;
        let key = control.key;
        let payload = |i: usize| control.payloads.get(i).map_or("", |p| p.0);
        let (component, mut m) = match control.widget {
            Widget::Button { name, icon } => return self.button(key, name, icon),
            Widget::Lock => {
                let mut m = self.base("lock", key, None);
                m.insert(
                    "value_template".into(),
                    format!("{{{{ value_json.get('{key}') }}}}").into(),
                );
                m.insert("payload_lock".into(), payload(0).into());
                m.insert("payload_unlock".into(), payload(1).into());
                m.insert("state_locked".into(), "LOCKED".into());
                m.insert("state_unlocked".into(), "UNLOCKED".into());
                m.insert("state_locking".into(), "LOCKING".into());
                m.insert("state_unlocking".into(), "UNLOCKING".into());
                m.insert("state_jammed".into(), "JAMMED".into());
                if self.pin_required {
                    // Locking needs no code (an empty code passes); unlocking is checked by
                    // the bridge against the PIN.
                    m.insert("code_format".into(), "^.{0,64}$".into());
                    m.insert(
                        "command_template".into(),
                        "{\"action\": \"{{ value }}\"{% if code %}, \"code\": {{ code | tojson }}{% endif %}}"
                            .into(),
                    );
                }
                ("lock", m)
            }
            Widget::Switch {
                name,
                icon,
                state_field,
            } => {
                let mut m = self.base("switch", key, Some(name));
                m.insert(
                    "value_template".into(),
                    format!(
                        "{{{{ '{on}' if value_json.get('{state_field}') else '{off}' }}}}",
                        on = payload(0),
                        off = payload(1)
                    )
                    .into(),
                );
                m.insert("payload_on".into(), payload(0).into());
                m.insert("payload_off".into(), payload(1).into());
                m.insert("icon".into(), icon.into());
                ("switch", m)
            }
        };
        m.insert("command_topic".into(), self.command_topic(key).into());
        m.insert("state_topic".into(), self.state_topic().into());
        m.insert("optimistic".into(), false.into());
        Entity {
            component,
            key: key.into(),
            config: m.into(),
        }
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

    /// `connected`: whether the vehicle's link (or cloud) is reachable now.
    fn connected_entity(&self) -> Entity {
        let mut m = self.base("binary_sensor", "connected", Some("Connected"));
        m.insert(
            "state_topic".into(),
            self.topics.vehicle(self.vid(), "availability").into(),
        );
        m.insert("payload_on".into(), "online".into());
        m.insert("payload_off".into(), "offline".into());
        m.insert("device_class".into(), "connectivity".into());
        m.insert("entity_category".into(), "diagnostic".into());
        Entity {
            component: "binary_sensor",
            key: "connected".into(),
            config: m.into(),
        }
    }

    /// A password text that arms the next PIN command of this vehicle for a short while:
    /// HA's switch and button cannot carry a code, so engine start from the UI is "enter
    /// the PIN here, then press". The PIN is never echoed back (the state stays empty).
    fn pin_entity(&self) -> Entity {
        let mut m = self.base("text", "pin", Some("Command PIN"));
        m.insert("command_topic".into(), self.command_topic("pin").into());
        m.insert(
            "state_topic".into(),
            self.topics.vehicle(self.vid(), "pin").into(),
        );
        m.insert("mode".into(), "password".into());
        m.insert("min".into(), 0.into());
        m.insert("max".into(), 64.into());
        m.insert("icon".into(), "mdi:form-textbox-password".into());
        m.insert("entity_category".into(), "config".into());
        Entity {
            component: "text",
            key: "pin".into(),
            config: m.into(),
        }
    }

    /// A poll interval the owner sets (`poll_interval`, `poll_interval_active`), in
    /// minutes within what the upstream tolerates; its state is the field of that name.
    fn poll_interval_entity(&self, field: Field, min: u16, max: u16) -> Entity {
        let key = field.key();
        let mut m = self.base("number", key, Some(field.spec().name));
        m.insert("command_topic".into(), self.command_topic(key).into());
        m.insert("min".into(), min.into());
        m.insert("max".into(), max.into());
        m.insert("step".into(), 1.into());
        m.insert("mode".into(), "box".into());
        m.insert("unit_of_measurement".into(), "min".into());
        m.insert("device_class".into(), "duration".into());
        m.insert("entity_category".into(), "config".into());
        m.insert("icon".into(), "mdi:timer-outline".into());
        m.insert("state_topic".into(), self.state_topic().into());
        m.insert(
            "value_template".into(),
            format!("{{{{ value_json.get('{key}') }}}}").into(),
        );
        Entity {
            component: "number",
            key: key.into(),
            config: m.into(),
        }
    }

    /// A capability's entity: its catalog row, or the value-taking and pass-through ones.
    fn control_entity(&self, cap: &Capability) -> Option<Entity> {
        let state_topic = self.state_topic();
        let entity = match cap {
            Capability::GuardPower => {
                let key = Field::GuardPower.key();
                let mut m = self.base("select", key, Some("Guard power"));
                m.insert("command_topic".into(), self.command_topic(key).into());
                m.insert("options".into(), json!(GuardPower::OPTIONS));
                // Always the same document: "None" (unknown) until the value is known.
                m.insert("state_topic".into(), state_topic.into());
                m.insert(
                    "value_template".into(),
                    format!("{{{{ value_json.get('{key}') }}}}").into(),
                );
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
                m.insert("state_topic".into(), state_topic.into());
                m.insert(
                    "value_template".into(),
                    format!("{{{{ value_json.get('{key}') }}}}").into(),
                );
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
            Capability::PollIntervals { .. } => return None, // two numbers: `entities`
            fixed => return crate::controls::by_capability(fixed).map(|c| self.catalog_entity(c)),
        };
        Some(entity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VehicleState;
    use crate::model::{Position, VehicleId};

    fn info(caps: Vec<Capability>) -> VehicleInfo {
        VehicleInfo {
            id: VehicleId::new("kx42").unwrap(),
            name: "Scooter".into(),
            manufacturer: "kingxun".into(),
            model: "E-motor".into(),
            reported_model: None,
            sw_version: Some("1.2".into()),
            custom_name: false,
            serial_number: Some("42".into()),
            capabilities: caps.into(),
            event_types: vec!["tip_over".into()].into(),
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
            .entities(&Shape::of(&state))
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
        assert_eq!(c["suggested_display_precision"], 1);
        // An odometer keeps its last value while the vehicle is away.
        assert_eq!(c["availability_topic"], "v2m/bridge/state");
        assert!(c.get("availability").is_none());
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
        let entities = d.entities(&Shape::of(&state));
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
                .entities(&Shape::of(&state))
                .into_iter()
                .find(|e| e.component == "lock")
                .unwrap();
            assert_eq!(lock.config.get("code_format").is_some(), pin);
            assert_eq!(lock.config["state_unlocking"], "UNLOCKING");
        }
    }

    #[test]
    fn named_vehicles_name_their_entity_ids_and_heading_has_no_statistics() {
        let topics = Topics::new("v2m", "homeassistant");
        let mut info = info(vec![]);
        info.name = "My Blue Scooter!".into();
        info.custom_name = true;
        let d = VehicleDiscovery {
            topics: &topics,
            info: &info,
            pin_required: false,
        };
        let mut state = VehicleState::default();
        state.set(Field::Heading, 359i64);
        let entities = d.entities(&Shape::of(&state));
        let heading = entities.iter().find(|e| e.key == "heading").unwrap();
        assert_eq!(heading.config["object_id"], "my_blue_scooter_heading");
        assert_eq!(
            heading.config["default_entity_id"],
            "sensor.my_blue_scooter_heading"
        );
        // unique_id stays on the vehicle id: renaming the vehicle keeps the entity.
        assert_eq!(heading.config["unique_id"], "v2m_kx42_heading");
        assert!(
            heading.config.get("state_class").is_none(),
            "359° and 1° must not average to 180°"
        );
        assert_eq!(heading.config["device"]["serial_number"], "42");
        // A name without a usable slug (e.g. all Chinese) falls back to the id.
        info.name = "小蓝".into();
        let d = VehicleDiscovery {
            topics: &topics,
            info: &info,
            pin_required: false,
        };
        let e = d.entities(&Shape::of(&state));
        assert_eq!(e[0].config["object_id"], "kx42_heading");
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
            .entities(&Shape::of(&state))
            .iter()
            .any(|e| e.component == "device_tracker"));
        state.position = Position::new(31.2, 121.5);
        assert!(d
            .entities(&Shape::of(&state))
            .iter()
            .any(|e| e.component == "device_tracker"));
    }
}
