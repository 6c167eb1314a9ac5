//! The status document (`GET .../vehicle/status/{vin}`, the full sample in
//! docs/protocols/xchanger.md, "The status sample") → the shared model. Values arrive as
//! numbers or strings ("0"/"1"); a missing or malformed value makes only that field absent.
//!
//! DECISIONs where the sources name a field but not its meaning (docs/protocols/xchanger.md,
//! "Status field meanings"):
//! - positions are `raw / 3_600_000` degrees, GCJ-02 when `marsCoordinates` is true;
//!   `position` first, then `extPosition` (both public clients, fineemb/Lynk-Co and
//!   pySmartHashtag, read `position`), each judged by its own `posCanBeTrusted`; an
//!   untrusted one is shown with a wide `gps_accuracy` (the status sample has both
//!   untrusted: hiding them would show no car on any map) unless the caller hides it;
//! - warning statuses (oil pressure and level, coolant level, brake and washer fluid,
//!   bulbs) are 0 when fine and anything else is a warning: the sample's parked, healthy
//!   car reports 0 for each; `srsStatus` "SRS_NOT_DEPLOYED" is the only airbag value seen;
//! - `interiorTemp` 0 beside an exterior temperature at least 5 °C away from it, and
//!   PM2.5 65535, are "no value" markers (the sample: 0 °C inside at 29 °C outside in August);
//! - `fuelLevel` is litres; tyre pressures are kPa; `tripMeterN` are km;
//! - door/trunk lock status 1 = locked; open statuses 0 = closed;
//! - window status 2 = closed, 1 = open, anything else unknown (left absent);
//! - driver side = front left (China is left-hand drive);
//! - EV fields are used only when the car reports an electric range or charge level.

use serde_json::Value;

use crate::geo::gcj02_to_wgs84;
use crate::model::{lock_state, Field, Position, VehicleState};
use crate::protocol::json::{number, text};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("the answer has no data.vehicleStatus")]
    NoVehicleStatus,
}

/// The parts of a status answer the connector needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: VehicleState,
    /// `updateTime` (ms): advances when the car has reported; confirms commands.
    pub update_time: Option<i64>,
    pub engine_running: Option<bool>,
}

/// A number as [`number`] reads it, or a boolean as 0 / 1.
fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        other => number(Some(other)),
    }
}

fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        other => num(Some(other)).map(|n| n != 0.0),
    }
}

/// How far off an untrusted position may be, as HA's `gps_accuracy` (metres): wide
/// enough that HA's zone logic does not trust it either.
pub const UNTRUSTED_ACCURACY_M: f64 = 1000.0;

/// A position block's coordinates in WGS-84 and whether the car trusts them.
fn position_of(p: &Value) -> Option<(f64, f64, bool)> {
    let (lat, lng) = (num(p.get("latitude"))?, num(p.get("longitude"))?);
    let (mut lat, mut lng) = (lat / 3_600_000.0, lng / 3_600_000.0);
    if flag(p.get("marsCoordinates")).unwrap_or(false) {
        (lat, lng) = gcj02_to_wgs84(lat, lng);
    }
    Position::new(lat, lng)?;
    Some((lat, lng, flag(p.get("posCanBeTrusted")).unwrap_or(false)))
}

/// A named value for an enum field, or the raw value as an attribute when its meaning
/// is not known.
fn named(
    st: &mut VehicleState,
    field: Field,
    raw: Option<String>,
    meaning: fn(&str) -> Option<&'static str>,
) {
    let Some(raw) = raw else { return };
    match meaning(&raw) {
        Some(name) => {
            st.set(field, name);
        }
        None => {
            st.attributes
                .insert(format!("{}_raw", field.key()).into(), raw.into());
        }
    }
}

/// geely_galaxy_ha `const.py` (`vehicle_alarm`): "1" on, "0" off.
fn alarm_meaning(raw: &str) -> Option<&'static str> {
    match raw.trim() {
        "0" => Some("off"),
        "1" => Some("on"),
        _ => None,
    }
}

fn key_meaning(raw: &str) -> Option<&'static str> {
    match raw.trim() {
        "NO_KEY_INSERTED" => Some("no_key_inserted"),
        "KEY_INSERTED" => Some("key_inserted"),
        _ => None,
    }
}

