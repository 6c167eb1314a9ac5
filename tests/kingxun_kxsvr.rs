//! The web-server role against a fake kingxun server that behaves as kxSvr's code does
//! (`connectors::kingxun::kxsvr_sim`, every behaviour cited there): first the fake's kxSvr habits, each by raw
//! frames, then the bridge driving it in-process and as the real binary.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::kingxun::Peer;
use common::{KillOnDrop, Mosquitto, Probe};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::config::Secret;
use vehicle2mqtt::connector::Connector;
use vehicle2mqtt::connectors::kingxun::kxsvr_sim::{FakeKxSvrLog, FakeKxSvrOptions, UNSET_VOICE};
use vehicle2mqtt::connectors::kingxun::sim::{derive_key, SimOptions, SimStats};
use vehicle2mqtt::connectors::kingxun::{KingxunConnector, KxsvrDevice, ViaKxsvr};
use vehicle2mqtt::protocol::kingxun::*;

const T: Duration = Duration::from_secs(10);
const SEED: u64 = 91;
const KEY: [u8; 16] = [0x3C; 16];
const IV: [u8; 16] = [0x5A; 16];
const DEV: u32 = 2001;

async fn start_fake(wait: Duration, sweep: Duration) -> (String, Arc<FakeKxSvrLog>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let log = Arc::new(FakeKxSvrLog::default());
    let opts = FakeKxSvrOptions {
        key: KEY,
        iv: IV,
        device_keys: HashMap::from([(DEV, derive_key(SEED, DEV))]),
        wait,
        sweep_every: sweep,
    };
    tokio::spawn(vehicle2mqtt::connectors::kingxun::kxsvr_sim::run(
        listener,
        opts,
        log.clone(),
    ));
    (address, log)
}

/// A raw peer of the fake (a web server or a device) that accepts relayed answers whose
/// header CRC is unset, as the bridge does.
async fn connect(address: &str) -> Peer {
    let mut peer = Peer::connect(address).await;
    peer.codec.unset_response_crc = true;
    peer
}

/// Connects a web server: returns the link's session id and the new IV.
async fn web_connect(web: &mut Peer) -> (u32, [u8; 16], Frame) {
    let hello = WebConnect {
        time: 1_700_000_000,
        host: "kingxun.site".into(),
    };
    let body = crypto::encrypt(&KEY, &IV, &hello.encode());
    web.send(&Frame::request(
        id::WEB_CONNECT,
        1,
        0,
        0,
        true,
        Bytes::from(body),
    ))
    .await;
    let (ack, _) = web.recv().await;
    let a = WebConnectAck::decode(&crypto::decrypt(&KEY, &IV, &ack.body).unwrap()).unwrap();
    (a.session_id, a.iv, ack)
}

fn app(control: Control) -> Vec<u8> {
    AppControl {
        dev_id: DEV,
        dev_type: 2,
        time: 1_700_000_123,
        user_id: 0,
        control,
    }
    .encode()
}

