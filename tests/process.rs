//! The real binary, spawned as a process: signals, last will, exit codes, embedded broker.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bridge_against, bridge_cmd, KillOnDrop, Mosquitto, Probe, BIN};

const T: Duration = Duration::from_secs(15);

/// `vehicle2mqtt simulate <args>` (a fake upstream), quiet.
fn simulate(args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(BIN)
            .arg("simulate")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the simulator"),
    )
}

fn spawn_against(broker: &Mosquitto, dir: &std::path::Path, base: &str) -> KillOnDrop {
    let child = bridge_against(broker, dir, base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vehicle2mqtt");
    KillOnDrop(child)
}

fn signal(child: &KillOnDrop, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(child: &mut KillOnDrop, timeout: Duration) -> std::process::ExitStatus {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < end, "process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigkill_leaves_the_last_will_offline() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("p{}", rand::random::<u32>());
    let topic = format!("{base}/bridge/state");
    let probe = Probe::connect(broker.port, &[&topic]).await;
    let child = spawn_against(&broker, dir.path(), &base);
    probe
        .wait_for("online", T, |m| m.topic == topic && m.text() == "online")
        .await;
    signal(&child, 9);
    drop(child);
    probe
        .wait_for("last will", Duration::from_secs(60), |m| {
            m.topic == topic && m.text() == "offline"
        })
        .await;
    // Retained: a client arriving later sees offline too.
    let late = Probe::connect(broker.port, &[&topic]).await;
    let m = late.wait_topic(&topic, T).await;
    assert_eq!(m.text(), "offline");
    assert!(m.retain);
}

#[tokio::test]
async fn sigterm_publishes_offline_and_exits_zero() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("p{}", rand::random::<u32>());
    let topic = format!("{base}/bridge/state");
    let probe = Probe::connect(broker.port, &[&topic]).await;
    let mut child = spawn_against(&broker, dir.path(), &base);
    probe
        .wait_for("online", T, |m| m.topic == topic && m.text() == "online")
        .await;
    // The liveness check used by the container health checks sees it alive.
    let health = bridge_cmd(dir.path())
        .arg("health")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(
        health.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    signal(&child, 15);
    let status = wait_exit(&mut child, T).await;
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    probe
        .wait_for("offline", T, |m| m.topic == topic && m.text() == "offline")
        .await;
    let late = Probe::connect(broker.port, &[&topic]).await;
    assert_eq!(late.wait_topic(&topic, T).await.text(), "offline");
    // Stopped: the liveness file is gone, so `health` fails at once (not 30 s later).
    let health = bridge_cmd(dir.path())
        .arg("health")
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(health.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&health.stderr).contains("not running"));
    // The state dir was created private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

#[tokio::test]
async fn embedded_broker_serves_mqtt_with_default_config() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let child = bridge_cmd(dir.path())
        .env("V2M_MQTT__EMBEDDED_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let _child = KillOnDrop(child);
    assert!(
        common::wait_port(port, T),
        "embedded broker never listened on {port}"
    );
    let (user, password) = common::embedded_login(&dir.path().join("state"));
    let probe =
        Probe::connect_login(port, &["vehicle2mqtt/bridge/#"], Some((&user, &password))).await;
    probe
        .wait_for("online on the embedded broker", T, |m| {
            m.topic == "vehicle2mqtt/bridge/state" && m.text() == "online"
        })
        .await;
    let info = probe.wait_topic("vehicle2mqtt/bridge/info", T).await.json();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    // The login file is private, and no anonymous client gets in (it could command).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state/embedded_broker.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut opts = rumqttc::MqttOptions::new("anonymous", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let refused = login_refused(opts).await;
    assert!(refused, "an anonymous client was let in");
    // A wrong password neither.
    let mut opts = rumqttc::MqttOptions::new("guesser", "127.0.0.1", port);
    opts.set_credentials(user.clone(), "guess");
    let refused = login_refused(opts).await;
    assert!(refused, "a wrong password was let in");
}

/// Whether the broker refuses a client with these options (a refused CONNACK or a
/// closed connection).
async fn login_refused(opts: rumqttc::MqttOptions) -> bool {
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    tokio::time::timeout(T, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    return ack.code != rumqttc::ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    })
    .await
    .unwrap()
}

/// An embedded broker reachable from other machines needs a login the user chose.
#[test]
fn an_exposed_embedded_broker_needs_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let out = bridge_cmd(dir.path())
        .env("V2M_MQTT__EMBEDDED_LISTEN", "0.0.0.0:1")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mqtt.embedded_listen") && err.contains("mqtt.username"),
        "{err}"
    );
}

