//! The web-server role's link to a kingxun server, without I/O (beside `session.rs`, the
//! device link's): bytes read, commands and the clock go in; frames to send, the server's
//! device count, command outcomes and the reason to close come out.
//! `connectors/kingxun/via_kxsvr.rs` connects, reads, writes and publishes.
//!
//! docs/protocols/kingxun.md: "9001 connect" (sealed with the initial key and IV, answered
//! with a new IV), "9002 heartbeat" (kxSvr drops a link idle for 500 s), "4001–4005
//! commands through a server" (sealed with the new IV) and "kxSvr's real behaviour"
//! (relayed answers carry an unset header CRC; a second answer 5 after 30 s).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::codec::CodecError;
use super::session::{Answered, Awaiting, Outcome};
use super::{crypto, id, resp_code_text, AppControl, Decoded, Frame, Kind, KxCodec};
use super::{WebConnect, WebConnectAck, WebHeartbeat, WebHeartbeatAck};

/// How long the 9001 answer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Beyond three heartbeats of silence, the slack before the link counts as dead.
const HEARD_SLACK: Duration = Duration::from_secs(5);

/// What a link to the server is, fixed for its life.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// The initial key and IV (configuration; the key also seals commands).
    pub key: [u8; 16],
    pub iv: [u8; 16],
    /// The host name the server checks in 9001 and 9002.
    pub host: String,
    pub heartbeat: Duration,
    pub command_timeout: Duration,
    /// Largest MsgBodyLen taken (a 1008 trip gets the codec's own, larger limit).
    pub max_body: usize,
}

/// Why the link ends.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("no 9001 answer within 15 s")]
    NoConnectAnswer,
    #[error("9001 answer is not a response")]
    ConnectNotResponse,
    #[error("9001 refused: {code} ({})", resp_code_text(*code))]
    ConnectRefused { code: u32 },
    #[error("9001 answer cannot be decrypted or parsed (wrong key or IV?)")]
    ConnectUnreadable,
    #[error("no answer to heartbeats")]
    HeartbeatsUnanswered,
    #[error("server closed the link during 9001")]
    ClosedDuringConnect,
    #[error("server closed the link")]
    Closed,
    /// A MsgBodyLen over the limit (the stream cannot be trusted past it), or I/O.
    #[error("read: {0}")]
    Read(#[from] CodecError),
}

/// What the session asks of its I/O loop, in order.
#[derive(Debug)]
pub enum WebOutput<C> {
    Send(Frame),
    /// The server took our 9001: the devices behind it are reachable.
    Connected,
    /// A 9002 answer: how many devices the server holds.
    ServerDevices(u32),
    /// A command ended.
    Done(C, Outcome),
    /// Bytes skipped while looking for a valid header (worth a log line).
    Skipped(usize),
    /// The link ends; nothing more comes out of the session.
    Close(WebError),
}

enum Phase {
    /// 9001 sent, its answer awaited until then.
    Connecting {
        until: Instant,
    },
    Connected {
        session_id: u32,
        /// The IV the 9001 answer gave, for commands.
        iv: [u8; 16],
        heartbeat_at: Instant,
        last_heard: Instant,
    },
    Closed,
}

/// One link to a kingxun server. `C` is whatever the connector needs back when a command
/// ends.
pub struct WebSession<C> {
    settings: WebSettings,
    codec: KxCodec,
    /// At most one frame not yet complete: the codec refuses a length over its limit
    /// before the body is buffered.
    buf: BytesMut,
    seq: u16,
    phase: Phase,
    pending: Awaiting<C>,
}

