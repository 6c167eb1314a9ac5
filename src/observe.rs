//! What operators watch: `/metrics` (Prometheus text, rendered with the prometheus-client
//! crate) and `/healthz` on `bridge.http_listen` (beside the status page), and the health verdict that
//! `vehicle2mqtt health` and the liveness file share. The hub writes a [`Snapshot`];
//! scrapes only read it, so they never slow the bridge down.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One connector as the hub sees it.
#[derive(Debug, Clone, Default)]
pub struct ConnectorView {
    pub name: &'static str,
    pub links: usize,
    /// The last error it reported (cleared when it recovers).
    pub error: Option<String>,
    /// False once it stopped (it cannot go on).
    pub running: bool,
    /// Its named error and activity counters.
    pub counters: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub mqtt_connected: bool,
    pub connectors: Vec<ConnectorView>,
    pub vehicles: usize,
    pub vehicles_online: usize,
    /// Command results by status (`accepted`, `succeeded`, `failed`, `timeout`, `rejected`).
    pub commands: BTreeMap<String, u64>,
    /// Wrong or missing PINs.
    pub pin_failures: u64,
    pub mqtt_published: u64,
    pub mqtt_dropped: u64,
    pub mqtt_coalesced: u64,
    pub mqtt_reconnects: u64,
    pub mqtt_subscribe_refused: u64,
    pub mqtt_oversized_incoming: u64,
    /// 5 (MQTT 5), 4 (3.1.1), 0 before the first connection.
    pub mqtt_protocol: u64,
    /// The broker refused one of the bridge's subscriptions since it last subscribed.
    pub subscription_refused: bool,
    /// Logins the embedded broker refused (wrong or missing user name or password).
    pub embedded_refused_logins: u64,
    /// Messages waiting for room in the MQTT client (the retry queue).
    pub retry_queue: usize,
    /// Vehicles whose newest state waits for MQTT.
    pub unsent_states: usize,
    /// Wrong `bridge.http_token`s given to the status page's login.
    pub page_login_failures: u64,
    /// Status page connections closed for too many from one address.
    pub page_connections_refused: u64,
}

/// Counts one occurrence; `Some(total)` when it is worth a log line (the 1st, 2nd, 4th,
/// 8th ...), so a flood costs a few lines while the counter keeps every one.
pub fn count_sampled(counter: &std::sync::atomic::AtomicU64) -> Option<u64> {
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    n.is_power_of_two().then_some(n)
}

pub type SharedSnapshot = Arc<RwLock<Snapshot>>;

impl Snapshot {
    /// Healthy while MQTT is connected and every enabled connector runs; else the reason.
    pub fn health(&self) -> Result<(), String> {
        if !self.mqtt_connected {
            return Err("MQTT is not connected".into());
        }
        if self.subscription_refused {
            return Err(
                "the MQTT broker refused a subscription (check its ACL): commands cannot arrive"
                    .into(),
            );
        }
        let stopped: Vec<String> = self
            .connectors
            .iter()
            .filter(|c| !c.running)
            .map(|c| match &c.error {
                Some(e) => format!("{}: {e}", c.name),
                None => format!("{} stopped", c.name),
            })
            .collect();
        if stopped.is_empty() {
            Ok(())
        } else {
            Err(format!("connector not running: {}", stopped.join("; ")))
        }
    }

