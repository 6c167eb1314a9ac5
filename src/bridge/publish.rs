//! Everything the hub publishes: states (coalesced to the newest per vehicle while MQTT
//! is busy or away), availability, events, command results and the bridge's own info,
//! with a bounded retry queue for what found MQTT busy.

use super::*;

impl Hub {
    /// Publishes a vehicle's state now, or remembers that it is owed when MQTT is busy or
    /// away: owed states coalesce to the newest, so a reconnect sends the latest state of
    /// each vehicle, never a replay of the stale ones queued in the client.
    pub(super) fn publish_state(&mut self, id: &VehicleId) {
        let owed = !self.mqtt_connected || self.outbox.is_behind() || !self.try_publish_state(id);
        if !owed {
            self.outbox.state_sent(id);
        } else if self.outbox.owe_state(id.clone()) {
            self.publisher
                .stats()
                .coalesced_states
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(super) fn try_publish_state(&mut self, id: &VehicleId) -> bool {
        let Some(v) = self.vehicles.get_mut(id) else {
            return true;
        };
        let mut json = v.state.to_json();
        if let Some(pending) = v.pending_lock {
            json["lock"] = pending.into();
        }
        let topic = self.topics.vehicle(id.as_str(), "state");
        if !self.publisher.try_publish(&topic, json.to_string(), true) {
            return false;
        }
        if self.config.mqtt.per_field_topics {
            let json_booleans =
                self.config.mqtt.per_field_booleans == crate::config::BoolFormat::TrueFalse;
            let mut fields: Vec<(String, String)> = v
                .state
                .values
                .iter()
                .map(|(field, value)| {
                    let payload = match (field, v.pending_lock) {
                        (Field::Lock, Some(p)) => p.to_string(),
                        _ => value.to_payload_with(json_booleans),
                    };
                    (self.topics.vehicle(id.as_str(), field.key()), payload)
                })
                .collect();
            if let Some(p) = v.state.position {
                fields.push((
                    self.topics.vehicle(id.as_str(), "latitude"),
                    p.latitude.to_string(),
                ));
                fields.push((
                    self.topics.vehicle(id.as_str(), "longitude"),
                    p.longitude.to_string(),
                ));
            }
            let sent = self.field_payloads.entry(id.clone()).or_default();
            for (topic, payload) in fields {
                if sent.get(&topic) != Some(&payload) {
                    if !self.publisher.try_publish(&topic, payload.clone(), true) {
                        return false; // the rest goes out with the retry
                    }
                    sent.insert(topic, payload);
                }
            }
        }
        true
    }

    /// Publishes now if MQTT has room (and nothing older is waiting), else queues it.
    pub(super) fn send(&mut self, topic: String, payload: impl Into<Vec<u8>>, retain: bool) {
        if self
            .outbox
            .send(&self.publisher, topic, payload.into(), retain)
        {
            self.info_dirty = true; // `dropped_publishes` grew
        }
    }

    pub(super) fn flush_retries(&mut self) {
        if !self.mqtt_connected {
            return; // the reconnect publishes everything owed
        }
        if !self.outbox.flush_messages(&self.publisher) {
            return;
        }
        let mut ids = self.outbox.take_unsent_states().into_iter();
        for id in ids.by_ref() {
            if !self.try_publish_state(&id) {
                self.outbox.owe_state(id);
                break;
            }
        }
        for id in ids {
            self.outbox.owe_state(id);
        }
        // Discovery last, and only while nothing else waits.
        while let Some((id, force)) = self.outbox.next_owed_discovery() {
            self.sync_discovery(&id, force);
        }
        self.outbox.release_empty();
    }

    pub(super) fn publish_availability(&mut self, id: &VehicleId, force: bool) {
        let Some(v) = self.vehicles.get_mut(id) else {
            return;
        };
        let available = v.available();
        if force || v.published_availability != Some(available) {
            v.published_availability = Some(available);
            let topic = self.topics.vehicle(id.as_str(), "availability");
            self.send(topic, if available { "online" } else { "offline" }, true);
        }
    }

    pub(super) fn publish_event(&mut self, id: &VehicleId, event: VehicleEvent) {
        let mut payload = event.attributes;
        payload.insert("event_type".into(), event.event_type.into());
        payload.insert("ts".into(), now_rfc3339().into());
        let topic = self.topics.vehicle(id.as_str(), "event");
        self.send(topic, serde_json::Value::Object(payload).to_string(), false);
    }

    pub(super) fn publish_result(
        &mut self,
        vehicle: &str,
        id: &str,
        command: &str,
        status: CommandStatus,
        reason: Option<&str>,
    ) {
        *self
            .command_results
            .entry(
                serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            )
            .or_default() += 1;
        let payload = json!({
            "id": id,
            "command": command,
            "status": status,
            "reason": reason,
            "ts": now_rfc3339(),
        });
        let topic = self.topics.vehicle(vehicle, "command/result");
        self.send(topic, payload.to_string(), false);
    }

    pub(super) fn bridge_info(&self) -> serde_json::Value {
        let connectors: Vec<_> = self
            .connectors
            .iter()
            .map(|c| json!({"name": c.name, "links": c.links, "error": c.error, "counters": c.counters}))
            .collect();
        json!({
            "version": hass::VERSION,
            "connectors": connectors,
            "vehicles": self.vehicles.len(),
            "links": self.connectors.iter().map(|c| c.links).sum::<usize>(),
            "last_error": self.last_error,
            "pin_failures": self.gate.failures(),
            "dropped_publishes": self.publisher.stats().dropped_publishes.load(std::sync::atomic::Ordering::Relaxed),
            "coalesced_states": self.publisher.stats().coalesced_states.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    pub(super) fn flush_info(&mut self) {
        if !self.info_dirty {
            return;
        }
        self.info_dirty = false;
        let info = self.bridge_info().to_string();
        if info != self.last_info {
            self.send(self.topics.bridge_info(), info.clone(), true);
            self.last_info = info;
        }
    }

    /// On every (re)connection and after HA's birth message: everything retained again.
    pub(super) fn publish_everything(&mut self, discovery_only: bool) {
        if self.config.mqtt.discovery {
            for e in hass::bridge_entities(&self.topics) {
                self.send(e.topic(&self.topics, "bridge"), e.config.to_string(), true);
            }
        }
        let ids: Vec<VehicleId> = self.vehicles.keys().cloned().collect();
        for id in &ids {
            self.sync_discovery(id, true);
            if !discovery_only {
                self.field_payloads.remove(id);
                if self
                    .vehicles
                    .get(id)
                    .is_some_and(|v| v.reported_at.is_some())
                {
                    self.publish_state(id);
                }
                self.publish_availability(id, true);
            }
        }
    }
}
