//! Trips: when a vehicle set off, when it stopped, and what lay between.
//!
//! Rules (thresholds in `TripsConfig` and here, with their reasons):
//! - A report is *moving now* when `driving` or `engine_running` is true or its speed is
//!   above `moving_speed_kmh`; it *moved* when its fix is `jitter_m` or more from the
//!   last fix counted (GPS noise stays within that) and no faster than [`MAX_SPEED_KMH`]
//!   from it (a faster one is a bad fix and dropped).
//! - A trip starts with a report that is moving now or moved; `moving` is said once it
//!   has covered `min_distance_m`, and `stopped` when such a trip ends. When the vehicle moved
//!   away from where it last stood (a cloud polled every few minutes sees it only once
//!   it is gone), the trip starts there and then; otherwise at this report.
//! - A trip ends at its last report that moved or was moving, once the vehicle has stood
//!   still for `end_after` after it, or when reports stop while it was moving for the
//!   vehicle's *silence limit* (three report intervals, at least `end_after`, at most
//!   [`MAX_GAP_MS`]). So no gap of more than an hour is ever inside a trip, and a
//!   vehicle clock that jumps ahead by hours ends a trip rather than stretching it.
//! - Distance: the odometer's advance where both ends have one and it is plausible
//!   (more than 0, at most [`MAX_SPEED_KMH`] over the duration), else the counted GPS
//!   legs. A trip shorter than `min_distance_m` is dropped.

use serde::{Deserialize, Serialize};

use super::config::TripsConfig;
use super::zone::distance_m;
use super::{Fix, Sample};

/// Fastest believable movement, km/h: a fix implying more from the last one is a bad
/// fix, and a reported speed above it a bad reading (cars rarely go faster; trackers
/// glitch far more often).
pub const MAX_SPEED_KMH: f64 = 250.0;
/// The longest gap between two reports inside one trip: beyond it the vehicle is not
/// known to have been driving, whatever its clock says.
pub const MAX_GAP_MS: i64 = 3_600_000;
/// Fixes in a row refused as jumps after which the next one is believed: otherwise one
/// bad fix taken as the reference would refuse every good fix after it.
const JUMPS_BEFORE_RESET: u8 = 3;

/// What the detector goes by, for one vehicle at one moment.
pub struct Rules<'a> {
    pub trips: &'a TripsConfig,
    /// How long reports may stop while the vehicle was moving before the trip ends.
    pub silence_ms: i64,
    /// Path points to keep (0: none).
    pub path_limit: usize,
}

impl Rules<'_> {
    fn end_after_ms(&self) -> i64 {
        i64::try_from(self.trips.end_after.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A report's readings at a place: where a trip starts, and where it ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub at_ms: i64,
    pub position: Option<(f64, f64)>,
    pub odometer_km: Option<f64>,
    pub soc: Option<f32>,
    pub fuel_l: Option<f32>,
}

impl Mark {
    fn of(s: &Sample) -> Mark {
        Mark {
            at_ms: s.at_ms,
            position: s.fix.map(|f| (f.lat, f.lon)),
            odometer_km: s.odometer_km,
            soc: s.soc.map(|v| v as f32),
            fuel_l: s.fuel_l.map(|v| v as f32),
        }
    }

    /// This report's readings, keeping the earlier ones it does not carry.
    fn update(&mut self, s: &Sample) {
        let new = Mark::of(s);
        self.at_ms = new.at_ms;
        self.position = new.position.or(self.position);
        self.odometer_km = new.odometer_km.or(self.odometer_km);
        self.soc = new.soc.or(self.soc);
        self.fuel_l = new.fuel_l.or(self.fuel_l);
    }
}

/// The fix distances are measured from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Reference {
    lat: f64,
    lon: f64,
    at_ms: i64,
    /// Fixes refused in a row as jumps from this one.
    jumps: u8,
}

impl Reference {
    fn at(fix: Fix) -> Reference {
        Reference {
            lat: fix.lat,
            lon: fix.lon,
            at_ms: fix.at_ms,
            jumps: 0,
        }
    }

