//! The shared domain: vehicles, their typed state, events, commands and outcomes.
//!
//! [`Field`] is the catalog: one line per fact a vehicle can report, with the key it has
//! in the state JSON and everything Home Assistant needs to show it. Discovery, the state
//! JSON and per-field topics are all derived from this one table.
//!
//! Units are normalised here: km, km/h, %, V, A, °C, kPa, WGS-84 degrees.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

mod command;
mod field_set;
mod vec_map;

pub use command::*;
pub use field_set::FieldSet;
pub use vec_map::VecMap;

/// A stable, readable vehicle id: a VIN, `kx<devId>`, `ex<id>`, or what the user set.
/// Only `[A-Za-z0-9_-]` survive, so the id is safe in MQTT topics and HA object ids.
/// Shared text: the hub, its maps and every update hold the same copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VehicleId(std::sync::Arc<str>);

impl Serialize for VehicleId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl VehicleId {
    /// Sanitises `raw`; returns `None` when nothing usable is left.
    pub fn new(raw: &str) -> Option<VehicleId> {
        let id: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_ID_LEN)
            .collect();
        if id.trim_matches('_').is_empty() {
            None
        } else {
            Some(VehicleId(id.into()))
        }
    }
    /// The id of an upstream's vehicle: `prefix` followed by the upstream's own id, kept
    /// as it is when it is already safe and fits. Otherwise its safe characters (others
    /// become `_`, cut to fit) and `_` and a stable hash of the whole id: two ids that
    /// would sanitise alike (`粤B12345`, `京B12345`, or two long ids alike in their first
    /// 62 characters) stay two vehicles, and the same id is the same vehicle after a
    /// restart. Connectors keep the upstream's id beside this one and route by it: the
    /// upstream id is never parsed back out of this text.
    pub fn for_upstream(prefix: &str, upstream_id: &str) -> Option<VehicleId> {
        if upstream_id.is_empty() || prefix.len() + ID_HASH_LEN + 1 >= MAX_ID_LEN {
            return None;
        }
        let safe = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if upstream_id.chars().all(safe) && prefix.len() + upstream_id.len() <= MAX_ID_LEN {
            return VehicleId::new(&format!("{prefix}{upstream_id}"));
        }
        use sha1::Digest;
        let digest = sha1::Sha1::digest(upstream_id.as_bytes());
        let hash = hex::encode(&digest[..ID_HASH_LEN / 2]);
        let room = MAX_ID_LEN - prefix.len() - ID_HASH_LEN - 1;
        let readable: String = upstream_id
            .chars()
            .map(|c| if safe(c) { c } else { '_' })
            .take(room)
            .collect();
        Some(VehicleId(format!("{prefix}{readable}_{hash}").into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Longest vehicle id: it is part of every topic and HA object id.
const MAX_ID_LEN: usize = 64;
/// Hex digits of the hash that keeps unsafe upstream ids apart (40 bits).
const ID_HASH_LEN: usize = 10;

impl fmt::Display for VehicleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which HA component shows a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Numeric sensor.
    Number,
    /// Free text sensor.
    Text,
    /// ISO-8601 timestamp sensor.
    Timestamp,
    /// Date sensor (YYYY-MM-DD).
    Date,
    /// On/off sensor; `true` is ON (open, unlocked, running, problem...).
    Binary,
    /// Sensor with a fixed set of values (`Field::options`), shown by HA as an enum.
    Enum,
    /// Shown by a controllable entity (lock, switch, select, number) rather than a sensor.
    Control,
}

/// Everything HA needs about a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub key: &'static str,
    pub name: &'static str,
    pub kind: FieldKind,
    pub device_class: Option<&'static str>,
    pub unit: Option<&'static str>,
    pub state_class: Option<&'static str>,
    pub diagnostic: bool,
    pub icon: Option<&'static str>,
}

macro_rules! catalog {
    ($( $variant:ident = $key:literal, $name:literal, $kind:ident, $class:expr, $unit:expr, $sc:expr, $diag:expr, $icon:expr; )*) => {
        /// One fact a vehicle can report. See the module docs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Field { $($variant),* }

        impl Field {
            pub const ALL: &'static [Field] = &[$(Field::$variant),*];

            pub const fn spec(self) -> FieldSpec {
                match self {
                    $(Field::$variant => FieldSpec {
                        key: $key, name: $name, kind: FieldKind::$kind,
                        device_class: $class, unit: $unit, state_class: $sc,
                        diagnostic: $diag, icon: $icon,
                    }),*
                }
            }
        }
    };
}

const M: Option<&str> = Some("measurement");
const TI: Option<&str> = Some("total_increasing");
const N: Option<&str> = None;

catalog! {
    // Motion and position (latitude/longitude live in `Position`).
    Speed = "speed", "Speed", Number, Some("speed"), Some("km/h"), M, false, N;
    Heading = "heading", "Heading", Number, N, Some("°"), N, false, Some("mdi:compass");
    Altitude = "altitude", "Altitude", Number, Some("distance"), Some("m"), M, true, N;
    GpsValid = "gps_valid", "GPS fix", Binary, N, N, N, true, Some("mdi:crosshairs-gps");
    GpsTime = "gps_time", "GPS time", Timestamp, Some("timestamp"), N, N, true, N;
    Driving = "driving", "Driving", Binary, Some("moving"), N, N, false, N;
    Odometer = "odometer", "Odometer", Number, Some("distance"), Some("km"), TI, false, N;
    Address = "address", "Address", Text, N, N, N, false, Some("mdi:map-marker");
    Zone = "zone", "Zone", Text, N, N, N, false, Some("mdi:map-marker-radius");
    StatusText = "status_text", "Status", Text, N, N, N, false, Some("mdi:information-outline");
    Alarm = "alarm", "Alarm", Binary, Some("safety"), N, N, false, N;
    AlarmStatus = "alarm_status", "Alarm status", Enum, Some("enum"), N, N, false, Some("mdi:shield-car");
    // Engine and drive train.
    EngineRunning = "engine_running", "Engine running", Binary, Some("running"), N, N, false, N;
    EngineRpm = "engine_rpm", "Engine speed", Number, N, Some("rpm"), M, false, Some("mdi:engine");
    KeyStatus = "key_status", "Key", Enum, Some("enum"), N, N, false, Some("mdi:key");
    CoolantTemperature = "coolant_temperature", "Coolant temperature", Number, Some("temperature"), Some("°C"), M, false, N;
    FaultCodes = "fault_codes", "Fault codes", Text, N, N, N, true, Some("mdi:car-wrench");
    // Fuel, range, energy.
    FuelLevel = "fuel_level", "Fuel level", Number, N, Some("%"), M, false, Some("mdi:gas-station");
    FuelVolume = "fuel_volume", "Fuel", Number, Some("volume_storage"), Some("L"), M, false, Some("mdi:gas-station");
    Range = "range", "Range", Number, Some("distance"), Some("km"), M, false, N;
    RangeElectric = "range_electric", "Electric range", Number, Some("distance"), Some("km"), M, false, N;
    AvgConsumption = "avg_consumption", "Average consumption", Number, N, Some("L/100km"), M, false, Some("mdi:gas-station-outline");
    FuelUsedYesterday = "fuel_used_yesterday", "Fuel used yesterday", Number, Some("volume"), Some("L"), N, false, N;
    BatteryLevel = "battery_level", "Battery", Number, Some("battery"), Some("%"), M, false, N;
    BatteryVoltage = "battery_voltage", "Battery voltage", Number, Some("voltage"), Some("V"), M, false, N;
    BatteryCurrent = "battery_current", "Battery current", Number, Some("current"), Some("A"), M, false, N;
    BatteryTemperature = "battery_temperature", "Battery temperature", Number, Some("temperature"), Some("°C"), M, false, N;
    BatteryHealth = "battery_health", "Battery health", Number, N, Some("%"), M, true, Some("mdi:battery-heart-variant");
    BatteryCycles = "battery_cycles", "Battery charge cycles", Number, N, N, TI, true, Some("mdi:battery-sync");
    BatteryPresent = "battery_present", "Battery present", Binary, Some("presence"), N, N, true, N;
    Charging = "charging", "Charging", Binary, Some("battery_charging"), N, N, false, N;
    ChargerConnected = "charger_connected", "Charger connected", Binary, Some("plug"), N, N, false, N;
    TimeToFull = "time_to_full", "Time to full", Number, Some("duration"), Some("min"), M, false, N;
    AuxBatteryVoltage = "aux_battery_voltage", "12 V battery voltage", Number, Some("voltage"), Some("V"), M, false, N;
    AuxBatteryLevel = "aux_battery_level", "12 V battery", Number, Some("battery"), Some("%"), M, false, N;
    MiniBatteryLevel = "mini_battery_level", "Backup battery", Number, Some("battery"), Some("%"), M, true, N;
    MiniBatteryVoltage = "mini_battery_voltage", "Backup battery voltage", Number, Some("voltage"), Some("V"), M, true, N;
    MiniBatteryTemperature = "mini_battery_temperature", "Backup battery temperature", Number, Some("temperature"), Some("°C"), M, true, N;
    // Service.
    ServiceDistance = "service_distance", "Distance to service", Number, Some("distance"), Some("km"), M, false, Some("mdi:car-wrench");
    ServiceDays = "service_days", "Days to service", Number, Some("duration"), Some("d"), M, false, Some("mdi:calendar-clock");
    TripMeter1 = "trip_meter_1", "Trip meter 1", Number, Some("distance"), Some("km"), TI, false, N;
    TripMeter2 = "trip_meter_2", "Trip meter 2", Number, Some("distance"), Some("km"), TI, false, N;
    // Body: the central lock is a lock entity; the rest are sensors (true = open/unlocked).
    Lock = "lock", "Lock", Control, N, N, N, false, N;
    DoorLockDriver = "door_lock_driver", "Driver door lock", Binary, Some("lock"), N, N, false, N;
    DoorLockPassenger = "door_lock_passenger", "Passenger door lock", Binary, Some("lock"), N, N, false, N;
    DoorLockDriverRear = "door_lock_driver_rear", "Rear driver door lock", Binary, Some("lock"), N, N, false, N;
    DoorLockPassengerRear = "door_lock_passenger_rear", "Rear passenger door lock", Binary, Some("lock"), N, N, false, N;
    TrunkLock = "trunk_lock", "Trunk lock", Binary, Some("lock"), N, N, false, N;
    DoorDriver = "door_driver", "Driver door", Binary, Some("door"), N, N, false, N;
    DoorPassenger = "door_passenger", "Passenger door", Binary, Some("door"), N, N, false, N;
    DoorDriverRear = "door_driver_rear", "Rear driver door", Binary, Some("door"), N, N, false, N;
    DoorPassengerRear = "door_passenger_rear", "Rear passenger door", Binary, Some("door"), N, N, false, N;
    Trunk = "trunk", "Trunk", Binary, Some("opening"), N, N, false, N;
    Hood = "hood", "Hood", Binary, Some("opening"), N, N, false, N;
    WindowDriver = "window_driver", "Driver window", Binary, Some("window"), N, N, false, N;
    WindowPassenger = "window_passenger", "Passenger window", Binary, Some("window"), N, N, false, N;
    WindowDriverRear = "window_driver_rear", "Rear driver window", Binary, Some("window"), N, N, false, N;
    WindowPassengerRear = "window_passenger_rear", "Rear passenger window", Binary, Some("window"), N, N, false, N;
    Sunroof = "sunroof", "Sunroof", Binary, Some("window"), N, N, false, N;
    SeatbeltDriver = "seatbelt_driver", "Driver seat belt", Binary, N, N, N, true, Some("mdi:seatbelt");
    SeatbeltPassenger = "seatbelt_passenger", "Passenger seat belt", Binary, N, N, N, true, Some("mdi:seatbelt");
    HandBrake = "hand_brake", "Hand brake", Binary, N, N, N, false, Some("mdi:car-brake-parking");
    // Tyres.
    TyrePressureFrontLeft = "tyre_pressure_front_left", "Tyre pressure front left", Number, Some("pressure"), Some("kPa"), M, false, N;
    TyrePressureFrontRight = "tyre_pressure_front_right", "Tyre pressure front right", Number, Some("pressure"), Some("kPa"), M, false, N;
    TyrePressureRearLeft = "tyre_pressure_rear_left", "Tyre pressure rear left", Number, Some("pressure"), Some("kPa"), M, false, N;
    TyrePressureRearRight = "tyre_pressure_rear_right", "Tyre pressure rear right", Number, Some("pressure"), Some("kPa"), M, false, N;
    TyreWarning = "tyre_warning", "Tyre warning", Binary, Some("problem"), N, N, false, N;
    // Warnings (true = problem).
    AirbagDeployed = "airbag_deployed", "Airbag deployed", Binary, Some("problem"), N, N, false, Some("mdi:airbag");
    OilPressureWarning = "oil_pressure_warning", "Oil pressure", Binary, Some("problem"), N, N, false, Some("mdi:oil");
    OilLevelWarning = "oil_level_warning", "Oil level", Binary, Some("problem"), N, N, false, Some("mdi:oil-level");
    CoolantLevelWarning = "coolant_level_warning", "Coolant level", Binary, Some("problem"), N, N, false, Some("mdi:coolant-temperature");
    BrakeFluidWarning = "brake_fluid_warning", "Brake fluid", Binary, Some("problem"), N, N, false, Some("mdi:car-brake-fluid-level");
    WasherFluidWarning = "washer_fluid_warning", "Washer fluid", Binary, Some("problem"), N, N, false, Some("mdi:wiper-wash");
    BulbFailure = "bulb_failure", "Bulb failure", Binary, Some("problem"), N, N, false, Some("mdi:car-light-alert");
    TyreTemperatureFrontLeft = "tyre_temperature_front_left", "Tyre temperature front left", Number, Some("temperature"), Some("°C"), M, true, N;
    TyreTemperatureFrontRight = "tyre_temperature_front_right", "Tyre temperature front right", Number, Some("temperature"), Some("°C"), M, true, N;
    TyreTemperatureRearLeft = "tyre_temperature_rear_left", "Tyre temperature rear left", Number, Some("temperature"), Some("°C"), M, true, N;
    TyreTemperatureRearRight = "tyre_temperature_rear_right", "Tyre temperature rear right", Number, Some("temperature"), Some("°C"), M, true, N;
    // Climate.
    InteriorTemperature = "interior_temperature", "Interior temperature", Number, Some("temperature"), Some("°C"), M, false, N;
    ExteriorTemperature = "exterior_temperature", "Exterior temperature", Number, Some("temperature"), Some("°C"), M, false, N;
    PreClimate = "pre_climate", "Pre-climate", Binary, Some("running"), N, N, false, Some("mdi:air-conditioner");
    // Two-wheelers (kingxun): true = open / unlocked / active.
    SeatLock = "seat_lock", "Seat lock", Binary, Some("lock"), N, N, false, N;
    GloveboxLock = "glovebox_lock", "Glovebox lock", Binary, Some("lock"), N, N, false, N;
    HelmetLock = "helmet_lock", "Helmet lock", Binary, Some("lock"), N, N, false, N;
    MotorLock = "motor_lock", "Motor lock", Binary, Some("lock"), N, N, false, N;
    Headlight = "headlight", "Headlight", Binary, Some("light"), N, N, false, N;
    SeatOccupied = "seat_occupied", "Seat occupied", Binary, Some("occupancy"), N, N, false, N;
    Kickstand = "kickstand", "Kickstand down", Binary, N, N, N, false, Some("mdi:bicycle");
    Fallen = "fallen", "Fallen", Binary, Some("problem"), N, N, false, N;
    Braking = "braking", "Braking", Binary, N, N, N, true, Some("mdi:car-brake-alert");
    GuardPower = "guard_power", "Guard power", Control, N, N, N, false, N;
    MaxSpeed = "max_speed", "Max speed", Control, N, N, N, false, N;
    // Polling (cloud connectors): the owner's settings and what the schedule does now.
    Polling = "polling", "Polling", Control, N, N, N, false, N;
    PollInterval = "poll_interval", "Poll interval", Control, N, N, N, false, N;
    PollIntervalActive = "poll_interval_active", "Poll interval while driving", Control, N, N, N, false, N;
    PollingPhase = "polling_phase", "Polling phase", Enum, Some("enum"), N, N, true, Some("mdi:timer-cog-outline");
    NextPoll = "next_poll", "Next poll", Timestamp, Some("timestamp"), N, N, true, N;
    // Trips.
    LastTripDistance = "last_trip_distance", "Last trip distance", Number, Some("distance"), Some("km"), M, false, N;
    LastTripDuration = "last_trip_duration", "Last trip duration", Number, Some("duration"), Some("min"), M, false, N;
    LastTripMaxSpeed = "last_trip_max_speed", "Last trip max speed", Number, Some("speed"), Some("km/h"), M, false, N;
    LastTripAvgSpeed = "last_trip_avg_speed", "Last trip average speed", Number, Some("speed"), Some("km/h"), M, false, N;
    LastTripStart = "last_trip_start", "Last trip start", Timestamp, Some("timestamp"), N, N, false, N;
    LastTripEnd = "last_trip_end", "Last trip end", Timestamp, Some("timestamp"), N, N, false, N;
    // Charging sessions (worked out by the bridge).
    LastChargeEnd = "last_charge_end", "Last charge end", Timestamp, Some("timestamp"), N, N, false, N;
    LastChargeDuration = "last_charge_duration", "Last charge duration", Number, Some("duration"), Some("min"), M, false, N;
    LastChargeSocAdded = "last_charge_soc_added", "Last charge added", Number, N, Some("%"), M, false, Some("mdi:battery-plus");
    // Paperwork and connectivity.
    Plate = "plate", "Plate", Text, N, N, N, true, Some("mdi:card-text");
    Vin = "vin", "VIN", Text, N, N, N, true, Some("mdi:car-info");
    InsuranceExpiry = "insurance_expiry", "Insurance expiry", Date, Some("date"), N, N, false, N;
    InspectionDue = "inspection_due", "Inspection due", Date, Some("date"), N, N, false, N;
    DataUsed = "data_used", "Data used", Number, Some("data_size"), Some("MiB"), TI, true, N;
    DataLeft = "data_left", "Data left", Number, Some("data_size"), Some("MiB"), M, true, N;
    DataTotal = "data_total", "Data plan", Number, Some("data_size"), Some("MiB"), N, true, N;
    DataExpiry = "data_expiry", "Data plan expiry", Timestamp, Some("timestamp"), N, N, true, N;
    Plugged = "plugged", "Device plugged in", Binary, Some("plug"), N, N, true, N;
    ConnectorStatus = "connector_status", "Connection status", Text, N, N, N, true, Some("mdi:cloud-alert");
    ServerDevices = "server_devices", "Devices on server", Number, N, N, M, true, Some("mdi:server-network");
    // Set by the bridge on every update.
    LastUpdate = "last_update", "Last update", Timestamp, Some("timestamp"), N, N, true, N;
}

impl Field {
    pub fn key(self) -> &'static str {
        self.spec().key
    }

    /// The values an `Enum` field takes; a connector sets nothing else (an unknown raw
    /// value goes into an attribute instead).
    pub fn options(self) -> &'static [&'static str] {
        match self {
            // geely_galaxy_ha `const.py`: vehicleAlarm "1" on, "0" off.
            Field::AlarmStatus => &["off", "on"],
            // The xchanger status `keyStatus` constants, lower-cased.
            Field::KeyStatus => &["no_key_inserted", "key_inserted"],
            Field::PollingPhase => crate::model::PollingPhase::OPTIONS,
            _ => &[],
        }
    }

    pub fn from_key(key: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.key() == key)
    }
}

