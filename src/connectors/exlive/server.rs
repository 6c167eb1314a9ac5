//! Server role: trackers and platforms log in with 1000 and push 1007.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::{Core, LINK_QUEUE};
use crate::protocol::exlive::{Frame, Message, SplitError, Splitter};

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed logins are remembered per address for this long.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
const FAILURE_TABLE_MAX: usize = 10_000;

/// Slows down repeated failed logins from one address: 0.25 s, 0.5 s, 1 s ... up to 8 s.
#[derive(Default)]
pub(super) struct LoginThrottle {
    failures: HashMap<IpAddr, (u32, Instant)>,
}

impl LoginThrottle {
    pub(super) fn delay(&mut self, ip: IpAddr, now: Instant) -> Duration {
        match self.failures.get(&ip) {
            Some((n, at)) if now.duration_since(*at) < FAILURE_WINDOW && *n > 0 => {
                Duration::from_millis(250u64 << (n - 1).min(5))
            }
            _ => Duration::ZERO,
        }
    }

    pub(super) fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.failures.len() >= FAILURE_TABLE_MAX {
            self.failures
                .retain(|_, (_, at)| now.duration_since(*at) < FAILURE_WINDOW);
            if self.failures.len() >= FAILURE_TABLE_MAX {
                self.failures.clear();
            }
        }
        let entry = self.failures.entry(ip).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
    }

    pub(super) fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

