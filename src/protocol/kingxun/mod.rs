//! kingxun device and server protocol (docs/protocols/kingxun.md).
//!
//! `frame`: the 15-byte common header (little-endian, CRC-16/XMODEM over its first 13
//! bytes) plus the request (`DevId`, `SessionId`) or response (`RespCode`) tail.
//! `codec`: a tokio-util Decoder/Encoder that finds frames in a byte stream.
//! `crypto`: AES-128-CBC bodies with their plain length and CRC trailer.
//! `wire`: bounds-checked little-endian reading and writing, device local time.
//! `message`: device → server bodies (1001–1012). `control`: 2001–2005 and 4001–4005,
//! with the device profiles that settle the published layouts' forks. `web`: 9001/9002.
//! `session`: a device link, sans-IO; `web_session`: the web-server role's link to a
//! kingxun server, sans-IO.

pub mod codec;
pub mod control;
pub mod crypto;
pub mod frame;
pub mod message;
pub mod session;
pub mod web;
pub mod web_session;
pub mod wire;

pub use codec::{Decoded, KxCodec, DEFAULT_MAX_BODY, DEFAULT_MAX_TRIP_BODY};
pub use control::*;
pub use frame::{crc16, Frame, Header, HeaderError, Kind, COMMON_LEN, REQUEST_LEN, RESPONSE_LEN};
pub use message::*;
pub use web::*;
pub use wire::*;
