//! Golden routes and property tests for the derivation stage, on a made-up clock.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::zone::{distance_m, point_in_polygon, Shape};
use super::*;
use crate::model::{Field, Position, VehicleState};

/// 2026-01-01 00:00:00 UTC, plus `s` seconds.
fn t(s: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_767_225_600_000 + (s * 1000.0) as i64).unwrap()
}

fn settings(edit: impl FnOnce(&mut DeriveConfig)) -> Arc<Settings> {
    let mut config = DeriveConfig::default();
    edit(&mut config);
    Arc::new(Settings::new(&config).unwrap())
}

/// Berlin, and a route due north from it (one degree of latitude is 111 195 m on the
/// mean sphere `distance_m` uses).
const START: (f64, f64) = (52.5, 13.4);
const M_PER_DEG: f64 = 111_195.08;

fn north(metres: f64) -> (f64, f64) {
    (START.0 + metres / M_PER_DEG, START.1)
}

/// A small deterministic noise source (xorshift), so tests repeat exactly.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A point uniformly within `radius_m` of `p`.
    fn around(&mut self, p: (f64, f64), radius_m: f64) -> (f64, f64) {
        let (r, a) = (
            radius_m * self.next().sqrt(),
            self.next() * std::f64::consts::TAU,
        );
        let k = p.0.to_radians().cos();
        (
            p.0 + r * a.sin() / M_PER_DEG,
            p.1 + r * a.cos() / (M_PER_DEG * k),
        )
    }
}

fn state(p: Option<(f64, f64)>, speed: Option<f64>) -> VehicleState {
    let mut st = VehicleState {
        position: p.map(|(lat, lon)| Position {
            latitude: lat,
            longitude: lon,
            gps_accuracy: None,
        }),
        ..Default::default()
    };
    if let Some(v) = speed {
        st.set_f64(Field::Speed, v);
        st.set(Field::Driving, v > 1.0);
    }
    st
}

/// Runs reports (vehicle time in s, state) through a deriver, the bridge's clock at the
/// vehicle's plus `skew_s`, ticking every `tick_s` of bridge time in between and for
/// `after_s` after the last; everything it derived, in order.
fn run(
    deriver: &mut Deriver,
    reports: &[(f64, VehicleState)],
    skew_s: f64,
    tick_s: f64,
    after_s: f64,
) -> Vec<Derived> {
    let mut out = Vec::new();
    let mut clock = reports.first().map_or(0.0, |r| r.0 + skew_s);
    for (at, st) in reports {
        let now = at + skew_s;
        while clock + tick_s < now {
            clock += tick_s;
            out.push(deriver.tick(t(clock)));
        }
        clock = clock.max(now);
        out.push(deriver.report(t(*at), t(now), st));
    }
    let end = clock + after_s;
    while clock < end {
        clock += tick_s;
        out.push(deriver.tick(t(clock)));
    }
    out.retain(|d| !d.is_empty());
    out
}

fn trips(out: &[Derived]) -> Vec<Trip> {
    out.iter().filter_map(|d| d.trip_ended.clone()).collect()
}

fn events<'a>(out: &'a [Derived], kind: &str) -> Vec<&'a VehicleEvent> {
    out.iter()
        .flat_map(|d| &d.events)
        .filter(|e| e.event_type == kind)
        .collect()
}

/// Stands `stand_s` at the start, drives `length_m` north at `kmh`, stands `stand_s` at
/// the end; a report every `every_s` with `noise_m` of GPS noise.
fn route(
    length_m: f64,
    kmh: f64,
    every_s: f64,
    stand_s: f64,
    noise_m: f64,
) -> Vec<(f64, VehicleState)> {
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let drive_s = length_m / (kmh / 3.6);
    let mut out = Vec::new();
    let mut at = -stand_s;
    while at <= drive_s + stand_s {
        let (metres, speed) = if at < 0.0 {
            (0.0, 0.0)
        } else if at < drive_s {
            (at * kmh / 3.6, kmh)
        } else {
            (length_m, 0.0)
        };
        let p = noise.around(north(metres), noise_m);
        out.push((at, state(Some(p), Some(speed))));
        at += every_s;
    }
    out
}