impl<C> WebSession<C> {
    /// A link just opened: the session and the 9001 to send first. `unix_secs` is the
    /// wall clock the server is told.
    pub fn start(settings: WebSettings, now: Instant, unix_secs: u64) -> (Self, Frame) {
        let mut codec = KxCodec::new(settings.max_body);
        // kxSvr relays device answers with an unset header CRC (see `Header::parse_with`).
        codec.unset_response_crc = true;
        let seq = 1;
        let hello = WebConnect {
            time: unix_secs,
            host: settings.host.clone(),
        };
        let sealed = crypto::encrypt(&settings.key, &settings.iv, &hello.encode());
        let hello = Frame::request(id::WEB_CONNECT, seq, 0, 0, true, Bytes::from(sealed));
        let session = WebSession {
            settings,
            codec,
            buf: BytesMut::new(),
            seq,
            phase: Phase::Connecting {
                until: now + CONNECT_TIMEOUT,
            },
            pending: Awaiting::default(),
        };
        (session, hello)
    }

    /// The 9001 was answered and the link is not closed: commands may be sent.
    pub fn connected(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    /// When `on_timer` must run next (`None` once closed).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Connecting { until } => Some(until),
            Phase::Connected { heartbeat_at, .. } => Some(
                self.pending
                    .next_deadline()
                    .map_or(heartbeat_at, |d| d.min(heartbeat_at)),
            ),
            Phase::Closed => None,
        }
    }

    /// Bytes read from the server.
    pub fn on_bytes(&mut self, bytes: &[u8], now: Instant) -> Vec<WebOutput<C>> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Closed) {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(None) => break,
                Ok(Some(Decoded::Skipped(n))) => out.push(WebOutput::Skipped(n)),
                Ok(Some(Decoded::Frame(frame))) => self.on_frame(frame, now, &mut out),
                Err(e) => self.close(WebError::Read(e), &mut out),
            }
            if matches!(self.phase, Phase::Closed) {
                break;
            }
        }
        if self.buf.is_empty() {
            // What was decoded holds its own share; nothing is kept between frames.
            self.buf = BytesMut::new();
        }
        out
    }

    /// The server closed the link: why it ended.
    pub fn on_eof(&mut self) -> WebError {
        // Part of a frame left is a read error, as tokio-util's `FramedRead` has it.
        let rest = self.codec.decode_eof(&mut self.buf);
        let connecting = matches!(self.phase, Phase::Connecting { .. });
        self.phase = Phase::Closed;
        self.buf = BytesMut::new();
        match rest {
            Err(e) => WebError::Read(e),
            Ok(_) if connecting => WebError::ClosedDuringConnect,
            Ok(_) => WebError::Closed,
        }
    }

    /// The clock reached `next_deadline` (or later).
    pub fn on_timer(&mut self, now: Instant, unix_secs: u64) -> Vec<WebOutput<C>> {
        let mut out = Vec::new();
        let (session_id, heartbeat_at, last_heard) = match &mut self.phase {
            Phase::Closed => return out,
            Phase::Connecting { until } => {
                if now >= *until {
                    self.close(WebError::NoConnectAnswer, &mut out);
                }
                return out;
            }
            Phase::Connected {
                session_id,
                heartbeat_at,
                last_heard,
                ..
            } => (*session_id, heartbeat_at, *last_heard),
        };
        let hb = self.settings.heartbeat;
        let beat = now >= *heartbeat_at;
        if beat {
            // Due a period after the last one, or a period from now if that is past.
            let next = *heartbeat_at + hb;
            *heartbeat_at = if next > now { next } else { now + hb };
        }
        for command in self.pending.expired(now) {
            out.push(WebOutput::Done(command, Outcome::TimedOut));
        }
        if !beat {
            return out;
        }
        // The server answers every heartbeat: three unanswered ones mean the link is dead.
        if now.saturating_duration_since(last_heard) > hb * 3 + HEARD_SLACK {
            self.close(WebError::HeartbeatsUnanswered, &mut out);
            return out;
        }
        self.seq = self.seq.wrapping_add(1);
        let body = WebHeartbeat {
            time: unix_secs,
            host: self.settings.host.clone(),
        };
        let body = Bytes::from(body.encode());
        let frame = Frame::request(id::WEB_HEARTBEAT, self.seq, 0, session_id, false, body);
        out.push(WebOutput::Send(frame));
        out
    }

    /// A command for a device behind the server: the sealed frame to send, or the
    /// command back while the link is not connected.
    pub fn send_command(&mut self, app: AppControl, command: C, now: Instant) -> Result<Frame, C> {
        let Phase::Connected { session_id, iv, .. } = self.phase else {
            return Err(command);
        };
        self.seq = self.seq.wrapping_add(1);
        let sealed = crypto::encrypt(&self.settings.key, &iv, &app.encode());
        let msg_id = app.control.app_msg_id();
        let frame = Frame::request(msg_id, self.seq, 0, session_id, true, Bytes::from(sealed));
        let deadline = now + self.settings.command_timeout;
        self.pending.push(self.seq, msg_id, deadline, command);
        Ok(frame)
    }

    /// Commands still waiting, removed.
    pub fn take_pending(&mut self) -> impl Iterator<Item = C> + '_ {
        self.pending.drain()
    }

    fn close(&mut self, why: WebError, out: &mut Vec<WebOutput<C>>) {
        self.phase = Phase::Closed;
        self.buf = BytesMut::new();
        out.push(WebOutput::Close(why));
    }

    fn on_frame(&mut self, frame: Frame, now: Instant, out: &mut Vec<WebOutput<C>>) {
        match &mut self.phase {
            Phase::Closed => {}
            // Until the 9001 answer, everything else is ignored.
            Phase::Connecting { .. } if frame.header.msg_id != id::WEB_CONNECT => {}
            Phase::Connecting { .. } => match self.connect_answer(&frame) {
                Ok(WebConnectAck { session_id, iv, .. }) => {
                    self.phase = Phase::Connected {
                        session_id,
                        iv,
                        // The first heartbeat goes at once.
                        heartbeat_at: now,
                        last_heard: now,
                    };
                    out.push(WebOutput::Connected);
                }
                Err(why) => self.close(why, out),
            },
            Phase::Connected { last_heard, .. } => {
                *last_heard = now;
                let Kind::Response { resp_code } = frame.header.kind else {
                    return;
                };
                if frame.header.msg_id == id::WEB_HEARTBEAT {
                    if let Ok(ack) = WebHeartbeatAck::decode(&frame.body) {
                        out.push(WebOutput::ServerDevices(ack.total_devices));
                    }
                    return;
                }
                // kxSvr answers every relayed command again with 5 once its own 30 s wait
                // is over: a SeqNum no longer pending is ignored.
                let (seq, msg_id) = (frame.header.seq, frame.header.msg_id);
                let Answered::Command(command) = self.pending.answered(seq, msg_id) else {
                    return;
                };
                let outcome = if resp_code == 0 {
                    Outcome::Succeeded
                } else {
                    let text = resp_code_text(resp_code);
                    Outcome::Failed(format!("server answered {resp_code} ({text})"))
                };
                out.push(WebOutput::Done(command, outcome));
            }
        }
    }

    fn connect_answer(&self, frame: &Frame) -> Result<WebConnectAck, WebError> {
        let Kind::Response { resp_code } = frame.header.kind else {
            return Err(WebError::ConnectNotResponse);
        };
        if resp_code != 0 {
            return Err(WebError::ConnectRefused { code: resp_code });
        }
        let (key, iv) = (&self.settings.key, &self.settings.iv);
        open_connect_ack(key, iv, frame).ok_or(WebError::ConnectUnreadable)
    }
}

/// The 9001 answer's body. kxSvr encrypts it but leaves CryptFlag 0 (docs/protocols/
/// kingxun.md, "9001 connect"), so it is decrypted whenever it decrypts with a valid
/// length/CRC trailer, whatever the flag says; only a body that does not decrypt and is
/// flagged plain is read as plain.
pub fn open_connect_ack(key: &[u8; 16], iv0: &[u8; 16], ack: &Frame) -> Option<WebConnectAck> {
    if let Ok(plain) = crypto::decrypt(key, iv0, &ack.body) {
        return WebConnectAck::decode(&plain).ok();
    }
    if ack.header.crypt || ack.body.len() != WebConnectAck::LEN {
        return None;
    }
    WebConnectAck::decode(&ack.body).ok()
}

#[cfg(test)]
mod tests;
