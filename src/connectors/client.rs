//! The TCP client runtime shared by the connectors that dial out to a platform (the
//! kingxun link via kxSvr, the EXLIVE client): connect within a time limit, write within a time
//! limit, and run the protocol's session again and again — after a lost link with
//! back-off (reset once a session lasted), after a refused login only after a long wait
//! (never a login storm), and not at all after shutdown. Logging in, heartbeats and what
//! a session reads stay with the protocol; what happens while away (kingxun fails
//! queued commands at once) is the connector's.

use std::future::Future;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::shared::Backoff;

/// A connect that has not completed in this time has failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The platform refused our credentials: retry only after `Client::REFUSED_WAIT`.
    Refused(String),
    /// Connection trouble: retry with back-off.
    Lost(String),
    Shutdown,
}

/// A connector's side of a dial-out link.
pub trait Client {
    /// How long to wait after a refused login.
    const REFUSED_WAIT: Duration;
    /// Connects, logs in and runs one session until it ends.
    fn session(&mut self) -> impl Future<Output = Ended> + Send;
    /// Told how the session ended and when the next one starts (log, health, availability).
    fn ended(&mut self, ended: &Ended, retry_in: Duration) -> impl Future<Output = ()> + Send;
    /// Runs while away; returns at `until`.
    fn away(&mut self, until: Instant) -> impl Future<Output = ()> + Send {
        sleep_until(until)
    }
}

/// Runs `client`'s sessions until shutdown.
pub async fn run<C: Client>(client: &mut C, shutdown: &CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let ended = tokio::select! {
            _ = shutdown.cancelled() => Ended::Shutdown,
            ended = client.session() => ended,
        };
        let retry_in = match &ended {
            Ended::Shutdown => return,
            Ended::Refused(_) => C::REFUSED_WAIT,
            Ended::Lost(_) => backoff.next(started.elapsed()),
        };
        if shutdown.is_cancelled() {
            return;
        }
        client.ended(&ended, retry_in).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = client.away(Instant::now() + retry_in) => {}
        }
    }
}

/// Connects to `address` within [`CONNECT_TIMEOUT`], without Nagle's delay.
pub async fn connect(address: &str) -> Result<TcpStream, Ended> {
    match timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(Ended::Lost(format!("connect: {e}"))),
        Err(_) => Err(Ended::Lost("connect timed out".into())),
    }
}

/// Writes `bytes` within `link::WRITE_TIMEOUT`: a platform that stops reading ends the
/// session instead of holding it forever.
pub async fn write(wr: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> Result<(), Ended> {
    match super::link::write_all(wr, bytes).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(Ended::Lost("write timed out".into()))
        }
        Err(e) => Err(Ended::Lost(format!("write: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose sessions end as scripted, noting when each one started.
    struct Scripted {
        endings: Vec<Ended>,
        started: Vec<Instant>,
        told: Vec<(Ended, Duration)>,
        shutdown: CancellationToken,
    }

    impl Client for Scripted {
        const REFUSED_WAIT: Duration = Duration::from_secs(900);
        async fn session(&mut self) -> Ended {
            self.started.push(Instant::now());
            if self.endings.is_empty() {
                self.shutdown.cancel();
                std::future::pending::<()>().await;
            }
            self.endings.remove(0)
        }
        async fn ended(&mut self, ended: &Ended, retry_in: Duration) {
            self.told.push((ended.clone(), retry_in));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lost_links_back_off_refusals_wait_long_and_shutdown_stops() {
        let shutdown = CancellationToken::new();
        let mut client = Scripted {
            endings: vec![
                Ended::Lost("a".into()),
                Ended::Lost("b".into()),
                Ended::Refused("bad password".into()),
                Ended::Lost("c".into()),
            ],
            started: Vec::new(),
            told: Vec::new(),
            shutdown: shutdown.clone(),
        };
        run(&mut client, &shutdown).await;
        assert_eq!(
            client.started.len(),
            5,
            "four endings, then the session shutdown ended"
        );
        let waits: Vec<Duration> = client.told.iter().map(|(_, d)| *d).collect();
        assert!(waits[1] >= waits[0], "back-off grows: {waits:?}");
        assert_eq!(waits[2], Duration::from_secs(900), "a refusal waits long");
        // Each next session started no sooner than the wait it was told.
        for (i, wait) in waits.iter().enumerate() {
            assert!(client.started[i + 1] - client.started[i] >= *wait);
        }
    }
}
