//! Cluster benchmark: two real bridge processes in cluster mode (instances `b1`, `b2`,
//! settle 2 s, lease_ttl 6 s) on one real mosquitto and one base topic, both configured
//! with the same 20 000 kingxun devices; 10 000 simulated devices link to each (ids
//! 1..=10000 to b1, 10001..=20000 to b2) and report every 10 s. Measured: each
//! instance's RSS (idle, all linked and claimed, loaded, peak), frames per second into
//! each (the simulators' count, and state messages at a subscriber), the time until every
//! vehicle has its retained `<base>/<vehicle>/owner`, and lock commands per second
//! cluster-wide (fired at vehicles of both instances as fast as the broker takes them,
//! then again with at most 200 open), with exactly one final result per command id and no
//! `offline` for a linked vehicle. Each instance's devices run in a simulator process of
//! their own (this binary with `--sim-child`), each under its 20 000 open files.
//!
//! Run: `cargo bench --bench cluster` (needs mosquitto). Settings by environment:
//! `VEHICLE2MQTT_BENCH_DEVICES` (per instance, 10000), `VEHICLE2MQTT_BENCH_INTERVAL_S`
//! (status interval, 10), `VEHICLE2MQTT_BENCH_SECONDS` (frame window, 20),
//! `VEHICLE2MQTT_BENCH_COMMANDS` (2000), `VEHICLE2MQTT_BENCH_DISCOVERY` (0).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::kingxun::sim::{config_toml, SimOptions, SimStats};

const SEED: u64 = 2424;
const BASE: &str = "bench";
const INSTANCES: [&str; 2] = ["b1", "b2"];
/// The broker must not be what drops a message: no cap on queued or in-flight messages
/// per client (mosquitto's defaults, 1000 queued and 20 in flight, would drop results and
/// claims in a burst of thousands).
const MOSQUITTO: &str =
    "allow_anonymous true\nmax_connections -1\nmax_queued_messages 0\nmax_inflight_messages 0\n";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the watching subscriber saw.
#[derive(Default)]
struct Seen {
    /// State messages per instance (by the vehicle's id range), while measuring.
    states: [u64; 2],
    /// Vehicle → the instance of its latest (non-empty) owner message.
    owners: HashMap<u32, String>,
    all_owned_at: Option<Instant>,
    /// Owner messages naming another instance than the one the device links to.
    wrong_owner: u64,
    /// Owner messages that cleared or moved a vehicle already owned.
    owner_changes: u64,
    /// `offline` on `<vehicle>/availability` once the vehicle was claimed / before.
    offline_linked: u64,
    offline_unclaimed: u64,
    availability_msgs: u64,
    /// Instance → its last `bridge/<id>/state`, and how often it said `offline`.
    instance_state: HashMap<String, String>,
    instance_offline: u64,
    /// Command id (ours) → every final status (and reason) published for it, when.
    results: HashMap<String, Vec<(String, Instant)>>,
    accepted: u64,
}

struct Watch {
    seen: Mutex<Seen>,
    measuring: AtomicBool,
    per_instance: u32,
}

