//! The record keeper: which vehicle records go to `state_dir` and when. Entities at the
//! next persist tick; a state alone at most every `PERSIST_STATE_EVERY` (a scooter
//! reporting every 5 s must not wear out an SD card); everything at shutdown; at most
//! `PERSIST_BATCH` records a write and one write at a time, so a fleet's first write, a
//! flood of changes or the shutdown cost bounded memory and disk bursts. It only builds
//! the batch: the event loop writes it off its task (`store::save_all`) and says when
//! it is done.

use std::time::{Duration, Instant};

use chrono::SecondsFormat;

use super::fleet::{Fleet, Vehicle};
use super::lifecycle::Lifecycle;
use super::store;
use crate::model::VehicleId;

/// A vehicle's changed state is written at most this often (and at shutdown).
pub(super) const PERSIST_STATE_EVERY: Duration = Duration::from_secs(300);
/// Records written per persist tick, at most (all of them at shutdown, in batches).
pub(super) const PERSIST_BATCH: usize = 500;

/// Whether one vehicle's record is behind.
#[derive(Debug, Default)]
pub(super) struct Marks {
    state_behind: bool,
    entities_behind: bool,
    saved_at: Option<Instant>,
    /// Written at shutdown (with what the derivation keeps).
    saved_last: bool,
}

impl Marks {
    pub fn state_changed(&mut self) {
        self.state_behind = true;
    }

    pub fn entities_changed(&mut self) {
        self.entities_behind = true;
    }

    fn due(&self, last: bool, now: Instant) -> bool {
        self.entities_behind
            || (self.state_behind
                && (last
                    || self
                        .saved_at
                        .is_none_or(|t| now.duration_since(t) >= PERSIST_STATE_EVERY)))
    }
}

/// A batch of record writes and removals.
pub(super) type Batch = Vec<(VehicleId, store::Write)>;

pub(super) struct RecordKeeper {
    /// `bridge.remember_vehicles`.
    enabled: bool,
    /// Vehicles whose record is to be deleted.
    forgotten: Vec<VehicleId>,
    /// A batch was handed out and is not written yet.
    writing: bool,
}

impl RecordKeeper {
    pub fn new(enabled: bool) -> RecordKeeper {
        RecordKeeper {
            enabled,
            forgotten: Vec::new(),
            writing: false,
        }
    }

    pub fn forget(&mut self, id: VehicleId) {
        if self.enabled {
            self.forgotten.push(id);
        }
    }

    /// The last batch is on disk.
    pub fn written(&mut self) {
        self.writing = false;
    }

    /// The records due now (with `last`, every changed one), or `None` when nothing is
    /// due or a write is still going (the next tick takes what is still behind).
    pub fn batch(
        &mut self,
        fleet: &mut Fleet,
        lifecycle: &Lifecycle,
        derivations: &super::derivations::Derivations,
        connector_names: &[&'static str],
        last: bool,
        now: Instant,
    ) -> Option<Batch> {
        if !self.enabled || self.writing {
            return None;
        }
        let mut batch: Batch = self
            .forgotten
            .drain(..)
            .map(|id| (id, store::Write::Remove))
            .collect();
        for (id, v) in fleet
            .iter_mut()
            .filter(|(id, v)| {
                v.record.due(last, now) || (last && !v.record.saved_last && derivations.keeps(id))
            })
            .take(PERSIST_BATCH)
        {
            // Documents are rebuilt only when the entities changed; a state alone keeps
            // those on disk (read back off the hub's task).
            let keep_discovery = lifecycle.enabled() && !v.record.entities_behind;
            let discovery = match lifecycle.enabled() && !keep_discovery {
                true => lifecycle.documents(id, v),
                false => Default::default(),
            };
            let mut record = record_of(v, connector_names, discovery);
            // An open trip goes into the record at shutdown, so a restart continues it; a
            // routine write leaves it out (a fleet on the move would write ~2 KB more per
            // vehicle every few minutes). A crash loses an open trip, nothing else.
            if last {
                record.derive = derivations.save(id);
            }
            v.record = Marks {
                state_behind: false,
                entities_behind: false,
                saved_at: Some(now),
                saved_last: last,
            };
            batch.push((
                id.clone(),
                store::Write::Save {
                    record: Box::new(record),
                    keep_discovery,
                },
            ));
        }
        if batch.is_empty() {
            return None;
        }
        self.writing = true;
        Some(batch)
    }
}

fn record_of(
    v: &Vehicle,
    connector_names: &[&'static str],
    discovery: std::collections::BTreeMap<String, String>,
) -> store::Record {
    store::Record {
        connector: connector_names
            .get(v.owner())
            .copied()
            .unwrap_or_default()
            .to_string(),
        discovery,
        fields: v
            .shape()
            .fields
            .iter()
            .map(|f| f.key().to_string())
            .collect(),
        position: v.shape().position,
        state: v.state().to_json(),
        field_times: v
            .field_times()
            .iter()
            .map(|(f, t)| {
                (
                    f.key().to_string(),
                    t.to_rfc3339_opts(SecondsFormat::Secs, true),
                )
            })
            .collect(),
        identity: store::Identity {
            model: v.info().reported_model.as_deref().map(str::to_string),
            sw_version: v.info().sw_version.clone(),
        },
        derive: None,
    }
}
