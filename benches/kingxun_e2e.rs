//! End-to-end kingxun benchmark: N simulated devices send 1002 status frames into the
//! real bridge process, which publishes state to a real mosquitto, where a subscriber
//! counts and measures frame → subscriber latency (send time travels in the battery id).
//!
//! Run: `cargo bench --bench kingxun_e2e` (needs mosquitto).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::kingxun::sim::{config_toml, SimOptions, SimStats};

const SEED: u64 = 4242;

async fn scenario(
    mqtt_port: u16,
    kx_port: u16,
    pid: u32,
    devices: usize,
    interval: Duration,
    seconds: u64,
) {
    let counter = support::Counter::new(false);
    let sub = support::subscriber(mqtt_port, "bench/+/state", counter.clone()).await;
    let stats = Arc::new(SimStats::default());
    let stop = CancellationToken::new();
    let opts = SimOptions {
        server: format!("127.0.0.1:{kx_port}"),
        devices,
        first_id: 1,
        key_seed: SEED,
        interval,
        trip_every: 0,
        answer_commands: true,
        stamp: true,
        profile: Default::default(),
        plain_status: false,
        drive: None,
    };
    let sim = tokio::spawn(vehicle2mqtt::connectors::kingxun::sim::run(
        opts,
        stats.clone(),
        stop.clone(),
    ));
    let ramp_end = Instant::now() + Duration::from_secs(60);
    while (stats.registered.load(Ordering::Relaxed) + stats.refused.load(Ordering::Relaxed))
        < devices as u64
        && Instant::now() < ramp_end
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_connected = support::rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent0 = stats.statuses.load(Ordering::Relaxed);
    counter.measuring.store(true, Ordering::Relaxed);
    let cpu0 = support::cpu_seconds(pid);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counter.measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (support::cpu_seconds(pid) - cpu0) / elapsed * 100.0;
    let sent = stats.statuses.load(Ordering::Relaxed) - sent0;
    let received = counter.received.load(Ordering::Relaxed);
    let rss_loaded = support::rss_kib(pid);
    let anon_loaded = support::rss_anon_kib(pid);
    let lat = counter.sorted_latencies();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), sim).await;
    sub.abort();
    println!(
        "devices={:>6} every {:?}: frames sent={:>7.0}/s delivered={:>7.0}/s  p50={:>6.1} ms p99={:>7.1} ms  bridge CPU {:.0} % of a core, RSS: all linked, idle={} MiB, loaded={} MiB (own {} MiB)  (registered={}, errors={})",
        devices,
        interval,
        sent as f64 / elapsed,
        received as f64 / elapsed,
        support::percentile(&lat, 0.50) as f64 / 1000.0,
        support::percentile(&lat, 0.99) as f64 / 1000.0,
        cpu,
        rss_connected / 1024,
        rss_loaded / 1024,
        anon_loaded / 1024,
        stats.registered.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    );
}

fn main() {
    support::bench_main("kingxun_e2e", |mqtt_port| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let kx_port = common::free_port();
        let devices = config_toml(&SimOptions {
            devices: 10_000,
            first_id: 1,
            key_seed: SEED,
            ..Default::default()
        });
        let bridge = support::spawn_bridge(
            dir.path(),
            mqtt_port,
            "bench-kx",
            &format!("[kingxun]\nenabled = true\nlisten = \"127.0.0.1:{kx_port}\"\nmax_links = 20000\nmax_links_per_address = 20000\n\n{devices}"),
        );
        let pid = bridge.0.id();
        assert!(common::wait_port_async(kx_port, Duration::from_secs(20)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = support::rss_kib(pid);
        // The bridge hands freed memory back 20 s after its start: what it keeps is the figure.
        tokio::time::sleep(Duration::from_secs(31)).await;
        println!(
            "bridge RSS, 10 000 devices configured, none linked: {} MiB, own {} MiB (1 s after start: {} MiB); discovery {}",
            support::rss_kib(pid) / 1024,
            support::rss_anon_kib(pid) / 1024,
            started / 1024,
            if support::discovery() { "on" } else { "off" }
        );
        scenario(mqtt_port, kx_port, pid, 1_000, Duration::from_secs(1), 10).await;
        scenario(mqtt_port, kx_port, pid, 10_000, Duration::from_secs(1), 10).await;
        // The figure: 10 000 linked, each reporting every 5 s, measured once the
        // bridge has handed back what the ramp-up freed.
        scenario(mqtt_port, kx_port, pid, 10_000, Duration::from_secs(5), 35).await;
        drop(bridge);
    });
}