#[tokio::test]
async fn the_fake_behaves_as_kxsvr_code_does() {
    let (address, log) = start_fake(Duration::from_millis(400), Duration::from_millis(150)).await;
    let dev_key = derive_key(SEED, DEV);

    // A device registers with the 23-byte legacy body; kxSvr never reads it.
    let mut device = connect(&address).await;
    let legacy = Register {
        versions: [1, 2, 3, 4, 0, 0],
        version_count: 4,
        ..Default::default()
    }
    .encode();
    assert_eq!(legacy.len(), 23);
    device
        .send(&Frame::request(
            id::REGISTER,
            1,
            DEV,
            0,
            false,
            Bytes::from(legacy),
        ))
        .await;
    let (ack, _) = device.recv().await;
    assert_eq!(ack.header.kind, Kind::Response { resp_code: 0 });
    let reg = RegisterAck::decode(&ack.body).unwrap();
    assert_eq!(
        reg.session_id & 0xFF00_0000,
        0xFD00_0000,
        "GetNewSessionId base"
    );

    // 9001: encrypted answer, CryptFlag 0.
    let mut web = connect(&address).await;
    let (web_session, new_iv, ack) = web_connect(&mut web).await;
    assert!(
        !ack.header.crypt,
        "kxSvr never sets CryptFlag on the 9001 answer"
    );
    assert_eq!(ack.header.kind, Kind::Response { resp_code: 0 });
    assert_ne!(web_session, 0);

    // 4005: no handler, no answer.
    let lights = crypto::encrypt(&KEY, &new_iv, &app(Control::Lights { flags: 0x0100 }));
    web.send(&Frame::request(
        id::APP_LIGHTS,
        2,
        0,
        web_session,
        true,
        Bytes::from(lights),
    ))
    .await;
    // 4002 sealed with the initial IV (as a bridge that trusted CryptFlag would): dropped.
    let wrong = crypto::encrypt(&KEY, &IV, &app(Control::Lock { voice: 1 }));
    web.send(&Frame::request(
        id::APP_LOCK,
        3,
        0,
        web_session,
        true,
        Bytes::from(wrong),
    ))
    .await;
    assert!(
        web.recv_within(Duration::from_millis(500)).await.is_none(),
        "neither 4005 nor an undecryptable 4002 is answered"
    );
    assert_eq!(log.unanswered_lights.load(Ordering::Relaxed), 1);
    assert_eq!(log.dropped_undecryptable.load(Ordering::Relaxed), 1);

    // 4001 → a 19-byte 2001 without usrId, DevId 0, CryptFlag 0, the device's session.
    let unlock = Control::Unlock {
        allow_min: 240,
        lowest_soc: 5,
        farthest_m: 100_000,
    };
    let sealed = crypto::encrypt(&KEY, &new_iv, &app(unlock));
    web.send(&Frame::request(
        id::APP_UNLOCK,
        10,
        0,
        web_session,
        true,
        Bytes::from(sealed),
    ))
    .await;
    let (fwd, _) = device.recv().await;
    assert_eq!(fwd.header.msg_id, id::UNLOCK);
    assert_eq!(fwd.header.seq, 10, "the web request's SeqNum");
    assert!(
        !fwd.header.crypt,
        "CryptFlag is never set on forwarded frames"
    );
    assert_eq!(
        fwd.header.kind,
        Kind::Request {
            dev_id: 0,
            session_id: reg.session_id
        }
    );
    let plain = crypto::decrypt(&dev_key, &reg.iv, &fwd.body).unwrap();
    assert_eq!(plain.len(), 19);
    assert_eq!(&plain[..8], &1_700_000_123u64.to_le_bytes(), "svrTime");
    assert_eq!(&plain[8..12], &reg.session_id.to_le_bytes(), "devSessionId");
    assert_eq!(&plain[12..14], &240u16.to_le_bytes(), "allowTime");
    assert_eq!(plain[14], 5, "lowestSocP");
    assert_eq!(&plain[15..19], &100_000u32.to_le_bytes(), "farthestDist");
    // The device answers; the web server gets it with an unset header CRC.
    device
        .send(&Frame::response(id::UNLOCK, 10, 0, false, Bytes::new()))
        .await;
    let (relayed, raw) = web.recv().await;
    assert_eq!(relayed.header.msg_id, id::APP_UNLOCK);
    assert_eq!(relayed.header.seq, 10);
    assert_eq!(relayed.header.kind, Kind::Response { resp_code: 0 });
    assert_eq!(&raw[13..15], &[0, 0], "onMsgResp leaves the CRC unset");
    assert!(Header::parse(&raw).is_err(), "a strict parser refuses it");

    // 4003 → MsgId 2002 (a LOCK) carrying the 15-byte guard struct.
    let guard = Control::Guard {
        power: 0,
        max_speed: 0x0107,
        voice: 9,
    };
    let sealed = crypto::encrypt(&KEY, &new_iv, &app(guard));
    web.send(&Frame::request(
        id::APP_GUARD,
        11,
        0,
        web_session,
        true,
        Bytes::from(sealed),
    ))
    .await;
    let (fwd, _) = device.recv().await;
    assert_eq!(fwd.header.msg_id, id::LOCK, "kxSvr sends 4003 on as a lock");
    let plain = crypto::decrypt(&dev_key, &reg.iv, &fwd.body).unwrap();
    // MotorPowerFlag 0 | nMaxSpeed (low byte of our u16) | nVoiceIndex (its high byte).
    assert_eq!(&plain[12..], &[0, 0x07, 0x01]);

    // 4004 → a 14-byte 2004 whose voice byte kxSvr never sets.
    let open = Control::OpenLock {
        flags: 0x02,
        voice: 1,
    };
    let sealed = crypto::encrypt(&KEY, &new_iv, &app(open));
    web.send(&Frame::request(
        id::APP_OPEN_LOCK,
        12,
        0,
        web_session,
        true,
        Bytes::from(sealed),
    ))
    .await;
    let (fwd, _) = device.recv().await;
    assert_eq!(fwd.header.msg_id, id::OPEN_LOCK);
    let plain = crypto::decrypt(&dev_key, &reg.iv, &fwd.body).unwrap();
    assert_eq!(&plain[12..], &[0x02, UNSET_VOICE]);

    // Unanswered ones (and the answered 4001) get RespCode 5 from the sweep.
    let mut fives = Vec::new();
    while let Some((f, _)) = web.recv_within(Duration::from_millis(1500)).await {
        if f.header.kind == (Kind::Response { resp_code: 5 }) {
            fives.push(f.header.seq);
        }
    }
    fives.sort();
    assert_eq!(
        fives,
        vec![10, 11, 12],
        "the sweep answers every old item, answered or not"
    );

    // 9002: plain answer with the number of linked devices.
    let hb = WebHeartbeat {
        time: 1,
        host: "kingxun.site".into(),
    };
    web.send(&Frame::request(
        id::WEB_HEARTBEAT,
        20,
        0,
        web_session,
        false,
        Bytes::from(hb.encode()),
    ))
    .await;
    let (hb_ack, _) = web.recv().await;
    assert!(!hb_ack.header.crypt);
    assert_eq!(
        WebHeartbeatAck::decode(&hb_ack.body).unwrap().total_devices,
        1
    );

    // A device frame with a wrong SessionId is dropped; a device that is not linked → 3.
    device
        .send(&Frame::request(
            id::STATUS,
            30,
            DEV,
            reg.session_id ^ 1,
            false,
            Bytes::new(),
        ))
        .await;
    assert!(device
        .recv_within(Duration::from_millis(300))
        .await
        .is_none());
    drop(device);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sealed = crypto::encrypt(&KEY, &new_iv, &app(Control::Lock { voice: 1 }));
    web.send(&Frame::request(
        id::APP_LOCK,
        31,
        0,
        web_session,
        true,
        Bytes::from(sealed),
    ))
    .await;
    let (offline, _) = web.recv().await;
    assert_eq!(offline.header.kind, Kind::Response { resp_code: 3 });
    assert_eq!(log.web_connects.load(Ordering::Relaxed), 1);
}

