//! End-to-end iauto360 fleet benchmark: the real bridge process polls N OBD boxes on the
//! fake platform (in this process, over real HTTP) every second and publishes their state
//! to a real mosquitto. Prints the signed calls served per second, states delivered per
//! second, and the bridge's CPU and RSS.
//!
//! Run: `cargo bench --bench iauto360_e2e` (needs mosquitto).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vehicle2mqtt::connectors::iauto360::sim::{FakeIauto360, FakeOptions};

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

async fn scenario(mqtt_port: u16, devices: usize, seconds: u64) {
    let esns: Vec<String> = (0..devices).map(|i| format!("86543210{i:07}")).collect();
    let platform = FakeIauto360::start(
        FakeOptions {
            devices: esns.clone(),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("fake platform");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut section = format!(
        "[iauto360]\nenabled = true\nbase_url = \"{}\"\nopen_id = \"OPEN123\"\nsecure_code = \"SECRETcode\"\n\
         poll_interval = \"1s\"\npoll_interval_active = \"1s\"\ndetail_interval = \"1h\"\n",
        platform.url()
    );
    for esn in &esns {
        section.push_str(&format!("[[iauto360.devices]]\nesn = \"{esn}\"\n"));
    }
    let counter = support::Counter::new(false);
    let sub = support::subscriber(mqtt_port, "bench/+/state", counter.clone()).await;
    let bridge = support::spawn_bridge(
        dir.path(),
        mqtt_port,
        &format!("bench-ia{devices}"),
        &section,
    );
    let pid = bridge.0.id();
    // Ramp: first polls are spread over 0.5 s, then one detail round (8 calls) per box.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let calls = |p: &FakeIauto360| p.calls().by_service.get(&1011).copied().unwrap_or(0);
    let (calls0, cpu0) = (calls(&platform), cpu_ticks(pid));
    counter.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counter.measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let served = calls(&platform) - calls0;
    let cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0 / elapsed * 100.0;
    let received = counter.received.load(Ordering::Relaxed);
    let c = platform.calls();
    println!(
        "boxes={devices:>5}  1011 polls={:>6.0}/s (wanted {devices}/s)  states delivered={:>6.0}/s  bridge CPU={cpu:>5.1}%  RSS={} MiB  (bad signatures={}, stale={})",
        served as f64 / elapsed,
        received as f64 / elapsed,
        support::rss_kib(pid) / 1024,
        c.bad_signatures,
        c.stale_time,
    );
    drop(bridge);
    sub.abort();
}

fn main() {
    support::bench_main("iauto360_e2e", |mqtt_port| async move {
        for devices in [100, 1_000, 3_000] {
            scenario(mqtt_port, devices, 10).await;
        }
    });
}
