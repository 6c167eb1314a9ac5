//! Helpers shared by the simulators (each upstream's lives in `connectors/<name>/sim.rs`).

/// A point on a circular route of `radius_m` around (lat, lng), `step` of `steps`.
pub fn route_point(lat: f64, lng: f64, radius_m: f64, step: u64, steps: u64) -> (f64, f64, f64) {
    let angle = (step % steps.max(1)) as f64 / steps.max(1) as f64 * std::f64::consts::TAU;
    let dlat = radius_m * angle.cos() / 111_320.0;
    let dlng = radius_m * angle.sin() / (111_320.0 * lat.to_radians().cos());
    let heading = (angle.to_degrees() + 90.0) % 360.0;
    (lat + dlat, lng + dlng, heading)
}

/// Nanoseconds since the Unix epoch, stamped into simulated reports to measure latency.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// 127.0.0.1 at the port of an `http://host:port` URL.
pub fn local_port(url: &str) -> Option<std::net::SocketAddr> {
    let port = url.rsplit(':').next()?.parse::<u16>().ok()?;
    Some(([127, 0, 0, 1], port).into())
}

/// How `simulate` ends: fine when asked to stop; otherwise every simulated link or device
/// ended on its own, and the first reason says why.
pub fn ended(
    shutdown: &tokio_util::sync::CancellationToken,
    first_error: &FirstError,
    what: &str,
) -> Result<(), String> {
    if shutdown.is_cancelled() {
        return Ok(());
    }
    let first = first_error.get();
    Err(format!(
        "every {what} stopped: {}",
        first.unwrap_or_else(|| "no reason given".into())
    ))
}

/// Waits (≤ 5 s) until something listens on `addr`; `false` when it never did or on
/// `shutdown`. For simulated devices that link to one of the bridge's listeners.
pub async fn wait_for(
    addr: std::net::SocketAddr,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    for _ in 0..200 {
        if shutdown.is_cancelled() {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    false
}

/// Why the first simulated link or device that failed ended, for the exit message.
#[derive(Debug, Default)]
pub struct FirstError(std::sync::Mutex<Option<String>>);

impl FirstError {
    /// Keeps `err` when it is the first.
    pub fn note(&self, err: &anyhow::Error) {
        if let Ok(mut first) = self.0.lock() {
            first.get_or_insert_with(|| format!("{err:#}"));
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|e| e.clone())
    }
}

/// `simulate` of a fake cloud: says where it listens, then serves until `shutdown`.
pub async fn serve_fake<T>(
    what: &str,
    listen: std::net::SocketAddr,
    started: anyhow::Result<T>,
    url: impl Fn(&T) -> String,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    match started {
        Ok(fake) => {
            tracing::info!(url = %url(&fake), "{what} listening");
            shutdown.cancelled().await;
            Ok(())
        }
        Err(e) => Err(format!("cannot start the {what} on {listen}: {e:#}")),
    }
}

/// A route a simulated vehicle drives (`simulate exlive|kingxun --route FILE --speed KMH`):
/// WGS-84 points, from a GeoJSON LineString (`[longitude, latitude]` pairs, as GeoJSON
/// orders them; a bare geometry, a Feature or the first LineString of a
/// FeatureCollection) or a plain JSON list of `[latitude, longitude]` pairs.
#[derive(Debug, Clone)]
pub struct Route {
    /// (latitude, longitude).
    points: Vec<(f64, f64)>,
    /// Metres from the start to each point.
    along: Vec<f64>,
}

/// Points a route may have: a day's drive at one fix a second.
const ROUTE_MAX_POINTS: usize = 100_000;

/// Metres between two WGS-84 points (haversine, mean Earth radius).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let (dla, dlo) = ((b.0 - a.0).to_radians(), (b.1 - a.1).to_radians());
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().asin()
}

/// Degrees clockwise from north, from `a` towards `b`.
fn bearing(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let dlo = (b.1 - a.1).to_radians();
    let y = dlo.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlo.cos();
    (y.atan2(x).to_degrees() + 360.0) % 360.0
}

impl Route {
    pub fn parse(text: &str) -> Result<Route, String> {
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let pair = |p: &serde_json::Value| -> Option<(f64, f64)> {
            let p = p.as_array()?;
            Some((p.first()?.as_f64()?, p.get(1)?.as_f64()?))
        };
        let points: Option<Vec<(f64, f64)>> = match &doc {
            serde_json::Value::Array(list) => list.iter().map(pair).collect(),
            _ => {
                let geometry = match doc["type"].as_str() {
                    Some("FeatureCollection") => doc["features"]
                        .as_array()
                        .and_then(|f| f.iter().find(|f| f["geometry"]["type"] == "LineString"))
                        .map(|f| &f["geometry"]),
                    Some("Feature") => Some(&doc["geometry"]),
                    _ => Some(&doc),
                };
                let geometry = geometry
                    .filter(|g| g["type"] == "LineString")
                    .ok_or("no GeoJSON LineString")?;
                geometry["coordinates"]
                    .as_array()
                    .ok_or("a LineString without coordinates")?
                    .iter()
                    // GeoJSON is [longitude, latitude].
                    .map(|p| pair(p).map(|(lng, lat)| (lat, lng)))
                    .collect()
            }
        };
        let points = points.ok_or("every point is a pair of numbers")?;
        if points.len() < 2 || points.len() > ROUTE_MAX_POINTS {
            return Err(format!("a route has 2 to {ROUTE_MAX_POINTS} points"));
        }
        if points
            .iter()
            .any(|(lat, lng)| !(-90.0..=90.0).contains(lat) || !(-180.0..=180.0).contains(lng))
        {
            return Err("a point is out of range (latitude ±90, longitude ±180)".into());
        }
        let mut along = vec![0.0];
        for w in points.windows(2) {
            let last = along.last().copied().unwrap_or_default();
            along.push(last + distance_m(w[0], w[1]));
        }
        Ok(Route { points, along })
    }

    pub fn load(path: &std::path::Path) -> Result<Route, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Route::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn length_m(&self) -> f64 {
        self.along.last().copied().unwrap_or_default()
    }

    /// Where `metres` along the route lies (clamped to its ends), and the heading there.
    pub fn at(&self, metres: f64) -> (f64, f64, f64) {
        let m = metres.clamp(0.0, self.length_m());
        let i = self
            .along
            .partition_point(|d| *d <= m)
            .clamp(1, self.points.len() - 1);
        let (a, b) = (self.points[i - 1], self.points[i]);
        let span = self.along[i] - self.along[i - 1];
        let f = if span > 0.0 {
            (m - self.along[i - 1]) / span
        } else {
            0.0
        };
        (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f, bearing(a, b))
    }
}

/// Driving a route at a steady speed, then standing at its end (charging for
/// `charge_for` when asked).
#[derive(Debug, Clone)]
pub struct Drive {
    pub route: Route,
    pub speed_kmh: f64,
    pub charge_for: Option<std::time::Duration>,
}

/// Where a driven vehicle is `elapsed` after it set off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriveState {
    pub latitude: f64,
    pub longitude: f64,
    pub heading: f64,
    pub speed_kmh: f64,
    pub moving: bool,
    /// Metres driven so far (for the odometer).
    pub driven_m: f64,
    pub charging: bool,
}

