//! Zones: which named place a position is in, and when a vehicle enters or leaves one.

use super::config::{ZoneConfig, ZoneError, MAX_NAME_LEN, MAX_POLYGON_POINTS, MAX_RADIUS_M};
use super::Fix;

/// Mean Earth radius (IUGG), metres: haversine on a sphere is within 0.5 % of the
/// ellipsoid, a few metres on a zone's radius.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance in metres (haversine).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// A zone's area, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Circle {
        latitude: f64,
        longitude: f64,
        radius_m: f64,
    },
    /// Corners as (latitude, longitude), with their bounding box for a quick "no".
    Polygon {
        corners: Vec<(f64, f64)>,
        min: (f64, f64),
        max: (f64, f64),
    },
}

fn in_range(lat: f64, lon: f64) -> bool {
    lat.is_finite()
        && lon.is_finite()
        && (-90.0..=90.0).contains(&lat)
        && (-180.0..=180.0).contains(&lon)
}

impl Shape {
    /// The zone's shape, or why it is refused (names are checked here; duplicates by the list).
    pub fn from_config(zone: &ZoneConfig) -> Result<Shape, ZoneError> {
        let name = zone.name.trim();
        if name.is_empty() {
            return Err(ZoneError::EmptyName);
        }
        if name.chars().count() > MAX_NAME_LEN {
            return Err(ZoneError::LongName);
        }
        if name == "away" {
            return Err(ZoneError::ReservedName(name.into()));
        }
        let name = name.to_string();
        let circle = zone.latitude.is_some() || zone.longitude.is_some() || zone.radius_m.is_some();
        match (circle, &zone.polygon) {
            (true, Some(_)) => Err(ZoneError::TwoShapes(name)),
            (false, None) => Err(ZoneError::NoShape(name)),
            (true, None) => {
                let (Some(latitude), Some(longitude), Some(radius_m)) =
                    (zone.latitude, zone.longitude, zone.radius_m)
                else {
                    return Err(ZoneError::NoShape(name));
                };
                if !in_range(latitude, longitude) {
                    return Err(ZoneError::OutOfRange(name));
                }
                if !(radius_m > 0.0 && radius_m <= MAX_RADIUS_M) {
                    return Err(ZoneError::BadRadius(name));
                }
                Ok(Shape::Circle {
                    latitude,
                    longitude,
                    radius_m,
                })
            }
            (false, Some(points)) => polygon(name, points),
        }
    }

    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        match self {
            Shape::Circle {
                latitude,
                longitude,
                radius_m,
            } => distance_m((*latitude, *longitude), (lat, lon)) <= *radius_m,
            Shape::Polygon { corners, min, max } => {
                (min.0..=max.0).contains(&lat)
                    && (min.1..=max.1).contains(&lon)
                    && point_in_polygon(corners, lat, lon)
            }
        }
    }
}

impl Shape {
    /// Inside, or within `margin_m` of the edge outside.
    pub fn within(&self, lat: f64, lon: f64, margin_m: f64) -> bool {
        match self {
            Shape::Circle {
                latitude,
                longitude,
                radius_m,
            } => distance_m((*latitude, *longitude), (lat, lon)) <= radius_m + margin_m,
            Shape::Polygon { corners, .. } => {
                point_in_polygon(corners, lat, lon)
                    || edge_distance_m(corners, lat, lon) <= margin_m
            }
        }
    }
}

