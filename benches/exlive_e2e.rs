//! End-to-end EXLIVE benchmark: N simulated links stream 1007 (newline-terminated) into
//! the real bridge process, which publishes state to a real mosquitto, where a
//! subscriber counts messages and measures latency (send time travels in `posinfo`).
//! Also measures mosquitto's own ingest rate on the same machine for comparison.
//!
//! Run: `cargo bench --bench exlive_e2e` (needs mosquitto). Under `cargo test` it only
//! checks that it builds.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::sim::exlive::{now_ns, SimOptions, SimStats};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

struct Counter {
    received: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    measuring: std::sync::atomic::AtomicBool,
}

async fn subscriber(port: u16, filter: &str, counter: Arc<Counter>) -> tokio::task::JoinHandle<()> {
    let mut opts = MqttOptions::new(
        format!("bench-sub-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let filter = filter.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtMostOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if !counter.measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    counter.received.fetch_add(1, Ordering::Relaxed);
                    // Find "t=<ns>" in the address field without a full JSON parse.
                    if let Some(i) = p.payload.windows(2).position(|w| w == b"t=") {
                        let digits: String = p.payload[i + 2..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .map(|&b| b as char)
                            .collect();
                        if let Ok(sent) = digits.parse::<u128>() {
                            let lat = now_ns().saturating_sub(sent) / 1000;
                            counter.latencies_us.lock().unwrap().push(lat as u64);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
    task
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Scenario {
    links: usize,
    rate: f64,
    seconds: u64,
}

async fn run_scenario(port: u16, exlive_port: u16, bridge_pid: u32, sc: &Scenario, first_id: u64) {
    let counter = Arc::new(Counter {
        received: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
        measuring: false.into(),
    });
    let sub = subscriber(port, "bench/+/state", counter.clone()).await;
    let stats = Arc::new(SimStats::default());
    let shutdown = CancellationToken::new();
    let opts = SimOptions {
        server: format!("127.0.0.1:{exlive_port}"),
        links: sc.links,
        rate: sc.rate,
        user: "bench".into(),
        password: "bench".into(),
        first_id,
        stamp: true,
    };
    let sim = tokio::spawn(vehicle2mqtt::sim::exlive::run(
        opts,
        stats.clone(),
        shutdown.clone(),
    ));
    // Ramp up, then warm up for 3 s before measuring.
    let ramp_end = Instant::now() + Duration::from_secs(60);
    while stats.logged_in.load(Ordering::Relaxed) + stats.login_failed.load(Ordering::Relaxed)
        < sc.links as u64
        && Instant::now() < ramp_end
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent0 = stats.positions.load(Ordering::Relaxed);
    counter.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(sc.seconds)).await;
    counter.measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let sent = stats.positions.load(Ordering::Relaxed) - sent0;
    let received = counter.received.load(Ordering::Relaxed);
    let rss_loaded = rss_kib(bridge_pid);
    let mut lat = counter.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), sim).await;
    sub.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(bridge_pid);
    println!(
        "links={:>6} offered={:>8.0} msg/s sent={:>8.0} msg/s delivered={:>8.0} msg/s  p50={:>6.1} ms p99={:>7.1} ms  bridge RSS loaded={} MiB, after links closed={} MiB  (logged_in={}, errors={})",
        sc.links,
        sc.links as f64 * sc.rate,
        sent as f64 / elapsed,
        received as f64 / elapsed,
        percentile(&lat, 0.50) as f64 / 1000.0,
        percentile(&lat, 0.99) as f64 / 1000.0,
        rss_loaded / 1024,
        rss_after / 1024,
        stats.logged_in.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    );
}

/// mosquitto alone: 4 publishers at full speed (QoS 1, ~350-byte payloads like the
/// bridge's states), one subscriber counting.
async fn mosquitto_ingest(port: u16, seconds: u64) {
    let counter = Arc::new(Counter {
        received: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
        measuring: true.into(),
    });
    let sub = subscriber(port, "raw/+/state", counter.clone()).await;
    let stop = CancellationToken::new();
    let published = Arc::new(AtomicU64::new(0));
    let payload = vec![b'x'; 350];
    let mut pubs = Vec::new();
    for i in 0..4 {
        let mut opts = MqttOptions::new(
            format!("bench-pub-{i}-{}", rand::random::<u32>()),
            "127.0.0.1",
            port,
        );
        opts.set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (stop, published, payload) = (stop.clone(), published.clone(), payload.clone());
        pubs.push(tokio::spawn(async move {
            while eventloop.poll().await.is_ok() {}
        }));
        pubs.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                if client
                    .publish(
                        format!("raw/v{}/state", n % 1000),
                        QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r0 = counter.received.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let got = counter.received.load(Ordering::Relaxed) - r0;
    stop.cancel();
    for p in pubs {
        p.abort();
    }
    sub.abort();
    println!(
        "mosquitto alone: {:.0} msg/s delivered to one subscriber (4 QoS 1 publishers)",
        got as f64 / start.elapsed().as_secs_f64()
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("exlive_e2e: skipped (run with `cargo bench --bench exlive_e2e`)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let broker = common::Mosquitto::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let exlive_port = common::free_port();
        let config = dir.path().join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nurl = \"{}\"\nbase_topic = \"bench\"\ndiscovery = false\nclient_id = \"bench-bridge\"\n\
                 [bridge]\nstate_dir = \"{}\"\nlog_level = \"warn\"\n\
                 [exlive]\nenabled = true\nlisten = \"127.0.0.1:{exlive_port}\"\nmax_links = 20000\n\
                 [[exlive.accounts]]\nname = \"bench\"\npassword = \"bench\"\n",
                broker.url(),
                dir.path().join("state").display()
            ),
        )
        .expect("write config");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vehicle2mqtt"))
            .arg("--config")
            .arg(&config)
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn bridge");
        let bridge = common::KillOnDrop(child);
        let pid = bridge.0.id();
        assert!(common::wait_port_async(exlive_port, Duration::from_secs(10)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("bridge idle RSS (no links, external broker): {} KiB", rss_kib(pid));
        let scenarios = [
            Scenario { links: 10, rate: 1000.0, seconds: 10 },
            // Saturation: offer more than the bridge and broker can take.
            Scenario { links: 10, rate: 6000.0, seconds: 10 },
            Scenario { links: 1_000, rate: 2.0, seconds: 10 },
            Scenario { links: 10_000, rate: 1.0, seconds: 10 },
        ];
        for (i, sc) in scenarios.iter().enumerate() {
            run_scenario(broker.port, exlive_port, pid, sc, 100_000 * (i as u64 + 1)).await;
        }
        mosquitto_ingest(broker.port, 5).await;
        drop(bridge);
    });
}
