//! The derivation stage alone (issue #26: "deriving adds <= 10 % CPU and <= 8 MiB"):
//! 10 000 vehicles, each reporting every second along its own route through 100 zones
//! (circles and polygons), one minute of reports, then standing until their trips end.
//! Prints the time per report and the derivers' size; with `kingxun_e2e`'s bridge CPU
//! for the same load this gives the stage's share.
//!
//! Run: `cargo bench --bench derive`.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use vehicle2mqtt::derive::{DeriveConfig, Deriver, Settings, ZoneConfig};
use vehicle2mqtt::model::{Field, Position, VehicleState};

const VEHICLES: usize = 10_000;
const SECONDS: i64 = 60;

fn state(lat: f64, lon: f64, kmh: f64, odometer: f64, soc: f64) -> VehicleState {
    let mut st = VehicleState {
        position: Some(Position {
            latitude: lat,
            longitude: lon,
            gps_accuracy: None,
        }),
        ..Default::default()
    };
    st.set_f64(Field::Speed, kmh);
    st.set(Field::Driving, kmh > 1.0);
    st.set_f64(Field::Odometer, odometer);
    st.set_f64(Field::BatteryLevel, soc);
    st
}

fn main() {
    // `cargo test --all-targets` runs benches too: the figure is a release build's.
    if !std::env::args().any(|a| a == "--bench") {
        println!("derive: skipped (run with `cargo bench --bench derive`)");
        return;
    }
    let mut config = DeriveConfig::default();
    config.events.overspeed_kmh = Some(50.0);
    config.events.low_battery_percent = Some(15.0);
    config.zones = (0..100)
        .map(|i| {
            let (lat, lon) = (
                31.0 + (i / 10) as f64 * 0.05,
                121.0 + (i % 10) as f64 * 0.05,
            );
            match i % 2 {
                0 => ZoneConfig {
                    name: format!("circle{i}"),
                    latitude: Some(lat),
                    longitude: Some(lon),
                    radius_m: Some(300.0),
                    polygon: None,
                },
                _ => ZoneConfig {
                    name: format!("square{i}"),
                    latitude: None,
                    longitude: None,
                    radius_m: None,
                    polygon: Some(vec![
                        [lat, lon],
                        [lat + 0.004, lon],
                        [lat + 0.004, lon + 0.004],
                        [lat, lon + 0.004],
                    ]),
                },
            }
        })
        .collect();
    let settings = Arc::new(Settings::new(&config).expect("valid bench settings"));
    let mut derivers: Vec<Deriver> = (0..VEHICLES)
        .map(|_| Deriver::new(settings.clone()))
        .collect();
    let t0: DateTime<Utc> = Utc::now();
    let mut reports = 0u64;
    let mut events = 0usize;
    let started = Instant::now();
    // A minute of driving at 36-54 km/h (10-15 m a second), north-east, then 5 minutes
    // standing (a report a second), ticking every second as the hub does.
    for second in 0..SECONDS * 6 {
        let now = t0 + Duration::seconds(second);
        let driving = second < SECONDS;
        for (i, d) in derivers.iter_mut().enumerate() {
            let kmh = if driving { 36.0 + (i % 19) as f64 } else { 0.0 };
            let metres = (second.min(SECONDS) as f64) * (kmh.max(36.0) / 3.6);
            let (lat, lon) = (
                31.0 + (i % 100) as f64 * 0.004 + metres / 111_195.0,
                121.0 + (i / 100) as f64 * 0.004 + metres / 95_000.0,
            );
            let out = d.report(
                now,
                now,
                &state(lat, lon, kmh, 1000.0 + metres / 1000.0, 80.0),
            );
            events += out.events.len();
            reports += 1;
        }
        for d in derivers.iter_mut() {
            events += d.tick(now).events.len();
        }
    }
    let elapsed = started.elapsed();
    let bytes: usize = derivers.iter().map(Deriver::size_bytes).sum();
    println!(
        "derive: {VEHICLES} vehicles, {} zones, {reports} reports (+ as many ticks) in {:.2} s: {:.2} µs a report with its tick, {events} events; derivers {} KiB ({} B a vehicle)",
        config.zones.len(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / reports as f64,
        bytes / 1024,
        bytes / VEHICLES,
    );
    println!(
        "at 10 000 reports a second: {:.1} % of one core",
        elapsed.as_secs_f64() / reports as f64 * 10_000.0 * 100.0
    );
}