#[test]
fn embedded_broker_port_in_use_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = bridge_cmd(dir.path())
        .env("V2M_MQTT__EMBEDDED_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("embedded broker cannot listen"), "{err}");
}

#[test]
fn check_config_env_overrides_file_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my.toml");
    std::fs::write(
        &file,
        "[mqtt]\nurl = \"mqtt://file-host:1883\"\nusername = \"ha\"\npassword = \"file-secret-pw\"\n\
         [bridge]\ncommand_pin = \"9753\"\ncommand_timeout = \"45s\"\n",
    )
    .unwrap();
    let out = bridge_cmd(dir.path())
        .env("V2M_MQTT__URL", "mqtt://env-host:1884")
        .env("V2M_BRIDGE__STALE_AFTER", "5m")
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Value = toml::from_str(&text).expect("check-config prints TOML");
    assert_eq!(
        parsed["mqtt"]["url"].as_str(),
        Some("mqtt://env-host:1884"),
        "env wins over the file"
    );
    assert_eq!(
        parsed["mqtt"]["username"].as_str(),
        Some("ha"),
        "the file wins over defaults"
    );
    assert_eq!(parsed["bridge"]["command_timeout"].as_str(), Some("45s"));
    assert_eq!(parsed["bridge"]["stale_after"].as_str(), Some("5m"));
    assert!(!text.contains("file-secret-pw"), "password leaked:\n{text}");
    assert!(!text.contains("9753"), "PIN leaked:\n{text}");
    assert_eq!(parsed["mqtt"]["password"].as_str(), Some("********"));
}

#[test]
fn bad_config_exits_2_naming_key_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str, &str); 4] = [
        (
            "V2M_BRIDGE__COMMAND_TIMEOUT",
            "soon",
            "bridge.command_timeout",
            "V2M_",
        ),
        ("V2M_MQTT__URL", "http://nope", "mqtt.url", "V2M_"),
        ("V2M_BRIDGE__LOG_FORMAT", "xml", "bridge.log_format", "V2M_"),
        ("V2M_MQTT__NO_SUCH_KEY", "1", "mqtt.no_such_key", "V2M_"),
    ];
    for (var, value, key, source) in cases {
        let out = bridge_cmd(dir.path())
            .env(var, value)
            .arg("check-config")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{var}: error should name `{key}`: {err}");
        assert!(
            err.contains(source),
            "{var}: error should name the source: {err}"
        );
    }
    // A bad value in a file names the file; the bridge refuses to start with it too.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[bridge]\nstale_after = \"0s\"\n").unwrap();
    for sub in ["check-config", "run"] {
        let out = bridge_cmd(dir.path())
            .arg(sub)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bridge.stale_after") && err.contains("bad.toml"),
            "{err}"
        );
    }
    // A missing file is an error, not silently the defaults.
    let out = bridge_cmd(dir.path())
        .arg("check-config")
        .arg("--config")
        .arg("nope.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("check-config") && help.contains("--config"),
        "{help}"
    );
}

