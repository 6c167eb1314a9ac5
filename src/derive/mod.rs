//! The derivation stage: trips, charging sessions, zones and fleet events worked out
//! from each vehicle's reports (issue #26). Pure: no I/O, and the clock is passed in.
//!
//! One [`Deriver`] per vehicle. The hub feeds it every report with the vehicle's own
//! time (`at`, what `last_update` says) and the bridge's clock (`now`), and calls
//! [`Deriver::tick`] now and then (every few seconds) for what time alone decides: a
//! trip ends after the vehicle stood still for `trips.end_after`, `inactive` after
//! `events.inactive_after` without a report. Each returns a [`Derived`]: events, fields
//! to merge into the vehicle's state (`zone`, `last_trip_*`, `last_charge_*`), and the
//! trip or charging session that just ended.
//!
//! Feed it the vehicle's merged state (every current value), not only what one frame
//! carried: a frame without `speed` does not mean the vehicle stopped.
//!
//! Bad input:
//! - A report whose vehicle time is not after the last one (a duplicate, or one that
//!   arrived out of order) is ignored altogether. If the vehicle keeps reporting more
//!   than [`MAX_GAP_MS`] behind for that long (its clock was set back), its clock is
//!   taken as reset: an open trip ends at its last motion, and the next trips are timed
//!   by the new clock (the only case where two trips can overlap in vehicle time).
//! - Durations use the vehicle's time, but no gap between reports longer than the
//!   silence limit (at most an hour) is ever inside a trip: a clock that jumps ahead
//!   ends the trip rather than stretching it over days.
//! - Positions out of range, (0, 0), NaN or infinite, flagged invalid (`gps_valid`
//!   false) or less accurate than [`MAX_ACCURACY_M`] are ignored; so are non-finite
//!   numbers, negative speeds and levels outside 0-100 %.
//!
//! Size: a standing vehicle costs `size_of::<Deriver>()` and nothing on the heap (264
//! bytes in a debug build, `size_tests`: 10 000 vehicles 2.6 MB). An open trip adds
//! about 230 bytes, and 8 bytes per path point (`trips.path_points`, 500 by default:
//! up to 4 KB per driving vehicle; 0 keeps no path). [`Deriver::size_bytes`] tells.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::{Field, Position, Value, VehicleEvent, VehicleState};

pub mod charge;
pub mod config;
pub mod events;
pub mod trip;
pub mod zone;

pub use charge::ChargeSession;
pub use config::{DeriveConfig, EventsConfig, TripsConfig, ZoneConfig, ZoneError};
pub use events::EVENT_TYPES;
pub use trip::{MAX_GAP_MS, MAX_SPEED_KMH};
pub use zone::Zones;

use charge::ChargeTracker;
use events::{LowBattery, Overspeed};
use trip::{Finished, Motion, Rules, TripDetector};
use zone::{ZoneChange, ZoneTracker};

/// Fixes that say they are less accurate than this are ignored: xchanger's untrusted
/// positions say 1000 m, and 100 m is already twice the default GPS jitter.
pub const MAX_ACCURACY_M: f64 = 100.0;
/// The `zone` field's value outside every zone.
pub const AWAY: &str = "away";

/// What every vehicle's deriver goes by, shared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub trips: TripsConfig,
    pub events: EventsConfig,
    pub zones: Zones,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid value for key `{key}`: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

impl Settings {
    /// Checked settings, or the first problem (`DeriveConfig::problems` lists them all).
    pub fn new(config: &DeriveConfig) -> Result<Settings, SettingsError> {
        if let Some((key, reason)) = config.problems().into_iter().next() {
            return Err(SettingsError { key, reason });
        }
        let zones = Zones::new(&config.zones).map_err(|e| SettingsError {
            key: "zones".into(),
            reason: e.to_string(),
        })?;
        Ok(Settings {
            trips: config.trips.clone(),
            events: config.events.clone(),
            zones,
        })
    }
}

/// What one report or tick worked out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    pub events: Vec<VehicleEvent>,
    /// To merge into the vehicle's state: `zone`, `last_trip_*`, `last_charge_*`.
    pub fields: VehicleState,
    /// For the trip log (`trip/last` carries the same JSON, without `path`).
    pub trip_ended: Option<Trip>,
    pub charge_ended: Option<ChargeSession>,
}

