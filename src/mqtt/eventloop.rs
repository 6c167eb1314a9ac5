//! The one MQTT event loop, for 3.1.1 and 5 alike: reconnect backoff, quick ACKs,
//! forwarding [`MqttEvent`]s, logs and counters. A protocol ([`Connection`], in `v4.rs`
//! and `v5.rs`) only translates what its rumqttc event loop polls into [`Polled`], says
//! what kind of failure an error is ([`Failure`]) and whether it means "no MQTT 5 here".

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Backoff, Endpoint, MqttEvent, MqttStats, QuickAck, Settings, MAX_PACKET_SIZE};

/// What one poll of a protocol's event loop means to the bridge.
pub(super) enum Polled {
    /// A CONNACK.
    Connected {
        session_present: bool,
    },
    Message {
        topic: String,
        payload: Bytes,
        retain: bool,
        expires_in: Option<Duration>,
    },
    /// A SUBACK with a failure; `codes` as the protocol prints them, when it has any.
    SubscribeRefused {
        codes: Option<String>,
    },
    /// A packet the bridge sends nothing back for (PUBACK, PUBREC, PUBCOMP, UNSUBACK,
    /// PINGRESP, a good SUBACK): the broker's segment is acknowledged at once.
    Unanswered,
    /// Our own DISCONNECT went out (shutdown): the broker discards the will.
    Disconnected,
    Other,
}

/// What a connection error means, as far as the loop acts on it.
pub(super) enum Failure {
    /// The broker refused the login; `code` is its reason.
    LoginRefused {
        code: String,
    },
    /// A message over `MAX_PACKET_SIZE` ended the connection.
    OversizedIncoming,
    Other,
}

/// A protocol's rumqttc event loop, seen through what the loop needs.
pub(super) trait Connection {
    type Error: Display;
    /// "5" or "3.1.1", for the log.
    const PROTOCOL: &'static str;
    /// What `MqttStats::protocol` shows while connected.
    const VERSION: u64;
    /// The log line of an oversized incoming message: why it could happen.
    const OVERSIZED_MESSAGE: &'static str;

    fn poll(&mut self) -> impl Future<Output = Result<Polled, Self::Error>> + Send;
    fn broker_address(&self) -> (String, u16);
    /// Makes the next connect go to `endpoint` (called after a failure, when the
    /// connection is gone).
    fn set_broker(&mut self, s: &Settings, endpoint: &Endpoint);
    fn classify(err: &Self::Error) -> Failure;
    /// Whether an error before the first CONNACK means "this broker does not speak 5"
    /// (rather than "the broker is down" or "the login is wrong").
    fn refuses_v5(_err: &Self::Error) -> bool {
        false
    }
}

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Shutdown: our disconnect, or the bridge stopped listening.
    Stopped,
    /// The broker refused MQTT 5 before ever accepting it, and the caller may fall back;
    /// `at` is that broker's place in `Settings::endpoints`.
    RefusesV5 { at: usize },
}

