//! 1004 data used.

use crate::protocol::kingxun::wire::{BodyError, Reader, Writer};

/// 1004: data used this month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    pub dev_type: u8,
    pub protocol: u8,
    pub used_kib: u32,
}

impl Traffic {
    pub fn decode(b: &[u8]) -> Result<Traffic, BodyError> {
        let mut r = Reader::new(b);
        let t = Traffic {
            dev_type: r.u8("dev_type")?,
            protocol: r.u8("protocol")?,
            used_kib: r.u32("used")?,
        };
        r.finish("1004")?;
        Ok(t)
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.dev_type).u8(self.protocol).u32(self.used_kib);
        w.into_vec()
    }
}