/// The shipped binary end to end for the cloud connector: `simulate xchanger-cloud` as
/// the upstream, the bridge configured from the environment with the shipped polling
/// defaults (5 min, no active interval set), tokens saved in state_dir. The unlock must be
/// confirmed within 10 s by the confirmation schedule alone.
#[tokio::test]
async fn the_binary_polls_the_fake_xchanger_cloud_and_unlocks() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _cloud = simulate(&[
        "xchanger-cloud",
        "--listen",
        &listen,
        "--app-key",
        "proc-key",
    ]);
    assert!(
        common::wait_port_async(port, T).await,
        "fake cloud listening"
    );
    let base = format!("p{}", rand::random::<u32>());
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    let child = bridge_against(&broker, dir.path(), &base)
        .env("V2M_XCHANGER__ENABLED", "true")
        .env("V2M_XCHANGER__BASE_URL", format!("http://127.0.0.1:{port}"))
        .env(
            "V2M_XCHANGER__AUTH_BASE_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("V2M_XCHANGER__USERNAME", "driver@example.com")
        .env("V2M_XCHANGER__PASSWORD", "correct horse")
        .env("V2M_XCHANGER__APP_KEY", "proc-key")
        .env("V2M_BRIDGE__LOG_LEVEL", "debug")
        // A file, not a pipe: nobody reads a pipe until exit, and a full one would block.
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("log")).unwrap(),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("log.err")).unwrap(),
        ))
        .spawn()
        .expect("spawn vehicle2mqtt");
    let mut child = KillOnDrop(child);
    let vin = "L6T7722E0LN000001";
    probe
        .wait_for("state", T, |m| {
            m.topic == format!("{base}/{vin}/state") && m.json()["lock"] == "LOCKED"
        })
        .await;
    probe
        .publish(
            &format!("{base}/{vin}/lock/set"),
            r#"{"action":"UNLOCK","id":"p1"}"#,
            false,
        )
        .await;
    let sent = std::time::Instant::now();
    probe
        .wait_for("succeeded within 10 s", Duration::from_secs(10), |m| {
            m.topic == format!("{base}/{vin}/command/result") && m.json()["status"] == "succeeded"
        })
        .await;
    eprintln!(
        "unlock confirmed after {:?} with the default intervals",
        sent.elapsed()
    );
    let saved = std::fs::read_to_string(dir.path().join("state/xchanger_tokens.json")).unwrap();
    let token: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let access = token["access_token"].as_str().unwrap().to_string();
    let refresh = token["refresh_token"].as_str().unwrap().to_string();
    signal(&child, 15);
    assert!(wait_exit(&mut child, T).await.success());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap()
        + &std::fs::read_to_string(dir.path().join("log.err")).unwrap();
    assert!(log.contains("xchanger_logged_in"), "the log is captured");
    for secret in [
        "correct horse",
        "proc-key",
        access.as_str(),
        refresh.as_str(),
    ] {
        assert!(!log.contains(secret), "the log leaks `{secret}`");
    }
}

