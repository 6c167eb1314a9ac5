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

/// Polling off: no read at all for 10 minutes of paused time; with polling on, the same
/// car is read on its pace (so the count above could have been anything but zero).
#[cfg(feature = "simulators")]
#[tokio::test(start_paused = true)]
async fn polling_off_reads_nothing_for_ten_minutes_of_paused_time() {
    const VIN: &str = "L6T7722E0LN000001";
    for polling in [false, true] {
        let fake = sim::FakeXchanger::start(
            sim::FakeOptions::default(),
            "127.0.0.1:0".parse().expect("address"),
        )
        .await
        .expect("fake cloud");
        let dir = tempfile::tempdir().expect("dir");
        let cfg = XchangerConfig {
            enabled: true,
            api: ApiVersion::V1,
            base_url: fake.url(),
            auth_base_url: fake.url(),
            username: "driver@example.com".into(),
            password: crate::config::Secret::new("correct horse"),
            poll_interval: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        let settings = SettingsStore::load(None, POLLING_FILE);
        settings.set(
            VIN,
            Settings {
                polling,
                ..Settings::default()
            },
        );
        let counters = Arc::new(Counters::default());
        let (updates, mut seen) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            api: Api::new(&cfg).expect("client"),
            auth: Auth::new(cfg.clone(), dir.path().to_path_buf(), counters.clone()),
            settings,
            quiet: None,
            vehicle_quiet: Default::default(),
            tz: crate::zone::Zone::Named(chrono_tz::Asia::Shanghai),
            cfg,
            updates: UpdateSink::new(0, updates),
            counters,
            hold: Mutex::new(Hold::default()),
        });
        tokio::spawn(async move { while seen.recv().await.is_some() {} });
        let (_commands, rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let id = VehicleId::for_upstream("", VIN).expect("id");
        let car = tokio::spawn(vehicle_loop(
            shared,
            VIN.into(),
            id,
            rx,
            shutdown.clone(),
            false,
        ));
        for _ in 0..600 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let reads = fake.calls().status_at_ms.len();
        if polling {
            assert!(reads >= 9, "{reads} reads in 10 minutes at one a minute");
        } else {
            assert_eq!(reads, 0, "polling off reads nothing");
        }
        shutdown.cancel();
        let _ = car.await;
    }
}
