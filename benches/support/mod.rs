//! Shared pieces of the end-to-end benches: a latency-measuring subscriber, RSS of a
//! process, percentiles, and mosquitto's own ingest rate.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::exlive::sim::now_ns;

/// Resident memory, KiB: everything, and the process's own (`RssAnon`: heap, stacks),
/// without the pages of the executable it maps (about 10 MiB of a release build, shared
/// with the page cache and dropped under memory pressure).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// The most resident memory the process has had, KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Lets this process (and the children it starts, which inherit it) open `want` files:
/// the soft limit up to `want`, the hard one too where allowed (root). Returns the soft
/// limit in effect.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
pub fn raise_open_files(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if (limit.rlim_cur as u64) < want {
        let raised = libc::rlimit {
            rlim_cur: want as libc::rlim_t,
            rlim_max: limit.rlim_max.max(want as libc::rlim_t),
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            // Not allowed past the hard limit: up to it.
            let capped = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } == 0 {
                limit = capped;
            }
        }
    }
    limit.rlim_cur as u64
}

/// CPU time the process has used, seconds (user + system, from `/proc/<pid>/stat`, at
/// the usual 100 ticks a second).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |n: usize| -> f64 {
        rest.split_whitespace()
            .nth(n)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: the 12th and 13th after the name.
    (field(11) + field(12)) / 100.0
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// `VEHICLE2MQTT_BENCH_DISCOVERY=1` runs the bridge with HA discovery on (what HA users
/// run); the default leaves it off, as these benches always have.
pub fn discovery() -> bool {
    std::env::var("VEHICLE2MQTT_BENCH_DISCOVERY").is_ok_and(|v| v == "1")
}

pub struct Counter {
    pub received: AtomicU64,
    pub latencies_us: Mutex<Vec<u64>>,
    pub measuring: std::sync::atomic::AtomicBool,
}

pub async fn subscriber(
    port: u16,
    filter: &str,
    counter: Arc<Counter>,
) -> tokio::task::JoinHandle<()> {
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

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

impl Counter {
    pub fn new(measuring: bool) -> Arc<Counter> {
        Arc::new(Counter {
            received: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
            measuring: measuring.into(),
        })
    }

    /// Sorted latencies in microseconds.
    pub fn sorted_latencies(&self) -> Vec<u64> {
        let mut l = self.latencies_us.lock().unwrap().clone();
        l.sort_unstable();
        l
    }
}

/// mosquitto alone: 4 publishers at full speed (QoS 1, ~350-byte payloads like the
/// bridge's states), one subscriber counting.
pub async fn mosquitto_ingest(port: u16, seconds: u64) {
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

/// Runs `body` on a multi-threaded runtime with a fresh mosquitto, only under
/// `cargo bench` (plain `cargo test --all-targets` just says it skipped).
pub fn bench_main<F, Fut>(name: &str, body: F)
where
    F: FnOnce(u16) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    bench_main_with(name, None, body)
}

/// [`bench_main`] with mosquitto's listener settings `listener_conf` (in place of
/// `allow_anonymous true`) when given.
pub fn bench_main_with<F, Fut>(name: &str, listener_conf: Option<&str>, body: F)
where
    F: FnOnce(u16) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: skipped (run with `cargo bench --bench {name}`)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let broker = match listener_conf {
            Some(conf) => crate::common::Mosquitto::start_with(|_| conf.to_string()),
            None => crate::common::Mosquitto::start(),
        };
        body(broker.port).await;
    });
}

/// The release bridge as a process on `mqtt_port` (topics under `bench`, discovery as `discovery()` says,
/// warnings only), with `connector_toml` appended to its config file in `dir`.
pub fn spawn_bridge(
    dir: &std::path::Path,
    mqtt_port: u16,
    client_id: &str,
    connector_toml: &str,
) -> crate::common::KillOnDrop {
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nbase_topic = \"bench\"\ndiscovery = {}\nclient_id = \"{client_id}\"\n\
             [bridge]\nstate_dir = \"{}\"\nlog_level = \"warn\"\n{connector_toml}",
            discovery(),
            dir.join("state").display()
        ),
    )
    .expect("write config");
    let child = std::process::Command::new(crate::common::BIN)
        .arg("--config")
        .arg(&config)
        .spawn()
        .expect("spawn bridge");
    crate::common::KillOnDrop(child)
}
