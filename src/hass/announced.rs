//! What Home Assistant was told about each vehicle's entities, and what to publish to
//! bring it in line: new or changed documents, removals of entities no longer offered,
//! everything again after an HA birth. The hub decides *when* (a vehicle's shape or
//! info changed, a purge, a restart); this module decides *what*, the way zigbee2mqtt's
//! `homeassistant.ts` owns its discovery state.
//!
//! Documents are not kept: one hash per entity, under a name (`component/key`) shared
//! by every vehicle that has it. Topics and documents are rebuilt when needed; a fleet's
//! documents would otherwise be most of the bridge's memory.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::{Shape, Topics, VehicleDiscovery};
use crate::model::{VehicleId, VehicleInfo};

/// An entity as `component/key` (`sensor/battery_level`), shared across vehicles; a
/// topic of another shape (an old record's) is kept whole behind `=`.
pub type EntityName = Arc<str>;

/// Every entity name in use, once.
#[derive(Debug, Default)]
pub struct EntityNames(HashSet<EntityName>);

impl EntityNames {
    /// The name of a vehicle's discovery `topic`.
    pub fn intern(&mut self, topics: &Topics, id: &VehicleId, topic: &str) -> EntityName {
        let component = topic
            .strip_prefix(topics.discovery_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.split('/').next());
        let key = topics
            .config_object_id(topic)
            .and_then(|object| object.strip_prefix(id.as_str()))
            .and_then(|rest| rest.strip_prefix('_'));
        let name = match (component, key) {
            (Some(component), Some(key))
                if topics.discovery(component, &format!("{id}_{key}")) == topic =>
            {
                format!("{component}/{key}")
            }
            _ => format!("={topic}"),
        };
        if let Some(known) = self.0.get(name.as_str()) {
            return known.clone();
        }
        let name: EntityName = name.into();
        self.0.insert(name.clone());
        name
    }
}

/// The discovery topic of a vehicle's entity.
pub fn entity_topic(topics: &Topics, id: &VehicleId, name: &str) -> String {
    match name.strip_prefix('=') {
        Some(topic) => topic.to_string(),
        None => {
            let (component, key) = name.split_once('/').unwrap_or(("sensor", name));
            topics.discovery(component, &format!("{id}_{key}"))
        }
    }
}

/// What tells one payload from another (not a security boundary: our own documents).
fn payload_hash(payload: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// What a vehicle's documents are built from, once its connector announced it.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub info: &'a VehicleInfo,
    pub shape: &'a Shape,
    pub pin_required: bool,
}

impl Source<'_> {
    /// A fingerprint of what the documents are built from, not a copy of it.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.shape, self.info, self.pin_required).hash(&mut h);
        h.finish()
    }
}

/// What HA was told about one vehicle.
#[derive(Debug, Default)]
pub struct Announced {
    /// Entity → hash of its document, as last published.
    entities: BTreeMap<EntityName, u64>,
    /// The documents remembered in `state_dir`, for a restored vehicle whose connector has
    /// not announced it yet (then they cannot be rebuilt). Boxed: every vehicle has the
    /// field, few for long, and an empty map inline is three words a vehicle.
    #[allow(clippy::box_collection)]
    remembered: Option<Box<BTreeMap<String, String>>>,
    /// The fingerprint of the source the entities were last built from.
    built_from: Option<u64>,
}

/// Discovery messages to publish (retained; an empty payload removes an entity).
pub type Publish = Vec<(String, Vec<u8>)>;

impl Announced {
    /// A restored vehicle: what its record says was announced, topic → document.
    pub fn restored(
        documents: BTreeMap<String, String>,
        names: &mut EntityNames,
        topics: &Topics,
        id: &VehicleId,
    ) -> Announced {
        let entities = documents
            .iter()
            .map(|(topic, payload)| (names.intern(topics, id, topic), payload_hash(payload)))
            .collect();
        Announced {
            entities,
            remembered: Some(Box::new(documents)),
            built_from: None,
        }
    }