#[test]
fn a_tracker_every_2_s_drives_10_km_as_one_trip() {
    let mut d = Deriver::new(settings(|_| {}));
    let out = run(
        &mut d,
        &route(10_000.0, 50.0, 2.0, 300.0, 5.0),
        0.0,
        2.0,
        600.0,
    );
    let trips = trips(&out);
    assert_eq!(trips.len(), 1, "{trips:?}");
    let trip = &trips[0];
    let length_km = distance_m(START, north(10_000.0)) / 1000.0;
    assert!(
        (trip.distance_km - length_km).abs() <= 0.02 * length_km,
        "{} km of {length_km}",
        trip.distance_km
    );
    assert!((trip.duration_s - 720).abs() <= 2, "{} s", trip.duration_s);
    assert_eq!(trip.max_speed_kmh, Some(50.0));
    assert!(
        (trip.avg_speed_kmh - 50.0).abs() < 1.5,
        "{}",
        trip.avg_speed_kmh
    );
    assert_eq!(trip.distance_source, "gps");
    assert!(
        trip.path.len() <= 500 && trip.path.len() > 100,
        "{}",
        trip.path.len()
    );
    assert_eq!(events(&out, "moving").len(), 1);
    assert_eq!(events(&out, "stopped").len(), 1);
    assert_eq!(events(&out, "trip").len(), 1);
    // The fields and the event say the same.
    let fields = &out.iter().find(|d| d.trip_ended.is_some()).unwrap().fields;
    assert_eq!(
        fields.get(Field::LastTripDistance),
        Value::float(trip.distance_km).as_ref()
    );
    assert_eq!(
        fields.get(Field::LastTripDuration),
        Value::float(12.0).as_ref()
    );
    assert!(fields.get(Field::LastTripStart).is_some() && fields.get(Field::LastTripEnd).is_some());
}

#[test]
fn a_cloud_every_5_min_sees_the_same_trip() {
    let mut d = Deriver::new(settings(|_| {}));
    let out = run(
        &mut d,
        &route(10_000.0, 50.0, 300.0, 900.0, 5.0),
        0.0,
        30.0,
        1800.0,
    );
    let trips = trips(&out);
    assert_eq!(trips.len(), 1, "{trips:?}");
    let length_km = distance_m(START, north(10_000.0)) / 1000.0;
    assert!(
        (trips[0].distance_km - length_km).abs() <= 0.02 * length_km,
        "{}",
        trips[0].distance_km
    );
    assert!(
        (trips[0].duration_s - 720).abs() <= 300,
        "{}",
        trips[0].duration_s
    );
}

#[test]
fn a_cloud_that_only_sees_the_car_gone_still_makes_the_trip() {
    // Parked, then parked 3 km away at the next poll: the trip is timed from the poll
    // that last saw it at home, so its average speed is possible.
    let mut d = Deriver::new(settings(|_| {}));
    let mut reports: Vec<_> = (0..4)
        .map(|i| (i as f64 * 300.0, state(Some(START), Some(0.0))))
        .collect();
    reports.extend((4..8).map(|i| (i as f64 * 300.0, state(Some(north(3000.0)), Some(0.0)))));
    let out = run(&mut d, &reports, 0.0, 30.0, 600.0);
    let trips = trips(&out);
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(trips[0].duration_s, 300);
    assert!((trips[0].distance_km - 3.0).abs() < 0.05);
}

#[test]
fn standing_with_20_m_of_jitter_for_an_hour_is_no_trip_and_no_zone_flap() {
    let mut noise = Noise(7);
    // Parked 5 m inside a zone's edge, and another vehicle 15 m outside it.
    for (offset_m, inside) in [(-5.0, true), (15.0, false)] {
        let s = settings(|c| {
            c.zones.push(ZoneConfig {
                name: "home".into(),
                latitude: Some(START.0),
                longitude: Some(START.1),
                radius_m: Some(100.0),
                polygon: None,
            })
        });
        let parked = north(100.0 + offset_m);
        // The first fix where it parked, then an hour of noise about it.
        let reports: Vec<_> = (0..1800)
            .map(|i| {
                let p = if i == 0 {
                    parked
                } else {
                    noise.around(parked, 20.0)
                };
                (i as f64 * 2.0, state(Some(p), Some(0.0)))
            })
            .collect();
        let mut d = Deriver::new(s);
        let out = run(&mut d, &reports, 0.0, 2.0, 600.0);
        assert!(trips(&out).is_empty());
        assert!(events(&out, "moving").is_empty());
        assert!(events(&out, "zone_enter").is_empty() && events(&out, "zone_exit").is_empty());
        let zone = out.iter().find_map(|d| d.fields.get(Field::Zone)).unwrap();
        assert_eq!(zone, &Value::from(if inside { "home" } else { AWAY }));
    }
}