/// A reported value. Integers stay integers in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Text),
}

/// A text value behind one thin pointer, so that a `Value` is 16 bytes, not 24: a
/// vehicle holds dozens of values and few of them are text (10 000 vehicles, 2 MB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
#[allow(clippy::box_collection)] // the box is the point: a thin pointer
pub struct Text(Box<String>);

impl From<&str> for Text {
    fn from(v: &str) -> Self {
        Text(Box::new(v.to_string()))
    }
}

impl From<String> for Text {
    fn from(v: String) -> Self {
        Text(Box::new(v))
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Value {
    /// A float, rounded to 3 decimals to keep JSON small; non-finite values are refused.
    pub fn float(v: f64) -> Option<Value> {
        if !v.is_finite() {
            return None;
        }
        let r = (v * 1000.0).round() / 1000.0;
        if r.fract() == 0.0 && r.abs() < 9.0e15 {
            Some(Value::Int(r as i64))
        } else {
            Some(Value::Float(r))
        }
    }

    /// The value as an MQTT payload for per-field topics.
    pub fn to_payload(&self) -> String {
        self.to_payload_with(false)
    }

    /// As `to_payload`; with `json_booleans`, `true` / `false` instead of `ON` / `OFF`.
    pub fn to_payload_with(&self, json_booleans: bool) -> String {
        match self {
            Value::Bool(b) if json_booleans => b.to_string(),
            Value::Bool(true) => "ON".into(),
            Value::Bool(false) => "OFF".into(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Text(s) => s.to_string(),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.into())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v.into())
    }
}

/// A WGS-84 position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Position {
    pub latitude: f64,
    pub longitude: f64,
    /// Metres; `None` when the upstream does not say.
    pub gps_accuracy: Option<f64>,
}

impl Position {
    /// Refuses out-of-range and the (0, 0) "no fix" that many trackers send.
    pub fn new(latitude: f64, longitude: f64) -> Option<Position> {
        let valid = latitude.is_finite()
            && longitude.is_finite()
            && (-90.0..=90.0).contains(&latitude)
            && (-180.0..=180.0).contains(&longitude)
            && !(latitude == 0.0 && longitude == 0.0);
        valid.then_some(Position {
            latitude,
            longitude,
            gps_accuracy: None,
        })
    }
}

/// What a vehicle reports. Fields absent here have no entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VehicleState {
    pub position: Option<Position>,
    pub values: VecMap<Field, Value>,
    /// Extra data without an entity of its own (cell voltages, raw codes), shown as
    /// attributes of the state JSON.
    pub attributes: VecMap<std::borrow::Cow<'static, str>, serde_json::Value>,
    /// Fields whose value no longer holds (e.g. coolant temperature after the ignition
    /// went off): left out of the state JSON, so HA shows "unknown", while the entity stays.
    pub cleared: BTreeSet<Field>,
}

