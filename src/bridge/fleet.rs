//! The fleet: every vehicle the bridge knows, its newest state and its clocks (when it
//! last reported by its own time, when each field came, whether it is stale), and what
//! its availability is. No I/O and no clock reads: the hub gives the time.
//!
//! What Home Assistant was told about a vehicle (`entities`) and whether its record is
//! behind (`record`) ride along in the vehicle, so a fleet of 10 000 pays for one map,
//! but their fields are private to `lifecycle` and `records`: only those change them.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};

use super::{lifecycle, records, store};
use crate::hass::{self, Shape};
use crate::model::{lock_state, Field, Value, VehicleId, VehicleInfo, VehicleState};

pub(super) struct Vehicle {
    owner: usize,
    info: VehicleInfo,
    /// False for a vehicle restored from `state_dir` that its connector has not announced
    /// yet: its discovery documents are the remembered ones, not rebuilt.
    info_known: bool,
    state: VehicleState,
    /// The connector's view; a vehicle is offline until its connector says otherwise.
    online: bool,
    /// Whether the connector ever sent an availability: if not, a state means online.
    availability_told: bool,
    /// When the vehicle itself last reported (its own clock where the upstream gives one,
    /// never in the future).
    reported_at: Option<DateTime<Utc>>,
    /// Whether the upstream gives the vehicle's own time (then only that counts).
    own_clock: bool,
    /// When each field was last reported.
    field_times: store::FieldTimes,
    /// Fields reported since the bridge started (a purge keeps these).
    reported_this_run: Shape,
    stale: bool,
    published_availability: Option<bool>,
    /// The stale check has already waited once for this vehicle's first availability.
    grace_used: bool,
    /// Every field ever reported and whether it had a position: the entity set.
    shape: Shape,
    /// What HA was told about its entities (only `lifecycle` changes it).
    pub(super) entities: lifecycle::Entities,
    /// Whether its `state_dir` record is behind (only `records` changes it).
    pub(super) record: records::Marks,
}

/// A vehicle as its record in `state_dir` left it.
pub(super) struct Restored {
    pub owner: usize,
    pub info: VehicleInfo,
    pub state: VehicleState,
    pub shape: Shape,
    pub field_times: store::FieldTimes,
    pub entities: lifecycle::Entities,
}

impl Vehicle {
    fn new(owner: usize, info: VehicleInfo) -> Vehicle {
        Vehicle {
            owner,
            info,
            info_known: true,
            state: VehicleState::default(),
            online: false,
            availability_told: false,
            reported_at: None,
            own_clock: false,
            field_times: store::FieldTimes::default(),
            reported_this_run: Shape::default(),
            stale: false,
            published_availability: None,
            grace_used: false,
            shape: Shape::default(),
            entities: lifecycle::Entities::default(),
            record: records::Marks::default(),
        }
    }

    pub fn owner(&self) -> usize {
        self.owner
    }

    pub fn info(&self) -> &VehicleInfo {
        &self.info
    }

    pub fn state(&self) -> &VehicleState {
        &self.state
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn field_times(&self) -> &store::FieldTimes {
        &self.field_times
    }

    pub fn has_reported(&self) -> bool {
        self.reported_at.is_some()
    }

    /// When the vehicle itself last reported (its own clock where it gives one).
    pub fn reported_at(&self) -> Option<DateTime<Utc>> {
        self.reported_at
    }

    /// What its documents are built from; `None` while only its record knows it.
    pub fn source(&self, pin_required: bool) -> Option<hass::Source<'_>> {
        self.info_known.then_some(hass::Source {
            info: &self.info,
            shape: &self.shape,
            pin_required,
        })
    }

