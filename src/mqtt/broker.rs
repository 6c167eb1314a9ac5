//! The embedded broker (rumqttd), for installs with no broker of their own.
//!
//! rumqttd has no shutdown: it lives on its own thread until the process exits.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::MqttConfig;

/// Starts the broker on `cfg.embedded_listen`. Fails at once when the address cannot be
/// bound, instead of letting the broker thread die quietly.
pub fn start(cfg: &MqttConfig, max_connections: usize) -> anyhow::Result<SocketAddr> {
    let listen = cfg.embedded_listen;
    // rumqttd binds on its own thread and only logs a failure; probe first so the user
    // gets a clear error and exit code.
    drop(
        TcpListener::bind(listen)
            .with_context(|| format!("embedded broker cannot listen on {listen}"))?,
    );

    let auth = (!cfg.username.is_empty())
        .then(|| HashMap::from([(cfg.username.clone(), cfg.password.expose().to_string())]));
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: super::MAX_PACKET_SIZE,
            max_inflight_count: 500,
            auth,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(err) = broker.start() {
                tracing::error!(event = "embedded_broker_failed", error = %err, "embedded MQTT broker stopped");
            }
        })
        .context("spawning the embedded broker thread")?;
    // Wait (briefly) until it accepts, so the bridge's first connect does not race it.
    let probe = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(200))
        .is_err()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(listen)
}
