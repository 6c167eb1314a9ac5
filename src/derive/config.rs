//! `[trips]`, `[events]` and `[[zones]]`: what the derivation stage is told.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The three sections together, as the configuration holds them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeriveConfig {
    pub trips: TripsConfig,
    pub events: EventsConfig,
    pub zones: Vec<ZoneConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TripsConfig {
    /// A trip ends once the vehicle has stood still this long (a traffic light or a
    /// level crossing is shorter; parking is longer).
    #[serde(with = "humantime_serde")]
    pub end_after: Duration,
    /// Trips kept per vehicle in the trip log; the oldest go first.
    pub keep: usize,
    /// A trip shorter than this is dropped: an engine idling in the drive, or two bad
    /// fixes, is not a trip.
    pub min_distance_m: f64,
    /// A fix closer than this to the last one counted is GPS noise, not movement: a
    /// receiver standing still wanders 5-30 m, and up to about 50 m between buildings.
    pub jitter_m: f64,
    /// A reported speed above this is motion: a standing receiver reads 0-3 km/h.
    pub moving_speed_kmh: f64,
    /// Points kept of a trip's path (thinned evenly as it grows); 0 keeps none. Each
    /// costs 8 bytes per driving vehicle.
    pub path_points: usize,
}

impl Default for TripsConfig {
    fn default() -> Self {
        TripsConfig {
            end_after: Duration::from_secs(3 * 60),
            keep: 1_000,
            min_distance_m: 300.0,
            jitter_m: 50.0,
            moving_speed_kmh: 5.0,
            path_points: MAX_PATH_POINTS,
        }
    }
}

/// Most path points per trip: a GPX file or an MQTT message of a trip stays small.
pub const MAX_PATH_POINTS: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Entering or leaving a zone counts once the position has been on the new side this
    /// long (and in two reports).
    #[serde(with = "humantime_serde")]
    pub zone_dwell: Duration,
    /// `overspeed` above this speed, for every vehicle (a connector or vehicle may set
    /// its own); none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
    /// `inactive` once a vehicle has not reported for this long; none when absent.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub inactive_after: Option<Duration>,
    /// `low_battery` once the battery level falls to this; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_battery_percent: Option<f64>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            zone_dwell: Duration::from_secs(30),
            overspeed_kmh: None,
            inactive_after: None,
            low_battery_percent: None,
        }
    }
}

/// A named place: a circle or a polygon, WGS-84.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_m: Option<f64>,
    /// `[latitude, longitude]` corners, in order; the last joins the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polygon: Option<Vec<[f64; 2]>>,
}

/// Most zones: every report is tested against each (10 000 vehicles a second against
/// 1 000 zones is 10 million tests a second, most rejected by their bounding box).
pub const MAX_ZONES: usize = 1_000;
/// Most corners of a polygon: the crossing check compares every pair of edges.
pub const MAX_POLYGON_POINTS: usize = 1_000;
/// Largest circle: a zone is a place, not a country.
pub const MAX_RADIUS_M: f64 = 1_000_000.0;
/// Longest zone name: it is a sensor's value and part of events.
pub const MAX_NAME_LEN: usize = 64;

/// Why a zone is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZoneError {
    #[error("zone name must not be empty")]
    EmptyName,
    #[error("zone name must be at most {MAX_NAME_LEN} characters")]
    LongName,
    #[error("zone name `{0}` is `away`, which means outside every zone")]
    ReservedName(String),
    #[error("zone `{0}` is defined twice")]
    DuplicateName(String),
    #[error("zone `{0}`: give either latitude, longitude and radius_m (a circle) or polygon")]
    NoShape(String),
    #[error("zone `{0}`: give latitude, longitude and radius_m, or polygon, not both")]
    TwoShapes(String),
    #[error("zone `{0}`: radius_m must be greater than 0 and at most {MAX_RADIUS_M} m")]
    BadRadius(String),
    #[error("zone `{0}`: a coordinate is out of range (latitude -90..90, longitude -180..180)")]
    OutOfRange(String),
    #[error("zone `{0}`: a polygon needs at least 3 corners")]
    TooFewPoints(String),
    #[error("zone `{0}`: a polygon has at most {MAX_POLYGON_POINTS} corners")]
    TooManyPoints(String),
    #[error("zone `{0}`: the polygon has no area (its corners lie on one line)")]
    NoArea(String),
    #[error("zone `{0}`: the polygon's edges {1} and {2} cross (edge n joins corners n and n+1)")]
    SelfIntersecting(String, usize, usize),
    #[error("zone `{0}`: the polygon spans 180° of longitude or more (zones may not cross the antimeridian)")]
    TooWide(String),
    #[error("at most {MAX_ZONES} zones (each report is tested against every zone); {0} given")]
    TooMany(usize),
}

