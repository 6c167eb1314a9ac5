//! MQTT: the client, its event loop with reconnect backoff, and the embedded broker.
//!
//! One event loop (`eventloop.rs`) serves both protocols; `v5.rs` and `v4.rs` only build
//! their rumqttc client and translate what it polls. The event loop runs in its own task
//! and only forwards what it sees ([`MqttEvent`]); everything that publishes goes through
//! [`Publisher`], which never waits: when the client's bounded queue is full,
//! `try_publish` says so and the bridge decides (states coalesce to the newest, other
//! messages wait in a bounded retry queue; only overflow of that queue is dropped, logged
//! and counted). All retained state is re-published on every connection.

#[cfg(feature = "embedded-broker")]
pub mod broker;
#[cfg(feature = "embedded-broker")]
pub mod broker_door;
mod eventloop;
mod quick_ack;
mod v4;
mod v5;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rumqttc::tokio_rustls::rustls::{ClientConfig, RootCertStore};
use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{MqttConfig, MqttProtocol};
use quick_ack::QuickAck;

/// TCP_NODELAY on the broker connection: a result and the state after it are small
/// writes in a row; with Nagle the second would wait for the broker's ACK of the first.
/// (The stall measured in `cargo bench --bench command_rtt` was the other direction:
/// see `quick_ack`.)
fn network_options() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}
pub use crate::shared::{backoff_delay, Backoff};

/// Largest packet we send or accept: discovery documents and big states fit easily.
pub const MAX_PACKET_SIZE: usize = 1024 * 1024;

/// What the event loop reports to the bridge.
#[derive(Debug)]
pub enum MqttEvent {
    Connected,
    /// The broker answered a SUBSCRIBE with a failure (its ACL, usually).
    SubscribeRefused,
    Disconnected(String),
    Message {
        topic: String,
        payload: Bytes,
        retain: bool,
        /// MQTT 5 message expiry: what is left of the sender's validity.
        expires_in: Option<Duration>,
    },
}

/// How a subscription is made (MQTT 5 options; 3.1.1 has neither).
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscribeOptions {
    /// Keep the retain flag on live delivery, so a retained command is recognised even
    /// when it arrives while the bridge is connected.
    pub retain_as_published: bool,
    /// Do not send the bridge its own publishes back.
    pub no_local: bool,
}

/// The client of the protocol in use; replaced once if a broker refuses MQTT 5.
#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Counters the bridge shows as diagnostics.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Messages the MQTT client took.
    pub published: AtomicU64,
    pub dropped_publishes: AtomicU64,
    /// Intermediate states skipped because a newer one replaced them while MQTT was busy.
    pub coalesced_states: AtomicU64,
    pub dropped_messages: AtomicU64,
    pub reconnects: AtomicU64,
    /// Connections ended by an incoming message over `MAX_PACKET_SIZE`.
    pub oversized_incoming: AtomicU64,
    /// Subscriptions the broker refused (SUBACK failure).
    pub subscribe_refused: AtomicU64,
    /// 5 while speaking MQTT 5, 4 for 3.1.1, 0 before the first connection.
    pub protocol: AtomicU64,
}

/// Publishing handle. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: Arc<RwLock<Client>>,
    stats: Arc<MqttStats>,
}

impl Publisher {
    fn client(&self) -> Client {
        match self.client.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Queues a QoS 1 publish without waiting. Returns false when the client's queue is
    /// full (or the client is gone): the caller decides whether to retry or drop.
    pub fn try_publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) -> bool {
        let payload = payload.into();
        let ok = match &*self.client.read().unwrap_or_else(|p| p.into_inner()) {
            Client::V4(c) => c
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .is_ok(),
            Client::V5(c) => c
                .try_publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                )
                .is_ok(),
        };
        if ok {
            self.stats
                .published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }

    /// Counts and logs a message the bridge gave up on.
    pub fn dropped(&self, topic: &str) {
        if let Some(n) = crate::observe::count_sampled(&self.stats.dropped_publishes) {
            tracing::warn!(
                event = "mqtt_publish_dropped",
                topic,
                total_dropped = n,
                "MQTT cannot keep up; message dropped"
            );
        }
    }

