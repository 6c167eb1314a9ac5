//! One device link's session, without I/O (the way rumqttc's `state.rs` stands apart from
//! its event loop): frames, commands and the clock go in; frames to send, the link's
//! proof of key, requests to act on, command outcomes, events and the reason to close
//! come out. `connectors/kingxun/server.rs` does the reading, writing and publishing.
//!
//! Sources (docs/protocols/kingxun.md, "1001 registration" and "RespCodes"): the device
//! document (registration 1001, SessionId and IV, RespCodes), kxSvr
//! `KxLogicSys.cc` `DevRegMsgCallBack` (a repeated 1001 gets a fresh IV, the session id
//! stays), `KxSession.cc` `checkMsgHeader` (requests checked by SessionId; we check DevId
//! too: `KxClient.cpp` puts the device's own id on every frame).

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{crypto, id, Control, DeviceControl, Frame, Kind, Profile, RangeAnswer, RangeQuery};
use super::{Register, RegisterAck};

pub const RESP_OK: u32 = 0;
pub const RESP_REJECTED: u32 = 1;
/// "Bad devId" (KxMsgDef.h `cst_nResp_Code_DEVID_ERR`). Never 1 or 2 for a refused 1001:
/// devProctol.md reads 1 as "redirect", kxSvr's code reads 2 as "redirect".
pub const RESP_BAD_DEVICE: u32 = 4;
/// "Bad parameter" (KxMsgDef.h `cst_nResp_Code_PARA_ERR`): a malformed body or first frame.
pub const RESP_BAD_PARAMETER: u32 = 6;

/// What a link is allowed, fixed for its life.
#[derive(Debug, Clone)]
pub struct Settings {
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub command_timeout: Duration,
    /// Bad frames in a row that close the link.
    pub bad_in_a_row: u32,
    /// The answer to 1005 (a link that has not proven its key gets it too: a real device
    /// goes on reporting while the bridge waits for proof).
    pub range: RangeAnswer,
}

/// What the first frame on a link is.
#[derive(Debug, PartialEq)]
pub enum Opening {
    /// A 1001: the device, the request's SeqNum and what it says about itself (a sealed
    /// body carries nothing readable: a device has no IV yet).
    Register {
        dev_id: u32,
        seq: u16,
        register: Register,
    },
    /// Anything else: answer with `reply` (if any) and close.
    Refused { reply: Option<Frame> },
}

pub fn opening(frame: &Frame) -> Opening {
    let Kind::Request { dev_id, .. } = frame.header.kind else {
        return Opening::Refused { reply: None };
    };
    if frame.header.msg_id != id::REGISTER {
        let reply = Frame::response(
            frame.header.msg_id,
            frame.header.seq,
            RESP_BAD_PARAMETER,
            false,
            Bytes::new(),
        );
        return Opening::Refused { reply: Some(reply) };
    }
    let register = if frame.header.crypt {
        Register::default()
    } else {
        Register::decode_lenient(&frame.body)
    };
    Opening::Register {
        dev_id,
        seq: frame.header.seq,
        register,
    }
}

/// Why a link closes.
pub type CloseReason = &'static str;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    TimedOut,
}

/// Something worth a counter and a (rate-limited) log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// A request with another DevId or SessionId.
    BadSession {
        from: u32,
    },
    /// A 1001 for another device on a live link.
    ReregisterOtherId {
        from: u32,
    },
    /// The device registered again on its live link and got a fresh IV.
    Reregistered,
    /// A sealed body that does not open with the device's key and session IV.
    DecryptFailed {
        msg_id: u16,
    },
    /// A frame from a link that has not proven the key; `first` once per link.
    Unproven {
        msg_id: u16,
        first: bool,
    },
    /// A response whose MsgId is not that of the command with its SeqNum (kept waiting).
    ResponseMismatch {
        seq: u16,
        msg_id: u16,
    },
    /// A response nobody waits for.
    UnexpectedResponse {
        seq: u16,
    },
    /// Too many bad frames in a row: the link closes.
    TooManyBad {
        in_a_row: u32,
    },
    IdleClosed,
    Stalled,
}

