//! xchanger connector end to end: the fake cloud over real HTTP, the bridge in-process,
//! a real mosquitto.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ConnectorBridge as Bridge, Mosquitto, Probe};
use serde_json::Value;
use vehicle2mqtt::config::{Config, Secret};
use vehicle2mqtt::connector::Connector;
use vehicle2mqtt::connectors::xchanger::sim::{Fail, FakeOptions, FakeVehicle, FakeXchanger};
use vehicle2mqtt::connectors::xchanger::{ApiVersion, XchangerConnector};

const T: Duration = Duration::from_secs(15);
const VIN: &str = "L6T7722E0LN000001";
const APP_KEY: &str = "test-app-key";

async fn fake(opts: FakeOptions) -> FakeXchanger {
    FakeXchanger::start(opts, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("fake cloud")
}

/// A bridge with the xchanger connector pointed at `cloud`; `state_dir` overrides the
/// harness's own when tokens must survive a restart.
async fn start(
    broker: &Mosquitto,
    cloud: &FakeXchanger,
    state_dir: Option<&Path>,
    tweak: impl FnOnce(&mut Config),
) -> Bridge {
    let url = cloud.url();
    let state_dir = state_dir.map(Path::to_path_buf);
    Bridge::start_with(broker, move |config, _port| {
        if let Some(dir) = state_dir {
            config.bridge.state_dir = dir;
        }
        let x = &mut config.upstreams.xchanger;
        x.enabled = true;
        x.api = ApiVersion::V1;
        x.base_url = url.clone();
        x.auth_base_url = url;
        x.username = "driver@example.com".into();
        x.password = Secret::new("correct horse");
        x.poll_interval = Duration::from_secs(1);
        x.poll_interval_active = Some(Duration::from_secs(1));
        config.bridge.command_timeout = Duration::from_secs(8);
        tweak(config);
        config
            .upstreams
            .xchanger
            .validate()
            .expect("valid test config");
        (
            Box::new(XchangerConnector::new(
                config.upstreams.xchanger.clone(),
                config.bridge.state_dir.clone(),
            )) as Box<dyn Connector>,
            false,
        )
    })
    .await
}

async fn probe(broker: &Mosquitto, bridge: &Bridge) -> Probe {
    Probe::connect(broker.port, &[&bridge.topic("#"), "homeassistant/#"]).await
}

async fn wait_state(
    probe: &Probe,
    bridge: &Bridge,
    vin: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    probe
        .wait_for("state", T, |m| {
            m.topic == bridge.topic(&format!("{vin}/state")) && pred(&m.json())
        })
        .await
        .json()
}

/// One run of the default bridge (tokens in `state_dir`) until the sample status shows
/// (docs/protocols/xchanger.md, "The status sample").
async fn run_until_polled(broker: &Mosquitto, cloud: &FakeXchanger, state_dir: &Path) {
    let bridge = start(broker, cloud, Some(state_dir), |_| {}).await;
    let probe = probe(broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| s["odometer"] == 33253).await;
    bridge.stop().await;
}

async fn wait_result(probe: &Probe, bridge: &Bridge, id: &str, status: &str) -> Value {
    probe
        .wait_for(&format!("{id} {status}"), T, |m| {
            m.topic == bridge.topic(&format!("{VIN}/command/result"))
                && m.json()["id"] == id
                && m.json()["status"] == status
        })
        .await
        .json()
}

fn counters(probe: &Probe, bridge: &Bridge) -> Value {
    probe
        .messages()
        .iter()
        .rev()
        .find(|m| m.topic == bridge.topic("bridge/info"))
        .map(|m| m.json()["connectors"][0].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn v1_password_login_publishes_the_seed_status_and_keeps_tokens_private() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start(&broker, &cloud, Some(dir.path()), |_| {}).await;
    let probe = probe(&broker, &bridge).await;

    let state = wait_state(&probe, &bridge, VIN, |s| s["odometer"] == 33253).await;
    assert_eq!(state["lock"], "LOCKED");
    assert_eq!(state["range"], 550);
    assert_eq!(state["fuel_volume"], 49);
    assert_eq!(state["tyre_pressure_front_left"], 180);
    assert_eq!(state["aux_battery_voltage"], 12);
    assert!(
        (state["latitude"].as_f64().unwrap() - 31.238).abs() < 1e-6,
        "{state}"
    );
    // The status sample has both position blocks untrusted: shown, with a wide circle.
    assert_eq!(state["gps_accuracy"], 1000.0);
    assert_eq!(state["attributes"]["position_trusted"], false);
    // Meanings: warnings as problem sensors, unknown codes raw, sentinels left out.
    assert_eq!(state["airbag_deployed"], false);
    assert_eq!(state["brake_fluid_warning"], false);
    assert_eq!(state["key_status"], "no_key_inserted");
    assert_eq!(state["attributes"]["alarm_status_raw"], "6");
    assert!(state.get("interior_temperature").is_none(), "{state}");
    // The car marks its position trusted: the exact position, no widened accuracy.
    cloud.edit_status(VIN, |vs| {
        vs["basicVehicleStatus"]["position"]["posCanBeTrusted"] = true.into();
    });
    let trusted = wait_state(&probe, &bridge, VIN, |s| {
        s["attributes"]["position_trusted"] == true
    })
    .await;
    assert!(trusted.get("gps_accuracy").is_none(), "{trusted}");
    probe
        .wait_for("online", T, |m| {
            m.topic == bridge.topic(&format!("{VIN}/availability")) && m.text() == "online"
        })
        .await;
    let device = probe
        .wait_for("lock discovery", T, |m| {
            m.topic.ends_with(&format!("/{VIN}_lock/config"))
        })
        .await
        .json();
    assert_eq!(device["device"]["name"], "浙A12345");
    assert_eq!(device["device"]["manufacturer"], "Lynk & Co");
    for key in ["engine", "horn_lights", "flash_lights", "horn"] {
        probe
            .wait_for(key, T, |m| {
                m.topic.ends_with(&format!("/{VIN}_{key}/config"))
            })
            .await;
    }
    let status = wait_state(&probe, &bridge, VIN, |s| {
        s.get("connector_status").is_some()
    })
    .await;
    assert_eq!(status["connector_status"], "ok");

    let calls = cloud.calls();
    assert_eq!((calls.logins, calls.vehicle_lists), (1, 1));
    let file = dir.path().join("xchanger_tokens.json");
    let saved = std::fs::read_to_string(&file).expect("tokens saved");
    assert!(saved.contains("\"refresh_token\""), "{saved}");
    assert!(
        !saved.contains("correct horse"),
        "the password is never stored"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    bridge.stop().await;
}

#[tokio::test]
async fn v2_auth_code_signs_every_request_and_reads_the_data_plan() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions {
        app_key: Some(APP_KEY.into()),
        ..Default::default()
    })
    .await;
    let bridge = start(&broker, &cloud, None, |c| {
        let x = &mut c.upstreams.xchanger;
        x.api = ApiVersion::V2;
        x.username.clear();
        x.password = Secret::default();
        x.auth_code = Secret::new("742464028621668352");
        x.app_key = Secret::new(APP_KEY);
        x.iccid = "89860000000000000001".into();
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| s["odometer"] == 33253).await;
    let plan = wait_state(&probe, &bridge, VIN, |s| s.get("data_total").is_some()).await;
    // KiB: the sample's 3 145 728 is a 3 GiB plan (docs/protocols/xchanger.md,
    // "SIM data plan").
    assert_eq!(plan["data_total"], 3072);
    assert_eq!(plan["data_left"], 3002.284);
    assert_eq!(plan["data_expiry"], "2023-07-05T06:09:04Z");
    let calls = cloud.calls();
    assert_eq!(
        calls.bad_signatures, 0,
        "every request carried a good signature"
    );
    assert_eq!((calls.code_exchanges, calls.logins), (1, 0));
    // The headers of the app's own v2 requests (docs/protocols/xchanger.md,
    // "v2 captured headers").
    let sent: std::collections::HashMap<_, _> = calls.last_status_headers.into_iter().collect();
    for (name, value) in [
        ("x-env-type", "production"),
        ("x-agent-type", "iOS"),
        ("platform", "CMA"),
        ("x-device-type", "mobile"),
        ("x-operator-code", "LYNKCO"),
        ("x-app-id", "lynkco"),
        ("x-api-signature-version", "1.0"),
    ] {
        assert_eq!(sent.get(name).map(String::as_str), Some(value), "{name}");
    }
    assert!(sent["x-client-id"].starts_with("APPLE"), "{sent:?}");
    assert!(sent["user-agent"].starts_with("GeelyLynkco/"), "{sent:?}");
    assert!(sent["accept-language"].starts_with("zh-Hans"), "{sent:?}");
    assert!(calls.flowinfo >= 1 && !calls.status_at_ms.is_empty());
    bridge.stop().await;
}

#[tokio::test]
async fn a_wrong_app_key_is_caught_by_the_fakes_signature_check() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions {
        app_key: Some(APP_KEY.into()),
        ..Default::default()
    })
    .await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.api = ApiVersion::V2;
        c.upstreams.xchanger.app_key = Secret::new("not-the-key");
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    let info = probe
        .wait_for("error in bridge/info", T, |m| {
            m.topic == bridge.topic("bridge/info")
                && m.json()["connectors"][0]["error"].as_str().is_some()
        })
        .await
        .json();
    let error = info["connectors"][0]["error"].as_str().unwrap().to_string();
    assert!(error.contains("credentials refused"), "{error}");
    assert!(cloud.calls().bad_signatures >= 1);
    assert!(!probe
        .messages()
        .iter()
        .any(|m| m.topic.ends_with("/state") && m.topic.contains(VIN)));
    bridge.stop().await;
}

