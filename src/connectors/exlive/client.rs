//! Client role: log in to an EXLIVE platform as a user, list its groups and vehicles,
//! take its 1007 stream, send heartbeats, reconnect with backoff. The link's rules are
//! the sans-IO `protocol::exlive::client_session`; this connects, reads, writes and
//! hands messages to the connector's [`Shared`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::server::{log_malformed, log_malformed_closed, log_oversized};
use super::{ExliveClientConfig, LinkHandle, Shared, LINK_QUEUE};
use crate::connector::Update;
use crate::connectors::client::{self, Client, Ended};
use crate::protocol::exlive::client_session::{
    line, ClientError, ClientOutput, ClientSession, ClientSettings,
};
use crate::protocol::exlive::Message;

/// After a refused login, wait this long before trying again: never a login storm.
const REFUSED_BACKOFF: Duration = Duration::from_secs(15 * 60);

pub(super) async fn run(
    cfg: ExliveClientConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut client = ExliveClient {
        cfg: &cfg,
        shared: &shared,
        shutdown: &shutdown,
    };
    client::run(&mut client, &shutdown).await;
    Ok(())
}

/// Runs the client while this instance holds the account's permit (always alone): in a
/// cluster one instance at a time logs in to the platform (docs/cluster.md).
pub(super) async fn run_permitted(
    cfg: ExliveClientConfig,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    mut permit: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        while !*permit.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = permit.changed() => if changed.is_err() { return Ok(()) },
            }
        }
        let stop = shutdown.child_token();
        tracing::info!(event = "exlive_client_permitted", address = %cfg.address, "this instance runs the EXLIVE platform login");
        let client = run(cfg.clone(), shared.clone(), stop.clone());
        tokio::pin!(client);
        loop {
            tokio::select! {
                ended = &mut client => return ended,
                changed = permit.changed() => {
                    if changed.is_err() || !*permit.borrow_and_update() {
                        tracing::info!(event = "exlive_client_handed_over", address = %cfg.address,
                            "another instance runs the EXLIVE platform login now (or this one is fenced)");
                        stop.cancel();
                        let _ = (&mut client).await;
                        break;
                    }
                }
            }
        }
    }
}

struct ExliveClient<'a> {
    cfg: &'a ExliveClientConfig,
    shared: &'a Arc<Shared>,
    shutdown: &'a CancellationToken,
}

impl Client for ExliveClient<'_> {
    const REFUSED_WAIT: Duration = REFUSED_BACKOFF;

    async fn session(&mut self) -> Ended {
        session(self.cfg, self.shared, self.shutdown).await
    }

    async fn ended(&mut self, ended: &Ended, retry_in: Duration) {
        let (cfg, shared) = (self.cfg, self.shared);
        match ended {
            Ended::Refused(result) => {
                let reason = format!(
                    "EXLIVE platform {} refused login for `{}`: {result}",
                    cfg.address, cfg.name
                );
                tracing::error!(event = "exlive_client_login_refused", address = %cfg.address, user = %cfg.name,
                    result = %result, retry_in_s = retry_in.as_secs(), "login refused; not retrying soon");
                let _ = shared
                    .updates
                    .send(Update::Health {
                        links: shared.links.get(),
                        error: Some(reason),
                    })
                    .await;
            }
            Ended::Lost(reason) => {
                tracing::warn!(event = "exlive_client_disconnected", address = %cfg.address, reason = %reason,
                    retry_in_ms = retry_in.as_millis() as u64, "EXLIVE platform link lost");
            }
            Ended::Shutdown => {}
        }
    }
}

async fn send(wr: &mut tokio::net::tcp::OwnedWriteHalf, msg: &Message) -> Result<(), Ended> {
    client::write(wr, &line(msg)).await
}

/// Bytes one read takes at most.
const READ_CHUNK: usize = 4096;

