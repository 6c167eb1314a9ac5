//! The MQTT client against a broker that demands a login, and one that speaks TLS with a
//! private CA (`mqtt.ca_file`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Mosquitto, RunningBridge};
use vehicle2mqtt::config::Secret;

const T: Duration = Duration::from_secs(15);

fn with_password(dir: &std::path::Path) -> String {
    let file = dir.join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&file)
        .arg("bridge")
        .arg("s3cret-pw")
        .status()
        .unwrap();
    assert!(ok.success(), "mosquitto_passwd");
    format!("allow_anonymous false\npassword_file {}", file.display())
}

#[tokio::test]
async fn username_and_password_are_used_and_a_wrong_one_is_retried_not_fatal() {
    let broker = Mosquitto::start_with(with_password);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&broker.url(), dir.path());
    config.mqtt.username = "bridge".into();
    config.mqtt.password = Secret::new("wrong");
    let base = config.mqtt.base_topic.clone();
    // Refused: the bridge keeps running and retrying (no crash, no exit).
    let refused = RunningBridge::start(config.clone()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !refused.task.is_finished(),
        "a refused login must not stop the bridge"
    );
    refused.stop().await;

    config.mqtt.password = Secret::new("s3cret-pw");
    let bridge = RunningBridge::start(config).await;
    // The probe logs in too (same account).
    let mut opts = rumqttc::MqttOptions::new("probe-auth", "127.0.0.1", broker.port);
    opts.set_credentials("bridge", "s3cret-pw");
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe(format!("{base}/bridge/state"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = tokio::time::timeout(T, async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) =
                eventloop.poll().await
            {
                if &p.payload[..] == b"online" {
                    return true;
                }
            }
        }
    })
    .await;
    assert_eq!(got, Ok(true), "bridge online with its credentials");
    bridge.stop().await;
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with openssl.
fn with_tls(dir: &std::path::Path) -> String {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=v2m test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // mosquitto drops root privileges before reading the key: let its user read this
    // throwaway test key.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    format!(
        "allow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key",
        dir.display()
    )
}

#[tokio::test]
async fn tls_with_a_private_ca_file() {
    let broker = Mosquitto::start_with(with_tls);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(&format!("mqtts://127.0.0.1:{}", broker.port), dir.path());
    config.mqtt.ca_file = Some(broker.dir.path().join("ca.pem"));
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    // A plain-TCP probe cannot talk to a TLS listener, so ask the broker through a TLS
    // client of our own making.
    let ca = std::fs::read(broker.dir.path().join("ca.pem")).unwrap();
    let mut opts = rumqttc::MqttOptions::new("probe-tls", "127.0.0.1", broker.port);
    opts.set_transport(rumqttc::Transport::tls(ca, None, None));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    client
        .subscribe(format!("{base}/bridge/state"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = tokio::time::timeout(T, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))
                    if &p.payload[..] == b"online" =>
                {
                    return true
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert_eq!(got, Ok(true), "bridge online over TLS with mqtt.ca_file");
    bridge.stop().await;
}
