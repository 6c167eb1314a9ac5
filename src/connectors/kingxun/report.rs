//! What a device's frames mean for the bridge: status, trips, charges and device
//! events as vehicle state and events (pure functions of the decoded messages).

use super::*;

/// `svrtime` / `timestamp` fields: unix seconds.
pub(crate) fn now_secs() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

pub(super) const ID_PREFIX: &str = "kx";

/// Vehicle ids on the bridge: `kx<devId>`.
pub fn vehicle_id(dev_id: u32) -> VehicleId {
    VehicleId::for_upstream(ID_PREFIX, &dev_id.to_string())
        .unwrap_or_else(|| unreachable!("kx<number> is always a valid id"))
}

pub(super) fn device_model(dev_type: u8) -> &'static str {
    match dev_type {
        1 => "E-bike",
        2 => "E-motor",
        4 => "E-tricycle",
        6 => "Electric four-wheeler",
        _ => "Two-wheeler",
    }
}

/// 2-bit light field: 0b01 on.
pub(super) fn light_on(light: u16, shift: u16) -> bool {
    (light >> shift) & 0b11 == 0b01
}

/// Translates a 1002 into vehicle state.
pub fn status_state(s: &Status) -> VehicleState {
    let mut v = VehicleState {
        position: Position::new(s.lat, s.lng),
        ..Default::default()
    };
    v.set_f64(Field::Odometer, f64::from(s.mileage) / 100.0);
    v.set(Field::Driving, s.driving);
    v.set_f64(Field::Speed, f64::from(s.speed) * 0.0036);
    let open = |bit: u8| s.lock & (1 << bit) != 0;
    v.set(Field::Lock, if open(0) { "UNLOCKED" } else { "LOCKED" });
    v.set(Field::SeatLock, open(1));
    v.set(Field::GloveboxLock, open(2));
    v.set(Field::HelmetLock, open(3) || open(5));
    v.set(Field::MotorLock, open(4));
    v.set(Field::Headlight, light_on(s.light, 0));
    v.set(Field::SeatOccupied, s.sensor & 0x01 != 0);
    v.set(Field::Kickstand, s.sensor & 0x02 != 0);
    v.set(Field::Fallen, s.sensor & 0x10 != 0);
    v.set(Field::Braking, s.brake & 0x03 != 0);
    v.attributes.insert("light_status".into(), s.light.into());
    if let Some(m) = &s.mini_battery {
        v.set(Field::MiniBatteryLevel, i64::from(m.soc.min(100)));
        v.set_f64(Field::MiniBatteryVoltage, f64::from(m.voltage_cv) / 100.0);
        v.set_f64(Field::MiniBatteryTemperature, f64::from(m.temp_cc) / 100.0);
    }
    v.set(Field::BatteryPresent, s.battery.is_some());
    if let Some(b) = &s.battery {
        v.set(Field::BatteryLevel, i64::from(b.soc.min(100)));
        v.set_f64(Field::BatteryVoltage, f64::from(b.voltage_cv) / 100.0);
        v.set_f64(Field::BatteryTemperature, f64::from(b.temp_cc) / 100.0);
        v.set(Field::BatteryCycles, i64::from(b.cycles));
        v.set(Field::BatteryHealth, i64::from(b.soh.min(100)));
        // Positive while discharging, negative while charging.
        let sign = if b.current_flag == 2 { -1.0 } else { 1.0 };
        v.set_f64(
            Field::BatteryCurrent,
            sign * f64::from(b.current_ca) / 100.0,
        );
        v.set(Field::Charging, b.charging);
        if !b.id.is_empty() {
            v.attributes
                .insert("battery_id".into(), b.id.clone().into());
        }
        let volts: Vec<f64> = b
            .cells
            .iter()
            .map(|c| f64::from(c.voltage_cv) / 100.0)
            .collect();
        let temps: Vec<Option<f64>> = b
            .cells
            .iter()
            .map(|c| c.temp_cc.map(|t| f64::from(t) / 100.0))
            .collect();
        if !volts.is_empty() {
            v.attributes.insert("cell_voltages".into(), json!(volts));
            v.attributes
                .insert("cell_temperatures".into(), json!(temps));
        }
    }
    v
}