/// The shipped binary with iauto360: `simulate iauto360-platform` as the upstream pushing
/// to the bridge's event endpoint; an unlock is confirmed by the pushed outcome.
#[tokio::test]
async fn the_binary_polls_the_fake_iauto360_platform_and_takes_its_pushes() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (platform_port, push_port) = (common::free_port(), common::free_port());
    let (listen, push_url) = (
        format!("127.0.0.1:{platform_port}"),
        format!("http://127.0.0.1:{push_port}/iauto360/events"),
    );
    let _platform = simulate(&[
        "iauto360-platform",
        "--listen",
        &listen,
        "--push-url",
        &push_url,
    ]);
    assert!(
        common::wait_port_async(platform_port, T).await,
        "fake platform listening"
    );
    let base = format!("p{}", rand::random::<u32>());
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    let child = bridge_against(&broker, dir.path(), &base)
        .env("V2M_IAUTO360__ENABLED", "true")
        .env(
            "V2M_IAUTO360__BASE_URL",
            format!("http://127.0.0.1:{platform_port}"),
        )
        .env("V2M_IAUTO360__OPEN_ID", "OPEN123")
        .env("V2M_IAUTO360__SECURE_CODE", "SECRETcode")
        .env("V2M_IAUTO360__DEVICES", r#"[{esn="865432100012345"}]"#)
        .env(
            "V2M_IAUTO360__PUSH_LISTEN",
            format!("127.0.0.1:{push_port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vehicle2mqtt");
    let _child = KillOnDrop(child);
    let vid = "ia865432100012345";
    probe
        .wait_for("state", T, |m| {
            m.topic == format!("{base}/{vid}/state") && m.json()["odometer"] == 23456.7
        })
        .await;
    assert!(
        common::wait_port_async(push_port, T).await,
        "push endpoint listening"
    );
    probe
        .publish(
            &format!("{base}/{vid}/lock/set"),
            r#"{"action":"UNLOCK","id":"p1"}"#,
            false,
        )
        .await;
    probe
        .wait_for("succeeded", T, |m| {
            m.topic == format!("{base}/{vid}/command/result") && m.json()["status"] == "succeeded"
        })
        .await;
}

async fn http_get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// `/metrics` and `/healthz` on `bridge.http_listen`, and `vehicle2mqtt health`, agree:
/// healthy while MQTT is connected, unhealthy with the reason when the broker goes away.
#[tokio::test]
async fn metrics_and_healthz_follow_the_broker() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("p{}", rand::random::<u32>());
    let http = common::free_port();
    let probe = Probe::connect(broker.port, &[&format!("{base}/bridge/state")]).await;
    let _child = KillOnDrop(
        bridge_against(&broker, dir.path(), &base)
            .env("V2M_BRIDGE__HTTP_LISTEN", format!("127.0.0.1:{http}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    probe.wait_for("online", T, |m| m.text() == "online").await;
    assert!(common::wait_port_async(http, T).await);
    let url = |p: &str| format!("http://127.0.0.1:{http}{p}");
    let mut healthy = (0, String::new());
    for _ in 0..50 {
        healthy = http_get(&url("/healthz")).await;
        if healthy.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healthy, (200, "ok\n".to_string()));
    let (status, metrics) = http_get(&url("/metrics")).await;
    assert_eq!(status, 200);
    for line in [
        "vehicle2mqtt_mqtt_connected 1",
        // mosquitto 2 speaks MQTT 5: the default "auto" uses it.
        "vehicle2mqtt_mqtt_protocol 5",
        "vehicle2mqtt_vehicles 0",
        "# TYPE vehicle2mqtt_mqtt_published counter",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    let health = || {
        bridge_cmd(dir.path())
            .arg("health")
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap()
    };
    assert_eq!(health().status.code(), Some(0));

    broker.stop();
    let mut down = (0, String::new());
    for _ in 0..100 {
        down = http_get(&url("/healthz")).await;
        if down.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(down, (503, "MQTT is not connected\n".to_string()));
    let out = health();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MQTT is not connected"));
}

/// A connector whose port is taken stops the bridge at start with exit 1, naming the
/// address, instead of running on with a healthy health check.
#[tokio::test]
async fn a_taken_listener_port_is_fatal_and_named() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kingxun]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\n[[kingxun.devices]]\nid = 1\nkey = \"00112233445566778899aabbccddeeff\"\n"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let mut cmd = bridge_against(&broker, dir.path(), &format!("p{}", rand::random::<u32>()));
        cmd.arg("--config").arg(&config);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    drop(taken);
}

/// `vehicle2mqtt addon`: the broker and its login come from the Supervisor's MQTT
/// service (a fake Supervisor here, answering as the Supervisor API does), the options
/// from the add-on's options file; a numeric password stays text.
#[tokio::test]
async fn the_addon_takes_its_broker_from_the_supervisor() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("a{}", rand::random::<u32>());
    let broker_port = broker.port;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/services/mqtt",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    seen.lock().unwrap().push(auth.clone());
                    if auth != "Bearer supervisor-token" {
                        return (axum::http::StatusCode::UNAUTHORIZED, "no").into_response();
                    }
                    axum::Json(serde_json::json!({"result": "ok", "data": {
                        "host": "127.0.0.1", "port": broker_port, "ssl": false,
                        "username": "addons", "password": 246801, "protocol": "3.1.1"}}))
                    .into_response()
                }
            }),
        )
    };
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let supervisor = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let options = dir.path().join("options.json");
    std::fs::write(
        &options,
        serde_json::json!({"mqtt": {"base_topic": base, "discovery_prefix": "homeassistant", "per_field_topics": false}})
            .to_string(),
    )
    .unwrap();
    let probe = Probe::connect(broker.port, &[&format!("{base}/bridge/state")]).await;
    // Not the add-on's 0.0.0.0:8099, which another test or program may hold.
    let page_port = common::free_port();
    let _child = KillOnDrop(
        bridge_cmd(dir.path())
            .arg("addon")
            .arg("--options")
            .arg(&options)
            .arg("--supervisor")
            .arg(&supervisor)
            .env("SUPERVISOR_TOKEN", "supervisor-token")
            .env("V2M_BRIDGE__HTTP_LISTEN", format!("127.0.0.1:{page_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    probe.wait_for("online", T, |m| m.text() == "online").await;
    assert_eq!(seen.lock().unwrap()[0], "Bearer supervisor-token");
    // The add-on's page has ingress on: from anywhere but the Supervisor, read-only.
    let page = reqwest::get(format!("http://127.0.0.1:{page_port}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("open this page from the add-on's panel"),
        "{page}"
    );

    // Without the Supervisor's token: a clear refusal, exit 1.
    let out = bridge_cmd(dir.path())
        .arg("addon")
        .arg("--options")
        .arg(&options)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SUPERVISOR_TOKEN"));
}

/// `check-config` reports every problem in one run, each with the true source of its value
/// (the file's path, the environment variable), never an internal source path; an unknown
/// key is called unknown, with the nearest valid key.
#[tokio::test]
async fn check_config_reports_every_problem_with_its_true_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[mqtt]\nbase_topic = \"a/+/b\"\n[bridge]\ncommand_queue = 0\n[kingxun]\nenabled = true\nmax_links = 0\n[[kingxun.devices]]\nid = 1\nkey = \"zz\"\n",
    )
    .unwrap();
    let out = bridge_cmd(dir.path())
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .env("V2M_MQTT__CLIENT_ID", "x".repeat(65))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let file_name = file.display().to_string();
    for (key, from) in [
        ("mqtt.base_topic", file_name.as_str()),
        ("bridge.command_queue", file_name.as_str()),
        ("kingxun.max_links", file_name.as_str()),
        ("kingxun.devices[0].key", file_name.as_str()),
        ("mqtt.client_id", "V2M_"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("`{key}` not reported:\n{err}"));
        assert!(line.contains(from), "{key} should come from {from}: {line}");
    }
    assert!(!err.contains("src/"), "no internal paths: {err}");
    assert!(
        !err.contains("defaults"),
        "nothing here came from the defaults: {err}"
    );

    std::fs::write(&file, "[mqtt]\nbase_topik = \"x\"\n").unwrap();
    let out = bridge_cmd(dir.path())
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key `mqtt.base_topik`")
            && err.contains("did you mean `mqtt.base_topic`?"),
        "{err}"
    );
}