impl Derived {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.fields == VehicleState::default()
            && self.trip_ended.is_none()
            && self.charge_ended.is_none()
    }
}

/// A finished trip: the `trip` event's attributes and a line of the trip log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    #[serde(with = "rfc3339")]
    pub start: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub end: DateTime<Utc>,
    pub distance_km: f64,
    pub duration_s: i64,
    /// The highest reported speed; from the GPS legs when the vehicle reports none.
    pub max_speed_kmh: Option<f64>,
    pub avg_speed_kmh: f64,
    /// Zone names; `None` outside every zone (or with no zones configured).
    pub start_zone: Option<String>,
    pub end_zone: Option<String>,
    pub start_latitude: Option<f64>,
    pub start_longitude: Option<f64>,
    pub end_latitude: Option<f64>,
    pub end_longitude: Option<f64>,
    /// Battery points (%) used; negative when the trip gained charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soc_used: Option<f64>,
    /// Litres used (from `fuel_volume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_used: Option<f64>,
    /// `odometer` or `gps`: where `distance_km` came from.
    pub distance_source: String,
    /// `[latitude, longitude]` points, thinned to at most `trips.path_points`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<[f64; 2]>,
}

fn round(v: f64, decimals: i32) -> f64 {
    let k = 10f64.powi(decimals);
    (v * k).round() / k
}

impl Trip {
    fn new(f: Finished, zones: &Zones) -> Option<Trip> {
        let duration_ms = f.end.at_ms - f.start.at_ms;
        let zone = |p: Option<(f64, f64)>| {
            p.and_then(|(lat, lon)| zones.find(lat, lon))
                .and_then(|i| zones.name(i))
                .map(str::to_string)
        };
        let avg = if duration_ms > 0 {
            f.distance_km / (duration_ms as f64 / 3_600_000.0)
        } else {
            0.0
        };
        let used = |a: Option<f32>, b: Option<f32>| {
            a.zip(b).map(|(a, b)| round(f64::from(a) - f64::from(b), 1))
        };
        Some(Trip {
            start: DateTime::from_timestamp_millis(f.start.at_ms)?,
            end: DateTime::from_timestamp_millis(f.end.at_ms)?,
            distance_km: round(f.distance_km, 3),
            duration_s: duration_ms / 1000,
            max_speed_kmh: f.max_speed_kmh.map(|v| round(v, 1)),
            avg_speed_kmh: round(avg, 1),
            start_zone: zone(f.start.position),
            end_zone: zone(f.end.position),
            start_latitude: f.start.position.map(|p| round(p.0, 6)),
            start_longitude: f.start.position.map(|p| round(p.1, 6)),
            end_latitude: f.end.position.map(|p| round(p.0, 6)),
            end_longitude: f.end.position.map(|p| round(p.1, 6)),
            soc_used: used(f.start.soc, f.end.soc),
            fuel_used: used(f.start.fuel_l, f.end.fuel_l),
            distance_source: if f.from_odometer { "odometer" } else { "gps" }.into(),
            path: f
                .path
                .points()
                .map(|(lat, lon)| [round(lat, 6), round(lon, 6)])
                .collect(),
        })
    }

    /// The `trip` event: this trip without its path.
    pub fn event(&self) -> VehicleEvent {
        let mut attributes = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        attributes.remove("path");
        VehicleEvent {
            event_type: "trip".into(),
            attributes,
        }
    }

    /// The `last_trip_*` fields.
    pub fn fields(&self) -> VehicleState {
        let mut st = VehicleState::default();
        st.set_f64(Field::LastTripDistance, self.distance_km);
        st.set_f64(
            Field::LastTripDuration,
            round(self.duration_s as f64 / 60.0, 1),
        );
        if let Some(v) = self.max_speed_kmh {
            st.set_f64(Field::LastTripMaxSpeed, v);
        }
        st.set_f64(Field::LastTripAvgSpeed, self.avg_speed_kmh);
        st.set(Field::LastTripStart, text_time(self.start));
        st.set(Field::LastTripEnd, text_time(self.end));
        st
    }
}

fn text_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn text_time_ms(ms: i64) -> serde_json::Value {
    DateTime::from_timestamp_millis(ms).map_or(serde_json::Value::Null, |t| text_time(t).into())
}

/// `DateTime<Utc>` as RFC 3339 text (chrono is built without its serde feature).
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::text_time(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// A usable fix, at the vehicle's time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Fix {
    pub lat: f64,
    pub lon: f64,
    pub at_ms: i64,
}