    /// Subscribes without blocking the caller, but never drops the request: a spawned
    /// task waits for room in the client's queue (the event loop keeps draining it). A
    /// lost subscription would silently stop all commands.
    pub fn subscribe(&self, filter: &str, opts: SubscribeOptions) {
        let (client, filter) = (self.client(), filter.to_string());
        tokio::spawn(async move {
            let result = match client {
                Client::V4(c) => c
                    .subscribe(filter.clone(), QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string()),
                Client::V5(c) => {
                    let mut f = rumqttc::v5::mqttbytes::v5::Filter::new(
                        filter.clone(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    );
                    f.preserve_retain = opts.retain_as_published;
                    f.nolocal = opts.no_local;
                    c.subscribe_many([f]).await.map_err(|e| e.to_string())
                }
            };
            if let Err(err) = result {
                tracing::error!(event = "mqtt_subscribe_failed", filter, error = %err, "MQTT client closed; cannot subscribe");
            }
        });
    }

    pub async fn disconnect(&self) {
        let _ = match self.client() {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }

    pub fn stats(&self) -> &MqttStats {
        &self.stats
    }
}

/// Connection parameters resolved from the config: one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    /// host:port, an IPv6 host in brackets.
    pub fn address(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

/// The brokers as the status page shows them: one as `host:port` (`, TLS`), a list as
/// its addresses in the order they are tried.
pub fn describe_endpoints(endpoints: &[Endpoint]) -> String {
    match endpoints {
        [one] => format!(
            "{}:{}{}",
            one.host,
            one.port,
            if one.tls { ", TLS" } else { "" }
        ),
        list => list
            .iter()
            .map(|e| format!("{}{}", e.address(), if e.tls { " (TLS)" } else { "" }))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// What both protocol versions' clients are made from.
struct Settings {
    client_id: String,
    /// The brokers, tried in order: a failed connection moves to the next (wrapping).
    endpoints: Vec<Endpoint>,
    will_topic: String,
    login: Option<(String, String)>,
    /// Built once when any endpoint uses TLS; used by those that do.
    tls: Option<Arc<ClientConfig>>,
    queue: usize,
}

impl Settings {
    /// The endpoint at `at`, wrapping (`start` refuses an empty list).
    fn endpoint(&self, at: usize) -> &Endpoint {
        &self.endpoints[at % self.endpoints.len()]
    }

    /// The TLS configuration for `endpoint`, if it uses TLS.
    fn tls_for(&self, endpoint: &Endpoint) -> Option<Arc<ClientConfig>> {
        endpoint.tls.then(|| self.tls.clone()).flatten()
    }
}

/// Starts the client and its event loop task. `events` receives connection changes and
/// incoming messages; messages are dropped (and counted) when the bridge falls behind.
/// `endpoints` are tried in order: the first is connected to first, and every failed
/// connection (refused, timed out, dropped) makes the next reconnect go to the next one,
/// wrapping around, with the usual backoff.
/// `protocol` "auto" starts with MQTT 5 and falls back to 3.1.1 for good when the broker
/// refuses 5 before ever accepting it. `will_topic` gets a retained `offline` when the
/// connection dies without a DISCONNECT.
pub fn start(
    cfg: &MqttConfig,
    endpoints: &[Endpoint],
    protocol: MqttProtocol,
    events: mpsc::Sender<MqttEvent>,
    will_topic: String,
) -> anyhow::Result<(Publisher, JoinHandle<()>)> {
    if endpoints.is_empty() {
        anyhow::bail!("no MQTT broker to connect to");
    }
    let settings = Settings {
        client_id: cfg.client_id.clone(),
        endpoints: endpoints.to_vec(),
        will_topic,
        login: (!cfg.username.is_empty())
            .then(|| (cfg.username.clone(), cfg.password.expose().to_string())),
        tls: match endpoints.iter().any(|e| e.tls) {
            true => Some(Arc::new(tls_config(cfg.ca_file.as_deref())?)),
            false => None,
        },
        queue: cfg.queue_capacity,
    };
    let stats = Arc::new(MqttStats::default());
    let (client, task) = match protocol {
        MqttProtocol::V311 => {
            let (client, eventloop) = v4::client(&settings, 0);
            let client = Arc::new(RwLock::new(Client::V4(client)));
            let stats = stats.clone();
            let task = tokio::spawn(async move {
                eventloop::run(eventloop, &settings, 0, &events, &stats, false).await;
            });
            (client, task)
        }
        MqttProtocol::V5 | MqttProtocol::Auto => {
            let (c5, eventloop) = v5::client(&settings, 0);
            let client = Arc::new(RwLock::new(Client::V5(c5)));
            let may_fall_back = protocol == MqttProtocol::Auto;
            let (slot, stats) = (client.clone(), stats.clone());
            let task = tokio::spawn(async move {
                let ended =
                    eventloop::run(eventloop, &settings, 0, &events, &stats, may_fall_back).await;
                if let eventloop::Ended::RefusesV5 { at } = ended {
                    fall_back_to_v4(&settings, at, &slot, &events, &stats).await;
                }
            });
            (client, task)
        }
    };
    Ok((Publisher { client, stats }, task))
}

/// Replaces the MQTT 5 client with a 3.1.1 one (the broker at `at` refused 5) and runs
/// it, starting with that broker.
async fn fall_back_to_v4(
    settings: &Settings,
    at: usize,
    slot: &RwLock<Client>,
    events: &mpsc::Sender<MqttEvent>,
    stats: &MqttStats,
) {
    let (client, eventloop) = v4::client(settings, at);
    match slot.write() {
        Ok(mut c) => *c = Client::V4(client),
        Err(poisoned) => *poisoned.into_inner() = Client::V4(client),
    }
    eventloop::run(eventloop, settings, at, events, stats, false).await;
}

/// The TLS client configuration, built here rather than by rumqttc: certificates are read
/// with rustls' own PEM parser (rumqttc's path goes through the unmaintained
/// rustls-pemfile, RUSTSEC-2025-0134), a missing system store is a clear error instead of
/// rumqttc's panic, and verification is rustls 0.23's (rustls-webpki 0.103, patched for
/// RUSTSEC-2026-0049/-0098/-0099/-0104; rumqttc links 0.102 only for an error type).
pub fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<ClientConfig> {
    use rumqttc::tokio_rustls::rustls::pki_types::pem::PemObject;
    use rumqttc::tokio_rustls::rustls::pki_types::CertificateDer;
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading mqtt.ca_file {}", path.display()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("mqtt.ca_file {}: {e}", path.display()))?;
            roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                anyhow::bail!(
                    "mqtt.ca_file {} holds no usable certificate",
                    path.display()
                );
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                anyhow::bail!(
                    "TLS to the broker needs CA certificates, and this system has none (a \
                     FROM-scratch image, say): set mqtt.ca_file to the broker's CA"
                );
            }
        }
    }
    Ok(ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// Regression: with the client's queue full at (re)connect, the command subscription
    /// used to be dropped and the bridge silently stopped taking commands.
    #[tokio::test]
    async fn subscribe_is_never_dropped_when_the_queue_is_full() {
        let (tx, rx) = flume::bounded(1);
        let publisher = Publisher {
            client: Arc::new(RwLock::new(Client::V4(rumqttc::AsyncClient::from_senders(
                tx,
            )))),
            stats: Arc::new(MqttStats::default()),
        };
        assert!(
            publisher.try_publish("a/state", "x", true),
            "fills the only slot"
        );
        assert!(!publisher.try_publish("b/state", "y", true), "full now");
        publisher.subscribe("base/+/+/set", SubscribeOptions::default());
        tokio::task::yield_now().await;
        // Drain like the event loop does: the publish, then the subscription.
        let first = rx.recv_async().await.unwrap();
        assert!(matches!(first, rumqttc::Request::Publish(_)), "{first:?}");
        let second = tokio::time::timeout(Duration::from_secs(5), rx.recv_async())
            .await
            .expect("subscribe arrives")
            .unwrap();
        match second {
            rumqttc::Request::Subscribe(s) => assert_eq!(s.filters[0].path, "base/+/+/set"),
            other => panic!("expected the subscription, got {other:?}"),
        }
    }

    /// A broker that refuses MQTT 5 (CONNACK "unsupported protocol version") and takes
    /// 3.1.1: `auto` connects with 3.1.1 and the publisher speaks it from then on.
    #[tokio::test]
    async fn auto_falls_back_to_3_1_1_when_the_broker_refuses_5() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker = tokio::spawn(async move {
            let mut levels = Vec::new();
            let mut kept = Vec::new();
            while levels.last() != Some(&4) {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = socket.read(&mut buf).await.unwrap();
                let at = buf[..n].windows(4).position(|w| w == b"MQTT").unwrap();
                let level = buf[at + 4];
                levels.push(level);
                let connack: &[u8] = match level {
                    5 => &[0x20, 0x03, 0x00, 0x84, 0x00], // unsupported protocol version
                    _ => &[0x20, 0x02, 0x00, 0x00],
                };
                socket.write_all(connack).await.unwrap();
                kept.push(socket);
            }
            (levels, kept)
        });
        let cfg = MqttConfig {
            client_id: "fallback-test".into(),
            ..MqttConfig::default()
        };
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        };
        let (tx, mut rx) = mpsc::channel(8);
        let will = format!("{}/bridge/state", cfg.base_topic);
        let (publisher, task) = start(&cfg, &[endpoint], MqttProtocol::Auto, tx, will).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("connects");
        assert!(matches!(first, Some(MqttEvent::Connected)), "{first:?}");
        let (levels, _kept) = broker.await.unwrap();
        assert_eq!(levels, vec![5, 4], "one MQTT 5 attempt, then 3.1.1");
        assert_eq!(publisher.stats().protocol.load(Ordering::Relaxed), 4);
        assert!(matches!(publisher.client(), Client::V4(_)));
        assert_eq!(publisher.stats().reconnects.load(Ordering::Relaxed), 0);
        task.abort();
    }

    /// Two brokers, the first refusing connections: the client moves on to the second,
    /// and after that one drops it, back to the first (now answering).
    #[tokio::test]
    async fn a_failed_broker_moves_the_next_attempt_to_the_next_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A port nothing listens on (bound, then let go).
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let first_port = closed.local_addr().unwrap().port();
        drop(closed);
        let second = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second_port = second.local_addr().unwrap().port();
        /// Accepts one MQTT 3.1.1 CONNECT, answers CONNACK, and hands the socket back.
        async fn accept_one(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(buf[..n].windows(4).any(|w| w == b"MQTT"));
            socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            socket
        }
        let cfg = MqttConfig {
            client_id: "failover-test".into(),
            ..MqttConfig::default()
        };
        let endpoints = [first_port, second_port].map(|port| Endpoint {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        });
        let (tx, mut rx) = mpsc::channel(64);
        let will = format!("{}/bridge/state", cfg.base_topic);
        let (publisher, task) = start(&cfg, &endpoints, MqttProtocol::V311, tx, will).unwrap();
        let socket = tokio::time::timeout(Duration::from_secs(10), accept_one(&second))
            .await
            .expect("the second broker is tried after the first refuses");
        let connected = async {
            loop {
                match rx.recv().await {
                    Some(MqttEvent::Connected) => return,
                    Some(_) => {}
                    None => panic!("event loop ended"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), connected)
            .await
            .expect("connected to the second");
        assert_eq!(publisher.stats().reconnects.load(Ordering::Relaxed), 1);
        // The first comes up, the second drops the client: the next attempt is the first.
        let first = tokio::net::TcpListener::bind(("127.0.0.1", first_port))
            .await
            .unwrap();
        drop(socket);
        let _back = tokio::time::timeout(Duration::from_secs(10), accept_one(&first))
            .await
            .expect("back to the first broker after the second dropped");
        task.abort();
    }

    /// The status page's broker string: one broker as before, a list in its order.
    #[test]
    fn endpoints_are_described_as_before_or_as_a_list() {
        let e = |host: &str, port, tls| Endpoint {
            host: host.into(),
            port,
            tls,
        };
        assert_eq!(
            describe_endpoints(&[e("10.0.0.2", 1883, false)]),
            "10.0.0.2:1883"
        );
        assert_eq!(
            describe_endpoints(&[e("b.local", 8883, true)]),
            "b.local:8883, TLS"
        );
        assert_eq!(
            describe_endpoints(&[e("a", 1883, false), e("fd00::2", 8883, true)]),
            "a:1883, [fd00::2]:8883 (TLS)"
        );
    }
}