/// The bridge as web server against the fake, with a simulated device linked to the fake.
struct Setup {
    broker: Mosquitto,
    fake: String,
    log: Arc<FakeKxSvrLog>,
    sim: Arc<SimStats>,
    stop_sim: CancellationToken,
}

async fn setup() -> Setup {
    let broker = Mosquitto::start();
    let (fake, log) = start_fake(Duration::from_secs(30), Duration::from_secs(60)).await;
    let sim = Arc::new(SimStats::default());
    let stop_sim = CancellationToken::new();
    tokio::spawn(vehicle2mqtt::connectors::kingxun::sim::run(
        SimOptions {
            server: fake.clone(),
            devices: 1,
            first_id: DEV,
            key_seed: SEED,
            interval: Duration::from_millis(300),
            trip_every: 0,
            answer_commands: true,
            stamp: false,
            profile: Profile::Classic,
            plain_status: true,
            drive: None,
        },
        sim.clone(),
        stop_sim.clone(),
    ));
    let end = std::time::Instant::now() + T;
    while sim.registered.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < end,
            "the device did not register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Setup {
        broker,
        fake,
        log,
        sim,
        stop_sim,
    }
}

fn lock_byte(log: &FakeKxSvrLog) -> Option<u8> {
    log.lock_status.lock().unwrap().get(&DEV).copied()
}

async fn command(
    probe: &Probe,
    base: &str,
    leaf: &str,
    payload: &str,
    id: &str,
) -> serde_json::Value {
    probe
        .publish(&format!("{base}/kx{DEV}/{leaf}/set"), payload, false)
        .await;
    probe
        .wait_for(id, T, |m| {
            m.topic == format!("{base}/kx{DEV}/command/result")
                && m.json()["id"] == id
                && m.json()["status"] != "accepted"
        })
        .await
        .json()
}

