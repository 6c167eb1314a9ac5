//! Device links: registration, session checks, requests and their responses, commands
//! matched to their answers by SeqNum.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::OptionFuture;
use futures_util::FutureExt;
use rand::Rng;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::requests::*;
use super::{now_secs, vehicle_id, LinkCommand, LinkSender, Shared};
use crate::connector::Update;
use crate::connectors::link::Mailbox;
use crate::model::CommandProgress;
use crate::protocol::kingxun::codec::CodecError;
use crate::protocol::kingxun::session::{self, LinkEvent, Opening, Session};
use crate::protocol::kingxun::{Decoded, Frame, KxCodec};

pub(super) async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let limits = crate::connectors::link::Limits {
        max_links: shared.config.max_links,
        per_address: shared.config.links_per_address(),
        proxy_protocol: shared.config.proxy_protocol,
    };
    let refused = &shared.counters.links_refused;
    crate::connectors::link::accept_loop(
        listener,
        "kingxun",
        limits,
        refused,
        shutdown.clone(),
        |stream, peer| connection(stream, peer, shared.clone(), shutdown.clone()),
    )
    .await;
}

/// A connection's life: admission, then the link. Two futures one after the other, so
/// the link's future (what 10 000 links cost) keeps nothing of admission's.
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    Box::pin(admit(stream, peer, shared, shutdown))
        .then(|link| OptionFuture::from(link.map(Link::run)))
        .map(drop)
}

pub(super) async fn write_frame(wr: &mut OwnedWriteHalf, frame: &Frame) -> std::io::Result<()> {
    crate::connectors::link::write_all(wr, &frame.to_bytes()).await
}

type Frames = crate::connectors::link::Reader<tokio::net::tcp::OwnedReadHalf, KxCodec>;

/// Whether a bad frame may be logged (see `LogLimiter::allow_bad_input`).
pub(super) fn may_log(shared: &Shared, in_a_row: u32) -> bool {
    shared.bad_input_log.allow_bad_input(in_a_row, "kingxun")
}

/// Waits for this address block's registration budget (the same for every device id, so
/// timing tells a guesser nothing); false when the wait would pass `read_timeout`.
async fn registration_turn(shared: &Shared, peer: &SocketAddr) -> bool {
    let attempt = shared
        .registrations
        .attempt(peer.ip(), shared.config.read_timeout)
        .await;
    let throttled = match &attempt {
        Ok(admitted) => !admitted.waited().is_zero(),
        Err(_) => true,
    };
    if throttled {
        shared
            .counters
            .registrations_throttled
            .fetch_add(1, Ordering::Relaxed);
    }
    attempt.is_ok()
}

/// A command on the link, as the session keeps it until the device answers.
type Waiting = Box<LinkCommand>;

/// One registered device link: the I/O around its sans-IO session
/// (`protocol::kingxun::session`). It lives as long as the device stays linked, so its
/// future is what 10 000 links cost: it waits on one frame, one command, one timer and
/// shutdown, and boxes the awaits that hold much state while they run (writes, a
/// request's handling, updates).
struct Link {
    frames: Frames,
    wr: OwnedWriteHalf,
    session: Session<Waiting>,
    /// What the session asked for and the link has not yet done.
    outputs: Vec<session::Output<Waiting>>,
    model_known: bool,
    context: LinkContext,
}

/// What a link keeps beside its session and its I/O.
struct LinkContext {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    peer: SocketAddr,
    id: u64,
    mailbox: LinkSender,
    sw_version: Option<u32>,
}

impl Link {
    // Not an `async fn`: its future would keep `self` twice (the argument, and the
    // local it is moved into), 330 bytes a link. The block below holds it once.
    fn run(self) -> impl std::future::Future<Output = ()> + Send {
        let mut this = self;
        async move {
            let reason = this.serve().await;
            Box::pin(this.closed(reason)).await;
        }
    }

