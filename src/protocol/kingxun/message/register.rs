//! 1001 registration and its answer.

use crate::protocol::kingxun::wire::{BodyError, LocalTime, Reader, Writer};

/// 1001 request: device registration (plain).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Register {
    pub time: LocalTime,
    /// Device hw, device sw, motor-controller hw, sw, dashboard hw, sw.
    pub versions: [u32; 6],
    /// How many of `versions` the body carried: 6 today, 4 (a 23-byte body) from firmware
    /// before October 2024, fewer from anything else kxSvr accepts.
    pub version_count: usize,
}

impl Register {
    /// The full 31-byte body.
    pub fn decode(b: &[u8]) -> Result<Register, BodyError> {
        let reg = Register::decode_lenient(b);
        if reg.version_count < 6 {
            return Err(BodyError::Length {
                what: "1001",
                expected: 31,
                found: b.len(),
            });
        }
        Ok(reg)
    }

    /// As much as the body carries. kxSvr answers every 1001 without reading its body
    /// (KxLogicSys.cc `DevRegMsgCallBack`), so neither may the bridge refuse one for it.
    pub fn decode_lenient(b: &[u8]) -> Register {
        let mut r = Reader::new(b);
        let time = LocalTime::read(&mut r).unwrap_or_default();
        let mut versions = [0u32; 6];
        let mut version_count = 0;
        for v in &mut versions {
            match r.u32("version") {
                Ok(x) => {
                    *v = x;
                    version_count += 1;
                }
                Err(_) => break,
            }
        }
        Register {
            time,
            versions,
            version_count,
        }
    }

    /// The device's software version, when the body carried it.
    pub fn software_version(&self) -> Option<u32> {
        (self.version_count >= 2).then_some(self.versions[1])
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.time.write(&mut w);
        for v in self.versions.iter().take(self.version_count) {
            w.u32(*v);
        }
        w.into_vec()
    }
}

/// 1001 response body (RespCode 0): the session id and the IV for AES.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterAck {
    pub session_id: u32,
    pub iv: [u8; 16],
}

impl RegisterAck {
    pub fn decode(b: &[u8]) -> Result<RegisterAck, BodyError> {
        let mut r = Reader::new(b);
        Ok(RegisterAck {
            session_id: r.u32("session_id")?,
            iv: r.bytes16("iv")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.session_id).bytes(&self.iv);
        w.into_vec()
    }
}
