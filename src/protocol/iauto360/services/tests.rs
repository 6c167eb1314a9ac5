use super::*;
use crate::model::Value as V;

#[test]
fn condition_with_ignition_on_and_off() {
    let (gl, gg) = crate::geo::wgs84_to_gcj02(23.1064, 113.3245);
    let d = json!({"location": [gg, gl], "mileage": 12345.6, "voltage": 13.8, "driveStatus": 1,
        "vin": "LSGBL5334HF000001", "speed": 42, "enginRate": 2100, "coldTemplate": 88, "faultCode": ["P0171", "P0300"]});
    let (st, running) = condition(&d);
    assert_eq!(running, Some(true));
    let p = st.position.unwrap();
    assert!((p.latitude - 23.1064).abs() < 1e-6 && (p.longitude - 113.3245).abs() < 1e-6);
    assert_eq!(st.get(Field::Odometer), Some(&V::Float(12345.6)));
    assert_eq!(st.get(Field::EngineRpm), Some(&V::Int(2100)));
    assert_eq!(st.get(Field::FaultCodes), Some(&V::from("P0171, P0300")));
    let (st, running) = condition(&json!({"driveStatus": "0", "speed": 42, "enginRate": 900}));
    assert_eq!(running, Some(false));
    assert_eq!(
        st.get(Field::Speed),
        Some(&V::Int(0)),
        "speed only counts with ignition on"
    );
    assert_eq!(
        st.get(Field::EngineRpm),
        Some(&V::Int(0)),
        "the engine is not turning"
    );
    assert!(
        st.cleared.contains(&Field::CoolantTemperature),
        "the driving coolant value no longer holds"
    );
    assert_eq!(st.get(Field::FaultCodes), Some(&V::from("none")));
    let (st, _) = condition(&json!({"location": "here", "mileage": "x"}));
    assert!(st.position.is_none() && st.get(Field::Odometer).is_none());
}

#[test]
fn tyres_with_status_bits() {
    let st = tyres(
        &json!({"frontLeft": "0|230|31|1700000000", "frontRight": "9|150|35|1700000000",
        "rearLeft": "16|228|30|1700000000", "rearRight": "garbage"}),
    );
    assert_eq!(st.get(Field::TyrePressureFrontLeft), Some(&V::Int(230)));
    assert_eq!(st.get(Field::TyreTemperatureFrontRight), Some(&V::Int(35)));
    assert!(st.get(Field::TyrePressureRearRight).is_none());
    assert_eq!(st.get(Field::TyreWarning), Some(&V::Bool(true)));
    assert_eq!(
        st.attributes["tyre_front_right_status"],
        json!(["low_pressure", "leak_suspected"])
    );
    assert_eq!(
        st.attributes["tyre_rear_left_status"],
        json!(["low_sensor_battery"])
    );
    assert_eq!(
        st.attributes["tyre_front_left_updated"],
        "2023-11-14T22:13:20Z"
    );
}

#[test]
fn battery_health_info_fuel() {
    let (st, at) = battery_history(
        &json!({"records": [{"val": 124, "time": 1700000000}, {"val": 131, "time": 1700007200}]}),
    );
    assert_eq!(st.get(Field::AuxBatteryVoltage), Some(&V::Float(13.1)));
    assert_eq!(at, Some(1700007200), "the newest record's own time");
    let st = health(
        &json!({"airFlow": 325, "coldTemplate": 8850, "enginRate": 780, "faultCodes": ["P0420"]}),
    );
    assert_eq!(st.attributes["health_check"]["air_flow_g_s"], json!(3.25));
    assert_eq!(
        st.attributes["health_check"]["coolant_temperature_c"],
        json!(88.5)
    );
    assert_eq!(
        st.attributes["health_check"]["fault_codes"],
        json!(["P0420"])
    );
    let st = vehicle_info(
        &json!({"plateNo": "粤A12345", "insuranceDate": "2024-02-29", "carReviewDate": "2026-05-31"}),
    );
    assert!(
        st.get(Field::InsuranceExpiry).is_none(),
        "a purchase date says nothing of the expiry"
    );
    assert_eq!(st.attributes["insurance_date"], json!("2024-02-29"));
    assert_eq!(st.get(Field::InspectionDue), Some(&V::from("2026-05-31")));
    let st = fuel_yesterday(
        &json!({"avgOilConsume": 1189, "mileage": 40, "avgSpeed": 35, "cost": 2800}),
    );
    assert_eq!(st.get(Field::FuelUsedYesterday), Some(&V::Float(4.756)));
}

#[test]
fn trips_and_pushed_events() {
    let d = json!({"records": [
        {"id": 7, "startTime": 1700000000, "endTime": 1700001800, "mileage": 15.0, "maxSpeed": 72},
        {"id": 8, "startTime": 1700003600, "endTime": 1700005400, "mileage": 30.0, "maxSpeed": 90}]});
    let t = latest_trip(&d).unwrap();
    assert_eq!(t.id, 8);
    let coords: Vec<Value> = (0..1200)
        .map(|i| json!([113.3 + i as f64 * 1e-4, 23.1]))
        .collect();
    let (st, ev) = trip(&t, Some(&json!({"coords": coords})));
    assert_eq!(st.get(Field::LastTripAvgSpeed), Some(&V::Int(60)));
    assert_eq!(st.get(Field::LastTripDuration), Some(&V::Int(30)));
    assert!(ev.attributes["track"].as_array().unwrap().len() <= MAX_TRACK_POINTS);

    let unlock = pushed_event(
        &json!({"id": 5, "esn": "351234567812345", "type": "开锁", "time": 1700000000,
        "text": "[粤A12345] 于 [2023-11-15 06:13] 附近开锁成功"}),
    )
    .unwrap();
    assert_eq!(unlock.event.event_type, "unlock_result");
    assert_eq!(
        unlock.lock,
        Some(LockOutcome {
            locked: false,
            success: true
        })
    );
    assert_eq!(unlock.state.get(Field::Lock), Some(&V::from("UNLOCKED")));
    let failed =
        pushed_event(&json!({"id": 6, "esn": "1", "type": "关锁", "text": "关锁失败"})).unwrap();
    assert_eq!(
        failed.lock,
        Some(LockOutcome {
            locked: true,
            success: false
        })
    );
    assert!(failed.state.get(Field::Lock).is_none());
    let odd = pushed_event(&json!({"id": 9, "esn": "1", "type": "新类型"})).unwrap();
    assert_eq!(odd.event.event_type, "other");
    assert!(pushed_event(&json!({"esn": "1", "type": "点火"})).is_none());
}

#[test]
fn the_last_data_time_of_1001() {
    assert_eq!(
        last_data_time(&json!({"activeTime": 1_700_000_000})),
        Some(1_700_000_000)
    );
    assert_eq!(
        last_data_time(&json!({"activeTime": "1700000000"})),
        Some(1_700_000_000)
    );
    for bad in [
        json!({}),
        json!({"activeTime": 0}),
        json!({"activeTime": -5}),
        json!({"activeTime": 1.5}),
        json!({"activeTime": "soon"}),
        json!({"activeTime": 1e300}),
    ] {
        assert_eq!(last_data_time(&bad), None, "{bad}");
    }
}