#[test]
fn an_engine_idling_in_the_drive_is_no_trip_and_no_moving() {
    let mut st = state(Some(START), Some(0.0));
    st.set(Field::EngineRunning, true);
    let reports: Vec<_> = (0..900).map(|i| (i as f64 * 2.0, st.clone())).collect();
    let mut d = Deriver::new(settings(|_| {}));
    let out = run(&mut d, &reports, 0.0, 2.0, 600.0);
    assert!(out.iter().all(|d| d.events.is_empty()), "{out:?}");
}

#[test]
fn crossing_a_zone_is_one_enter_and_one_exit() {
    let square = |lat: f64, lon: f64, half: f64| {
        vec![
            [lat - half, lon - half],
            [lat - half, lon + half],
            [lat + half, lon + half],
            [lat + half, lon - half],
        ]
    };
    let mid = north(5_000.0);
    for zone in [
        ZoneConfig {
            name: "town".into(),
            latitude: Some(mid.0),
            longitude: Some(mid.1),
            radius_m: Some(500.0),
            polygon: None,
        },
        ZoneConfig {
            name: "town".into(),
            latitude: None,
            longitude: None,
            radius_m: None,
            polygon: Some(square(mid.0, mid.1, 0.005)),
        },
    ] {
        let mut d = Deriver::new(settings(|c| c.zones.push(zone)));
        let out = run(
            &mut d,
            &route(10_000.0, 50.0, 2.0, 300.0, 10.0),
            0.0,
            2.0,
            600.0,
        );
        let (enter, exit) = (events(&out, "zone_enter"), events(&out, "zone_exit"));
        assert_eq!((enter.len(), exit.len()), (1, 1));
        assert_eq!(enter[0].attributes["zone"], "town");
        assert_eq!(exit[0].attributes["zone"], "town");
        let trip = &trips(&out)[0];
        assert_eq!(
            (trip.start_zone.as_deref(), trip.end_zone.as_deref()),
            (None, None)
        );
    }
}

#[test]
fn sixty_in_a_fifty_limit_is_one_overspeed_with_its_peak() {
    let s = settings(|c| c.events.overspeed_kmh = Some(50.0));
    let mut noise = Noise(3);
    let mut reports = Vec::new();
    let mut metres = 0.0;
    for i in 0..600 {
        // 40, then 60 ± 3 for ten minutes, hovering about the limit on the way in and out.
        let speed = match i {
            0..30 => 40.0,
            30..40 => [48.0, 52.0, 47.0, 53.0, 49.0][i % 5],
            40..340 => 57.0 + 6.0 * noise.next(),
            340..350 => [52.0, 49.0, 51.0, 47.0, 50.0][i % 5],
            _ => 40.0,
        };
        metres += speed / 3.6 * 2.0;
        reports.push((i as f64 * 2.0, state(Some(north(metres)), Some(speed))));
    }
    let mut d = Deriver::new(Arc::clone(&s));
    let out = run(&mut d, &reports, 0.0, 2.0, 0.0);
    let over = events(&out, "overspeed");
    assert_eq!(over.len(), 1, "{over:?}");
    let peak = over[0].attributes["peak_kmh"].as_f64().unwrap();
    let true_peak =
        reports
            .iter()
            .filter_map(|r| r.1.get(Field::Speed))
            .fold(0.0, |m, v| match v {
                Value::Float(f) => f64::max(m, *f),
                Value::Int(i) => f64::max(m, *i as f64),
                _ => m,
            });
    assert!((peak - true_peak).abs() < 0.1, "{peak} vs {true_peak}");
    assert_eq!(over[0].attributes["limit_kmh"], 50.0);
    // A vehicle's own limit wins over the shared one.
    let mut d = Deriver::new(s).with_overspeed_kmh(Some(70.0));
    assert!(events(&run(&mut d, &reports, 0.0, 2.0, 0.0), "overspeed").is_empty());
}

