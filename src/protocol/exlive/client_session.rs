//! The client role's link to an EXLIVE platform, without I/O (beside `session.rs`, the
//! server's): bytes read and the clock go in; messages to send, messages to hand on, bad
//! input worth a counter and the reason to close come out. `connectors/exlive/client.rs`
//! connects, reads, writes and publishes.
//!
//! docs/protocols/exlive.md, "Login sequence": log in with 1000 and wait for its 8000
//! answer; then heartbeats (1002), groups (1008, answered by 1009s) and each group's
//! vehicles (1010, answered by 1011s), and the 1007 stream. "Framing": objects found by
//! the splitter, each within a size limit.

use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::{DecodeError, Frame, Message, SplitError, Splitter};

/// How long the login answer may take.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a link to the platform is, fixed for its life.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub name: String,
    pub pass: String,
    /// The `ver` our login carries.
    pub ver: String,
    pub heartbeat: Duration,
    /// Silence that ends the link once logged in (the platform streams positions).
    pub idle_limit: Duration,
    /// Largest object taken.
    pub max_message: usize,
    /// Malformed messages in a row that end the link.
    pub bad_in_a_row: u32,
}

/// Why the link ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no login answer within 30 s")]
    LoginTimeout,
    /// The login answer's result, which is not a success.
    #[error("login refused: {0}")]
    Refused(String),
    #[error("platform silent")]
    Silent,
    #[error("platform logged us out")]
    LoggedOut,
    #[error("platform closed the link")]
    Closed,
    /// The stream cannot be trusted past an object over the limit.
    #[error("object exceeds {max} bytes")]
    TooLarge { max: usize },
    #[error("{in_a_row} malformed messages in a row")]
    TooManyMalformed { in_a_row: u32 },
}

/// A message that could not be read (it costs only itself).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    #[error("{len} bytes without a closing brace")]
    Unclosed { len: usize },
}

/// What the session asks of its I/O loop, in order.
#[derive(Debug, PartialEq)]
pub enum ClientOutput {
    /// Write this, as a line (`line`).
    Send(Message),
    /// The platform took our login.
    LoggedIn,
    /// Hand the message on (positions, vehicles, pass-through data).
    Deliver(Message),
    /// A message dropped, and how many in a row so far (for counters and logs).
    Malformed { what: Malformed, in_a_row: u32 },
    /// The link ends; nothing more comes out of the session.
    Close(ClientError),
}

enum Phase {
    /// Login sent, its answer awaited until then.
    LoggingIn {
        until: Instant,
    },
    LoggedIn {
        heartbeat_at: Instant,
        silent_at: Instant,
    },
    Closed,
}

/// One link to an EXLIVE platform.
pub struct ClientSession {
    settings: ClientSettings,
    splitter: Splitter,
    /// At most one object not yet complete: the splitter refuses one over the limit,
    /// and drops the bytes between objects.
    buf: BytesMut,
    in_a_row: u32,
    phase: Phase,
}

/// A message as written on the link: newline-terminated.
pub fn line(msg: &Message) -> Vec<u8> {
    let mut line = msg.encode().into_bytes();
    line.push(b'\n');
    line
}

impl ClientSession {
    /// A link just opened: the session and the login to send first.
    pub fn start(settings: ClientSettings, now: Instant) -> (Self, Message) {
        let login = Message::Login {
            name: settings.name.clone(),
            pass: settings.pass.clone(),
            ver: settings.ver.clone(),
            kind: String::new(),
            mode: String::new(),
        };
        let session = ClientSession {
            splitter: Splitter::new(settings.max_message),
            settings,
            buf: BytesMut::new(),
            in_a_row: 0,
            phase: Phase::LoggingIn {
                until: now + LOGIN_TIMEOUT,
            },
        };
        (session, login)
    }

    pub fn logged_in(&self) -> bool {
        matches!(self.phase, Phase::LoggedIn { .. })
    }