fn raw_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses a whole answer (`{"code","data":{...}}`) or just its `data`.
pub fn parse(doc: &Value, hide_untrusted_position: bool) -> Result<Status, StatusError> {
    let data = doc.get("data").unwrap_or(doc);
    let vs = data
        .get("vehicleStatus")
        .filter(|v| v.is_object())
        .ok_or(StatusError::NoVehicleStatus)?;
    let basic = vs.get("basicVehicleStatus");
    let add = vs.get("additionalVehicleStatus");
    let b = |k: &str| basic.and_then(|v| v.get(k));
    let sect = |s: &str, k: &str| add.and_then(|v| v.get(s)).and_then(|v| v.get(k));
    let mut st = VehicleState::default();

    // Position: `position` first, then `extPosition`; a trusted block beats an untrusted one.
    let blocks: Vec<&Value> = [b("position"), b("extPosition")]
        .into_iter()
        .flatten()
        .filter(|p| p.is_object())
        .collect();
    let located: Vec<(&Value, (f64, f64, bool))> = blocks
        .iter()
        .filter_map(|p| position_of(p).map(|pos| (*p, pos)))
        .collect();
    let chosen = located
        .iter()
        .find(|(_, (_, _, trusted))| *trusted)
        .or_else(|| located.first());
    if let Some((p, (lat, lng, trusted))) = chosen {
        if *trusted || !hide_untrusted_position {
            st.position = Position::new(*lat, *lng).map(|mut pos| {
                pos.gps_accuracy = (!trusted).then_some(UNTRUSTED_ACCURACY_M);
                pos
            });
        }
        if let Some(alt) = num(p.get("altitude")) {
            st.set_f64(Field::Altitude, alt);
        }
        st.attributes
            .insert("position_trusted".into(), (*trusted).into());
    }
    if let Some(v) = num(b("speed")) {
        st.set_f64(Field::Speed, v);
        st.set(Field::Driving, v > 1.0);
    }
    if let Some(v) = num(b("direction")) {
        st.set_f64(Field::Heading, v);
    }
    let engine_running = match text(b("engineStatus")).as_deref() {
        Some("ENGINE_RUNNING") => Some(true),
        Some("ENGINE_OFF") => Some(false),
        Some(other) => {
            st.attributes
                .insert("engine_status_raw".into(), other.into());
            None
        }
        None => None,
    };
    if let Some(r) = engine_running {
        st.set(Field::EngineRunning, r);
    }
    named(
        &mut st,
        Field::KeyStatus,
        raw_text(b("keyStatus")),
        key_meaning,
    );
    // No public client says what the usage modes mean: raw, as an attribute.
    if let Some(v) = raw_text(b("usageMode")) {
        st.attributes.insert("usage_mode_raw".into(), v.into());
    }
    if let Some(v) = num(b("distanceToEmpty")) {
        st.set_f64(Field::Range, v);
    }

    let m = |k: &str| sect("maintenanceStatus", k);
    if let Some(v) = num(m("odometer")) {
        st.set_f64(Field::Odometer, v);
    }
    if let Some(v) = num(m("distanceToService")) {
        st.set_f64(Field::ServiceDistance, v);
    }
    if let Some(v) = num(m("daysToService")) {
        st.set_f64(Field::ServiceDays, v);
    }
    let battery = |k: &str| m("mainBatteryStatus").and_then(|b| b.get(k));
    if let Some(v) = num(battery("voltage")) {
        st.set_f64(Field::AuxBatteryVoltage, v);
    }
    // DECISION: `chargeLevel` is a percentage when positive; `stateOfCharge` is a small
    // status code (1 in the sample) of unknown scale, kept raw as an attribute.
    if let Some(v) = num(battery("chargeLevel")).filter(|v| *v > 0.0 && *v <= 100.0) {
        st.set_f64(Field::AuxBatteryLevel, v);
    }
    if let Some(v) = num(battery("stateOfCharge")) {
        st.attributes
            .insert("aux_battery_state_of_charge".into(), v.into());
    }
    if let Some(v) = num(m("engineHrsToService")) {
        st.attributes
            .insert("engine_hours_to_service".into(), v.into());
    }
    for (key, field) in [
        ("tyreStatusDriver", Field::TyrePressureFrontLeft),
        ("tyreStatusPassenger", Field::TyrePressureFrontRight),
        ("tyreStatusDriverRear", Field::TyrePressureRearLeft),
        ("tyreStatusPassengerRear", Field::TyrePressureRearRight),
    ] {
        if let Some(v) = num(m(key)) {
            st.set_f64(field, v);
        }
    }
    let warnings: Vec<bool> = [
        "tyrePreWarningDriver",
        "tyrePreWarningPassenger",
        "tyrePreWarningDriverRear",
        "tyrePreWarningPassengerRear",
    ]
    .iter()
    .filter_map(|k| flag(m(k)))
    .collect();
    if !warnings.is_empty() {
        st.set(Field::TyreWarning, warnings.iter().any(|w| *w));
    }

    let r = |k: &str| sect("runningStatus", k);
    if let Some(v) = num(r("fuelLevel")) {
        st.set_f64(Field::FuelVolume, v);
    }
    // Raw codes whose scale the sources do not give: attributes, not entities.
    for (key, attr) in [
        ("fuelLevelStatus", "fuel_level_status"),
        ("avgSpeed", "average_speed"),
        (
            "aveFuelConsumptionInLatestDrivingCycle",
            "consumption_latest_cycle",
        ),
    ] {
        if let Some(v) = num(r(key)) {
            st.attributes.insert(attr.into(), v.into());
        }
    }
    if let Some(v) = num(r("aveFuelConsumption")) {
        st.set_f64(Field::AvgConsumption, v);
    }
    if let Some(v) = num(r("engineCoolantTemperature")) {
        st.set_f64(Field::CoolantTemperature, v);
    }
    if let Some(v) = num(r("tripMeter1")) {
        st.set_f64(Field::TripMeter1, v);
    }
    if let Some(v) = num(r("tripMeter2")) {
        st.set_f64(Field::TripMeter2, v);
    }
    if let Some(v) = num(sect("drivingBehaviourStatus", "engineSpeed")) {
        st.set_f64(Field::EngineRpm, v);
    }

    let c = |k: &str| sect("climateStatus", k);
    let exterior = num(c("exteriorTemp"));
    let interior = num(c("interiorTemp"))
        .filter(|v| !(*v == 0.0 && exterior.is_some_and(|e| (e - v).abs() >= 5.0)));
    if let Some(v) = interior {
        st.set_f64(Field::InteriorTemperature, v);
    }
    if let Some(v) = exterior {
        st.set_f64(Field::ExteriorTemperature, v);
    }
    for (key, attr) in [
        ("interiorPM25", "interior_pm25"),
        ("exteriorPM25", "exterior_pm25"),
    ] {
        if let Some(v) = num(sect("pollutionStatus", key)).filter(|v| *v < 65535.0) {
            st.attributes.insert(attr.into(), v.into());
        }
    }
    if let Some(v) = flag(c("preClimateActive")) {
        st.set(Field::PreClimate, v);
    }
    for (key, field) in [
        ("winStatusDriver", Field::WindowDriver),
        ("winStatusPassenger", Field::WindowPassenger),
        ("winStatusDriverRear", Field::WindowDriverRear),
        ("winStatusPassengerRear", Field::WindowPassengerRear),
    ] {
        // 2 closed, 1 open; other codes are unknown and leave the field absent.
        let status = num(c(key)).filter(|v| *v == 1.0 || *v == 2.0);
        if let Some(v) = status {
            st.set(field, v == 1.0);
        }
    }
    if let Some(v) = num(c("sunroofOpenStatus")) {
        st.attributes.insert("sunroof_status".into(), v.into());
    }

    let s = |k: &str| sect("drivingSafetyStatus", k);
    let mut all_locked = None;
    for (key, field) in [
        ("doorLockStatusDriver", Field::DoorLockDriver),
        ("doorLockStatusPassenger", Field::DoorLockPassenger),
        ("doorLockStatusDriverRear", Field::DoorLockDriverRear),
        ("doorLockStatusPassengerRear", Field::DoorLockPassengerRear),
    ] {
        if let Some(locked) = num(s(key)).map(|v| v == 1.0) {
            st.set(field, !locked); // binary lock sensor: on = unlocked
            all_locked = Some(all_locked.unwrap_or(true) && locked);
        }
    }
    if let Some(locked) = all_locked {
        st.set(
            Field::Lock,
            if locked {
                lock_state::LOCKED
            } else {
                lock_state::UNLOCKED
            },
        );
    }
    if let Some(locked) = num(s("trunkLockStatus")).map(|v| v == 1.0) {
        st.set(Field::TrunkLock, !locked);
    }
    for (key, field) in [
        ("doorOpenStatusDriver", Field::DoorDriver),
        ("doorOpenStatusPassenger", Field::DoorPassenger),
        ("doorOpenStatusDriverRear", Field::DoorDriverRear),
        ("doorOpenStatusPassengerRear", Field::DoorPassengerRear),
        ("trunkOpenStatus", Field::Trunk),
        ("engineHoodOpenStatus", Field::Hood),
    ] {
        if let Some(open) = flag(s(key)) {
            st.set(field, open);
        }
    }
    if let Some(v) = flag(s("seatBeltStatusDriver")) {
        st.set(Field::SeatbeltDriver, v);
    }
    if let Some(v) = flag(s("seatBeltStatusPassenger")) {
        st.set(Field::SeatbeltPassenger, v);
    }
    if let Some(v) = flag(s("handBrakeStatus")) {
        st.set(Field::HandBrake, v);
    }
    if let Some(v) = num(s("centralLockingStatus")) {
        st.attributes
            .insert("central_locking_status".into(), v.into());
    }
    named(
        &mut st,
        Field::AlarmStatus,
        raw_text(s("vehicleAlarm")),
        alarm_meaning,
    );
    match text(s("srsStatus")).as_deref() {
        Some("SRS_NOT_DEPLOYED") => {
            st.set(Field::AirbagDeployed, false);
        }
        Some(other) if other.contains("DEPLOYED") && !other.contains("NOT") => {
            st.set(Field::AirbagDeployed, true);
        }
        Some(other) => {
            st.attributes.insert("srs_status_raw".into(), other.into());
        }
        None => {}
    }
    for (value, field) in [
        (r("engineOilPressureWarning"), Field::OilPressureWarning),
        (r("engineOilLevelStatus"), Field::OilLevelWarning),
        (r("engineCoolantLevelStatus"), Field::CoolantLevelWarning),
        (r("bulbStatus"), Field::BulbFailure),
        (m("brakeFluidLevelStatus"), Field::BrakeFluidWarning),
        (m("washerFluidLevelStatus"), Field::WasherFluidWarning),
    ] {
        if let Some(v) = num(value) {
            st.set(field, v != 0.0);
        }
    }

    let e = |k: &str| sect("electricVehicleStatus", k);
    let ev_range = num(e("distanceToEmptyOnBatteryOnly")).filter(|v| *v > 0.0);
    let ev_level = num(e("chargeLevel")).filter(|v| *v > 0.0);
    if ev_range.is_some() || ev_level.is_some() {
        if let Some(v) = ev_range {
            st.set_f64(Field::RangeElectric, v);
        }
        if let Some(v) = ev_level {
            st.set_f64(Field::BatteryLevel, v);
        }
        if let Some(v) = num(e("timeToFullyCharged")) {
            st.set_f64(Field::TimeToFull, v);
        }
        if let Some(v) = flag(e("statusOfChargerConnection")) {
            st.set(Field::ChargerConnected, v);
        }
        if let Some(v) = flag(e("chargerState")) {
            st.set(Field::Charging, v);
        }
    }

    let update_time = num(vs.get("updateTime")).map(|v| v as i64);
    if let Some(t) = update_time.and_then(chrono::DateTime::from_timestamp_millis) {
        let t = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        st.attributes.insert("update_time".into(), t.clone().into());
        // The car's own time: HA's "Last update" and staleness follow it.
        st.set(Field::LastUpdate, t);
    }
    Ok(Status {
        state: st,
        update_time,
        engine_running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_and_numbers_are_both_accepted() {
        let doc = json!({"vehicleStatus": {"basicVehicleStatus": {"speed": "12.5", "distanceToEmpty": 550},
            "additionalVehicleStatus": {"drivingSafetyStatus": {"doorOpenStatusDriver": "1", "seatBeltStatusDriver": "true"}}}});
        let s = parse(&doc, false).unwrap().state;
        assert_eq!(s.get(Field::Speed), Some(&crate::model::Value::Float(12.5)));
        assert_eq!(s.get(Field::Range), Some(&crate::model::Value::Int(550)));
        assert_eq!(
            s.get(Field::DoorDriver),
            Some(&crate::model::Value::Bool(true))
        );
        assert_eq!(
            s.get(Field::SeatbeltDriver),
            Some(&crate::model::Value::Bool(true))
        );
    }

    #[test]
    fn malformed_fields_cost_only_themselves() {
        let doc = json!({"vehicleStatus": {"basicVehicleStatus": {"speed": "fast", "distanceToEmpty": [1], "direction": 90}}});
        let s = parse(&doc, false).unwrap().state;
        assert!(s.get(Field::Speed).is_none());
        assert!(s.get(Field::Range).is_none());
        assert_eq!(s.get(Field::Heading), Some(&crate::model::Value::Int(90)));
        assert_eq!(
            parse(&json!({"code": "1000", "data": {}}), false),
            Err(StatusError::NoVehicleStatus)
        );
    }

    #[test]
    fn mars_coordinates_are_converted_and_untrusted_ones_are_widened_or_hidden() {
        let (glat, glng) = crate::geo::wgs84_to_gcj02(31.2304, 121.4737);
        let doc = json!({"vehicleStatus": {"basicVehicleStatus": {"position": {
            "latitude": glat * 3_600_000.0, "longitude": glng * 3_600_000.0, "posCanBeTrusted": true, "marsCoordinates": true}}}});
        let p = parse(&doc, false).unwrap().state.position.unwrap();
        assert!(
            (p.latitude - 31.2304).abs() < 1e-6 && (p.longitude - 121.4737).abs() < 1e-6,
            "{p:?}"
        );
        let mut untrusted = doc.clone();
        untrusted["vehicleStatus"]["basicVehicleStatus"]["position"]["posCanBeTrusted"] =
            json!(false);
        let shown = parse(&untrusted, false).unwrap().state.position.unwrap();
        assert_eq!(shown.gps_accuracy, Some(UNTRUSTED_ACCURACY_M));
        assert!(parse(&untrusted, true).unwrap().state.position.is_none());
    }
}
