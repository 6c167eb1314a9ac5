//! The cluster on a clustered broker behind a load balancer (docs/cluster.md): a 3-node
//! NATS cluster (JetStream MQTT, started by `.ci/cluster-broker` from its pinned package),
//! three bridges each listing their own node first in `mqtt.url`, and a real HAProxy in
//! front of their kingxun listeners (PROXY protocol v2). The owner of a vehicle loses its
//! broker node and dies (`kill -9` of both): with the node its will is lost too (NATS
//! keeps no will of a dead node's clients), so the others go by its heartbeat. Measured:
//! its vehicles offline or re-owned in the stated time, commandable again through
//! HAProxy, one result per command id, no discovery removed or changed.
//!
//! Needs the broker and HAProxy installed, so it is ignored by default: `.ci/cluster-test`
//! runs it (`cargo test --test cluster_nats -- --ignored`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::{free_port, KillOnDrop, Msg, Probe};

/// NATS stalls its survivors for up to ~29 s after a node dies (docs/cluster-brokers.md).
const NATS_T: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Nats {
    dir: tempfile::TempDir,
    ports: [u16; 3],
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port(), free_port()];
        let status = std::process::Command::new("bash")
            .arg(repo().join(".ci/cluster-broker"))
            .arg("start")
            .arg(dir.path())
            .args(ports.map(|p| p.to_string()))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("bash runs");
        assert!(status.success(), "the NATS cluster did not start");
        Nats { dir, ports }
    }

    fn kill_node(&self, n: usize) {
        let status = std::process::Command::new("bash")
            .arg(repo().join(".ci/cluster-broker"))
            .arg("kill_node")
            .arg(self.dir.path())
            .arg(n.to_string())
            .status()
            .expect("bash runs");
        assert!(status.success());
    }

    /// `mqtt.url` for an instance: node `first` (0-based), then the others.
    fn urls(&self, first: usize) -> String {
        (0..3)
            .map(|i| format!("mqtt://127.0.0.1:{}", self.ports[(first + i) % 3]))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(repo().join(".ci/cluster-broker"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// HAProxy in front of the kingxun listeners: round robin, PROXY v2, health-checked.
fn haproxy(dir: &std::path::Path, front: u16, backends: &[u16]) -> KillOnDrop {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "  server b{i} 127.0.0.1:{port} send-proxy-v2 check check-send-proxy inter 300ms fall 1 rise 2\n"
            )
        })
        .collect();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             frontend devices\n  bind 127.0.0.1:{front}\n  default_backend bridges\n\
             backend bridges\n  balance roundrobin\n{servers}"
        ),
    )
    .unwrap();
    let bin = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists() || *p == "haproxy")
        .unwrap_or("haproxy");
    let child = std::process::Command::new(bin)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy runs");
    KillOnDrop(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the NATS cluster and HAProxy: .ci/cluster-test"]
async fn owner_and_its_broker_node_die_behind_haproxy() {
    let nats = Nats::start();
    let base = format!("cn{}", rand::random::<u32>());
    let probe = Probe::connect(nats.ports[2], &[&format!("{base}/#"), "homeassistant/#"]).await;
    let mut n = Vec::new();
    for (i, id) in ["i1", "i2", "i3"].iter().enumerate() {
        let setup = Setup {
            urls: nats.urls(i),
            base: base.clone(),
            proxy_protocol: true,
            cloud: None,
            extra: String::new(),
        };
        n.push(Instance::start(&setup, id).await);
    }
    wait_online(&probe, &base, &n, NATS_T).await;
    let dir = tempfile::tempdir().unwrap();
    let front = free_port();
    let _haproxy = haproxy(
        dir.path(),
        front,
        &n.iter().map(|i| i.kingxun).collect::<Vec<_>>(),
    );
    assert!(common::wait_port_async(front, T).await, "haproxy listens");
    let through = format!("127.0.0.1:{front}");

    // Six devices through HAProxy: two per instance, round robin.
    let mut links = HashMap::new();
    let mut owners = HashMap::new();
    for dev in 1001..1007u32 {
        links.insert(dev, device(&through, dev));
        let owner = wait_owner(&probe, &base, &format!("kx{dev}"), None, NATS_T).await;
        owners.insert(dev, owner);
    }
    eprintln!("owners through haproxy: {owners:?}");
    for dev in 1001..1007u32 {
        let res = command(
            &probe,
            &base,
            &format!("kx{dev}"),
            &format!("n-{dev}"),
            NATS_T,
        )
        .await;
        assert_eq!(res["status"], "succeeded", "kx{dev}: {res}");
    }

    // The owner of kx1001 loses its broker node, then dies.
    let victim = owners[&1001].clone();
    let v = n.iter().position(|i| i.id == victim).unwrap();
    let theirs: Vec<u32> = owners
        .iter()
        .filter(|(_, o)| **o == victim)
        .map(|(d, _)| *d)
        .collect();
    let (relinked, left) = (1001u32, theirs.iter().copied().find(|d| *d != 1001));
    let mark = probe.messages().len();
    let killed_at = Instant::now();
    // Frozen first, so that it cannot reach another node before it dies: its will goes
    // down with its node.
    n[v].signal("STOP");
    nats.kill_node(v + 1);
    n[v].kill9();
    // The device links again through HAProxy, which has seen the dead one fail its check
    // (every 300 ms) and sends it to a live instance.
    links.remove(&relinked).unwrap().cancel();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    links.insert(relinked, device(&through, relinked));
    let end = Instant::now() + NATS_T;
    let new_owner = loop {
        if let Some(o) = owner_of(&probe, &base, "kx1001").filter(|o| *o != victim) {
            break o;
        }
        assert!(Instant::now() < end, "kx1001 never re-owned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "owner + its node killed: kx1001 re-owned by {new_owner} after {:?}",
        killed_at.elapsed()
    );
    // A QoS 1 message can wait out JetStream's re-election (docs/cluster-brokers.md), and
    // one was seen lost: a command unanswered after 8 s is sent again under a new id (each
    // id still gets at most one result, checked below).
    let mut answered_after = Vec::new();
    let mut res = None;
    for attempt in 1..=6 {
        let id = format!("n-after-{attempt}");
        let sent = command(&probe, &base, "kx1001", &id, Duration::from_secs(25));
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(8), sent).await {
            answered_after.push(id);
            res = Some(r);
            break;
        }
        eprintln!("{id}: no result within 8 s");
    }
    let Some(res) = res else {
        for m in probe.messages().iter().skip(mark) {
            if m.topic.contains("kx1001") && !m.topic.ends_with("/state") {
                eprintln!("probe: {} = {}", m.topic, m.text());
            }
        }
        dump_logs(&n, &["1001", "mqtt_", "cluster_"]);
        panic!("no result for kx1001's command in 48 s");
    };
    assert_eq!(res["status"], "succeeded", "{res}");
    let commandable = killed_at.elapsed();
    eprintln!("owner + its node killed: kx1001 commandable at {new_owner} after {commandable:?}");
    assert!(commandable < Duration::from_secs(30), "{commandable:?}");
    if let Some(left) = left {
        // Its other device does not link again: shown offline by its home.
        links.remove(&left).unwrap().cancel();
        let topic = format!("{base}/kx{left}/availability");
        let end = Instant::now() + NATS_T;
        while !probe
            .messages()
            .iter()
            .skip(mark)
            .any(|m| m.topic == topic && m.text() == "offline")
        {
            if Instant::now() > end {
                dump_logs(&n, &["cluster_", "mqtt_"]);
                panic!("kx{left} never shown offline");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "owner + its node killed: kx{left} offline after {:?}",
            killed_at.elapsed()
        );
    }
    let state = format!("{base}/bridge/state");
    assert_eq!(last_text(&probe, &state).as_deref(), Some("online"));
    let all: Vec<Msg> = probe.messages();
    let answered = assert_one_result_each(
        &probe,
        &[
            "n-1001",
            "n-1002",
            "n-1003",
            "n-1004",
            "n-1005",
            "n-1006",
            &answered_after[0],
        ],
    );
    assert_no_removal(&all, &base);
    assert_same_discovery(&all, "kx1001", mark);
    eprintln!("{answered} command ids, one result each");
    for l in links.values() {
        l.cancel();
    }
}
