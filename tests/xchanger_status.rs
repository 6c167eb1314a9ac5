//! The forum thread's full status sample (docs/protocols/xchanger.md, "The status sample";
//! coordinates filled in for its placeholders) → state.

use serde_json::Value as Json;
use vehicle2mqtt::model::{Field, Value};
use vehicle2mqtt::protocol::xchanger::status;

fn sample() -> Json {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/connectors/xchanger/data/xchanger_status.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

#[test]
fn full_seed_sample_maps_every_meaningful_field() {
    let st = status::parse(&sample(), false).unwrap();
    assert_eq!(st.update_time, Some(1_597_062_290_325));
    assert_eq!(st.engine_running, Some(false));
    let s = &st.state;
    // Both blocks untrusted (the sample's own): shown, with a wide accuracy.
    let p = s
        .position
        .expect("an untrusted position is shown, not hidden");
    assert!(
        (p.latitude - 31.238).abs() < 1e-9 && (p.longitude - 121.476).abs() < 1e-9,
        "{p:?}"
    );
    assert_eq!(p.gps_accuracy, Some(status::UNTRUSTED_ACCURACY_M));
    assert_eq!(s.attributes["position_trusted"], false);
    let expect: &[(Field, Value)] = &[
        (Field::Altitude, Value::Int(15)),
        (Field::Speed, Value::Int(0)),
        (Field::Driving, Value::Bool(false)),
        (Field::Heading, Value::Int(0)),
        (Field::EngineRunning, Value::Bool(false)),
        (Field::KeyStatus, Value::Text("no_key_inserted".into())),
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
        // Warnings: every status 0 in the sample's healthy car, the airbag not deployed.
        (Field::AirbagDeployed, Value::Bool(false)),
        (Field::OilPressureWarning, Value::Bool(false)),
        (Field::OilLevelWarning, Value::Bool(false)),
        (Field::CoolantLevelWarning, Value::Bool(false)),
        (Field::BrakeFluidWarning, Value::Bool(false)),
        (Field::WasherFluidWarning, Value::Bool(false)),
        (Field::BulbFailure, Value::Bool(false)),
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
    // Sentinels are no values: 0 °C inside at 29 °C outside in August, PM2.5 65535.
    assert!(s.get(Field::InteriorTemperature).is_none());
    assert!(!s.attributes.contains_key("interior_pm25"));
    // Codes whose meaning no public client gives: raw, as attributes, not as states.
    assert!(
        s.get(Field::AlarmStatus).is_none(),
        "vehicleAlarm 6 is unknown"
    );
    assert_eq!(s.attributes["alarm_status_raw"], "6");
    assert_eq!(s.attributes["usage_mode_raw"], "1");
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
    // Hidden only on request.
    assert!(status::parse(&sample(), true)
        .unwrap()
        .state
        .position
        .is_none());
}

fn with(f: impl FnOnce(&mut Json)) -> status::Status {
    let mut doc = sample();
    f(&mut doc["data"]["vehicleStatus"]);
    status::parse(&doc, false).unwrap()
}

#[test]
fn position_comes_from_position_first_each_block_by_its_own_trust() {
    // A trusted `position` with an untrusted `extPosition` elsewhere: the trusted one.
    let s = with(|vs| {
        let b = &mut vs["basicVehicleStatus"];
        b["position"]["posCanBeTrusted"] = true.into();
        b["extPosition"]["latitude"] = (40.0 * 3_600_000.0).into();
    });
    let p = s.state.position.unwrap();
    assert!((p.latitude - 31.238).abs() < 1e-9, "{p:?}");
    assert_eq!(p.gps_accuracy, None, "trusted: no widened accuracy");
    assert_eq!(s.state.attributes["position_trusted"], true);
    // Only the extended block trusted: that one.
    let s = with(|vs| {
        let b = &mut vs["basicVehicleStatus"];
        b["extPosition"]["posCanBeTrusted"] = true.into();
        b["extPosition"]["latitude"] = (40.0 * 3_600_000.0).into();
    });
    assert!((s.state.position.unwrap().latitude - 40.0).abs() < 1e-9);
    // Neither trusted: `position`, widened.
    let s = with(|vs| {
        vs["basicVehicleStatus"]["extPosition"]["latitude"] = (40.0 * 3_600_000.0).into();
    });
    let p = s.state.position.unwrap();
    assert!((p.latitude - 31.238).abs() < 1e-9);
    assert_eq!(p.gps_accuracy, Some(status::UNTRUSTED_ACCURACY_M));
}

#[test]
fn warnings_enums_and_sentinels() {
    let s = with(|vs| {
        let a = &mut vs["additionalVehicleStatus"];
        a["runningStatus"]["engineOilPressureWarning"] = 1.into();
        a["maintenanceStatus"]["washerFluidLevelStatus"] = "2".into();
        a["drivingSafetyStatus"]["srsStatus"] = "SRS_DEPLOYED".into();
        a["drivingSafetyStatus"]["vehicleAlarm"] = "1".into();
        a["climateStatus"]["interiorTemp"] = 0.into();
        a["climateStatus"]["exteriorTemp"] = 2.into();
        a["pollutionStatus"]["interiorPM25"] = 35.into();
        vs["basicVehicleStatus"]["keyStatus"] = "SOMETHING_NEW".into();
    })
    .state;
    assert_eq!(s.get(Field::OilPressureWarning), Some(&Value::Bool(true)));
    assert_eq!(s.get(Field::WasherFluidWarning), Some(&Value::Bool(true)));
    assert_eq!(s.get(Field::AirbagDeployed), Some(&Value::Bool(true)));
    assert_eq!(s.get(Field::AlarmStatus), Some(&Value::Text("on".into())));
    assert!(Field::AlarmStatus.options().contains(&"on"));
    // 0 °C inside at 2 °C outside is plausible, so it stays.
    assert_eq!(s.get(Field::InteriorTemperature), Some(&Value::Int(0)));
    assert_eq!(s.attributes["interior_pm25"], 35.0);
    assert!(s.get(Field::KeyStatus).is_none());
    assert_eq!(s.attributes["key_status_raw"], "SOMETHING_NEW");
}