/// Metres per degree of latitude on the mean sphere.
const M_PER_DEGREE: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// Distance from a point to the nearest edge, in a plane tangent at the point (exact
/// enough within a few kilometres, which is all a margin needs).
fn edge_distance_m(corners: &[(f64, f64)], lat: f64, lon: f64) -> f64 {
    let k = lat.to_radians().cos();
    let xy = |c: &(f64, f64)| ((c.1 - lon) * k * M_PER_DEGREE, (c.0 - lat) * M_PER_DEGREE);
    let n = corners.len();
    (0..n)
        .map(|i| {
            let (a, b) = (xy(&corners[i]), xy(&corners[(i + 1) % n]));
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let len2 = dx * dx + dy * dy;
            let t = if len2 > 0.0 {
                (-(a.0 * dx + a.1 * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            (a.0 + t * dx).hypot(a.1 + t * dy)
        })
        .fold(f64::INFINITY, f64::min)
}

fn polygon(name: String, points: &[[f64; 2]]) -> Result<Shape, ZoneError> {
    let mut corners: Vec<(f64, f64)> = points.iter().map(|p| (p[0], p[1])).collect();
    // A ring written closed (the first corner repeated last, as GeoJSON does) is the same ring.
    if corners.len() > 1 && corners.first() == corners.last() {
        corners.pop();
    }
    if corners.iter().any(|&(lat, lon)| !in_range(lat, lon)) {
        return Err(ZoneError::OutOfRange(name));
    }
    if corners.len() < 3 {
        return Err(ZoneError::TooFewPoints(name));
    }
    if corners.len() > MAX_POLYGON_POINTS {
        return Err(ZoneError::TooManyPoints(name));
    }
    let fold = |f: fn(f64, f64) -> f64, pick: fn(&(f64, f64)) -> f64| {
        corners.iter().map(pick).fold(pick(&corners[0]), f)
    };
    let min = (fold(f64::min, |c| c.0), fold(f64::min, |c| c.1));
    let max = (fold(f64::max, |c| c.0), fold(f64::max, |c| c.1));
    if max.1 - min.1 >= 180.0 {
        return Err(ZoneError::TooWide(name));
    }
    if twice_area(&corners).abs() < 1e-14 {
        return Err(ZoneError::NoArea(name));
    }
    if let Some((a, b)) = first_crossing(&corners) {
        return Err(ZoneError::SelfIntersecting(name, a, b));
    }
    Ok(Shape::Polygon { corners, min, max })
}

/// Shoelace sum (degrees², planar): zero for corners on one line.
fn twice_area(c: &[(f64, f64)]) -> f64 {
    (0..c.len())
        .map(|i| {
            let (a, b) = (c[i], c[(i + 1) % c.len()]);
            a.1 * b.0 - b.1 * a.0
        })
        .sum()
}

/// The first two edges that cross or touch, other than neighbours at their shared
/// corner. Edge i joins corners i and i+1. O(n²): n is at most MAX_POLYGON_POINTS.
fn first_crossing(c: &[(f64, f64)]) -> Option<(usize, usize)> {
    let n = c.len();
    let edge = |i: usize| (c[i], c[(i + 1) % n]);
    for i in 0..n {
        for j in i + 1..n {
            let neighbours = j == i + 1 || (i == 0 && j == n - 1);
            let (a, b) = (edge(i), edge(j));
            if neighbours {
                // Neighbours share one corner; they cross only when they fold back on
                // each other (a spike: collinear and overlapping).
                let shared = if j == i + 1 { a.1 } else { a.0 };
                let (p, q) = if j == i + 1 { (a.0, b.1) } else { (a.1, b.0) };
                if orientation(p, shared, q) == 0.0 && dot(p, shared, q) > 0.0 {
                    return Some((i, j));
                }
                continue;
            }
            if segments_touch(a, b) {
                return Some((i, j));
            }
        }
    }
    None
}

/// Cross product of (b - a) and (c - a), in (lon, lat).
fn orientation(a: (f64, f64), b: (f64, f64), c: (f64, f64)) -> f64 {
    (b.1 - a.1) * (c.0 - a.0) - (b.0 - a.0) * (c.1 - a.1)
}

/// Dot product of (p - s) and (q - s): positive when p and q lie on the same side of s.
fn dot(p: (f64, f64), s: (f64, f64), q: (f64, f64)) -> f64 {
    (p.0 - s.0) * (q.0 - s.0) + (p.1 - s.1) * (q.1 - s.1)
}

type Segment = ((f64, f64), (f64, f64));

fn segments_touch((p1, p2): Segment, (q1, q2): Segment) -> bool {
    let (d1, d2) = (orientation(q1, q2, p1), orientation(q1, q2, p2));
    let (d3, d4) = (orientation(p1, p2, q1), orientation(p1, p2, q2));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    let on = |a: (f64, f64), b: (f64, f64), p: (f64, f64)| {
        p.0 >= a.0.min(b.0) && p.0 <= a.0.max(b.0) && p.1 >= a.1.min(b.1) && p.1 <= a.1.max(b.1)
    };
    (d1 == 0.0 && on(q1, q2, p1))
        || (d2 == 0.0 && on(q1, q2, p2))
        || (d3 == 0.0 && on(p1, p2, q1))
        || (d4 == 0.0 && on(p1, p2, q2))
}

/// Crossing-number test (a ray towards +longitude), treating degrees as a plane: zones
/// are small, and the caller refuses polygons that cross the antimeridian.
pub fn point_in_polygon(corners: &[(f64, f64)], lat: f64, lon: f64) -> bool {
    let mut inside = false;
    let mut j = corners.len().wrapping_sub(1);
    for (i, &(lat_i, lon_i)) in corners.iter().enumerate() {
        let (lat_j, lon_j) = corners[j];
        if (lat_i > lat) != (lat_j > lat) {
            let lon_at = lon_i + (lat - lat_i) / (lat_j - lat_i) * (lon_j - lon_i);
            if lon < lon_at {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// A checked zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    pub shape: Shape,
}

/// Every zone, in the configuration's order: where zones overlap, the first one wins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Zones(Vec<Zone>);

impl Zones {
    /// Checked zones, or the first problem (see `config::zone_problems` for all of them).
    pub fn new(zones: &[ZoneConfig]) -> Result<Zones, ZoneError> {
        if let Some((_, e)) = super::config::zone_problems(zones).into_iter().next() {
            return Err(e);
        }
        let zones = zones
            .iter()
            .map(|z| {
                Shape::from_config(z).map(|shape| Zone {
                    name: z.name.trim().to_string(),
                    shape,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Zones(zones))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Still in zone `index`: inside, or less than `margin_m` outside its edge.
    pub fn within(&self, index: u16, lat: f64, lon: f64, margin_m: f64) -> bool {
        self.0
            .get(usize::from(index))
            .is_some_and(|z| z.shape.within(lat, lon, margin_m))
    }

    /// The index of the first zone holding the position.
    pub fn find(&self, lat: f64, lon: f64) -> Option<u16> {
        self.0
            .iter()
            .position(|z| z.shape.contains(lat, lon))
            .and_then(|i| u16::try_from(i).ok())
    }

    pub fn name(&self, index: u16) -> Option<&str> {
        self.0.get(usize::from(index)).map(|z| z.name.as_str())
    }

    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.0
            .iter()
            .position(|z| z.name == name)
            .and_then(|i| u16::try_from(i).ok())
    }
}

/// Where a vehicle is, as far as the zone events are concerned: `None` inside no zone.
/// A change is taken once the new side has held for `zone_dwell` and in two reports,
/// so that fixes wandering over an edge never flap; and a vehicle in a zone has left it
/// only once it is `margin_m` (the GPS jitter) beyond its edge, so that one parked at
/// the edge never leaves it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZoneTracker {
    /// `None` before the first fix; then `Some(zone)` with `zone` `None` for away.
    pub current: Option<Option<u16>>,
    /// The other side seen lately: (zone, vehicle time first seen in ms, reports).
    candidate: Option<(Option<u16>, i64, u8)>,
}

/// What a fix did to the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneChange {
    /// The first fix: the zone is known now (no event: nobody saw it enter).
    First(Option<u16>),
    /// Left `from` (if in a zone) and entered `to` (if in a zone).
    Moved { from: Option<u16>, to: Option<u16> },
}

impl ZoneTracker {
    pub fn restore(current: Option<Option<u16>>) -> ZoneTracker {
        ZoneTracker {
            current,
            candidate: None,
        }
    }

    pub(crate) fn report(
        &mut self,
        zones: &Zones,
        fix: Fix,
        dwell_ms: i64,
        margin_m: f64,
    ) -> Option<ZoneChange> {
        let Some(current) = self.current else {
            let here = zones.find(fix.lat, fix.lon);
            self.current = Some(here);
            return Some(ZoneChange::First(here));
        };
        let here = match current {
            Some(zone) if zones.within(zone, fix.lat, fix.lon, margin_m) => current,
            _ => zones.find(fix.lat, fix.lon),
        };
        if here == current {
            self.candidate = None;
            return None;
        }
        let (zone, since, reports) = match self.candidate {
            Some((zone, since, reports)) if zone == here => {
                (zone, since, reports.saturating_add(1))
            }
            _ => (here, fix.at_ms, 1),
        };
        if reports >= 2 && fix.at_ms - since >= dwell_ms {
            self.current = Some(zone);
            self.candidate = None;
            return Some(ZoneChange::Moved {
                from: current,
                to: zone,
            });
        }
        self.candidate = Some((zone, since, reports));
        None
    }
}
