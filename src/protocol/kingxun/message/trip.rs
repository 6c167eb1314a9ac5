//! 1008 trip.

use crate::protocol::kingxun::wire::{BodyError, LocalTime, Reader, Writer};

/// 1008: a finished trip (encrypted).
///
/// DECISION (docs/protocols/kingxun.md, "1008 trip", lists the fields, sizes from the
/// device doc):
/// start time, start lng/lat f64, end time, end lng/lat f64, distance u32 (m),
/// soc begin u8, soc end u8, max speed u16 (mm/s), avg speed u16 (mm/s),
/// max current u16 (A × 100), battery id [32], point count u32, points (lng, lat f64).
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub start: LocalTime,
    pub start_lng: f64,
    pub start_lat: f64,
    pub end: LocalTime,
    pub end_lng: f64,
    pub end_lat: f64,
    pub distance_m: u32,
    pub soc_begin: u8,
    pub soc_end: u8,
    pub max_speed: u16,
    pub avg_speed: u16,
    pub max_current_ca: u16,
    pub battery_id: String,
    pub points: Vec<(f64, f64)>,
}

impl Trip {
    pub fn decode(b: &[u8]) -> Result<Trip, BodyError> {
        let mut r = Reader::new(b);
        let start = LocalTime::read_valid(&mut r, "1008 start time")?;
        let (start_lng, start_lat) = (r.f64("start_lng")?, r.f64("start_lat")?);
        let end = LocalTime::read_valid(&mut r, "1008 end time")?;
        let (end_lng, end_lat) = (r.f64("end_lng")?, r.f64("end_lat")?);
        let distance_m = r.u32("distance")?;
        let soc_begin = r.u8("soc_begin")?;
        let soc_end = r.u8("soc_end")?;
        let max_speed = r.u16("max_speed")?;
        let avg_speed = r.u16("avg_speed")?;
        let max_current_ca = r.u16("max_current")?;
        let battery_id = r.fixed_str(32, "battery_id")?;
        let count = r.u32("point_count")? as usize;
        // Check before allocating: the count comes from outside, and it must account for
        // every byte that follows.
        if count.saturating_mul(16) != r.remaining() {
            return Err(BodyError::Length {
                what: "1008 points",
                expected: r.position().saturating_add(count.saturating_mul(16)),
                found: b.len(),
            });
        }
        let mut points = Vec::with_capacity(count);
        for _ in 0..count {
            points.push((r.f64("point_lng")?, r.f64("point_lat")?));
        }
        Ok(Trip {
            start,
            start_lng,
            start_lat,
            end,
            end_lng,
            end_lat,
            distance_m,
            soc_begin,
            soc_end,
            max_speed,
            avg_speed,
            max_current_ca,
            battery_id,
            points,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.start.write(&mut w);
        w.f64(self.start_lng).f64(self.start_lat);
        self.end.write(&mut w);
        w.f64(self.end_lng)
            .f64(self.end_lat)
            .u32(self.distance_m)
            .u8(self.soc_begin)
            .u8(self.soc_end);
        w.u16(self.max_speed)
            .u16(self.avg_speed)
            .u16(self.max_current_ca)
            .fixed_str(&self.battery_id, 32);
        w.u32(self.points.len() as u32);
        for (lng, lat) in &self.points {
            w.f64(*lng).f64(*lat);
        }
        w.into_vec()
    }
}
