//! End-to-end EXLIVE benchmark: N simulated links stream 1007 (newline-terminated) into
//! the real bridge process, which publishes state to a real mosquitto, where a
//! subscriber counts messages and measures latency (send time travels in `posinfo`).
//! Also measures mosquitto's own ingest rate on the same machine for comparison.
//!
//! Run: `cargo bench --bench exlive_e2e` (needs mosquitto). Under `cargo test` it only
//! checks that it builds.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::exlive::sim::{SimOptions, SimStats};

struct Scenario {
    links: usize,
    rate: f64,
    seconds: u64,
}

async fn run_scenario(port: u16, exlive_port: u16, bridge_pid: u32, sc: &Scenario, first_id: u64) {
    let counter = support::Counter::new(false);
    let sub = support::subscriber(port, "bench/+/state", counter.clone()).await;
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
        drive: None,
    };
    let sim = tokio::spawn(vehicle2mqtt::connectors::exlive::sim::run(
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
    let rss_loaded = support::rss_kib(bridge_pid);
    let lat = counter.sorted_latencies();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), sim).await;
    sub.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = support::rss_kib(bridge_pid);
    println!(
        "links={:>6} offered={:>8.0} msg/s sent={:>8.0} msg/s delivered={:>8.0} msg/s  p50={:>6.1} ms p99={:>7.1} ms  bridge RSS loaded={} MiB, after links closed={} MiB  (logged_in={}, errors={})",
        sc.links,
        sc.links as f64 * sc.rate,
        sent as f64 / elapsed,
        received as f64 / elapsed,
        support::percentile(&lat, 0.50) as f64 / 1000.0,
        support::percentile(&lat, 0.99) as f64 / 1000.0,
        rss_loaded / 1024,
        rss_after / 1024,
        stats.logged_in.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    );
}

fn main() {
    support::bench_main("exlive_e2e", |mqtt_port| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let exlive_port = common::free_port();
        let bridge = support::spawn_bridge(
            dir.path(),
            mqtt_port,
            "bench-bridge",
            &format!(
                "[exlive]\nenabled = true\nlisten = \"127.0.0.1:{exlive_port}\"\nmax_links = 20000\nmax_links_per_address = 20000\n\
                 [[exlive.accounts]]\nname = \"bench\"\npassword = \"bench\"\n"
            ),
        );
        let pid = bridge.0.id();
        assert!(common::wait_port_async(exlive_port, Duration::from_secs(10)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "bridge idle RSS (no links, external broker): {} KiB",
            support::rss_kib(pid)
        );
        let scenarios = [
            // Idle: links logged in, one position per minute each.
            Scenario {
                links: 10,
                rate: 1.0 / 60.0,
                seconds: 5,
            },
            Scenario {
                links: 10,
                rate: 1000.0,
                seconds: 10,
            },
            // Saturation: offer more than the bridge and broker can take.
            Scenario {
                links: 10,
                rate: 6000.0,
                seconds: 10,
            },
            Scenario {
                links: 1_000,
                rate: 2.0,
                seconds: 10,
            },
            Scenario {
                links: 10_000,
                rate: 1.0 / 60.0,
                seconds: 5,
            },
            Scenario {
                links: 10_000,
                rate: 1.0,
                seconds: 10,
            },
        ];
        for (i, sc) in scenarios.iter().enumerate() {
            run_scenario(mqtt_port, exlive_port, pid, sc, 100_000 * (i as u64 + 1)).await;
        }
        support::mosquitto_ingest(mqtt_port, 5).await;
        drop(bridge);
    });
}
