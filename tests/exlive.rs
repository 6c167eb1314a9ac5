//! EXLIVE connector end to end: real TCP links into the bridge, real mosquitto out.

mod common;

use std::time::Duration;

use common::exlive::{gps_time, position, success, Peer};
use common::{Mosquitto, Probe};
use tokio::net::{TcpListener, TcpStream};
use vehicle2mqtt::config::{Config, Secret};
use vehicle2mqtt::connector::Connector;
use vehicle2mqtt::connectors::exlive::{
    ExliveAccount, ExliveClientConfig, ExliveCommand, ExliveConnector,
};
use vehicle2mqtt::protocol::exlive::Message;

const T: Duration = Duration::from_secs(10);

use common::ConnectorBridge as Bridge;

impl Bridge {
    /// An EXLIVE server with one account and one pass-through command.
    async fn start(broker: &Mosquitto, tweak: impl FnOnce(&mut Config)) -> Bridge {
        Bridge::start_with(broker, |config, port| exlive_server(config, port, tweak)).await
    }

    /// The same, with its state in `dir` and its listener on `port` (to restart it).
    async fn exlive_in(
        broker: &Mosquitto,
        dir: &std::path::Path,
        port: u16,
        tweak: impl FnOnce(&mut Config),
    ) -> Bridge {
        Bridge::start_in(broker, dir, port, |config, port| {
            exlive_server(config, port, tweak)
        })
        .await
    }
}

fn exlive_server(
    config: &mut Config,
    port: u16,
    tweak: impl FnOnce(&mut Config),
) -> (Box<dyn Connector>, bool) {
    config.upstreams.exlive.enabled = true;
    config.upstreams.exlive.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.upstreams.exlive.accounts = vec![ExliveAccount {
        name: "fleet".into(),
        password: Secret::new("s3cret"),
        vehicles: Vec::new(),
    }];
    config.upstreams.exlive.commands = vec![ExliveCommand {
        name: "locate".into(),
        data: "WHERE#".into(),
    }];
    tweak(config);
    (
        Box::new(ExliveConnector::new(config.upstreams.exlive.clone())) as Box<dyn Connector>,
        config.upstreams.exlive.server,
    )
}

#[tokio::test]
async fn login_then_positions_become_state_and_a_tracker() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#"), "homeassistant/#"]).await;
    let (mut peer, ack) = Peer::login(bridge.port, "fleet", "s3cret").await;
    assert_eq!(ack, success());
    peer.send(position("77", r#","posinfo":"Pudong""#).as_bytes())
        .await
        .unwrap();
    let state = probe
        .wait_topic(&bridge.topic("ex77/state"), T)
        .await
        .json();
    assert_eq!(state["latitude"], 31.2304);
    assert_eq!(state["longitude"], 121.4737);
    assert_eq!(state["speed"], 42.5);
    assert_eq!(state["heading"], 270);
    assert_eq!(state["odometer"], 12345.6);
    assert_eq!(state["fuel_volume"], 33.5);
    assert_eq!(state["gps_valid"], true);
    assert_eq!(state["alarm"], false);
    assert_eq!(state["status_text"], "ACC on");
    assert_eq!(state["address"], "Pudong");
    assert_eq!(state["plate"], "沪A12345");
    // Local Asia/Shanghai time is UTC + 8 h; "Last update" is the tracker's own time.
    assert_eq!(state["gps_time"], gps_time().1.as_str());
    let last = chrono::DateTime::parse_from_rfc3339(state["last_update"].as_str().unwrap());
    let gps = chrono::DateTime::parse_from_rfc3339(&gps_time().1);
    assert_eq!(last.unwrap(), gps.unwrap());
    let tracker = probe
        .wait_topic(
            &format!(
                "homeassistant/device_tracker/{}/ex77_location/config",
                bridge.base
            ),
            T,
        )
        .await
        .json();
    assert_eq!(tracker["device"]["name"], "沪A12345");
    assert_eq!(tracker["device"]["manufacturer"], "EXLIVE");
    probe
        .wait_topic(
            &format!(
                "homeassistant/button/{}/ex77_cmd_locate/config",
                bridge.base
            ),
            T,
        )
        .await;
    probe
        .wait_for("online", T, |m| {
            m.topic == bridge.topic("ex77/availability") && m.text() == "online"
        })
        .await;
    let info = probe
        .wait_for("one link", T, |m| {
            m.topic == bridge.topic("bridge/info") && m.json()["links"] == 1
        })
        .await;
    assert_eq!(info.json()["connectors"][0]["name"], "exlive");

    // Logout closes the link and the vehicle goes offline.
    peer.send_msg(&Message::Logout).await;
    peer.expect_closed().await;
    probe
        .wait_for("offline", T, |m| {
            m.topic == bridge.topic("ex77/availability") && m.text() == "offline"
        })
        .await;
    bridge.stop().await;
}

#[tokio::test]
async fn bad_login_is_refused_closed_and_slowed_down() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let (mut peer, ack) = Peer::login(bridge.port, "fleet", "wrong").await;
    assert!(
        matches!(ack, Message::Ack { ref cmd, ref result } if cmd == "1000" && !Message::is_success(result)),
        "{ack:?}"
    );
    peer.expect_closed().await;
    let (mut peer, _) = Peer::login(bridge.port, "nobody", "s3cret").await;
    peer.expect_closed().await;
    // Third failure from this address: answered only after a delay (0.5 s after two).
    let started = std::time::Instant::now();
    let (_, ack) = Peer::login(bridge.port, "fleet", "guess").await;
    assert!(!matches!(ack, Message::Ack { ref result, .. } if Message::is_success(result)));
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "not slowed: {:?}",
        started.elapsed()
    );
    // Good credentials still work from the same address.
    let (_, ack) = Peer::login(bridge.port, "fleet", "s3cret").await;
    assert_eq!(ack, success());
    bridge.stop().await;
}

