//! EXLIVE JSON over TCP (docs/protocols/exlive.md): every message is
//! `{"header":{"cmd":"NNNN"},"body":{...}}` with string values. `session`: a link as
//! the server sees it, sans-IO; `client_session`: the client role's link to a platform,
//! sans-IO.

pub mod client_session;
mod message;
pub mod session;
mod splitter;

pub use message::*;
pub use splitter::{Frame, SplitError, Splitter, DEFAULT_MAX_OBJECT};