    /// What `fix` is, seen from here; a counted leg or a reset moves the reference.
    fn step(&mut self, fix: Fix, jitter_m: f64) -> Leg {
        let metres = distance_m((self.lat, self.lon), (fix.lat, fix.lon));
        if metres < jitter_m {
            self.jumps = 0;
            return Leg::Noise { metres };
        }
        let seconds = (fix.at_ms.saturating_sub(self.at_ms)) as f64 / 1000.0;
        if seconds <= 0.0 || metres / seconds * 3.6 > MAX_SPEED_KMH {
            self.jumps = self.jumps.saturating_add(1);
            if self.jumps > JUMPS_BEFORE_RESET {
                *self = Reference::at(fix);
                return Leg::Reset;
            }
            return Leg::Jump;
        }
        *self = Reference::at(fix);
        Leg::Counted { metres, seconds }
    }
}

enum Leg {
    /// Within jitter of the reference: not counted (yet).
    Noise {
        metres: f64,
    },
    Jump,
    /// Believed after too many jumps, without its distance.
    Reset,
    Counted {
        metres: f64,
        seconds: f64,
    },
}

/// A trip's path: at most `limit` points, thinned evenly (every other one dropped, and
/// from then on every other fix taken) when it fills up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Path {
    /// (latitude, longitude) as f32: 2 m at worst, 8 bytes a point.
    points: Vec<[f32; 2]>,
    /// Take every `stride`th fix...
    stride: u32,
    /// ...counting from this many since the last one taken.
    since: u32,
}

impl Path {
    fn push(&mut self, lat: f64, lon: f64, limit: usize) {
        if limit == 0 {
            return;
        }
        self.stride = self.stride.max(1);
        self.since += 1;
        if self.since < self.stride && !self.points.is_empty() {
            return;
        }
        self.since = 0;
        if self.points.len() >= limit {
            let mut keep = false;
            self.points.retain(|_| {
                keep = !keep;
                keep
            });
            self.stride = self.stride.saturating_mul(2);
        }
        self.points.push([lat as f32, lon as f32]);
    }

    /// The last point is where the trip ended, even if thinning would skip it.
    fn finish(&mut self, position: Option<(f64, f64)>, limit: usize) {
        let Some((lat, lon)) = position else { return };
        if limit == 0 {
            return;
        }
        let end = [lat as f32, lon as f32];
        if self.points.last() == Some(&end) {
            return;
        }
        if self.points.len() >= limit {
            self.points.pop();
        }
        self.points.push(end);
    }

    pub fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points
            .iter()
            .map(|p| (f64::from(p[0]), f64::from(p[1])))
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenTrip {
    start: Mark,
    /// The latest report's readings.
    last: Mark,
    /// The last report that moved or was moving: the trip's end so far.
    last_motion_ms: i64,
    /// The latest report was moving now (not only moved).
    moving_now: bool,
    /// `Motion::Started` was said for this trip.
    announced: bool,
    reference: Option<Reference>,
    gps_m: f64,
    max_speed_kmh: Option<f32>,
    /// The fastest counted GPS leg: the max speed of a vehicle that reports none.
    max_leg_kmh: f32,
    path: Path,
    /// How far the latest fix reported while moving is from `reference`, when that is
    /// within jitter: a tracker's last leg before it stops is often shorter than the
    /// jitter (50 m every 2 s is 90 km/h), and is counted when the trip ends.
    #[serde(default)]
    tail_m: f64,
}

/// A trip as the detector saw it; `Trip` (in `mod.rs`) adds the zones.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub start: Mark,
    pub end: Mark,
    pub distance_km: f64,
    pub from_odometer: bool,
    pub max_speed_kmh: Option<f64>,
    pub path: Path,
}

impl Finished {
    pub fn duration_s(&self) -> f64 {
        (self.end.at_ms - self.start.at_ms) as f64 / 1000.0
    }
}

/// What a report or a tick did to the vehicle's motion.
#[derive(Debug, Clone, PartialEq)]
pub enum Motion {
    /// The open trip, started at `at_ms` (vehicle time), has covered `min_distance_m`:
    /// the vehicle is on its way (an engine idling in the drive never gets here).
    Started { at_ms: i64 },
    /// The trip ended at `at_ms` (vehicle time); `trip` is `None` when it was too short
    /// to count, and `announced` whether `Started` was said for it.
    Ended {
        at_ms: i64,
        trip: Option<Finished>,
        announced: bool,
    },
}

