//! `mqtt.url` as a list of brokers, against real mosquittos and the real binary: the
//! bridge connects to the first that answers, and when that one goes away, the next
//! reconnect goes to the next one in the list (wrapping around).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{bridge_cmd, free_port, KillOnDrop, Mosquitto, Probe};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_bridge_moves_along_the_broker_list() {
    // The first broker of the list is down at start (nothing listens on its port).
    let first_port = free_port();
    let mut second = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let base = format!("bl{}", rand::random::<u32>());
    let topic = format!("{base}/bridge/state");
    let url = format!(
        "mqtt://127.0.0.1:{first_port} , mqtt://127.0.0.1:{}",
        second.port
    );
    let log = dir.path().join("bridge.log");
    let child = bridge_cmd(dir.path())
        .env("V2M_MQTT__URL", &url)
        .env("V2M_MQTT__BASE_TOPIC", &base)
        .env("V2M_MQTT__CLIENT_ID", format!("{base}-bridge"))
        .env("V2M_BRIDGE__LOG_FORMAT", "json")
        .env("V2M_BRIDGE__LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn vehicle2mqtt");
    let _child = KillOnDrop(child);

    // Online at the second broker, retained.
    let probe = Probe::connect(second.port, &[&topic]).await;
    probe
        .wait_for("online at the second broker", T, |m| {
            m.topic == topic && m.text() == "online"
        })
        .await;
    assert_retained_online(second.port, &topic).await;
    assert_eq!(
        moves(&log),
        vec![format!(
            "127.0.0.1:{first_port} -> 127.0.0.1:{}",
            second.port
        )],
        "the move to the second broker is logged"
    );

    // The second goes away and the first comes up: the bridge comes online at the first.
    drop(probe);
    second.stop();
    let first = Mosquitto::start_on(first_port);
    let probe = Probe::connect(first.port, &[&topic]).await;
    probe
        .wait_for("online at the first broker", T, |m| {
            m.topic == topic && m.text() == "online"
        })
        .await;
    assert_retained_online(first.port, &topic).await;
    let moves = moves(&log);
    assert!(
        moves.contains(&format!(
            "127.0.0.1:{} -> 127.0.0.1:{first_port}",
            second.port
        )),
        "the move back to the first broker is logged: {moves:?}"
    );
}

/// The `mqtt_broker_next` lines of the bridge's JSON log, as "from -> broker".
fn moves(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["event"] == "mqtt_broker_next")
        .map(|v| {
            format!(
                "{} -> {}",
                v["from"].as_str().unwrap(),
                v["broker"].as_str().unwrap()
            )
        })
        .collect()
}

/// A client arriving now gets `online` on `topic` as a retained message.
async fn assert_retained_online(port: u16, topic: &str) {
    let late = Probe::connect(port, &[topic]).await;
    let m = late.wait_topic(topic, T).await;
    assert_eq!(m.text(), "online");
    assert!(m.retain, "retained");
}

/// "embedded" in a list is a config error: the binary says so and exits 2.
#[test]
fn embedded_in_a_list_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = bridge_cmd(dir.path())
        .env("V2M_MQTT__URL", "mqtt://127.0.0.1:1883, embedded")
        .output()
        .expect("run vehicle2mqtt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("mqtt.url") && stderr.contains("broker 2") && stderr.contains("embedded"),
        "{stderr}"
    );
}