pub(super) fn local_to_utc(t: &LocalTime, tz: Zone) -> Option<chrono::DateTime<Utc>> {
    tz.to_utc(t.to_naive()?)
}

pub(super) fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A 1008 as "last trip" sensors and a `trip` event.
pub fn trip_update(t: &Trip, tz: Zone) -> (VehicleState, VehicleEvent) {
    let mut v = VehicleState::default();
    let km = f64::from(t.distance_m) / 1000.0;
    v.set_f64(Field::LastTripDistance, km);
    v.set_f64(Field::LastTripMaxSpeed, f64::from(t.max_speed) * 0.0036);
    v.set_f64(Field::LastTripAvgSpeed, f64::from(t.avg_speed) * 0.0036);
    let (start, end) = (local_to_utc(&t.start, tz), local_to_utc(&t.end, tz));
    let mut attrs = serde_json::Map::new();
    if let (Some(s), Some(e)) = (start, end) {
        let minutes = (e - s).num_seconds().max(0) as f64 / 60.0;
        v.set_f64(Field::LastTripDuration, (minutes * 10.0).round() / 10.0);
        attrs.insert("start".into(), rfc3339(s).into());
        attrs.insert("end".into(), rfc3339(e).into());
    }
    if let Some(e) = end {
        v.set(Field::LastTripEnd, rfc3339(e));
    }
    attrs.insert("distance_km".into(), json!(km));
    attrs.insert("soc_begin".into(), t.soc_begin.into());
    attrs.insert("soc_end".into(), t.soc_end.into());
    attrs.insert(
        "max_speed_kmh".into(),
        json!((f64::from(t.max_speed) * 0.036).round() / 10.0),
    );
    attrs.insert(
        "avg_speed_kmh".into(),
        json!((f64::from(t.avg_speed) * 0.036).round() / 10.0),
    );
    attrs.insert(
        "max_current_a".into(),
        json!(f64::from(t.max_current_ca) / 100.0),
    );
    attrs.insert("start_position".into(), json!([t.start_lat, t.start_lng]));
    attrs.insert("end_position".into(), json!([t.end_lat, t.end_lng]));
    attrs.insert("points".into(), t.points.len().into());
    (
        v,
        VehicleEvent {
            event_type: "trip".into(),
            attributes: attrs,
        },
    )
}

pub fn charge_event(c: &ChargeDone, tz: Zone) -> VehicleEvent {
    let mut attrs = serde_json::Map::new();
    if let Some(s) = local_to_utc(&c.start, tz) {
        attrs.insert("start".into(), rfc3339(s).into());
    }
    if let Some(e) = local_to_utc(&c.end, tz) {
        attrs.insert("end".into(), rfc3339(e).into());
    }
    attrs.insert("soc_begin".into(), c.soc_begin.into());
    attrs.insert("soc_end".into(), c.soc_end.into());
    attrs.insert(
        "voltage_begin".into(),
        json!(f64::from(c.voltage_begin_cv) / 100.0),
    );
    attrs.insert(
        "voltage_end".into(),
        json!(f64::from(c.voltage_end_cv) / 100.0),
    );
    attrs.insert(
        "max_current_a".into(),
        json!(f64::from(c.max_current_ca) / 100.0),
    );
    VehicleEvent {
        event_type: "charge_finished".into(),
        attributes: attrs,
    }
}

pub fn device_event(e: &DevEvent, tz: Zone) -> VehicleEvent {
    let mut attrs = serde_json::Map::new();
    if let Some(t) = local_to_utc(&e.time, tz) {
        let t = t + chrono::Duration::milliseconds(i64::from(e.millis.min(999)));
        attrs.insert(
            "time".into(),
            t.to_rfc3339_opts(SecondsFormat::Millis, true).into(),
        );
    }
    attrs.insert("code".into(), e.kind.into());
    attrs.insert("user_id".into(), e.user_id.into());
    attrs.insert(
        "speed_kmh".into(),
        json!((f64::from(e.speed) * 0.036).round() / 10.0),
    );
    if Position::new(e.lat, e.lng).is_some() {
        attrs.insert("position".into(), json!([e.lat, e.lng]));
    }
    VehicleEvent {
        event_type: DevEvent::type_name(e.kind),
        attributes: attrs,
    }
}
