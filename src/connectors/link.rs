//! The TCP link runtime shared by the device listeners (kingxun, EXLIVE): a listener
//! that queues a reconnect storm, and the accept loop with every limit a listener owes
//! its peers: `max_links` in total, `max_links_per_address` per peer address, a
//! back-off when accepting fails (out of file descriptors), and refusals counted and
//! logged at powers of two. Each admitted connection runs the protocol's own link
//! handler in its own task; what a link reads and writes stays with its protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{AcceptBackoff, PeerLinks};

/// Pending connections a device listener queues before accepting them: a cell outage
/// ending sends thousands of trackers at once (kxSvr listens with 4 096 too; tokio's
/// `bind` queues 128). The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A device listener on `addr` with [`LISTEN_BACKLOG`].
pub async fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As tokio's bind: a restarted bridge gets its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How many links a listener holds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_links: usize,
    pub per_address: usize,
}

/// Accepts connections until `shutdown`, runs `serve(stream, peer)` for each one the
/// limits admit, and closes the others at once. `connector` names the events
/// (`<connector>_link_refused`, `<connector>_accept_failed`); `refused` counts refusals.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    connector: &'static str,
    limits: Limits,
    refused: &AtomicU64,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_links));
    let peers = Arc::new(PeerLinks::default());
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(err) => {
                // Usually out of file descriptors: wait instead of spinning.
                let (wait, log) = backoff.failed();
                if log {
                    tracing::warn!(event = format!("{connector}_accept_failed").as_str(), error = %err,
                        wait_ms = wait.as_millis() as u64, "accept failed (out of file descriptors?)");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(n) = crate::observe::count_sampled(refused) {
                tracing::warn!(event = format!("{connector}_link_refused").as_str(), peer = %peer,
                    max_links = limits.max_links, total_refused = n, "link refused: max_links reached");
            }
            continue;
        };
        let Some(slot) = peers.admit(peer.ip(), limits.per_address) else {
            if let Some(n) = crate::observe::count_sampled(refused) {
                tracing::warn!(event = format!("{connector}_link_refused").as_str(), peer = %peer,
                    per_address = limits.per_address, total_refused = n,
                    "link refused: max_links_per_address reached");
            }
            continue;
        };
        // Boxed: a task stores the future it is given and again the one it awaits, so
        // an unboxed link handler would be held twice (3.2 KB a link instead of 1.6).
        let link = Box::pin(serve(stream, peer));
        tokio::spawn(async move {
            link.await;
            drop((permit, slot));
        });
    }
}

#[cfg(all(test, target_os = "linux"))]
mod listen_tests {
    /// 1 500 devices connect at once to a listener that accepts nobody yet (a bridge busy
    /// with the first of them): every connection completes within 500 ms. With tokio's
    /// own `bind` only 129 do; the rest wait for the kernel's SYN retries.
    #[tokio::test]
    async fn device_listeners_queue_a_reconnect_storm() {
        const STORM: usize = 1_500;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        assert!(
            somaxconn > STORM,
            "net.core.somaxconn {somaxconn} caps every backlog"
        );
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct passed by pointer.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        assert!(
            limit.rlim_cur as usize > STORM + 100,
            "open file limit {}",
            limit.rlim_cur
        );
        let listener = super::listen(([127, 0, 0, 1], 0).into()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut storm = tokio::task::JoinSet::new();
        for _ in 0..STORM {
            storm.spawn(async move {
                let wait = std::time::Duration::from_millis(500);
                tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await
            });
        }
        let mut linked = Vec::new();
        while let Some(done) = storm.join_next().await {
            if let Ok(Ok(stream)) = done.unwrap() {
                linked.push(stream);
            }
        }
        assert_eq!(linked.len(), STORM, "connections queued without an accept");
        drop(listener);
    }
}
