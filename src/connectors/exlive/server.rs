//! Server role: trackers and platforms log in with 1000 and push 1007.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::{Shared, LINK_QUEUE};
use crate::protocol::exlive::session::{Session, Step};
use crate::protocol::exlive::{Frame, Message, SplitError, Splitter};

pub(super) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // One login at a time per address block, each failure slowing the next.
    let logins = Arc::new(crate::connectors::GuessThrottle::one_at_a_time());
    let limits = crate::connectors::link::Limits {
        max_links: shared.config.max_links,
        per_address: shared.config.links_per_address(),
        proxy_protocol: shared.config.proxy_protocol,
    };
    let refused = &shared.counters.links_refused;
    crate::connectors::link::accept_loop(
        listener,
        "exlive",
        limits,
        refused,
        shutdown.clone(),
        |stream, peer| {
            serve_link(
                stream,
                peer,
                shared.clone(),
                logins.clone(),
                shutdown.clone(),
            )
        },
    )
    .await;
    Ok(())
}

async fn write_line(wr: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let mut data = Vec::with_capacity(line.len() + 1);
    data.extend_from_slice(line.as_bytes());
    data.push(b'\n');
    crate::connectors::link::write_all(wr, &data).await
}

/// Logs one malformed message, unless the link or the listener has logged enough.
pub(super) fn log_malformed(
    shared: &Shared,
    peer: &str,
    in_a_row: u32,
    what: &dyn std::fmt::Display,
) {
    if shared.bad_input_log.allow_bad_input(in_a_row, "exlive") {
        tracing::warn!(event = "exlive_malformed", peer, detail = %what, "EXLIVE message dropped");
    }
}

/// Counts and logs a link closed for too many malformed messages in a row.
pub(super) fn log_malformed_closed(shared: &Shared, peer: &str, in_a_row: u32) {
    shared
        .counters
        .malformed_closed
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        event = "exlive_malformed_link_closed",
        peer,
        in_a_row,
        "too many malformed messages in a row; closing link"
    );
}

/// Counts and logs a link closed for an object over the size limit.
pub(super) fn log_oversized(shared: &Shared, peer: &str, max: usize) {
    shared.counters.oversized.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        event = "exlive_oversized",
        peer,
        max,
        "EXLIVE message too large; closing link"
    );
}

/// Reads the next decodable message; malformed ones are logged (rate-limited), counted
/// and skipped. `None` when the link is done (closed, oversized object, I/O error, or
/// `crate::connectors::BAD_IN_A_ROW` malformed messages in a row).
async fn next_message(
    frames: &mut crate::connectors::link::Reader<tokio::net::tcp::OwnedReadHalf, Splitter>,
    peer: &str,
    shared: &Shared,
) -> Option<Message> {
    let mut in_a_row = 0u32;
    loop {
        if in_a_row >= crate::connectors::BAD_IN_A_ROW {
            log_malformed_closed(shared, peer, in_a_row);
            return None;
        }
        match frames.next().await? {
            Ok(Frame::Object(raw)) => match Message::decode(&raw) {
                Ok(msg) => return Some(msg),
                Err(err) => {
                    shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    in_a_row += 1;
                    log_malformed(shared, peer, in_a_row, &err);
                }
            },
            Ok(Frame::Malformed(raw)) => {
                shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                in_a_row += 1;
                log_malformed(
                    shared,
                    peer,
                    in_a_row,
                    &format!("{} bytes without a closing brace", raw.len()),
                );
            }
            Err(SplitError::TooLarge { max }) => {
                log_oversized(shared, peer, max);
                return None;
            }
            Err(SplitError::Io(err)) => {
                tracing::debug!(event = "exlive_link_io", peer, error = %err);
                return None;
            }
        }
    }
}

/// The account these credentials open, checked against every account in constant time
/// without stopping at the first match.
fn account_for<'a>(
    shared: &'a Shared,
    name: &str,
    pass: &str,
) -> Option<&'a super::config::ExliveAccount> {
    let mut found = None;
    for account in &shared.config.accounts {
        let ok: bool = (account.name.as_bytes().ct_eq(name.as_bytes())
            & account.password.expose().as_bytes().ct_eq(pass.as_bytes()))
        .into();
        if ok && found.is_none() {
            found = Some(account);
        }
    }
    found
}

