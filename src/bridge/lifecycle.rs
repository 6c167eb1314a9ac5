//! Home Assistant entity lifecycle: the one place that decides when an entity is
//! announced, re-announced and removed (zigbee2mqtt's `homeassistant.ts` is the model).
//!
//! An entity, once announced, stays: a vehicle that is parked, asleep or has not reported
//! since a restart keeps every entity (and every rename a user made in HA). An entity is
//! removed only when
//! - its vehicle was removed from the config (its connector lists its vehicles and this
//!   one is gone, or the connector is no longer enabled),
//! - the vehicle's capability is gone (e.g. a server command no longer listed),
//! - someone asks: `<base>/bridge/purge/set` with `stale` (or the bridge's "Remove stale
//!   entities" button), or a vehicle id,
//! - `bridge.forget_absent_entities_after` is set and the vehicle kept reporting for that
//!   long without the field.

use std::collections::{BTreeMap, HashSet};

use chrono::{SecondsFormat, Utc};

use super::{store, Hub, Vehicle};
use crate::hass;
use crate::model::{Field, VehicleId, VehicleState};

/// The topic that asks the bridge to remove entities.
pub(super) const PURGE_ENTITY: &str = "purge";

impl Hub {
    /// Loads what earlier runs announced. Vehicles whose connector is gone, or whose
    /// connector's config no longer lists them, lose their entities now; the rest come
    /// back exactly as they were, before any data arrives.
    pub(super) fn restore(&mut self) {
        if !self.config.bridge.remember_vehicles {
            return;
        }
        let records = store::load_all(&self.config.bridge.state_dir);
        let restored = records.len();
        for (id, record) in records {
            let owner = self
                .connectors
                .iter()
                .position(|c| c.name == record.connector);
            let listed = owner.is_some_and(|o| {
                self.connectors[o]
                    .configured
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&id))
            });
            let owner = owner.unwrap_or_default();
            let mut info = super::default_info(&id, &record.connector);
            info.reported_model = record.identity.model.clone().map(Into::into);
            info.sw_version = record.identity.sw_version.clone();
            let mut v = Box::new(Vehicle::new(owner, info));
            v.announced = hass::Announced::restored(
                record.discovery,
                &mut self.entity_names,
                &self.topics,
                &id,
            );
            if !listed {
                tracing::info!(event = "vehicle_removed", vehicle = %id, connector = %record.connector,
                    "vehicle no longer in the config; removing its entities");
                self.vehicles.insert(id.clone(), v);
                self.forget_vehicle(&id);
                continue;
            }
            v.info_known = false;
            v.state = VehicleState::from_json(&record.state);
            v.shape.fields = record
                .fields
                .iter()
                .filter_map(|k| Field::from_key(k))
                .collect();
            v.shape.position = record.position;
            for (key, at) in &record.field_times {
                let (Some(field), Ok(at)) = (
                    Field::from_key(key),
                    chrono::DateTime::parse_from_rfc3339(at),
                ) else {
                    continue;
                };
                v.field_times.insert(field, at.with_timezone(&Utc));
            }
            v.reported_at = v.field_times.latest();
            self.vehicles.insert(id, v);
        }
        if restored > 0 {
            tracing::info!(
                event = "vehicles_restored",
                vehicles = self.vehicles.len(),
                "vehicles and their entities restored from state_dir"
            );
        }
    }

    /// Publishes discovery documents that changed and removes those no longer wanted.
    /// With `force`, re-publishes every document (after a reconnect or HA birth).
    pub(super) fn sync_discovery(&mut self, id: &VehicleId, force: bool) {
        if !self.config.mqtt.discovery {
            return;
        }
        if self.outbox.is_behind() {
            // MQTT is behind: build the documents when there is room (`flush_retries`).
            self.outbox.owe_discovery(id.clone(), force);
            return;
        }
        let pin_required = !self.config.bridge.command_pin.is_empty();
        let Some(v) = self.vehicles.get_mut(id) else {
            return;
        };
        let source = v.info_known.then_some(hass::Source {
            info: &v.info,
            shape: &v.shape,
            pin_required,
        });
        let (out, changed) =
            v.announced
                .sync(&mut self.entity_names, &self.topics, id, source, force);
        v.entities_dirty |= changed;
        for (topic, payload) in out {
            self.send(topic, payload, true);
        }
    }

    /// A retained discovery config of ours arrived from the broker. Stale bridge
    /// entities go at once (they are the bridge's own); a vehicle's is only noted, for a
    /// purge to remove when nothing claims it.
    pub(super) fn on_retained_config(&mut self, topic: &str) {
        let Some(object_id) = self.topics.config_object_id(topic) else {
            return;
        };
        if let Some(key) = object_id.strip_prefix("bridge_") {
            let current = hass::bridge_entities(&self.topics)
                .iter()
                .any(|e| e.key == key);
            if !current {
                tracing::info!(
                    event = "entity_removed",
                    topic,
                    "stale bridge entity removed"
                );
                self.send(topic.to_string(), Vec::new(), true);
            }
            return;
        }
        if self.unclaimed_configs.len() < 100_000 {
            self.unclaimed_configs.insert(topic.to_string());
        }
    }

    /// `<base>/bridge/purge/set`: `stale` removes every entity nothing reports any more
    /// (vehicles not heard from since the start, fields a vehicle stopped reporting,
    /// retained configs of ours no vehicle claims); a vehicle id does so for that vehicle.
    pub(super) fn on_purge(&mut self, payload: &[u8], retain: bool) {
        if retain {
            tracing::warn!(
                event = "purge_ignored",
                "retained purge request ignored: publish it without the retain flag"
            );
            return;
        }
        let text = String::from_utf8_lossy(payload);
        let target = text.trim();
        let ids: Vec<VehicleId> = if target == "stale" {
            self.vehicles.keys().cloned().collect()
        } else {
            match VehicleId::new(target).filter(|id| self.vehicles.contains_key(id)) {
                Some(id) => vec![id],
                None => {
                    tracing::warn!(event = "purge_ignored", target = %target.chars().take(64).collect::<String>(),
                        "purge: expected `stale` or a known vehicle id");
                    return;
                }
            }
        };
        let mut removed = 0usize;
        for id in &ids {
            removed += self.purge_vehicle(id);
        }
        if target == "stale" {
            let claimed: HashSet<String> = self
                .vehicles
                .iter()
                .flat_map(|(id, v)| v.announced.topics(&self.topics, id))
                .collect();
            let unclaimed: Vec<String> = self
                .unclaimed_configs
                .iter()
                .filter(|t| !claimed.contains(*t))
                .cloned()
                .collect();
            self.unclaimed_configs.clear();
            removed += unclaimed.len();
            for topic in unclaimed {
                self.send(topic, Vec::new(), true);
            }
        }
        tracing::info!(event = "entities_purged", target = %target, removed, "stale entities removed on request");
    }

    /// Removes what `id` has not reported since the start; all of it (and the vehicle)
    /// when it has not reported at all. Returns the number of entities removed.
    fn purge_vehicle(&mut self, id: &VehicleId) -> usize {
        let Some(v) = self.vehicles.get_mut(id) else {
            return 0;
        };
        if v.reported_this_run == hass::Shape::default() && !v.info_known {
            return self.forget_vehicle(id);
        }
        let before = v.announced.len();
        v.shape = v.reported_this_run.clone();
        v.entities_dirty = true;
        self.sync_discovery(id, false);
        before.saturating_sub(self.vehicles.get(id).map_or(0, |v| v.announced.len()))
    }

    /// Removes a vehicle: its entities, its retained state and availability, its record.
    /// Returns the number of entities removed.
    fn forget_vehicle(&mut self, id: &VehicleId) -> usize {
        let Some(mut v) = self.vehicles.remove(id) else {
            return 0;
        };
        self.field_payloads.remove(id);
        self.gate.forget(id);
        let removals = v.announced.remove_all(&self.topics, id);
        let n = removals.len();
        for (topic, payload) in removals {
            self.send(topic, payload, true);
        }
        self.send(self.topics.vehicle(id.as_str(), "state"), Vec::new(), true);
        self.send(
            self.topics.vehicle(id.as_str(), "availability"),
            Vec::new(),
            true,
        );
        self.outbox.forget(id);
        self.forgotten.push(id.clone());
        self.info_dirty = true;
        n
    }

    /// A connector's full vehicle list: its vehicles missing from it left the account.
    pub(super) fn on_roster(&mut self, owner: usize, vehicles: Vec<VehicleId>) {
        let keep: HashSet<VehicleId> = vehicles.into_iter().collect();
        let gone: Vec<VehicleId> = self
            .vehicles
            .iter()
            .filter(|(id, v)| v.owner == owner && !keep.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            let removed = self.forget_vehicle(&id);
            tracing::info!(event = "vehicle_removed", vehicle = %id, connector = self.connectors[owner].name, removed,
                "vehicle left the upstream account; its entities are removed");
        }
    }

    /// With `forget_absent_entities_after`, a field the vehicle has not reported for that
    /// long, while it kept reporting, loses its entity.
    pub(super) fn forget_absent_fields(&mut self) {
        let after = self.config.bridge.forget_absent_entities_after;
        if after.is_zero() {
            return;
        }
        let Ok(after) = chrono::Duration::from_std(after) else {
            return;
        };
        let mut changed = Vec::new();
        for (id, v) in self.vehicles.iter_mut() {
            let Some(reported) = v.reported_at else {
                continue;
            };
            let absent: Vec<Field> = v
                .shape
                .fields
                .iter()
                .filter(|f| *f != Field::LastUpdate)
                .filter(|f| v.field_times.get(*f).is_none_or(|t| reported - t > after))
                .collect();
            if absent.is_empty() {
                continue;
            }
            for f in &absent {
                tracing::info!(event = "entity_forgotten", vehicle = %id, field = f.key(),
                    "field not reported for forget_absent_entities_after; removing its entity");
                v.shape.fields.remove(*f);
                v.reported_this_run.fields.remove(*f);
                v.field_times.remove(*f);
                v.state.values.remove(f);
                v.state.cleared.remove(f);
                v.dirty = true;
            }
            changed.push(id.clone());
        }
        for id in changed {
            self.sync_discovery(&id, false);
        }
    }

    /// Writes the records of vehicles whose entities changed, and with `all` of those
    /// whose state changed (off the hub's task: an SD card is slow), and removes those of
    /// vehicles that were forgotten. States alone are written rarely to spare flash.
    /// Returns whether it started a write (at shutdown: call until it does not).
    pub(super) fn persist(&mut self, last: bool) -> bool {
        if !self.config.bridge.remember_vehicles
            || self.persisting.as_ref().is_some_and(|h| !h.is_finished())
        {
            return false; // the next tick writes what is still dirty
        }
        let mut batch: Vec<(VehicleId, store::Write)> = self
            .forgotten
            .drain(..)
            .map(|id| (id, store::Write::Remove))
            .collect();
        // Entities at once; a state at most every PERSIST_STATE_EVERY; everything at
        // shutdown. At most PERSIST_BATCH records a write, so a fleet's first write (or a
        // flood of changes, or the shutdown) costs bounded memory and disk bursts.
        let now = std::time::Instant::now();
        let due = |v: &Vehicle| {
            v.entities_dirty
                || (v.dirty
                    && (last
                        || v.saved_at
                            .is_none_or(|t| now.duration_since(t) >= super::PERSIST_STATE_EVERY)))
        };
        let pin_required = !self.config.bridge.command_pin.is_empty();
        let discovery = self.config.mqtt.discovery;
        for (id, v) in self
            .vehicles
            .iter_mut()
            .filter(|(_, v)| due(v))
            .take(super::PERSIST_BATCH)
        {
            // Documents are rebuilt only when the entities changed; a state alone keeps
            // those on disk (read back off the hub's task).
            let keep_discovery = discovery && !v.entities_dirty;
            v.dirty = false;
            v.entities_dirty = false;
            v.saved_at = Some(now);
            let record = store::Record {
                connector: self.connectors[v.owner].name.to_string(),
                discovery: match discovery && !keep_discovery {
                    true => {
                        let source = v.info_known.then_some(hass::Source {
                            info: &v.info,
                            shape: &v.shape,
                            pin_required,
                        });
                        v.announced.documents(&self.topics, id, source)
                    }
                    false => BTreeMap::new(),
                },
                fields: v.shape.fields.iter().map(|f| f.key().to_string()).collect(),
                position: v.shape.position,
                state: v.state.to_json(),
                field_times: v
                    .field_times
                    .iter()
                    .map(|(f, t)| {
                        (
                            f.key().to_string(),
                            t.to_rfc3339_opts(SecondsFormat::Secs, true),
                        )
                    })
                    .collect(),
                identity: store::Identity {
                    model: v.info.reported_model.as_deref().map(str::to_string),
                    sw_version: v.info.sw_version.clone(),
                },
            };
            let write = store::Write::Save {
                record,
                keep_discovery,
            };
            batch.push((id.clone(), write));
        }
        if batch.is_empty() {
            return false;
        }
        let dir = self.config.bridge.state_dir.clone();
        self.persisting = Some(tokio::task::spawn_blocking(move || {
            store::save_all(&dir, batch)
        }));
        true
    }
}
