//! Device links: registration, session checks, requests and their responses, commands
//! matched to their answers by SeqNum.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::requests::*;
use super::{now_secs, vehicle_id, Core, LinkCommand, LinkSender};
use crate::connector::Update;
use crate::model::CommandProgress;
use crate::protocol::kingxun::codec::CodecError;
use crate::protocol::kingxun::{
    crypto, id, resp_code_text, Decoded, DeviceControl, Frame, Kind, KxCodec,
};

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const RESP_OK: u32 = 0;
pub(super) const RESP_REJECTED: u32 = 1;
/// "Bad devId" (KxMsgDef.h `cst_nResp_Code_DEVID_ERR`). Never 1 or 2 for a refused 1001:
/// devProctol.md reads 1 as "redirect", kxSvr's code reads 2 as "redirect".
pub(super) const RESP_BAD_DEVICE: u32 = 4;
/// "Bad parameter" (KxMsgDef.h `cst_nResp_Code_PARA_ERR`): a malformed body or first frame.
pub(super) const RESP_BAD_PARAMETER: u32 = 6;

pub(super) async fn run(listener: TcpListener, core: Arc<Core>, shutdown: CancellationToken) {
    let limits = crate::connectors::link::Limits {
        max_links: core.config.max_links,
        per_address: core.config.links_per_address(),
    };
    let refused = &core.counters.links_refused;
    crate::connectors::link::accept_loop(
        listener,
        "kingxun",
        limits,
        refused,
        shutdown.clone(),
        |stream, peer| serve_link(stream, peer, core.clone(), shutdown.clone()),
    )
    .await;
}