    /// Its entities, what they are built from, and its record marks, apart (so the
    /// lifecycle can change the first while reading the second).
    pub fn for_lifecycle(
        &mut self,
        pin_required: bool,
    ) -> (
        &mut lifecycle::Entities,
        Option<hass::Source<'_>>,
        &mut records::Marks,
    ) {
        let source = self.info_known.then_some(hass::Source {
            info: &self.info,
            shape: &self.shape,
            pin_required,
        });
        (&mut self.entities, source, &mut self.record)
    }

    fn available(&self) -> bool {
        self.online && !self.stale
    }

    /// What its `availability` topic last said; `None` before it said anything.
    pub fn shown_online(&self) -> Option<bool> {
        self.published_availability
    }
}

/// What a state report changed.
pub(super) struct Reported {
    /// The vehicle was not known before.
    pub added: bool,
    /// The report brought a field (or a position) the vehicle never had: its entity set grew.
    pub grew: bool,
}

/// What a purge does to one vehicle.
pub(super) enum Purge {
    /// It has not reported since the start and its connector has not announced it.
    Forget,
    /// Its entity set is cut down to what it reported since the start.
    Shrunk,
    Unknown,
}

fn default_info(id: &VehicleId, connector: &str) -> VehicleInfo {
    VehicleInfo {
        id: id.clone(),
        name: id.to_string(),
        manufacturer: connector.to_string().into(),
        model: "Vehicle".into(),
        reported_model: None,
        sw_version: None,
        custom_name: false,
        serial_number: None,
        capabilities: Default::default(),
        event_types: Default::default(),
    }
}

#[derive(Default)]
pub(super) struct Fleet {
    /// Boxed: the map's slots stay small (a fleet's map has 16 384 of them).
    vehicles: HashMap<VehicleId, Box<Vehicle>>,
}

impl Fleet {
    pub fn len(&self) -> usize {
        self.vehicles.len()
    }

    pub fn get(&self, id: &VehicleId) -> Option<&Vehicle> {
        self.vehicles.get(id).map(|v| &**v)
    }

    pub fn contains(&self, id: &VehicleId) -> bool {
        self.vehicles.contains_key(id)
    }

