//! Command round trip: an MQTT client publishes LOCK / UNLOCK for a simulated kingxun
//! device linked to the real bridge process, and measures until the bridge's final
//! `command/result` arrives (MQTT publish → bridge → device 2002 → answer → bridge →
//! result). mosquitto runs as installed (Nagle on); the client publishes at QoS 0 as
//! Home Assistant does, with TCP_NODELAY; a Nagle / delayed-ACK stall shows as ~40 ms.
//!
//! Run: `cargo bench --bench command_rtt` (needs mosquitto).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::kingxun::sim::{config_toml, SimOptions, SimStats};

const SEED: u64 = 77;
const ROUND_TRIPS: usize = 300;
/// Home Assistant's MQTT lock publishes its commands at QoS 0 (its default `qos`); at
/// QoS 1 the client's own delayed ACK of the broker's PUBACK stalls the broker's next
/// write to it, the result (~40 ms, the client's and broker's, not the bridge's).
const CLIENTS: [(&str, QoS); 2] = [
    ("QoS 0 (as HA)", QoS::AtMostOnce),
    ("QoS 1", QoS::AtLeastOnce),
];

fn main() {
    support::bench_main("command_rtt", |mqtt_port| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let kx_port = common::free_port();
        let sim_opts = SimOptions {
            server: format!("127.0.0.1:{kx_port}"),
            devices: 1,
            first_id: 1,
            key_seed: SEED,
            interval: Duration::from_secs(60),
            trip_every: 0,
            answer_commands: true,
            stamp: false,
            profile: Default::default(),
            plain_status: false,
            drive: None,
        };
        let devices = config_toml(&sim_opts);
        let _bridge = support::spawn_bridge(
            dir.path(),
            mqtt_port,
            "bench-rtt",
            &format!("[kingxun]\nenabled = true\nlisten = \"127.0.0.1:{kx_port}\"\n\n{devices}"),
        );
        assert!(common::wait_port_async(kx_port, Duration::from_secs(20)).await);
        let stats = Arc::new(SimStats::default());
        let stop = CancellationToken::new();
        let sim = tokio::spawn(vehicle2mqtt::connectors::kingxun::sim::run(
            sim_opts,
            stats.clone(),
            stop.clone(),
        ));

        let opts = MqttOptions::new(
            format!("rtt-{}", rand::random::<u32>()),
            "127.0.0.1",
            mqtt_port,
        );
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        // A client that does not stall itself: its own Nagle would hold a command behind
        // its PUBACK of the last result (paho-mqtt, HA's client, leaves Nagle on: there
        // the client's own ~40 ms remains, whatever the bridge does).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, mut results) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let events = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&p.payload).unwrap_or_default();
                        let id = v["id"].as_str().unwrap_or_default().to_string();
                        let status = v["status"].as_str().unwrap_or_default().to_string();
                        let _ = tx.send((id, status));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        client
            .subscribe("bench/kx1/command/result", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let mut n = 0u64;
        for (label, qos) in CLIENTS {
            // The device is linked once a command on it succeeds.
            let mut latencies = Vec::with_capacity(ROUND_TRIPS);
            let mut failures = 0;
            let warmup_end = Instant::now() + Duration::from_secs(30);
            while latencies.len() < ROUND_TRIPS {
                n += 1;
                let id = format!("rtt-{n}");
                let action = if n.is_multiple_of(2) {
                    "LOCK"
                } else {
                    "UNLOCK"
                };
                let payload = format!(r#"{{"action":"{action}","id":"{id}"}}"#);
                let sent = Instant::now();
                client
                    .publish("bench/kx1/lock/set", qos, false, payload)
                    .await
                    .expect("publish");
                let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some((got, status)) = results.recv().await {
                        if got == id && status != "accepted" {
                            return status;
                        }
                    }
                    String::new()
                })
                .await
                .unwrap_or_default();
                if outcome == "succeeded" {
                    latencies.push(sent.elapsed().as_micros() as u64);
                } else if Instant::now() < warmup_end && latencies.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await; // not linked yet
                } else {
                    failures += 1;
                }
            }
            latencies.sort_unstable();
            println!(
            "kingxun LOCK/UNLOCK round trip, MQTT publish → command/result succeeded, {} commands at {label}, client with TCP_NODELAY, default mosquitto: p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms (failed {failures})",
            latencies.len(),
            support::percentile(&latencies, 0.50) as f64 / 1000.0,
            support::percentile(&latencies, 0.90) as f64 / 1000.0,
            support::percentile(&latencies, 0.99) as f64 / 1000.0,
            latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
        }
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), sim).await;
        events.abort();
    });
}