#[test]
fn a_restart_in_the_middle_of_a_trip_yields_one_trip() {
    let s = settings(|_| {});
    let reports = route(10_000.0, 50.0, 2.0, 300.0, 5.0);
    let (before, after) = reports.split_at(reports.len() / 2);
    let mut d = Deriver::new(Arc::clone(&s));
    let mut out = run(&mut d, before, 0.0, 2.0, 0.0);
    assert!(d.trip_open());
    let saved = serde_json::to_string(&d.save()).unwrap();
    assert!(saved.len() < 16_000, "{}", saved.len());
    let mut d = Deriver::restore(s, serde_json::from_str(&saved).unwrap());
    out.extend(run(&mut d, after, 0.0, 2.0, 600.0));
    let trips = trips(&out);
    assert_eq!(trips.len(), 1);
    assert!((trips[0].distance_km - 10.0).abs() < 0.2 && (trips[0].duration_s - 720).abs() <= 2);
    assert_eq!(events(&out, "moving").len(), 1);
}

#[test]
fn the_odometer_is_preferred_to_the_gps_path() {
    // A GPS path zigzagging 100 m either side adds distance; the odometer says 10.0 km.
    let mut reports = route(10_000.0, 50.0, 2.0, 300.0, 5.0);
    for (i, (at, st)) in reports.iter_mut().enumerate() {
        let metres = (*at * 50.0 / 3.6).clamp(0.0, 10_000.0);
        st.set_f64(Field::Odometer, 12_345.0 + (metres / 100.0).floor() / 10.0);
        if let (true, Some(p)) = ((0.0..720.0).contains(at), st.position.as_mut()) {
            p.longitude += if i % 20 < 10 { 0.0015 } else { -0.0015 };
        }
    }
    let mut d = Deriver::new(settings(|_| {}));
    let trips = trips(&run(&mut d, &reports, 0.0, 2.0, 600.0));
    assert_eq!(trips.len(), 1);
    assert_eq!(trips[0].distance_source, "odometer");
    assert!(
        (trips[0].distance_km - 10.0).abs() < 1e-9,
        "{}",
        trips[0].distance_km
    );
}

#[test]
fn a_vehicle_that_reports_its_own_trips_gets_none_derived() {
    let mut d = Deriver::new(settings(|_| {})).with_upstream_trips(true);
    let out = run(
        &mut d,
        &route(10_000.0, 50.0, 2.0, 300.0, 5.0),
        0.0,
        2.0,
        600.0,
    );
    assert!(trips(&out).is_empty() && events(&out, "trip").is_empty());
    assert!(out
        .iter()
        .all(|d| d.fields.get(Field::LastTripDistance).is_none()));
    assert_eq!(
        (events(&out, "moving").len(), events(&out, "stopped").len()),
        (1, 1)
    );
}

#[test]
fn duplicates_and_late_reports_change_nothing() {
    let reports = route(10_000.0, 50.0, 2.0, 300.0, 5.0);
    let mut shuffled = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        shuffled.push(r.clone());
        if i % 7 == 0 {
            shuffled.push(r.clone()); // a duplicate
        }
        if i % 11 == 0 && i > 30 {
            shuffled.push(reports[i - 30].clone()); // a minute late
        }
    }
    let mut d = Deriver::new(settings(|_| {}));
    let clean = trips(&run(&mut d, &reports, 0.0, 2.0, 600.0));
    let mut d = Deriver::new(settings(|_| {}));
    let messy = trips(&run(&mut d, &shuffled, 0.0, 2.0, 600.0));
    assert_eq!(clean, messy);
}

#[test]
fn a_vehicle_clock_hours_off_still_times_trips_right() {
    let reports = route(10_000.0, 50.0, 2.0, 300.0, 5.0);
    // The bridge's clock 8 hours behind the vehicle's (a time zone taken for UTC).
    let mut d = Deriver::new(settings(|_| {}));
    let trips = trips(&run(&mut d, &reports, -8.0 * 3600.0, 2.0, 600.0));
    assert_eq!(trips.len(), 1);
    assert!((trips[0].duration_s - 720).abs() <= 2);
}

#[test]
fn a_clock_jumping_days_ahead_never_makes_a_trip_days_long() {
    let mut reports = route(10_000.0, 50.0, 2.0, 300.0, 5.0);
    let half = reports.len() / 2;
    for r in &mut reports[half..] {
        r.0 += 3.0 * 86_400.0;
    }
    let mut d = Deriver::new(settings(|_| {}));
    // The bridge's clock runs on as usual: only the vehicle's jumps.
    let mut out = Vec::new();
    for (i, (at, st)) in reports.iter().enumerate() {
        let now = t(i as f64 * 2.0 - 300.0);
        out.push(d.tick(now));
        out.push(d.report(t(*at), now, st));
    }
    for s in 0..600 {
        out.push(d.tick(t(reports.len() as f64 * 2.0 + s as f64)));
    }
    let trips = trips(&out);
    assert_eq!(trips.len(), 2, "{trips:?}");
    assert!(trips.iter().all(|t| t.duration_s < 3600), "{trips:?}");
}

