//! kingxun device and server protocol (seed 001, PROTOCOLS.md §4).
//!
//! `frame`: the 15-byte common header (little-endian, CRC-16/XMODEM over its first 13
//! bytes) plus the request (`DevId`, `SessionId`) or response (`RespCode`) tail.
//! `codec`: a tokio-util Decoder/Encoder that finds frames in a byte stream.
//! `crypto`: AES-128-CBC bodies with their plain length and CRC trailer.
//! `message`: typed bodies for every message the bridge uses.

pub mod codec;
pub mod crypto;
pub mod frame;
pub mod message;

pub use codec::{Decoded, KxCodec, DEFAULT_MAX_BODY};
pub use frame::{crc16, Frame, Header, HeaderError, Kind, COMMON_LEN, REQUEST_LEN, RESPONSE_LEN};
pub use message::*;
