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