impl VehicleState {
    pub fn set(&mut self, field: Field, value: impl Into<Value>) -> &mut Self {
        self.cleared.remove(&field);
        self.values.insert(field, value.into());
        self
    }

    /// The field has no current value, but keeps its entity.
    pub fn clear(&mut self, field: Field) -> &mut Self {
        self.values.remove(&field);
        self.cleared.insert(field);
        self
    }

    /// Every field with an entity: those with a value and those cleared.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.values.keys().chain(self.cleared.iter()).copied()
    }

    /// Sets a float field; a non-finite value leaves the field absent.
    pub fn set_f64(&mut self, field: Field, value: f64) -> &mut Self {
        if let Some(v) = Value::float(value) {
            self.values.insert(field, v);
        }
        self
    }

    pub fn get(&self, field: Field) -> Option<&Value> {
        self.values.get(&field)
    }

    /// Overlays `other` onto `self`: present values win, absent ones are kept.
    pub fn merge(&mut self, other: VehicleState) {
        if other.position.is_some() {
            self.position = other.position;
        }
        for f in &other.cleared {
            self.values.remove(f);
            self.cleared.insert(*f);
        }
        for f in other.values.keys() {
            self.cleared.remove(f);
        }
        self.values.extend(other.values);
        self.attributes.extend(other.attributes);
        self.values.settle();
        self.attributes.settle();
    }

    /// The state JSON: one key per field, plus `latitude`/`longitude`/`gps_accuracy` and
    /// `attributes` when present.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (field, value) in &self.values {
            map.insert(
                field.key().to_string(),
                serde_json::to_value(value).unwrap_or_default(),
            );
        }
        if let Some(p) = &self.position {
            // 6 decimals is 0.1 m: more is noise from the upstream's float formatting.
            let round6 = |x: f64| (x * 1e6).round() / 1e6;
            map.insert("latitude".into(), round6(p.latitude).into());
            map.insert("longitude".into(), round6(p.longitude).into());
            if let Some(acc) = p.gps_accuracy {
                map.insert("gps_accuracy".into(), acc.into());
            }
        }
        if !self.attributes.is_empty() {
            let attrs: serde_json::Map<_, _> = self
                .attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            map.insert("attributes".into(), attrs.into());
        }
        serde_json::Value::Object(map)
    }
}

