//! GCJ-02 ("Mars coordinates", used by Chinese map services) → WGS-84.
//!
//! The forward transform is the published GCJ-02 offset formula (Krasovsky ellipsoid);
//! the inverse is found by fixed-point iteration, accurate to well under a metre.
//! Outside mainland China the two systems coincide.

use std::f64::consts::PI;

const A: f64 = 6_378_245.0;
const EE: f64 = 0.006_693_421_622_965_943;

pub fn outside_china(lat: f64, lng: f64) -> bool {
    !(72.004..=137.8347).contains(&lng) || !(0.8293..=55.8271).contains(&lat)
}

fn offsets(lat: f64, lng: f64) -> (f64, f64) {
    let (x, y) = (lng - 105.0, lat - 35.0);
    let common = (20.0 * (6.0 * x * PI).sin() + 20.0 * (2.0 * x * PI).sin()) * 2.0 / 3.0;
    let mut dlat =
        -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * x.abs().sqrt() + common;
    dlat += (20.0 * (y * PI).sin() + 40.0 * (y / 3.0 * PI).sin()) * 2.0 / 3.0;
    dlat += (160.0 * (y / 12.0 * PI).sin() + 320.0 * (y * PI / 30.0).sin()) * 2.0 / 3.0;
    let mut dlng = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * x.abs().sqrt() + common;
    dlng += (20.0 * (x * PI).sin() + 40.0 * (x / 3.0 * PI).sin()) * 2.0 / 3.0;
    dlng += (150.0 * (x / 12.0 * PI).sin() + 300.0 * (x / 30.0 * PI).sin()) * 2.0 / 3.0;
    let rad = lat / 180.0 * PI;
    let magic = 1.0 - EE * rad.sin() * rad.sin();
    let sqrt_magic = magic.sqrt();
    let dlat = (dlat * 180.0) / ((A * (1.0 - EE)) / (magic * sqrt_magic) * PI);
    let dlng = (dlng * 180.0) / (A / sqrt_magic * rad.cos() * PI);
    (dlat, dlng)
}

pub fn wgs84_to_gcj02(lat: f64, lng: f64) -> (f64, f64) {
    if outside_china(lat, lng) {
        return (lat, lng);
    }
    let (dlat, dlng) = offsets(lat, lng);
    (lat + dlat, lng + dlng)
}

pub fn gcj02_to_wgs84(lat: f64, lng: f64) -> (f64, f64) {
    if outside_china(lat, lng) {
        return (lat, lng);
    }
    let (mut wlat, mut wlng) = (lat, lng);
    for _ in 0..10 {
        let (glat, glng) = wgs84_to_gcj02(wlat, wlng);
        wlat -= glat - lat;
        wlng -= glng - lng;
    }
    (wlat, wlng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_offset_size() {
        for (lat, lng) in [
            (31.2304, 121.4737),
            (39.9087, 116.3975),
            (22.5431, 114.0579),
            (43.8256, 87.6168),
        ] {
            let (glat, glng) = wgs84_to_gcj02(lat, lng);
            // The offset in China is a few hundred metres.
            let shift_m =
                ((glat - lat) * 111_000.0).hypot((glng - lng) * 111_000.0 * lat.to_radians().cos());
            assert!(
                (50.0..1000.0).contains(&shift_m),
                "{lat},{lng}: {shift_m} m"
            );
            let (wlat, wlng) = gcj02_to_wgs84(glat, glng);
            assert!(
                (wlat - lat).abs() < 1e-7 && (wlng - lng).abs() < 1e-7,
                "{lat},{lng} -> {wlat},{wlng}"
            );
        }
    }

    /// The widely published reference pair (Beijing, 116.404 E 39.915 N), as the
    /// coordtransform libraries document it.
    #[test]
    fn known_reference_point() {
        let (glat, glng) = wgs84_to_gcj02(39.915, 116.404);
        assert!((glat - 39.916_404_281_501_64).abs() < 1e-9, "{glat}");
        assert!((glng - 116.410_244_499_169_38).abs() < 1e-9, "{glng}");
        let (wlat, wlng) = gcj02_to_wgs84(39.916_404_281_501_64, 116.410_244_499_169_38);
        assert!((wlat - 39.915).abs() < 1e-8 && (wlng - 116.404).abs() < 1e-8);
        // Those libraries invert in one step (about a metre off); ours iterates, and lands
        // within that metre of their published answer.
        let (wlat, wlng) = gcj02_to_wgs84(39.915, 116.404);
        assert!((wlat - 39.913_595_718_498_36).abs() < 1e-5, "{wlat}");
        assert!((wlng - 116.397_755_500_830_61).abs() < 1e-5, "{wlng}");
    }

    #[test]
    fn identity_outside_china() {
        assert_eq!(gcj02_to_wgs84(52.52, 13.405), (52.52, 13.405));
        assert_eq!(wgs84_to_gcj02(-33.86, 151.2), (-33.86, 151.2));
    }
}
