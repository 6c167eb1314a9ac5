//! Home Assistant discovery documents: which entities a vehicle has and what their
//! documents say, as a pure function of the vehicle's config, its reported identity and
//! the fields it reported.
//!
//! Entities come from the model: a field a vehicle has reported becomes a sensor,
//! binary sensor or the state of a control; a capability becomes a control; a position
//! becomes a device tracker. Each entity has its own retained discovery topic
//! `<prefix>/<component>/<node>/<vehicle>_<key>/config`.
//!
//! `topics`: every topic name in one place. `vehicle`: a vehicle's documents.
//! `bridge`: the bridge device's own. `announced`: what HA was told about each vehicle
//! and what to publish to bring it in line. Whether to publish at all (on which event,
//! while MQTT has room) is decided in one place: `bridge::lifecycle`.

mod announced;
mod bridge;
mod topics;
mod vehicle;

pub use announced::{entity_topic, Announced, EntityName, EntityNames, Publish, Source};
pub use bridge::{bridge_entities, INSTANCE_KEY_PREFIX};
pub use topics::Topics;
pub use vehicle::VehicleDiscovery;

use serde_json::{json, Value as Json};

use crate::model::{Field, VehicleState};

pub const ORIGIN_NAME: &str = "vehicle2mqtt";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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

/// What decides a vehicle's entity set: every field it has reported (since it was first
/// seen, across restarts) and whether it ever had a position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Shape {
    pub fields: crate::model::FieldSet,
    pub position: bool,
}

impl Shape {
    /// Adds what `state` reports; true when the shape grew.
    pub fn absorb(&mut self, state: &VehicleState) -> bool {
        let before = (self.fields.len(), self.position);
        self.fields.extend(state.fields());
        self.position |= state.position.is_some();
        before != (self.fields.len(), self.position)
    }

    pub fn of(state: &VehicleState) -> Shape {
        let mut shape = Shape::default();
        shape.absorb(state);
        shape
    }
}

/// Decimals worth showing per unit: upstreams send floats like 12345.600000001.
pub(crate) fn display_precision(unit: &str) -> Option<u8> {
    match unit {
        "km" | "°C" | "L" | "L/100km" | "A" | "MiB" => Some(1),
        "V" => Some(2),
        "km/h" | "%" | "kPa" | "m" | "min" | "d" | "rpm" | "°" => Some(0),
        _ => None,
    }
}

/// Whether an entity keeps showing its last value while the vehicle is unreachable
/// (availability follows the bridge only). Live readings (speed, rpm, ...) and controls
/// that need the link go unavailable instead.
pub fn keeps_last_value(key: &str) -> bool {
    const LIVE: &[Field] = &[
        Field::Speed,
        Field::Heading,
        Field::Altitude,
        Field::GpsValid,
        Field::Driving,
        Field::EngineRpm,
        Field::BatteryCurrent,
        Field::CoolantTemperature,
        Field::Braking,
        Field::SeatOccupied,
    ];
    match Field::from_key(key) {
        Some(field) => !LIVE.contains(&field),
        None => matches!(
            key,
            "location"
                | "lock"
                | "guard_power"
                | "max_speed"
                | "connected"
                | "command_result"
                | "events"
                | "pin"
        ),
    }
}

pub(crate) fn origin() -> Json {
    json!({
        "name": ORIGIN_NAME,
        "sw_version": VERSION,
        "support_url": "https://github.com/vehicle2mqtt/vehicle2mqtt",
    })
}

/// Whether `key` is an entity key a vehicle can have (the part after `<vehicle>_`).
pub fn is_entity_key(key: &str) -> bool {
    const OTHERS: &[&str] = &[
        "location",
        "command_result",
        "events",
        "guard_power",
        "max_speed",
        "connected",
        "pin",
    ];
    Field::from_key(key).is_some()
        || crate::controls::by_key(key).is_some()
        || OTHERS.contains(&key)
        || key.strip_prefix("cmd_").is_some_and(|n| !n.is_empty())
}