    /// Runs the link until it closes, and says why.
    async fn serve(&mut self) -> session::CloseReason {
        'link: loop {
            // One at a time from the front, no iterator held across the awaits.
            self.outputs.reverse();
            loop {
                let Some(output) = self.outputs.pop() else {
                    // Emptied, not kept: its room would stay 10 000 links long.
                    self.outputs = Vec::new();
                    break;
                };
                let done = self.context.carry_out(
                    output,
                    &mut self.session,
                    &mut self.wr,
                    &mut self.model_known,
                );
                if let Err(reason) = Box::pin(done).await {
                    break 'link reason;
                }
            }
            let Link {
                frames,
                wr,
                session,
                context: link,
                ..
            } = self;
            session.note_buffer(frames.has_partial(), Instant::now());
            let deadline = session.next_deadline();
            // Only a command awaits after the select, and it alone is kept across that
            // await (a frame's result would widen every link's future).
            let command = tokio::select! {
                _ = link.shutdown.cancelled() => break 'link "shutdown",
                _ = sleep_until(deadline) => {
                    self.outputs = session.on_timer(Instant::now(), frames.has_partial());
                    continue 'link;
                }
                cmd = link.mailbox.recv() => cmd,
                frame = next_frame(frames, link, session) => match frame {
                    Ok(frame) => {
                        self.outputs = session.on_frame(frame, Instant::now(), rand::rng().random());
                        continue 'link;
                    }
                    Err(reason) => break 'link reason,
                },
            };
            if let Err(reason) = Box::pin(send_command(command, session, wr)).await {
                break 'link reason;
            }
        }
    }

    /// The link is over: its commands fail, and the device is offline unless a newer
    /// link has taken its place.
    async fn closed(self, reason: session::CloseReason) {
        let Link {
            mut session,
            context: link,
            ..
        } = self;
        let (shared, dev_id, peer) = (&link.shared, session.dev_id, link.peer);
        if session.phantom() {
            tracing::debug!(event = "kingxun_link_closed", peer = %peer, dev_id, reason, "unknown device's link closed");
        } else {
            tracing::info!(event = "kingxun_link_closed", peer = %peer, dev_id, reason, "device link closed");
        }
        let queued = link.mailbox.close();
        for cmd in session.take_pending().chain(queued) {
            let _ = cmd
                .request
                .progress
                .try_send(CommandProgress::Failed("device link closed".into()));
        }
        let still_ours = shared.links.lock().map(|mut l| {
            if l.get(&dev_id).is_some_and(|(id, _, _)| *id == link.id) {
                l.remove(&dev_id);
                true
            } else {
                false
            }
        });
        if still_ours.unwrap_or(false) {
            shared.updates.availability(vehicle_id(dev_id), false).await;
        }
        shared.open_links.closed(&shared.updates).await;
    }
}

/// Seals a command for the device and sends it; a write that fails closes the link and
/// fails every command waiting on it.
async fn send_command(
    cmd: Waiting,
    session: &mut Session<Waiting>,
    wr: &mut OwnedWriteHalf,
) -> Result<(), session::CloseReason> {
    let dev_id = session.dev_id;
    match session.send_command(cmd.control, cmd, now_secs(), Instant::now()) {
        Ok(frame) => {
            if let Err(err) = write_frame(wr, &frame).await {
                for cmd in session.take_pending() {
                    let failed = CommandProgress::Failed(format!("send failed: {err}"));
                    let _ = cmd.request.progress.try_send(failed);
                }
                return Err("write failed");
            }
            tracing::info!(
                event = "kingxun_command_sent",
                dev_id,
                msg_id = frame.header.msg_id,
                seq = frame.header.seq
            );
        }
        Err((cmd, why)) => {
            let _ = cmd.request.progress.try_send(CommandProgress::Failed(why));
        }
    }
    Ok(())
}