#[test]
fn bad_positions_are_ignored() {
    let mut reports = route(10_000.0, 50.0, 2.0, 300.0, 5.0);
    for (i, (_, st)) in reports.iter_mut().enumerate() {
        let bad = match i % 9 {
            1 => Some((0.0, 0.0)),
            3 => Some((f64::NAN, 13.4)),
            5 => Some((95.0, 13.4)),
            7 => Some((52.5, f64::INFINITY)),
            _ => None,
        };
        if let Some((lat, lon)) = bad {
            st.position = Some(Position {
                latitude: lat,
                longitude: lon,
                gps_accuracy: None,
            });
        }
    }
    // And a wild fix 5 km off, believed by nobody.
    reports[400].1.position = Some(Position {
        latitude: START.0 + 0.05,
        longitude: START.1 + 0.05,
        gps_accuracy: None,
    });
    let mut d = Deriver::new(settings(|_| {}));
    let trips = trips(&run(&mut d, &reports, 0.0, 2.0, 600.0));
    assert_eq!(trips.len(), 1);
    assert!(
        (trips[0].distance_km - 10.0).abs() < 0.2,
        "{}",
        trips[0].distance_km
    );
}

#[test]
fn a_charging_session_from_the_charging_field() {
    let mut d = Deriver::new(settings(|_| {}));
    let mut reports = Vec::new();
    for i in 0..=60 {
        let mut st = state(Some(START), Some(0.0));
        st.set(Field::Charging, (1..60).contains(&i));
        st.set_f64(
            Field::BatteryLevel,
            40.0 + (i.clamp(1, 59) - 1) as f64 * 40.0 / 58.0,
        );
        reports.push((i as f64 * 60.0, st));
    }
    let out = run(&mut d, &reports, 0.0, 60.0, 0.0);
    let sessions: Vec<_> = out.iter().filter_map(|d| d.charge_ended.clone()).collect();
    assert_eq!(sessions.len(), 1);
    let c = &sessions[0];
    assert_eq!(
        (c.duration_s, c.soc_from, c.soc_to, c.soc_added),
        (59 * 60, Some(40.0), Some(80.0), Some(40.0))
    );
    assert_eq!(events(&out, "charge_session").len(), 1);
    let fields = &out
        .iter()
        .find(|d| d.charge_ended.is_some())
        .unwrap()
        .fields;
    assert_eq!(fields.get(Field::LastChargeSocAdded), Some(&Value::Int(40)));
    assert_eq!(fields.get(Field::LastChargeDuration), Some(&Value::Int(59)));
}

#[test]
fn inactive_once_per_silence() {
    let mut d = Deriver::new(settings(|c| {
        c.events.inactive_after = Some(std::time::Duration::from_secs(3600))
    }));
    let st = state(Some(START), Some(0.0));
    let mut out = run(&mut d, &[(0.0, st.clone())], 0.0, 60.0, 3.0 * 3600.0);
    assert_eq!(events(&out, "inactive").len(), 1);
    out = run(&mut d, &[(4.0 * 3600.0, st)], 0.0, 60.0, 3600.0);
    assert_eq!(events(&out, "inactive").len(), 1, "re-armed by a report");
}

#[test]
fn low_battery_with_hysteresis() {
    let mut d = Deriver::new(settings(|c| c.events.low_battery_percent = Some(20.0)));
    let levels = [25.0, 19.0, 18.0, 21.0, 19.0, 24.0, 19.0, 26.0, 19.0];
    let reports: Vec<_> = levels
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut st = state(Some(START), Some(0.0));
            st.set_f64(Field::BatteryLevel, *v);
            (i as f64 * 60.0, st)
        })
        .collect();
    let out = run(&mut d, &reports, 0.0, 60.0, 0.0);
    assert_eq!(
        events(&out, "low_battery").len(),
        2,
        "at 19, and at 19 again after 26"
    );
}