/// How a session's end counts for `client::run`. A platform that closes the link (or
/// sends what cannot be read) before answering the login has refused it.
fn session_end(why: ClientError, logged_in: bool) -> Ended {
    match why {
        ClientError::Refused(result) => Ended::Refused(result),
        ClientError::Closed
        | ClientError::TooLarge { .. }
        | ClientError::TooManyMalformed { .. } => {
            if logged_in {
                Ended::Lost("platform closed the link".into())
            } else {
                Ended::Refused("link closed after login".into())
            }
        }
        other => Ended::Lost(other.to_string()),
    }
}

/// One link to the platform: the I/O around its sans-IO session
/// (`protocol::exlive::client_session`).
async fn session(
    cfg: &ExliveClientConfig,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Ended {
    let stream = match client::connect(&cfg.address).await {
        Ok(s) => s,
        Err(ended) => return ended,
    };
    let (mut rd, mut wr) = stream.into_split();
    let settings = ClientSettings {
        name: cfg.name.clone(),
        pass: cfg.password.expose().to_string(),
        ver: env!("CARGO_PKG_VERSION").into(),
        heartbeat: cfg.heartbeat,
        // Silence for three heartbeats means the link is dead even if TCP has not noticed.
        idle_limit: (cfg.heartbeat * 3).max(shared.config.heartbeat_timeout),
        max_message: shared.config.max_message_size,
        bad_in_a_row: crate::connectors::BAD_IN_A_ROW,
    };
    let (mut session, login) = ClientSession::start(settings, Instant::now());
    if let Err(e) = send(&mut wr, &login).await {
        return e;
    }
    // Pass-through commands for the platform's vehicles, once logged in.
    let (out_tx, mut out_rx) = mpsc::channel::<String>(LINK_QUEUE);
    let mut out_tx = Some(out_tx);
    let mut link: Option<LinkHandle> = None;
    let mut chunk = [0u8; READ_CHUNK];
    let mut outputs = Vec::new();
    let ended = 'session: loop {
        for output in outputs.drain(..) {
            match output {
                ClientOutput::Send(msg) => {
                    if let Err(e) = send(&mut wr, &msg).await {
                        break 'session e;
                    }
                }
                ClientOutput::LoggedIn => {
                    tracing::info!(event = "exlive_client_logged_in", address = %cfg.address, user = %cfg.name, "logged in to EXLIVE platform");
                    if let Some(tx) = out_tx.take() {
                        link = Some(shared.new_link(tx));
                        shared.links.opened(&shared.updates).await;
                    }
                }
                ClientOutput::Deliver(msg) => {
                    let Some(link) = &link else { continue };
                    if !shared.on_message(link, msg).await {
                        break 'session Ended::Lost("platform logged us out".into());
                    }
                }
                ClientOutput::Malformed { what, in_a_row } => {
                    shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    log_malformed(shared, &cfg.address, in_a_row, &what);
                }
                ClientOutput::Close(why) => {
                    match why {
                        ClientError::TooLarge { max } => log_oversized(shared, &cfg.address, max),
                        ClientError::TooManyMalformed { in_a_row } => {
                            log_malformed_closed(shared, &cfg.address, in_a_row)
                        }
                        _ => {}
                    }
                    break 'session session_end(why, link.is_some());
                }
            }
        }
        let deadline = session.next_deadline();
        outputs = tokio::select! {
            _ = shutdown.cancelled() => break 'session Ended::Shutdown,
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                session.on_timer(Instant::now())
            }
            Some(text) = out_rx.recv(), if link.is_some() => {
                let mut data = text.into_bytes();
                data.push(b'\n');
                if let Err(e) = client::write(&mut wr, &data).await {
                    break 'session e;
                }
                continue;
            }
            read = rd.read(&mut chunk) => match read {
                Ok(0) => session.on_eof(Instant::now()),
                Ok(n) => session.on_bytes(&chunk[..n], Instant::now()),
                Err(err) => {
                    tracing::debug!(event = "exlive_link_io", peer = %cfg.address, error = %err);
                    break 'session session_end(ClientError::Closed, link.is_some());
                }
            },
        };
    };
    if let Some(link) = link {
        shared.link_closed(&link).await;
        shared.links.closed(&shared.updates).await;
    }
    ended
}