#[tokio::test]
async fn expired_tokens_are_refreshed_once_for_all_waiting_polls_and_rotated() {
    let broker = Mosquitto::start();
    let vins = [
        "L6T7722E0LN000001",
        "L6T7722E0LN000002",
        "L6T7722E0LN000003",
    ];
    let cloud = fake(FakeOptions {
        vehicles: vins
            .iter()
            .map(|v| FakeVehicle {
                vin: v.to_string(),
                plate: String::new(),
                series: "05".into(),
            })
            .collect(),
        expired_as_401: true,
        ..Default::default()
    })
    .await;
    let (access, refresh) = cloud.issue_tokens();
    let dir = tempfile::tempdir().unwrap();
    let bridge = start(&broker, &cloud, Some(dir.path()), |c| {
        let x = &mut c.upstreams.xchanger;
        x.username.clear();
        x.password = Secret::default();
        x.access_token = Secret::new(access.clone());
        x.refresh_token = Secret::new(refresh.clone());
        x.user_id = "1231609".into();
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    for vin in vins {
        wait_state(&probe, &bridge, vin, |s| s["odometer"] == 33253).await;
    }
    assert_eq!(cloud.calls().refreshes, 0);
    cloud.expire_tokens();
    let before = cloud.calls().status_at_ms.len();
    // Every vehicle polls again (each poll first meets the expired token).
    for _ in 0..300 {
        if cloud.calls().status_at_ms.len() >= before + 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = cloud.calls();
    assert!(calls.status_at_ms.len() >= before + 9, "polls went on");
    assert_eq!(
        calls.refreshes, 1,
        "exactly one refresh for all waiting requests"
    );
    assert_eq!(calls.logins, 0);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("xchanger_tokens.json")).unwrap())
            .unwrap();
    assert_ne!(
        saved["refresh_token"],
        refresh.as_str(),
        "the rotated pair is persisted"
    );
    assert_ne!(saved["access_token"], access.as_str());
    bridge.stop().await;
}

#[tokio::test]
async fn tokens_are_refreshed_before_expires_in_runs_out() {
    let broker = Mosquitto::start();
    // 302 s: within the 5-minute margin two seconds after login.
    let cloud = fake(FakeOptions {
        token_ttl_s: 302,
        ..Default::default()
    })
    .await;
    let bridge = start(&broker, &cloud, None, |_| {}).await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| s["odometer"] == 33253).await;
    for _ in 0..300 {
        if cloud.calls().refreshes >= 1 && cloud.calls().status_at_ms.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = cloud.calls();
    assert!(calls.refreshes >= 1, "refreshed ahead of expiry");
    assert_eq!(calls.logins, 1);
    assert_eq!(
        calls.unauthorised, 0,
        "no request ever met an expired token"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn persisted_tokens_are_reused_after_a_restart() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        run_until_polled(&broker, &cloud, dir.path()).await;
    }
    let calls = cloud.calls();
    assert_eq!(
        calls.logins, 1,
        "the second run logged in with the saved tokens"
    );
    assert_eq!(calls.vehicle_lists, 2);
}

#[tokio::test]
async fn saved_tokens_the_cloud_no_longer_knows_lead_to_one_new_login() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    run_until_polled(&broker, &fake(FakeOptions::default()).await, dir.path()).await;
    // A cloud that never issued the saved pair (it answers 1501 "main token invalid").
    let second = fake(FakeOptions::default()).await;
    run_until_polled(&broker, &second, dir.path()).await;
    let calls = second.calls();
    assert_eq!(calls.logins, 1);
    assert!(calls.unauthorised >= 1);
}