#[test]
fn the_trip_json_has_the_issues_keys() {
    let mut d = Deriver::new(settings(|_| {}));
    let reports = route(10_000.0, 50.0, 2.0, 300.0, 5.0);
    let trip = trips(&run(&mut d, &reports, 0.0, 2.0, 600.0)).remove(0);
    let json = serde_json::to_value(&trip).unwrap();
    for key in [
        "start",
        "end",
        "distance_km",
        "duration_s",
        "max_speed_kmh",
        "avg_speed_kmh",
        "start_zone",
        "end_zone",
        "start_latitude",
        "start_longitude",
        "end_latitude",
        "end_longitude",
        "path",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["start"], "2026-01-01T00:00:00Z");
    let back: Trip = serde_json::from_value(json).unwrap();
    assert_eq!(back, trip);
    assert!(trip.event().attributes.get("path").is_none());
}

#[test]
fn event_types_cover_what_is_emitted() {
    for t in [
        "trip",
        "charge_session",
        "zone_enter",
        "zone_exit",
        "overspeed",
        "moving",
        "stopped",
        "inactive",
        "low_battery",
    ] {
        assert!(EVENT_TYPES.contains(&t));
    }
}

fn circle(name: &str, lat: f64, lon: f64, r: f64) -> ZoneConfig {
    ZoneConfig {
        name: name.into(),
        latitude: Some(lat),
        longitude: Some(lon),
        radius_m: Some(r),
        polygon: None,
    }
}

fn polygon(name: &str, points: &[[f64; 2]]) -> ZoneConfig {
    ZoneConfig {
        name: name.into(),
        latitude: None,
        longitude: None,
        radius_m: None,
        polygon: Some(points.to_vec()),
    }
}

#[test]
fn config_defaults_and_refusals() {
    assert_eq!(DeriveConfig::default().problems(), Vec::new());
    let d = DeriveConfig::default();
    assert_eq!(d.trips.end_after, std::time::Duration::from_secs(180));
    assert_eq!((d.trips.keep, d.events.zone_dwell.as_secs()), (1000, 30));
    let refused = |zones: Vec<ZoneConfig>| {
        let config = DeriveConfig {
            zones,
            ..Default::default()
        };
        config.problems()
    };
    // Edges 1 and 3 cross; not symmetric, so it has an area.
    let bow_tie = [[0.1, 0.1], [0.1, 0.3], [0.2, 0.1], [0.2, 0.2]];
    for (zones, key, words) in [
        (vec![circle("a", 52.0, 13.0, 0.0)], "zones[0]", "radius_m"),
        (
            vec![circle("a", 95.0, 13.0, 10.0)],
            "zones[0]",
            "out of range",
        ),
        (vec![circle("", 52.0, 13.0, 10.0)], "zones[0]", "empty"),
        (vec![circle("away", 52.0, 13.0, 10.0)], "zones[0]", "away"),
        (
            vec![circle("a", 52.0, 13.0, 10.0), circle("a", 53.0, 13.0, 10.0)],
            "zones[1]",
            "twice",
        ),
        (
            vec![polygon("p", &[[0.1, 0.1], [0.1, 0.2]])],
            "zones[0]",
            "at least 3",
        ),
        (vec![polygon("p", &bow_tie)], "zones[0]", "cross"),
        (
            vec![polygon("p", &[[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])],
            "zones[0]",
            "no area",
        ),
        (
            vec![circle("a", 52.0, 13.0, 10.0); 1001],
            "zones",
            "at most 1000",
        ),
    ] {
        let problems = refused(zones);
        assert!(
            problems.iter().any(|(k, r)| k == key && r.contains(words)),
            "{key} {words}: {problems:?}"
        );
    }
    let mut c = DeriveConfig::default();
    c.trips.jitter_m = 0.0;
    c.events.overspeed_kmh = Some(f64::NAN);
    c.events.low_battery_percent = Some(0.0);
    let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "trips.jitter_m",
            "events.overspeed_kmh",
            "events.low_battery_percent"
        ]
    );
    assert!(Settings::new(&c).is_err());
}

#[test]
fn config_from_toml() {
    let c: DeriveConfig = toml::from_str(
        r#"
        [trips]
        end_after = "5m"
        [events]
        overspeed_kmh = 90
        inactive_after = "1h"
        [[zones]]
        name = "home"
        latitude = 52.5
        longitude = 13.4
        radius_m = 150
        [[zones]]
        name = "depot"
        polygon = [[52.0, 13.0], [52.0, 13.1], [52.1, 13.1], [52.0, 13.0]]
        "#,
    )
    .unwrap();
    assert_eq!(c.trips.end_after.as_secs(), 300);
    assert_eq!(c.events.inactive_after.map(|d| d.as_secs()), Some(3600));
    assert_eq!(c.problems(), Vec::new());
    let s = Settings::new(&c).unwrap();
    assert_eq!(s.zones.find(52.5, 13.4), Some(0));
    assert_eq!(s.zones.find(52.01, 13.09), Some(1));
    assert!(toml::from_str::<DeriveConfig>("[trips]\nend_aftr = \"1m\"").is_err());
}