#[tokio::test]
async fn web_server_role_drives_unlock_lock_and_open_lock_through_kxsvr() {
    let s = setup().await;
    let fake = s.fake.clone();
    let bridge = common::ConnectorBridge::start_with(&s.broker, |c, _| {
        c.upstreams.kingxun.enabled = true;
        c.upstreams.kingxun.kxsvr = Some(ViaKxsvr {
            address: fake,
            key: Secret::new(hex::encode(KEY)),
            iv: Secret::new(hex::encode(IV)),
            host: "kingxun.site".into(),
            heartbeat: Duration::from_millis(300),
            devices: vec![KxsvrDevice {
                overspeed_kmh: None,
                id: DEV,
                devtype: 2,
                name: Some("Fleet scooter".into()),
            }],
            server_commands: vec![],
        });
        c.upstreams.kingxun.validate().unwrap();
        (
            Box::new(KingxunConnector::new(c.upstreams.kingxun.clone())) as Box<dyn Connector>,
            false,
        )
    })
    .await;
    let base = bridge.base.clone();
    let probe = Probe::connect(s.broker.port, &[&format!("{base}/#"), "homeassistant/#"]).await;
    probe
        .wait_for("device count from 9002", T, |m| {
            m.topic == format!("{base}/kxserver/state") && m.json()["server_devices"] == 1
        })
        .await;

    let r = command(
        &probe,
        &base,
        "lock",
        r#"{"action":"UNLOCK","id":"u"}"#,
        "u",
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(s.log.forwarded.lock().unwrap()[0].plain.len(), 19);
    let end = std::time::Instant::now() + T;
    while lock_byte(&s.log).is_none_or(|b| b & 1 == 0) {
        assert!(std::time::Instant::now() < end, "the device did not unlock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = command(&probe, &base, "lock", r#"{"action":"LOCK","id":"l"}"#, "l").await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let r = command(&probe, &base, "open_seat", r#"{"id":"o"}"#, "o").await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let end = std::time::Instant::now() + T;
    while lock_byte(&s.log).is_none_or(|b| b & 0x01 != 0 || b & 0x02 == 0) {
        assert!(
            std::time::Instant::now() < end,
            "locked with the seat open: {:?}",
            lock_byte(&s.log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.sim.commands.load(Ordering::Relaxed), 3);

    // What a stock kxSvr cannot do is not offered, and refused with the reason if asked.
    let discovered: Vec<String> = probe
        .messages()
        .into_iter()
        .filter(|m| {
            m.topic.starts_with("homeassistant/")
                && m.topic.contains(&format!("kx{DEV}"))
                && !m.payload.is_empty()
        })
        .map(|m| m.topic)
        .collect();
    assert!(
        discovered.iter().any(|t| t.contains("open_seat")),
        "{discovered:?}"
    );
    for absent in ["guard_power", "max_speed", "hazard"] {
        assert!(
            !discovered.iter().any(|t| t.contains(absent)),
            "{absent} offered: {discovered:?}"
        );
    }
    let r = command(
        &probe,
        &base,
        "guard_power",
        r#"{"action":"off","id":"g"}"#,
        "g",
    )
    .await;
    assert_ne!(r["status"], "succeeded", "{r}");
    assert_eq!(
        s.log.forwarded.lock().unwrap().len(),
        3,
        "nothing reached the device"
    );
    bridge.stop().await;
    s.stop_sim.cancel();
}

#[tokio::test]
async fn web_server_role_as_the_real_binary() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("kxp{}", rand::random::<u32>());
    let config = format!(
        r#"
[mqtt]
url = "{url}"
base_topic = "{base}"
client_id = "{base}-bridge"

[bridge]
state_dir = "{state}"

[kingxun]
enabled = true

[kingxun.kxsvr]
address = "{fake}"
key = "{key}"
iv = "{iv}"
heartbeat = "1s"

[[kingxun.kxsvr.devices]]
id = {DEV}
name = "Fleet scooter"
"#,
        url = s.broker.url(),
        state = dir.path().join("state").display(),
        fake = s.fake,
        key = hex::encode(KEY),
        iv = hex::encode(IV),
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let probe = Probe::connect(s.broker.port, &[&format!("{base}/#")]).await;
    let _bridge = KillOnDrop(
        common::bridge_cmd(dir.path())
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vehicle2mqtt"),
    );
    probe
        .wait_for("server online", Duration::from_secs(30), |m| {
            m.topic == format!("{base}/kxserver/availability") && m.text() == "online"
        })
        .await;
    for (leaf, payload, id) in [
        ("lock", r#"{"action":"UNLOCK","id":"pu"}"#, "pu"),
        ("lock", r#"{"action":"LOCK","id":"pl"}"#, "pl"),
        ("open_helmet", r#"{"id":"ph"}"#, "ph"),
    ] {
        let r = command(&probe, &base, leaf, payload, id).await;
        assert_eq!(r["status"], "succeeded", "{leaf}: {r}");
    }
    let sent: Vec<u16> = s
        .log
        .forwarded
        .lock()
        .unwrap()
        .iter()
        .map(|f| f.header.msg_id)
        .collect();
    assert_eq!(sent, vec![id::UNLOCK, id::LOCK, id::OPEN_LOCK]);
    s.stop_sim.cancel();
}
