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
    assert!(
        tls_sees_online(&broker, &base).await,
        "bridge online over TLS with mqtt.ca_file"
    );
    bridge.stop().await;
}

/// A list mixing plain and TLS brokers: the first (plain, down) fails, the second is
/// reached over TLS with `mqtt.ca_file` (each URL has its own TLS flag).
#[tokio::test]
async fn tls_in_a_mixed_broker_list() {
    let broker = Mosquitto::start_with(with_tls);
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "mqtt://127.0.0.1:{}, mqtts://127.0.0.1:{}",
        common::free_port(),
        broker.port
    );
    let mut config = common::test_config(&url, dir.path());
    config.mqtt.ca_file = Some(broker.dir.path().join("ca.pem"));
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    assert!(
        tls_sees_online(&broker, &base).await,
        "bridge online over TLS at the second broker of the list"
    );
    bridge.stop().await;
}

/// Whether `<base>/bridge/state` reads online on the TLS `broker` within `T`. A
/// plain-TCP probe cannot talk to a TLS listener, so this asks through a TLS client of
/// its own.
async fn tls_sees_online(broker: &Mosquitto, base: &str) -> bool {
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
    got == Ok(true)
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
/// PUBACK (§3.4), PINGREQ → PINGRESP (§3.13). Being 3.1.1 only, it refuses the bridge's
/// first, MQTT 5, CONNECT: the test also proves the fallback to 3.1.1.
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
                        // A 3.1.1 broker refuses another protocol level (byte 6 of the
                        // CONNECT variable header) with return code 1 and closes
                        // (§3.1.2.2): the bridge's MQTT 5 attempt falls back to 3.1.1.
                        1 if body.get(6) != Some(&4) => {
                            let _ = s.write_all(&[0x20, 2, 0, 1]).await;
                            return;
                        }
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
    let child = common::bridge_cmd(dir.path())
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

/// A client speaking MQTT 5 (the tests' Probe speaks 3.1.1), for what only 5 can send.
async fn v5_publisher(port: u16) -> rumqttc::v5::AsyncClient {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let opts = MqttOptions::new(format!("v5-{}", rand::random::<u32>()), "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_)) = event {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    tokio::time::timeout(T, ready_rx).await.unwrap().unwrap();
    client
}

/// A scooter with a lock on a running bridge (MQTT 5 against mosquitto 2), and a probe
/// on its command results.
async fn v5_setup() -> (Mosquitto, tempfile::TempDir, String, RunningBridge, Probe) {
    use vehicle2mqtt::connector::Update;
    use vehicle2mqtt::model::{Capability, Field, VehicleId, VehicleInfo, VehicleState};
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(&broker.url(), dir.path());
    let base = config.mqtt.base_topic.clone();
    let bridge = RunningBridge::start(config).await;
    let id = VehicleId::new("kx1001").unwrap();
    let info = VehicleInfo {
        id: id.clone(),
        name: "kx1001".into(),
        manufacturer: "kingxun".into(),
        model: "E-motor".into(),
        reported_model: None,
        sw_version: None,
        custom_name: false,
        serial_number: None,
        capabilities: vec![Capability::Lock].into(),
        event_types: Default::default(),
    };
    bridge
        .ctx
        .updates
        .send(Update::Vehicle(info))
        .await
        .unwrap();
    let mut state = VehicleState::default();
    state.set(Field::Lock, "LOCKED");
    bridge
        .ctx
        .updates
        .send(Update::State {
            vehicle: id,
            state,
            replace: true,
        })
        .await
        .unwrap();
    let probe = Probe::connect(
        broker.port,
        &[
            &format!("{base}/kx1001/command/result"),
            &format!("{base}/kx1001/state"),
            &format!("{base}/bridge/state"),
        ],
    )
    .await;
    probe
        .wait_for("bridge online", T, |m| {
            m.topic == format!("{base}/bridge/state") && m.text() == "online"
        })
        .await;
    probe.wait_topic(&format!("{base}/kx1001/state"), T).await;
    (broker, dir, base, bridge, probe)
}

/// MQTT 5 retain-as-published: a command published retained while the bridge is
/// connected arrives live and is still recognised as retained: never executed (3.1.1
/// brokers clear the flag on live delivery, so such a command ran once).
#[tokio::test]
async fn a_retained_command_published_live_is_never_executed() {
    let (_broker, _dir, base, mut bridge, probe) = v5_setup().await;
    let publisher = v5_publisher(_broker.port).await;
    publisher
        .publish(
            format!("{base}/kx1001/lock/set"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            r#"{"action":"UNLOCK","id":"live-retained"}"#,
        )
        .await
        .unwrap();
    let r = probe
        .wait_for("rejected", T, |m| m.topic.ends_with("/command/result"))
        .await
        .json();
    assert_eq!(r["status"], "rejected", "{r}");
    assert_eq!(r["id"], "live-retained");
    assert!(r["reason"].as_str().unwrap().contains("retained"), "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bridge.ctx.commands.try_recv().is_err(),
        "the vehicle was commanded"
    );
    // Cleared, and a plain command still works.
    probe
        .publish(&format!("{base}/kx1001/lock/set"), "", true)
        .await;
    probe
        .publish(&format!("{base}/kx1001/lock/set"), "UNLOCK", false)
        .await;
    let req = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.command, vehicle2mqtt::model::Command::Unlock);
    bridge.stop().await;
}

/// MQTT 5 message expiry: a command whose sender gave it 1 s, still queued behind a
/// command in flight after that, is rejected as expired and never reaches the vehicle.
#[tokio::test]
async fn a_command_past_its_message_expiry_is_not_sent() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let (_broker, _dir, base, mut bridge, probe) = v5_setup().await;
    let publisher = v5_publisher(_broker.port).await;
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"action":"LOCK","id":"first"}"#,
            false,
        )
        .await;
    let first = tokio::time::timeout(T, bridge.ctx.commands.recv())
        .await
        .unwrap()
        .unwrap();
    let props = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .publish_with_properties(
            format!("{base}/kx1001/lock/set"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            r#"{"action":"UNLOCK","id":"short-lived"}"#,
            props,
        )
        .await
        .unwrap();
    // The first command takes 2 s; the second's second runs out meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first
        .progress
        .send(vehicle2mqtt::model::CommandProgress::Succeeded)
        .await
        .unwrap();
    let r = probe
        .wait_for("expired", T, |m| {
            m.topic.ends_with("/command/result") && m.json()["id"] == "short-lived"
        })
        .await
        .json();
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("expir"), "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bridge.ctx.commands.try_recv().is_err(),
        "the expired command was sent"
    );
    bridge.stop().await;
}
