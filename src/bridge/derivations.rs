//! The derivation part of the hub: one `derive::Deriver` per vehicle that has reported,
//! fed the vehicle's merged state after each report and ticked with the stale check.
//! What it works out (trips, charging sessions, zones, fleet events) goes back to the hub
//! to publish; an open trip is saved in the vehicle's record, so a restart continues it.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::derive::{Derived, Deriver, Saved, Settings};
use crate::model::{VehicleId, VehicleState};

/// Connectors whose devices report their own trips (kingxun 1008, iauto360 1012):
/// their trips are not derived a second time.
const OWN_TRIPS: &[&str] = &["kingxun", "iauto360"];

pub(super) struct Derivations {
    settings: Arc<Settings>,
    by_vehicle: HashMap<VehicleId, Box<Deriver>>,
}

impl Derivations {
    pub fn new(settings: Settings) -> Derivations {
        Derivations {
            settings: Arc::new(settings),
            by_vehicle: HashMap::new(),
        }
    }

    fn deriver(&mut self, id: &VehicleId, connector: &str) -> &mut Deriver {
        let settings = &self.settings;
        self.by_vehicle.entry(id.clone()).or_insert_with(|| {
            Box::new(
                Deriver::new(settings.clone()).with_upstream_trips(OWN_TRIPS.contains(&connector)),
            )
        })
    }

    /// A report: `at` is the vehicle's own time of it, `state` its merged state.
    pub fn report(
        &mut self,
        id: &VehicleId,
        connector: &str,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        state: &VehicleState,
    ) -> Derived {
        self.deriver(id, connector).report(at, now, state)
    }

    /// What time alone decides (a trip's end after standing still, `inactive`).
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<(VehicleId, Derived)> {
        self.by_vehicle
            .iter_mut()
            .map(|(id, d)| (id.clone(), d.tick(now)))
            .filter(|(_, d)| !d.is_empty())
            .collect()
    }

    pub fn forget(&mut self, id: &VehicleId) {
        self.by_vehicle.remove(id);
    }

    /// Whether the vehicle has anything for its record (it is written at shutdown then,
    /// changed or not).
    pub fn keeps(&self, id: &VehicleId) -> bool {
        self.by_vehicle.contains_key(id)
    }

    /// What the vehicle's record keeps of it (an open trip, the last zone).
    pub fn save(&self, id: &VehicleId) -> Option<serde_json::Value> {
        self.by_vehicle
            .get(id)
            .and_then(|d| serde_json::to_value(d.save()).ok())
    }

    /// From a record; unreadable is a fresh start (nothing else is lost).
    pub fn restore(&mut self, id: &VehicleId, connector: &str, saved: &serde_json::Value) {
        let Ok(saved) = serde_json::from_value::<Saved>(saved.clone()) else {
            return;
        };
        let d = Deriver::restore(self.settings.clone(), saved)
            .with_upstream_trips(OWN_TRIPS.contains(&connector));
        self.by_vehicle.insert(id.clone(), Box::new(d));
    }
}