#[tokio::test]
async fn a_refused_password_stops_polling_without_a_login_storm() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.password = Secret::new("wrong");
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    let info = probe
        .wait_for("refusal in bridge/info", T, |m| {
            m.topic == bridge.topic("bridge/info")
                && m.json()["connectors"][0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("wrong credentials (wrong username or password)"))
        })
        .await
        .json();
    assert!(
        info["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("xchanger"),
        "{info}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = cloud.calls();
    assert_eq!(calls.logins, 1, "one refused login, then a long pause");
    assert!(calls.status_at_ms.is_empty());
    bridge.stop().await;
}

#[tokio::test]
async fn commands_are_accepted_then_confirmed_by_the_next_status() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.unlock_window_min = 2;
        c.upstreams.xchanger.poll_interval = Duration::from_secs(30);
        c.bridge.command_timeout = Duration::from_secs(4);
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| s["lock"] == "LOCKED").await;
    let set = |leaf: &str| bridge.topic(&format!("{VIN}/{leaf}/set"));

    probe
        .publish(&set("lock"), r#"{"action":"UNLOCK","id":"u1"}"#, false)
        .await;
    wait_result(&probe, &bridge, "u1", "accepted").await;
    wait_result(&probe, &bridge, "u1", "succeeded").await;
    wait_state(&probe, &bridge, VIN, |s| s["lock"] == "UNLOCKED").await;
    let sent = cloud.calls().commands;
    assert_eq!(sent[0]["serviceId"], "RDU");
    assert_eq!(sent[0]["serviceParameters"][0]["key"], "time.window");
    assert_eq!(sent[0]["serviceParameters"][0]["value"], "2");

    probe
        .publish(&set("engine"), r#"{"action":"ON","id":"e1"}"#, false)
        .await;
    wait_result(&probe, &bridge, "e1", "succeeded").await;
    wait_state(&probe, &bridge, VIN, |s| s["engine_running"] == true).await;
    probe
        .publish(
            &set("horn_lights"),
            r#"{"action":"PRESS","id":"h1"}"#,
            false,
        )
        .await;
    let h1 = wait_result(&probe, &bridge, "h1", "succeeded").await;
    assert!(
        h1["reason"].as_str().unwrap_or("").contains("acknowledged"),
        "horn and lights say what their success rests on: {h1}"
    );
    let sent = cloud.calls().commands;
    assert_eq!(
        (sent[1]["serviceId"].as_str(), sent[1]["command"].as_str()),
        (Some("RES"), Some("start"))
    );
    assert_eq!(sent[2]["serviceParameters"][0]["value"], "horn-light-flash");

    cloud.refuse_commands(Some("8160"));
    probe
        .publish(&set("lock"), r#"{"action":"LOCK","id":"l1"}"#, false)
        .await;
    let failed = wait_result(&probe, &bridge, "l1", "failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no permission"),
        "{failed}"
    );

    cloud.refuse_commands(None);
    cloud.apply_commands(false);
    probe
        .publish(&set("lock"), r#"{"action":"LOCK","id":"l2"}"#, false)
        .await;
    wait_result(&probe, &bridge, "l2", "accepted").await;
    wait_result(&probe, &bridge, "l2", "timeout").await;
    bridge.stop().await;
}

#[tokio::test]
async fn rate_limits_back_off_exponentially_and_bad_answers_cost_one_poll() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    cloud.fail_next([
        Fail::Http(429),
        Fail::Http(429),
        Fail::Http(429),
        Fail::BadJson,
        Fail::Http(503),
    ]);
    let bridge = start(&broker, &cloud, None, |_| {}).await;
    let probe = probe(&broker, &bridge).await;
    let state = wait_state(&probe, &bridge, VIN, |s| s["odometer"] == 33253).await;
    assert_eq!(state["lock"], "LOCKED");
    let at = cloud.calls().status_at_ms;
    assert!(at.len() >= 6, "{at:?}");
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // 429 → 1 s, 2 s, 4 s (±10 %): each wait longer than the one before.
    assert!(
        gaps[1] > gaps[0] * 3 / 2 && gaps[2] > gaps[1] * 3 / 2,
        "{gaps:?}"
    );
    wait_state(&probe, &bridge, VIN, |s| s["connector_status"] == "ok").await;
    probe
        .wait_for("counters", T, |m| {
            m.topic == bridge.topic("bridge/info")
                && m.json()["connectors"][0]["counters"]["rate_limited"] == 3
                && m.json()["connectors"][0]["counters"]["bad_answers"] == 1
        })
        .await;
    assert_eq!(counters(&probe, &bridge)["name"], "xchanger");
    bridge.stop().await;
}

/// The shipped defaults (5 min polls, no active interval, 60 s command timeout): every
/// command with a state to confirm is confirmed within seconds by the confirmation
/// schedule; the fake car reports 1.5 s after a command, as a real one did.
#[tokio::test]
async fn with_the_shipped_defaults_commands_are_confirmed_in_seconds() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        let defaults = vehicle2mqtt::connectors::xchanger::XchangerConfig::default();
        c.upstreams.xchanger.poll_interval = defaults.poll_interval;
        c.upstreams.xchanger.poll_interval_active = defaults.poll_interval_active;
        c.bridge.command_timeout = Config::default().bridge.command_timeout;
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| s["lock"] == "LOCKED").await;
    let set = |leaf: &str| bridge.topic(&format!("{VIN}/{leaf}/set"));
    let mut measured = Vec::new();
    for (leaf, action, id) in [
        ("lock", "UNLOCK", "du"),
        ("lock", "LOCK", "dl"),
        ("engine", "ON", "de"),
        ("engine", "OFF", "do"),
        ("flash_lights", "PRESS", "df"),
    ] {
        let sent = std::time::Instant::now();
        probe
            .publish(
                &set(leaf),
                &format!(r#"{{"action":"{action}","id":"{id}"}}"#),
                false,
            )
            .await;
        probe
            .wait_for(&format!("{id} within 10 s"), Duration::from_secs(10), |m| {
                m.topic == bridge.topic(&format!("{VIN}/command/result"))
                    && m.json()["id"] == id
                    && m.json()["status"] == "succeeded"
            })
            .await;
        measured.push(format!(
            "{leaf} {action}: {:.1} s",
            sent.elapsed().as_secs_f64()
        ));
    }
    eprintln!(
        "confirmation times with the defaults: {}",
        measured.join(", ")
    );
    // Confirmation reads, not the 5-minute schedule: a handful of status reads in all.
    let reads = cloud.calls().status_at_ms.len();
    assert!(reads <= 20, "{reads} status reads");
    bridge.stop().await;
}