/// What the session asks of its I/O loop, in order.
#[derive(Debug, PartialEq)]
pub enum Output<C> {
    Send(Frame),
    /// The link showed the device's key (or the config trusts its plain frames): from
    /// now on it is the device's link, and what it says is published.
    Proven,
    /// A proven device's request with its body opened: act on it, then send
    /// `reply(&frame, code, body)`.
    Request {
        frame: Frame,
        body: Vec<u8>,
    },
    /// A command ended.
    Done(C, Outcome),
    Event(LinkEvent),
    Close(CloseReason),
}

/// Commands sent and not yet answered, matched to their answers by SeqNum and MsgId:
/// a device link's (2001–2005) and a kingxun server link's (4001–4005).
pub struct Awaiting<C>(Vec<Pending<C>>);

struct Pending<C> {
    seq: u16,
    msg_id: u16,
    deadline: Instant,
    command: C,
}

/// What an answer settles.
pub enum Answered<C> {
    /// The command with this SeqNum and MsgId.
    Command(C),
    /// A command has this SeqNum but another MsgId (it keeps waiting).
    Mismatch,
    /// Nothing waits for this SeqNum (late, repeated or made up).
    Unexpected,
}

impl<C> Default for Awaiting<C> {
    fn default() -> Self {
        Awaiting(Vec::new())
    }
}

impl<C> Awaiting<C> {
    pub fn push(&mut self, seq: u16, msg_id: u16, deadline: Instant, command: C) {
        self.0.push(Pending {
            seq,
            msg_id,
            deadline,
            command,
        });
    }

    pub fn answered(&mut self, seq: u16, msg_id: u16) -> Answered<C> {
        let Some(i) = self.0.iter().position(|p| p.seq == seq) else {
            return Answered::Unexpected;
        };
        if self.0[i].msg_id != msg_id {
            return Answered::Mismatch;
        }
        Answered::Command(self.0.swap_remove(i).command)
    }

    /// The earliest deadline, if any command waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.0.iter().map(|p| p.deadline).min()
    }

    /// Commands whose deadline passed, removed.
    pub fn expired(&mut self, now: Instant) -> Vec<C> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].deadline <= now {
                out.push(self.0.swap_remove(i).command);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Every command still waiting, removed.
    pub fn drain(&mut self) -> impl Iterator<Item = C> + '_ {
        self.0.drain(..).map(|p| p.command)
    }
}

/// A link that just registered, and what the connector decided about it.
#[derive(Debug, Clone)]
pub struct Start {
    pub dev_id: u32,
    /// The 1001's SeqNum.
    pub seq: u16,
    /// The device's key, or for an unknown id a random one (`phantom`).
    pub key: [u8; 16],
    pub phantom: bool,
    /// Its plain frames are believed without proof (`accept_plain_frames`).
    pub trusted: bool,
    /// Layout of 2001–2005 for this device.
    pub profile: Profile,
    /// Chosen at random by the caller, as kxSvr does.
    pub session_id: u32,
    pub iv: [u8; 16],
    /// SeqNum before the first command's.
    pub first_seq: u16,
}

/// A registered link. `C` is whatever the connector needs back when a command ends.
pub struct Session<C> {
    pub dev_id: u32,
    pub session_id: u32,
    key: [u8; 16],
    iv: [u8; 16],
    profile: Profile,
    proven: bool,
    /// A device id that is not configured: answered exactly like a known one that has
    /// not proven its key (with a random key nobody holds), so a peer cannot tell known
    /// ids from unknown ones; it can never be proven.
    phantom: bool,
    unproven_told: bool,
    bad_in_a_row: u32,
    next_seq: u16,
    /// Usually empty or one: a device takes one command at a time.
    pending: Awaiting<C>,
    idle_deadline: Instant,
    /// Since when a frame has been half received (a half frame never completes a read,
    /// so the loop looks at its buffer at `check_at`).
    partial_since: Option<Instant>,
    check_at: Instant,
    settings: std::sync::Arc<Settings>,
}