#[tokio::test]
async fn data_before_login_is_refused() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("+/state")]).await;
    let mut peer = Peer::connect(bridge.port).await;
    peer.send(position("66", "").as_bytes()).await.unwrap();
    let ack = peer.recv().await.expect("a refusal");
    assert!(
        matches!(ack, Message::Ack { ref result, .. } if result == "not logged in"),
        "{ack:?}"
    );
    peer.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !probe.messages().iter().any(|m| m.topic.contains("/ex66/")),
        "a position before login was accepted"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn silence_past_heartbeat_timeout_closes_the_link_and_heartbeats_keep_it() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.upstreams.exlive.heartbeat_timeout = Duration::from_millis(1200)
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("ex5/availability")]).await;
    let (mut quiet, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    quiet.send(position("5", "").as_bytes()).await.unwrap();
    let (mut chatty, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        chatty.send_msg(&Message::Heartbeat).await;
    }
    // 2 s have passed: the quiet link is gone, the chatty one is alive.
    quiet.expect_closed().await;
    probe
        .wait_for("offline", T, |m| m.text() == "offline")
        .await;
    chatty
        .send(position("6", "").as_bytes())
        .await
        .expect("chatty link still open");
    chatty.send_msg(&Message::Heartbeat).await;
    bridge.stop().await;
}