impl VehicleState {
    /// Reads back a state JSON written by [`VehicleState::to_json`] (keys that are not
    /// fields are ignored).
    pub fn from_json(json: &serde_json::Value) -> VehicleState {
        let mut state = VehicleState::default();
        let Some(map) = json.as_object() else {
            return state;
        };
        for (key, value) in map {
            let Some(field) = Field::from_key(key) else {
                continue;
            };
            let value = match value {
                serde_json::Value::Bool(b) => Value::Bool(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::Int(i),
                    None => match n.as_f64().and_then(Value::float) {
                        Some(v) => v,
                        None => continue,
                    },
                },
                serde_json::Value::String(s) => Value::Text(s.as_str().into()),
                _ => continue,
            };
            state.values.insert(field, value);
        }
        let coordinate = |key: &str| map.get(key).and_then(serde_json::Value::as_f64);
        if let (Some(lat), Some(lon)) = (coordinate("latitude"), coordinate("longitude")) {
            state.position = Position::new(lat, lon).map(|mut p| {
                p.gps_accuracy = coordinate("gps_accuracy");
                p
            });
        }
        if let Some(attrs) = map.get("attributes").and_then(|a| a.as_object()) {
            state.attributes = attrs
                .iter()
                .map(|(k, v)| (k.clone().into(), v.clone()))
                .collect();
        }
        state
    }
}