pub(super) async fn run(
    listener: TcpListener,
    core: Arc<Core>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(core.config.max_links));
    let throttle = Arc::new(Mutex::new(LoginThrottle::default()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (core, throttle, shutdown) = (core.clone(), throttle.clone(), shutdown.clone());
                        tokio::spawn(async move {
                            serve_link(stream, peer, core, throttle, shutdown).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        let n = core.counters.links_refused.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(event = "exlive_link_refused", peer = %peer, max_links = core.config.max_links,
                                total_refused = n, "EXLIVE link refused: max_links reached");
                        }
                        drop(stream);
                    }
                },
                Err(err) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(event = "exlive_accept_failed", error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn write_line(wr: &mut OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    let mut data = Vec::with_capacity(line.len() + 1);
    data.extend_from_slice(line.as_bytes());
    data.push(b'\n');
    match timeout(WRITE_TIMEOUT, wr.write_all(&data)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// Reads the next decodable message; malformed ones are logged, counted and skipped.
/// `None` when the link is done (closed, oversized object, I/O error).
pub(super) async fn next_message(
    frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, Splitter>,
    peer: &str,
    core: &Core,
) -> Option<Message> {
    loop {
        match frames.next().await? {
            Ok(Frame::Object(raw)) => match Message::decode(&raw) {
                Ok(msg) => return Some(msg),
                Err(err) => {
                    core.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(event = "exlive_malformed", peer, error = %err, "EXLIVE message dropped");
                }
            },
            Ok(Frame::Malformed(raw)) => {
                core.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = "exlive_malformed",
                    peer,
                    bytes = raw.len(),
                    "EXLIVE message without its closing brace dropped"
                );
            }
            Err(SplitError::TooLarge { max }) => {
                core.counters.oversized.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = "exlive_oversized",
                    peer,
                    max,
                    "EXLIVE message too large; closing link"
                );
                return None;
            }
            Err(SplitError::Io(err)) => {
                tracing::debug!(event = "exlive_link_io", peer, error = %err);
                return None;
            }
        }
    }
}

/// Checks credentials against every account without stopping at the first match.
fn credentials_ok(core: &Core, name: &str, pass: &str) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for account in &core.config.accounts {
        ok |= account.name.as_bytes().ct_eq(name.as_bytes())
            & account.password.expose().as_bytes().ct_eq(pass.as_bytes());
    }
    ok.into()
}

async fn serve_link(
    stream: TcpStream,
    peer: SocketAddr,
    core: Arc<Core>,
    throttle: Arc<Mutex<LoginThrottle>>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let peer_s = peer.to_string();
    let (rd, mut wr) = stream.into_split();
    let mut frames =
        FramedRead::with_capacity(rd, Splitter::new(core.config.max_message_size), 1024);
    let hb = core.config.heartbeat_timeout;

    // Login: the first message, within the heartbeat timeout.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = timeout(hb, next_message(&mut frames, &peer_s, &core)) => r,
    };
    let (name, pass) = match first {
        Ok(Some(Message::Login { name, pass, .. })) => (name, pass),
        Ok(Some(other)) => {
            tracing::warn!(event = "exlive_not_logged_in", peer = %peer, cmd = other.cmd(), "message before login refused");
            let ack = Message::Ack {
                cmd: other.cmd().to_string(),
                result: "not logged in".into(),
            };
            let _ = write_line(&mut wr, &ack.encode()).await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            core.counters
                .heartbeat_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(event = "exlive_login_timeout", peer = %peer, "no login within heartbeat_timeout; closing");
            return;
        }
    };
    let delay = throttle
        .lock()
        .map(|mut t| t.delay(peer.ip(), Instant::now()))
        .unwrap_or_default();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if !credentials_ok(&core, &name, &pass) {
        core.counters.logins_failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = throttle.lock() {
            t.failed(peer.ip(), Instant::now());
        }
        tracing::warn!(event = "exlive_login_failed", peer = %peer, user = %name, "EXLIVE login refused");
        let ack = Message::Ack {
            cmd: "1000".into(),
            result: "fail".into(),
        };
        let _ = write_line(&mut wr, &ack.encode()).await;
        return;
    }
    if let Ok(mut t) = throttle.lock() {
        t.succeeded(peer.ip());
    }
    if write_line(
        &mut wr,
        &Message::Ack {
            cmd: "1000".into(),
            result: "success".into(),
        }
        .encode(),
    )
    .await
    .is_err()
    {
        return;
    }
    let (out_tx, mut out_rx) = mpsc::channel::<String>(LINK_QUEUE);
    let link = core.new_link(out_tx);
    tracing::info!(event = "exlive_login", peer = %peer, user = %name, link = link.id, "EXLIVE link logged in");
    core.links.opened(&core.updates).await;

    let mut deadline = Instant::now() + hb;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sleep_until(deadline) => {
                core.counters.heartbeat_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event = "exlive_heartbeat_timeout", peer = %peer, link = link.id, "no data within heartbeat_timeout; closing");
                break;
            }
            msg = next_message(&mut frames, &peer_s, &core) => match msg {
                Some(msg) => {
                    deadline = Instant::now() + hb;
                    if let Message::Login { .. } = msg {
                        continue; // a repeated login on a logged-in link changes nothing
                    }
                    if !core.on_message(&link, msg).await {
                        tracing::info!(event = "exlive_logout", peer = %peer, link = link.id, "EXLIVE link logged out");
                        break;
                    }
                }
                None => break,
            },
            Some(line) = out_rx.recv() => {
                if let Err(err) = write_line(&mut wr, &line).await {
                    tracing::warn!(event = "exlive_write_failed", peer = %peer, error = %err, "closing link");
                    break;
                }
            }
        }
    }
    core.link_closed(&link).await;
    core.links.closed(&core.updates).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_doubles_and_resets() {
        let mut t = LoginThrottle::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let now = Instant::now();
        assert_eq!(t.delay(ip, now), Duration::ZERO);
        t.failed(ip, now);
        assert_eq!(t.delay(ip, now), Duration::from_millis(250));
        t.failed(ip, now);
        t.failed(ip, now);
        assert_eq!(t.delay(ip, now), Duration::from_millis(1000));
        for _ in 0..20 {
            t.failed(ip, now);
        }
        assert_eq!(t.delay(ip, now), Duration::from_millis(8000));
        t.succeeded(ip);
        assert_eq!(t.delay(ip, now), Duration::ZERO);
    }
}