/// What the deriver reads from one report, every value checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    pub at_ms: i64,
    pub fix: Option<Fix>,
    pub speed_kmh: Option<f64>,
    /// `driving` or `engine_running` is true.
    pub moving_signal: bool,
    pub odometer_km: Option<f64>,
    /// Battery level, %.
    pub soc: Option<f64>,
    pub fuel_l: Option<f64>,
    pub charging: Option<bool>,
}

impl Sample {
    fn of(at_ms: i64, state: &VehicleState) -> Sample {
        let number = |field| match state.get(field) {
            Some(Value::Int(i)) => Some(*i as f64),
            Some(Value::Float(f)) if f.is_finite() => Some(*f),
            _ => None,
        };
        let flag = |field| match state.get(field) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let fix = state
            .position
            .filter(|p| Position::new(p.latitude, p.longitude).is_some())
            .filter(|p| p.gps_accuracy.is_none_or(|a| a <= MAX_ACCURACY_M))
            .filter(|_| flag(Field::GpsValid) != Some(false))
            .map(|p| Fix {
                lat: p.latitude,
                lon: p.longitude,
                at_ms,
            });
        Sample {
            at_ms,
            fix,
            speed_kmh: number(Field::Speed).filter(|v| *v >= 0.0),
            moving_signal: flag(Field::Driving) == Some(true)
                || flag(Field::EngineRunning) == Some(true),
            odometer_km: number(Field::Odometer).filter(|v| *v >= 0.0),
            soc: number(Field::BatteryLevel).filter(|v| (0.0..=100.0).contains(v)),
            fuel_l: number(Field::FuelVolume).filter(|v| *v >= 0.0),
            charging: flag(Field::Charging),
        }
    }
}

/// A vehicle's derivation state, all of it serialisable (see [`Deriver::save`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// The latest accepted report, vehicle time and bridge time.
    last_at_ms: Option<i64>,
    last_now_ms: i64,
    /// Vehicle time between the last two accepted reports.
    interval_ms: i64,
    trips: TripDetector,
    charge: ChargeTracker,
    /// Saved by name (zones may be renumbered between runs).
    #[serde(skip)]
    zone: ZoneTracker,
    overspeed: Overspeed,
    low_battery: LowBattery,
    inactive_sent: bool,
}

/// A deriver's state for the hub to keep across a restart (JSON via serde).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    state: State,
    /// The zone the vehicle was in (`away` outside all); `None` before its first fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
}

/// One vehicle's derivation stage.
#[derive(Debug, Clone)]
pub struct Deriver {
    settings: Arc<Settings>,
    /// This vehicle's own limit (connector or vehicle entry), over `events.overspeed_kmh`.
    overspeed_kmh: Option<f32>,
    /// The upstream reports this vehicle's trips (iauto360 1012, kingxun 1008).
    upstream_trips: bool,
    state: State,
}

impl Deriver {
    pub fn new(settings: Arc<Settings>) -> Deriver {
        Deriver {
            settings,
            overspeed_kmh: None,
            upstream_trips: false,
            state: State::default(),
        }
    }

    /// This vehicle's own speed limit (a connector's or its entry's `overspeed_kmh`);
    /// `None` falls back to `events.overspeed_kmh`.
    pub fn with_overspeed_kmh(mut self, limit: Option<f64>) -> Deriver {
        self.overspeed_kmh = limit.map(|v| v as f32);
        self
    }

    /// The upstream reports this vehicle's trips itself (iauto360 1012, kingxun 1008):
    /// no `trip` event, no `last_trip_*` fields and no path from here, so nothing is
    /// counted twice. `moving` and `stopped` are still worked out.
    pub fn with_upstream_trips(mut self, upstream: bool) -> Deriver {
        self.upstream_trips = upstream;
        self
    }

    /// A deriver carrying on from `saved` (an open trip continues).
    pub fn restore(settings: Arc<Settings>, saved: Saved) -> Deriver {
        let zone = saved.zone.as_deref().and_then(|name| match name {
            AWAY => Some(None),
            name => settings.zones.index_of(name).map(Some),
        });
        let mut deriver = Deriver::new(settings);
        deriver.state = saved.state;
        deriver.state.zone = ZoneTracker::restore(zone);
        deriver
    }

