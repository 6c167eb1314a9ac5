//! Pure, sans-IO codecs: bytes in, typed messages out, and back. No sockets, no clock,
//! no logging. One module per upstream protocol.

pub mod exlive;
pub mod iauto360;
pub mod json;
pub mod kingxun;
pub mod proxy_v2;
pub mod xchanger;