/// A new connection up to its registration: the first frame within `read_timeout`, a 1001,
/// the address block's registration budget. `None` closes it.
async fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Option<Link> {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut codec = KxCodec::new(shared.config.max_body);
    codec.max_trip_body = shared.config.max_trip_body;
    let mut frames = Frames::new(rd, codec);

    // Registration: the first frame, within read_timeout.
    let mut skipped = 0u32;
    let first = tokio::select! {
        _ = shutdown.cancelled() => return None,
        f = timeout(shared.config.read_timeout, first_frame(&mut frames, &peer, &shared, &mut skipped)) => f,
    };
    let frame = match first {
        Ok(Some(f)) => f,
        Ok(None) => return None,
        Err(_) => {
            shared.counters.stalled.fetch_add(1, Ordering::Relaxed);
            tracing::info!(event = "kingxun_no_register", peer = %peer, "no registration within read_timeout; closing");
            return None;
        }
    };
    let (dev_id, seq, register) = match session::opening(&frame) {
        Opening::Register {
            dev_id,
            seq,
            register,
        } => (dev_id, seq, register),
        Opening::Refused { reply } => {
            if let Some(reply) = reply {
                if may_log(&shared, 1) {
                    tracing::warn!(event = "kingxun_not_registered", peer = %peer, msg_id = frame.header.msg_id, "first frame is not 1001; closing");
                }
                shared.counters.bad_bodies.fetch_add(1, Ordering::Relaxed);
                let _ = write_frame(&mut wr, &reply).await;
            }
            return None;
        }
    };
    if !Box::pin(registration_turn(&shared, &peer)).await {
        return None;
    }
    let known_key = shared.devices.get(&dev_id).and_then(|d| d.key);
    let phantom = known_key.is_none();
    if phantom {
        shared
            .counters
            .unknown_devices
            .fetch_add(1, Ordering::Relaxed);
        crate::status_page::problems::record(
            "kingxun_unknown_device",
            peer,
            format!("device id {dev_id} tried to register; it is not in [[kingxun.devices]]"),
        );
        if may_log(&shared, 1) {
            tracing::warn!(event = "kingxun_unknown_device", peer = %peer, dev_id,
                "unknown device id: answered like any registration, but nothing it sends is used (add it to [[kingxun.devices]])");
        }
    }
    let start = session::Start {
        dev_id,
        seq,
        key: known_key.unwrap_or_else(|| rand::rng().random()),
        phantom,
        trusted: shared.accepts_plain(dev_id),
        profile: shared.profile(dev_id),
        session_id: rand::rng().random_range(1..=u32::MAX),
        iv: rand::rng().random(),
        first_seq: rand::rng().random(),
    };
    let (session, outputs) =
        Session::<Waiting>::register(start, shared.link_settings.clone(), Instant::now());
    let id = shared.next_link.fetch_add(1, Ordering::Relaxed);
    if !phantom {
        tracing::info!(event = "kingxun_registered", peer = %peer, dev_id, link = id, "device registered");
    }
    shared.open_links.opened(&shared.updates).await;
    Some(Link {
        frames,
        wr,
        session,
        outputs,
        model_known: false,
        context: LinkContext {
            sw_version: register.software_version(),
            shared,
            // Its own, so that a cluster release ends this link alone.
            shutdown: shutdown.child_token(),
            peer,
            id,
            mailbox: Mailbox::new(16),
        },
    })
}

/// The first frame; junk before it is counted and skipped. `None` ends the link.
async fn first_frame(
    frames: &mut Frames,
    peer: &SocketAddr,
    shared: &Shared,
    skipped: &mut u32,
) -> Option<Frame> {
    loop {
        match frames.next().await? {
            Ok(Decoded::Frame(f)) => return Some(f),
            Ok(Decoded::Skipped(n)) => {
                *skipped += 1;
                log_skipped(shared, peer, n, *skipped);
                if *skipped >= crate::connectors::BAD_IN_A_ROW {
                    log_too_many_bad(shared, peer, *skipped);
                    return None;
                }
            }
            Err(e) => {
                log_codec_error(shared, peer, e);
                return None;
            }
        }
    }
}

/// The next frame on a registered link; junk is counted and skipped (the session closes
/// the link after too much of it). Polled by hand: it waits in every link's future, and
/// an `async fn` would hold its arguments again beside the read it awaits.
fn next_frame<'a>(
    frames: &'a mut Frames,
    link: &'a LinkContext,
    session: &'a mut Session<Waiting>,
) -> impl std::future::Future<Output = Result<Frame, session::CloseReason>> + 'a {
    std::future::poll_fn(move |cx| loop {
        let next = match frames.poll_next(cx) {
            std::task::Poll::Ready(next) => next,
            std::task::Poll::Pending => return std::task::Poll::Pending,
        };
        let ended = match next {
            None => Err("link closed"),
            Some(Ok(Decoded::Frame(f))) => Ok(f),
            Some(Ok(Decoded::Skipped(n))) => {
                log_skipped(&link.shared, &link.peer, n, session.bad_in_a_row() + 1);
                let Some(session::Output::Close(reason)) = session.on_skipped() else {
                    continue;
                };
                let in_a_row = session.bad_in_a_row();
                link.event(LinkEvent::TooManyBad { in_a_row }, session.dev_id);
                Err(reason)
            }
            Some(Err(e)) => {
                log_codec_error(&link.shared, &link.peer, e);
                Err("link closed")
            }
        };
        return std::task::Poll::Ready(ended);
    })
}

