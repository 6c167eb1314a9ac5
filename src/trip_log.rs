//! The trip log: every finished trip, one JSON line each, in
//! `state_dir/trips/<vehicle>.jsonl`, at most `trips.keep` per vehicle (the oldest go).
//! A line is the `trip` event's attributes: a trip the bridge worked out (with its
//! `path`), or one the device reported itself (kingxun 1008, iauto360 1012, with
//! `source`). A thread of its own writes them: the hub hands a trip over and never waits
//! on the disk; when the disk is so slow that `QUEUE` trips wait, more are dropped and
//! counted. `vehicle2mqtt trips` reads the log back (JSON lines, GPX or GeoJSON).

use std::collections::HashMap;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::model::VehicleId;

/// The folder under `state_dir`.
pub const DIR: &str = "trips";
/// Trips waiting for the writer, at most.
const QUEUE: usize = 1_024;
/// A line longer than this is not read back (a trip with 500 points is ~15 KB).
const MAX_LINE: usize = 256 * 1024;

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

fn file(dir: &Path, id: &VehicleId) -> PathBuf {
    // Vehicle ids are `[A-Za-z0-9_-]` only (`VehicleId`), so the name is a plain file.
    dir.join(format!("{}.jsonl", id.as_str()))
}

/// The writer's handle: cheap to hand a trip to, never blocks.
pub struct TripLog {
    tx: mpsc::SyncSender<(VehicleId, Map<String, Value>)>,
    dropped: Arc<AtomicU64>,
}

impl TripLog {
    /// Starts the writer thread (it ends when the handle is dropped, after writing what
    /// it was given).
    pub fn start(
        state_dir: &Path,
        keep: usize,
    ) -> std::io::Result<(TripLog, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dir = dir(state_dir);
        let thread = std::thread::Builder::new()
            .name("trip-log".into())
            .spawn(move || Writer::new(dir, keep).run(rx))?;
        Ok((
            TripLog {
                tx,
                dropped: Arc::default(),
            },
            thread,
        ))
    }

    /// Queues one trip (the `trip` event's attributes).
    pub fn log(&self, vehicle: &VehicleId, trip: Map<String, Value>) {
        if self.tx.try_send((vehicle.clone(), trip)).is_err() {
            if let Some(n) = crate::observe::count_sampled(&self.dropped) {
                tracing::warn!(
                    event = "trip_log_full",
                    vehicle = %vehicle,
                    dropped_total = n,
                    "trip log: the disk is behind, a trip was not written"
                );
            }
        }
    }
}

struct Writer {
    dir: PathBuf,
    keep: usize,
    /// Lines in each vehicle's file, once counted.
    lines: HashMap<VehicleId, usize>,
}

impl Writer {
    fn new(dir: PathBuf, keep: usize) -> Writer {
        Writer {
            dir,
            keep,
            lines: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<(VehicleId, Map<String, Value>)>) {
        for (id, trip) in rx {
            if let Err(err) = self.append(&id, &trip) {
                tracing::warn!(
                    event = "trip_log_write_failed",
                    vehicle = %id,
                    error = %err,
                    "trip log: cannot write"
                );
            }
        }
    }

    fn append(&mut self, id: &VehicleId, trip: &Map<String, Value>) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = file(&self.dir, id);
        let mut line = serde_json::to_vec(trip).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let count = match self.lines.get(id) {
            Some(n) => *n,
            None => count_lines(&path),
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?
            .write_all(&line)?;
        let count = count + 1;
        // Cut back to `keep` once a tenth more has piled up: a file is rewritten once
        // per `keep / 10` trips, not on every one.
        let count = match count > self.keep + (self.keep / 10).max(1) {
            true => {
                compact(&path, self.keep)?;
                self.keep
            }
            false => count,
        };
        self.lines.insert(id.clone(), count);
        Ok(())
    }
}

fn count_lines(path: &Path) -> usize {
    std::fs::File::open(path)
        .map(|f| std::io::BufReader::new(f).split(b'\n').count())
        .unwrap_or(0)
}

/// Keeps the newest `keep` lines (written aside, then renamed over: a crash leaves the
/// old file or the new one, never half of one).
fn compact(path: &Path, keep: usize) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(keep)..];
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = Vec::with_capacity(bytes.len());
    for l in tail {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, path)
}

/// Why the log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no trips logged for `{0}` (looked for {1})")]
    NoLog(String, String),
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
}