/// A vehicle's trip state: small while it stands (the open trip is boxed), and all of it
/// serialisable, so a trip open at a restart continues.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TripDetector {
    /// Where the vehicle last stood (the position where it stopped; the readings and
    /// time of the latest report there).
    standing: Option<Mark>,
    /// Distances while standing are measured from here.
    anchor: Option<Reference>,
    open: Option<Box<OpenTrip>>,
}

impl TripDetector {
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// One report, `gap_ms` after the previous one (vehicle time).
    pub(crate) fn report(&mut self, s: &Sample, gap_ms: i64, rules: &Rules, out: &mut Vec<Motion>) {
        let (cfg, silence_ms, path_limit) = (rules.trips, rules.silence_ms, rules.path_limit);
        if let Some(m) = self.tick(gap_ms, rules) {
            out.push(m);
        }
        let moving_now = s.moving_signal || s.speed_kmh.is_some_and(|v| v > cfg.moving_speed_kmh);
        if let Some(open) = self.open.as_deref_mut() {
            open.add(s, moving_now, cfg, path_limit);
            if let Some(m) = open.announce(cfg) {
                out.push(m);
            }
            return;
        }
        let anchor_recent = self
            .standing
            .is_some_and(|m| s.at_ms.saturating_sub(m.at_ms) <= silence_ms);
        let mut leg = None;
        if let Some(fix) = s.fix {
            match self.anchor.as_mut() {
                Some(anchor) => {
                    let from = *anchor;
                    if let Leg::Counted { metres, seconds } = anchor.step(fix, cfg.jitter_m) {
                        leg = Some((from, metres, seconds));
                    }
                }
                None => self.anchor = Some(Reference::at(fix)),
            }
        }
        if !moving_now && leg.is_none() {
            match self.standing.as_mut() {
                Some(m) => m.update(s),
                None => self.standing = Some(Mark::of(s)),
            }
            // Still there now: a leg away from here is timed from this report.
            if let Some(anchor) = self.anchor.as_mut() {
                anchor.at_ms = s.at_ms;
            }
            return;
        }
        // Setting off. From where it stood when it moved away from there lately;
        // otherwise from here and now.
        let mut start = Mark::of(s);
        // After a counted leg from the anchor, the reference is this fix too.
        let reference = s.fix.map(Reference::at);
        let mut gps_m = 0.0;
        let mut max_leg_kmh = 0.0;
        let mut path = Path::default();
        if let (true, Some(standing)) = (anchor_recent, self.standing) {
            start.odometer_km = standing.odometer_km.or(start.odometer_km);
            start.soc = standing.soc.or(start.soc);
            start.fuel_l = standing.fuel_l.or(start.fuel_l);
            if let Some((from, metres, seconds)) = leg {
                start.at_ms = standing.at_ms.min(s.at_ms);
                start.position = Some((from.lat, from.lon));
                gps_m = metres;
                max_leg_kmh = (metres / seconds * 3.6) as f32;
                path.push(from.lat, from.lon, path_limit);
            }
        }
        if let Some(fix) = s.fix {
            path.push(fix.lat, fix.lon, path_limit);
        }
        let mut open = OpenTrip {
            start,
            last: start,
            last_motion_ms: s.at_ms,
            moving_now,
            announced: false,
            reference,
            gps_m,
            max_speed_kmh: None,
            max_leg_kmh,
            path,
            tail_m: 0.0,
        };
        open.last.update(s);
        open.note_speed(s);
        if let Some(m) = open.announce(cfg) {
            out.push(m);
        }
        self.open = Some(Box::new(open));
        self.anchor = None;
    }

    /// Time passed without a report: `quiet_ms` since the last one.
    pub fn tick(&mut self, quiet_ms: i64, rules: &Rules) -> Option<Motion> {
        let open = self.open.as_deref()?;
        let (end_after, silence_ms) = (rules.end_after_ms(), rules.silence_ms);
        let stood_ms = open
            .last
            .at_ms
            .saturating_sub(open.last_motion_ms)
            .saturating_add(quiet_ms);
        let due = if open.moving_now {
            quiet_ms >= silence_ms
        } else {
            stood_ms >= end_after
        };
        due.then(|| self.close(rules))
    }

    /// Ends the open trip now, at its last motion (a clock reset, or the caller's wish);
    /// `None` when none is open.
    pub fn end(&mut self, rules: &Rules) -> Option<Motion> {
        self.open.is_some().then(|| self.close(rules))
    }

