//! Web-server messages: 9001 connect and 9002 heartbeat.

use super::wire::{BodyError, Reader, Writer};

/// 9001 request: `time u64 | host, NUL-terminated` (encrypted with the initial key/IV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConnect {
    pub time: u64,
    pub host: String,
}

impl WebConnect {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.time).bytes(self.host.as_bytes()).u8(0);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebConnect, BodyError> {
        let mut r = Reader::new(b);
        let time = r.u64("time")?;
        Ok(WebConnect {
            time,
            host: r.c_str(),
        })
    }
}

/// 9001 response body: `sessionId u32 | newIV [16] | time u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConnectAck {
    pub session_id: u32,
    pub iv: [u8; 16],
    pub time: u64,
}

impl WebConnectAck {
    /// Plain length: `KxWebSvrRegRespPacketBody_OriginMsg` (KxMsgDef.h).
    pub const LEN: usize = 28;

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.session_id).bytes(&self.iv).u64(self.time);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebConnectAck, BodyError> {
        let mut r = Reader::new(b);
        Ok(WebConnectAck {
            session_id: r.u32("session_id")?,
            iv: r.bytes16("iv")?,
            time: r.u64("time")?,
        })
    }
}

/// 9002 request (plain): `time u64 | host [32]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebHeartbeat {
    pub time: u64,
    pub host: String,
}

impl WebHeartbeat {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.time).fixed_str(&self.host, 32);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebHeartbeat, BodyError> {
        let mut r = Reader::new(b);
        Ok(WebHeartbeat {
            time: r.u64("time")?,
            host: r.fixed_str(32, "host")?,
        })
    }
}

/// 9002 response body: `totalDevCount u32 | svrStartTime u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebHeartbeatAck {
    pub total_devices: u32,
    pub start_time: u64,
}

impl WebHeartbeatAck {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.total_devices).u64(self.start_time);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebHeartbeatAck, BodyError> {
        let mut r = Reader::new(b);
        Ok(WebHeartbeatAck {
            total_devices: r.u32("total")?,
            start_time: r.u64("start_time")?,
        })
    }
}