#[test]
fn a_polygon_written_closed_is_the_same_ring() {
    let open = Shape::from_config(&polygon("p", &[[0.1, 0.1], [0.1, 0.2], [0.2, 0.2]])).unwrap();
    let closed = Shape::from_config(&polygon(
        "p",
        &[[0.1, 0.1], [0.1, 0.2], [0.2, 0.2], [0.1, 0.1]],
    ))
    .unwrap();
    assert_eq!(open, closed);
}

/// The reference: the winding number, by summing the angles the edges subtend.
fn winding_inside(corners: &[(f64, f64)], lat: f64, lon: f64) -> bool {
    let mut total = 0.0;
    for i in 0..corners.len() {
        let (a, b) = (corners[i], corners[(i + 1) % corners.len()]);
        let (a, b) = ((a.1 - lon).atan2(a.0 - lat), (b.1 - lon).atan2(b.0 - lat));
        let mut d = b - a;
        while d > std::f64::consts::PI {
            d -= std::f64::consts::TAU;
        }
        while d < -std::f64::consts::PI {
            d += std::f64::consts::TAU;
        }
        total += d;
    }
    total.abs() > std::f64::consts::PI
}

fn point_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (p.0 - a.0 - t * dx).hypot(p.1 - a.1 - t * dy)
}

/// A star-shaped polygon around (lat, lon): concave when the radii differ, convex
/// (nearly) when they are equal; never crossing itself.
fn star() -> impl Strategy<Value = Vec<(f64, f64)>> {
    (3usize..24, any::<bool>(), -60.0f64..60.0, -170.0f64..170.0).prop_flat_map(
        |(n, convex, lat, lon)| {
            (
                proptest::collection::vec(0.0f64..1.0, n),
                proptest::collection::vec(0.2f64..1.0, n),
            )
                .prop_map(move |(angles, radii)| {
                    let mut angles: Vec<f64> = angles
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (i as f64 + 0.1 + a * 0.8) / n as f64 * std::f64::consts::TAU)
                        .collect();
                    angles.sort_by(f64::total_cmp);
                    angles
                        .iter()
                        .zip(&radii)
                        .map(|(a, r)| {
                            let r = if convex { 0.01 } else { r * 0.01 };
                            (lat + r * a.sin(), lon + r * a.cos())
                        })
                        .collect()
                })
        },
    )
}

