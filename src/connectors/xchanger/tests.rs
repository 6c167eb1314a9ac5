use super::*;

#[test]
fn vehicle_lists_in_every_shape() {
    let a =
        json!({"list": [{"vin": "L6T7722E0LN000001", "plateNo": "浙A12345", "seriesName": "01"}]});
    let b = json!({"code": "1000", "data": {"list": [{"vin": "L6T7722E0LN000001"}, {"vin": "../bad"}]}});
    let c = json!({"data": [{"vin": "L6T7722E0LN000001"}]});
    assert_eq!(
        parse_vehicle_list(&a).unwrap()[0].plate.as_deref(),
        Some("浙A12345")
    );
    assert_eq!(
        parse_vehicle_list(&b).unwrap().len(),
        1,
        "bad VINs are skipped"
    );
    assert_eq!(parse_vehicle_list(&c).unwrap().len(), 1);
    assert!(parse_vehicle_list(&json!({"code": "1000"})).is_err());
}

#[test]
fn data_plan_from_the_seed_sample() {
    let doc = json!({"sum": 3145728, "left": 3074339, "used": 71389,
        "basic_package": {"limit_time": 1688537344000i64}});
    // KiB: 3 145 728 KiB is a 3 GiB plan (docs/protocols/xchanger.md, "SIM data plan").
    let st = data_plan_state(&doc, DataUnit::Kib);
    assert_eq!(
        st.get(Field::DataTotal),
        Some(&crate::model::Value::Int(3072))
    );
    assert_eq!(
        st.get(Field::DataUsed),
        Some(&crate::model::Value::Float(69.716))
    );
    let bytes = data_plan_state(&doc, DataUnit::Bytes);
    assert_eq!(
        bytes.get(Field::DataTotal),
        Some(&crate::model::Value::Int(3))
    );
    assert_eq!(
        st.get(Field::DataExpiry),
        Some(&crate::model::Value::from("2023-07-05T06:09:04Z"))
    );
}

#[test]
fn commands_map_to_services() {
    let unlock = telematics(&Command::Unlock, 3).unwrap();
    assert_eq!((unlock.service, unlock.command), ("RDU", "start"));
    assert_eq!(unlock.params, vec![("time.window", "3".to_string())]);
    assert_eq!(unlock.expect, Some((Field::Lock, "UNLOCKED".into())));
    assert_eq!(telematics(&Command::EngineStop, 1).unwrap().command, "stop");
    assert_eq!(
        telematics(&Command::FlashLights, 1).unwrap().params,
        vec![("rhl", "light-flash".to_string())]
    );
    assert!(telematics(&Command::OpenSeat, 1).is_none());
    let body = telematics_body("RDL", "start", &[], "1231609", 1_676_625_476_579);
    assert_eq!(body["serviceParameters"], json!([]));
    assert_eq!(body["operationScheduling"]["occurs"], 1);
}