/// The trips of one vehicle, oldest first, that started at or after `since`; the newest
/// `keep` at most. Lines that are not a trip are skipped and counted.
pub fn read(
    state_dir: &Path,
    vehicle: &str,
    since: Option<DateTime<Utc>>,
    keep: usize,
) -> Result<(Vec<Map<String, Value>>, usize), ReadError> {
    let path = VehicleId::new(vehicle)
        .filter(|id| id.as_str() == vehicle)
        .map(|id| file(&dir(state_dir), &id));
    let Some(path) = path.filter(|p| p.exists()) else {
        return Err(ReadError::NoLog(
            vehicle.to_string(),
            dir(state_dir).display().to_string(),
        ));
    };
    let f = std::fs::File::open(&path).map_err(|e| ReadError::Io(path.display().to_string(), e))?;
    let (mut trips, mut bad) = (Vec::new(), 0);
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = line.map_err(|e| ReadError::Io(path.display().to_string(), e))?;
        if line.is_empty() {
            continue;
        }
        let trip = (line.len() <= MAX_LINE)
            .then(|| serde_json::from_slice::<Map<String, Value>>(&line).ok())
            .flatten();
        match trip.filter(|t| start(t).is_some()) {
            Some(t) if since.is_none_or(|s| start(&t).is_some_and(|t| t >= s)) => trips.push(t),
            Some(_) => {}
            None => bad += 1,
        }
    }
    let cut = trips.len().saturating_sub(keep);
    trips.drain(..cut);
    Ok((trips, bad))
}