impl<C> Session<C> {
    /// A link that registered. Outputs: the 1001 answer, then `Proven` when trusted.
    pub fn register(
        start: Start,
        settings: std::sync::Arc<Settings>,
        now: Instant,
    ) -> (Self, Vec<Output<C>>) {
        let Start {
            dev_id,
            seq,
            key,
            phantom,
            trusted,
            profile,
            session_id,
            iv,
            first_seq,
        } = start;
        let mut session = Session {
            dev_id,
            session_id,
            key,
            iv,
            profile,
            proven: false,
            phantom,
            unproven_told: false,
            bad_in_a_row: 0,
            next_seq: first_seq,
            pending: Awaiting::default(),
            idle_deadline: now + settings.idle_timeout,
            partial_since: None,
            check_at: now + settings.read_timeout / 2,
            settings,
        };
        let mut out = vec![Output::Send(register_ack(seq, session_id, iv))];
        if trusted && !phantom {
            session.proven = true;
            out.push(Output::Proven);
        }
        (session, out)
    }

    pub fn proven(&self) -> bool {
        self.proven
    }

    pub fn phantom(&self) -> bool {
        self.phantom
    }

    /// Bad frames in a row so far (for log rate-limiting).
    pub fn bad_in_a_row(&self) -> u32 {
        self.bad_in_a_row
    }

    /// When `on_timer` must run next.
    pub fn next_deadline(&self) -> Instant {
        let mut at = self.idle_deadline.min(self.check_at);
        if let Some(since) = self.partial_since {
            at = at.min(since + self.settings.read_timeout);
        }
        self.pending.next_deadline().map_or(at, |d| at.min(d))
    }

