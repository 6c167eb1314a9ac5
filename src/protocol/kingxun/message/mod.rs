//! Typed message bodies (plain bytes, after decryption). All integers little-endian.
//!
//! Layouts follow the kxSvr device document (docs/protocols/kingxun.md, one section per
//! message). Where it gives a field without a size, the size chosen here is marked DECISION.

//!
//! One file per message, as rumqttc keeps one per packet.

mod charge;
mod events;
mod range;
mod register;
mod status;
mod traffic;
mod trip;

pub use charge::*;
pub use events::*;
pub use range::*;
pub use register::*;
pub use status::*;
pub use traffic::*;
pub use trip::*;

pub mod id {
    pub const REGISTER: u16 = 1001;
    pub const STATUS: u16 = 1002;
    pub const TRAFFIC: u16 = 1004;
    pub const RANGE: u16 = 1005;
    pub const TRIP: u16 = 1008;
    pub const CHARGE_DONE: u16 = 1010;
    pub const EVENTS: u16 = 1012;
    pub const UNLOCK: u16 = 2001;
    pub const LOCK: u16 = 2002;
    pub const GUARD: u16 = 2003;
    pub const OPEN_LOCK: u16 = 2004;
    pub const LIGHTS: u16 = 2005;
    pub const APP_UNLOCK: u16 = 4001;
    pub const APP_LOCK: u16 = 4002;
    pub const APP_GUARD: u16 = 4003;
    pub const APP_OPEN_LOCK: u16 = 4004;
    pub const APP_LIGHTS: u16 = 4005;
    pub const WEB_CONNECT: u16 = 9001;
    pub const WEB_HEARTBEAT: u16 = 9002;
}

/// RespCode meanings.
pub fn resp_code_text(code: u32) -> &'static str {
    match code {
        0 => "ok",
        1 => "rejected",
        2 => "redirect",
        3 => "device offline",
        4 => "bad device id",
        5 => "send to device failed",
        6 => "bad parameter",
        0xFF => "error",
        _ => "unknown error",
    }
}