fn time(t: &Map<String, Value>, key: &str) -> Option<DateTime<Utc>> {
    t.get(key)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn start(t: &Map<String, Value>) -> Option<DateTime<Utc>> {
    time(t, "start")
}

/// `[latitude, longitude]` in range, from a JSON pair.
fn pair(v: &Value) -> Option<(f64, f64)> {
    let a = v.as_array()?;
    let (lat, lon) = (a.first()?.as_f64()?, a.get(1)?.as_f64()?);
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
}

/// A trip's points: its path (derived trips) or track (iauto360), else its two ends.
pub fn points(t: &Map<String, Value>) -> Vec<(f64, f64)> {
    for key in ["path", "track"] {
        if let Some(list) = t.get(key).and_then(Value::as_array) {
            let pts: Vec<_> = list.iter().filter_map(pair).collect();
            if pts.len() >= 2 {
                return pts;
            }
        }
    }
    let end = |lat: &str, lon: &str, both: &str| {
        let lat_lon = t
            .get(lat)
            .and_then(Value::as_f64)
            .zip(t.get(lon).and_then(Value::as_f64));
        lat_lon
            .map(|(a, b)| Value::from(vec![a, b]))
            .or_else(|| t.get(both).cloned())
            .as_ref()
            .and_then(pair)
    };
    [
        end("start_latitude", "start_longitude", "start_position"),
        end("end_latitude", "end_longitude", "end_position"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The trips as JSON lines, without their points (those are for `--gpx`/`--geojson`).
pub fn to_json_lines(trips: &[Map<String, Value>]) -> String {
    let mut out = String::new();
    for t in trips {
        let mut t = t.clone();
        t.remove("path");
        t.remove("track");
        out.push_str(&Value::Object(t).to_string());
        out.push('\n');
    }
    out
}

/// A GeoJSON FeatureCollection: one LineString per trip (GeoJSON is longitude first),
/// its attributes as properties.
pub fn to_geojson(trips: &[Map<String, Value>]) -> String {
    let features: Vec<Value> = trips
        .iter()
        .map(|t| {
            let coords: Vec<Value> = points(t)
                .into_iter()
                .map(|(lat, lon)| Value::from(vec![lon, lat]))
                .collect();
            let mut props = t.clone();
            props.remove("path");
            props.remove("track");
            let geometry = match coords.len() >= 2 {
                true => serde_json::json!({"type": "LineString", "coordinates": coords}),
                false => Value::Null,
            };
            serde_json::json!({"type": "Feature", "geometry": geometry, "properties": props})
        })
        .collect();
    let collection = serde_json::json!({"type": "FeatureCollection", "features": features});
    serde_json::to_string_pretty(&collection).unwrap_or_default() + "\n"
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// GPX 1.1: one track per trip, named by its start, with its distance as description.
pub fn to_gpx(vehicle: &str, trips: &[Map<String, Value>]) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx version=\"1.1\" creator=\"vehicle2mqtt\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n",
    );
    for t in trips {
        let name = t.get("start").and_then(Value::as_str).unwrap_or("trip");
        out.push_str(&format!(
            "  <trk>\n    <name>{} {}</name>\n",
            xml_escape(vehicle),
            xml_escape(name)
        ));
        if let Some(km) = t.get("distance_km").and_then(Value::as_f64) {
            out.push_str(&format!("    <desc>{km} km</desc>\n"));
        }
        out.push_str("    <trkseg>\n");
        let pts = points(t);
        let last = pts.len().saturating_sub(1);
        for (i, (lat, lon)) in pts.iter().enumerate() {
            // Only the ends have a known time: the path is thinned, not timed.
            let at = match i {
                0 => time(t, "start"),
                i if i == last => time(t, "end"),
                _ => None,
            };
            match at {
                Some(at) => out.push_str(&format!(
                    "      <trkpt lat=\"{lat}\" lon=\"{lon}\"><time>{}</time></trkpt>\n",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
                None => out.push_str(&format!("      <trkpt lat=\"{lat}\" lon=\"{lon}\"/>\n")),
            }
        }
        out.push_str("    </trkseg>\n  </trk>\n");
    }
    out.push_str("</gpx>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trip(start: &str, km: f64, path: &[[f64; 2]]) -> Map<String, Value> {
        let v = serde_json::json!({
            "start": start, "end": start, "distance_km": km,
            "start_latitude": 31.2, "start_longitude": 121.4,
            "end_latitude": 31.3, "end_longitude": 121.5,
            "path": path,
        });
        v.as_object().cloned().unwrap_or_default()
    }

    fn written(state: &Path, id: &VehicleId, trips: Vec<Map<String, Value>>, keep: usize) {
        let (log, thread) = TripLog::start(state, keep).unwrap();
        for t in trips {
            log.log(id, t);
        }
        drop(log);
        thread.join().unwrap();
    }

    #[test]
    fn trips_are_appended_read_back_and_cut_to_keep() {
        let dir = tempfile::tempdir().unwrap();
        let id = VehicleId::new("ex7001").unwrap();
        let trips = (0..30)
            .map(|i| trip(&format!("2026-12-07T06:{i:02}:00Z"), i as f64, &[]))
            .collect();
        written(dir.path(), &id, trips, 10);
        // The file never holds more than keep + keep/10 lines, and reads give the newest 10.
        let on_disk = count_lines(&file(&super::dir(dir.path()), &id));
        assert!((10..=11).contains(&on_disk), "{on_disk}");
        let (got, bad) = read(dir.path(), "ex7001", None, 10).unwrap();
        let km: Vec<f64> = got
            .iter()
            .map(|t| t["distance_km"].as_f64().unwrap())
            .collect();
        assert_eq!(km, (20..30).map(f64::from).collect::<Vec<_>>());
        assert_eq!(bad, 0);
        // --since: the trips that started then or later.
        let since = DateTime::parse_from_rfc3339("2026-12-07T06:27:00Z").unwrap();
        let (got, _) = read(dir.path(), "ex7001", Some(since.with_timezone(&Utc)), 10).unwrap();
        assert_eq!(got.len(), 3);
        // A second writer (a restart) counts the lines it finds and keeps the bound.
        let more = (30..45)
            .map(|i| trip(&format!("2026-12-07T07:{i:02}:00Z"), i as f64, &[]))
            .collect();
        written(dir.path(), &id, more, 10);
        let on_disk = count_lines(&file(&super::dir(dir.path()), &id));
        assert!((10..=11).contains(&on_disk), "{on_disk}");
    }

    #[test]
    fn bad_lines_are_skipped_and_a_missing_vehicle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let logs = super::dir(dir.path());
        std::fs::create_dir_all(&logs).unwrap();
        let good = Value::Object(trip("2026-12-07T06:00:00Z", 1.5, &[])).to_string();
        let text = format!("{{not json\n{good}\n{{\"start\":\"yesterday\"}}\n[1,2]\n\n");
        std::fs::write(logs.join("kx1.jsonl"), text).unwrap();
        let (got, bad) = read(dir.path(), "kx1", None, 100).unwrap();
        assert_eq!((got.len(), bad), (1, 3));
        let err = read(dir.path(), "nobody", None, 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no trips logged for `nobody`"), "{err}");
        // A name that is not a vehicle id never reaches the file system.
        assert!(read(dir.path(), "../vehicles/kx1", None, 100).is_err());
    }

    #[test]
    fn geojson_is_longitude_first_and_gpx_has_the_points() {
        let t = trip(
            "2026-12-07T06:00:00Z",
            1.0,
            &[[31.2, 121.4], [31.25, 121.45], [31.3, 121.5]],
        );
        let geo: Value = serde_json::from_str(&to_geojson(std::slice::from_ref(&t))).unwrap();
        let f = &geo["features"][0];
        assert_eq!(f["geometry"]["type"], "LineString");
        assert_eq!(
            f["geometry"]["coordinates"][0],
            serde_json::json!([121.4, 31.2])
        );
        assert_eq!(f["geometry"]["coordinates"].as_array().unwrap().len(), 3);
        assert!(f["properties"].get("path").is_none());
        assert_eq!(f["properties"]["distance_km"], 1.0);
        let gpx = to_gpx("ex<1>", std::slice::from_ref(&t));
        assert_eq!(gpx.matches("<trkpt ").count(), 3);
        assert!(gpx.contains("<trkpt lat=\"31.2\" lon=\"121.4\"><time>2026-12-07T06:00:00Z</time>"));
        assert!(
            gpx.contains("<name>ex&lt;1&gt; 2026-12-07T06:00:00Z</name>"),
            "{gpx}"
        );
        // Without a path: the two ends (a kingxun 1008 trip's `start_position`).
        let mut ends = Map::new();
        ends.insert("start".into(), "2026-12-07T06:00:00Z".into());
        ends.insert("start_position".into(), serde_json::json!([31.2, 121.4]));
        ends.insert("end_position".into(), serde_json::json!([31.3, 121.5]));
        assert_eq!(points(&ends), vec![(31.2, 121.4), (31.3, 121.5)]);
        assert_eq!(to_json_lines(&[t]).lines().count(), 1);
    }
}