    /// Whether the read buffer holds part of a frame, after each step of the loop.
    pub fn note_buffer(&mut self, partial: bool, now: Instant) {
        self.partial_since = match (partial, self.partial_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now),
        };
    }

    /// The clock reached `next_deadline` (or later).
    pub fn on_timer(&mut self, now: Instant, partial: bool) -> Vec<Output<C>> {
        self.note_buffer(partial, now);
        let expired = self.pending.expired(now).into_iter();
        let mut out: Vec<Output<C>> = expired
            .map(|c| Output::Done(c, Outcome::TimedOut))
            .collect();
        if now >= self.check_at {
            self.check_at = now + self.settings.read_timeout / 2;
        }
        if self
            .partial_since
            .is_some_and(|t| now >= t + self.settings.read_timeout)
        {
            out.push(Output::Event(LinkEvent::Stalled));
            out.push(Output::Close("partial frame stalled past read_timeout"));
        } else if now >= self.idle_deadline {
            out.push(Output::Event(LinkEvent::IdleClosed));
            out.push(Output::Close("idle past idle_timeout"));
        }
        out
    }

    /// The codec skipped bytes it could not frame. `Some` when the link has said enough.
    pub fn on_skipped(&mut self) -> Option<Output<C>> {
        self.bad().map(|e| Output::Close(e.1))
    }

    /// Counts a bad frame; the event and reason when the link must close.
    fn bad(&mut self) -> Option<(LinkEvent, CloseReason)> {
        self.bad_in_a_row += 1;
        (self.bad_in_a_row >= self.settings.bad_in_a_row).then_some((
            LinkEvent::TooManyBad {
                in_a_row: self.bad_in_a_row,
            },
            "too many bad frames in a row",
        ))
    }

    fn push_bad(&mut self, out: &mut Vec<Output<C>>) {
        if let Some((event, reason)) = self.bad() {
            out.push(Output::Event(event));
            out.push(Output::Close(reason));
        }
    }

    /// A command for the device: the sealed frame to send, or the command back with why
    /// it cannot be sent.
    pub fn send_command(
        &mut self,
        control: Control,
        command: C,
        svr_time: u64,
        now: Instant,
    ) -> Result<Frame, (C, String)> {
        let profile = self.profile;
        let body = DeviceControl {
            svr_time,
            session_id: self.session_id,
            user_id: 0,
            control,
        }
        .encode(profile);
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                return Err((
                    command,
                    format!("{e} (device profile `{}`)", profile.name()),
                ))
            }
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        let sealed = crypto::encrypt(&self.key, &self.iv, &body);
        let msg_id = control.device_msg_id();
        let frame = Frame::request(
            msg_id,
            self.next_seq,
            self.dev_id,
            self.session_id,
            true,
            Bytes::from(sealed),
        );
        let deadline = now + self.settings.command_timeout;
        self.pending.push(self.next_seq, msg_id, deadline, command);
        Ok(frame)
    }

    /// Commands still waiting, when the link closes.
    pub fn take_pending(&mut self) -> impl Iterator<Item = C> + '_ {
        self.pending.drain()
    }

    /// A frame from the device.
    pub fn on_frame(&mut self, frame: Frame, now: Instant, fresh_iv: [u8; 16]) -> Vec<Output<C>> {
        self.idle_deadline = now + self.settings.idle_timeout;
        let mut out = Vec::new();
        match frame.header.kind {
            Kind::Response { resp_code } => self.on_response(&frame, resp_code, &mut out),
            Kind::Request { dev_id: from, .. } if frame.header.msg_id == id::REGISTER => {
                if from != self.dev_id {
                    out.push(Output::Event(LinkEvent::ReregisterOtherId { from }));
                    out.push(Output::Send(reply(&frame, RESP_BAD_DEVICE, Vec::new())));
                    self.push_bad(&mut out);
                } else {
                    self.iv = fresh_iv;
                    out.push(Output::Send(register_ack(
                        frame.header.seq,
                        self.session_id,
                        fresh_iv,
                    )));
                    out.push(Output::Event(LinkEvent::Reregistered));
                }
            }
            Kind::Request {
                dev_id: from,
                session_id,
            } => self.on_request(frame, from, session_id, &mut out),
        }
        out
    }

    fn on_response(&mut self, frame: &Frame, resp_code: u32, out: &mut Vec<Output<C>>) {
        let (seq, msg_id) = (frame.header.seq, frame.header.msg_id);
        let command = match self.pending.answered(seq, msg_id) {
            Answered::Command(c) => c,
            Answered::Mismatch => {
                let event = LinkEvent::ResponseMismatch { seq, msg_id };
                out.push(Output::Event(event));
                return;
            }
            Answered::Unexpected => {
                out.push(Output::Event(LinkEvent::UnexpectedResponse { seq }));
                return;
            }
        };
        let outcome = if resp_code == RESP_OK {
            Outcome::Succeeded
        } else {
            Outcome::Failed(format!(
                "device answered {resp_code} ({})",
                super::resp_code_text(resp_code)
            ))
        };
        out.push(Output::Done(command, outcome));
    }

    fn on_request(&mut self, frame: Frame, from: u32, sid: u32, out: &mut Vec<Output<C>>) {
        let msg_id = frame.header.msg_id;
        if from != self.dev_id || sid != self.session_id {
            out.push(Output::Event(LinkEvent::BadSession { from }));
            out.push(Output::Send(reply(&frame, RESP_REJECTED, Vec::new())));
            self.push_bad(out);
            return;
        }
        let opened = if frame.header.crypt {
            crypto::decrypt(&self.key, &self.iv, &frame.body).ok()
        } else {
            Some(frame.body.to_vec())
        };
        let Some(body) = opened else {
            // Sealed, but not with this device's key and session IV.
            out.push(Output::Event(LinkEvent::DecryptFailed { msg_id }));
            out.push(Output::Send(reply(&frame, RESP_REJECTED, Vec::new())));
            self.push_bad(out);
            return;
        };
        self.bad_in_a_row = 0;
        if !self.proven && !self.phantom && frame.header.crypt {
            self.proven = true;
            out.push(Output::Proven);
        }
        if self.proven {
            out.push(Output::Request { frame, body });
            return;
        }
        // Answered as usual (a real device goes on reporting), but nothing a link that
        // has not shown the key says is published.
        let first = !std::mem::replace(&mut self.unproven_told, true);
        out.push(Output::Event(LinkEvent::Unproven { msg_id, first }));
        let (code, body) = match msg_id {
            id::RANGE if RangeQuery::decode(&body).is_ok() => {
                (RESP_OK, self.settings.range.encode())
            }
            id::RANGE => (RESP_BAD_PARAMETER, Vec::new()),
            _ => (RESP_OK, Vec::new()),
        };
        out.push(Output::Send(reply(&frame, code, body)));
    }
}

/// The plain answer to a request.
pub fn reply(request: &Frame, code: u32, body: Vec<u8>) -> Frame {
    Frame::response(
        request.header.msg_id,
        request.header.seq,
        code,
        false,
        Bytes::from(body),
    )
}

fn register_ack(seq: u16, session_id: u32, iv: [u8; 16]) -> Frame {
    let ack = RegisterAck { session_id, iv }.encode();
    Frame::response(id::REGISTER, seq, RESP_OK, false, Bytes::from(ack))
}

#[cfg(test)]
mod tests;