impl Watch {
    fn on_publish(&self, topic: &str, payload: &[u8]) {
        let mut parts = topic.split('/');
        let (Some(_base), Some(second), third, fourth) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let mut seen = self.seen.lock().unwrap();
        if second == "bridge" {
            if let (Some(instance), Some("state")) = (third, fourth) {
                let text = String::from_utf8_lossy(payload).into_owned();
                if text == "offline" {
                    seen.instance_offline += 1;
                }
                seen.instance_state.insert(instance.to_string(), text);
            }
            return;
        }
        let Some(dev) = second
            .strip_prefix("kx")
            .and_then(|d| d.parse::<u32>().ok())
        else {
            return;
        };
        let inst = usize::from(dev > self.per_instance);
        match (third, fourth) {
            (Some("state"), None) if self.measuring.load(Ordering::Relaxed) => {
                seen.states[inst] += 1;
            }
            (Some("owner"), None) => {
                let owner = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v["instance"].as_str().map(str::to_string));
                match owner {
                    Some(owner) => {
                        if owner != INSTANCES[inst] {
                            seen.wrong_owner += 1;
                        }
                        if let Some(before) = seen.owners.insert(dev, owner.clone()) {
                            if before != owner {
                                seen.owner_changes += 1;
                            }
                        }
                        if seen.all_owned_at.is_none()
                            && seen.owners.len() == 2 * self.per_instance as usize
                        {
                            seen.all_owned_at = Some(Instant::now());
                        }
                    }
                    None => {
                        if seen.owners.remove(&dev).is_some() {
                            seen.owner_changes += 1;
                        }
                    }
                }
            }
            (Some("availability"), None) => {
                seen.availability_msgs += 1;
                if payload == b"offline" {
                    if seen.owners.contains_key(&dev) {
                        seen.offline_linked += 1;
                    } else {
                        seen.offline_unclaimed += 1;
                    }
                }
            }
            (Some("command"), Some("result")) => {
                let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
                let (Some(id), Some(status)) = (v["id"].as_str(), v["status"].as_str()) else {
                    return;
                };
                if !(id.starts_with("cb-") || id.starts_with("cw-")) {
                    return;
                }
                if status == "accepted" {
                    seen.accepted += 1;
                } else {
                    let text = match v["reason"].as_str() {
                        Some(reason) => format!("{status}: {reason}"),
                        None => status.to_string(),
                    };
                    seen.results
                        .entry(id.to_string())
                        .or_default()
                        .push((text, Instant::now()));
                }
            }
            _ => {}
        }
    }
}