    /// The Prometheus text exposition of this snapshot.
    pub fn metrics(&self) -> String {
        type Labels = Vec<(String, String)>;
        let mut registry = <Registry>::with_prefix("vehicle2mqtt");
        let counter = |v: u64| {
            let c: Counter = Counter::default();
            c.inc_by(v);
            c
        };
        let gauge = |v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            g
        };
        registry.register(
            "embedded_broker_refused_logins",
            "Logins the embedded MQTT broker refused (wrong or missing user name or password)",
            counter(self.embedded_refused_logins),
        );
        registry.register(
            "page_login_failures",
            "Wrong tokens given to the status page's login",
            counter(self.page_login_failures),
        );
        registry.register(
            "page_connections_refused",
            "Status page connections closed: too many open from that address",
            counter(self.page_connections_refused),
        );
        registry.register(
            "mqtt_retry_queue",
            "Messages waiting for room in the MQTT client",
            gauge(self.retry_queue as i64),
        );
        registry.register(
            "mqtt_connected",
            "1 while the MQTT client is connected",
            gauge(i64::from(self.mqtt_connected)),
        );
        registry.register(
            "mqtt_published",
            "Messages handed to the MQTT client",
            counter(self.mqtt_published),
        );
        registry.register(
            "mqtt_dropped",
            "Messages dropped because MQTT stayed busy",
            counter(self.mqtt_dropped),
        );
        registry.register(
            "mqtt_coalesced_states",
            "Intermediate states replaced by a newer one while MQTT was busy",
            counter(self.mqtt_coalesced),
        );
        registry.register(
            "mqtt_reconnects",
            "Reconnects of the MQTT client",
            counter(self.mqtt_reconnects),
        );
        registry.register(
            "mqtt_subscribe_refused",
            "Subscriptions the MQTT broker refused (SUBACK failure)",
            counter(self.mqtt_subscribe_refused),
        );
        registry.register(
            "mqtt_oversized_incoming",
            "Connections ended by an incoming message over the size limit",
            counter(self.mqtt_oversized_incoming),
        );
        registry.register(
            "mqtt_protocol",
            "MQTT protocol level in use: 5, or 4 for 3.1.1 (0 before the first connection)",
            gauge(self.mqtt_protocol as i64),
        );
        registry.register("vehicles", "Vehicles known", gauge(self.vehicles as i64));
        registry.register(
            "vehicles_online",
            "Vehicles shown online",
            gauge(self.vehicles_online as i64),
        );
        let commands = Family::<Labels, Counter>::default();
        for (status, n) in &self.commands {
            commands
                .get_or_create(&vec![("status".into(), status.clone())])
                .inc_by(*n);
        }
        registry.register("commands", "Command results by status", commands);
        registry.register(
            "pin_failures",
            "Commands refused for a wrong or missing PIN",
            counter(self.pin_failures),
        );
        let links = Family::<Labels, Gauge>::default();
        let running = Family::<Labels, Gauge>::default();
        let events = Family::<Labels, Counter>::default();
        for c in &self.connectors {
            let name = vec![("connector".to_string(), c.name.to_string())];
            links.get_or_create(&name).set(c.links as i64);
            running.get_or_create(&name).set(i64::from(c.running));
            for (kind, n) in &c.counters {
                let mut l = name.clone();
                l.push(("kind".into(), kind.to_string()));
                events.get_or_create(&l).inc_by(*n);
            }
        }
        registry.register("connector_links", "Open links per connector", links);
        registry.register("connector_running", "1 while the connector runs", running);
        registry.register(
            "connector_events",
            "Per connector, its named counters: frames and requests, errors by kind",
            events,
        );
        let mut out = String::new();
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `/metrics` and `/healthz` (the status page serves them beside itself).
pub fn router(snapshot: SharedSnapshot) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let metrics = {
        let snapshot = snapshot.clone();
        move || {
            let body = snapshot.read().map(|s| s.metrics()).unwrap_or_default();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }
    };
    let healthz = move || {
        let verdict = snapshot
            .read()
            .map_err(|_| "state unavailable".to_string())
            .and_then(|s| s.health());
        async move {
            match verdict {
                Ok(()) => (StatusCode::OK, "ok\n".to_string()).into_response(),
                Err(reason) => {
                    (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
                }
            }
        }
    };
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(healthz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_mqtt_and_every_connector() {
        let mut s = Snapshot {
            mqtt_connected: true,
            connectors: vec![ConnectorView {
                name: "kingxun",
                running: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(s.health(), Ok(()));
        s.connectors[0].running = false;
        s.connectors[0].error = Some("cannot listen on 0.0.0.0:10086".into());
        assert!(s.health().unwrap_err().contains("0.0.0.0:10086"));
        s.connectors[0].running = true;
        s.mqtt_connected = false;
        assert_eq!(s.health(), Err("MQTT is not connected".into()));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let mut s = Snapshot {
            mqtt_connected: true,
            vehicles: 3,
            vehicles_online: 2,
            mqtt_reconnects: 4,
            ..Default::default()
        };
        s.commands.insert("succeeded".into(), 5);
        s.connectors.push(ConnectorView {
            name: "exlive",
            links: 7,
            running: true,
            counters: [("bad_messages", 2)].into_iter().collect(),
            ..Default::default()
        });
        let text = s.metrics();
        for line in [
            "vehicle2mqtt_mqtt_connected 1",
            "vehicle2mqtt_vehicles_online 2",
            "vehicle2mqtt_mqtt_reconnects_total 4",
            "vehicle2mqtt_commands_total{status=\"succeeded\"} 5",
            "vehicle2mqtt_connector_links{connector=\"exlive\"} 7",
            "vehicle2mqtt_connector_events_total{connector=\"exlive\",kind=\"bad_messages\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