// ---- Owner controls (issue #25) ------------------------------------------------------

async fn wait_reads(cloud: &FakeXchanger, more_than: usize) -> Duration {
    let t0 = std::time::Instant::now();
    while cloud.calls().status_at_ms.len() <= more_than {
        assert!(t0.elapsed() < T, "no status read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

/// Refresh: a position wake-up (`PAI`), a status read at once, then confirming reads
/// until a report newer than the press: `succeeded` with that report's time. A second
/// press within `refresh_min_gap` reads nothing.
#[tokio::test]
async fn refresh_wakes_the_car_reads_at_once_and_answers_with_the_fresh_report() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.poll_interval = Duration::from_secs(1800);
        c.upstreams.xchanger.poll_interval_active = Some(Duration::from_secs(1800));
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| {
        s["odometer"] == 33253 && s["polling_phase"] == "idle"
    })
    .await;
    let discovery = probe
        .wait_topic(
            &format!(
                "homeassistant/button/{}/{VIN}_refresh/config",
                bridge.base.replace('/', "_")
            ),
            T,
        )
        .await
        .json();
    assert_eq!(discovery["payload_press"], "PRESS");
    let reads = cloud.calls().status_at_ms.len();
    let pressed = chrono::Utc::now();
    probe
        .publish(
            &bridge.topic(&format!("{VIN}/refresh/set")),
            r#"{"action":"PRESS","id":"r1"}"#,
            false,
        )
        .await;
    let first_read = wait_reads(&cloud, reads).await;
    assert!(
        first_read < Duration::from_secs(1),
        "read {first_read:?} after the press"
    );
    let r = wait_result(&probe, &bridge, "r1", "succeeded").await;
    let reported = chrono::DateTime::parse_from_rfc3339(r["reported_at"].as_str().unwrap())
        .expect("reported_at");
    assert!(reported > pressed, "{r}");
    let wake = cloud.calls().commands;
    assert_eq!(wake.len(), 1);
    assert_eq!(wake[0]["serviceId"], "PAI");
    assert_eq!(wake[0]["serviceParameters"][0]["value"], "4");
    // Within the gap: refused, nothing sent, nothing read.
    let reads = cloud.calls().status_at_ms.len();
    probe
        .publish(
            &bridge.topic(&format!("{VIN}/refresh/set")),
            r#"{"action":"PRESS","id":"r2"}"#,
            false,
        )
        .await;
    let r2 = wait_result(&probe, &bridge, "r2", "rejected").await;
    assert!(
        r2["reason"].as_str().unwrap().contains("refresh_min_gap"),
        "{r2}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cloud.calls().commands.len(), 1);
    assert_eq!(cloud.calls().status_at_ms.len(), reads);
    bridge.stop().await;
}

/// A flood of presses: each gets exactly one result, the car is woken once and read only
/// for that one refresh.
#[tokio::test]
async fn a_flood_of_refresh_presses_reads_once_and_answers_each() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.poll_interval = Duration::from_secs(1800);
        c.upstreams.xchanger.poll_interval_active = Some(Duration::from_secs(1800));
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| {
        s["odometer"] == 33253 && s["polling_phase"] == "idle"
    })
    .await;
    let reads = cloud.calls().status_at_ms.len();
    let topic = bridge.topic(&format!("{VIN}/refresh/set"));
    for i in 0..100 {
        probe
            .publish(
                &topic,
                &format!(r#"{{"action":"PRESS","id":"f{i}"}}"#),
                false,
            )
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_result(&probe, &bridge, "f0", "succeeded").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results: Vec<Value> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == bridge.topic(&format!("{VIN}/command/result")))
        .map(|m| m.json())
        .filter(|r| r["status"] != "accepted")
        .collect();
    for i in 0..100 {
        let mine: Vec<&Value> = results
            .iter()
            .filter(|r| r["id"] == format!("f{i}"))
            .collect();
        assert_eq!(mine.len(), 1, "f{i}: {mine:?}");
    }
    assert_eq!(
        results
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count(),
        1
    );
    assert_eq!(cloud.calls().commands.len(), 1, "woken once");
    let refresh_reads = cloud.calls().status_at_ms.len() - reads;
    assert!(
        (1..=3).contains(&refresh_reads),
        "{refresh_reads} reads for one refresh"
    );
    bridge.stop().await;
}

/// While the account is held back (the cloud answered 5xx), a refresh is refused at once
/// and reads nothing.
#[tokio::test]
async fn a_refresh_while_the_cloud_holds_back_is_rejected_without_a_read() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    // The first read fails: the account is held for about the active interval.
    cloud.fail_next([Fail::Http(503)]);
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.poll_interval = Duration::from_secs(1800);
        c.upstreams.xchanger.poll_interval_active = Some(Duration::from_secs(60));
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    // The failed read shows in the car's connection status; the hold is on from then.
    let st = wait_state(&probe, &bridge, VIN, |s| {
        s["connector_status"].as_str().is_some_and(|t| t != "ok")
    })
    .await;
    assert_eq!(cloud.calls().status_at_ms.len(), 1, "{st}");
    let reads = cloud.calls().status_at_ms.len();
    probe
        .publish(
            &bridge.topic(&format!("{VIN}/refresh/set")),
            r#"{"action":"PRESS","id":"h1"}"#,
            false,
        )
        .await;
    let r = wait_result(&probe, &bridge, "h1", "rejected").await;
    assert!(
        r["reason"].as_str().unwrap().contains("holding reads back"),
        "{r}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cloud.calls().status_at_ms.len(), reads);
    assert!(cloud.calls().commands.is_empty(), "not woken");
    bridge.stop().await;
}

/// No report newer than the press: the refresh fails after its confirming reads.
#[tokio::test]
async fn a_refresh_that_brings_no_newer_report_fails() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    cloud.apply_commands(false);
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.poll_interval = Duration::from_secs(1800);
        c.upstreams.xchanger.poll_interval_active = Some(Duration::from_secs(1800));
        c.bridge.command_timeout = Duration::from_secs(90);
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| {
        s["odometer"] == 33253 && s["polling_phase"] == "idle"
    })
    .await;
    let reads = cloud.calls().status_at_ms.len();
    probe
        .publish(
            &bridge.topic(&format!("{VIN}/refresh/set")),
            r#"{"action":"PRESS","id":"n1"}"#,
            false,
        )
        .await;
    wait_state(&probe, &bridge, VIN, |s| s["polling_phase"] == "confirming").await;
    let r = probe
        .wait_for("n1 failed", Duration::from_secs(70), |m| {
            m.topic == bridge.topic(&format!("{VIN}/command/result"))
                && m.json()["id"] == "n1"
                && m.json()["status"] != "accepted"
        })
        .await
        .json();
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("no report newer"),
        "{r}"
    );
    assert_eq!(
        cloud.calls().status_at_ms.len() - reads,
        7,
        "one read and six confirming"
    );
    wait_state(&probe, &bridge, VIN, |s| {
        s["odometer"] == 33253 && s["polling_phase"] == "idle"
    })
    .await;
    bridge.stop().await;
}

