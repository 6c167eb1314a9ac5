//! The MQTT 5 client (the default). What 5 gives the bridge over 3.1.1:
//! - Maximum Packet Size in CONNECT: the broker drops a message too big for the bridge
//!   instead of delivering it and breaking the connection;
//! - retain-as-published on the command subscription: a retained command is recognised
//!   even when it arrives live, and never executed;
//! - message expiry: what is left of a command's validity comes with it.
//!
//! A broker that refuses 5 before ever accepting it (an old broker answers the CONNECT
//! with "unacceptable protocol version", or with a 3.1.1 CONNACK the 5 parser cannot
//! read, or closes the connection) makes `auto` fall back to 3.1.1 for good.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;

use super::{Backoff, Client, MqttEvent, MqttStats, Settings, MAX_PACKET_SIZE};

pub(super) fn client(s: &Settings) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(true) // never receive commands queued while we were away
        .set_max_packet_size(Some(MAX_PACKET_SIZE as u32))
        .set_outgoing_inflight_upper_limit(1000)
        .set_last_will(LastWill::new(
            s.will_topic.clone(),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    if let Some((user, password)) = &s.login {
        opts.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    opts.set_network_options(super::network_options());
    AsyncClient::new(opts, s.queue)
}

/// Whether an error before the first MQTT 5 CONNACK means "this broker does not speak 5"
/// (rather than "the broker is down" or "the login is wrong").
fn refuses_v5(err: &ConnectionError) -> bool {
    match err {
        ConnectionError::ConnectionRefused(code) => matches!(
            code,
            ConnectReturnCode::UnsupportedProtocolVersion
                | ConnectReturnCode::RefusedProtocolVersion
                | ConnectReturnCode::ProtocolError
                | ConnectReturnCode::MalformedPacket
        ),
        // A 3.1.1 CONNACK the 5 parser cannot read, another packet, or the broker
        // closing the connection after our CONNECT.
        ConnectionError::MqttState(_) | ConnectionError::NotConnAck(_) => true,
        _ => false,
    }
}

pub(super) async fn run(
    mut eventloop: EventLoop,
    events: mpsc::Sender<MqttEvent>,
    stats: Arc<MqttStats>,
    fallback: Option<(Settings, Arc<RwLock<Client>>)>,
) {
    let mut backoff = Backoff::default();
    let mut connected_at: Option<std::time::Instant> = None;
    let mut quick_ack = super::QuickAck::default();
    let mut ever_connected = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Some(std::time::Instant::now());
                ever_connected = true;
                stats.protocol.store(5, Ordering::Relaxed);
                tracing::info!(
                    event = "mqtt_connected",
                    protocol = "5",
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                if events.send(MqttEvent::Connected).await.is_err() {
                    return;
                }
                // After the hub has heard: it subscribes without waiting for the scan.
                let (host, port) = eventloop.options.broker_address();
                quick_ack.connected(&host, port).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(topic) = String::from_utf8(p.topic.to_vec()) else {
                    continue; // MQTT topics are UTF-8; a broker that says otherwise is wrong
                };
                let expires_in = p
                    .properties
                    .as_ref()
                    .and_then(|props| props.message_expiry_interval)
                    .map(|s| Duration::from_secs(s.into()));
                let msg = MqttEvent::Message {
                    topic,
                    payload: p.payload,
                    retain: p.retain,
                    expires_in,
                };
                super::forward(&events, &stats, msg);
            }
            Ok(Event::Incoming(Packet::SubAck(ack)))
                if ack.return_codes.iter().any(|c| {
                    !matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                }) =>
            {
                if let Some(n) = crate::observe::count_sampled(&stats.subscribe_refused) {
                    tracing::error!(event = "mqtt_subscribe_refused", total_refused = n, codes = ?ack.return_codes,
                        "the broker refused a subscription: commands or Home Assistant's status cannot arrive; check the broker's ACL for this user (retried every 10 s)");
                }
                let _ = events.try_send(MqttEvent::SubscribeRefused);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(Event::Incoming(
                Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubComp(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp(_)
                | Packet::SubAck(_),
            )) => quick_ack.ack_now(),
            Ok(_) => {}
            Err(err) => {
                if events.is_closed() {
                    return;
                }
                if !ever_connected && refuses_v5(&err) {
                    if let Some((settings, slot)) = fallback {
                        tracing::warn!(event = "mqtt_v5_refused", error = %err,
                            "the broker does not accept MQTT 5; using MQTT 3.1.1 (set mqtt.protocol = \"3.1.1\" to skip this attempt)");
                        return super::fall_back_to_v4(settings, slot, events, stats).await;
                    }
                }
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                let lasted = connected_at.take().map(|t| t.elapsed()).unwrap_or_default();
                let delay = backoff.next(lasted);
                if let ConnectionError::ConnectionRefused(
                    code @ (ConnectReturnCode::BadUserNamePassword
                    | ConnectReturnCode::NotAuthorized),
                ) = &err
                {
                    tracing::error!(event = "mqtt_login_refused", code = ?code, retry_in_ms = delay.as_millis() as u64,
                        "the MQTT broker refused the login: check mqtt.username and mqtt.password (the add-on takes them from the Supervisor)");
                } else if is_oversized_incoming(&err) {
                    // The broker ignored our Maximum Packet Size.
                    stats.oversized_incoming.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(event = "mqtt_oversized_incoming", max_bytes = MAX_PACKET_SIZE, retry_in_ms = delay.as_millis() as u64,
                        "the broker sent a message larger than the bridge accepts (ignoring MQTT 5's Maximum Packet Size); \
                         usually a retained message on a `/set` topic: clear it with `mosquitto_pub -r -n -t <topic>`");
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

fn is_oversized_incoming(err: &ConnectionError) -> bool {
    matches!(
        err,
        ConnectionError::MqttState(rumqttc::v5::StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }
        ))
    )
}
