//! Client role: log in to an EXLIVE platform as a user, list its groups and vehicles,
//! take its 1007 stream, send heartbeats, reconnect with backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::server::next_message;
use super::{Core, ExliveClientConfig, LINK_QUEUE};
use crate::connector::Update;
use crate::connectors::client::{self, Client, Ended};
use crate::protocol::exlive::{Message, Splitter};

/// After a refused login, wait this long before trying again: never a login storm.
const REFUSED_BACKOFF: Duration = Duration::from_secs(15 * 60);

pub(super) async fn run(
    cfg: ExliveClientConfig,
    core: Arc<Core>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut client = ExliveClient {
        cfg: &cfg,
        core: &core,
        shutdown: &shutdown,
    };
    client::run(&mut client, &shutdown).await;
    Ok(())
}

struct ExliveClient<'a> {
    cfg: &'a ExliveClientConfig,
    core: &'a Arc<Core>,
    shutdown: &'a CancellationToken,
}

impl Client for ExliveClient<'_> {
    const REFUSED_WAIT: Duration = REFUSED_BACKOFF;

    async fn session(&mut self) -> Ended {
        session(self.cfg, self.core, self.shutdown).await
    }

    async fn ended(&mut self, ended: &Ended, retry_in: Duration) {
        let (cfg, core) = (self.cfg, self.core);
        match ended {
            Ended::Refused(result) => {
                let reason = format!(
                    "EXLIVE platform {} refused login for `{}`: {result}",
                    cfg.address, cfg.name
                );
                tracing::error!(event = "exlive_client_login_refused", address = %cfg.address, user = %cfg.name,
                    result = %result, retry_in_s = retry_in.as_secs(), "login refused; not retrying soon");
                let _ = core
                    .updates
                    .send(Update::Health {
                        links: core.links.get(),
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
    let mut line = msg.encode().into_bytes();
    line.push(b'\n');
    client::write(wr, &line).await
}

async fn session(
    cfg: &ExliveClientConfig,
    core: &Arc<Core>,
    shutdown: &CancellationToken,
) -> Ended {
    let stream = match client::connect(&cfg.address).await {
        Ok(s) => s,
        Err(ended) => return ended,
    };
    let (rd, mut wr) = stream.into_split();
    let mut frames =
        crate::connectors::link::Reader::new(rd, Splitter::new(core.config.max_message_size));
    let peer = cfg.address.clone();
    let login = Message::Login {
        name: cfg.name.clone(),
        pass: cfg.password.expose().to_string(),
        ver: env!("CARGO_PKG_VERSION").into(),
        kind: String::new(),
        mode: String::new(),
    };
    if let Err(e) = send(&mut wr, &login).await {
        return e;
    }
    // The answer to our login: an 8000 for cmd 1000.
    let answer = loop {
        match timeout(
            Duration::from_secs(30),
            next_message(&mut frames, &peer, core),
        )
        .await
        {
            Err(_) => return Ended::Lost("no login answer within 30 s".into()),
            Ok(None) => return Ended::Refused("link closed after login".into()),
            Ok(Some(Message::Ack { cmd, result })) if cmd == "1000" || cmd.is_empty() => {
                break result
            }
            Ok(Some(_)) => continue,
        }
    };
    if !Message::is_success(&answer) {
        return Ended::Refused(answer);
    }
    tracing::info!(event = "exlive_client_logged_in", address = %cfg.address, user = %cfg.name, "logged in to EXLIVE platform");
    let (out_tx, mut out_rx) = mpsc::channel::<String>(LINK_QUEUE);
    let link = core.new_link(out_tx);
    core.links.opened(&core.updates).await;
    let result: Result<(), Ended> = async {
        send(&mut wr, &Message::GroupsRequest { client: true }).await?;
        let mut heartbeat = interval_at(Instant::now() + cfg.heartbeat, cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The platform sends positions continuously; silence for three heartbeats means
        // the link is dead even if TCP has not noticed.
        let idle_limit = (cfg.heartbeat * 3).max(core.config.heartbeat_timeout);
        let mut deadline = Instant::now() + idle_limit;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Ended::Shutdown),
                _ = heartbeat.tick() => send(&mut wr, &Message::Heartbeat).await?,
                _ = tokio::time::sleep_until(deadline) => return Err(Ended::Lost("platform silent".into())),
                Some(line) = out_rx.recv() => {
                    let mut data = line.into_bytes();
                    data.push(b'\n');
                    client::write(&mut wr, &data).await?;
                }
                msg = next_message(&mut frames, &peer, core) => {
                    let Some(msg) = msg else { return Err(Ended::Lost("platform closed the link".into())) };
                    deadline = Instant::now() + idle_limit;
                    match msg {
                        Message::Group { groupid, .. } => {
                            send(&mut wr, &Message::VehiclesRequest { groupid }).await?;
                        }
                        other => {
                            if !core.on_message(&link, other).await {
                                return Err(Ended::Lost("platform logged us out".into()));
                            }
                        }
                    }
                }
            }
        }
    }
    .await;
    core.link_closed(&link).await;
    core.links.closed(&core.updates).await;
    match result {
        Err(ended) => ended,
        Ok(()) => Ended::Lost("session ended".into()),
    }
}
