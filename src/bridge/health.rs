//! What tells whether the bridge is well: the liveness file, `/metrics` and `/healthz`,
//! staleness by the vehicle's own clock, and refused subscriptions retried.

use super::*;

impl Hub {
    /// Proves the loop is alive and records its health verdict (`vehicle2mqtt health`).
    pub(super) fn write_alive(&mut self) {
        self.update_snapshot();
        let verdict = self.snapshot.read().map(|s| s.health()).unwrap_or(Ok(()));
        crate::state_dir::write_alive(&self.config.bridge.state_dir, self.mqtt_connected, verdict);
    }

    /// Refreshes what `/metrics`, `/healthz` and the liveness file show.
    pub(super) fn update_snapshot(&mut self) {
        let stats = self.publisher.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let snap = crate::observe::Snapshot {
            mqtt_connected: self.mqtt_connected,
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
            vehicles: self.vehicles.len(),
            vehicles_online: self
                .vehicles
                .values()
                .filter(|v| v.published_availability == Some(true))
                .count(),
            commands: self.command_results.clone(),
            pin_failures: self.gate.failures(),
            mqtt_published: load(&stats.published),
            mqtt_dropped: load(&stats.dropped_publishes),
            mqtt_coalesced: load(&stats.coalesced_states),
            mqtt_reconnects: load(&stats.reconnects),
            mqtt_subscribe_refused: load(&stats.subscribe_refused),
            mqtt_oversized_incoming: load(&stats.oversized_incoming),
            mqtt_protocol: load(&stats.protocol),
            subscription_refused: self.subscription_refused,
        };
        if let Ok(mut s) = self.snapshot.write() {
            *s = snap;
        }
    }

    /// Marks offline every vehicle whose newest report is older than `stale_after`.
    pub(super) fn check_stale(&mut self) {
        // A vehicle with no availability yet gets one stale check of grace: its first
        // state is usually on its way, and "offline" a moment before "online" is a flap.
        let ids: Vec<VehicleId> = self
            .vehicles
            .iter_mut()
            .filter_map(|(id, v)| {
                let graced = v.published_availability.is_none() && !v.grace_used;
                v.grace_used = true;
                (!graced).then(|| id.clone())
            })
            .collect();
        for id in ids {
            self.check_stale_one(&id);
        }
    }

    /// Staleness follows the vehicle's own time: a cloud serving data from last year is
    /// not "updated just now".
    pub(super) fn check_stale_one(&mut self, id: &VehicleId) {
        let Ok(stale_after) = chrono::Duration::from_std(self.config.bridge.stale_after) else {
            return;
        };
        let now = Utc::now();
        let Some(v) = self.vehicles.get_mut(id) else {
            return;
        };
        let stale = v.reported_at.is_some_and(|t| now - t > stale_after);
        if stale != v.stale || v.published_availability.is_none() {
            v.stale = stale;
            if stale {
                tracing::info!(event = "vehicle_stale", vehicle = %id, "no report within stale_after; marking offline");
            }
            self.publish_availability(id, false);
        }
    }

    // ---- MQTT in -------------------------------------------------------------------

    /// A refused subscription is asked for again every tick (the broker's ACL may have
    /// been fixed); a tick with no new refusal since the last retry clears the flag.
    pub(super) fn retry_refused_subscriptions(&mut self) {
        if !self.subscription_refused || !self.mqtt_connected {
            return;
        }
        let refusals = self
            .publisher
            .stats()
            .subscribe_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.refusals_at_retry == Some(refusals) {
            self.subscription_refused = false;
            self.refusals_at_retry = None;
            tracing::info!(
                event = "mqtt_subscribe_accepted",
                "the broker now accepts the bridge's subscriptions"
            );
            return;
        }
        self.refusals_at_retry = Some(refusals);
        self.subscribe_all(false);
    }
}
