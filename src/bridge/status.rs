//! The bridge's own status: each connector's links, errors, counters and whether it
//! runs, the last error, command results. It renders `bridge/info` (only when it
//! changed) and the snapshot behind `/metrics`, `/healthz` and the liveness file.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use crate::model::{CommandStatus, VehicleId};
use crate::mqtt::MqttStats;

pub(super) struct Slot {
    name: &'static str,
    links: usize,
    /// False once the connector stopped.
    running: bool,
    error: Option<String>,
    counters: BTreeMap<&'static str, u64>,
    /// Every vehicle the connector's config lists, when it lists them all.
    configured: Option<HashSet<VehicleId>>,
}

/// What the hub counts beside the status, for the snapshot and `bridge/info`.
pub(super) struct Figures<'a> {
    pub vehicles: usize,
    pub vehicles_online: usize,
    pub pin_failures: u64,
    pub mqtt_connected: bool,
    pub subscription_refused: bool,
    pub stats: &'a MqttStats,
}

pub(super) struct Status {
    connectors: Vec<Slot>,
    last_error: Option<String>,
    /// `bridge/info` may have changed.
    info_dirty: bool,
    last_info: String,
    /// Command results by status, for `/metrics`.
    command_results: BTreeMap<String, u64>,
}

impl Status {
    /// Connectors by index: name and the vehicles its config lists (if it lists them all).
    pub fn new(connectors: Vec<(&'static str, Option<HashSet<VehicleId>>)>) -> Status {
        Status {
            connectors: connectors
                .into_iter()
                .map(|(name, configured)| Slot {
                    name,
                    links: 0,
                    running: true,
                    error: None,
                    counters: BTreeMap::new(),
                    configured,
                })
                .collect(),
            last_error: None,
            info_dirty: true,
            last_info: String::new(),
            command_results: BTreeMap::new(),
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.connectors.iter().map(|c| c.name).collect()
    }

    /// The connector's name (`?` for an index no connector has).
    pub fn name(&self, owner: usize) -> &'static str {
        self.connectors.get(owner).map_or("?", |c| c.name)
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.connectors.iter().position(|c| c.name == name)
    }

    /// Whether connector `owner`'s config lists `id` (or does not list its vehicles).
    pub fn lists(&self, owner: usize, id: &VehicleId) -> bool {
        self.connectors
            .get(owner)
            .is_some_and(|c| c.configured.as_ref().is_none_or(|ids| ids.contains(id)))
    }

    pub fn changed(&mut self) {
        self.info_dirty = true;
    }

    pub fn set_error(&mut self, error: String) {
        self.last_error = Some(error);
        self.info_dirty = true;
    }

    pub fn counters(&mut self, owner: usize, counters: BTreeMap<&'static str, u64>) {
        if let Some(c) = self.connectors.get_mut(owner) {
            c.counters = counters;
            self.info_dirty = true;
        }
    }

    pub fn recovered(&mut self, owner: usize) {
        let Some(c) = self.connectors.get_mut(owner) else {
            return;
        };
        if c.error.take().is_some() {
            tracing::info!(event = "connector_recovered", connector = %c.name, "connector works again");
            self.info_dirty = true;
        }
    }

    pub fn health(&mut self, owner: usize, links: usize, error: Option<String>) {
        let Some(c) = self.connectors.get_mut(owner) else {
            return;
        };
        c.links = links;
        if let Some(err) = error {
            // Once per new error: a cloud that fails every poll says it once.
            if c.error.as_deref() != Some(err.as_str()) {
                crate::status_page::problems::record("connector_error", c.name, err.clone());
            }
            let msg = format!("{}: {err}", c.name);
            c.error = Some(err);
            self.set_error(msg);
        }
        self.info_dirty = true;
    }

    pub fn stopped(&mut self, owner: usize, reason: &str) {
        let Some(c) = self.connectors.get_mut(owner) else {
            return;
        };
        c.running = false;
        c.error = Some(reason.to_string());
        let msg = format!("{}: {reason}", c.name);
        self.set_error(msg);
    }

    pub fn count_result(&mut self, status: CommandStatus) {
        let key = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *self.command_results.entry(key).or_default() += 1;
    }

    /// The next `bridge/info` to publish: `None` when nothing changed; `force` forgets
    /// what was sent (a new connection).
    pub fn info_to_publish(&mut self, figures: &Figures, force: bool) -> Option<String> {
        if force {
            self.last_info.clear();
            self.info_dirty = true;
        }
        if !std::mem::take(&mut self.info_dirty) {
            return None;
        }
        let info = self.info(figures).to_string();
        (info != self.last_info).then(|| {
            self.last_info = info.clone();
            info
        })
    }

    fn info(&self, f: &Figures) -> serde_json::Value {
        let connectors: Vec<_> = self
            .connectors
            .iter()
            .map(|c| json!({"name": c.name, "links": c.links, "error": c.error, "counters": c.counters}))
            .collect();
        json!({
            "version": crate::hass::VERSION,
            "connectors": connectors,
            "vehicles": f.vehicles,
            "links": self.connectors.iter().map(|c| c.links).sum::<usize>(),
            "last_error": self.last_error,
            "pin_failures": f.pin_failures,
            "dropped_publishes": f.stats.dropped_publishes.load(Relaxed),
            "coalesced_states": f.stats.coalesced_states.load(Relaxed),
        })
    }

    pub fn snapshot(&self, f: &Figures) -> crate::observe::Snapshot {
        let stats = f.stats;
        crate::observe::Snapshot {
            mqtt_connected: f.mqtt_connected,
            connectors: self
                .connectors
                .iter()
                .map(|c| crate::observe::ConnectorView {
                    name: c.name,
                    links: c.links,
                    error: c.error.clone(),
                    running: c.running,
                    counters: c.counters.clone(),
                })
                .collect(),
            vehicles: f.vehicles,
            vehicles_online: f.vehicles_online,
            commands: self.command_results.clone(),
            pin_failures: f.pin_failures,
            mqtt_published: stats.published.load(Relaxed),
            mqtt_dropped: stats.dropped_publishes.load(Relaxed),
            mqtt_coalesced: stats.coalesced_states.load(Relaxed),
            mqtt_reconnects: stats.reconnects.load(Relaxed),
            mqtt_subscribe_refused: stats.subscribe_refused.load(Relaxed),
            mqtt_oversized_incoming: stats.oversized_incoming.load(Relaxed),
            mqtt_protocol: stats.protocol.load(Relaxed),
            subscription_refused: f.subscription_refused,
            #[cfg(feature = "embedded-broker")]
            embedded_refused_logins: crate::mqtt::broker_door::refused_logins(),
            #[cfg(not(feature = "embedded-broker"))]
            embedded_refused_logins: 0,
            retry_queue: 0,
            unsent_states: 0,
            page_login_failures: crate::status_page::login_failures(),
            page_connections_refused: crate::status_page::REFUSED_PER_ADDRESS
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}
