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

use futures_util::FutureExt;
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

/// How many links a listener holds, and whether each starts with a PROXY v2 header.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_links: usize,
    pub per_address: usize,
    /// Every link starts with a PROXY protocol v2 header (a load balancer in front): the
    /// device's address is the header's, for the per-address limit and the logs; a link
    /// without one is refused.
    pub proxy_protocol: bool,
}

/// How long a link behind a load balancer has to send its PROXY header.
pub const PROXY_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a PROXY v2 header off the front of `stream`, in exact reads (the fixed 16 bytes,
/// then the length they give), so the device's own bytes stay in the socket for its
/// protocol. Returns the device's address: the header's, or `peer` for LOCAL.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyRefusal> {
    use crate::protocol::proxy_v2::{self, Origin, FIXED_LEN, MAX_PAYLOAD};
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buf = vec![0u8; FIXED_LEN];
        stream.read_exact(&mut buf).await?;
        // The fixed part tells the length (or refuses the bytes).
        if let Err(e) = proxy_v2::parse(&buf) {
            return Ok(Err(e));
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]])).min(MAX_PAYLOAD);
        buf.resize(FIXED_LEN + len, 0);
        stream.read_exact(&mut buf[FIXED_LEN..]).await?;
        Ok::<_, std::io::Error>(proxy_v2::parse(&buf))
    };
    match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read).await {
        Err(_) => Err(ProxyRefusal::Slow),
        Ok(Err(e)) => Err(ProxyRefusal::Io(e.kind())),
        Ok(Ok(Err(e))) => Err(ProxyRefusal::Header(e)),
        Ok(Ok(Ok(None))) => Err(ProxyRefusal::Header(proxy_v2::ProxyError::BadSignature)),
        Ok(Ok(Ok(Some(header)))) => Ok(match header.origin {
            Origin::Local => peer,
            Origin::Proxied { source, .. } => source,
        }),
    }
}

/// A PROXY header read: the device's address (or why not), the stream, the balancer's
/// address and the link's permit.
type ProxyRead = (
    Result<SocketAddr, ProxyRefusal>,
    TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// Why a link behind a load balancer was refused before its protocol began.
#[derive(Debug, thiserror::Error)]
pub enum ProxyRefusal {
    #[error("no PROXY header within {} s", PROXY_HEADER_TIMEOUT.as_secs())]
    Slow,
    #[error("closed before its PROXY header ended ({0:?})")]
    Io(std::io::ErrorKind),
    #[error("bad PROXY header: {0}")]
    Header(crate::protocol::proxy_v2::ProxyError),
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
    // Links behind a load balancer reading their PROXY header, each in its own task (a
    // slow one holds only its permit); at most `max_links` of them, as the permits say.
    let mut headers: tokio::task::JoinSet<ProxyRead> = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(read) = headers.join_next(), if !headers.is_empty() => {
                let Ok((read, stream, peer, permit)) = read else { continue };
                let device = match read {
                    Ok(device) => device,
                    Err(why) => {
                        if let Some(n) = crate::observe::count_sampled(refused) {
                            tracing::warn!(event = format!("{connector}_link_refused").as_str(), peer = %peer,
                                reason = %why, total_refused = n, "link refused: proxy_protocol is on");
                        }
                        continue;
                    }
                };
                // The per-address slot is the device's, taken once the header named it.
                let Some(slot) = peers.admit(device.ip(), limits.per_address) else {
                    refused_per_address(connector, refused, device, limits.per_address);
                    continue;
                };
                tokio::spawn(task(serve(stream, device), permit, slot));
                continue;
            }
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
        if limits.proxy_protocol {
            headers.spawn(async move {
                let mut stream = stream;
                let read = read_proxy_header(&mut stream, peer).await;
                (read, stream, peer, permit)
            });
            continue;
        }
        let Some(slot) = peers.admit(peer.ip(), limits.per_address) else {
            refused_per_address(connector, refused, peer, limits.per_address);
            continue;
        };
        tokio::spawn(task(serve(stream, peer), permit, slot));
    }
}

fn refused_per_address(connector: &str, refused: &AtomicU64, peer: SocketAddr, per_address: usize) {
    if let Some(n) = crate::observe::count_sampled(refused) {
        tracing::warn!(event = format!("{connector}_link_refused").as_str(), peer = %peer,
            per_address, total_refused = n, "link refused: max_links_per_address reached");
    }
}

/// What a listener spawns for an admitted connection: its link, holding the listener's
/// permit and the address's slot until it ends. A combinator, not an `async move` block
/// around it: a block would store the link's future and again the one it awaits. The
/// task holds it once.
pub(crate) fn task<Fut>(
    link: Fut,
    permit: tokio::sync::OwnedSemaphorePermit,
    slot: super::PeerLink,
) -> impl Future<Output = ()> + Send + 'static
where
    Fut: Future<Output = ()> + Send + 'static,
{
    link.map(move |()| drop((permit, slot)))
}

