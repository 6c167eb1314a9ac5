//! EXLIVE JSON over TCP (docs/protocols/exlive.md): every message is
//! `{"header":{"cmd":"NNNN"},"body":{...}}` with string values.

mod message;
pub mod session;
mod splitter;

pub use message::*;
pub use splitter::{Frame, SplitError, Splitter, DEFAULT_MAX_OBJECT};
