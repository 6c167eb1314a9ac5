//! MQTT: the client, its event loop with reconnect backoff, and the embedded broker.
//!
//! The event loop runs in its own task and only forwards what it sees ([`MqttEvent`]);
//! everything that publishes goes through [`Publisher`], which never waits: when the
//! client's bounded queue is full, `try_publish` says so and the bridge decides (states
//! coalesce to the newest, other messages wait in a bounded retry queue; only overflow of
//! that queue is dropped, logged and counted). All retained state is re-published on
//! every connection.

#[cfg(feature = "embedded-broker")]
pub mod broker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use rand::Rng;
use rumqttc::tokio_rustls::rustls::{ClientConfig, RootCertStore};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::MqttConfig;

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
    },
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
}

/// Publishing handle. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    stats: Arc<MqttStats>,
}

impl Publisher {
    /// Queues a QoS 1 publish without waiting. Returns false when the client's queue is
    /// full (or the client is gone): the caller decides whether to retry or drop.
    pub fn try_publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) -> bool {
        let ok = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .is_ok();
        if ok {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
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
    pub fn subscribe(&self, filter: &str) {
        let (client, filter) = (self.client.clone(), filter.to_string());
        tokio::spawn(async move {
            if let Err(err) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                tracing::error!(event = "mqtt_subscribe_failed", filter, error = %err, "MQTT client closed; cannot subscribe");
            }
        });
    }

    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }

    pub fn stats(&self) -> &MqttStats {
        &self.stats
    }
}

/// Connection parameters resolved from the config.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Starts the client and its event loop task. `events` receives connection changes and
/// incoming messages; messages are dropped (and counted) when the bridge falls behind.
pub fn start(
    cfg: &MqttConfig,
    endpoint: &Endpoint,
    events: mpsc::Sender<MqttEvent>,
) -> anyhow::Result<(Publisher, JoinHandle<()>)> {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), endpoint.host.clone(), endpoint.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true) // never receive commands queued while we were away
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        // QoS 1 throughput on one connection is bound by the in-flight window.
        .set_inflight(1000)
        .set_last_will(LastWill::new(
            format!("{}/bridge/state", cfg.base_topic),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if !cfg.username.is_empty() {
        opts.set_credentials(cfg.username.clone(), cfg.password.expose().to_string());
    }
    if endpoint.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(cfg.ca_file.as_deref())?),
        )));
    }
    let (client, eventloop) = AsyncClient::new(opts, cfg.queue_capacity);
    let stats = Arc::new(MqttStats::default());
    let task = tokio::spawn(run_event_loop(eventloop, events, stats.clone()));
    Ok((Publisher { client, stats }, task))
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

/// Whether the connection ended because an incoming packet was over `MAX_PACKET_SIZE`.
fn is_oversized_incoming(err: &rumqttc::ConnectionError) -> bool {
    matches!(
        err,
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

/// Exponential backoff with full jitter: 0.5 s doubling to 30 s.
pub fn backoff_delay(attempt: u32) -> Duration {
    let cap_ms = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
    Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms))
}

/// Reconnect backoff for upstream sessions: a session that lasted a minute resets it.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next attempt, given how long the last session lasted.
    pub fn next(&mut self, session: Duration) -> Duration {
        if session > Duration::from_secs(60) {
            self.attempt = 0;
        }
        let delay = backoff_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

async fn run_event_loop(
    mut eventloop: rumqttc::EventLoop,
    events: mpsc::Sender<MqttEvent>,
    stats: Arc<MqttStats>,
) {
    // The backoff resets only after a connection that lasted a minute: a broker that
    // accepts and then drops the bridge at once (a retained message over the size limit on
    // a subscribed topic, a duplicate client id) is retried ever more slowly, not in a loop.
    let mut backoff = Backoff::default();
    let mut connected_at: Option<std::time::Instant> = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Some(std::time::Instant::now());
                tracing::info!(
                    event = "mqtt_connected",
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                if events.send(MqttEvent::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic;
                let msg = MqttEvent::Message {
                    topic,
                    payload: p.payload,
                    retain: p.retain,
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(msg) {
                    if let Some(n) = crate::observe::count_sampled(&stats.dropped_messages) {
                        tracing::warn!(
                            event = "mqtt_message_dropped",
                            total_dropped = n,
                            "bridge busy; incoming MQTT message dropped"
                        );
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack)))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                if let Some(n) = crate::observe::count_sampled(&stats.subscribe_refused) {
                    tracing::error!(event = "mqtt_subscribe_refused", total_refused = n,
                        "the broker refused a subscription: commands or Home Assistant's status cannot arrive; check the broker's ACL for this user (retried every 10 s)");
                }
                let _ = events.try_send(MqttEvent::SubscribeRefused);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                // Our own clean disconnect (shutdown): the broker discards the will.
                return;
            }
            Ok(_) => {}
            Err(err) => {
                if events.is_closed() {
                    return;
                }
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                let lasted = connected_at.take().map(|t| t.elapsed()).unwrap_or_default();
                let delay = backoff.next(lasted);
                if is_oversized_incoming(&err) {
                    stats.oversized_incoming.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(event = "mqtt_oversized_incoming", max_bytes = MAX_PACKET_SIZE, retry_in_ms = delay.as_millis() as u64,
                        "the broker sent a message larger than the bridge accepts, which ends the connection (MQTT 3.1.1 cannot refuse it); \
                         usually a retained message on a `/set` topic: clear it with `mosquitto_pub -r -n -t <topic>`, or set the broker's message_size_limit");
                } else if let rumqttc::ConnectionError::ConnectionRefused(
                    code @ (rumqttc::ConnectReturnCode::BadUserNamePassword
                    | rumqttc::ConnectReturnCode::NotAuthorized),
                ) = &err
                {
                    tracing::error!(event = "mqtt_login_refused", code = ?code, retry_in_ms = delay.as_millis() as u64,
                        "the MQTT broker refused the login: check mqtt.username and mqtt.password (the add-on takes them from the Supervisor)");
                } else {
                    tracing::warn!(event = "mqtt_connection_error", error = %err, retry_in_ms = delay.as_millis() as u64,
                        "MQTT connection lost or refused");
                }
                let _ = events.try_send(MqttEvent::Disconnected(err.to_string()));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with the client's queue full at (re)connect, the command subscription
    /// used to be dropped and the bridge silently stopped taking commands.
    #[tokio::test]
    async fn subscribe_is_never_dropped_when_the_queue_is_full() {
        let (tx, rx) = flume::bounded(1);
        let publisher = Publisher {
            client: AsyncClient::from_senders(tx),
            stats: Arc::new(MqttStats::default()),
        };
        assert!(
            publisher.try_publish("a/state", "x", true),
            "fills the only slot"
        );
        assert!(!publisher.try_publish("b/state", "y", true), "full now");
        publisher.subscribe("base/+/+/set");
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

    #[test]
    fn session_backoff_resets_after_a_long_session() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next(Duration::from_secs(1));
        }
        assert!(
            b.next(Duration::from_secs(1)) >= Duration::from_secs(15),
            "grown"
        );
        assert!(
            b.next(Duration::from_secs(120)) <= Duration::from_millis(500),
            "reset by a long session"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff_delay(attempt);
            let cap = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
            assert!(
                d.as_millis() as u64 >= cap / 2 && d.as_millis() as u64 <= cap,
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff_delay(30) <= Duration::from_secs(30));
    }
}