/// Polling off: no scheduled read at all (a refresh still reads); an interval set over
/// MQTT and the switch survive a restart.
#[tokio::test]
async fn polling_off_stops_scheduled_reads_and_settings_survive_a_restart() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let fast = |c: &mut Config| {
        c.upstreams.xchanger.poll_interval = Duration::from_secs(1);
        c.upstreams.xchanger.poll_interval_active = Some(Duration::from_secs(1));
    };
    let bridge = start(&broker, &cloud, Some(dir.path()), fast).await;
    let probe = probe(&broker, &bridge).await;
    let st = wait_state(&probe, &bridge, VIN, |s| s["polling"] == true).await;
    assert_eq!(
        st["poll_interval"], 1,
        "the configured pace, in minutes (rounded up)"
    );
    let set = |leaf: &str| bridge.topic(&format!("{VIN}/{leaf}/set"));
    probe
        .publish(&set("polling"), r#"{"action":"OFF","id":"p1"}"#, false)
        .await;
    wait_result(&probe, &bridge, "p1", "succeeded").await;
    wait_state(&probe, &bridge, VIN, |s| {
        s["polling"] == false && s["polling_phase"] == "off"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a read in flight lands
    let reads = cloud.calls().status_at_ms.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        cloud.calls().status_at_ms.len(),
        reads,
        "no scheduled read while off (one a second when on)"
    );
    probe
        .publish(&set("refresh"), r#"{"action":"PRESS","id":"r1"}"#, false)
        .await;
    wait_result(&probe, &bridge, "r1", "succeeded").await;
    assert!(
        cloud.calls().status_at_ms.len() > reads,
        "a refresh reads while off"
    );
    probe.publish(&set("poll_interval"), "7", false).await;
    wait_state(&probe, &bridge, VIN, |s| s["poll_interval"] == 7).await;
    probe
        .publish(&set("poll_interval_active"), "2.0", false)
        .await;
    wait_state(&probe, &bridge, VIN, |s| s["poll_interval_active"] == 2).await;
    bridge.stop().await;

    let bridge = start(&broker, &cloud, Some(dir.path()), fast).await;
    let probe = self::probe(&broker, &bridge).await;
    let st = wait_state(&probe, &bridge, VIN, |s| s.get("polling").is_some()).await;
    assert_eq!(
        (
            st["polling"].clone(),
            st["poll_interval"].clone(),
            st["poll_interval_active"].clone()
        ),
        (Value::Bool(false), Value::from(7), Value::from(2)),
        "kept across the restart: {st}"
    );
    bridge.stop().await;
}

/// The attacker's intervals: each refused with a result, nothing changed; a retained one
/// is never applied.
#[tokio::test]
async fn bad_poll_intervals_are_rejected_and_change_nothing() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.poll_interval = Duration::from_secs(600);
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| s["poll_interval"] == 10).await;
    let topic = bridge.topic(&format!("{VIN}/poll_interval/set"));
    let huge = "9".repeat(1_000_000); // 1 MB; over 1 MiB the client drops the connection
    let bad = [
        "-5",
        "0",
        "NaN",
        "1e309",
        "inf",
        "abc",
        "1.5",
        "1441",
        "",
        huge.as_str(),
    ];
    for payload in bad {
        probe.publish(&topic, payload, false).await;
    }
    probe.publish(&topic, "5", true).await; // retained: never applied
    probe
        .wait_for("every bad interval answered", T, |_| {
            probe
                .messages()
                .iter()
                .filter(|m| {
                    m.topic == bridge.topic(&format!("{VIN}/command/result"))
                        && m.json()["status"] == "rejected"
                })
                .count()
                == bad.len() + 1
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = probe
        .messages()
        .iter()
        .rev()
        .find(|m| m.topic == bridge.topic(&format!("{VIN}/state")))
        .map(|m| m.json())
        .unwrap();
    assert_eq!(last["poll_interval"], 10, "unchanged");
    let ok = probe
        .messages()
        .iter()
        .filter(|m| {
            m.topic == bridge.topic(&format!("{VIN}/command/result"))
                && m.json()["status"] == "succeeded"
        })
        .count();
    assert_eq!(ok, 0);
    bridge.stop().await;
}

/// The phase sensor follows a command's confirming reads and comes back to idle.
#[tokio::test]
async fn the_polling_phase_follows_a_commands_confirming_reads() {
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.upstreams.xchanger.poll_interval = Duration::from_secs(1800);
        c.upstreams.xchanger.poll_interval_active = Some(Duration::from_secs(1800));
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    let idle = wait_state(&probe, &bridge, VIN, |s| {
        s["odometer"] == 33253 && s["polling_phase"] == "idle"
    })
    .await;
    assert!(idle["next_poll"].as_str().is_some(), "{idle}");
    probe
        .publish(
            &bridge.topic(&format!("{VIN}/lock/set")),
            r#"{"action":"UNLOCK","id":"u1"}"#,
            false,
        )
        .await;
    wait_state(&probe, &bridge, VIN, |s| s["polling_phase"] == "confirming").await;
    wait_result(&probe, &bridge, "u1", "succeeded").await;
    wait_state(&probe, &bridge, VIN, |s| s["polling_phase"] == "idle").await;
    bridge.stop().await;
}

/// docs/evcc.yaml's `wakeup`, as evcc would publish it, refreshes the car.
#[tokio::test]
async fn evccs_wakeup_refreshes_the_car() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/evcc.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let wakeup = &doc["vehicles"][0]["wakeup"];
    let broker = Mosquitto::start();
    let cloud = fake(FakeOptions::default()).await;
    let bridge = start(&broker, &cloud, None, |c| {
        c.mqtt.base_topic = "vehicle2mqtt".into(); // the template's
        c.upstreams.xchanger.poll_interval = Duration::from_secs(1800);
        c.upstreams.xchanger.poll_interval_active = Some(Duration::from_secs(1800));
    })
    .await;
    let probe = probe(&broker, &bridge).await;
    wait_state(&probe, &bridge, VIN, |s| {
        s["odometer"] == 33253 && s["polling_phase"] == "idle"
    })
    .await;
    let topic = wakeup["topic"].as_str().unwrap().replace("VEHICLE_ID", VIN);
    probe
        .publish(&topic, wakeup["payload"].as_str().unwrap(), false)
        .await;
    let r = probe
        .wait_for("refresh succeeded", T, |m| {
            m.topic == bridge.topic(&format!("{VIN}/command/result"))
                && m.json()["command"] == "refresh"
                && m.json()["status"] == "succeeded"
        })
        .await
        .json();
    assert!(r["reported_at"].as_str().is_some(), "{r}");
    bridge.stop().await;
}
