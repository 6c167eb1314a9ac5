//! 1005 range query and its answer.

use crate::protocol::kingxun::wire::{BodyError, Reader, Writer};

/// 1005 request: how far does this battery go?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    pub dev_type: u8,
    pub battery_id: String,
    pub soc: u8,
    pub voltage_cv: u16,
}

impl RangeQuery {
    pub fn decode(b: &[u8]) -> Result<RangeQuery, BodyError> {
        let mut r = Reader::new(b);
        Ok(RangeQuery {
            dev_type: r.u8("dev_type")?,
            battery_id: r.fixed_str(32, "battery_id")?,
            soc: r.u8("soc")?,
            voltage_cv: r.u16("voltage")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.dev_type)
            .fixed_str(&self.battery_id, 32)
            .u8(self.soc)
            .u16(self.voltage_cv);
        w.into_vec()
    }
}

/// 1005 response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeAnswer {
    pub max_range_m: u32,
    pub charge_notify_soc: u8,
    pub soc_min: u8,
}

impl RangeAnswer {
    pub fn decode(b: &[u8]) -> Result<RangeAnswer, BodyError> {
        let mut r = Reader::new(b);
        Ok(RangeAnswer {
            max_range_m: r.u32("max_range")?,
            charge_notify_soc: r.u8("notify_soc")?,
            soc_min: r.u8("soc_min")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.max_range_m)
            .u8(self.charge_notify_soc)
            .u8(self.soc_min);
        w.into_vec()
    }
}