    pub fn ids(&self) -> Vec<VehicleId> {
        self.vehicles.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&VehicleId, &Vehicle)> {
        self.vehicles.iter().map(|(id, v)| (id, &**v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&VehicleId, &mut Vehicle)> {
        self.vehicles.iter_mut().map(|(id, v)| (id, &mut **v))
    }

    /// Vehicles whose published availability is `online`.
    pub fn online(&self) -> usize {
        self.vehicles
            .values()
            .filter(|v| v.published_availability == Some(true))
            .count()
    }

    /// Mutable access for the parts that own a vehicle's `entities` and `record`.
    pub fn get_mut(&mut self, id: &VehicleId) -> Option<&mut Vehicle> {
        self.vehicles.get_mut(id).map(|v| &mut **v)
    }

    /// A vehicle as its record left it: known by its documents until its connector says more.
    pub fn restore(&mut self, id: VehicleId, r: Restored) {
        let mut v = Vehicle::new(r.owner, r.info);
        v.info_known = false;
        v.state = r.state;
        v.shape = r.shape;
        v.reported_at = r.field_times.latest();
        v.field_times = r.field_times;
        v.entities = r.entities;
        self.vehicles.insert(id, Box::new(v));
    }

    /// A restored vehicle whose connector no longer lists it: kept only to be forgotten.
    pub fn restore_unlisted(
        &mut self,
        id: VehicleId,
        owner: usize,
        info: VehicleInfo,
        entities: lifecycle::Entities,
    ) {
        let mut v = Vehicle::new(owner, info);
        v.entities = entities;
        self.vehicles.insert(id, Box::new(v));
    }

    pub fn remove(&mut self, id: &VehicleId) -> Option<Box<Vehicle>> {
        self.vehicles.remove(id)
    }

    /// The connector announced a vehicle (or its identity changed). Returns whether it is new.
    pub fn announce(&mut self, owner: usize, mut info: VehicleInfo) -> bool {
        match self.vehicles.get_mut(&info.id) {
            Some(v) => {
                // What the connector was not told (yet) stays as the device reported it
                // before, this run or the last.
                if info.reported_model.is_none() {
                    info.reported_model = v.info.reported_model.take();
                }
                if info.sw_version.is_none() {
                    info.sw_version = v.info.sw_version.take();
                }
                v.owner = owner;
                v.info = info;
                v.info_known = true;
                false
            }
            None => {
                self.vehicles
                    .insert(info.id.clone(), Box::new(Vehicle::new(owner, info)));
                true
            }
        }
    }

    /// A state report, stamped with the vehicle's own time when the upstream gives one
    /// (never ahead of `now`), else `now`.
    pub fn report(
        &mut self,
        owner: usize,
        connector: &str,
        id: &VehicleId,
        state: VehicleState,
        replace: bool,
        now: DateTime<Utc>,
    ) -> Reported {
        let mut added = false;
        let v = self.vehicles.entry(id.clone()).or_insert_with(|| {
            added = true;
            Box::new(Vehicle::new(owner, default_info(id, connector)))
        });
        let own_time = state
            .get(Field::LastUpdate)
            .and_then(|t| match t {
                Value::Text(t) => chrono::DateTime::parse_from_rfc3339(t).ok(),
                _ => None,
            })
            .map(|t| t.with_timezone(&Utc).min(now));
        // Once the upstream gives the vehicle's own time, updates without one (a data
        // plan, a connection status) do not make it "just reported".
        v.own_clock |= own_time.is_some();
        let reported = own_time.unwrap_or(now);
        let advances = own_time.is_some() || !v.own_clock;
        for field in state.values.keys() {
            v.field_times.insert(*field, reported);
        }
        v.reported_this_run.absorb(&state);
        let grew = v.shape.absorb(&state) | v.shape.fields.insert(Field::LastUpdate);
        if replace {
            // Fields absent now show "unknown"; their entities stay (see `lifecycle`),
            // and so does the last known position.
            let position = v.state.position;
            v.state = state;
            v.state.position = v.state.position.or(position);
        } else {
            v.state.merge(state);
        }
        if advances {
            v.reported_at = Some(v.reported_at.map_or(reported, |r| r.max(reported)));
        }
        let last = v.reported_at.unwrap_or(reported);
        v.state.set(
            Field::LastUpdate,
            last.to_rfc3339_opts(SecondsFormat::Millis, true),
        );
        v.field_times.insert(Field::LastUpdate, last);
        v.reported_this_run.fields.insert(Field::LastUpdate);
        if !v.availability_told {
            v.online = true;
        }
        Reported { added, grew }
    }

    /// Fields the bridge worked out (zone, last trip, last charge) join the state as of
    /// the vehicle's last report. Returns whether the entity set grew.
    pub fn absorb_derived(&mut self, id: &VehicleId, fields: VehicleState) -> bool {
        let Some(v) = self.vehicles.get_mut(id) else {
            return false;
        };
        if fields == VehicleState::default() {
            return false;
        }
        if let Some(at) = v.reported_at {
            for field in fields.values.keys() {
                v.field_times.insert(*field, at);
            }
        }
        v.reported_this_run.absorb(&fields);
        let grew = v.shape.absorb(&fields);
        v.state.merge(fields);
        grew
    }

    /// The connector's word on reachability. Returns whether the vehicle is known.
    pub fn set_online(&mut self, id: &VehicleId, online: bool) -> bool {
        let Some(v) = self.vehicles.get_mut(id) else {
            return false;
        };
        v.online = online;
        v.availability_told = true;
        true
    }

    /// A lock command succeeded: the lock's state is what was asked for.
    pub fn set_locked(&mut self, id: &VehicleId, locked: bool) {
        if let Some(v) = self.vehicles.get_mut(id) {
            let state = if locked {
                lock_state::LOCKED
            } else {
                lock_state::UNLOCKED
            };
            v.state.set(Field::Lock, Value::from(state));
        }
    }

    /// The availability to publish now, if any (`force`: whatever it is).
    pub fn availability_to_publish(&mut self, id: &VehicleId, force: bool) -> Option<bool> {
        let v = self.vehicles.get_mut(id)?;
        let available = v.available();
        (force || v.published_availability != Some(available)).then(|| {
            v.published_availability = Some(available);
            available
        })
    }

    /// Vehicles due a stale check: all but those still waiting, once, for their first
    /// availability (their first state is usually on its way, and "offline" a moment
    /// before "online" is a flap).
    pub fn due_stale_check(&mut self) -> Vec<VehicleId> {
        self.vehicles
            .iter_mut()
            .filter_map(|(id, v)| {
                let graced = v.published_availability.is_none() && !v.grace_used;
                v.grace_used = true;
                (!graced).then(|| id.clone())
            })
            .collect()
    }

    /// Staleness by the vehicle's own time (a cloud serving last year's data is not
    /// "updated just now"). Returns whether its availability is to be looked at again.
    pub fn check_stale(
        &mut self,
        id: &VehicleId,
        now: DateTime<Utc>,
        stale_after: chrono::Duration,
    ) -> bool {
        let Some(v) = self.vehicles.get_mut(id) else {
            return false;
        };
        let stale = v.reported_at.is_some_and(|t| now - t > stale_after);
        if stale == v.stale && v.published_availability.is_some() {
            return false;
        }
        v.stale = stale;
        if stale {
            tracing::info!(event = "vehicle_stale", vehicle = %id, "no report within stale_after; marking offline");
        }
        true
    }

    /// Fields a vehicle has not reported for `after` while it kept reporting lose their
    /// entity. Returns the vehicles whose entity set shrank.
    pub fn forget_absent_fields(&mut self, after: chrono::Duration) -> Vec<VehicleId> {
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
            }
            changed.push(id.clone());
        }
        changed
    }