/// Runs `conn`, connecting to `settings.endpoint(at)` first, until shutdown. After every
/// failed connection (refused, timed out, dropped) the next attempt goes to the next
/// endpoint, wrapping around. `may_fall_back`: a broker that refuses MQTT 5 before ever
/// accepting it ends the loop with [`Ended::RefusesV5`] instead of being retried.
pub(super) async fn run<C: Connection>(
    mut conn: C,
    settings: &Settings,
    mut at: usize,
    events: &mpsc::Sender<MqttEvent>,
    stats: &MqttStats,
    may_fall_back: bool,
) -> Ended {
    // The backoff resets only after a connection that lasted a minute: a broker that
    // accepts and then drops the bridge at once (a retained message over the size limit on
    // a subscribed topic, a duplicate client id) is retried ever more slowly, not in a loop.
    let mut backoff = Backoff::default();
    let mut connected_at: Option<Instant> = None;
    let mut quick_ack = QuickAck::default();
    let mut ever_connected = false;
    // Moves to another broker since the last connection: the log is sampled (1st, 2nd,
    // 4th ...) so a long outage of every broker costs a few lines.
    let moves = AtomicU64::new(0);
    loop {
        match conn.poll().await {
            Ok(Polled::Connected { session_present }) => {
                connected_at = Some(Instant::now());
                ever_connected = true;
                moves.store(0, Ordering::Relaxed);
                stats.protocol.store(C::VERSION, Ordering::Relaxed);
                tracing::info!(
                    event = "mqtt_connected",
                    protocol = C::PROTOCOL,
                    session_present,
                    broker = %settings.endpoint(at).address(),
                    "connected to MQTT broker"
                );
                if events.send(MqttEvent::Connected).await.is_err() {
                    return Ended::Stopped;
                }
                // After the hub has heard: it subscribes without waiting for the scan.
                let (host, port) = conn.broker_address();
                quick_ack.connected(&host, port).await;
            }
            Ok(Polled::Message {
                topic,
                payload,
                retain,
                expires_in,
            }) => {
                let msg = MqttEvent::Message {
                    topic,
                    payload,
                    retain,
                    expires_in,
                };
                forward(events, stats, msg).await;
            }
            Ok(Polled::SubscribeRefused { codes }) => {
                if let Some(n) = crate::observe::count_sampled(&stats.subscribe_refused) {
                    tracing::error!(event = "mqtt_subscribe_refused", total_refused = n, codes = codes.as_deref().map(tracing::field::display),
                        "the broker refused a subscription: commands or Home Assistant's status cannot arrive; check the broker's ACL for this user (retried every 10 s)");
                }
                let _ = events.try_send(MqttEvent::SubscribeRefused);
            }
            Ok(Polled::Disconnected) => return Ended::Stopped,
            Ok(Polled::Unanswered) => quick_ack.ack_now(),
            Ok(Polled::Other) => {}
            Err(err) => {
                if events.is_closed() {
                    return Ended::Stopped;
                }
                if may_fall_back && !ever_connected && C::refuses_v5(&err) {
                    tracing::warn!(event = "mqtt_v5_refused", error = %err,
                        "the broker does not accept MQTT 5; using MQTT 3.1.1 (set mqtt.protocol = \"3.1.1\" to skip this attempt)");
                    return Ended::RefusesV5 { at };
                }
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                let lasted = connected_at.take().map(|t| t.elapsed()).unwrap_or_default();
                let delay = backoff.next(lasted);
                let retry_in_ms = delay.as_millis() as u64;
                match C::classify(&err) {
                    Failure::LoginRefused { code } => {
                        tracing::error!(event = "mqtt_login_refused", code = %code, retry_in_ms,
                            "the MQTT broker refused the login: check mqtt.username and mqtt.password (the add-on takes them from the Supervisor)");
                    }
                    Failure::OversizedIncoming => {
                        stats.oversized_incoming.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            event = "mqtt_oversized_incoming",
                            max_bytes = MAX_PACKET_SIZE,
                            retry_in_ms,
                            "{}",
                            C::OVERSIZED_MESSAGE
                        );
                    }
                    Failure::Other => {
                        tracing::warn!(event = "mqtt_connection_error", error = %err, retry_in_ms,
                            "MQTT connection lost or refused");
                    }
                }
                let _ = events.try_send(MqttEvent::Disconnected(err.to_string()));
                if settings.endpoints.len() > 1 {
                    let from = settings.endpoint(at).address();
                    at = (at + 1) % settings.endpoints.len();
                    let next = settings.endpoint(at);
                    conn.set_broker(settings, next);
                    if let Some(n) = crate::observe::count_sampled(&moves) {
                        tracing::warn!(event = "mqtt_broker_next", from = %from, broker = %next.address(),
                            tls = next.tls, retry_in_ms, total_moves = n,
                            "MQTT broker {from} failed; the next attempt goes to {}", next.address());
                    }
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How long an incoming message waits for room in the bridge's queue before it is dropped.
/// A burst (a cluster's claims at start, a fleet's commands at once) waits: the broker
/// holds the rest meanwhile, and nothing is lost. Only a bridge stuck for this long loses
/// messages; the wait stays well inside the 30 s keepalive.
const FORWARD_WAIT: Duration = Duration::from_secs(5);

/// Hands an incoming message to the bridge, waiting up to [`FORWARD_WAIT`] while it is
/// behind; past that the message is dropped, counted and logged (sparsely).
async fn forward(events: &mpsc::Sender<MqttEvent>, stats: &MqttStats, msg: MqttEvent) {
    let msg = match events.try_send(msg) {
        Err(mpsc::error::TrySendError::Full(msg)) => msg,
        _ => return,
    };
    if let Ok(Err(_)) | Err(_) = tokio::time::timeout(FORWARD_WAIT, events.send(msg)).await {
        if let Some(n) = crate::observe::count_sampled(&stats.dropped_messages) {
            tracing::warn!(
                event = "mqtt_message_dropped",
                total_dropped = n,
                "bridge stuck for 5 s; incoming MQTT message dropped"
            );
        }
    }
}