    /// When `on_timer` must run next (`None` once closed).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::LoggingIn { until } => Some(until),
            Phase::LoggedIn {
                heartbeat_at,
                silent_at,
            } => Some(heartbeat_at.min(silent_at)),
            Phase::Closed => None,
        }
    }

    /// Bytes read from the platform.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) -> Vec<ClientOutput> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Closed) {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        while !matches!(self.phase, Phase::Closed) {
            match self.splitter.split(&mut self.buf) {
                Ok(None) => break,
                Ok(Some(frame)) => self.on_frame(frame, now, &mut out),
                Err(SplitError::TooLarge { max }) => {
                    self.close(ClientError::TooLarge { max }, &mut out)
                }
                // The splitter reads no I/O itself.
                Err(SplitError::Io(_)) => self.close(ClientError::Closed, &mut out),
            }
        }
        if self.buf.is_empty() {
            // What was split off holds its own share; nothing is kept between messages.
            self.buf = BytesMut::new();
        }
        out
    }

    /// The platform closed the link: an object it left unclosed is malformed, then the
    /// link ends.
    pub fn on_eof(&mut self, now: Instant) -> Vec<ClientOutput> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Closed) {
            return out;
        }
        if let Ok(Some(frame)) = self.splitter.decode_eof(&mut self.buf) {
            self.on_frame(frame, now, &mut out);
        }
        if !matches!(self.phase, Phase::Closed) {
            self.close(ClientError::Closed, &mut out);
        }
        out
    }

    /// The clock reached `next_deadline` (or later).
    pub fn on_timer(&mut self, now: Instant) -> Vec<ClientOutput> {
        let mut out = Vec::new();
        match &mut self.phase {
            Phase::Closed => {}
            Phase::LoggingIn { until } => {
                if now >= *until {
                    self.close(ClientError::LoginTimeout, &mut out);
                }
            }
            Phase::LoggedIn { silent_at, .. } if now >= *silent_at => {
                self.close(ClientError::Silent, &mut out);
            }
            Phase::LoggedIn { heartbeat_at, .. } => {
                if now >= *heartbeat_at {
                    // Due a period after the last one, or a period from now if that is past.
                    let next = *heartbeat_at + self.settings.heartbeat;
                    *heartbeat_at = if next > now {
                        next
                    } else {
                        now + self.settings.heartbeat
                    };
                    out.push(ClientOutput::Send(Message::Heartbeat));
                }
            }
        }
        out
    }

    fn close(&mut self, why: ClientError, out: &mut Vec<ClientOutput>) {
        self.phase = Phase::Closed;
        self.buf = BytesMut::new();
        out.push(ClientOutput::Close(why));
    }

    fn on_frame(&mut self, frame: Frame, now: Instant, out: &mut Vec<ClientOutput>) {
        let read = match frame {
            Frame::Object(raw) => Message::decode(&raw).map_err(Malformed::from),
            Frame::Malformed(raw) => Err(Malformed::Unclosed { len: raw.len() }),
        };
        match read {
            Ok(msg) => {
                self.in_a_row = 0;
                self.on_message(msg, now, out);
            }
            Err(what) => {
                self.in_a_row += 1;
                let in_a_row = self.in_a_row;
                out.push(ClientOutput::Malformed { what, in_a_row });
                if in_a_row >= self.settings.bad_in_a_row {
                    self.close(ClientError::TooManyMalformed { in_a_row }, out);
                }
            }
        }
    }

    fn on_message(&mut self, msg: Message, now: Instant, out: &mut Vec<ClientOutput>) {
        match &mut self.phase {
            Phase::Closed => {}
            Phase::LoggingIn { .. } => {
                // The answer to our login: an 8000 for cmd 1000 (some platforms leave
                // cmd empty). Anything else before it is ignored.
                let Message::Ack { cmd, result } = msg else {
                    return;
                };
                if !(cmd == "1000" || cmd.is_empty()) {
                    return;
                }
                if !Message::is_success(&result) {
                    self.close(ClientError::Refused(result), out);
                    return;
                }
                self.phase = Phase::LoggedIn {
                    heartbeat_at: now + self.settings.heartbeat,
                    silent_at: now + self.settings.idle_limit,
                };
                out.push(ClientOutput::LoggedIn);
                out.push(ClientOutput::Send(Message::GroupsRequest { client: true }));
            }
            Phase::LoggedIn { silent_at, .. } => {
                *silent_at = now + self.settings.idle_limit;
                match msg {
                    // Each group's vehicles are asked for as the group is told.
                    Message::Group { groupid, .. } => {
                        out.push(ClientOutput::Send(Message::VehiclesRequest { groupid }))
                    }
                    Message::Logout => self.close(ClientError::LoggedOut, out),
                    other => out.push(ClientOutput::Deliver(other)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
