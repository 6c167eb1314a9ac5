//! Three real bridge processes on one real mosquitto and one base topic (docs/cluster.md):
//! simulated kingxun devices and EXLIVE links spread over them, a device hopping from one
//! instance to another, `kill -9` of the instance that polls the cloud account, a second
//! instance started with an id already running, a clean stop. Measured throughout: one
//! result per command id, no empty or changed discovery document, vehicles re-owned or
//! shown offline in the stated time, the account polled by one instance at a time
//! (requests counted on the way to the fake cloud).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::exlive::{success, Peer};
use common::{free_port, KillOnDrop, Mosquitto, Msg, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::iauto360::sim::{FakeIauto360, FakeOptions};
use vehicle2mqtt::connectors::kingxun::sim::{SimOptions, SimStats};
use vehicle2mqtt::protocol::kingxun::Profile;

const T: Duration = Duration::from_secs(20);
const SEED: u64 = 24;
const SETTLE_S: u64 = 2;
const LEASE_S: u64 = 6;
const DEVICES: std::ops::Range<u32> = 1001..1006;

/// Requests through one instance's way to the fake cloud, when each went.
#[derive(Clone, Default)]
struct Requests(Arc<Mutex<Vec<Instant>>>);

impl Requests {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn since(&self, at: Instant) -> usize {
        self.0.lock().unwrap().iter().filter(|t| **t >= at).count()
    }
    fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().clone()
    }
}

/// A TCP forwarder to `upstream` that counts HTTP/1.1 requests going through it.
async fn counting_forwarder(upstream: std::net::SocketAddr) -> (u16, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Requests::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16384];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut window = std::mem::take(&mut tail);
                        window.extend_from_slice(&buf[..n]);
                        let mark = b" HTTP/1.1\r\n";
                        let hits = window.windows(mark.len()).filter(|w| *w == mark).count();
                        for _ in 0..hits {
                            seen.0.lock().unwrap().push(Instant::now());
                        }
                        let keep = window.len().saturating_sub(mark.len() - 1);
                        tail = window[keep..].to_vec();
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, requests)
}

struct Instance {
    id: String,
    dir: tempfile::TempDir,
    kingxun: u16,
    exlive: u16,
    requests: Requests,
    child: Option<KillOnDrop>,
}

fn config(
    broker: &Mosquitto,
    base: &str,
    id: &str,
    kingxun: u16,
    exlive: u16,
    cloud: u16,
) -> String {
    let devices = vehicle2mqtt::connectors::kingxun::sim::config_toml(&SimOptions {
        devices: DEVICES.len(),
        first_id: DEVICES.start,
        key_seed: SEED,
        ..SimOptions::default()
    });
    format!(
        r#"[mqtt]
url = "{url}"
base_topic = "{base}"

[bridge]
command_timeout = "5s"

[cluster]
instance_id = "{id}"
settle = "{SETTLE_S}s"
lease_ttl = "{LEASE_S}s"

[kingxun]
enabled = true
listen = "127.0.0.1:{kingxun}"

{devices}

[exlive]
enabled = true
server = true
listen = "127.0.0.1:{exlive}"

[[exlive.accounts]]
name = "fleet"
password = "s3cret-pass"

[iauto360]
enabled = true
base_url = "http://127.0.0.1:{cloud}"
open_id = "OPEN123"
secure_code = "SECRETcode"
poll_interval = "1s"
detail_interval = "1h"

[[iauto360.devices]]
esn = "865432100012345"
"#,
        url = broker.url(),
    )
}

