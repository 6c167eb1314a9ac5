//! Service answers (the `data` of a `flag 1` reply) and pushed events → the shared model.
//! Field names and units are the service document's tables (docs/protocols/iauto360.md,
//! one section per service); a missing or malformed field makes only that field absent.
//!
//! DECISIONs where the document is silent (docs/protocols/iauto360.md, "Decisions"):
//! - 1011 `voltage` and 1017 `val / 10` are the 12 V battery; `driveStatus 1` (ignition
//!   on) is "engine running";
//! - 1021 `insuranceDate` says nothing of when the policy ends (it is the purchase
//!   date): an attribute, never `insurance_expiry`; `carReviewDate` is the inspection due
//!   date as given;
//! - 1011 carries no time of its own: its values count as measured when they were read;
//!   1017 records carry theirs, and an older one never overrides a newer value;
//! - 3004 fuel used yesterday = `avgOilConsume / 100` L/100 km × `mileage` km / 100.

use chrono::{DateTime, NaiveDate, SecondsFormat};
use serde_json::{json, Map, Value};

use super::Tyre;
use crate::geo::gcj02_to_wgs84;
use crate::model::{lock_state, Field, Position, VehicleEvent, VehicleState};
use crate::protocol::json::{number as num, text};

fn iso(unix_s: f64) -> Option<String> {
    DateTime::from_timestamp(unix_s as i64, 0)
        .filter(|_| unix_s > 0.0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// `[lng, lat]` in GCJ-02 → a WGS-84 position.
pub fn position(v: Option<&Value>) -> Option<Position> {
    let a = v?.as_array()?;
    let (lng, lat) = (num(a.first())?, num(a.get(1))?);
    let (lat, lng) = gcj02_to_wgs84(lat, lng);
    Position::new(lat, lng)
}

fn codes(v: Option<&Value>) -> Option<Vec<String>> {
    let list = v?.as_array()?;
    Some(list.iter().filter_map(|c| text(Some(c))).collect())
}

/// 1011 latest condition. Returns the state and whether the ignition is on.
pub fn condition(d: &Value) -> (VehicleState, Option<bool>) {
    let mut st = VehicleState {
        position: position(d.get("location")),
        ..Default::default()
    };
    if let Some(v) = num(d.get("mileage")) {
        st.set_f64(Field::Odometer, v);
    }
    if let Some(v) = num(d.get("voltage")) {
        st.set_f64(Field::AuxBatteryVoltage, v);
    }
    let running = num(d.get("driveStatus")).map(|v| v == 1.0);
    if let Some(r) = running {
        st.set(Field::EngineRunning, r);
    }
    // Speed, rpm and coolant are only meaningful with the ignition on.
    if running == Some(true) {
        if let Some(v) = num(d.get("speed")) {
            st.set_f64(Field::Speed, v);
            st.set(Field::Driving, v > 1.0);
        }
        if let Some(v) = num(d.get("enginRate")) {
            st.set_f64(Field::EngineRpm, v);
        }
        if let Some(v) = num(d.get("coldTemplate")) {
            st.set_f64(Field::CoolantTemperature, v);
        }
    } else if running == Some(false) {
        // With the ignition off the car is not moving and the engine not turning; the
        // coolant's last driving value no longer holds (docs/protocols/iauto360.md,
        // "1011 latest condition": speed, enginRate and coldTemplate "only have a value
        // when driveStatus is 1").
        st.set(Field::Driving, false);
        st.set_f64(Field::Speed, 0.0);
        st.set_f64(Field::EngineRpm, 0.0);
        st.clear(Field::CoolantTemperature);
    }
    if let Some(v) = text(d.get("vin")) {
        st.set(Field::Vin, v);
    }
    // No `faultCode` (or an empty one) means no fault codes.
    let faults = codes(d.get("faultCode")).unwrap_or_default();
    st.set(
        Field::FaultCodes,
        if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        },
    );
    st.attributes
        .insert("fault_code_count".into(), faults.len().into());
    (st, running)
}

/// 1001 terminal status.
pub fn binding(d: &Value) -> VehicleState {
    let mut st = VehicleState::default();
    if let Some(v) = num(d.get("inserted")) {
        st.set(Field::Plugged, v == 1.0);
    }
    if let Some(v) = num(d.get("bindStatus")) {
        st.attributes.insert("bound".into(), (v == 1.0).into());
    }
    if let Some(v) = text(d.get("plateNo")) {
        st.set(Field::Plate, v);
    }
    if let Some(t) = num(d.get("activeTime")).and_then(iso) {
        st.attributes
            .insert("last_data_time".into(), t.clone().into());
        // The box's last data: HA's "Last update" and staleness follow it.
        st.set(Field::LastUpdate, t);
    }
    st
}

/// 1001 `activeTime`, the box's last data ("最后数据时间", unix s): when it last uploaded a
/// report; a refresh waits for one newer than the press (docs/protocols/iauto360.md,
/// "Refresh"). Absent, zero or not a whole number of seconds: `None`.
pub fn last_data_time(d: &Value) -> Option<i64> {
    num(d.get("activeTime"))
        .filter(|t| t.is_finite() && *t > 0.0 && t.fract() == 0.0 && *t < 1e12)
        .map(|t| t as i64)
}

/// 1019 tyres: pressure and temperature sensors, one warning, and per tyre the list of
/// what its status bits say.
pub fn tyres(d: &Value) -> VehicleState {
    let mut st = VehicleState::default();
    let mut any = None;
    for (key, name, pressure, temperature) in [
        (
            "frontLeft",
            "front_left",
            Field::TyrePressureFrontLeft,
            Field::TyreTemperatureFrontLeft,
        ),
        (
            "frontRight",
            "front_right",
            Field::TyrePressureFrontRight,
            Field::TyreTemperatureFrontRight,
        ),
        (
            "rearLeft",
            "rear_left",
            Field::TyrePressureRearLeft,
            Field::TyreTemperatureRearLeft,
        ),
        (
            "rearRight",
            "rear_right",
            Field::TyrePressureRearRight,
            Field::TyreTemperatureRearRight,
        ),
    ] {
        let Some(Ok(tyre)) = d.get(key).and_then(Value::as_str).map(Tyre::parse) else {
            continue;
        };
        if let Some(p) = tyre.pressure_kpa {
            st.set(pressure, i64::from(p));
        }
        if let Some(t) = tyre.temperature_c {
            st.set(temperature, i64::from(t));
        }
        let s = tyre.status;
        let flags: Vec<&str> = [
            (s.device_fault, "device_fault"),
            (s.low_pressure, "low_pressure"),
            (s.high_pressure, "high_pressure"),
            (s.high_temperature, "high_temperature"),
            (s.leak_suspected, "leak_suspected"),
            (s.low_battery, "low_sensor_battery"),
            (s.no_signal, "no_signal"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        st.attributes
            .insert(format!("tyre_{name}_status").into(), json!(flags));
        if let Some(t) = tyre.updated.map(|t| t as f64).and_then(iso) {
            st.attributes
                .insert(format!("tyre_{name}_updated").into(), t.into());
        }
        any = Some(any.unwrap_or(false) || s.any_problem());
    }
    if let Some(problem) = any {
        st.set(Field::TyreWarning, problem);
    }
    st
}

/// 1017 battery voltage history (1/10 V): the newest record's value, and its time (unix s).
pub fn battery_history(d: &Value) -> (VehicleState, Option<i64>) {
    let mut st = VehicleState::default();
    let latest = d.get("records").and_then(Value::as_array).and_then(|r| {
        r.iter()
            .filter_map(|x| Some((num(x.get("time"))?, num(x.get("val"))?)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    });
    if let Some((time, val)) = latest {
        st.set_f64(Field::AuxBatteryVoltage, val / 10.0);
        if let Some(t) = iso(time) {
            st.attributes
                .insert("aux_battery_voltage_time".into(), t.into());
        }
    }
    (st, latest.map(|(t, _)| t as i64))
}

/// 1018 health check: values ÷ 100 as attributes, the check's fault codes.
pub fn health(d: &Value) -> VehicleState {
    let mut st = VehicleState::default();
    let mut values = Map::new();
    for (key, name) in [
        ("airFlow", "air_flow_g_s"),
        ("airlPress", "intake_pressure_kpa"),
        ("airTemplate", "intake_temperature_c"),
        ("coldTemplate", "coolant_temperature_c"),
        ("oilPress", "fuel_pressure_kpa"),
        ("doorTemplate", "throttle_percent"),
        ("egr", "egr_percent"),
        ("fireTemplate", "ignition_timing_deg"),
        ("steamPress", "evap_pressure_kpa"),
        ("streamWash", "evap_purge_percent"),
        ("vacuumPress", "manifold_vacuum_kpa"),
        ("catalyzatorTemplate", "catalyst_b1s1_c"),
        ("catalyzator2Template", "catalyst_b1s2_c"),
        ("catalyzator3Template", "catalyst_b2s1_c"),
        ("catalyzator4Template", "catalyst_b2s2_c"),
        ("enginLoad", "engine_load_percent"),
    ] {
        if let Some(v) = num(d.get(key)) {
            values.insert(name.into(), json!((v / 100.0 * 100.0).round() / 100.0));
        }
    }
    if let Some(v) = num(d.get("enginRate")) {
        values.insert("engine_rpm".into(), json!(v));
    }
    if let Some(t) = num(d.get("diagnoseTime")).and_then(iso) {
        values.insert("time".into(), t.into());
    }
    if let Some(c) = codes(d.get("faultCodes")) {
        values.insert("fault_codes".into(), json!(c));
    }
    if !values.is_empty() {
        st.attributes.insert("health_check".into(), values.into());
    }
    st
}

fn date(v: Option<&Value>) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text(v)?.get(..10)?, "%Y-%m-%d").ok()
}

/// 1021 vehicle information.
pub fn vehicle_info(d: &Value) -> VehicleState {
    let mut st = VehicleState::default();
    if let Some(v) = text(d.get("plateNo")) {
        st.set(Field::Plate, v);
    }
    if let Some(v) = text(d.get("vin")) {
        st.set(Field::Vin, v);
    }
    if let Some(bought) = date(d.get("insuranceDate")) {
        st.attributes.insert(
            "insurance_date".into(),
            bought.format("%Y-%m-%d").to_string().into(),
        );
    }
    if let Some(due) = date(d.get("carReviewDate")) {
        st.set(Field::InspectionDue, due.format("%Y-%m-%d").to_string());
    }
    for (key, name) in [
        ("insurer", "insurer"),
        ("oilType", "fuel_grade"),
        ("engineNo", "engine_number"),
        ("intervalMileage", "service_interval_km"),
    ] {
        if let Some(v) = text(d.get(key)) {
            st.attributes.insert(name.into(), v.into());
        }
    }
    st
}

/// One trip of 1012.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub id: i64,
    pub start: i64,
    pub end: i64,
    pub record: Value,
}

/// 1012: one page's trips (at most 10 per page: docs/protocols/iauto360.md, "1012 trips"),
/// in no particular order.
pub fn trips(d: &Value) -> Vec<Trip> {
    let Some(records) = d.get("records").and_then(Value::as_array) else {
        return Vec::new();
    };
    records
        .iter()
        .filter_map(|r| {
            Some(Trip {
                id: num(r.get("id"))? as i64,
                start: num(r.get("startTime"))? as i64,
                end: num(r.get("endTime"))? as i64,
                record: r.clone(),
            })
        })
        .filter(|t| t.end >= t.start)
        .collect()
}

/// 1012's `totalCount`: how many trips the time range holds.
pub fn trip_count(d: &Value) -> Option<usize> {
    num(d.get("totalCount")).map(|n| n.max(0.0) as usize)
}

/// 1012: the trip that ended last.
pub fn latest_trip(d: &Value) -> Option<Trip> {
    trips(d).into_iter().max_by_key(|t| (t.end, t.id))
}

/// Trips per 1012 page (docs/protocols/iauto360.md, "1012 trips": "每页数据为10条").
pub const TRIPS_PER_PAGE: usize = 10;

/// Most track points carried by one trip event.
pub const MAX_TRACK_POINTS: usize = 500;

/// A trip's sensors and its HA event (with the 1013 track in WGS-84, thinned to at most
/// [`MAX_TRACK_POINTS`]).
pub fn trip(trip: &Trip, track: Option<&Value>) -> (VehicleState, VehicleEvent) {
    let r = &trip.record;
    let mut st = VehicleState::default();
    let minutes = (trip.end - trip.start) as f64 / 60.0;
    let distance = num(r.get("mileage"));
    if let Some(km) = distance {
        st.set_f64(Field::LastTripDistance, km);
        if minutes > 0.0 {
            st.set_f64(Field::LastTripAvgSpeed, km / (minutes / 60.0));
        }
    }
    st.set_f64(Field::LastTripDuration, minutes);
    if let Some(v) = num(r.get("maxSpeed")) {
        st.set_f64(Field::LastTripMaxSpeed, v);
    }
    if let Some(t) = iso(trip.end as f64) {
        st.set(Field::LastTripEnd, t);
    }
    let mut attrs = Map::new();
    attrs.insert("trip_id".into(), trip.id.into());
    for (key, name) in [
        ("mileage", "distance_km"),
        ("avgOil", "avg_consumption_l_100km"),
        ("totalOil", "fuel_l"),
        ("maxSpeed", "max_speed_kmh"),
        ("rapidAccelerate", "rapid_accelerations"),
        ("rapidBreak", "rapid_brakes"),
        ("hotTime", "warm_up_s"),
        ("idleTime", "idle_s"),
    ] {
        if let Some(v) = num(r.get(key)) {
            attrs.insert(name.into(), json!(v));
        }
    }
    for (name, t) in [("start", trip.start), ("end", trip.end)] {
        if let Some(t) = iso(t as f64) {
            attrs.insert(name.into(), t.into());
        }
    }
    if let Some(coords) = track
        .and_then(|t| t.get("coords"))
        .and_then(Value::as_array)
    {
        let step = coords.len().div_ceil(MAX_TRACK_POINTS).max(1);
        let points: Vec<Value> = coords
            .iter()
            .step_by(step)
            .filter_map(|c| position(Some(c)))
            .map(|p| json!([round6(p.latitude), round6(p.longitude)]))
            .collect();
        attrs.insert("track".into(), points.into());
    }
    (
        st,
        VehicleEvent {
            event_type: "trip".into(),
            attributes: attrs,
        },
    )
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// 3004 yesterday's fuel statistics.
pub fn fuel_yesterday(d: &Value) -> VehicleState {
    let mut st = VehicleState::default();
    let avg = num(d.get("avgOilConsume")).map(|v| v / 100.0);
    let km = num(d.get("mileage"));
    if let (Some(avg), Some(km)) = (avg, km) {
        st.set_f64(Field::FuelUsedYesterday, avg * km / 100.0);
    }
    let mut y = Map::new();
    if let Some(v) = avg {
        y.insert("avg_consumption_l_100km".into(), json!(v));
    }
    if let Some(v) = km {
        y.insert("distance_km".into(), json!(v));
    }
    if let Some(v) = num(d.get("avgSpeed")) {
        y.insert("avg_speed_kmh".into(), json!(v));
    }
    if let Some(v) = num(d.get("cost")) {
        y.insert("cost".into(), json!(v));
    }
    if !y.is_empty() {
        st.attributes.insert("yesterday".into(), y.into());
    }
    st
}

/// The event types a vehicle can raise, in HA's snake_case.
pub const EVENT_TYPES: &[&str] = &[
    "vibration",
    "unplugged",
    "ignition_on",
    "ignition_off",
    "geofence_exit",
    "collision",
    "traffic_violation",
    "fault",
    "low_battery_voltage",
    "tyre_alert",
    "service_due",
    "unlock_result",
    "lock_result",
    "data_exceeded",
    "forbidden_zone",
    "trip",
    "other",
];

/// The outcome of a remote lock / unlock, from a pushed 开锁 / 关锁 event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOutcome {
    pub locked: bool,
    pub success: bool,
}

/// One pushed record (`vehicle_events.md`), translated.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedEvent {
    pub id: i64,
    pub esn: String,
    /// When it happened (unix seconds), when the platform says.
    pub time: Option<i64>,
    pub event: VehicleEvent,
    pub state: VehicleState,
    pub lock: Option<LockOutcome>,
}

/// Translates one record; `None` when it lacks the required `id`, `esn` or `type`.
pub fn pushed_event(r: &Value) -> Option<PushedEvent> {
    let id = num(r.get("id"))? as i64;
    let esn = text(r.get("esn"))?;
    let kind = text(r.get("type"))?;
    let event_type = match kind.as_str() {
        "震动" => "vibration",
        "拔出" => "unplugged",
        "点火" => "ignition_on",
        "熄火" => "ignition_off",
        "越界" => "geofence_exit",
        "碰撞" => "collision",
        "违章" => "traffic_violation",
        "故障" => "fault",
        "电瓶电压" => "low_battery_voltage",
        "胎压" => "tyre_alert",
        "保养" => "service_due",
        "开锁" => "unlock_result",
        "关锁" => "lock_result",
        "流量超出" => "data_exceeded",
        "禁入地界" => "forbidden_zone",
        _ => "other",
    };
    let text_ = text(r.get("text")).unwrap_or_default();
    let attrs_in = r.get("attrs").and_then(Value::as_object);
    let mut state = VehicleState {
        position: position(r.get("location")),
        ..Default::default()
    };
    match event_type {
        "ignition_on" => {
            state.set(Field::EngineRunning, true);
        }
        "ignition_off" => {
            state.set(Field::EngineRunning, false);
            state.set(Field::Driving, false);
        }
        "unplugged" => {
            state.set(Field::Plugged, false);
        }
        _ => {}
    }
    let lock = matches!(event_type, "unlock_result" | "lock_result").then(|| {
        // `attrs.status` when given (1 = success); else the text says 成功 / 失败.
        let success = match attrs_in.and_then(|a| num(a.get("status"))) {
            Some(s) => s == 1.0,
            None => text_.contains("成功") && !text_.contains("失败"),
        };
        LockOutcome {
            locked: event_type == "lock_result",
            success,
        }
    });
    if let Some(LockOutcome {
        locked,
        success: true,
    }) = lock
    {
        state.set(
            Field::Lock,
            if locked {
                lock_state::LOCKED
            } else {
                lock_state::UNLOCKED
            },
        );
    }
    let mut attributes = Map::new();
    attributes.insert("id".into(), id.into());
    attributes.insert("type".into(), kind.clone().into());
    if !text_.is_empty() {
        attributes.insert("text".into(), text_.into());
    }
    if let Some(t) = num(r.get("time")).and_then(iso) {
        attributes.insert("time".into(), t.into());
    }
    if let Some(p) = &state.position {
        attributes.insert("latitude".into(), round6(p.latitude).into());
        attributes.insert("longitude".into(), round6(p.longitude).into());
    }
    if let Some(a) = attrs_in {
        attributes.insert("attrs".into(), Value::Object(a.clone()));
    }
    Some(PushedEvent {
        id,
        esn,
        time: num(r.get("time")).map(|t| t as i64),
        event: VehicleEvent {
            event_type: event_type.into(),
            attributes,
        },
        state,
        lock,
    })
}

#[cfg(test)]
mod tests;
