//! The seed's full status sample (coordinates filled in for its placeholders) → state.

use serde_json::Value as Json;
use vehicle2mqtt::model::{Field, Value};
use vehicle2mqtt::protocol::xchanger::status;

fn sample() -> Json {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/sim/data/xchanger_status.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

#[test]
fn full_seed_sample_maps_every_meaningful_field() {
    let st = status::parse(&sample(), true).unwrap();
    assert_eq!(st.update_time, Some(1_597_062_290_325));
    assert_eq!(st.engine_running, Some(false));
    let s = &st.state;
    let p = s
        .position
        .expect("position accepted when untrusted positions are allowed");
    assert!(
        (p.latitude - 31.238).abs() < 1e-9 && (p.longitude - 121.476).abs() < 1e-9,
        "{p:?}"
    );
    let expect: &[(Field, Value)] = &[
        (Field::Altitude, Value::Int(15)),
        (Field::Speed, Value::Int(0)),
        (Field::Driving, Value::Bool(false)),
        (Field::Heading, Value::Int(0)),
        (Field::EngineRunning, Value::Bool(false)),
        (Field::KeyStatus, Value::Text("NO_KEY_INSERTED".into())),
        (Field::UsageMode, Value::Text("1".into())),
        (Field::Range, Value::Int(550)),
        (Field::Odometer, Value::Int(33253)),
        (Field::ServiceDistance, Value::Int(6274)),
        (Field::ServiceDays, Value::Int(278)),
        (Field::AuxBatteryVoltage, Value::Int(12)),
        (Field::TyrePressureFrontLeft, Value::Int(180)),
        (Field::TyrePressureFrontRight, Value::Int(179)),
        (Field::TyrePressureRearLeft, Value::Int(175)),
        (Field::TyrePressureRearRight, Value::Int(176)),
        (Field::TyreWarning, Value::Bool(false)),
        (Field::FuelVolume, Value::Int(49)),
        (Field::AvgConsumption, Value::Int(9)),
        (Field::CoolantTemperature, Value::Int(77)),
        (Field::TripMeter1, Value::Int(3254)),
        (Field::TripMeter2, Value::Int(12)),
        (Field::EngineRpm, Value::Int(0)),
        (Field::InteriorTemperature, Value::Int(0)),
        (Field::ExteriorTemperature, Value::Int(29)),
        (Field::PreClimate, Value::Bool(false)),
        (Field::WindowDriver, Value::Bool(false)),
        (Field::WindowPassengerRear, Value::Bool(false)),
        (Field::DoorLockDriver, Value::Bool(false)),
        (Field::Lock, Value::Text("LOCKED".into())),
        (Field::TrunkLock, Value::Bool(false)),
        (Field::DoorDriver, Value::Bool(false)),
        (Field::Trunk, Value::Bool(false)),
        (Field::Hood, Value::Bool(false)),
        (Field::SeatbeltDriver, Value::Bool(false)),
        (Field::HandBrake, Value::Bool(true)),
        (Field::AlarmStatus, Value::Text("6".into())),
    ];
    for (field, value) in expect {
        assert_eq!(s.get(*field), Some(value), "{}", field.key());
    }
    // A petrol car reporting zeros in electricVehicleStatus gets no EV entities.
    for ev in [
        Field::RangeElectric,
        Field::BatteryLevel,
        Field::Charging,
        Field::ChargerConnected,
    ] {
        assert!(s.get(ev).is_none(), "{}", ev.key());
    }
    assert_eq!(s.attributes["update_time"], "2020-08-10T12:24:50.325Z");
    // Raw codes without a documented scale travel as attributes.
    for (attr, value) in [
        ("fuel_level_status", 6.0),
        ("central_locking_status", 0.0),
        ("aux_battery_state_of_charge", 1.0),
        ("engine_hours_to_service", 379.0),
        ("average_speed", 37.0),
        ("consumption_latest_cycle", 165.0),
        ("sunroof_status", 1.0),
    ] {
        assert_eq!(s.attributes[attr].as_f64(), Some(value), "{attr}");
    }
    assert!(
        s.get(Field::AuxBatteryLevel).is_none(),
        "chargeLevel 0 is no reading"
    );
    // By default an untrusted position is not used.
    assert!(status::parse(&sample(), false)
        .unwrap()
        .state
        .position
        .is_none());
}