fn log_skipped(shared: &Shared, peer: &SocketAddr, skipped: usize, in_a_row: u32) {
    shared.counters.bad_headers.fetch_add(1, Ordering::Relaxed);
    if may_log(shared, in_a_row) {
        tracing::warn!(event = "kingxun_bad_header", peer = %peer, skipped, "bad header (CRC or flags); bytes skipped");
    }
}

fn log_too_many_bad(shared: &Shared, peer: &SocketAddr, in_a_row: u32) {
    shared
        .counters
        .malformed_closed
        .fetch_add(1, Ordering::Relaxed);
    if may_log(shared, 1) {
        tracing::warn!(event = "kingxun_bad_link_closed", peer = %peer, in_a_row, "too many bad frames in a row; closing link");
    }
}

fn log_codec_error(shared: &Shared, peer: &SocketAddr, err: CodecError) {
    match err {
        CodecError::TooLarge { len, max } => {
            shared.counters.oversized.fetch_add(1, Ordering::Relaxed);
            if may_log(shared, 1) {
                tracing::warn!(event = "kingxun_oversized", peer = %peer, len, max, "MsgBodyLen over the limit; closing link");
            }
        }
        CodecError::Io(err) => {
            tracing::debug!(event = "kingxun_link_io", peer = %peer, error = %err)
        }
    }
}

impl LinkContext {
    /// Does what the session asked; `Err` closes the link.
    async fn carry_out(
        &self,
        output: session::Output<Waiting>,
        session: &mut Session<Waiting>,
        wr: &mut OwnedWriteHalf,
        model_known: &mut bool,
    ) -> Result<(), session::CloseReason> {
        let shared = &*self.shared;
        let dev_id = session.dev_id;
        match output {
            session::Output::Send(frame) => {
                write_frame(wr, &frame).await.map_err(|_| "write failed")?
            }
            session::Output::Proven => self.prove(dev_id).await,
            session::Output::Request { frame, body } => {
                let (code, body) =
                    handle_request(shared, dev_id, &frame, body, model_known, 1).await;
                write_frame(wr, &session::reply(&frame, code, body))
                    .await
                    .map_err(|_| "write failed")?;
            }
            session::Output::Done(cmd, outcome) => {
                let progress = match outcome {
                    session::Outcome::Succeeded => {
                        if !cmd.after.values.is_empty() {
                            let vid = vehicle_id(dev_id);
                            shared.updates.merge_state(vid, cmd.after.clone()).await;
                        }
                        shared.remember_guard(dev_id, &cmd.control);
                        CommandProgress::Succeeded
                    }
                    session::Outcome::Failed(why) => CommandProgress::Failed(why),
                    session::Outcome::TimedOut => {
                        let secs = shared.config.command_timeout.as_secs_f64();
                        CommandProgress::TimedOut(format!("device did not answer within {secs}s"))
                    }
                };
                let _ = cmd.request.progress.try_send(progress);
            }
            // An unknown id is answered like a known one, but not logged as one.
            session::Output::Event(LinkEvent::Unproven { .. }) if session.phantom() => {
                shared
                    .counters
                    .unproven_frames
                    .fetch_add(1, Ordering::Relaxed);
            }
            session::Output::Event(event) => self.event(event, dev_id),
            session::Output::Close(reason) => return Err(reason),
        }
        Ok(())
    }