fn client(port: u16, name: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(
        format!("{name}-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(u16::MAX);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// A subscriber on everything the bench counts, feeding `watch`.
async fn watcher(port: u16, watch: Arc<Watch>) -> tokio::task::JoinHandle<()> {
    let (client, mut eventloop) = client(port, "bench-watch");
    let filters = [
        (format!("{BASE}/+/state"), QoS::AtMostOnce),
        (format!("{BASE}/+/owner"), QoS::AtLeastOnce),
        (format!("{BASE}/+/availability"), QoS::AtLeastOnce),
        (format!("{BASE}/+/command/result"), QoS::AtLeastOnce),
        (format!("{BASE}/bridge/+/state"), QoS::AtLeastOnce),
    ];
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let task = tokio::spawn(async move {
        let mut acks = 0;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for (f, qos) in &filters {
                        let _ = client.subscribe(f.clone(), *qos).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acks += 1;
                    if acks == filters.len() {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => watch.on_publish(&p.topic, &p.payload),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
    task
}

/// How many retained owner messages a fresh subscriber gets, and how many name the
/// instance the device links to.
async fn retained_owners(port: u16, per_instance: u32) -> (usize, usize) {
    let (client, mut eventloop) = client(port, "bench-retained");
    let owners = Arc::new(Mutex::new(HashMap::<u32, String>::new()));
    let sink = owners.clone();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe(format!("{BASE}/+/owner"), QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.retain => {
                    let dev = p
                        .topic
                        .split('/')
                        .nth(1)
                        .and_then(|v| v.strip_prefix("kx"))
                        .and_then(|d| d.parse::<u32>().ok());
                    let owner = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        .ok()
                        .and_then(|v| v["instance"].as_str().map(str::to_string));
                    if let (Some(dev), Some(owner)) = (dev, owner) {
                        sink.lock().unwrap().insert(dev, owner);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    // Retained messages arrive right after the subscription: wait until they stop coming.
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = owners.lock().unwrap().len();
        if n == last && n > 0 {
            break;
        }
        last = n;
    }
    task.abort();
    let owners = owners.lock().unwrap();
    let right = owners
        .iter()
        .filter(|(dev, owner)| owner.as_str() == INSTANCES[usize::from(**dev > per_instance)])
        .count();
    (owners.len(), right)
}

/// Commands without a final result at most, in the second round.
const WINDOW: usize = 200;

struct Round {
    prefix: &'static str,
    broker_took: Duration,
    all_results: Option<Duration>,
    statuses: Vec<(String, usize)>,
    duplicates: usize,
    missing: usize,
    duplicate_examples: Vec<String>,
}

/// `commands` LOCKs with ids `<prefix>-<i>`, alternating between the two instances'
/// vehicles (`offset` picks other vehicles for another round), all at once or at most
/// `window` open; waits for the results, and a while more for late duplicates.
#[allow(clippy::too_many_arguments)]
async fn command_round(
    client: &AsyncClient,
    acked: &AtomicU64,
    watch: &Watch,
    prefix: &'static str,
    commands: usize,
    per_instance: u32,
    offset: usize,
    window: Option<usize>,
) -> Round {
    let answered = || {
        let seen = watch.seen.lock().unwrap();
        (0..commands)
            .filter(|i| seen.results.contains_key(&format!("{prefix}-{i}")))
            .count()
    };
    let n = per_instance as usize;
    let half = commands.div_ceil(2).max(1);
    let step = (n / half).max(1);
    let acked0 = acked.load(Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..commands {
        if let Some(w) = window {
            while i - answered() >= w {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let dev = 1 + (i % 2) * n + ((i / 2) * step + offset) % n;
        client
            .publish(
                format!("{BASE}/kx{dev}/lock/set"),
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"id":"{prefix}-{i}","action":"LOCK"}}"#),
            )
            .await
            .expect("publish");
    }
    let end = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) - acked0 < commands as u64 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let broker_took = start.elapsed();
    // A command the bridge took is answered within its command_timeout (60 s).
    let end = Instant::now() + Duration::from_secs(65);
    while answered() < commands && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = watch.seen.lock().unwrap();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let (mut duplicates, mut missing, mut last) = (0, 0, None::<Instant>);
    let mut duplicate_examples = Vec::new();
    for i in 0..commands {
        let id = format!("{prefix}-{i}");
        let Some(all) = seen.results.get(&id) else {
            missing += 1;
            continue;
        };
        for (text, at) in all {
            let status = text.split(':').next().unwrap_or_default().to_string();
            *statuses.entry(status).or_default() += 1;
            last = Some(last.map_or(*at, |l| l.max(*at)));
        }
        if all.len() > 1 {
            duplicates += all.len() - 1;
            let dev = 1 + (i % 2) * n + ((i / 2) * step + offset) % n;
            let texts: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
            duplicate_examples.push(format!("{id} (kx{dev}): {texts:?}"));
        }
    }
    let mut statuses: Vec<_> = statuses.into_iter().collect();
    statuses.sort();
    Round {
        prefix,
        broker_took,
        all_results: last.map(|t| t - start),
        statuses,
        duplicates,
        missing,
        duplicate_examples,
    }
}

struct Bridge {
    id: &'static str,
    child: common::KillOnDrop,
    pid: u32,
    kx_port: u16,
    _dir: tempfile::TempDir,
}

impl Bridge {
    fn running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }
}

fn spawn_instance(mqtt_port: u16, id: &'static str, devices: &str) -> Bridge {
    let dir = tempfile::tempdir().expect("tempdir");
    let kx_port = common::free_port();
    let child = support::spawn_bridge(
        dir.path(),
        mqtt_port,
        &format!("bench-{id}"),
        &format!(
            "[cluster]\ninstance_id = \"{id}\"\nsettle = \"2s\"\nlease_ttl = \"6s\"\n\n\
             [kingxun]\nenabled = true\nlisten = \"127.0.0.1:{kx_port}\"\nmax_links = 20000\nmax_links_per_address = 20000\n\n{devices}"
        ),
    );
    let pid = child.0.id();
    Bridge {
        id,
        child,
        pid,
        kx_port,
        _dir: dir,
    }
}

/// One instance's 10 000 simulated devices in a process of their own (this bench binary
/// again, `--sim-child`): the file limit here stops at 20 000 (no raising a hard limit
/// without CAP_SYS_RESOURCE), one process short of 20 000 device sockets and the rest.
/// It prints its counters every 100 ms; the parent mirrors them into `stats`.
struct SimProc {
    _child: common::KillOnDrop,
    stats: Arc<SimStats>,
}

fn spawn_sim(server: &str, first_id: u32, devices: u32, interval: Duration) -> SimProc {
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--sim-child",
            server,
            &first_id.to_string(),
            &devices.to_string(),
            &interval.as_millis().to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn simulator");
    let stdout = child.stdout.take().expect("simulator's stdout");
    let stats = Arc::new(SimStats::default());
    let mirror = stats.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let n: Vec<u64> = line
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [registered, refused, statuses, commands, errors] = n[..] {
                mirror.registered.store(registered, Ordering::Relaxed);
                mirror.refused.store(refused, Ordering::Relaxed);
                mirror.statuses.store(statuses, Ordering::Relaxed);
                mirror.commands.store(commands, Ordering::Relaxed);
                mirror.errors.store(errors, Ordering::Relaxed);
            }
        }
    });
    SimProc {
        _child: common::KillOnDrop(child),
        stats,
    }
}

/// The child's side: `<server> <first id> <devices> <interval ms>`; ends with its stdin.
fn sim_child(args: &[String]) {
    support::raise_open_files(1 << 20);
    let server = args[0].clone();
    let first_id: u32 = args[1].parse().expect("first id");
    let devices: usize = args[2].parse().expect("devices");
    let interval = Duration::from_millis(args[3].parse().expect("interval"));
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let stats = Arc::new(SimStats::default());
        let opts = SimOptions {
            server,
            devices,
            first_id,
            key_seed: SEED,
            interval,
            trip_every: 0,
            answer_commands: true,
            stamp: false,
            profile: Default::default(),
            plain_status: false,
            drive: None,
        };
        tokio::spawn(vehicle2mqtt::connectors::kingxun::sim::run(
            opts,
            stats.clone(),
            CancellationToken::new(),
        ));
        use std::io::Write;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let line = format!(
                "{} {} {} {} {}\n",
                stats.registered.load(Ordering::Relaxed),
                stats.refused.load(Ordering::Relaxed),
                stats.statuses.load(Ordering::Relaxed),
                stats.commands.load(Ordering::Relaxed),
                stats.errors.load(Ordering::Relaxed),
            );
            let mut out = std::io::stdout().lock();
            if out
                .write_all(line.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                std::process::exit(0);
            }
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--sim-child") {
        sim_child(&args[i + 1..]);
        return;
    }
    support::bench_main_with("cluster", Some(MOSQUITTO), |mqtt_port| async move {
        let per_instance = env_or("VEHICLE2MQTT_BENCH_DEVICES", 10_000) as u32;
        let interval = Duration::from_secs(env_or("VEHICLE2MQTT_BENCH_INTERVAL_S", 10));
        let window = env_or("VEHICLE2MQTT_BENCH_SECONDS", 20);
        let commands = env_or("VEHICLE2MQTT_BENCH_COMMANDS", 2_000) as usize;
        let total = 2 * per_instance as usize;
        // 10 000 device sockets in each bridge and each simulator process.
        let files = support::raise_open_files(per_instance as u64 + 10_000);

        let watch = Arc::new(Watch {
            seen: Mutex::new(Seen::default()),
            measuring: AtomicBool::new(false),
            per_instance,
        });
        let watcher = watcher(mqtt_port, watch.clone()).await;

        let devices = config_toml(&SimOptions {
            devices: total,
            first_id: 1,
            key_seed: SEED,
            ..Default::default()
        });
        let started = Instant::now();
        let mut bridges: Vec<Bridge> = INSTANCES
            .iter()
            .map(|id| spawn_instance(mqtt_port, id, &devices))
            .collect();
        for b in &bridges {
            assert!(
                common::wait_port_async(b.kx_port, Duration::from_secs(30)).await,
                "{}'s device listener",
                b.id
            );
        }
        let end = Instant::now() + Duration::from_secs(20);
        while INSTANCES.iter().any(|id| {
            watch
                .seen
                .lock()
                .unwrap()
                .instance_state
                .get(*id)
                .map(String::as_str)
                != Some("online")
        }) {
            assert!(Instant::now() < end, "instances not online");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let online_after = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_idle: Vec<u64> = bridges.iter().map(|b| support::rss_kib(b.pid)).collect();

        // Link: 1..=N to b1, N+1..=2N to b2, at once.
        let sims: Vec<SimProc> = bridges
            .iter()
            .enumerate()
            .map(|(i, b)| {
                spawn_sim(
                    &format!("127.0.0.1:{}", b.kx_port),
                    1 + i as u32 * per_instance,
                    per_instance,
                    interval,
                )
            })
            .collect();
        let stats: Vec<Arc<SimStats>> = sims.iter().map(|s| s.stats.clone()).collect();
        let link_start = Instant::now();
        let registered = |stats: &[Arc<SimStats>]| -> u64 {
            stats
                .iter()
                .map(|s| s.registered.load(Ordering::Relaxed) + s.refused.load(Ordering::Relaxed))
                .sum()
        };
        let end = link_start + Duration::from_secs(90);
        while registered(&stats) < total as u64 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let linked_after = link_start.elapsed();
        while watch.seen.lock().unwrap().all_owned_at.is_none() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let owned_after = watch
            .seen
            .lock()
            .unwrap()
            .all_owned_at
            .map(|t| t - link_start);
        let owned_now = watch.seen.lock().unwrap().owners.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_claimed: Vec<u64> = bridges.iter().map(|b| support::rss_kib(b.pid)).collect();

        // Frames: a window of steady reporting.
        let sent0: Vec<u64> = stats
            .iter()
            .map(|s| s.statuses.load(Ordering::Relaxed))
            .collect();
        let cpu0: Vec<f64> = bridges
            .iter()
            .map(|b| support::cpu_seconds(b.pid))
            .collect();
        watch.measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(window)).await;
        watch.measuring.store(false, Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        let sent: Vec<f64> = stats
            .iter()
            .zip(&sent0)
            .map(|(s, s0)| (s.statuses.load(Ordering::Relaxed) - s0) as f64 / secs)
            .collect();
        let cpu: Vec<f64> = bridges
            .iter()
            .zip(&cpu0)
            .map(|(b, c0)| (support::cpu_seconds(b.pid) - c0) / secs * 100.0)
            .collect();
        let delivered: Vec<f64> = watch
            .seen
            .lock()
            .unwrap()
            .states
            .iter()
            .map(|n| *n as f64 / secs)
            .collect();
        let rss_loaded: Vec<u64> = bridges.iter().map(|b| support::rss_kib(b.pid)).collect();
        let anon_loaded: Vec<u64> = bridges
            .iter()
            .map(|b| support::rss_anon_kib(b.pid))
            .collect();

        // Commands: M locks, alternating between the instances' vehicles, one per vehicle
        // (while M/2 ≤ N): first all at once, as fast as the broker takes them; then again
        // on other vehicles, at most WINDOW without a final result.
        let (cmd_client, mut cmd_loop) = client(mqtt_port, "bench-cmd");
        let acked = Arc::new(AtomicU64::new(0));
        let acked_in = acked.clone();
        let cmd_task = tokio::spawn(async move {
            loop {
                match cmd_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked_in.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let burst = command_round(
            &cmd_client,
            &acked,
            &watch,
            "cb",
            commands,
            per_instance,
            0,
            None,
        )
        .await;
        let windowed = command_round(
            &cmd_client,
            &acked,
            &watch,
            "cw",
            commands,
            per_instance,
            1,
            Some(WINDOW),
        )
        .await;
        cmd_task.abort();

        let rss_peak: Vec<u64> = bridges
            .iter()
            .map(|b| support::peak_rss_kib(b.pid))
            .collect();
        let (retained, retained_right) = retained_owners(mqtt_port, per_instance).await;
        let alive: Vec<bool> = bridges.iter_mut().map(Bridge::running).collect();
        let executed: Vec<u64> = stats
            .iter()
            .map(|s| s.commands.load(Ordering::Relaxed))
            .collect();
        let errors: Vec<u64> = stats
            .iter()
            .map(|s| s.errors.load(Ordering::Relaxed))
            .collect();
        let seen = watch.seen.lock().unwrap();
        let mib = |k: u64| k as f64 / 1024.0;

        println!();
        println!(
            "cluster: 2 instances × {per_instance} kingxun devices (all {total} configured in each), status every {interval:?}, discovery {}, open files {files}, instances online {:.1} s after start",
            if support::discovery() { "on" } else { "off" },
            online_after.as_secs_f64()
        );
        println!(
            "instance  linked  RSS idle  linked+claimed  loaded (own)        peak    frames sent/s  states/s  CPU %  alive"
        );
        for (i, b) in bridges.iter().enumerate() {
            println!(
                "{:<8}  {:>6}  {:>5.1} MiB  {:>10.1} MiB  {:>5.1} MiB ({:>4.1})  {:>5.1} MiB  {:>13.0}  {:>8.0}  {:>5.0}  {}",
                b.id,
                stats[i].registered.load(Ordering::Relaxed),
                mib(rss_idle[i]),
                mib(rss_claimed[i]),
                mib(rss_loaded[i]),
                mib(anon_loaded[i]),
                mib(rss_peak[i]),
                sent[i],
                delivered[i],
                cpu[i],
                if alive[i] { "yes" } else { "NO" },
            );
        }
        println!(
            "linking: all {total} registered in {:.1} s; every vehicle owned (live) in {}; retained owners at a fresh subscriber: {retained} ({retained_right} right), wrong owner messages {}, owner changes {}",
            linked_after.as_secs_f64(),
            owned_after.map_or(format!("NOT ({owned_now} owned)"), |d| format!("{:.1} s", d.as_secs_f64())),
            seen.wrong_owner,
            seen.owner_changes,
        );
        for (label, r) in [
            ("at once", &burst),
            (&format!("≤{WINDOW} open") as &str, &windowed),
        ] {
            println!(
                "commands {label}: {commands} LOCK, broker took them in {:.2} s ({:.0}/s); all final results in {} => {} commands/s cluster-wide; results {:?}; duplicates {}, missing {}",
                r.broker_took.as_secs_f64(),
                commands as f64 / r.broker_took.as_secs_f64(),
                r.all_results.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                r.all_results.map_or("-".into(), |d| format!("{:.0}", commands as f64 / d.as_secs_f64())),
                r.statuses,
                r.duplicates,
                r.missing,
            );
            for d in r.duplicate_examples.iter().take(5) {
                println!("  duplicate: {d}");
            }
        }
        println!(
            "commands run by the devices: {executed:?}; MQTT accepted results {}",
            seen.accepted
        );
        println!(
            "availability: {} messages, offline for a linked vehicle {}, offline before its claim {}; instance offline states {}; simulator errors {errors:?}",
            seen.availability_msgs, seen.offline_linked, seen.offline_unclaimed, seen.instance_offline,
        );
        let (offline_linked, instance_offline) = (seen.offline_linked, seen.instance_offline);
        drop(seen);

        drop(sims);
        watcher.abort();
        drop(bridges);

        for r in [&burst, &windowed] {
            assert_eq!(r.duplicates, 0, "duplicate results ({})", r.prefix);
            assert_eq!(r.missing, 0, "missing results ({})", r.prefix);
        }
        assert_eq!(offline_linked, 0, "offline for linked vehicles");
        assert_eq!(instance_offline, 0, "an instance went offline");
        assert!(alive.iter().all(|a| *a), "an instance fell over");
        assert_eq!(retained, total, "retained owners");
    });
}
