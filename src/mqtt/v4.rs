//! The MQTT 3.1.1 client: for brokers that refuse MQTT 5, the embedded broker, and
//! `mqtt.protocol = "3.1.1"`. 3.1.1 cannot tell the broker how big a message the bridge
//! takes, so an oversized one ends the connection: counted, named in the log, and
//! retried ever more slowly instead of in a loop.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, QoS, TlsConfiguration, Transport,
};

use super::eventloop::{Connection, Failure, Polled};
use super::{Endpoint, Settings, MAX_PACKET_SIZE};

/// The client and its event loop, connecting to the endpoint at `at` first.
pub(super) fn client(s: &Settings, at: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options(s, s.endpoint(at)), s.queue);
    eventloop.set_network_options(super::network_options());
    (client, eventloop)
}

/// Everything the client connects with, to `endpoint`.
fn options(s: &Settings, endpoint: &Endpoint) -> MqttOptions {
    let mut opts = MqttOptions::new(s.client_id.clone(), endpoint.host.clone(), endpoint.port);
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
    if let Some(tls) = s.tls_for(endpoint) {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    opts
}

impl Connection for EventLoop {
    type Error = ConnectionError;
    const PROTOCOL: &'static str = "3.1.1";
    const VERSION: u64 = 4;
    const OVERSIZED_MESSAGE: &'static str =
        "the broker sent a message larger than the bridge accepts, which ends the connection (MQTT 3.1.1 cannot refuse it); \
         usually a retained message on a `/set` topic: clear it with `mosquitto_pub -r -n -t <topic>`, or set the broker's message_size_limit";

    async fn poll(&mut self) -> Result<Polled, ConnectionError> {
        Ok(match EventLoop::poll(self).await? {
            Event::Incoming(Packet::ConnAck(ack)) => Polled::Connected {
                session_present: ack.session_present,
            },
            Event::Incoming(Packet::Publish(p)) => Polled::Message {
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
                expires_in: None,
            },
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
            {
                Polled::SubscribeRefused { codes: None }
            }
            Event::Outgoing(rumqttc::Outgoing::Disconnect) => Polled::Disconnected,
            Event::Incoming(
                Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubComp(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp
                | Packet::SubAck(_),
            ) => Polled::Unanswered,
            _ => Polled::Other,
        })
    }

    fn broker_address(&self) -> (String, u16) {
        self.mqtt_options.broker_address()
    }

    fn set_broker(&mut self, s: &Settings, endpoint: &Endpoint) {
        // Read at the next connect; the session state is kept (clean session anyway).
        self.mqtt_options = options(s, endpoint);
    }

    fn classify(err: &ConnectionError) -> Failure {
        match err {
            ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_),
            )) => Failure::OversizedIncoming,
            ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ) => Failure::LoginRefused {
                code: format!("{code:?}"),
            },
            _ => Failure::Other,
        }
    }
}