    pub fn save(&self) -> Saved {
        let zones = &self.settings.zones;
        Saved {
            state: self.state.clone(),
            zone: self
                .state
                .zone
                .current
                .map(|z| z.and_then(|i| zones.name(i)).unwrap_or(AWAY).to_string()),
        }
    }

    /// Whether a trip is open (the hub may save more often then).
    pub fn trip_open(&self) -> bool {
        self.state.trips.is_open()
    }

    /// A report: `at` is the vehicle's own time, `now` the bridge's.
    pub fn report(
        &mut self,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        state: &VehicleState,
    ) -> Derived {
        let mut d = Derived::default();
        let (at_ms, now_ms) = (at.timestamp_millis(), now.timestamp_millis());
        let gap_ms = match self.state.last_at_ms {
            None => 0,
            Some(last) if at_ms > last => at_ms - last,
            Some(last) => {
                let set_back = last - at_ms > MAX_GAP_MS
                    && now_ms.saturating_sub(self.state.last_now_ms) >= MAX_GAP_MS;
                if !set_back {
                    return d;
                }
                self.clock_reset(&mut d);
                0
            }
        };
        let sample = Sample::of(at_ms, state);
        let settings = Arc::clone(&self.settings);
        let rules = self.rules(&settings);
        let mut motion = Vec::new();
        self.state
            .trips
            .report(&sample, gap_ms, &rules, &mut motion);
        for m in motion {
            self.motion(m, &settings, &mut d);
        }
        if let (false, Some(fix)) = (settings.zones.is_empty(), sample.fix) {
            let dwell_ms = millis(settings.events.zone_dwell);
            let margin_m = settings.trips.jitter_m;
            if let Some(change) = self
                .state
                .zone
                .report(&settings.zones, fix, dwell_ms, margin_m)
            {
                zone_change(change, &settings.zones, &mut d);
            }
        }
        if let Some(session) = self.state.charge.report(&sample) {
            charged(session, &mut d);
        }
        let limit = self
            .overspeed_kmh
            .map(f64::from)
            .or(settings.events.overspeed_kmh);
        if let Some(e) = self.state.overspeed.report(at_ms, sample.speed_kmh, limit) {
            overspeed(e, &mut d);
        }
        let threshold = settings.events.low_battery_percent;
        if self.state.low_battery.report(sample.soc, threshold) {
            let mut attributes = serde_json::Map::new();
            attributes.insert("battery_level".into(), json!(sample.soc));
            attributes.insert("threshold".into(), json!(threshold));
            d.events.push(VehicleEvent {
                event_type: "low_battery".into(),
                attributes,
            });
        }
        self.state.last_at_ms = Some(at_ms);
        self.state.last_now_ms = now_ms;
        if gap_ms > 0 {
            self.state.interval_ms = gap_ms;
        }
        self.state.inactive_sent = false;
        d
    }