proptest! {
    #[test]
    fn point_in_polygon_agrees_with_the_winding_number(
        corners in star(),
        (u, v) in (-1.2f64..1.2, -1.2f64..1.2),
    ) {
        let (lat0, lon0) = corners.iter().fold((0.0, 0.0), |s, c| (s.0 + c.0, s.1 + c.1));
        let n = corners.len() as f64;
        let (lat, lon) = (lat0 / n + u * 0.01, lon0 / n + v * 0.01);
        let near_edge = (0..corners.len())
            .any(|i| point_segment((lat, lon), corners[i], corners[(i + 1) % corners.len()]) < 1e-9);
        prop_assume!(!near_edge);
        prop_assert_eq!(point_in_polygon(&corners, lat, lon), winding_inside(&corners, lat, lon));
        // And the checked zone takes the polygon.
        let points: Vec<[f64; 2]> = corners.iter().map(|c| [c.0, c.1]).collect();
        let shape = Shape::from_config(&polygon("p", &points));
        prop_assert!(shape.is_ok(), "{:?}", shape);
        prop_assert_eq!(shape.unwrap().contains(lat, lon), winding_inside(&corners, lat, lon));
    }

    #[test]
    fn trips_are_never_negative_impossible_or_overlapping(
        steps in proptest::collection::vec(
            (
                0i64..600,              // vehicle time step, s
                (0i64..8).prop_map(|k| if k == 0 { 120 } else { 0 }), // late by, s
                0i64..900,              // bridge time step, s
                prop_oneof![Just(None), (0.0f64..0.2, 0.0f64..0.2).prop_map(Some)],
                prop_oneof![Just(None), (0.0f64..200.0).prop_map(Some)],
                any::<bool>(),          // engine
                prop_oneof![Just(None), (0.0f64..50.0).prop_map(Some)],
                0u8..4,                 // tick (0) or report
            ),
            1..120,
        ),
        restart_at in 0usize..120,
    ) {
        let s = settings(|_| {});
        let mut d = Deriver::new(Arc::clone(&s));
        let (mut at, mut now) = (0i64, 0i64);
        let mut out = Vec::new();
        for (i, (dt, late, dn, p, speed, engine, odo, kind)) in steps.into_iter().enumerate() {
            at += dt;
            now += dn;
            let at = at - late;
            if i == restart_at {
                let saved = serde_json::to_string(&d.save()).unwrap();
                d = Deriver::restore(Arc::clone(&s), serde_json::from_str(&saved).unwrap());
            }
            if kind == 0 {
                out.push(d.tick(t(now as f64)));
                continue;
            }
            let mut st = state(p.map(|(a, b)| (START.0 + a, START.1 + b)), speed);
            st.set(Field::EngineRunning, engine);
            if let Some(o) = odo {
                st.set_f64(Field::Odometer, 1000.0 + o + at as f64 / 100.0);
            }
            out.push(d.report(t(at as f64), t(now as f64), &st));
        }
        let trips = trips(&out);
        for trip in &trips {
            prop_assert!(trip.duration_s >= 0 && trip.distance_km >= 0.0, "{:?}", trip);
            prop_assert!(trip.avg_speed_kmh <= MAX_SPEED_KMH + 0.1, "{:?}", trip);
            prop_assert!(trip.end >= trip.start);
            prop_assert!(trip.path.len() <= 500);
        }
        for pair in trips.windows(2) {
            prop_assert!(pair[1].start >= pair[0].end, "{:?}", pair);
        }
        // `moving` and `stopped` alternate, starting with `moving`; every trip is
        // one of those episodes.
        let mut on_the_way = false;
        let mut episodes = 0;
        for e in out.iter().flat_map(|d| &d.events) {
            match e.event_type.as_str() {
                "moving" => {
                    prop_assert!(!on_the_way);
                    on_the_way = true;
                    episodes += 1;
                }
                "stopped" => {
                    prop_assert!(on_the_way);
                    on_the_way = false;
                }
                _ => {}
            }
        }
        prop_assert!(trips.len() <= episodes);
    }
}

#[test]
fn a_long_trip_keeps_at_most_500_points_and_a_standing_vehicle_no_heap() {
    let mut d = Deriver::new(settings(|_| {}));
    let st = state(Some(START), Some(0.0));
    d.report(t(-20.0), t(-20.0), &st);
    assert_eq!(d.size_bytes(), std::mem::size_of::<Deriver>());
    let out = run(
        &mut d,
        &route(200_000.0, 100.0, 1.0, 10.0, 3.0),
        0.0,
        1.0,
        600.0,
    );
    let trip = &trips(&out)[0];
    assert!(
        trip.path.len() <= 500 && trip.path.len() >= 250,
        "{}",
        trip.path.len()
    );
    let last = trip.path.last().unwrap();
    assert!((last[0] - trip.end_latitude.unwrap()).abs() < 1e-4);
    assert!((last[1] - trip.end_longitude.unwrap()).abs() < 1e-4);
    assert_eq!(d.size_bytes(), std::mem::size_of::<Deriver>());
}

#[test]
fn a_tracker_first_seen_driving_counts_its_first_and_last_legs() {
    // No standing before: the first report is already at 90 km/h, then 49.9 m every 2 s
    // (each leg just under the 50 m jitter, counted in pairs), 21 legs, then it stands:
    // the last leg, under the jitter, is counted too.
    let s = settings(|_| {});
    let mut reports: Vec<(f64, VehicleState)> = (0..=21)
        .map(|i| {
            (
                2.0 * i as f64,
                state(Some(north(49.9 * i as f64)), Some(90.0)),
            )
        })
        .collect();
    let end = north(49.9 * 21.0);
    reports.extend((22..=24).map(|i| (2.0 * i as f64, state(Some(end), Some(0.0)))));
    let out = run(&mut Deriver::new(s), &reports, 0.0, 2.0, 600.0);
    let trips = trips(&out);
    assert_eq!(trips.len(), 1);
    let length_km = 49.9 * 21.0 / 1000.0;
    assert!(
        (trips[0].distance_km - length_km).abs() < 0.002,
        "{:?}",
        trips[0]
    );
    assert_eq!(trips[0].duration_s, 42);
}
