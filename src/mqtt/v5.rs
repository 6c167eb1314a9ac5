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

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

use super::eventloop::{Connection, Failure, Polled};
use super::{Endpoint, Settings, MAX_PACKET_SIZE};

/// The client and its event loop, connecting to the endpoint at `at` first.
pub(super) fn client(s: &Settings, at: usize) -> (AsyncClient, EventLoop) {
    AsyncClient::new(options(s, s.endpoint(at)), s.queue)
}

/// Everything the client connects with, to `endpoint`.
fn options(s: &Settings, endpoint: &Endpoint) -> MqttOptions {
    let mut opts = MqttOptions::new(s.client_id.clone(), endpoint.host.clone(), endpoint.port);
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
    if let Some(tls) = s.tls_for(endpoint) {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    opts.set_network_options(super::network_options());
    opts
}

impl Connection for EventLoop {
    type Error = ConnectionError;
    const PROTOCOL: &'static str = "5";
    const VERSION: u64 = 5;
    // The broker ignored our Maximum Packet Size.
    const OVERSIZED_MESSAGE: &'static str =
        "the broker sent a message larger than the bridge accepts (ignoring MQTT 5's Maximum Packet Size); \
         usually a retained message on a `/set` topic: clear it with `mosquitto_pub -r -n -t <topic>`";

    async fn poll(&mut self) -> Result<Polled, ConnectionError> {
        Ok(match EventLoop::poll(self).await? {
            Event::Incoming(Packet::ConnAck(ack)) => Polled::Connected {
                session_present: ack.session_present,
            },
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(topic) = String::from_utf8(p.topic.to_vec()) else {
                    // MQTT topics are UTF-8; a broker that says otherwise is wrong.
                    return Ok(Polled::Other);
                };
                let expires_in = p
                    .properties
                    .as_ref()
                    .and_then(|props| props.message_expiry_interval)
                    .map(|s| Duration::from_secs(s.into()));
                Polled::Message {
                    topic,
                    payload: p.payload,
                    retain: p.retain,
                    expires_in,
                }
            }
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_))) =>
            {
                Polled::SubscribeRefused {
                    codes: Some(format!("{:?}", ack.return_codes)),
                }
            }
            Event::Outgoing(rumqttc::Outgoing::Disconnect) => Polled::Disconnected,
            Event::Incoming(
                Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubComp(_)
                | Packet::UnsubAck(_)
                | Packet::PingResp(_)
                | Packet::SubAck(_),
            ) => Polled::Unanswered,
            _ => Polled::Other,
        })
    }

    fn broker_address(&self) -> (String, u16) {
        self.options.broker_address()
    }

    fn set_broker(&mut self, s: &Settings, endpoint: &Endpoint) {
        // Read at the next connect (the connection is gone after an error).
        self.options = options(s, endpoint);
    }

    fn classify(err: &ConnectionError) -> Failure {
        match err {
            ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ) => Failure::LoginRefused {
                code: format!("{code:?}"),
            },
            ConnectionError::MqttState(rumqttc::v5::StateError::Deserialization(
                rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. },
            )) => Failure::OversizedIncoming,
            _ => Failure::Other,
        }
    }

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
}