pub(super) async fn write_frame(wr: &mut OwnedWriteHalf, frame: &Frame) -> std::io::Result<()> {
    match timeout(WRITE_TIMEOUT, wr.write_all(&frame.to_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// Answers a request with an empty plain response (a refusal before the link closes);
/// a failed write changes nothing, the link is closing anyway.
pub(super) async fn refuse(wr: &mut OwnedWriteHalf, msg_id: u16, seq: u16, code: u32) {
    let _ = write_frame(wr, &Frame::response(msg_id, seq, code, false, Bytes::new())).await;
}

type Frames = FramedRead<tokio::net::tcp::OwnedReadHalf, KxCodec>;

/// Whether a bad frame may be logged (see `LogLimiter::allow_bad_input`).
pub(super) fn may_log(core: &Core, in_a_row: u32) -> bool {
    core.bad_input_log.allow_bad_input(in_a_row, "kingxun")
}

/// Counts a bad frame on the link; `true` when the link has said enough and is closed.
pub(super) fn too_many_bad(core: &Core, in_a_row: &mut u32, peer: &SocketAddr) -> bool {
    *in_a_row += 1;
    if *in_a_row < crate::connectors::BAD_IN_A_ROW {
        return false;
    }
    core.counters
        .malformed_closed
        .fetch_add(1, Ordering::Relaxed);
    if may_log(core, 1) {
        tracing::warn!(event = "kingxun_bad_link_closed", peer = %peer, in_a_row = *in_a_row, "too many bad frames in a row; closing link");
    }
    true
}

/// The next frame; junk is logged and skipped. `None` ends the link.
async fn next_frame(
    frames: &mut Frames,
    peer: &SocketAddr,
    core: &Core,
    bad_in_a_row: &mut u32,
) -> Option<Frame> {
    loop {
        match frames.next().await? {
            Ok(Decoded::Frame(f)) => return Some(f),
            Ok(Decoded::Skipped(n)) => {
                core.counters.bad_headers.fetch_add(1, Ordering::Relaxed);
                if may_log(core, *bad_in_a_row + 1) {
                    tracing::warn!(event = "kingxun_bad_header", peer = %peer, skipped = n, "bad header (CRC or flags); bytes skipped");
                }
                if too_many_bad(core, bad_in_a_row, peer) {
                    return None;
                }
            }
            Err(CodecError::TooLarge { len, max }) => {
                core.counters.oversized.fetch_add(1, Ordering::Relaxed);
                if may_log(core, 1) {
                    tracing::warn!(event = "kingxun_oversized", peer = %peer, len, max, "MsgBodyLen over the limit; closing link");
                }
                return None;
            }
            Err(CodecError::Io(err)) => {
                tracing::debug!(event = "kingxun_link_io", peer = %peer, error = %err);
                return None;
            }
        }
    }
}

/// Waits for this address block's registration budget (the same for every device id, so
/// timing tells a guesser nothing); false when the wait would pass `read_timeout`.
async fn registration_turn(core: &Core, peer: &SocketAddr) -> bool {
    let wait = core
        .registrations
        .lock()
        .map(|mut b| b.reserve(peer.ip(), std::time::Instant::now()))
        .unwrap_or_default();
    if wait.is_zero() {
        return true;
    }
    core.counters
        .registrations_throttled
        .fetch_add(1, Ordering::Relaxed);
    if wait > core.config.read_timeout {
        return false;
    }
    tokio::time::sleep(wait).await;
    true
}

/// A session: the device, its key and the IV given at registration.
pub(super) struct Session {
    pub dev_id: u32,
    key: [u8; 16],
    iv: [u8; 16],
    /// The link proved it holds the device's key (a frame sealed with key and session IV
    /// that decrypted with a valid trailer), or the config trusts plain frames for it.
    /// Until then it displaces no live link, and nothing it says is published.
    proven: bool,
    /// A device id that is not configured: answered exactly like a known one that has
    /// not proven its key (a random key nobody holds), so an unauthenticated peer cannot
    /// tell known ids from unknown ones; it can never be proven.
    phantom: bool,
}

impl Session {
    pub(super) fn open_body(&self, frame: &Frame) -> Result<Vec<u8>, crypto::CryptoError> {
        if frame.header.crypt {
            crypto::decrypt(&self.key, &self.iv, &frame.body)
        } else {
            Ok(frame.body.to_vec())
        }
    }
}

/// One device's link. Runs as long as the device stays linked, so its future is what
/// 10 000 links cost: awaits that hold much state while they run (a request's handling,
/// writes, updates) are boxed, which keeps the idle future at ~1.5 KB instead of 2.7.
async fn serve_link(
    stream: TcpStream,
    peer: SocketAddr,
    core: Arc<Core>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    // Frames are ~150 bytes: start small (the buffer grows on demand) so 10 000 idle links
    // do not each hold the default 8 KiB.
    let mut codec = KxCodec::new(core.config.max_body);
    codec.max_trip_body = core.config.max_trip_body;
    let mut frames = FramedRead::with_capacity(rd, codec, 512);

    let mut bad_in_a_row = 0u32;
    // Registration: the first frame, within read_timeout.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        f = timeout(core.config.read_timeout, next_frame(&mut frames, &peer, &core, &mut bad_in_a_row)) => f,
    };
    let frame = match first {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(_) => {
            core.counters.stalled.fetch_add(1, Ordering::Relaxed);
            tracing::info!(event = "kingxun_no_register", peer = %peer, "no registration within read_timeout; closing");
            return;
        }
    };
    let Kind::Request { dev_id, .. } = frame.header.kind else {
        return;
    };
    if frame.header.msg_id != id::REGISTER {
        if may_log(&core, 1) {
            tracing::warn!(event = "kingxun_not_registered", peer = %peer, dev_id, msg_id = frame.header.msg_id, "first frame is not 1001; closing");
        }
        core.counters.bad_bodies.fetch_add(1, Ordering::Relaxed);
        refuse(
            &mut wr,
            frame.header.msg_id,
            frame.header.seq,
            RESP_BAD_PARAMETER,
        )
        .await;
        return;
    }
    if !Box::pin(registration_turn(&core, &peer)).await {
        return;
    }
    let known_key = core.devices.get(&dev_id).and_then(|d| d.key_bytes());
    let phantom = known_key.is_none();
    if phantom {
        core.counters
            .unknown_devices
            .fetch_add(1, Ordering::Relaxed);
        if may_log(&core, 1) {
            tracing::warn!(event = "kingxun_unknown_device", peer = %peer, dev_id,
                "unknown device id: answered like any registration, but nothing it sends is used (add it to [[kingxun.devices]])");
        }
    }
    let key = known_key.unwrap_or_else(|| rand::rng().random());
    let register = registration_body(&frame);
    let session_id = rand::rng().random_range(1..=u32::MAX);
    let Some(iv) = Box::pin(answer_register(&mut wr, frame.header.seq, session_id)).await else {
        return;
    };
    let mut session = Session {
        dev_id,
        key,
        iv,
        proven: false,
        phantom,
    };
    let profile = core.profile(dev_id);
    let vid = vehicle_id(dev_id);
    let link_id = core.next_link.fetch_add(1, Ordering::Relaxed);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Box<LinkCommand>>(16);
    let sw_version = register.software_version();
    if !phantom {
        tracing::info!(event = "kingxun_registered", peer = %peer, dev_id, link = link_id, "device registered");
    }
    Box::pin(core.open_links.opened(&core.updates)).await;
    if !phantom && core.accepts_plain(dev_id) {
        Box::pin(prove(
            &core,
            &mut session,
            link_id,
            &cmd_tx,
            sw_version,
            &peer,
        ))
        .await;
    }
    let mut unproven_logged = false;

    // seq → (command, deadline)
    let mut pending: HashMap<u16, (Box<LinkCommand>, Instant)> = HashMap::new();
    let mut next_seq: u16 = rand::rng().random();
    let mut idle_deadline = Instant::now() + core.config.idle_timeout;
    let mut partial_since: Option<Instant> = None;
    // A half-received frame never completes a read, so look at the buffer periodically.
    let mut stall_check = tokio::time::interval(core.config.read_timeout / 2);
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut model_known = false;
    let reason = loop {
        let next_command_deadline = pending.values().map(|(_, d)| *d).min();
        let stall_deadline = partial_since.map(|t| t + core.config.read_timeout);
        tokio::select! {
            _ = shutdown.cancelled() => break "shutdown",
            _ = stall_check.tick() => {}
            _ = sleep_until(idle_deadline) => {
                core.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                break "idle past idle_timeout";
            }
            _ = async { sleep_until(stall_deadline.unwrap_or_else(Instant::now)).await }, if stall_deadline.is_some() => {
                core.counters.stalled.fetch_add(1, Ordering::Relaxed);
                break "partial frame stalled past read_timeout";
            }
            _ = async { sleep_until(next_command_deadline.unwrap_or_else(Instant::now)).await }, if next_command_deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<u16> = pending.iter().filter(|(_, (_, d))| *d <= now).map(|(s, _)| *s).collect();
                for seq in expired {
                    if let Some((cmd, _)) = pending.remove(&seq) {
                        let secs = core.config.command_timeout.as_secs_f64();
                        let _ = cmd.request.progress.try_send(CommandProgress::TimedOut(format!("device did not answer within {secs}s")));
                    }
                }
            }
            Some(cmd) = cmd_rx.recv() => {
                next_seq = next_seq.wrapping_add(1);
                let body = match (DeviceControl { svr_time: now_secs(), session_id, user_id: 0, control: cmd.control }).encode(profile) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = cmd.request.progress.try_send(CommandProgress::Failed(format!("{e} (device profile `{}`)", profile.name())));
                        continue;
                    }
                };
                let sealed = crypto::encrypt(&session.key, &session.iv, &body);
                let frame = Frame::request(cmd.control.device_msg_id(), next_seq, dev_id, session_id, true, Bytes::from(sealed));
                if let Err(err) = Box::pin(write_frame(&mut wr, &frame)).await {
                    let _ = cmd.request.progress.try_send(CommandProgress::Failed(format!("send failed: {err}")));
                    break "write failed";
                }
                tracing::info!(event = "kingxun_command_sent", dev_id, msg_id = frame.header.msg_id, seq = next_seq, id = %cmd.request.id);
                pending.insert(next_seq, (cmd, Instant::now() + core.config.command_timeout));
            }
            frame = next_frame(&mut frames, &peer, &core, &mut bad_in_a_row) => {
                let Some(frame) = frame else { break "link closed" };
                idle_deadline = Instant::now() + core.config.idle_timeout;
                match frame.header.kind {
                    Kind::Response { resp_code } => {
                        match pending.remove(&frame.header.seq) {
                            Some((cmd, _)) if cmd.control.device_msg_id() == frame.header.msg_id => {
                                if resp_code == RESP_OK {
                                    if !cmd.after.values.is_empty() {
                                        Box::pin(core.updates.merge_state(vid.clone(), cmd.after.clone())).await;
                                    }
                                    core.remember_guard(dev_id, &cmd.control);
                                    let _ = cmd.request.progress.try_send(CommandProgress::Succeeded);
                                } else {
                                    let _ = cmd.request.progress.try_send(CommandProgress::Failed(format!(
                                        "device answered {resp_code} ({})", resp_code_text(resp_code))));
                                }
                            }
                            Some((cmd, deadline)) => {
                                tracing::warn!(event = "kingxun_response_mismatch", dev_id, seq = frame.header.seq, msg_id = frame.header.msg_id,
                                    "response's MsgId does not match the command with this SeqNum; ignored");
                                pending.insert(frame.header.seq, (cmd, deadline));
                            }
                            None => tracing::debug!(event = "kingxun_unexpected_response", dev_id, seq = frame.header.seq),
                        }
                    }
                    // A repeated 1001 on a live link gets a fresh IV, as kxSvr's does
                    // (KxLogicSys.cc `DevRegMsgCallBack` → KxSession.cc `updateDevSessionId`
                    // → `RandIVData`); the session id stays, as it does there.
                    Kind::Request { dev_id: from, .. } if frame.header.msg_id == id::REGISTER => {
                        if from != dev_id {
                            core.counters.bad_sessions.fetch_add(1, Ordering::Relaxed);
                            if may_log(&core, bad_in_a_row + 1) {
                                tracing::warn!(event = "kingxun_reregister_other_id", peer = %peer, dev_id, from, "1001 for another device id on a live link refused");
                            }
                            Box::pin(refuse(&mut wr, id::REGISTER, frame.header.seq, RESP_BAD_DEVICE)).await;
                            if too_many_bad(&core, &mut bad_in_a_row, &peer) {
                                break "too many bad frames in a row";
                            }
                        } else {
                            match Box::pin(answer_register(&mut wr, frame.header.seq, session_id)).await {
                                Some(iv) => {
                                    session.iv = iv;
                                    tracing::info!(event = "kingxun_reregistered", peer = %peer, dev_id, "device registered again on its live link; new IV");
                                }
                                None => break "write failed",
                            }
                        }
                    }
                    // kxSvr checks a request by its SessionId alone (KxSession.cc
                    // `checkMsgHeader`); checking DevId too is stricter and safe, since a
                    // device always puts its own id there (KxClient.cpp sets it on every frame).
                    Kind::Request { dev_id: from, session_id: sid } => {
                        let right_session = from == dev_id && sid == session_id;
                        // Only frames that fail the session or the key count towards closing
                        // the link: a body this bridge cannot read from a device that holds
                        // its key is refused but does not end the link.
                        let opens = !frame.header.crypt || session.open_body(&frame).is_ok();
                        let suspect = !right_session || !opens;
                        if right_session && !session.proven && !session.phantom && frame.header.crypt && opens {
                            Box::pin(prove(&core, &mut session, link_id, &cmd_tx, sw_version, &peer)).await;
                        }
                        let (code, body) = if !right_session {
                            core.counters.bad_sessions.fetch_add(1, Ordering::Relaxed);
                            if may_log(&core, bad_in_a_row + 1) {
                                tracing::warn!(event = "kingxun_bad_session", peer = %peer, dev_id, from, "frame with a wrong DevId or SessionId refused");
                            }
                            (RESP_REJECTED, Vec::new())
                        } else if !session.proven && frame.header.crypt {
                            // Sealed, but not with this device's key and session IV.
                            core.counters.decrypt_failures.fetch_add(1, Ordering::Relaxed);
                            if may_log(&core, bad_in_a_row + 1) {
                                tracing::warn!(event = "kingxun_decrypt_failed", peer = %peer, dev_id, msg_id = frame.header.msg_id, "sealed frame does not open with the device's key; the link stays untrusted");
                            }
                            (RESP_REJECTED, Vec::new())
                        } else if !session.proven {
                            // Answered as usual (a real device goes on reporting), but
                            // nothing a link that has not shown the key says is published.
                            core.counters.unproven_frames.fetch_add(1, Ordering::Relaxed);
                            if !unproven_logged && !session.phantom {
                                unproven_logged = true;
                                tracing::warn!(event = "kingxun_unproven_link", peer = %peer, dev_id, msg_id = frame.header.msg_id,
                                    "plain frames from a link that has not yet sent an encrypted one: ignored until it proves the device key (see kingxun.accept_plain_frames)");
                            }
                            unproven_answer(&core, &frame)
                        } else {
                            Box::pin(handle_request(&core, &session, &frame, &mut model_known, bad_in_a_row + 1)).await
                        };
                        let resp = Frame::response(frame.header.msg_id, frame.header.seq, code, false, Bytes::from(body));
                        if Box::pin(write_frame(&mut wr, &resp)).await.is_err() {
                            break "write failed";
                        }
                        if !suspect {
                            bad_in_a_row = 0;
                        } else if too_many_bad(&core, &mut bad_in_a_row, &peer) {
                            break "too many bad frames in a row";
                        }
                    }
                }
            }
        }
        partial_since = match (frames.read_buffer().is_empty(), partial_since) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            (false, None) => Some(Instant::now()),
        };
    };
    if session.phantom {
        tracing::debug!(event = "kingxun_link_closed", peer = %peer, dev_id, reason, "unknown device's link closed");
    } else {
        tracing::info!(event = "kingxun_link_closed", peer = %peer, dev_id, reason, "device link closed");
    }
    for (_, (cmd, _)) in pending.drain() {
        let _ = cmd
            .request
            .progress
            .try_send(CommandProgress::Failed("device link closed".into()));
    }
    let still_ours = core.links.lock().map(|mut l| {
        if l.get(&dev_id).is_some_and(|(id, _)| *id == link_id) {
            l.remove(&dev_id);
            true
        } else {
            false
        }
    });
    if still_ours.unwrap_or(false) {
        Box::pin(core.updates.availability(vid, false)).await;
    }
    Box::pin(core.open_links.closed(&core.updates)).await;
}

/// The link proved the device's key (or the config trusts plain frames for this device):
/// from now on it is the device's link, displacing any older one.
async fn prove(
    core: &Core,
    session: &mut Session,
    link_id: u64,
    cmd_tx: &LinkSender,
    sw_version: Option<u32>,
    peer: &SocketAddr,
) {
    session.proven = true;
    let dev_id = session.dev_id;
    let replaced = core
        .links
        .lock()
        .ok()
        .and_then(|mut l| l.insert(dev_id, (link_id, cmd_tx.clone())));
    if replaced.is_some() {
        tracing::info!(
            event = "kingxun_link_replaced",
            dev_id,
            "device reconnected; the new link replaces the old one"
        );
    }
    tracing::info!(event = "kingxun_link_proven", peer = %peer, dev_id, link = link_id, "device link trusted");
    let _ = core
        .updates
        .send(Update::Vehicle(core.info(dev_id, sw_version, None)))
        .await;
    core.updates.availability(vehicle_id(dev_id), true).await;
}
