//! `vehicle2mqtt demo` as a user runs it: vehicles appear within seconds and an unlock
//! succeeds, with nothing installed (embedded broker).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, Probe};

/// `demo` with its six ports: MQTT, kingxun, EXLIVE, xchanger, iauto360, iauto360 push.
fn demo_args(ports: [u16; 6]) -> Vec<String> {
    let flags = [
        "--mqtt-port",
        "--kingxun-port",
        "--exlive-port",
        "--xchanger-port",
        "--iauto360-port",
        "--push-port",
    ];
    let mut args = vec!["demo".to_string()];
    for (flag, port) in flags.iter().zip(ports) {
        args.extend([flag.to_string(), port.to_string()]);
    }
    args
}

#[tokio::test]
async fn demo_shows_vehicles_and_unlocks() {
    let [mqtt, kx, ex, xc, ia, push] = [0; 6].map(|_| common::free_port());
    // The demo keeps its state (the fake clouds' tokens) in a temp dir: this one, to see
    // it gone afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(common::BIN)
        .env("TMPDIR", tmp.path())
        .args(demo_args([mqtt, kx, ex, xc, ia, push]))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let mut child = KillOnDrop(child);
    assert!(
        common::wait_port_async(mqtt, Duration::from_secs(15)).await,
        "demo broker never listened"
    );
    let state = tmp
        .path()
        .join(format!("vehicle2mqtt-demo-{}", child.0.id()));
    let (user, password) = common::embedded_login(&state);
    let probe = Probe::connect_login(
        mqtt,
        &["vehicle2mqtt/#", "homeassistant/#"],
        Some((&user, &password)),
    )
    .await;
    let t = Duration::from_secs(20);
    probe
        .wait_for("kingxun vehicle", t, |m| {
            m.topic == "vehicle2mqtt/kx1001/state"
        })
        .await;
    probe
        .wait_for("EXLIVE vehicle", t, |m| {
            m.topic == "vehicle2mqtt/ex7001/state"
        })
        .await;
    probe
        .wait_for("Lynk & Co car from the fake cloud", t, |m| {
            m.topic == "vehicle2mqtt/L6T7722E0LN000001/state" && m.json()["odometer"] == 33253
        })
        .await;
    probe
        .wait_for("OBD box from the fake platform", t, |m| {
            // The platform reports 23456.7 (condition) and 23456 (vehicle info); while
            // MQTT is busy states coalesce, so either may be the one published.
            m.topic == "vehicle2mqtt/ia865432100012345/state"
                && m.json()["odometer"]
                    .as_f64()
                    .is_some_and(|km| (23456.0..=23456.7).contains(&km))
        })
        .await;
    probe
        .wait_topic("homeassistant/lock/vehicle2mqtt/kx1001_lock/config", t)
        .await;
    probe
        .publish("vehicle2mqtt/kx1001/lock/set", "UNLOCK", false)
        .await;
    let r = probe
        .wait_for("unlock result", t, |m| {
            m.topic == "vehicle2mqtt/kx1001/command/result"
        })
        .await
        .json();
    assert_eq!(r["status"], "succeeded", "{r}");
    probe
        .wait_for("unlocked", t, |m| {
            m.topic == "vehicle2mqtt/kx1001/state" && m.json()["lock"] == "UNLOCKED"
        })
        .await;

    let status = Command::new("kill")
        .args(["-15", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            std::time::Instant::now() < end,
            "demo did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
    let mut stderr = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("mosquitto_sub") && stderr.contains("lock/set"),
        "the demo explains itself: {stderr}"
    );
    assert!(
        stderr.contains(&format!("-u {user} -P {password}")),
        "the demo shows the broker's login: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
}

/// A taken port (1883 on many Home Assistant hosts) is named with the flag that moves it,
/// before anything starts; `--config` and `V2M_` settings apply to the demo.
#[tokio::test]
async fn demo_names_a_busy_port_and_honours_the_environment() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(common::BIN)
        .args(["demo", "--mqtt-port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port} is taken")) && err.contains("--mqtt-port"),
        "{err}"
    );
    assert!(
        !err.contains("mosquitto_sub"),
        "no instructions for a demo that did not start"
    );
    // The same port, but the broker comes from the environment: the demo uses it.
    let broker = common::Mosquitto::start();
    let [kx, ex, xc, ia, push] = [0; 5].map(|_| common::free_port());
    let base = format!("d{}", rand::random::<u32>());
    let probe = Probe::connect(broker.port, &[&format!("{base}/#")]).await;
    // Killed at the end, so its state dir stays: keep it in a temp dir of the test's.
    let tmp = tempfile::tempdir().unwrap();
    let _child = KillOnDrop(
        Command::new(common::BIN)
            .env("TMPDIR", tmp.path())
            .env("V2M_MQTT__URL", broker.url())
            .env("V2M_MQTT__BASE_TOPIC", &base)
            .args(demo_args([port, kx, ex, xc, ia, push]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    probe
        .wait_for(
            "a demo vehicle on the user's broker",
            Duration::from_secs(20),
            |m| m.topic == format!("{base}/kx1001/state"),
        )
        .await;
    drop(taken);
}
