//! Simulated devices and upstreams, for `vehicle2mqtt simulate`, the tests and benches.

pub mod exlive;
pub mod iauto360;
pub mod kingxun;
pub mod kxsvr;
pub mod xchanger;

/// A point on a circular route of `radius_m` around (lat, lng), `step` of `steps`.
pub fn route_point(lat: f64, lng: f64, radius_m: f64, step: u64, steps: u64) -> (f64, f64, f64) {
    let angle = (step % steps.max(1)) as f64 / steps.max(1) as f64 * std::f64::consts::TAU;
    let dlat = radius_m * angle.cos() / 111_320.0;
    let dlng = radius_m * angle.sin() / (111_320.0 * lat.to_radians().cos());
    let heading = (angle.to_degrees() + 90.0) % 360.0;
    (lat + dlat, lng + dlng, heading)
}
