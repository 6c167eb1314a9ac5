//! The MQTT client against a broker that demands a login, and one that speaks TLS with a
//! private CA (`mqtt.ca_file`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Mosquitto, Probe, RunningBridge};
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

/// Two bridges left at the default client id on one broker: each gets its own id, so
/// neither is knocked off by the other (the same id would make the broker drop one, and
/// its will would flap `offline`).
#[tokio::test]
async fn two_bridges_with_the_default_client_id_both_stay_connected() {
    let broker = Mosquitto::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = common::test_config(&broker.url(), dir_a.path());
    let mut b = common::test_config(&broker.url(), dir_b.path());
    a.mqtt.client_id.clear();
    b.mqtt.client_id.clear();
    let topics = [
        format!("{}/bridge/state", a.mqtt.base_topic),
        format!("{}/bridge/state", b.mqtt.base_topic),
    ];
    let probe = Probe::connect(broker.port, &[&topics[0], &topics[1]]).await;
    let bridge_a = common::RunningBridge::start(a).await;
    let bridge_b = common::RunningBridge::start(b).await;
    for t in &topics {
        probe
            .wait_for("online", Duration::from_secs(10), |m| {
                &m.topic == t && m.text() == "online"
            })
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flaps = probe
        .messages()
        .iter()
        .filter(|m| m.text() == "offline")
        .count();
    assert_eq!(flaps, 0, "a bridge was knocked off: {:?}", probe.messages());
    let ids = [
        vehicle2mqtt::state_dir::client_id(dir_a.path()).unwrap(),
        vehicle2mqtt::state_dir::client_id(dir_b.path()).unwrap(),
    ];
    assert_ne!(ids[0], ids[1]);
    bridge_a.stop().await;
    bridge_b.stop().await;
}

/// A minimal MQTT 3.1.1 broker whose SUBACKs say "Failure" (0x80, MQTT 3.1.1 §3.9.3)
/// while `refuse` is set. A fake, because mosquitto's `acl_file` never refuses a
/// subscription (it checks reads, not subscribes: eclipse/mosquitto#803; only an auth
/// plugin can, as its own test `auth_plugin_acl_sub_denied.c` does). It speaks just what
/// the bridge sends: CONNECT → CONNACK (§3.2), SUBSCRIBE → SUBACK (§3.9), PUBLISH QoS 1 →
/// PUBACK (§3.4), PINGREQ → PINGRESP (§3.13).
async fn refusing_broker(
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let refuse = refuse.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(kind) = s.read_u8().await else { return };
                    let (mut len, mut shift) = (0usize, 0);
                    loop {
                        let Ok(b) = s.read_u8().await else { return };
                        len |= usize::from(b & 0x7f) << shift;
                        shift += 7;
                        if b & 0x80 == 0 {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer: Vec<u8> = match kind >> 4 {
                        1 => vec![0x20, 2, 0, 0],
                        3 if (kind >> 1) & 3 > 0 => {
                            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                            vec![0x40, 2, body[2 + topic_len], body[3 + topic_len]]
                        }
                        8 => {
                            let mut filters = 0;
                            let mut at = 2;
                            while at + 2 <= body.len() {
                                at += 2
                                    + usize::from(u16::from_be_bytes([body[at], body[at + 1]]))
                                    + 1;
                                filters += 1;
                            }
                            let code = if refuse.load(std::sync::atomic::Ordering::SeqCst) {
                                0x80
                            } else {
                                1
                            };
                            let mut a = vec![0x90, 2 + filters as u8, body[0], body[1]];
                            a.extend(std::iter::repeat_n(code, filters));
                            a
                        }
                        12 => vec![0xd0, 0],
                        14 => return,
                        _ => continue,
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, task)
}

/// A broker that refuses the command subscription (an ACL): the bridge says so (log,
/// health, counter) instead of looking healthy while deaf to commands, and retries until
/// the broker accepts it.
#[tokio::test]
async fn a_refused_command_subscription_is_unhealthy_until_the_broker_allows_it() {
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (port, broker) = refusing_broker(refuse.clone()).await;
    let state = tempfile::tempdir().unwrap();
    let config = common::test_config(&format!("mqtt://127.0.0.1:{port}"), state.path());
    let bridge = RunningBridge::start(config).await;

    let unhealthy = async {
        loop {
            if let Err(reason) = vehicle2mqtt::state_dir::check_alive(state.path()) {
                if reason.contains("refused a subscription") {
                    return reason;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(T, unhealthy)
        .await
        .expect("the refused subscription shows in the health verdict");

    // The broker now accepts: the next retries succeed and health returns.
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let healthy = async {
        while vehicle2mqtt::state_dir::check_alive(state.path()).is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(40), healthy)
        .await
        .expect("healthy again once the broker accepts the subscription");
    bridge.stop().await;
    broker.abort();
}

/// A refused login says so, plainly, in the real binary's log (and never the password),
/// and the bridge keeps retrying instead of exiting.
#[test]
fn a_refused_login_is_named_in_the_log_without_the_password() {
    let broker = Mosquitto::start_with(with_password);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vehicle2mqtt"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("V2M_BRIDGE__STATE_DIR", dir.path().join("state"))
        .env("V2M_MQTT__URL", broker.url())
        .env("V2M_MQTT__USERNAME", "bridge")
        .env("V2M_MQTT__PASSWORD", "not-the-Pw-42")
        .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
        .stderr(std::process::Stdio::from(file))
        .spawn()
        .unwrap();
    let mut child = common::KillOnDrop(child);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "a refused login must not stop the bridge"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("mqtt_login_refused") && text.contains("mqtt.password"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-Pw-42"),
        "the password is in the log"
    );
}