/// A write a peer has not taken in this time ends its link: a peer that stops reading
/// cannot hold a task (and its buffers) forever.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes `bytes` within [`WRITE_TIMEOUT`] (then `ErrorKind::TimedOut`).
pub async fn write_all(
    wr: &mut (impl tokio::io::AsyncWriteExt + Unpin),
    bytes: &[u8],
) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// A link's command queue. A tokio channel allocates about 800 bytes up front; a
/// mailbox holds nothing while empty, which is what 10 000 idle links are.
pub struct Mailbox<T> {
    queue: std::sync::Mutex<MailboxQueue<T>>,
    /// The link's task, waiting for an item (one reader: a waker, not a `Notify`, so
    /// the wait is polled by hand and adds nothing to the link's future).
    ready: futures_util::task::AtomicWaker,
    capacity: usize,
}

struct MailboxQueue<T> {
    items: std::collections::VecDeque<T>,
    closed: bool,
}

impl<T> Mailbox<T> {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Mailbox {
            queue: std::sync::Mutex::new(MailboxQueue {
                items: std::collections::VecDeque::new(),
                closed: false,
            }),
            ready: futures_util::task::AtomicWaker::new(),
            capacity,
        })
    }

    /// Queues `item`; gives it back when the mailbox is full or its link has closed.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        let Ok(mut q) = self.queue.lock() else {
            return Err(item);
        };
        if q.closed || q.items.len() >= self.capacity {
            return Err(item);
        }
        q.items.push_back(item);
        drop(q);
        self.ready.wake();
        Ok(())
    }

    /// The next item; waits for one.
    pub fn recv(&self) -> impl Future<Output = T> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(item) = self.pop() {
                return std::task::Poll::Ready(item);
            }
            self.ready.register(cx.waker());
            // Looked at again: an item queued before the waker was registered would
            // otherwise wait for the next one.
            match self.pop() {
                Some(item) => std::task::Poll::Ready(item),
                None => std::task::Poll::Pending,
            }
        })
    }

    fn pop(&self) -> Option<T> {
        self.queue.lock().ok().and_then(|mut q| q.items.pop_front())
    }

    /// The link is gone: later sends fail, and what was queued is handed back.
    pub fn close(&self) -> Vec<T> {
        match self.queue.lock() {
            Ok(mut q) => {
                q.closed = true;
                q.items.drain(..).collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// A link's reader: frames decoded from a byte stream, with a read buffer that exists
/// only while a frame is half received. tokio-util's `FramedRead` keeps its buffer for
/// the link's life (512 B or more each); a device that reports every few seconds sends
/// whole frames, so between reports this holds nothing. Bytes are read into a chunk on
/// the stack for the length of one poll, then kept only if a frame is not complete.
pub struct Reader<R, D> {
    io: R,
    decoder: D,
    buf: bytes::BytesMut,
    eof: bool,
    done: bool,
}

/// Bytes one read takes at most (on the stack, for one poll).
const READ_CHUNK: usize = 4096;

impl<R, D> Reader<R, D>
where
    R: tokio::io::AsyncRead + Unpin,
    D: tokio_util::codec::Decoder,
    D::Error: From<std::io::Error>,
{
    pub fn new(io: R, decoder: D) -> Self {
        Reader {
            io,
            decoder,
            buf: bytes::BytesMut::new(),
            eof: false,
            done: false,
        }
    }

    /// Bytes of a frame not yet complete (a stall check looks at this).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next frame, a decode error (after which the reader ends), or `None` once the
    /// peer has closed and what it sent is decoded (`Decoder::decode_eof`).
    pub async fn next(&mut self) -> Option<Result<D::Item, D::Error>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// `next`, polled by hand.
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<D::Item, D::Error>>> {
        use std::task::Poll;
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let decoded = if self.eof {
                self.decoder.decode_eof(&mut self.buf)
            } else {
                self.decoder.decode(&mut self.buf)
            };
            if self.buf.is_empty() {
                // Whatever was decoded holds its own share of the old allocation.
                self.buf = bytes::BytesMut::new();
            }
            match decoded {
                Ok(Some(item)) => return Poll::Ready(Some(Ok(item))),
                Ok(None) if self.eof => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(err) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Ok(())) if read.filled().is_empty() => self.eof = true,
                Poll::Ready(Ok(())) => self.buf.extend_from_slice(read.filled()),
            }
        }
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

#[cfg(test)]
mod mailbox_tests {
    use super::Mailbox;
    use std::time::Duration;

    #[tokio::test]
    async fn a_mailbox_is_bounded_hands_back_what_it_refuses_and_wakes_its_link() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.try_send(1), Ok(()));
        assert_eq!(mailbox.try_send(2), Ok(()));
        assert_eq!(mailbox.try_send(3), Err(3), "over capacity");
        assert_eq!(mailbox.recv().await, 1);
        assert_eq!(mailbox.recv().await, 2);

        // A waiting link wakes for an item sent later.
        let waiting = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.recv().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(mailbox.try_send(4), Ok(()));
        let got = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        assert_eq!(got.ok().and_then(|r| r.ok()), Some(4));

        // Closed: what was queued comes back, later sends are refused.
        assert_eq!(mailbox.try_send(5), Ok(()));
        assert_eq!(mailbox.close(), vec![5]);
        assert_eq!(mailbox.try_send(6), Err(6));
    }
}

#[cfg(test)]
mod reader_tests {
    use super::Reader;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::LinesCodec;

    #[tokio::test]
    async fn a_reader_holds_no_buffer_between_whole_frames_and_keeps_a_half_one() {
        let (mut peer, link) = tokio::io::duplex(64);
        let mut reader = Reader::new(link, LinesCodec::new());

        peer.write_all(b"one\ntwo\n").await.unwrap();
        assert_eq!(reader.next().await.unwrap().unwrap(), "one");
        assert!(reader.has_partial(), "the second frame is still buffered");
        assert_eq!(reader.next().await.unwrap().unwrap(), "two");
        assert!(!reader.has_partial());
        assert_eq!(reader.buf.capacity(), 0, "nothing held between frames");

        // A frame split over three writes.
        peer.write_all(b"thr").await.unwrap();
        let next = tokio::spawn(async move {
            let line = reader.next().await;
            (line, reader)
        });
        tokio::task::yield_now().await;
        peer.write_all(b"ee").await.unwrap();
        tokio::task::yield_now().await;
        peer.write_all(b"\nfou").await.unwrap();
        let (line, mut reader) = next.await.unwrap();
        assert_eq!(line.unwrap().unwrap(), "three");
        assert!(reader.has_partial(), "half of the fourth frame is kept");

        // The peer closes mid-frame: the decoder's end-of-stream rule decides.
        drop(peer);
        assert_eq!(reader.next().await.unwrap().unwrap(), "fou");
        assert!(reader.next().await.is_none());
        assert!(reader.next().await.is_none(), "stays ended");
    }

    /// Hands out its bytes in the given pieces, one per read, then ends.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl tokio::io::AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    proptest::proptest! {
        /// A stream cut anywhere, into pieces of any size (a slow or split sender),
        /// reads as the same frames as the whole, and nothing is held once the last
        /// whole frame is read.
        #[test]
        fn frames_do_not_depend_on_how_the_stream_is_cut(
            lines in proptest::collection::vec("[a-z]{0,40}", 0..20),
            cuts in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let whole: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
            let mut pieces = std::collections::VecDeque::new();
            let mut rest = whole.as_slice();
            for cut in cuts.iter().chain(std::iter::repeat(&64)) {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at((*cut).min(rest.len()));
                pieces.push_back(piece.to_vec());
                rest = tail;
            }
            let mut reader = Reader::new(Pieces(pieces), LinesCodec::new());
            let mut read = Vec::new();
            while let Some(line) = futures_util::FutureExt::now_or_never(reader.next()).flatten() {
                read.push(line.unwrap());
                if read.len() == lines.len() {
                    proptest::prop_assert!(!reader.has_partial());
                    proptest::prop_assert_eq!(reader.buf.capacity(), 0);
                }
            }
            proptest::prop_assert_eq!(read, lines);
        }
    }

    #[tokio::test]
    async fn a_reader_ends_after_a_decode_error() {
        let (mut peer, link) = tokio::io::duplex(64);
        let mut reader = Reader::new(link, LinesCodec::new_with_max_length(4));
        peer.write_all(b"much too long\nok\n").await.unwrap();
        assert!(reader.next().await.unwrap().is_err());
        assert!(
            reader.next().await.is_none(),
            "nothing is read past an error"
        );
    }
}

#[cfg(test)]
mod size_tests {
    /// Every link holds one, shared with the hub's command routing: 80 bytes (and the
    /// `Arc`'s two counters) and no queue allocated while it is empty. Its item is the
    /// link's boxed command, one pointer. Measured under `cargo test` (debug). Growing
    /// fails: see docs/ARCHITECTURE.md, "Memory" (`-Zprint-type-sizes` shows the layout).
    #[test]
    fn an_empty_mailbox_keeps_its_size_and_allocates_nothing() {
        let mailbox = super::Mailbox::<Box<u8>>::new(8);
        let size = std::mem::size_of_val(&*mailbox);
        assert!(
            size <= 80,
            "an empty link Mailbox grew to {size} bytes (80): -Zprint-type-sizes shows \
             its layout, see docs/ARCHITECTURE.md \"Memory\""
        );
        let room = mailbox.queue.lock().unwrap().items.capacity();
        assert_eq!(room, 0, "an empty mailbox allocates its queue");
    }
}