async fn serve_link(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    logins: Arc<crate::connectors::GuessThrottle>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let peer_s = peer.to_string();
    let (rd, mut wr) = stream.into_split();
    let mut frames =
        crate::connectors::link::Reader::new(rd, Splitter::new(shared.config.max_message_size));
    let hb = shared.config.heartbeat_timeout;

    // Login: the first message, within the heartbeat timeout.
    let mut session = Session::new(hb, Instant::now());
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = timeout(hb, next_message(&mut frames, &peer_s, &shared)) => r,
    };
    let (name, pass) = match first.map(|m| m.map(|m| session.on_message(m, Instant::now()))) {
        Ok(Some(Step::Login { name, pass })) => (name, pass),
        Ok(Some(Step::Refuse(answer))) => {
            tracing::warn!(event = "exlive_not_logged_in", peer = %peer, "message before login refused");
            let _ = write_line(&mut wr, &answer.encode()).await;
            return;
        }
        Ok(_) => return,
        Err(_) => {
            shared
                .counters
                .heartbeat_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(event = "exlive_login_timeout", peer = %peer, "no login within heartbeat_timeout; closing");
            return;
        }
    };
    // Parallel links of one address block queue here, so the delay grows with every
    // failure instead of being shared by all of them.
    let Ok(attempt) = logins.attempt(peer.ip(), Duration::MAX).await else {
        return;
    };
    let Some(account) = account_for(&shared, &name, &pass) else {
        shared
            .counters
            .logins_failed
            .fetch_add(1, Ordering::Relaxed);
        attempt.failed();
        crate::status_page::problems::record(
            "exlive_login_refused",
            peer,
            format!("account `{name}`: wrong name or password"),
        );
        tracing::warn!(event = "exlive_login_failed", peer = %peer, user = %name, "EXLIVE login refused");
        let _ = write_line(&mut wr, &Session::refused().encode()).await;
        return;
    };
    attempt.succeeded();
    let ack = session.logged_in_as(&account.vehicles, Instant::now());
    if write_line(&mut wr, &ack.encode()).await.is_err() {
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel::<String>(LINK_QUEUE);
    let link = shared.new_link(out_tx);
    tracing::info!(event = "exlive_login", peer = %peer, user = %name, link = link.id, "EXLIVE link logged in");
    shared.links.opened(&shared.updates).await;

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sleep_until(session.deadline()) => {
                shared.counters.heartbeat_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = "exlive_heartbeat_timeout", peer = %peer, link = link.id, "no data within heartbeat_timeout; closing");
                break;
            }
            msg = next_message(&mut frames, &peer_s, &shared) => {
                let Some(msg) = msg else { break };
                match session.on_message(msg, Instant::now()) {
                    Step::Deliver(msg) => {
                        if !shared.on_message(&link, msg).await {
                            tracing::info!(event = "exlive_logout", peer = %peer, link = link.id, "EXLIVE link logged out");
                            break;
                        }
                    }
                    Step::NotAllowed(id) => {
                        if let Some(n) = crate::observe::count_sampled(&shared.counters.not_allowed) {
                            crate::status_page::problems::record(
                                "exlive_vehicle_not_allowed",
                                peer,
                                format!("account `{name}` may not report vehicle `{id}` ({n} so far)"),
                            );
                            tracing::warn!(event = "exlive_vehicle_not_allowed", peer = %peer, user = %name, vehicle = %id, total = n,
                                "message for a vehicle this account may not report; dropped");
                        }
                    }
                    Step::Ignore | Step::Login { .. } | Step::Refuse(_) => {}
                }
            }
            Some(line) = out_rx.recv() => {
                if let Err(err) = write_line(&mut wr, &line).await {
                    tracing::warn!(event = "exlive_write_failed", peer = %peer, error = %err, "closing link");
                    break;
                }
            }
        }
    }
    shared.link_closed(&link).await;
    shared.links.closed(&shared.updates).await;
}