    /// Counts and (rate-limited) logs what the session saw.
    fn event(&self, event: LinkEvent, dev_id: u32) {
        let (shared, peer) = (&*self.shared, &self.peer);
        let c = &shared.counters;
        match event {
            LinkEvent::BadSession { from } => {
                c.bad_sessions.fetch_add(1, Ordering::Relaxed);
                if may_log(shared, 1) {
                    tracing::warn!(event = "kingxun_bad_session", peer = %peer, dev_id, from, "frame with a wrong DevId or SessionId refused");
                }
            }
            LinkEvent::ReregisterOtherId { from } => {
                c.bad_sessions.fetch_add(1, Ordering::Relaxed);
                if may_log(shared, 1) {
                    tracing::warn!(event = "kingxun_reregister_other_id", peer = %peer, dev_id, from, "1001 for another device id on a live link refused");
                }
            }
            LinkEvent::Reregistered => {
                tracing::info!(event = "kingxun_reregistered", peer = %peer, dev_id, "device registered again on its live link; new IV");
            }
            LinkEvent::DecryptFailed { msg_id } => {
                c.decrypt_failures.fetch_add(1, Ordering::Relaxed);
                if may_log(shared, 1) {
                    tracing::warn!(event = "kingxun_decrypt_failed", peer = %peer, dev_id, msg_id, "sealed frame does not open with the device's key and session IV; refused");
                }
            }
            LinkEvent::Unproven { msg_id, first } => {
                c.unproven_frames.fetch_add(1, Ordering::Relaxed);
                if first {
                    crate::status_page::problems::record(
                        "kingxun_plain_frames",
                        peer,
                        format!("device {dev_id} sends only plain frames: ignored until it sends an encrypted one (kingxun.accept_plain_frames)"),
                    );
                    tracing::warn!(event = "kingxun_unproven_link", peer = %peer, dev_id, msg_id,
                        "plain frames from a link that has not yet sent an encrypted one: ignored until it proves the device key (see kingxun.accept_plain_frames)");
                }
            }
            LinkEvent::ResponseMismatch { seq, msg_id } => {
                tracing::warn!(
                    event = "kingxun_response_mismatch",
                    dev_id,
                    seq,
                    msg_id,
                    "response's MsgId does not match the command with this SeqNum; ignored"
                );
            }
            LinkEvent::UnexpectedResponse { seq } => {
                tracing::debug!(event = "kingxun_unexpected_response", dev_id, seq);
            }
            LinkEvent::TooManyBad { in_a_row } => log_too_many_bad(shared, peer, in_a_row),
            LinkEvent::IdleClosed => {
                c.idle_closed.fetch_add(1, Ordering::Relaxed);
            }
            LinkEvent::Stalled => {
                c.stalled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The link proved the device's key (or the config trusts plain frames for this
    /// device): from now on it is the device's link, displacing any older one.
    async fn prove(&self, dev_id: u32) {
        let shared = &*self.shared;
        let replaced = shared.links.lock().ok().and_then(|mut l| {
            l.insert(
                dev_id,
                (self.id, self.mailbox.clone(), self.shutdown.clone()),
            )
        });
        if replaced.is_some() {
            tracing::info!(
                event = "kingxun_link_replaced",
                dev_id,
                "device reconnected; the new link replaces the old one"
            );
        }
        tracing::info!(event = "kingxun_link_proven", peer = %self.peer, dev_id, link = self.id, "device link trusted");
        let _ = shared
            .updates
            .send(Update::Vehicle(shared.info(dev_id, self.sw_version, None)))
            .await;
        shared.updates.availability(vehicle_id(dev_id), true).await;
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::connectors::{link::task, PeerLink};
    use tokio::sync::OwnedSemaphorePermit as Permit;

    type Args = (
        TcpStream,
        SocketAddr,
        Arc<Shared>,
        CancellationToken,
        Permit,
        PeerLink,
    );

    /// The size of what `f` returns, from its type alone: `f` is never called (a link
    /// needs a running connector's `Shared`), and a future's size is its type's.
    fn returned<R>(_: impl FnOnce(Args) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// 10 000 linked devices cost 10 000 of these; measured under `cargo test` (debug).
    /// Shrinking passes, growing fails: the nightly `-Zprint-type-sizes` shows what grew
    /// (docs/ARCHITECTURE.md, "Memory").
    #[test]
    fn a_kingxun_link_and_its_task_keep_their_size() {
        let link = returned(|(s, p, c, d, _, _)| connection(s, p, c, d));
        assert!(link <= 632, "the kingxun link future grew to {link} bytes (632): see -Zprint-type-sizes in docs/ARCHITECTURE.md \"Memory\"");
        // What the listener spawns: the link, its permit and its address slot. tokio's
        // task cell around it (header, scheduler, trailer; 128-byte lines) is not seen
        // from here: a counting allocator measured 896 bytes around a future of this
        // size (tokio 1.54, x86_64), and the same for any from 657 to 784 bytes.
        let task =
            returned(|(s, p, c, d, permit, slot)| task(connection(s, p, c, d), permit, slot));
        assert!(task <= 680, "the kingxun link task's future grew to {task} bytes (680): see -Zprint-type-sizes in docs/ARCHITECTURE.md \"Memory\"");
    }
}