    /// What time alone decides, `now` by the bridge's clock: a trip's end after standing
    /// still (or silence while moving), an overspeed episode ended by silence, `inactive`.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Derived {
        let mut d = Derived::default();
        let Some(last_at_ms) = self.state.last_at_ms else {
            return d;
        };
        let quiet_ms = now
            .timestamp_millis()
            .saturating_sub(self.state.last_now_ms);
        if quiet_ms <= 0 {
            return d;
        }
        let settings = Arc::clone(&self.settings);
        let rules = self.rules(&settings);
        if let Some(m) = self.state.trips.tick(quiet_ms, &rules) {
            self.motion(m, &settings, &mut d);
        }
        if quiet_ms >= rules.silence_ms {
            if let Some(e) = self.state.overspeed.end() {
                overspeed(e, &mut d);
            }
        }
        if let Some(after) = settings.events.inactive_after {
            if !self.state.inactive_sent && quiet_ms >= millis(after) {
                self.state.inactive_sent = true;
                let mut attributes = serde_json::Map::new();
                attributes.insert("last_report".into(), text_time_ms(last_at_ms));
                attributes.insert("quiet_s".into(), json!(quiet_ms / 1000));
                d.events.push(VehicleEvent {
                    event_type: "inactive".into(),
                    attributes,
                });
            }
        }
        d
    }

    /// Bytes this vehicle costs: the struct and what it holds on the heap.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Deriver>() + self.state.trips.heap_bytes()
    }

    /// Silence limit: three report intervals, at least `end_after` (a tracker's seconds
    /// are not enough to call a drive over) and at most `MAX_GAP_MS` (a cloud's idle
    /// interval is not a drive either).
    fn rules<'a>(&self, settings: &'a Settings) -> Rules<'a> {
        let end_after = millis(settings.trips.end_after);
        let three = self.state.interval_ms.saturating_mul(3).min(MAX_GAP_MS);
        Rules {
            trips: &settings.trips,
            silence_ms: three.max(end_after),
            path_limit: if self.upstream_trips {
                0
            } else {
                settings.trips.path_points
            },
        }
    }

    fn motion(&mut self, m: Motion, settings: &Settings, d: &mut Derived) {
        let (event_type, at_ms) = match &m {
            Motion::Started { at_ms } => ("moving", *at_ms),
            Motion::Ended {
                announced: false, ..
            } => return,
            Motion::Ended { at_ms, .. } => ("stopped", *at_ms),
        };
        let mut attributes = serde_json::Map::new();
        attributes.insert("at".into(), text_time_ms(at_ms));
        d.events.push(VehicleEvent {
            event_type: event_type.into(),
            attributes,
        });
        let Motion::Ended {
            trip: Some(finished),
            ..
        } = m
        else {
            return;
        };
        if self.upstream_trips {
            return;
        }
        if let Some(trip) = Trip::new(finished, &settings.zones) {
            d.fields.merge(trip.fields());
            d.events.push(trip.event());
            d.trip_ended = Some(trip);
        }
    }

    fn clock_reset(&mut self, d: &mut Derived) {
        let settings = Arc::clone(&self.settings);
        let rules = self.rules(&settings);
        if let Some(m) = self.state.trips.end(&rules) {
            self.motion(m, &settings, d);
        }
        self.state.trips.forget_standing();
        if let Some(e) = self.state.overspeed.end() {
            overspeed(e, d);
        }
        if let Some(session) = self.state.charge.end() {
            charged(session, d);
        }
        self.state.interval_ms = 0;
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn zone_change(change: ZoneChange, zones: &Zones, d: &mut Derived) {
    let name = |z: Option<u16>| z.and_then(|i| zones.name(i)).unwrap_or(AWAY).to_string();
    let to = match change {
        ZoneChange::First(z) => z,
        ZoneChange::Moved { from, to } => {
            for (event_type, zone) in [("zone_exit", from), ("zone_enter", to)] {
                if zone.is_some() {
                    let mut attributes = serde_json::Map::new();
                    attributes.insert("zone".into(), name(zone).into());
                    d.events.push(VehicleEvent {
                        event_type: event_type.into(),
                        attributes,
                    });
                }
            }
            to
        }
    };
    d.fields.set(Field::Zone, name(to));
}

fn charged(session: ChargeSession, d: &mut Derived) {
    d.fields.set(Field::LastChargeEnd, text_time(session.end));
    d.fields.set_f64(
        Field::LastChargeDuration,
        round(session.duration_s as f64 / 60.0, 1),
    );
    if let Some(added) = session.soc_added {
        d.fields.set_f64(Field::LastChargeSocAdded, added);
    }
    let attributes = match serde_json::to_value(&session) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    d.events.push(VehicleEvent {
        event_type: "charge_session".into(),
        attributes,
    });
    d.charge_ended = Some(session);
}

fn overspeed(e: events::Episode, d: &mut Derived) {
    let mut attributes = serde_json::Map::new();
    attributes.insert("peak_kmh".into(), json!(round(f64::from(e.peak_kmh), 1)));
    attributes.insert("limit_kmh".into(), json!(round(f64::from(e.limit_kmh), 1)));
    attributes.insert("start".into(), text_time_ms(e.start_ms));
    attributes.insert("end".into(), text_time_ms(e.last_ms));
    attributes.insert("duration_s".into(), json!((e.last_ms - e.start_ms) / 1000));
    d.events.push(VehicleEvent {
        event_type: "overspeed".into(),
        attributes,
    });
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod size_tests {
    /// A standing vehicle's deriver; 10 000 of them must stay well under 8 MiB.
    #[test]
    fn a_deriver_keeps_its_size() {
        let size = std::mem::size_of::<super::Deriver>();
        assert!(
            size <= 320,
            "the Deriver grew to {size} bytes (320): box what a standing vehicle does not use"
        );
        assert!(10_000 * size <= 8 << 20);
    }
}