/// Lock states as HA's MQTT lock knows them.
pub mod lock_state {
    pub const LOCKED: &str = "LOCKED";
    pub const UNLOCKED: &str = "UNLOCKED";
    pub const LOCKING: &str = "LOCKING";
    pub const UNLOCKING: &str = "UNLOCKING";
    pub const JAMMED: &str = "JAMMED";
}

/// Something that happened to a vehicle (trip finished, tip-over, charge finished...).
#[derive(Debug, Clone, PartialEq)]
pub struct VehicleEvent {
    /// snake_case, one of the vehicle's declared `event_types`.
    pub event_type: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Who a vehicle is and what it can do; sent by a connector before its first state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VehicleInfo {
    pub id: VehicleId,
    pub name: String,
    /// Usually a constant of the connector: borrowed, not one copy per vehicle.
    pub manufacturer: std::borrow::Cow<'static, str>,
    /// The model to show while the device has not said what it is.
    pub model: std::borrow::Cow<'static, str>,
    /// The model the device reported itself, and its firmware: `None` is "not told
    /// (yet)", which keeps what it reported before (the hub keeps both in the vehicle's
    /// record), so a restart or a relink never turns a document back to a default.
    pub reported_model: Option<std::borrow::Cow<'static, str>>,
    pub sw_version: Option<String>,
    /// Whether the user named the vehicle in the config: its entity ids then start with
    /// that name instead of the vehicle id.
    pub custom_name: bool,
    /// VIN, ESN or device id: HA's device `serial_number`.
    pub serial_number: Option<String>,
    /// Shared where vehicles of a kind can do the same (10 000 trackers, one list).
    pub capabilities: std::sync::Arc<[Capability]>,
    /// Event types this vehicle can raise; an HA event entity exists when non-empty.
    /// Shared: every device of a kind raises the same types (10 000 trackers, one list).
    pub event_types: std::sync::Arc<[String]>,
}

#[cfg(test)]
mod tests;
