//! Cluster-mode harness (docs/cluster.md): real bridge processes as instances of one
//! cluster, simulated kingxun devices linked where a test says, and what the broker shows
//! of owners, results and discovery documents.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::kingxun::sim::{SimOptions, SimStats};
use vehicle2mqtt::protocol::kingxun::Profile;

use super::{free_port, KillOnDrop, Msg, Probe};

pub const T: Duration = Duration::from_secs(20);
pub const SEED: u64 = 24;
pub const SETTLE_S: u64 = 2;
pub const LEASE_S: u64 = 6;
/// The kingxun devices every instance's config lists.
pub const DEVICES: std::ops::Range<u32> = 1001..1009;

/// What an instance is started with, beside its id.
#[derive(Clone)]
pub struct Setup {
    /// `mqtt.url` (one broker or a list).
    pub urls: String,
    pub base: String,
    /// The kingxun listener expects a PROXY v2 header (behind HAProxy).
    pub proxy_protocol: bool,
    /// The fake cloud's address (an iauto360 account), when there is one.
    pub cloud: Option<std::net::SocketAddr>,
    /// Extra config lines.
    pub extra: String,
}

/// Requests through one instance's way to the fake cloud, when each went.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<Vec<Instant>>>);

impl Requests {
    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn since(&self, at: Instant) -> usize {
        self.0.lock().unwrap().iter().filter(|t| **t >= at).count()
    }
    pub fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().clone()
    }
}

