//! 1010 charge finished.

use crate::protocol::kingxun::wire::{BodyError, LocalTime, Reader, Writer};

/// 1010: charging finished (encrypted).
///
/// DECISION: start time, lng/lat f64, end time, max current u16 (A × 100),
/// soc begin u8, soc end u8, voltage begin u16 (V × 100), voltage end u16 (V × 100).
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeDone {
    pub start: LocalTime,
    pub lng: f64,
    pub lat: f64,
    pub end: LocalTime,
    pub max_current_ca: u16,
    pub soc_begin: u8,
    pub soc_end: u8,
    pub voltage_begin_cv: u16,
    pub voltage_end_cv: u16,
}

impl ChargeDone {
    pub fn decode(b: &[u8]) -> Result<ChargeDone, BodyError> {
        let mut r = Reader::new(b);
        let c = ChargeDone {
            start: LocalTime::read_valid(&mut r, "1010 start time")?,
            lng: r.f64("lng")?,
            lat: r.f64("lat")?,
            end: LocalTime::read_valid(&mut r, "1010 end time")?,
            max_current_ca: r.u16("max_current")?,
            soc_begin: r.u8("soc_begin")?,
            soc_end: r.u8("soc_end")?,
            voltage_begin_cv: r.u16("voltage_begin")?,
            voltage_end_cv: r.u16("voltage_end")?,
        };
        r.finish("1010")?;
        Ok(c)
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.start.write(&mut w);
        w.f64(self.lng).f64(self.lat);
        self.end.write(&mut w);
        w.u16(self.max_current_ca)
            .u8(self.soc_begin)
            .u8(self.soc_end)
            .u16(self.voltage_begin_cv)
            .u16(self.voltage_end_cv);
        w.into_vec()
    }
}