#[tokio::test]
async fn malformed_gbk_and_oversized_messages() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| c.upstreams.exlive.max_message_size = 1024).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("+/state")]).await;
    let (mut peer, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    // The specification's 1001 without its closing brace (docs/protocols/exlive.md,
    // "1001 logout"), junk JSON, then a GBK position.
    peer.send(br#"{"header":{"cmd":"1001"},"body":{"data":""}"#)
        .await
        .unwrap();
    peer.send(b"\n{\"header\":{\"cmd\":\"1002\"},\"body\":{\"result\":\"\",}}\n")
        .await
        .unwrap();
    let text = position("88", r#","posinfo":"浙江省杭州市{西湖区}""#);
    let (gbk_pos, _, _) = encoding_rs::GBK.encode(&text);
    peer.send(&gbk_pos).await.unwrap();
    let state = probe
        .wait_topic(&bridge.topic("ex88/state"), T)
        .await
        .json();
    assert_eq!(state["address"], "浙江省杭州市{西湖区}");
    assert_eq!(state["plate"], "沪A12345");
    // A value that does not parse makes only that field absent.
    peer.send(
        position("89", "")
            .replace(r#""veo":"42.5""#, r#""veo":"n/a""#)
            .as_bytes(),
    )
    .await
    .unwrap();
    let state = probe
        .wait_topic(&bridge.topic("ex89/state"), T)
        .await
        .json();
    assert!(state.get("speed").is_none(), "{state}");
    assert_eq!(state["odometer"], 12345.6);

    // An oversized message closes that link only.
    let (mut other, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    let huge = format!(
        r#"{{"header":{{"cmd":"1003"}},"body":{{"msg":"{}"}}}}"#,
        "x".repeat(4000)
    );
    let _ = peer.send(huge.as_bytes()).await;
    peer.expect_closed().await;
    other.send(position("90", "").as_bytes()).await.unwrap();
    probe.wait_topic(&bridge.topic("ex90/state"), T).await;
    let info = Probe::connect(broker.port, &[&bridge.topic("bridge/info")]).await;
    let c = info
        .wait_for("counters", T, |m| {
            m.json()["connectors"][0]["counters"]["oversized"] == 1
        })
        .await
        .json()["connectors"][0]["counters"]
        .clone();
    assert!(
        c["malformed"].as_u64().unwrap() >= 2,
        "the brace-less 1001 and the bad JSON: {c}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn links_past_max_links_are_refused() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| c.upstreams.exlive.max_links = 2).await;
    let (_a, ack_a) = Peer::login(bridge.port, "fleet", "s3cret").await;
    let (_b, ack_b) = Peer::login(bridge.port, "fleet", "s3cret").await;
    assert_eq!((ack_a, ack_b), (success(), success()));
    let mut c = Peer::connect(bridge.port).await;
    let _ = c.send(b"{}").await;
    assert!(
        c.recv().await.is_none(),
        "third link should be closed at once"
    );
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_d, ack_d) = Peer::login(bridge.port, "fleet", "s3cret").await;
    assert_eq!(ack_d, success(), "a freed slot is usable again");
    bridge.stop().await;
}

#[tokio::test]
async fn passthrough_command_reaches_the_terminal_and_its_1013_completes_it() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.bridge.command_timeout = Duration::from_millis(1500)
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    let (mut peer, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    peer.send(position("42", "").as_bytes()).await.unwrap();
    probe.wait_topic(&bridge.topic("ex42/state"), T).await;

    probe
        .publish(
            &bridge.topic("ex42/cmd_locate/set"),
            r#"{"id":"loc-1"}"#,
            false,
        )
        .await;
    let msg = peer.recv().await.unwrap();
    assert_eq!(
        msg,
        Message::Passthrough {
            terminalid: "42".into(),
            code: String::new(),
            data: "WHERE#".into()
        }
    );
    probe
        .wait_for("accepted", T, |m| {
            m.topic.ends_with("command/result") && m.json()["status"] == "accepted"
        })
        .await;
    peer.send_msg(&Message::PassthroughData {
        terminalid: "42".into(),
        code: String::new(),
        data: "LAT:31.2".into(),
    })
    .await;
    let r = probe
        .wait_for("succeeded", T, |m| {
            m.topic.ends_with("command/result") && m.json()["status"] == "succeeded"
        })
        .await
        .json();
    assert_eq!(r["id"], "loc-1");
    let ev = probe
        .wait_topic(&bridge.topic("ex42/event"), T)
        .await
        .json();
    assert_eq!(ev["event_type"], "terminal_reply");
    assert_eq!(ev["data"], "LAT:31.2");

    // No reply: timeout. Then the terminal goes away: failed "offline".
    probe.clear();
    probe
        .publish(
            &bridge.topic("ex42/cmd_locate/set"),
            r#"{"id":"loc-2"}"#,
            false,
        )
        .await;
    assert!(matches!(
        peer.recv().await,
        Some(Message::Passthrough { .. })
    ));
    let r = probe
        .wait_for("timeout", T, |m| {
            m.topic.ends_with("command/result") && m.json()["status"] == "timeout"
        })
        .await;
    assert_eq!(r.json()["id"], "loc-2");
    drop(peer);
    probe
        .wait_for("offline", T, |m| {
            m.topic == bridge.topic("ex42/availability") && m.text() == "offline"
        })
        .await;
    probe
        .publish(
            &bridge.topic("ex42/cmd_locate/set"),
            r#"{"id":"loc-3"}"#,
            false,
        )
        .await;
    let r = probe
        .wait_for("failed", T, |m| {
            m.topic.ends_with("command/result")
                && m.json()["id"] == "loc-3"
                && m.json()["status"] == "failed"
        })
        .await
        .json();
    assert_eq!(r["reason"], "offline");
    bridge.stop().await;
}

/// A fake EXLIVE platform for the client role: answers login, groups and vehicles,
/// pushes a position, counts heartbeats and answers pass-through commands.
async fn fake_platform(
    listener: TcpListener,
    password: &'static str,
    heartbeats: tokio::sync::mpsc::Sender<()>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let heartbeats = heartbeats.clone();
        tokio::spawn(async move {
            let mut peer = Peer::on(stream);
            while let Some(msg) = peer.recv().await {
                match msg {
                    Message::Login { pass, .. } => {
                        let ok = pass == password;
                        peer.send_msg(&Message::Ack {
                            cmd: "1000".into(),
                            result: if ok { "succeed" } else { "fail" }.into(),
                        })
                        .await;
                        if !ok {
                            return;
                        }
                    }
                    Message::GroupsRequest { .. } => {
                        peer.send_msg(&Message::Group {
                            groupid: "3".into(),
                            relation: String::new(),
                            customer: "c".into(),
                            groupname: "Fleet".into(),
                        })
                        .await;
                    }
                    Message::VehiclesRequest { groupid } => {
                        assert_eq!(groupid, "3");
                        peer.send_msg(&Message::Vehicle {
                            id: "501".into(),
                            code: "粤B501".into(),
                            sim: "1380000".into(),
                        })
                        .await;
                        peer.send(position("501", "").as_bytes()).await.unwrap();
                    }
                    Message::Heartbeat => {
                        let _ = heartbeats.try_send(());
                    }
                    Message::Passthrough {
                        terminalid,
                        code,
                        data,
                    } => {
                        peer.send_msg(&Message::PassthroughData {
                            terminalid,
                            code,
                            data: format!("done {data}"),
                        })
                        .await;
                    }
                    _ => {}
                }
            }
        });
    }
}

#[tokio::test]
async fn client_role_against_a_fake_platform() {
    let broker = Mosquitto::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (hb_tx, mut hb_rx) = tokio::sync::mpsc::channel(16);
    let platform = tokio::spawn(fake_platform(listener, "pw", hb_tx));
    let bridge = Bridge::start(&broker, |c| {
        c.upstreams.exlive.server = false;
        c.upstreams.exlive.client = Some(ExliveClientConfig {
            address,
            name: "me".into(),
            password: Secret::new("pw"),
            heartbeat: Duration::from_millis(300),
        });
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#"), "homeassistant/#"]).await;
    let state = probe
        .wait_topic(&bridge.topic("ex501/state"), T)
        .await
        .json();
    assert_eq!(state["speed"], 42.5);
    let doc = probe
        .wait_topic(
            &format!("homeassistant/sensor/{}/ex501_speed/config", bridge.base),
            T,
        )
        .await
        .json();
    assert_eq!(
        doc["device"]["name"], "粤B501",
        "the 1011 vehicle name names the device"
    );
    tokio::time::timeout(T, hb_rx.recv())
        .await
        .expect("heartbeat sent")
        .unwrap();
    tokio::time::timeout(T, hb_rx.recv())
        .await
        .expect("heartbeats keep coming")
        .unwrap();

    probe
        .publish(&bridge.topic("ex501/cmd_locate/set"), "PRESS", false)
        .await;
    probe
        .wait_for("succeeded", T, |m| {
            m.topic.ends_with("command/result") && m.json()["status"] == "succeeded"
        })
        .await;
    bridge.stop().await;
    platform.abort();
}

#[tokio::test]
async fn client_role_refused_login_is_reported_not_retried_in_a_storm() {
    let broker = Mosquitto::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (hb_tx, _hb_rx) = tokio::sync::mpsc::channel(16);
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Count connection attempts by wrapping the platform's accept loop.
    let counting = {
        let attempts = attempts.clone();
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inner_addr = inner.local_addr().unwrap();
        tokio::spawn(fake_platform(inner, "right", hb_tx));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut upstream = TcpStream::connect(inner_addr).await.unwrap();
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
                });
            }
        })
    };
    let bridge = Bridge::start(&broker, |c| {
        c.upstreams.exlive.server = false;
        c.upstreams.exlive.client = Some(ExliveClientConfig {
            address,
            name: "me".into(),
            password: Secret::new("wrong"),
            heartbeat: Duration::from_secs(30),
        });
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("bridge/info")]).await;
    let info = probe
        .wait_for("error reported", T, |m| {
            m.json()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused login"))
        })
        .await
        .json();
    assert!(
        info["connectors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("fail"),
        "{info}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no login storm"
    );
    bridge.stop().await;
    counting.abort();
}

/// Terminal ids a topic cannot carry as they are (a space, `.`, `:`, Chinese plate
/// characters, 200 characters) each get their own vehicle, its state, its discovery and
/// its pass-through commands: the command finds its link by the id the terminal sent.
#[tokio::test]
async fn terminal_ids_with_any_characters_get_state_discovery_and_commands() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#"), "homeassistant/#"]).await;
    let long_a = format!("{}A", "7".repeat(199));
    let long_b = format!("{}B", "7".repeat(199));
    let terminals = [
        "粤B12345".to_string(),
        "京B12345".to_string(),
        "T 1.2:3".to_string(),
        "T_1_2_3".to_string(),
        long_a,
        long_b,
    ];
    let (mut peer, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    for t in &terminals {
        peer.send(position(t, "").as_bytes()).await.unwrap();
    }
    // Each terminal's device in HA carries its id as the serial number; its tracker's
    // topics name the vehicle.
    let mut vehicles = Vec::new();
    for t in &terminals {
        let doc = probe
            .wait_for(&format!("discovery of {t}"), T, |m| {
                m.topic.starts_with("homeassistant/device_tracker/")
                    && m.json()["device"]["serial_number"] == t.as_str()
            })
            .await
            .json();
        let state_topic = doc["json_attributes_topic"]
            .as_str()
            .or(doc["state_topic"].as_str())
            .expect("a tracker topic")
            .to_string();
        let vehicle = state_topic
            .strip_prefix(&format!("{}/", bridge.base))
            .and_then(|rest| rest.split('/').next())
            .expect("the vehicle's topic")
            .to_string();
        assert!(vehicle.len() <= 64, "{vehicle}");
        assert!(
            vehicle
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{vehicle} is topic-safe"
        );
        vehicles.push(vehicle);
    }
    let distinct: std::collections::HashSet<_> = vehicles.iter().collect();
    assert_eq!(
        distinct.len(),
        terminals.len(),
        "one vehicle per terminal: {vehicles:?}"
    );
    // SHA-1 of the id's UTF-8 bytes, first 5 bytes (`printf '粤B12345' | sha1sum`).
    assert_eq!(vehicles[0], "ex_B12345_93e605781c");
    assert_eq!(vehicles[3], "exT_1_2_3", "a safe id stays as it is");
    for v in &vehicles {
        let state = probe
            .wait_topic(&bridge.topic(&format!("{v}/state")), T)
            .await;
        assert_eq!(state.json()["speed"], 42.5, "{v}");
    }

    // A command on each vehicle reaches its own terminal by the id it sent.
    for (n, (t, v)) in terminals.iter().zip(&vehicles).enumerate() {
        probe.clear();
        let id = format!("cmd-{n}");
        probe
            .publish(
                &bridge.topic(&format!("{v}/cmd_locate/set")),
                &format!(r#"{{"id":"{id}"}}"#),
                false,
            )
            .await;
        let msg = loop {
            match peer.recv().await.expect("the 1012") {
                Message::Ack { .. } => continue,
                m => break m,
            }
        };
        assert_eq!(
            msg,
            Message::Passthrough {
                terminalid: t.clone(),
                code: String::new(),
                data: "WHERE#".into()
            }
        );
        peer.send_msg(&Message::PassthroughData {
            terminalid: t.clone(),
            code: String::new(),
            data: format!("reply {n}"),
        })
        .await;
        let r = probe
            .wait_for("succeeded", T, |m| {
                m.topic.ends_with("command/result")
                    && m.json()["id"] == id.as_str()
                    && m.json()["status"] != "accepted"
            })
            .await
            .json();
        assert_eq!(r["status"], "succeeded", "{t}: {r}");
        let ev = probe
            .wait_topic(&bridge.topic(&format!("{v}/event")), T)
            .await
            .json();
        assert_eq!(ev["data"], format!("reply {n}"), "the reply is {t}'s");
    }
    bridge.stop().await;
}

/// `simulate exlive --route`: a tracker drives a known route into the bridge at its speed,
/// then stands at the route's end; the odometer grows by the route's length.
#[tokio::test]
async fn a_simulated_tracker_drives_a_route_and_stops_at_its_end() {
    use vehicle2mqtt::connectors::exlive::sim::{run, SimOptions, SimStats};
    use vehicle2mqtt::sim::{Drive, Route};
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |_| {}).await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    // About 556 m due north, driven at 180 km/h (50 m/s): 11 s.
    let route = Route::parse("[[31.2, 121.4], [31.205, 121.4]]").unwrap();
    let length_km = route.length_m() / 1000.0;
    assert!((length_km - 0.556).abs() < 0.001, "{length_km}");
    let drive = Drive {
        route,
        speed_kmh: 180.0,
        charge_for: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let opts = SimOptions {
        server: format!("127.0.0.1:{}", bridge.port),
        links: 1,
        rate: 2.0,
        user: "fleet".into(),
        password: "s3cret".into(),
        first_id: 501,
        stamp: false,
        drive: Some(std::sync::Arc::new(drive)),
    };
    let sim = tokio::spawn(run(
        opts,
        std::sync::Arc::new(SimStats::default()),
        stop.clone(),
    ));
    let state = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        probe
            .messages()
            .into_iter()
            .rev()
            .find(|m| m.topic == bridge.topic("ex501/state") && pred(&m.json()))
    };
    probe
        .wait_for("moving at 180", T, |m| {
            m.topic == bridge.topic("ex501/state") && m.json()["speed"] == 180.0
        })
        .await;
    probe
        .wait_for("stopped", Duration::from_secs(30), |m| {
            m.topic == bridge.topic("ex501/state") && m.json()["speed"] == 0.0
        })
        .await;
    let first = probe
        .messages()
        .into_iter()
        .find(|m| m.topic == bridge.topic("ex501/state"))
        .unwrap()
        .json();
    let last = state(&|s| s["speed"] == 0.0).unwrap().json();
    let driven = last["odometer"].as_f64().unwrap() - first["odometer"].as_f64().unwrap();
    assert!(
        (driven - length_km).abs() <= 0.06,
        "{driven} km of {length_km}"
    );
    assert!(
        (last["latitude"].as_f64().unwrap() - 31.205).abs() < 1e-5,
        "{last}"
    );
    stop.cancel();
    let _ = sim.await;
    bridge.stop().await;
}

/// Trips and zones worked out by the bridge (issue #26): a simulated tracker drives a
/// known 1.1 km route through a zone; the bridge publishes one `trip` event (and the
/// retained `trip/last`) with the route's length and the drive's duration, and one
/// `zone_enter` / `zone_exit` for the zone it crossed.
#[tokio::test]
async fn a_driven_route_becomes_one_trip_and_one_zone_crossing() {
    use vehicle2mqtt::connectors::exlive::sim::{run, SimOptions, SimStats};
    use vehicle2mqtt::derive::ZoneConfig;
    use vehicle2mqtt::sim::{Drive, Route};
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.derive.trips.end_after = Duration::from_secs(10); // the shortest allowed
        c.derive.events.zone_dwell = Duration::from_secs(1);
        c.bridge.stale_after = Duration::from_secs(2); // the stale check ticks every 0.5 s
        c.derive.zones = vec![ZoneConfig {
            name: "bridge".into(),
            latitude: Some(31.205),
            longitude: Some(121.4),
            radius_m: Some(100.0),
            polygon: None,
        }];
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    // 0.01° of latitude due north: 1 111.95 m, at 180 km/h (50 m/s): 22.2 s.
    let route = Route::parse("[[31.2, 121.4], [31.21, 121.4]]").unwrap();
    let (length_km, drive_s) = (route.length_m() / 1000.0, route.length_m() / 50.0);
    let stop = tokio_util::sync::CancellationToken::new();
    let rate = 2.0; // reports per second
    let opts = SimOptions {
        server: format!("127.0.0.1:{}", bridge.port),
        links: 1,
        rate,
        user: "fleet".into(),
        password: "s3cret".into(),
        first_id: 601,
        stamp: false,
        drive: Some(std::sync::Arc::new(Drive {
            route,
            speed_kmh: 180.0,
            charge_for: None,
        })),
    };
    let sim = tokio::spawn(run(
        opts,
        std::sync::Arc::new(SimStats::default()),
        stop.clone(),
    ));
    let trip = probe
        .wait_for("the trip", Duration::from_secs(60), |m| {
            m.topic == bridge.topic("ex601/event") && m.json()["event_type"] == "trip"
        })
        .await
        .json();
    let distance = trip["distance_km"].as_f64().unwrap();
    assert!(
        (distance - length_km).abs() <= 0.02 * length_km,
        "{distance} km of {length_km}: {trip}"
    );
    let duration = trip["duration_s"].as_f64().unwrap();
    assert!(
        (duration - drive_s).abs() <= 1.0 / rate + 1.0,
        "{duration} s of {drive_s}: {trip}"
    );
    eprintln!("trip: {distance} km of {length_km:.4}, {duration} s of {drive_s:.1}");
    // A subscriber that comes later still gets it: retained.
    let later = Probe::connect(broker.port, &[&bridge.topic("ex601/trip/last")]).await;
    let last = later.wait_topic(&bridge.topic("ex601/trip/last"), T).await;
    assert!(last.retain, "trip/last is retained");
    assert_eq!(last.json()["distance_km"], trip["distance_km"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events: Vec<String> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == bridge.topic("ex601/event"))
        .map(|m| m.json()["event_type"].as_str().unwrap_or("").to_string())
        .collect();
    let count = |t: &str| events.iter().filter(|e| *e == t).count();
    assert_eq!(
        (count("trip"), count("zone_enter"), count("zone_exit")),
        (1, 1, 1),
        "{events:?}"
    );
    stop.cancel();
    let _ = sim.await;
    bridge.stop().await;
}

/// A 1007 of terminal `id` at `lat` (longitude 121.4), `kmh`, at the tracker's time `at`
/// (sent as Asia/Shanghai local time), without an odometer: the distance is the path's.
fn fix(id: &str, lat: f64, kmh: f64, at: chrono::DateTime<chrono::Utc>) -> String {
    let local = (at + chrono::Duration::hours(8)).format("%Y-%m-%d %H:%M:%S");
    format!(
        r#"{{"header":{{"cmd":"1007"}},"body":{{"id":"{id}","lat":"{lat:.6}","lng":"121.4","veo":"{kmh}","dir":"0","gpstime":"{local}","av":"1","alarm":"0"}}}}"#
    )
}

async fn send_all(peer: &mut Peer, lines: Vec<String>) {
    for l in lines {
        peer.send(l.as_bytes()).await.unwrap();
    }
}

/// Metres of latitude per degree (the bridge's haversine on a 6 371 km sphere).
const M_PER_DEG_LAT: f64 = 6_371_000.0 * std::f64::consts::PI / 180.0;

/// Issue #26: a restart in the middle of a trip yields one trip. The tracker drives 500 m
/// into one bridge, the bridge stops and starts again on the same state, the tracker
/// links again and drives 500 m more, then stands: one `trip` of 1 km that began before
/// the restart, and the trip log holds it.
#[tokio::test]
async fn a_restart_in_the_middle_of_a_trip_yields_one_trip() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let tweak = |c: &mut Config| {
        c.derive.trips.end_after = Duration::from_secs(10);
        c.bridge.stale_after = Duration::from_secs(2); // the stale check ticks every 0.5 s
    };
    let bridge = Bridge::exlive_in(&broker, dir.path(), port, tweak).await;
    let base = bridge.base.clone();
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    // 50 m every 2 s of the tracker's clock (90 km/h), which runs a minute behind.
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(90);
    let step = 50.0 / M_PER_DEG_LAT;
    let at = |i: i64| t0 + chrono::Duration::seconds(2 * i);
    let lat = |i: i64| 31.2 + step * i as f64;
    let fixes = |range: std::ops::RangeInclusive<i64>, kmh: f64| -> Vec<String> {
        range.map(|i| fix("901", lat(i), kmh, at(i))).collect()
    };
    let (mut peer, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    send_all(&mut peer, fixes(0..=10, 90.0)).await;
    probe
        .wait_for("the 10th fix", T, |m| {
            m.topic == bridge.topic("ex901/state")
                && (m.json()["latitude"].as_f64().unwrap_or(0.0) - lat(10)).abs() < 1e-6
        })
        .await;
    bridge.stop().await;
    drop(peer);

    let bridge = Bridge::exlive_in(&broker, dir.path(), port, |c| {
        tweak(c);
        c.mqtt.base_topic = base.clone();
    })
    .await;
    let (mut peer, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    send_all(&mut peer, fixes(11..=20, 90.0)).await;
    let standing = (21..=23).map(|i| fix("901", lat(20), 0.0, at(i))).collect();
    send_all(&mut peer, standing).await;
    let trip = probe
        .wait_for("the trip", Duration::from_secs(40), |m| {
            m.topic == bridge.topic("ex901/event") && m.json()["event_type"] == "trip"
        })
        .await
        .json();
    let (distance, length_km) = (trip["distance_km"].as_f64().unwrap(), 20.0 * 50.0 / 1000.0);
    assert!(
        (distance - length_km).abs() <= 0.02 * length_km,
        "{distance} km of {length_km}: {trip}"
    );
    let start = t0.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(
        trip["start"],
        start.as_str(),
        "the trip began before the restart: {trip}"
    );
    assert_eq!(trip["duration_s"], 40, "{trip}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let trips = probe
        .messages()
        .iter()
        .filter(|m| m.topic == bridge.topic("ex901/event") && m.json()["event_type"] == "trip")
        .count();
    assert_eq!(trips, 1);
    drop(peer);
    bridge.stop().await;
    // The trip log has it, with its path, and `vehicle2mqtt trips` reads it back.
    let (logged, bad) = vehicle2mqtt::trip_log::read(dir.path(), "ex901", None, 100).unwrap();
    assert_eq!((logged.len(), bad), (1, 0));
    assert_eq!(logged[0]["distance_km"], trip["distance_km"]);
    assert!(
        logged[0]["path"].as_array().unwrap().len() >= 2,
        "{:?}",
        logged[0]
    );
}

/// Issue #26: a 60 km/h stretch in a 50 km/h limit gives one `overspeed` with its peak.
/// The limit is the tracker's own (`exlive.vehicle_overspeed_kmh`), over the section's
/// 100 and `events.overspeed_kmh` 120; a second tracker at the same speed has the
/// section's limit and none.
#[tokio::test]
async fn sixty_in_a_fifty_limit_is_one_overspeed_with_its_peak() {
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.derive.events.overspeed_kmh = Some(120.0);
        c.upstreams.exlive.overspeed_kmh = Some(100.0);
        c.upstreams.exlive.vehicle_overspeed_kmh = [("902".to_string(), 50.0)].into();
        c.bridge.stale_after = Duration::from_secs(2);
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    let (mut peer, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(120);
    // 45 km/h, then 55-60-58 over a stretch, then 40 again and standing: one episode.
    let speeds = [
        45.0, 45.0, 55.0, 60.0, 58.0, 56.0, 40.0, 40.0, 30.0, 0.0, 0.0,
    ];
    for id in ["902", "903"] {
        for (i, kmh) in speeds.iter().enumerate() {
            let at = t0 + chrono::Duration::seconds(2 * i as i64);
            let lat = 31.2 + (i as f64 * 30.0) / M_PER_DEG_LAT;
            peer.send(fix(id, lat, *kmh, at).as_bytes()).await.unwrap();
        }
    }
    let over = probe
        .wait_for("the overspeed", T, |m| {
            m.topic == bridge.topic("ex902/event") && m.json()["event_type"] == "overspeed"
        })
        .await
        .json();
    assert_eq!(over["peak_kmh"], 60.0, "{over}");
    probe
        .wait_for("the second tracker's last fix", T, |m| {
            m.topic == bridge.topic("ex903/state") && m.json()["speed"] == 0.0
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = |topic: &str| {
        probe
            .messages()
            .iter()
            .filter(|m| m.topic == bridge.topic(topic) && m.json()["event_type"] == "overspeed")
            .count()
    };
    assert_eq!((count("ex902/event"), count("ex903/event")), (1, 0));
    bridge.stop().await;
}

/// Issue #26: a tracker standing for an hour with 20 m of GPS jitter, right on a zone's
/// edge, makes no trip, no `moving` and no zone flap. The hour is the tracker's clock: its
/// 361 reports (one every 10 s) are sent at once, as a tracker catching up after a
/// dead zone does.
#[tokio::test]
async fn an_hour_standing_with_jitter_on_a_zone_edge_is_no_trip_and_no_flap() {
    use vehicle2mqtt::derive::ZoneConfig;
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&broker, |c| {
        c.derive.trips.end_after = Duration::from_secs(10);
        c.bridge.stale_after = Duration::from_secs(2);
        // The tracker stands 100 m north of the centre: on the edge of a 100 m circle.
        c.derive.zones = vec![ZoneConfig {
            name: "yard".into(),
            latitude: Some(31.2 - 100.0 / M_PER_DEG_LAT),
            longitude: Some(121.4),
            radius_m: Some(100.0),
            polygon: None,
        }];
    })
    .await;
    let probe = Probe::connect(broker.port, &[&bridge.topic("#")]).await;
    let (mut peer, _) = Peer::login(bridge.port, "fleet", "s3cret").await;
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(3700);
    // Jitter up to 20 m north or south, from a fixed-seed generator.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut jitter = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 4001) as f64 / 100.0 - 20.0
    };
    let last = 360;
    let lines: Vec<String> = (0..=last)
        .map(|i| {
            let lat = 31.2 + jitter() / M_PER_DEG_LAT;
            fix("904", lat, 0.0, t0 + chrono::Duration::seconds(10 * i))
        })
        .collect();
    send_all(&mut peer, lines).await;
    let end = (t0 + chrono::Duration::seconds(10 * last))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    probe
        .wait_for("the hour's last report", T, |m| {
            m.topic == bridge.topic("ex904/state") && m.json()["gps_time"] == end.as_str()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(12)).await; // past end_after
    let events: Vec<String> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == bridge.topic("ex904/event"))
        .map(|m| m.json()["event_type"].as_str().unwrap_or("").to_string())
        .collect();
    let count = |t: &str| events.iter().filter(|e| *e == t).count();
    assert_eq!((count("trip"), count("moving")), (0, 0), "{events:?}");
    assert!(
        count("zone_enter") + count("zone_exit") <= 1,
        "the zone flapped: {events:?}"
    );
    drop(peer);
    bridge.stop().await;
}
