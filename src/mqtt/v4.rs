//! The MQTT 3.1.1 client: for brokers that refuse MQTT 5, the embedded broker, and
//! `mqtt.protocol = "3.1.1"`. 3.1.1 cannot tell the broker how big a message the bridge
//! takes, so an oversized one ends the connection: counted, named in the log, and
//! retried ever more slowly instead of in a loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;

use super::{Backoff, MqttEvent, MqttStats, Settings, MAX_PACKET_SIZE};

pub(super) fn client(s: &Settings) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true) // never receive commands queued while we were away
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        // QoS 1 throughput on one connection is bound by the in-flight window.
        .set_inflight(1000)
        .set_last_will(LastWill::new(
            s.will_topic.clone(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    if let Some((user, password)) = &s.login {
        opts.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, s.queue);
    eventloop.set_network_options(super::network_options());
    (client, eventloop)
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

pub(super) async fn run(
    mut eventloop: rumqttc::EventLoop,
    events: mpsc::Sender<MqttEvent>,
    stats: Arc<MqttStats>,
) {
    // The backoff resets only after a connection that lasted a minute: a broker that
    // accepts and then drops the bridge at once (a retained message over the size limit on
    // a subscribed topic, a duplicate client id) is retried ever more slowly, not in a loop.
    let mut backoff = Backoff::default();
    let mut connected_at: Option<std::time::Instant> = None;
    let mut quick_ack = super::QuickAck::default();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Some(std::time::Instant::now());
                stats.protocol.store(4, Ordering::Relaxed);
                tracing::info!(
                    event = "mqtt_connected",
                    protocol = "3.1.1",
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                if events.send(MqttEvent::Connected).await.is_err() {
                    return;
                }
                // After the hub has heard: it subscribes without waiting for the scan.
                let (host, port) = eventloop.mqtt_options.broker_address();
                quick_ack.connected(&host, port).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic;
                let msg = MqttEvent::Message {
                    topic,
                    payload: p.payload,
                    retain: p.retain,
                    expires_in: None,
                };
                super::forward(&events, &stats, msg);
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
            Ok(Event::Incoming(
                Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubComp(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp
                | Packet::SubAck(_),
            )) => quick_ack.ack_now(),
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