impl Drive {
    /// How long the drive takes.
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.route.length_m() / (self.speed_kmh / 3.6))
    }

    pub fn at(&self, elapsed: std::time::Duration) -> DriveState {
        let driven = (elapsed.as_secs_f64() * self.speed_kmh / 3.6).min(self.route.length_m());
        let moving = driven < self.route.length_m();
        let (latitude, longitude, heading) = self.route.at(driven);
        let parked_for = elapsed.saturating_sub(self.duration());
        DriveState {
            latitude,
            longitude,
            heading,
            speed_kmh: if moving { self.speed_kmh } else { 0.0 },
            moving,
            driven_m: driven,
            charging: !moving && self.charge_for.is_some_and(|c| parked_for < c),
        }
    }
}

/// The `--route` / `--speed` / `--charge` of a simulator.
pub fn drive_from_args(
    route: Option<&std::path::Path>,
    speed_kmh: f64,
    charge_for: Option<std::time::Duration>,
) -> Result<Option<std::sync::Arc<Drive>>, String> {
    let Some(path) = route else {
        return Ok(None);
    };
    if !(1.0..=250.0).contains(&speed_kmh) {
        return Err("--speed is 1 to 250 km/h".into());
    }
    Ok(Some(std::sync::Arc::new(Drive {
        route: Route::load(path)?,
        speed_kmh,
        charge_for,
    })))
}

#[cfg(test)]
mod route_tests {
    use super::*;
    use std::time::Duration;

    /// About 1.11 km north, then 1 km east at the equator's scale of that latitude.
    const GEOJSON: &str = r#"{"type": "Feature", "properties": {}, "geometry":
        {"type": "LineString", "coordinates": [[121.0, 31.0], [121.0, 31.01], [121.0105, 31.01]]}}"#;

    #[test]
    fn routes_from_geojson_or_a_point_list_measure_alike() {
        let g = Route::parse(GEOJSON).unwrap();
        let l = Route::parse("[[31.0, 121.0], [31.01, 121.0], [31.01, 121.0105]]").unwrap();
        assert!((g.length_m() - l.length_m()).abs() < 1e-6);
        // 0.01° of latitude is 1 111.95 m; 0.0105° of longitude at 31.01° is 1 000.6 m.
        assert!((g.length_m() - 2112.6).abs() < 1.0, "{}", g.length_m());
        let (lat, lng, heading) = g.at(500.0);
        assert!((lat - 31.0045).abs() < 1e-4 && lng == 121.0, "{lat} {lng}");
        assert!(heading.abs() < 1e-6, "north");
        let (_, _, east) = g.at(1500.0);
        assert!((east - 90.0).abs() < 0.1, "{east}");
        assert_eq!(g.at(1e9), g.at(g.length_m()), "clamped to the end");
        for bad in [
            "",
            "[]",
            "[[1, 2]]",
            "[[91, 0], [0, 0]]",
            r#"{"type": "Point", "coordinates": [0, 0]}"#,
            "[[0, \"a\"], [1, 1]]",
        ] {
            assert!(Route::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_drive_moves_at_its_speed_then_stands_and_charges() {
        let drive = Drive {
            route: Route::parse(GEOJSON).unwrap(),
            speed_kmh: 36.0,
            charge_for: Some(Duration::from_secs(600)),
        };
        // 10 m/s: 2 112.6 m take 211.3 s.
        assert_eq!(drive.duration().as_secs(), 211);
        let s = drive.at(Duration::from_secs(100));
        assert!(s.moving && s.speed_kmh == 36.0 && (s.driven_m - 1000.0).abs() < 1e-6);
        assert!(!s.charging);
        let end = drive.at(Duration::from_secs(300));
        assert!(!end.moving && end.speed_kmh == 0.0 && end.charging);
        assert!((end.driven_m - drive.route.length_m()).abs() < 1e-6);
        assert!(
            !drive.at(Duration::from_secs(1000)).charging,
            "charged for 10 minutes"
        );
    }
}