    pub fn len(&self) -> usize {
        self.entities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// The discovery topics of what was announced.
    pub fn topics<'a>(
        &'a self,
        topics: &'a Topics,
        id: &'a VehicleId,
    ) -> impl Iterator<Item = String> + 'a {
        self.entities
            .keys()
            .map(move |n| entity_topic(topics, id, n))
    }

    /// The vehicle's documents (topic → payload): built from `source`, or the remembered
    /// ones while its connector has not announced it (`None`).
    pub fn documents(
        &self,
        topics: &Topics,
        id: &VehicleId,
        source: Option<Source<'_>>,
    ) -> BTreeMap<String, String> {
        let Some(source) = source else {
            return self.remembered.as_deref().cloned().unwrap_or_default();
        };
        let builder = VehicleDiscovery {
            topics,
            info: source.info,
            pin_required: source.pin_required,
        };
        builder
            .entities(source.shape)
            .into_iter()
            .map(|e| (e.topic(topics, id.as_str()), e.config.to_string()))
            .collect()
    }

    /// Brings HA in line with `source`: documents that are new or changed, and removals
    /// of entities no longer offered. Nothing is rebuilt while `source` is unchanged;
    /// `force` re-publishes every document (after a reconnect or an HA birth). Returns
    /// what to publish and whether the announced set changed (the record is behind).
    pub fn sync(
        &mut self,
        names: &mut EntityNames,
        topics: &Topics,
        id: &VehicleId,
        source: Option<Source<'_>>,
        force: bool,
    ) -> (Publish, bool) {
        let current = source.map(|s| s.fingerprint());
        let rebuild = current.is_some() && self.built_from != current;
        let mut out = Publish::new();
        if !rebuild && !force {
            return (out, false);
        }
        let mut hashes = BTreeMap::new();
        for (topic, payload) in self.documents(topics, id, source) {
            let name = names.intern(topics, id, &topic);
            let hash = payload_hash(&payload);
            if force || self.entities.get(&name) != Some(&hash) {
                out.push((topic, payload.into_bytes()));
            }
            hashes.insert(name, hash);
        }
        if rebuild {
            // Only a capability the connector no longer offers (or the PIN entity when
            // the PIN is unset) can be unwanted here: fields never leave the shape.
            for name in self.entities.keys().filter(|n| !hashes.contains_key(*n)) {
                let topic = entity_topic(topics, id, name);
                tracing::info!(event = "entity_removed", vehicle = %id, topic, "entity no longer offered; removing");
                out.push((topic, Vec::new()));
            }
            self.built_from = current;
            self.remembered = None;
        }
        let changed = self.entities != hashes;
        self.entities = hashes;
        (out, changed)
    }

    /// Every entity goes: the removals to publish.
    pub fn remove_all(&mut self, topics: &Topics, id: &VehicleId) -> Publish {
        let out = self.topics(topics, id).map(|t| (t, Vec::new())).collect();
        *self = Announced::default();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_names_are_shared_and_give_their_topics_back() {
        let topics = Topics::new("v2m", "homeassistant");
        let mut names = EntityNames::default();
        let (a, b) = (
            VehicleId::new("kx1").unwrap(),
            VehicleId::new("kx2").unwrap(),
        );
        let topic_a = topics.discovery("sensor", "kx1_battery_level");
        let topic_b = topics.discovery("sensor", "kx2_battery_level");
        let name_a = names.intern(&topics, &a, &topic_a);
        let name_b = names.intern(&topics, &b, &topic_b);
        assert_eq!(&*name_a, "sensor/battery_level");
        assert!(Arc::ptr_eq(&name_a, &name_b), "one name for every vehicle");
        assert_eq!(entity_topic(&topics, &a, &name_a), topic_a);
        assert_eq!(entity_topic(&topics, &b, &name_b), topic_b);
        // Another vehicle's topic, or another prefix's (an old record): kept whole.
        for odd in [topic_b.clone(), "ha/sensor/other/kx1_x/config".to_string()] {
            let name = names.intern(&topics, &a, &odd);
            assert_eq!(entity_topic(&topics, &a, &name), odd);
        }
    }

    #[test]
    fn only_what_changed_is_published_and_a_restored_vehicle_keeps_its_documents() {
        let topics = Topics::new("v2m", "homeassistant");
        let mut names = EntityNames::default();
        let id = VehicleId::new("kx1").unwrap();
        let info = VehicleInfo {
            id: id.clone(),
            name: "kx1".into(),
            manufacturer: "kingxun".into(),
            model: "tracker".into(),
            reported_model: None,
            sw_version: None,
            custom_name: false,
            serial_number: None,
            capabilities: vec![crate::model::Capability::Lock].into(),
            event_types: Default::default(),
        };
        let mut shape = Shape::default();
        shape.fields.insert(crate::model::Field::BatteryLevel);
        fn source<'a>(info: &'a VehicleInfo, shape: &'a Shape) -> Source<'a> {
            Source {
                info,
                shape,
                pin_required: false,
            }
        }
        let mut announced = Announced::default();
        let (first, changed) =
            announced.sync(&mut names, &topics, &id, Some(source(&info, &shape)), false);
        assert!(changed && !first.is_empty());
        // Same source: nothing to publish, nothing rebuilt.
        let (again, changed) =
            announced.sync(&mut names, &topics, &id, Some(source(&info, &shape)), false);
        assert!(again.is_empty() && !changed);
        // Forced (HA birth): everything again, unchanged.
        let (forced, changed) =
            announced.sync(&mut names, &topics, &id, Some(source(&info, &shape)), true);
        assert_eq!(forced.len(), first.len());
        assert!(!changed);
        // A new field: exactly its document.
        shape.fields.insert(crate::model::Field::Odometer);
        let (grown, _) =
            announced.sync(&mut names, &topics, &id, Some(source(&info, &shape)), false);
        assert_eq!(grown.len(), 1, "{grown:?}");
        assert!(grown[0].0.contains("odometer"));

        // Restored from a record: its remembered documents, until the connector speaks.
        let documents = announced.documents(&topics, &id, Some(source(&info, &shape)));
        let mut restored = Announced::restored(documents.clone(), &mut names, &topics, &id);
        assert_eq!(restored.documents(&topics, &id, None), documents);
        let (births, changed) = restored.sync(&mut names, &topics, &id, None, true);
        assert_eq!(births.len(), documents.len());
        assert!(!changed);
        let removals = restored.remove_all(&topics, &id);
        assert!(removals.iter().all(|(_, p)| p.is_empty()));
        assert_eq!(removals.len(), documents.len());
        assert!(restored.is_empty());
    }
}