/// Simulators fail loudly: exit 1 with the reason for an unreachable server, a refused
/// registration or login, or a busy port; never a quiet exit 0.
#[tokio::test]
async fn simulators_exit_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sim = |args: &[&str]| {
        let out = bridge_cmd(dir.path())
            .arg("simulate")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Nobody listens here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, err) = sim(&["kingxun", "--server", &addr]);
    assert_eq!(code, Some(1));
    assert!(err.contains("refused"), "{err}");
    let (code, err) = sim(&["exlive", "--server", &addr]);
    assert_eq!(code, Some(1));
    assert!(err.contains("stopped"), "{err}");
    // A busy port for the fake clouds.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    for target in ["xchanger-cloud", "iauto360-platform"] {
        let (code, err) = sim(&[target, "--listen", &busy_addr]);
        assert_eq!(code, Some(1), "{target}");
        assert!(err.contains(&busy_addr), "{target}: {err}");
    }
    // An unknown device: the bridge cannot open its frames; the simulator says so.
    let broker = Mosquitto::start();
    let kx = common::free_port();
    let config = dir.path().join("kx.toml");
    std::fs::write(
        &config,
        format!("[kingxun]\nenabled = true\nlisten = \"127.0.0.1:{kx}\"\n\n[[kingxun.devices]]\nid = 1\nkey = \"00112233445566778899aabbccddeeff\"\n"),
    )
    .unwrap();
    let _bridge = KillOnDrop(
        bridge_against(&broker, dir.path(), &format!("s{}", rand::random::<u32>()))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(common::wait_port_async(kx, T).await);
    let (code, err) = sim(&[
        "kingxun",
        "--server",
        &format!("127.0.0.1:{kx}"),
        "--first-id",
        "77",
    ]);
    assert_eq!(code, Some(1));
    // Registered like any device (unknown ids look like known ones), then its sealed
    // status cannot be opened: the simulator says so.
    assert!(
        err.contains("rejects device 77") && err.contains("[[kingxun.devices]]"),
        "{err}"
    );
}

