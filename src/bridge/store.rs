//! What the bridge remembers of each vehicle across restarts, one file per vehicle in
//! `state_dir/vehicles/`: the discovery documents it announced (so a restart re-announces
//! exactly them before any data arrives, and Home Assistant never drops an entity a user
//! renamed), the fields it has reported, and its last state with the time the vehicle
//! reported each value (so a restart, or a broker that lost its store, shows the last
//! known values at once).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::VehicleId;

/// The folder under `state_dir`.
pub const DIR: &str = "vehicles";
/// A record bigger than this is not written (nor read): attributes that grew without
/// bound must not fill the disk or slow the start.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// Records read at start, at most.
pub const MAX_RECORDS: usize = 100_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The connector that owned the vehicle.
    pub connector: String,
    /// Discovery topic → document, as last published.
    pub discovery: BTreeMap<String, String>,
    /// Keys of every field the vehicle has reported (its entities).
    pub fields: BTreeSet<String>,
    /// Whether it ever had a position (its device tracker).
    pub position: bool,
    /// The last state JSON (without a pending LOCKING/UNLOCKING).
    pub state: serde_json::Value,
    /// Field key → when the vehicle last reported it (RFC 3339).
    pub field_times: BTreeMap<String, String>,
    /// What the device reported of itself: its documents name it before it reports
    /// again after a restart.
    #[serde(default)]
    pub identity: Identity,
    /// What the derivation stage keeps across a restart (an open trip, the last zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derive: Option<serde_json::Value>,
}

/// The model and firmware a device reported (`VehicleInfo::reported_model`,
/// `sw_version`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw_version: Option<String>,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

fn file_name(id: &VehicleId) -> String {
    // Vehicle ids are [A-Za-z0-9_-] (model::VehicleId), so they are safe file names.
    format!("{}.json", id.as_str())
}

/// Every readable record; unreadable or oversized ones are skipped with a warning.
pub fn load_all(state_dir: &Path) -> BTreeMap<VehicleId, Record> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return out;
    };
    for entry in entries.flatten().take(MAX_RECORDS) {
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let Some(id) = VehicleId::new(stem).filter(|id| id.as_str() == stem) else {
            continue;
        };
        let too_big = entry
            .metadata()
            .map(|m| m.len() > MAX_RECORD_BYTES as u64)
            .unwrap_or(true);
        let parsed = if too_big {
            Err("too big".to_string())
        } else {
            std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|raw| serde_json::from_slice::<Record>(&raw).map_err(|e| e.to_string()))
        };
        match parsed {
            Ok(record) => {
                out.insert(id, record);
            }
            Err(error) => tracing::warn!(
                event = "vehicle_record_unreadable",
                path = %path.display(),
                error,
                "skipping a vehicle record"
            ),
        }
    }
    out
}

/// What to do with one vehicle's record.
#[derive(Debug)]
pub enum Write {
    /// Write it; with `keep_discovery`, its documents are those already on disk (only
    /// its state changed: the documents are not rebuilt for that).
    Save {
        /// Boxed: a record is large beside `Remove`, and a batch holds hundreds.
        record: Box<Record>,
        keep_discovery: bool,
    },
    Remove,
}

/// The documents of the record on disk, if it is readable.
fn discovery_on_disk(dir: &Path, id: &VehicleId) -> BTreeMap<String, String> {
    std::fs::read(dir.join(file_name(id)))
        .ok()
        .filter(|raw| raw.len() <= MAX_RECORD_BYTES)
        .and_then(|raw| serde_json::from_slice::<Record>(&raw).ok())
        .map(|r| r.discovery)
        .unwrap_or_default()
}

/// Writes records (atomically, 0600). Runs off the hub's task, serialising included.
pub fn save_all(state_dir: &Path, records: Vec<(VehicleId, Write)>) {
    let dir = dir(state_dir);
    if let Err(e) = crate::state_dir::prepare(&dir) {
        tracing::warn!(
            event = "vehicle_record_write_failed",
            error = format!("{e:#}"),
            "cannot write vehicle records"
        );
        return;
    }
    for (id, write) in records {
        let data = match write {
            Write::Save {
                mut record,
                keep_discovery,
            } => {
                if keep_discovery {
                    record.discovery = discovery_on_disk(&dir, &id);
                }
                serde_json::to_vec(&record).ok()
            }
            Write::Remove => None,
        };
        let result = match data {
            Some(data) if data.len() <= MAX_RECORD_BYTES => {
                crate::state_dir::write_atomic(&dir, &file_name(&id), &data).map(|_| ())
            }
            Some(_) => Ok(()), // oversized: keep the older record
            None => match std::fs::remove_file(dir.join(file_name(&id))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::warn!(event = "vehicle_record_write_failed", vehicle = %id, error = format!("{e:#}"), "cannot write a vehicle record");
        }
    }
}

/// When each field was last reported, in whole seconds: 8 bytes a field (10 000 vehicles
/// with 40 fields each cost 3 MiB, not the 25 a map of timestamps would).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTimes(crate::model::VecMap<crate::model::Field, u32>);

impl FieldTimes {
    fn secs(t: chrono::DateTime<chrono::Utc>) -> u32 {
        t.timestamp().clamp(0, i64::from(u32::MAX)) as u32
    }

    fn time(secs: u32) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(i64::from(secs), 0).unwrap_or_default()
    }

    pub fn insert(&mut self, field: crate::model::Field, at: chrono::DateTime<chrono::Utc>) {
        if self.0.insert(field, Self::secs(at)).is_none() {
            self.0.settle();
        }
    }

    pub fn get(&self, field: crate::model::Field) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.get(&field).map(|s| Self::time(*s))
    }

    pub fn remove(&mut self, field: crate::model::Field) {
        self.0.remove(&field);
    }

    pub fn iter(
        &self,
    ) -> impl Iterator<Item = (crate::model::Field, chrono::DateTime<chrono::Utc>)> + '_ {
        self.0.iter().map(|(f, s)| (*f, Self::time(*s)))
    }

    pub fn latest(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.values().max().map(|s| Self::time(*s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let id = VehicleId::new("kx1001").unwrap();
        let mut record = Record {
            connector: "kingxun".into(),
            position: true,
            state: serde_json::json!({"odometer": 12}),
            ..Record::default()
        };
        record.fields.insert("odometer".into());
        record.discovery.insert("t".into(), "{}".into());
        let save = |record: &Record, keep_discovery| {
            let record = record.clone();
            vec![(
                id.clone(),
                Write::Save {
                    record: Box::new(record),
                    keep_discovery,
                },
            )]
        };
        save_all(dir.path(), save(&record, false));
        std::fs::write(dir.path().join(DIR).join("bad.json"), b"{not json").unwrap();
        std::fs::write(dir.path().join(DIR).join("a b.json"), b"{}").unwrap();
        let loaded = load_all(dir.path());
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[&id], record);
        // A state alone: the documents on disk stay.
        let mut newer = Record {
            state: serde_json::json!({"odometer": 13}),
            ..record.clone()
        };
        newer.discovery.clear();
        save_all(dir.path(), save(&newer, true));
        newer.discovery = record.discovery.clone();
        assert_eq!(load_all(dir.path())[&id], newer);
        save_all(dir.path(), vec![(id.clone(), Write::Remove)]);
        assert!(load_all(dir.path()).is_empty());
    }
}