/// A TCP forwarder to `upstream` that counts the HTTP/1.1 requests going through it.
pub async fn counting_forwarder(upstream: std::net::SocketAddr) -> (u16, Requests) {
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
                    // A request line split across reads is still counted once.
                    let mut tail: Vec<u8> = Vec::new();
                    let mark = b" HTTP/1.1\r\n";
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut window = std::mem::take(&mut tail);
                        window.extend_from_slice(&buf[..n]);
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

/// One bridge process in cluster mode.
pub struct Instance {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub kingxun: u16,
    pub exlive: u16,
    pub requests: Requests,
    child: Option<KillOnDrop>,
}

fn config(setup: &Setup, id: &str, kingxun: u16, exlive: u16, cloud: Option<u16>) -> String {
    let devices = vehicle2mqtt::connectors::kingxun::sim::config_toml(&SimOptions {
        devices: DEVICES.len(),
        first_id: DEVICES.start,
        key_seed: SEED,
        ..SimOptions::default()
    });
    let iauto360 = match cloud {
        Some(port) => format!(
            r#"
[iauto360]
enabled = true
base_url = "http://127.0.0.1:{port}"
open_id = "OPEN123"
secure_code = "SECRETcode"
poll_interval = "1s"
detail_interval = "1h"

[[iauto360.devices]]
esn = "865432100012345"
"#
        ),
        None => String::new(),
    };
    format!(
        r#"[mqtt]
url = "{urls}"
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
proxy_protocol = {proxy}

{devices}

[exlive]
enabled = true
server = true
listen = "127.0.0.1:{exlive}"

[[exlive.accounts]]
name = "fleet"
password = "s3cret-pass"
{iauto360}
{extra}
"#,
        urls = setup.urls,
        base = setup.base,
        proxy = setup.proxy_protocol,
        extra = setup.extra,
    )
}

impl Instance {
    pub async fn start(setup: &Setup, id: &str) -> Instance {
        let (forward, requests) = match setup.cloud {
            Some(cloud) => {
                let (port, requests) = counting_forwarder(cloud).await;
                (Some(port), requests)
            }
            None => (None, Requests::default()),
        };
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
        let text = config(setup, id, kingxun, exlive, forward);
        std::fs::write(i.dir.path().join("config.toml"), text).unwrap();
        i.spawn();
        assert!(
            super::wait_port_async(kingxun, T).await,
            "{id}'s device listener:\n{}",
            i.log()
        );
        i
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("log")).unwrap();
        let child = super::bridge_cmd(self.dir.path())
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .env("V2M_BRIDGE__LOG_LEVEL", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(KillOnDrop(child));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill(); // SIGKILL
            let _ = c.0.wait();
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT", "TERM").
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit(T).await
    }

    /// The exit status within `within`, if it exits.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.0.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A simulated kingxun device linked at `addr` until its token is cancelled.
pub fn device(addr: &str, dev_id: u32) -> CancellationToken {
    let stop = CancellationToken::new();
    let opts = SimOptions {
        server: addr.to_string(),
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

/// The owner the broker shows for `vehicle` now (`None`: nobody, or cleared).
pub fn owner_of(probe: &Probe, base: &str, vehicle: &str) -> Option<String> {
    let topic = format!("{base}/{vehicle}/owner");
    probe
        .messages()
        .into_iter()
        .rfind(|m| m.topic == topic)
        .and_then(|m| m.json()["instance"].as_str().map(str::to_string))
}

pub async fn wait_owner(
    probe: &Probe,
    base: &str,
    vehicle: &str,
    owner: Option<&str>,
    within: Duration,
) -> String {
    let topic = format!("{base}/{vehicle}/owner");
    let end = Instant::now() + within;
    loop {
        let now = owner_of(probe, base, vehicle);
        if let Some(found) = now
            .as_deref()
            .filter(|o| owner.is_none_or(|want| want == *o))
        {
            return found.to_string();
        }
        assert!(
            Instant::now() < end,
            "{vehicle} not owned by {owner:?}: {:?}",
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

/// Sends a lock command with `id` and waits for its final result.
pub async fn command(
    probe: &Probe,
    base: &str,
    vehicle: &str,
    id: &str,
    within: Duration,
) -> serde_json::Value {
    let payload = format!(r#"{{"id":"{id}","action":"LOCK"}}"#);
    probe
        .publish(&format!("{base}/{vehicle}/lock/set"), &payload, false)
        .await;
    let topic = format!("{base}/{vehicle}/command/result");
    probe
        .wait_for(&format!("{id}'s result"), within, |m| {
            m.topic == topic && m.json()["id"] == id && m.json()["status"] != "accepted"
        })
        .await
        .json()
}

/// Final results per command id, as everyone on the broker saw them.
pub fn final_results(probe: &Probe) -> BTreeMap<String, Vec<serde_json::Value>> {
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

/// Every discovery document among `messages` for `vehicle`: topic → each payload in order.
pub fn discovery_in(messages: &[Msg], vehicle: &str) -> HashMap<String, Vec<Vec<u8>>> {
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

/// Asserts that what was published for `vehicle` after message `mark` (a takeover) is
/// exactly what had been published before it, document by document.
pub fn assert_same_discovery(messages: &[Msg], vehicle: &str, mark: usize) {
    let before = discovery_in(&messages[..mark], vehicle);
    let after = discovery_in(&messages[mark..], vehicle);
    assert!(!before.is_empty(), "{vehicle}: nothing announced before");
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

/// No discovery document of `base` was ever removed (an empty retained payload).
pub fn assert_no_removal(messages: &[Msg], base: &str) {
    for m in messages {
        if m.topic.starts_with("homeassistant/") && m.topic.contains(&format!("/{base}/")) {
            assert!(!m.payload.is_empty(), "a removal: {}", m.topic);
        }
    }
}

pub fn last_text(probe: &Probe, topic: &str) -> Option<String> {
    probe
        .messages()
        .into_iter()
        .rfind(|m| m.topic == topic)
        .map(|m| m.text())
}

/// Waits for a message after the first `mark` ones.
pub async fn wait_new(
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

/// Asserts exactly one final result per id, and that every id in `expected` has one.
pub fn assert_one_result_each(probe: &Probe, expected: &[&str]) -> usize {
    let results = final_results(probe);
    for (id, all) in &results {
        assert_eq!(all.len(), 1, "{id}: {all:?}");
    }
    for id in expected {
        assert!(results.contains_key(*id), "{id} never answered");
    }
    results.len()
}

/// Waits until every instance's retained state reads `online`.
pub async fn wait_online(probe: &Probe, base: &str, instances: &[Instance], within: Duration) {
    for i in instances {
        let topic = format!("{base}/bridge/{}/state", i.id);
        probe
            .wait_for("instance online", within, |m| {
                m.topic == topic && m.text() == "online"
            })
            .await;
    }
}

/// Prints each instance's log lines that contain one of `words` (when a test fails).
pub fn dump_logs(instances: &[Instance], words: &[&str]) {
    for i in instances {
        for l in i
            .log()
            .lines()
            .filter(|l| words.iter().any(|w| l.contains(w)))
        {
            eprintln!("{}: {}", i.id, l.chars().take(240).collect::<String>());
        }
    }
}
