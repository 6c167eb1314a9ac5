//! Home Assistant entity lifecycle: the one part that decides what discovery goes out,
//! and holds what HA was told (zigbee2mqtt's `homeassistant.ts` is the model). The hub
//! says *when* a vehicle may have changed (`Hub::discover`); this part builds its
//! documents from the vehicle's config and reported identity (`hass::vehicle`), compares
//! them with what was announced (`hass::Announced`) and returns only what differs.
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

use super::fleet::{Fleet, Vehicle};
use crate::hass::{self, Topics};
use crate::model::VehicleId;

/// The topic that asks the bridge to remove entities.
pub(super) const PURGE_ENTITY: &str = "purge";
/// Retained configs of ours, seen on the broker and not (yet) claimed, noted at most.
const UNCLAIMED_MAX: usize = 100_000;

/// What HA was told about one vehicle's entities.
#[derive(Debug, Default)]
pub(super) struct Entities(hass::Announced);

/// Discovery messages to publish (retained; an empty payload removes an entity).
pub(super) type Publish = hass::Publish;

pub(super) struct Lifecycle {
    topics: Topics,
    /// `mqtt.discovery`: without it nothing is announced.
    enabled: bool,
    /// Whether a PIN entity is offered (`bridge.command_pin` set).
    pin_required: bool,
    /// Every entity name any vehicle has, once.
    names: hass::EntityNames,
    /// Retained discovery configs of ours found on the broker (a purge removes those no
    /// vehicle claims).
    unclaimed: HashSet<String>,
    /// This cluster instance's id (cluster mode): it announces its own device.
    instance: Option<String>,
}

impl Lifecycle {
    pub fn new(topics: Topics, enabled: bool, pin_required: bool) -> Lifecycle {
        Lifecycle {
            topics,
            enabled,
            pin_required,
            names: hass::EntityNames::default(),
            unclaimed: HashSet::new(),
            instance: None,
        }
    }

    /// Cluster mode: the bridge's sensors move to this instance's own device.
    pub fn set_instance(&mut self, instance: String) {
        self.instance = Some(instance);
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// What a record says was announced, topic → document.
    pub fn restored(&mut self, documents: BTreeMap<String, String>, id: &VehicleId) -> Entities {
        Entities(hass::Announced::restored(
            documents,
            &mut self.names,
            &self.topics,
            id,
        ))
    }

    /// Brings HA in line with `v`: new or changed documents and removals of entities no
    /// longer offered; with `force` every document again (a reconnect, an HA birth).
    /// Marks the vehicle's record behind when the announced set changed.
    pub fn sync(&mut self, id: &VehicleId, v: &mut Vehicle, force: bool) -> Publish {
        if !self.enabled {
            return Publish::new();
        }
        let (entities, source, record) = v.for_lifecycle(self.pin_required);
        let (out, changed) = entities
            .0
            .sync(&mut self.names, &self.topics, id, source, force);
        if changed {
            record.entities_changed();
        }
        out
    }

    /// The vehicle's documents as they stand (what its record keeps).
    pub fn documents(&self, id: &VehicleId, v: &Vehicle) -> BTreeMap<String, String> {
        v.entities
            .0
            .documents(&self.topics, id, v.source(self.pin_required))
    }

    /// Every entity of a vehicle that goes: the removals to publish.
    pub fn remove_all(&mut self, id: &VehicleId, entities: &mut Entities) -> Publish {
        entities.0.remove_all(&self.topics, id)
    }

    pub fn len(entities: &Entities) -> usize {
        entities.0.len()
    }

    /// The bridge's own entities (always sent whole: there are a handful).
    pub fn bridge_documents(&self) -> Vec<(String, String)> {
        if !self.enabled {
            return Vec::new();
        }
        hass::bridge_entities(&self.topics, self.instance.as_deref())
            .into_iter()
            .map(|e| (e.topic(&self.topics, "bridge"), e.config.to_string()))
            .collect()
    }

    /// A retained discovery config of ours arrived from the broker. A stale bridge entity
    /// goes at once (it is the bridge's own): its topic is returned, to clear. A
    /// vehicle's is only noted, for a purge to remove when nothing claims it.
    pub fn retained_config(&mut self, topic: &str) -> Option<String> {
        let object_id = self.topics.config_object_id(topic)?;
        if let Some(key) = object_id.strip_prefix("bridge_") {
            let current = hass::bridge_entities(&self.topics, self.instance.as_deref())
                .iter()
                .any(|e| e.key == key);
            // In a cluster, the instances' devices are each instance's to keep (ids may
            // hold `_`, so whose a key is cannot be told apart from here).
            let others = self.instance.is_some() && key.starts_with(hass::INSTANCE_KEY_PREFIX);
            if current || others {
                return None;
            }
            tracing::info!(
                event = "entity_removed",
                topic,
                "stale bridge entity removed"
            );
            return Some(topic.to_string());
        }
        if self.unclaimed.len() < UNCLAIMED_MAX {
            self.unclaimed.insert(topic.to_string());
        }
        None
    }

    /// The retained configs of ours no vehicle claims (forgotten once returned).
    pub fn take_unclaimed(&mut self, fleet: &Fleet) -> Vec<String> {
        let claimed: HashSet<String> = fleet
            .iter()
            .flat_map(|(id, v)| v.entities.0.topics(&self.topics, id))
            .collect();
        let unclaimed = self
            .unclaimed
            .drain()
            .filter(|t| !claimed.contains(t))
            .collect();
        unclaimed
    }
}