impl Instance {
    async fn start(
        broker: &Mosquitto,
        base: &str,
        id: &str,
        cloud: std::net::SocketAddr,
    ) -> Instance {
        let (forward, requests) = counting_forwarder(cloud).await;
        let dir = tempfile::tempdir().unwrap();
        let (kingxun, exlive) = (free_port(), free_port());
        let mut i = Instance {
            id: id.into(),
            dir,
            kingxun,
            exlive,
            requests,
            child: None,
        };
        let text = config(broker, base, id, kingxun, exlive, forward);
        std::fs::write(i.dir.path().join("config.toml"), text).unwrap();
        i.spawn();
        assert!(
            common::wait_port_async(kingxun, T).await,
            "{id}'s device listener"
        );
        i
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("log")).unwrap();
        let child = common::bridge_cmd(self.dir.path())
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("V2M_BRIDGE__LOG_LEVEL", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(KillOnDrop(child));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill(); // SIGKILL
            let _ = c.0.wait();
        }
    }

    async fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .arg("-15")
            .arg(c.0.id().to_string())
            .status();
        let end = Instant::now() + T;
        loop {
            if let Ok(Some(status)) = c.0.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < end, "{} did not stop", self.id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A simulated kingxun device linked at `port` until its token is cancelled.
fn device(port: u16, dev_id: u32) -> CancellationToken {
    let stop = CancellationToken::new();
    let opts = SimOptions {
        server: format!("127.0.0.1:{port}"),
        devices: 1,
        first_id: dev_id,
        key_seed: SEED,
        interval: Duration::from_millis(500),
        trip_every: 0,
        answer_commands: true,
        stamp: false,
        profile: Profile::Classic,
        plain_status: false,
        drive: None,
    };
    tokio::spawn(vehicle2mqtt::connectors::kingxun::sim::run(
        opts,
        Arc::new(SimStats::default()),
        stop.clone(),
    ));
    stop
}

fn owner_of(probe: &Probe, base: &str, vehicle: &str) -> Option<String> {
    let topic = format!("{base}/{vehicle}/owner");
    probe
        .messages()
        .into_iter()
        .rfind(|m| m.topic == topic)
        .and_then(|m| m.json()["instance"].as_str().map(str::to_string))
}

async fn wait_owner(probe: &Probe, base: &str, vehicle: &str, owner: &str) -> Instant {
    let topic = format!("{base}/{vehicle}/owner");
    let end = Instant::now() + T;
    loop {
        if owner_of(probe, base, vehicle).as_deref() == Some(owner) {
            return Instant::now();
        }
        assert!(
            Instant::now() < end,
            "{vehicle} not owned by {owner}: {:?}",
            probe
                .messages()
                .iter()
                .filter(|m| m.topic == topic)
                .map(Msg::text)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a lock command with `id` and waits for its final result; returns it.
async fn command(probe: &Probe, base: &str, vehicle: &str, id: &str) -> serde_json::Value {
    let payload = format!(r#"{{"id":"{id}","action":"LOCK"}}"#);
    probe
        .publish(&format!("{base}/{vehicle}/lock/set"), &payload, false)
        .await;
    let topic = format!("{base}/{vehicle}/command/result");
    probe
        .wait_for(&format!("{id}'s result"), T, |m| {
            m.topic == topic && m.json()["id"] == id && m.json()["status"] != "accepted"
        })
        .await
        .json()
}

/// Final results per command id, as everyone on the broker saw them.
fn final_results(probe: &Probe) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut by_id: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for m in probe.messages() {
        if m.topic.ends_with("/command/result") {
            let r = m.json();
            if r["status"] != "accepted" {
                if let Some(id) = r["id"].as_str() {
                    by_id.entry(id.to_string()).or_default().push(r.clone());
                }
            }
        }
    }
    by_id
}

/// Every discovery document published for `vehicle`: topic → each payload in order.
fn discovery_of(probe: &Probe, vehicle: &str) -> HashMap<String, Vec<Vec<u8>>> {
    discovery_in(&probe.messages(), vehicle)
}

fn discovery_in(messages: &[Msg], vehicle: &str) -> HashMap<String, Vec<Vec<u8>>> {
    let mut docs: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for m in messages {
        if m.topic.starts_with("homeassistant/") && m.topic.contains(&format!("/{vehicle}_")) {
            docs.entry(m.topic.clone())
                .or_default()
                .push(m.payload.clone());
        }
    }
    docs
}

fn last_text(probe: &Probe, topic: &str) -> Option<String> {
    probe
        .messages()
        .into_iter()
        .rfind(|m| m.topic == topic)
        .map(|m| m.text())
}

/// Which instance's way to the cloud carried requests since `at` (at most one may).
fn pollers_since(instances: &[&Instance], at: Instant) -> Vec<String> {
    instances
        .iter()
        .filter(|i| i.requests.since(at) > 0)
        .map(|i| i.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_a_fleet_and_survive_a_kill() {
    let broker = Mosquitto::start();
    let base = format!("cl{}", rand::random::<u32>());
    let probe = Probe::connect(broker.port, &[&format!("{base}/#"), "homeassistant/#"]).await;
    let cloud = FakeIauto360::start(FakeOptions::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut n = Vec::new();
    for id in ["n1", "n2", "n3"] {
        n.push(Instance::start(&broker, &base, id, cloud.addr).await);
    }
    for i in &n {
        probe
            .wait_for("instance online", T, |m| {
                m.topic == format!("{base}/bridge/{}/state", i.id) && m.text() == "online"
            })
            .await;
    }
    // The cloud account: polled by exactly one instance, once settled.
    let esn_vehicle = "ia865432100012345";
    let end = Instant::now() + T;
    let poller = loop {
        let window = Instant::now();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let active = pollers_since(&[&n[0], &n[1], &n[2]], window);
        if active.len() == 1 {
            break active[0].clone();
        }
        assert!(Instant::now() < end, "account pollers: {active:?}");
    };
    let p = n.iter().position(|i| i.id == poller).unwrap();
    let (q, r) = ((p + 1) % 3, (p + 2) % 3);
    let account_owner = owner_of(&probe, &base, esn_vehicle);
    eprintln!("the account's poller: {poller}; its vehicle's owner: {account_owner:?}");

    // Devices: 1001 and 1002 at the poller, 1003 at q, 1004 at r; EXLIVE T7 at q.
    let mut links: HashMap<u32, CancellationToken> = HashMap::new();
    for (dev, at) in [(1001, p), (1002, p), (1003, q), (1004, r)] {
        links.insert(dev, device(n[at].kingxun, dev));
    }
    for (dev, at) in [(1001, p), (1002, p), (1003, q), (1004, r)] {
        wait_owner(&probe, &base, &format!("kx{dev}"), &n[at].id).await;
    }
    let (mut ex_q, ack) = login_at(n[q].exlive).await;
    assert_eq!(ack, success());
    ex_q.send(common::exlive::position("T7", "").as_bytes())
        .await
        .unwrap();
    wait_owner(&probe, &base, "exT7", &n[q].id).await;

    // Commands: each answered once, by the owner.
    for dev in [1001, 1002, 1003, 1004] {
        let res = command(&probe, &base, &format!("kx{dev}"), &format!("c-{dev}")).await;
        assert_eq!(res["status"], "succeeded", "kx{dev}: {res}");
    }
    // A vehicle nobody owns: one answer, `failed: offline`, from its home.
    let res = command(&probe, &base, "kx1005", "c-nobody").await;
    assert_eq!(
        (res["status"].as_str(), res["reason"].as_str()),
        (Some("failed"), Some("offline"))
    );
    // A repeated id runs nowhere again.
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"id":"c-1001","action":"LOCK"}"#,
            false,
        )
        .await;

    // A hop: 1001 leaves the poller and links at q.
    let docs_before = discovery_of(&probe, "kx1001");
    assert!(!docs_before.is_empty());
    links.remove(&1001).unwrap().cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hop_mark = probe.messages().len();
    let hop_at = Instant::now();
    links.insert(1001, device(n[q].kingxun, 1001));
    let owned_at = wait_owner(&probe, &base, "kx1001", &n[q].id).await;
    eprintln!("hop: re-owned in {:?}", owned_at - hop_at);
    let res = command(&probe, &base, "kx1001", "c-hop").await;
    assert_eq!(res["status"], "succeeded", "after the hop: {res}");
    // An EXLIVE hop: T7 on a new link at r; the old link at q keeps talking about it.
    let (mut ex_r, _) = login_at(n[r].exlive).await;
    ex_r.send(common::exlive::position("T7", "").as_bytes())
        .await
        .unwrap();
    wait_owner(&probe, &base, "exT7", &n[r].id).await;
    ex_q.send(common::exlive::position("T7", "").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        owner_of(&probe, &base, "exT7").as_deref(),
        Some(n[r].id.as_str()),
        "no tug of war"
    );

    // kill -9 of the poller, which holds 1002.
    let availability: Vec<String> = probe
        .messages()
        .iter()
        .filter(|m| m.topic == format!("{base}/kx1002/availability"))
        .map(Msg::text)
        .collect();
    assert_eq!(
        availability.last().map(String::as_str),
        Some("online"),
        "{availability:?}"
    );
    let mark = probe.messages().len();
    let kill_mark = mark;
    let killed_at = Instant::now();
    n[p].kill9();
    wait_new(
        &probe,
        mark,
        "kx1002 offline",
        Duration::from_secs(LEASE_S + SETTLE_S + 15),
        |m| m.topic == format!("{base}/kx1002/availability") && m.text() == "offline",
    )
    .await;
    let offline_after = killed_at.elapsed();
    // The OS closed its socket, so the broker sent its will at once: settle, not the lease.
    assert!(
        offline_after >= Duration::from_secs(SETTLE_S),
        "offline before settle: {offline_after:?}"
    );
    eprintln!("kill -9: its vehicle offline after {offline_after:?}");
    // The device links again at r: owned and commandable there.
    links.remove(&1002).unwrap().cancel();
    links.insert(1002, device(n[r].kingxun, 1002));
    wait_owner(&probe, &base, "kx1002", &n[r].id).await;
    let r2 = command(&probe, &base, "kx1002", "c-after-kill").await;
    assert_eq!(r2["status"], "succeeded", "{r2}");
    let commandable_after = killed_at.elapsed();
    eprintln!("kill -9: its vehicle commandable at another instance after {commandable_after:?}");
    assert!(
        commandable_after < Duration::from_secs(30),
        "{commandable_after:?}"
    );
    // The account moves to a survivor, after the dead one's lease and settle.
    let moved_at = Instant::now();
    let end = moved_at + T;
    let survivors = [&n[q], &n[r]];
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let active = pollers_since(&survivors, Instant::now() - Duration::from_millis(1900));
        if active.len() == 1 {
            eprintln!(
                "kill -9: account polled again by {} after {:?}",
                active[0],
                killed_at.elapsed()
            );
            break;
        }
        assert!(active.len() < 2, "two pollers at once: {active:?}");
        assert!(
            Instant::now() < end,
            "nobody polls the account after the kill"
        );
    }
    assert_eq!(
        last_text(&probe, &format!("{base}/bridge/state")).as_deref(),
        Some("online")
    );

    // A second instance with a running id stops with status 2; the first keeps its own.
    let mut twin = Instance::start_twin(&broker, &base, &n[q].id, cloud.addr).await;
    let code = twin.wait_exit(T).await;
    assert_eq!(code, Some(2), "{}", twin.log());
    assert!(twin.log().contains("another instance"), "{}", twin.log());
    assert_eq!(
        owner_of(&probe, &base, "kx1001").as_deref(),
        Some(n[q].id.as_str())
    );
    let r3 = command(&probe, &base, "kx1001", "c-after-twin").await;
    assert_eq!(r3["status"], "succeeded", "{r3}");

    // A clean stop of r: its vehicles offline and free, the cluster still online.
    assert_eq!(n[r].terminate().await, Some(0));
    let topic = format!("{base}/bridge/{}/state", n[r].id);
    probe
        .wait_for("r offline", T, |m| {
            m.topic == topic && m.text() == "offline"
        })
        .await;
    probe
        .wait_for("kx1004 offline", T, |m| {
            m.topic == format!("{base}/kx1004/availability") && m.text() == "offline"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        last_text(&probe, &format!("{base}/bridge/state")).as_deref(),
        Some("online")
    );

    // Exactly one final result per id, cluster-wide.
    let results = final_results(&probe);
    for (id, all) in &results {
        assert_eq!(all.len(), 1, "{id}: {all:?}");
    }
    for id in [
        "c-1001",
        "c-1002",
        "c-1003",
        "c-1004",
        "c-nobody",
        "c-hop",
        "c-after-kill",
        "c-after-twin",
    ] {
        assert!(results.contains_key(id), "{id} never answered");
    }
    // Takeover kept HA calm: no empty discovery document, none changed.
    for m in probe.messages() {
        if m.topic.starts_with("homeassistant/") && m.topic.contains(&format!("/{base}/")) {
            assert!(!m.payload.is_empty(), "a removal: {}", m.topic);
        }
    }
    // Each takeover republished exactly what the last owner had left (HA sees no change).
    for (vehicle, mark) in [("kx1001", hop_mark), ("kx1002", kill_mark)] {
        let before = discovery_in(&probe.messages()[..mark], vehicle);
        let after = discovery_in(&probe.messages()[mark..], vehicle);
        assert!(!before.is_empty() && !after.is_empty(), "{vehicle}");
        for (topic, versions) in &after {
            let last = before.get(topic).and_then(|v| v.last());
            for v in versions {
                assert_eq!(
                    Some(v),
                    last,
                    "{topic} changed at a takeover: {}",
                    String::from_utf8_lossy(v)
                );
            }
        }
    }
    // The account: never polled by two at once (a change of poller leaves a gap).
    let mut all: Vec<(Instant, String)> = n
        .iter()
        .flat_map(|i| i.requests.times().into_iter().map(|t| (t, i.id.clone())))
        .collect();
    all.sort();
    for w in all.windows(2) {
        if w[0].1 != w[1].1 {
            let gap = w[1].0 - w[0].0;
            assert!(
                gap >= Duration::from_millis(900),
                "{} then {} {gap:?} apart",
                w[0].1,
                w[1].1
            );
        }
    }
    let counts: Vec<(String, usize)> = n
        .iter()
        .map(|i| (i.id.clone(), i.requests.count()))
        .collect();
    eprintln!(
        "requests at the fake cloud per instance: {counts:?}; results: {}",
        results.len()
    );
    for l in links.values() {
        l.cancel();
    }
    drop(ex_r);
}

/// Waits for a message after the first `mark` ones.
async fn wait_new(
    probe: &Probe,
    mark: usize,
    what: &str,
    within: Duration,
    pred: impl Fn(&Msg) -> bool,
) {
    let end = Instant::now() + within;
    loop {
        if probe.messages().iter().skip(mark).any(&pred) {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn login_at(port: u16) -> (Peer, vehicle2mqtt::protocol::exlive::Message) {
    Peer::login(port, "fleet", "s3cret-pass").await
}

impl Instance {
    /// Another process with `id` (its own state, so its own client id).
    async fn start_twin(
        broker: &Mosquitto,
        base: &str,
        id: &str,
        cloud: std::net::SocketAddr,
    ) -> Instance {
        Instance::start(broker, base, id, cloud).await
    }

    async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                return status.code();
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
