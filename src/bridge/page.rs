//! The hub's side of the status page: the fleet table's rows (filtered, sorted, paged
//! out of the fleet, built only for the page asked for) and what the fleet itself does
//! not keep: since when each vehicle shows what it shows, and its last command.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};

use super::fleet::{Fleet, Vehicle};
use crate::model::{CommandStatus, Field, Value, VehicleId};
use crate::status_page::feed::{FleetPage, FleetQuery, FleetRow, SortKey, StateFilter, PER_PAGE};

#[derive(Default)]
struct Extra {
    since: Option<DateTime<Utc>>,
    command: Option<(String, CommandStatus, DateTime<Utc>)>,
}

#[derive(Default)]
pub(super) struct Extras {
    by_vehicle: HashMap<VehicleId, Extra>,
}

impl Extras {
    pub fn availability(&mut self, id: &VehicleId, at: DateTime<Utc>) {
        self.by_vehicle.entry(id.clone()).or_default().since = Some(at);
    }

    /// Only for vehicles the fleet knows (a command for an unknown id leaves nothing).
    pub fn result(
        &mut self,
        id: &VehicleId,
        command: &str,
        status: CommandStatus,
        at: DateTime<Utc>,
    ) {
        self.by_vehicle.entry(id.clone()).or_default().command =
            Some((command.to_string(), status, at));
    }

    pub fn forget(&mut self, id: &VehicleId) {
        self.by_vehicle.remove(id);
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn energy(v: &Vehicle) -> Option<f64> {
    let s = v.state();
    number(s.get(Field::BatteryLevel)).or_else(|| number(s.get(Field::FuelLevel)))
}

/// One vehicle's row; `pending` is LOCKING / UNLOCKING while a lock command runs.
pub(super) fn row(
    id: &VehicleId,
    v: &Vehicle,
    upstream: &'static str,
    extras: &Extras,
    pending: Option<&str>,
) -> FleetRow {
    let extra = extras.by_vehicle.get(id);
    let state = v.state();
    let energy = match (
        number(state.get(Field::BatteryLevel)),
        number(state.get(Field::FuelLevel)),
    ) {
        (Some(b), _) => Some(format!("battery {b} %")),
        (None, Some(f)) => Some(format!("fuel {f} %")),
        (None, None) => None,
    };
    let lock = pending
        .map(str::to_string)
        .or_else(|| state.get(Field::Lock).map(|l| l.to_payload()));
    let caps = &v.info().capabilities;
    let actions = ["lock", "refresh"]
        .into_iter()
        .filter(|key| crate::controls::by_key(key).is_some_and(|c| caps.contains(&c.capability)))
        .collect();
    FleetRow {
        id: id.to_string(),
        name: v.info().name.clone(),
        upstream,
        online: v.shown_online(),
        since: extra.and_then(|e| e.since).map(rfc3339),
        reported_at: v.reported_at().map(rfc3339),
        latitude: state.position.map(|p| p.latitude),
        longitude: state.position.map(|p| p.longitude),
        lock,
        energy,
        command: extra
            .and_then(|e| e.command.as_ref())
            .map(|(name, status, at)| {
                let status = serde_json::to_value(status)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_string))
                    .unwrap_or_default();
                format!("{name}: {status} at {}", rfc3339(*at))
            }),
        actions,
    }
}

/// Every vehicle with a position, for the map.
pub(super) fn positions(fleet: &Fleet) -> Vec<crate::status_page::feed::MapPoint> {
    fleet
        .iter()
        .filter_map(|(id, v)| {
            let p = v.state().position?;
            Some((
                id.to_string(),
                v.info().name.clone(),
                p.latitude,
                p.longitude,
            ))
        })
        .collect()
}

/// The page of the fleet table that `q` asks for (a page past the end is the last).
pub(super) fn page(
    fleet: &Fleet,
    names: &[&'static str],
    extras: &Extras,
    pending: impl Fn(&VehicleId) -> Option<&'static str>,
    q: &FleetQuery,
) -> FleetPage {
    let upstream = |v: &Vehicle| names.get(v.owner()).copied().unwrap_or("?");
    let needle = q.q.trim().to_lowercase();
    let mut matched: Vec<(&VehicleId, &Vehicle)> = fleet
        .iter()
        .filter(|(_, v)| match q.state {
            StateFilter::All => true,
            StateFilter::Online => v.shown_online() == Some(true),
            StateFilter::Offline => v.shown_online() != Some(true),
        })
        .filter(|(id, v)| {
            needle.is_empty()
                || id.as_str().to_lowercase().contains(&needle)
                || v.info().name.to_lowercase().contains(&needle)
                || upstream(v).contains(&needle)
        })
        .collect();
    // Every key ends in the id, so the order is total and descending is its reverse.
    match q.sort {
        SortKey::Name => matched.sort_by_cached_key(|(id, v)| (v.info().name.to_lowercase(), *id)),
        SortKey::Upstream => matched.sort_by_key(|(id, v)| (upstream(v), *id)),
        // Online first, then offline, then those never shown either way.
        SortKey::State => matched.sort_by_key(|(id, v)| (std::cmp::Reverse(v.shown_online()), *id)),
        SortKey::Reported => matched.sort_by_key(|(id, v)| (v.reported_at(), *id)),
        SortKey::Battery => matched.sort_by(|(ia, a), (ib, b)| {
            let (ea, eb) = (energy(a), energy(b));
            ea.partial_cmp(&eb)
                .unwrap_or(Ordering::Equal)
                .then_with(|| ia.cmp(ib))
        }),
    }
    if q.desc {
        matched.reverse();
    }
    let pages = matched.len().div_ceil(PER_PAGE).max(1);
    let page = q.page.clamp(1, pages);
    let rows = matched
        .iter()
        .skip((page - 1) * PER_PAGE)
        .take(PER_PAGE)
        .map(|(id, v)| row(id, v, upstream(v), extras, pending(id)))
        .collect();
    FleetPage {
        rows,
        matched: matched.len(),
        total: fleet.len(),
        online: fleet.online(),
        page,
        pages,
    }
}
