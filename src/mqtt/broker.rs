//! The embedded broker (rumqttd), for installs with no broker of their own.
//!
//! rumqttd listens on a loopback port only; clients come in through the bridge's door
//! (`broker_door`) on `mqtt.embedded_listen`, which answers logins itself. rumqttd has no
//! shutdown: it lives on its own thread until the process exits.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::MqttConfig;

/// Starts the broker on `cfg.embedded_listen`. Fails at once when the address cannot be
/// bound, instead of letting the broker thread die quietly.
pub fn start(cfg: &MqttConfig, max_connections: usize) -> anyhow::Result<SocketAddr> {
    let listen = cfg.embedded_listen;
    let door = TcpListener::bind(listen)
        .with_context(|| format!("embedded broker cannot listen on {listen}"))?;
    door.set_nonblocking(true)?;
    let door = tokio::net::TcpListener::from_std(door)?;
    // rumqttd's own port: loopback, free now (rumqttd binds on its own thread).
    let inner = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?;

    let auth = (!cfg.username.is_empty())
        .then(|| HashMap::from([(cfg.username.clone(), cfg.password.expose().to_string())]));
    let login = (!cfg.username.is_empty()).then(|| (cfg.username.clone(), cfg.password.clone()));
    let server = ServerSettings {
        name: "v4".into(),
        listen: inner,
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::net::TcpStream::connect_timeout(&inner, std::time::Duration::from_millis(200))
        .is_err()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tokio::spawn(super::broker_door::serve(
        door,
        inner,
        login,
        max_connections,
    ));
    Ok(listen)
}