impl TripsConfig {
    /// Every invalid setting as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut check = |key: &str, ok: bool, reason: &str| {
            if !ok {
                out.push((format!("trips.{key}"), reason.to_string()));
            }
        };
        check(
            "end_after",
            (Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&self.end_after),
            "must be 10 s to 24 h",
        );
        check(
            "keep",
            (1..=100_000).contains(&self.keep),
            "must be 1 to 100000",
        );
        check(
            "min_distance_m",
            (0.0..=100_000.0).contains(&self.min_distance_m),
            "must be 0 to 100000",
        );
        check(
            "jitter_m",
            (1.0..=1_000.0).contains(&self.jitter_m),
            "must be 1 to 1000",
        );
        check(
            "moving_speed_kmh",
            (0.5..=50.0).contains(&self.moving_speed_kmh),
            "must be 0.5 to 50",
        );
        check(
            "path_points",
            self.path_points == 0 || (2..=MAX_PATH_POINTS).contains(&self.path_points),
            "must be 0 (no path) or 2 to 500",
        );
        out
    }
}

impl EventsConfig {
    /// Every invalid setting as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.zone_dwell > Duration::from_secs(3600) {
            out.push(("events.zone_dwell".into(), "must be at most 1 h".into()));
        }
        if let Some(v) = self.overspeed_kmh {
            if let Some(reason) = overspeed_problem(v) {
                out.push(("events.overspeed_kmh".into(), reason.into()));
            }
        }
        if let Some(d) = self.inactive_after {
            if d < Duration::from_secs(60) {
                out.push((
                    "events.inactive_after".into(),
                    "must be at least 1 min".into(),
                ));
            }
        }
        if let Some(v) = self.low_battery_percent {
            if !(1.0..=99.0).contains(&v) {
                out.push((
                    "events.low_battery_percent".into(),
                    "must be 1 to 99".into(),
                ));
            }
        }
        out
    }
}

/// The refused limits among `(key, limit)`, each as (key, reason).
pub fn speed_limit_problems(
    limits: impl IntoIterator<Item = (String, Option<f64>)>,
) -> Vec<(String, String)> {
    limits
        .into_iter()
        .filter_map(|(key, kmh)| Some((key, overspeed_problem(kmh?)?.to_string())))
        .collect()
}

/// Why a speed limit (`overspeed_kmh`, in any section) is refused, if it is.
pub fn overspeed_problem(kmh: f64) -> Option<&'static str> {
    (!(1.0..=400.0).contains(&kmh)).then_some("must be 1 to 400 km/h")
}

impl DeriveConfig {
    /// Every invalid setting as (key, reason); a zone's key is `zones[i]`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = self.trips.problems();
        out.extend(self.events.problems());
        out.extend(zone_problems(&self.zones).into_iter().map(|(i, e)| {
            (
                i.map_or("zones".into(), |i| format!("zones[{i}]")),
                e.to_string(),
            )
        }));
        out
    }
}

/// Every refused zone, by its index (`None`: the list as a whole).
pub fn zone_problems(zones: &[ZoneConfig]) -> Vec<(Option<usize>, ZoneError)> {
    let mut out = Vec::new();
    if zones.len() > MAX_ZONES {
        out.push((None, ZoneError::TooMany(zones.len())));
        return out;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, zone) in zones.iter().enumerate() {
        if !zone.name.trim().is_empty() && !names.insert(zone.name.as_str()) {
            out.push((Some(i), ZoneError::DuplicateName(zone.name.clone())));
        }
        if let Err(e) = super::zone::Shape::from_config(zone) {
            out.push((Some(i), e));
        }
    }
    out
}
