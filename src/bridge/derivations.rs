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
    /// `overspeed_kmh` of connector sections, by connector name.
    section_limits: HashMap<&'static str, f64>,
    /// `overspeed_kmh` of vehicle entries.
    vehicle_limits: HashMap<VehicleId, f64>,
}

impl Derivations {
    pub fn new(settings: Settings) -> Derivations {
        Derivations {
            settings: Arc::new(settings),
            by_vehicle: HashMap::new(),
            section_limits: HashMap::new(),
            vehicle_limits: HashMap::new(),
        }
    }

    /// A connector's speed limits (before any of its vehicles reports).
    pub fn speed_limits(&mut self, connector: &'static str, limits: crate::connector::SpeedLimits) {
        if let Some(kmh) = limits.section {
            self.section_limits.insert(connector, kmh);
        }
        self.vehicle_limits.extend(limits.vehicles);
    }

    /// A vehicle that already has a deriver (restored from its record) takes its limit.
    pub fn relimit(&mut self, id: &VehicleId, connector: &str) {
        let limit = self.limit(id, connector);
        if let Some(d) = self.by_vehicle.remove(id) {
            self.by_vehicle
                .insert(id.clone(), Box::new(d.with_overspeed_kmh(limit)));
        }
    }

    /// A vehicle's own limit: its entry's, else its section's (else `None`:
    /// `events.overspeed_kmh`).
    fn limit(&self, id: &VehicleId, connector: &str) -> Option<f64> {
        self.vehicle_limits
            .get(id)
            .or_else(|| self.section_limits.get(connector))
            .copied()
    }

    fn deriver(&mut self, id: &VehicleId, connector: &str) -> &mut Deriver {
        let limit = self.limit(id, connector);
        let settings = &self.settings;
        self.by_vehicle.entry(id.clone()).or_insert_with(|| {
            Box::new(
                Deriver::new(settings.clone())
                    .with_upstream_trips(OWN_TRIPS.contains(&connector))
                    .with_overspeed_kmh(limit),
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
            .with_upstream_trips(OWN_TRIPS.contains(&connector))
            .with_overspeed_kmh(self.limit(id, connector));
        self.by_vehicle.insert(id.clone(), Box::new(d));
    }
}