    /// A purge: what `id` has not reported since the start goes.
    pub fn purge(&mut self, id: &VehicleId) -> Purge {
        let Some(v) = self.vehicles.get_mut(id) else {
            return Purge::Unknown;
        };
        if v.reported_this_run == Shape::default() && !v.info_known {
            return Purge::Forget;
        }
        v.shape = v.reported_this_run.clone();
        Purge::Shrunk
    }

    /// `owner`'s vehicles that are not in `keep` (they left the upstream account).
    pub fn left(&self, owner: usize, keep: &HashSet<VehicleId>) -> Vec<VehicleId> {
        self.vehicles
            .iter()
            .filter(|(id, v)| v.owner == owner && !keep.contains(*id))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

impl Restored {
    /// A vehicle from its record: the identity it reported, its fields and their times.
    pub fn from_record(
        owner: usize,
        id: &VehicleId,
        record: &store::Record,
        entities: lifecycle::Entities,
    ) -> Restored {
        let mut info = default_info(id, &record.connector);
        info.reported_model = record.identity.model.clone().map(Into::into);
        info.sw_version = record.identity.sw_version.clone();
        let shape = Shape {
            fields: record
                .fields
                .iter()
                .filter_map(|k| Field::from_key(k))
                .collect(),
            position: record.position,
        };
        let mut field_times = store::FieldTimes::default();
        for (key, at) in &record.field_times {
            let (Some(field), Ok(at)) = (
                Field::from_key(key),
                chrono::DateTime::parse_from_rfc3339(at),
            ) else {
                continue;
            };
            field_times.insert(field, at.with_timezone(&Utc));
        }
        Restored {
            owner,
            info,
            state: VehicleState::from_json(&record.state),
            shape,
            field_times,
            entities,
        }
    }

    /// The info a vehicle no longer listed is forgotten under.
    pub fn unlisted_info(id: &VehicleId, connector: &str) -> VehicleInfo {
        default_info(id, connector)
    }
}