#[test]
fn check_config_refuses_topics_that_brokers_or_filters_misread() {
    for (key, bad) in [
        ("V2M_MQTT__BASE_TOPIC", "cars.v1"),
        ("V2M_MQTT__BASE_TOPIC", "my cars"),
        ("V2M_MQTT__BASE_TOPIC", "cars/#"),
        ("V2M_MQTT__DISCOVERY_PREFIX", "home+assistant"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = bridge_cmd(dir.path())
            .env(key, bad)
            .arg("check-config")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        let name = key.trim_start_matches("V2M_MQTT__").to_lowercase();
        assert!(err.contains(&format!("mqtt.{name}")), "{bad}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = bridge_cmd(dir.path())
        .env("V2M_MQTT__BASE_TOPIC", "garage/cars-1")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue #12: a restart keeps every entity of a configured device that has not linked
/// (it used to remove them until the device reported), and only a device removed from
/// the config loses its entities. The real binary, twice, against one mosquitto.
#[tokio::test]
async fn a_restart_removes_only_the_entities_of_devices_removed_from_the_config() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("rm{}", rand::random::<u32>());
    let kx_port = common::free_port();
    let devices = |ids: &[u32]| -> String {
        ids.iter()
            .map(|id| format!("{{id={id},key=\"{}\"}}", "ab".repeat(16)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let run = |ids: &[u32]| {
        let child = bridge_against(&broker, dir.path(), &base)
            .env("V2M_KINGXUN__ENABLED", "true")
            .env("V2M_KINGXUN__LISTEN", format!("127.0.0.1:{kx_port}"))
            .env("V2M_KINGXUN__DEVICES", format!("[{}]", devices(ids)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vehicle2mqtt");
        KillOnDrop(child)
    };
    let probe = Probe::connect(broker.port, &[&format!("homeassistant/+/{base}/+/config")]).await;
    let lock = |id: u32| format!("homeassistant/lock/{base}/kx{id}_lock/config");
    let mut first = run(&[1001, 1002]);
    probe.wait_topic(&lock(1001), T).await;
    probe.wait_topic(&lock(1002), T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&first, 15);
    assert!(wait_exit(&mut first, T).await.success());
    let kx1002: Vec<String> = probe
        .messages()
        .iter()
        .filter(|m| m.topic.contains("/kx1002_") && !m.payload.is_empty())
        .map(|m| m.topic.clone())
        .collect();
    assert!(kx1002.len() >= 3, "{kx1002:?}");

    probe.clear();
    let mut second = run(&[1001]);
    probe
        .wait_for("kx1002's lock removed", T, |m| {
            m.topic == lock(1002) && m.payload.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let emptied: std::collections::BTreeSet<String> = probe
        .messages()
        .iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| m.topic.clone())
        .collect();
    assert!(
        emptied.iter().all(|t| t.contains("/kx1002_")),
        "only kx1002 loses entities: {emptied:?}"
    );
    assert_eq!(emptied, kx1002.into_iter().collect(), "all of kx1002's go");
    signal(&second, 15);
    assert!(wait_exit(&mut second, T).await.success());
}

/// The discovery documents a run has published: topic → the last payload, and every
/// publish in order.
fn discovery_docs(
    probe: &Probe,
) -> (
    std::collections::BTreeMap<String, Vec<u8>>,
    Vec<common::Msg>,
) {
    let all: Vec<common::Msg> = probe
        .messages()
        .into_iter()
        .filter(|m| m.topic.starts_with("homeassistant/") && m.topic.ends_with("/config"))
        .collect();
    let last = all
        .iter()
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect();
    (last, all)
}

/// Waits until no discovery document has been published for `quiet`.
async fn discovery_settles(probe: &Probe, quiet: Duration, timeout: Duration) {
    let end = std::time::Instant::now() + timeout;
    let mut seen = discovery_docs(probe).1.len();
    let mut since = std::time::Instant::now();
    while since.elapsed() < quiet {
        assert!(std::time::Instant::now() < end, "discovery never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = discovery_docs(probe).1.len();
        if now != seen {
            (seen, since) = (now, std::time::Instant::now());
        }
    }
}

/// A discovery document is a function of the vehicle's config and the identity it
/// reported (kept in its record): a graceful restart and the devices linking again
/// publish the very same bytes, so Home Assistant rewrites no entity.
#[tokio::test]
async fn a_restart_and_relink_publish_byte_identical_discovery() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("bs{}", rand::random::<u32>());
    let (kx_port, ex_port) = (common::free_port(), common::free_port());
    let devices = Command::new(BIN)
        .args([
            "simulate",
            "kingxun",
            "--devices",
            "2",
            "--key-seed",
            "7",
            "--print-config",
        ])
        .output()
        .expect("print the simulated devices");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kingxun]\nenabled = true\nlisten = \"127.0.0.1:{kx_port}\"\n{}\n\
             [exlive]\nenabled = true\nlisten = \"127.0.0.1:{ex_port}\"\n\
             [[exlive.accounts]]\nname = \"fleet\"\npassword = \"change-me\"\n\
             [[exlive.commands]]\nname = \"locate\"\ndata = \"WHERE#\"\n",
            String::from_utf8_lossy(&devices.stdout)
        ),
    )
    .unwrap();
    let run = || {
        KillOnDrop(
            bridge_against(&broker, dir.path(), &base)
                .arg("--config")
                .arg(&config)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn vehicle2mqtt"),
        )
    };
    let devices = |port: u16| {
        let kx = simulate(&[
            "kingxun",
            "--server",
            &format!("127.0.0.1:{kx_port}"),
            "--devices",
            "2",
            "--key-seed",
            "7",
            "--interval",
            "1s",
        ]);
        let ex = simulate(&[
            "exlive",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--links",
            "1",
            "--rate",
            "2",
            "--first-id",
            "7001",
        ]);
        (kx, ex)
    };
    let probe = Probe::connect(
        broker.port,
        &["homeassistant/#", &format!("{base}/+/state")],
    )
    .await;

    // The bridge starts, the devices link and report, discovery settles.
    let start_and_settle = || async {
        let bridge = run();
        assert!(common::wait_port_async(kx_port, T).await);
        assert!(common::wait_port_async(ex_port, T).await);
        let sims = devices(ex_port);
        for v in ["kx1001", "kx1002", "ex7001"] {
            probe.wait_topic(&format!("{base}/{v}/state"), T).await;
        }
        discovery_settles(&probe, Duration::from_secs(3), Duration::from_secs(30)).await;
        (bridge, sims)
    };
    let (mut first, sims) = start_and_settle().await;
    let (before, _) = discovery_docs(&probe);
    let lock = format!("homeassistant/lock/{base}/kx1001_lock/config");
    let device =
        serde_json::from_slice::<serde_json::Value>(&before[&lock]).unwrap()["device"].clone();
    assert_eq!(
        device["model"], "E-motor",
        "the model the device reported: {device}"
    );
    assert!(
        device["sw_version"].is_string(),
        "the firmware it reported: {device}"
    );

    // A graceful restart; the devices link again (the simulators reconnect).
    signal(&first, 15);
    assert!(wait_exit(&mut first, T).await.success());
    drop(sims);
    probe.clear();
    let (mut second, _sims) = start_and_settle().await;
    let (_, published) = discovery_docs(&probe);
    assert!(
        !published.is_empty(),
        "a restart announces its entities again"
    );
    let changed: Vec<String> = published
        .iter()
        .filter(|m| before.get(&m.topic) != Some(&m.payload))
        .map(|m| format!("{} = {}", m.topic, m.text()))
        .collect();
    assert!(
        changed.is_empty(),
        "changed or new documents after a restart:\n{}",
        changed.join("\n")
    );
    signal(&second, 15);
    assert!(wait_exit(&mut second, T).await.success());
}

/// The embedded broker answers a refused login with CONNACK "not authorised" (3.1.1 code
/// 5, MQTT 5 reason 0x87) and closes, so clients say why (rumqttd alone closed without a
/// CONNACK, and mosquitto_sub retried forever); it logs and counts them.
#[tokio::test]
async fn the_embedded_broker_refuses_a_wrong_login_with_a_connack() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (port, http) = (common::free_port(), common::free_port());
    let log = dir.path().join("bridge.log");
    let child = bridge_cmd(dir.path())
        .env("V2M_MQTT__EMBEDDED_LISTEN", format!("127.0.0.1:{port}"))
        .env("V2M_BRIDGE__HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn");
    let _child = KillOnDrop(child);
    assert!(common::wait_port(port, T), "embedded broker never listened");
    let (user, password) = common::embedded_login(&dir.path().join("state"));
    // A raw 3.1.1 CONNECT with the right user and a wrong password, then MQTT 5.
    let connect = |level: u8, pass: &str| {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0xC2, 0x00, 0x3C];
        if level == 5 {
            body.push(0x00);
        }
        for field in ["door-test", user.as_str(), pass] {
            body.extend_from_slice(&(field.len() as u16).to_be_bytes());
            body.extend_from_slice(field.as_bytes());
        }
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        packet
    };
    for (level, expected) in [
        (4u8, &[0x20u8, 0x02, 0x00, 0x05][..]),
        (5, &[0x20, 0x03, 0x00, 0x87, 0x00]),
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(&connect(level, "guess")).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got, expected,
            "level {level}: a CONNACK refusing the login, then closed"
        );
    }
    // mosquitto_sub says why and stops, instead of retrying forever.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "#",
                "-u",
                "someone",
                "-P",
                "wrong",
                "-W",
                "10",
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("mosquitto_sub");
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !out.status.success() && said.contains("not authori"),
        "{said}"
    );
    // The right login still gets in, through the same door.
    let probe = Probe::connect_login(
        port,
        &["vehicle2mqtt/bridge/state"],
        Some((&user, &password)),
    )
    .await;
    probe.wait_for("online", T, |m| m.text() == "online").await;
    // Counted in /metrics, logged with the peer.
    let url = format!("http://127.0.0.1:{http}/metrics");
    let deadline = std::time::Instant::now() + T;
    let counted = loop {
        let (_, body) = http_get(&url).await;
        if body.contains("vehicle2mqtt_embedded_broker_refused_logins_total 3") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(counted, "the three refusals are counted in /metrics");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("embedded_broker_login_refused") && logged.contains("127.0.0.1"),
        "{logged}"
    );
    // Neither the real password nor a guess is in what the refusals log (the first start
    // prints the login it made once, on purpose: that is how the user learns it).
    for line in logged.lines().filter(|l| l.contains("embedded_broker")) {
        assert!(
            !line.contains(&password) && !line.contains("guess"),
            "a password in the log: {line}"
        );
    }
}

/// `vehicle2mqtt trips`: the trip log read back from `state_dir/trips/` as JSON lines
/// (without paths), GeoJSON (longitude first) or GPX; `--since` cuts; a vehicle without
/// a log exits 1 saying so; a bad date is a usage error.
#[test]
fn the_trips_command_prints_the_log_in_three_formats() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("state").join("trips");
    std::fs::create_dir_all(&logs).unwrap();
    let trip = |start: &str, km: f64| {
        serde_json::json!({
            "start": start, "end": start, "distance_km": km, "duration_s": 60,
            "start_latitude": 31.2, "start_longitude": 121.4,
            "end_latitude": 31.21, "end_longitude": 121.4,
            "path": [[31.2, 121.4], [31.205, 121.4], [31.21, 121.4]],
        })
        .to_string()
    };
    let text = format!(
        "{}\n{}\n",
        trip("2026-12-01T08:00:00Z", 1.1),
        trip("2026-12-03T08:00:00Z", 2.2)
    );
    std::fs::write(logs.join("ex901.jsonl"), text).unwrap();
    let run = |args: &[&str]| {
        let out = bridge_cmd(dir.path())
            .arg("trips")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["ex901"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["distance_km"], 2.2);
    assert!(lines[0].get("path").is_none(), "{out}");
    let (code, out, _) = run(&["ex901", "--since", "2026-12-02", "--geojson"]);
    assert_eq!(code, Some(0));
    let geo: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(geo["features"].as_array().unwrap().len(), 1);
    assert_eq!(
        geo["features"][0]["geometry"]["coordinates"][2],
        serde_json::json!([121.4, 31.21])
    );
    let (code, out, _) = run(&["ex901", "--gpx"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        (out.matches("<trk>").count(), out.matches("<trkpt ").count()),
        (2, 6),
        "{out}"
    );
    let (code, _, err) = run(&["ex999"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no trips logged for `ex999`"), "{err}");
    let (code, _, err) = run(&["ex901", "--since", "last week"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is not a date"), "{err}");
}