    fn close(&mut self, rules: &Rules) -> Motion {
        let Some(open) = self.open.take() else {
            return Motion::Ended {
                at_ms: 0,
                trip: None,
                announced: false,
            };
        };
        let OpenTrip {
            start,
            last,
            last_motion_ms,
            reference,
            gps_m,
            max_speed_kmh,
            max_leg_kmh,
            mut path,
            announced,
            tail_m,
            ..
        } = *open;
        let gps_m = gps_m + tail_m;
        let mut end = last;
        end.at_ms = last_motion_ms.max(start.at_ms);
        path.finish(end.position, rules.path_limit);
        // Standing from here on: where it ended (the last counted fix, within jitter of
        // the last one), as of its last report.
        self.standing = Some(last);
        self.anchor = reference.map(|mut r| {
            r.jumps = 0;
            r.at_ms = last.at_ms;
            r
        });
        let hours = (end.at_ms - start.at_ms) as f64 / 3_600_000.0;
        let odometer = match (start.odometer_km, end.odometer_km) {
            (Some(a), Some(b)) if b > a && b - a <= MAX_SPEED_KMH * hours => Some(b - a),
            _ => None,
        };
        let distance_km = odometer.unwrap_or(gps_m / 1000.0);
        if distance_km * 1000.0 < rules.trips.min_distance_m {
            return Motion::Ended {
                at_ms: end.at_ms,
                trip: None,
                announced,
            };
        }
        let at_ms = end.at_ms;
        Motion::Ended {
            at_ms,
            announced,
            trip: Some(Finished {
                start,
                end,
                distance_km,
                from_odometer: odometer.is_some(),
                max_speed_kmh: max_speed_kmh
                    .map(f64::from)
                    .or((max_leg_kmh > 0.0).then_some(f64::from(max_leg_kmh))),
                path,
            }),
        }
    }

    /// Forgets where the vehicle stood (its clock was set back: times before and after
    /// do not compare).
    pub fn forget_standing(&mut self) {
        self.standing = None;
        self.anchor = None;
    }

    /// Bytes held on the heap (the open trip and its path).
    pub fn heap_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |o| {
            std::mem::size_of::<OpenTrip>() + o.path.points.capacity() * 8
        })
    }
}

impl OpenTrip {
    fn add(&mut self, s: &Sample, moving_now: bool, cfg: &TripsConfig, path_limit: usize) {
        if moving_now {
            self.last_motion_ms = s.at_ms;
        }
        if let Some(fix) = s.fix {
            match self.reference.as_mut() {
                None => {
                    self.reference = Some(Reference::at(fix));
                    self.path.push(fix.lat, fix.lon, path_limit);
                }
                Some(reference) => match reference.step(fix, cfg.jitter_m) {
                    Leg::Counted { metres, seconds } => {
                        self.tail_m = 0.0;
                        self.gps_m += metres;
                        self.max_leg_kmh = self.max_leg_kmh.max((metres / seconds * 3.6) as f32);
                        self.last_motion_ms = s.at_ms;
                        self.path.push(fix.lat, fix.lon, path_limit);
                    }
                    Leg::Reset => {
                        self.tail_m = 0.0;
                        self.path.push(fix.lat, fix.lon, path_limit);
                    }
                    Leg::Noise { metres } if moving_now => self.tail_m = metres,
                    Leg::Noise { .. } | Leg::Jump => {}
                },
            }
        }
        self.moving_now = moving_now;
        self.last.update(s);
        self.note_speed(s);
    }

    /// `Started`, once the trip has covered `min_distance_m` (by GPS or odometer).
    fn announce(&mut self, cfg: &TripsConfig) -> Option<Motion> {
        let odometer_m = match (self.start.odometer_km, self.last.odometer_km) {
            (Some(a), Some(b)) if b > a => (b - a) * 1000.0,
            _ => 0.0,
        };
        if self.announced || self.gps_m.max(odometer_m) < cfg.min_distance_m {
            return None;
        }
        self.announced = true;
        Some(Motion::Started {
            at_ms: self.start.at_ms,
        })
    }

    fn note_speed(&mut self, s: &Sample) {
        if let Some(v) = s.speed_kmh.filter(|v| (0.0..=MAX_SPEED_KMH).contains(v)) {
            let v = v as f32;
            self.max_speed_kmh = Some(self.max_speed_kmh.map_or(v, |m| m.max(v)));
        }
    }
}
