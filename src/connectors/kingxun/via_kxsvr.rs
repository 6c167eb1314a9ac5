//! Web-server role, "via kxSvr" (`[kingxun.kxsvr]`): the bridge drives an existing kingxun
//! server (docs/protocols/kingxun.md, "9001 connect" to "4001–4005 commands through a
//! server").
//! The link's rules (9001 handshake, 9002 heartbeats, 4001–4005 commands and their
//! answers) are the sans-IO `protocol::kingxun::web_session`; this connects, reads,
//! writes, publishes and reconnects with back-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::config::{hex16, ViaKxsvr};
use super::{now_secs, vehicle_id, LinkCommand, LinkSender, Shared};
use crate::connector::Update;
use crate::connectors::client::{self, Client, Ended};
use crate::model::{CommandProgress, Field, VehicleId, VehicleInfo, VehicleState};
use crate::protocol::kingxun::session::Outcome;
use crate::protocol::kingxun::web_session::{WebError, WebOutput, WebSession, WebSettings};
use crate::protocol::kingxun::AppControl;

/// Why a session ended, as the kxSvr link's health shows it.
fn lost(ended: Ended) -> String {
    match ended {
        Ended::Lost(r) | Ended::Refused(r) => r,
        Ended::Shutdown => "shutdown".into(),
    }
}

/// The HA device that stands for the kingxun server (kxSvr) itself.
pub fn server_vehicle() -> VehicleId {
    VehicleId::new("kxserver").unwrap_or_else(|| unreachable!("a valid literal id"))
}

pub(super) async fn run(
    cfg: ViaKxsvr,
    shared: Arc<Shared>,
    commands: LinkSender,
    shutdown: CancellationToken,
) {
    let (Some(key), Some(iv0)) = (hex16(&cfg.key), hex16(&cfg.iv)) else {
        return;
    };
    let _ = shared
        .updates
        .send(Update::Vehicle(VehicleInfo {
            id: server_vehicle(),
            name: format!("kingxun server {}", cfg.address),
            manufacturer: "kingxun".into(),
            model: "svrInstance".into(),
            reported_model: None,
            sw_version: None,
            custom_name: false,
            serial_number: None,
            capabilities: Default::default(),
            event_types: Default::default(),
        }))
        .await;
    let mut client = KxsvrClient {
        cfg: &cfg,
        shared: &shared,
        key,
        iv0,
        commands: &commands,
        shutdown: &shutdown,
    };
    client::run(&mut client, &shutdown).await;
    client.offline().await;
}

struct KxsvrClient<'a> {
    cfg: &'a ViaKxsvr,
    shared: &'a Arc<Shared>,
    key: [u8; 16],
    iv0: [u8; 16],
    commands: &'a LinkSender,
    shutdown: &'a CancellationToken,
}

impl KxsvrClient<'_> {
    /// The server and every device behind it go offline with the link.
    async fn offline(&self) {
        let devices = self.cfg.devices.iter().map(|d| vehicle_id(d.id));
        for vid in std::iter::once(server_vehicle()).chain(devices) {
            self.shared.updates.availability(vid, false).await;
        }
    }
}

impl Client for KxsvrClient<'_> {
    /// A kxSvr that refuses 9001 is retried with the usual back-off (a wrong key shows
    /// as an answer that does not decrypt, which is a lost link, not a refusal).
    const REFUSED_WAIT: Duration = Duration::from_secs(15 * 60);

    async fn session(&mut self) -> Ended {
        let (cfg, shared) = (self.cfg, self.shared);
        let reason = session(
            cfg,
            shared,
            self.key,
            self.iv0,
            self.commands,
            self.shutdown,
        )
        .await;
        self.offline().await;
        Ended::Lost(reason)
    }

    async fn ended(&mut self, ended: &Ended, retry_in: Duration) {
        let reason = match ended {
            Ended::Lost(r) | Ended::Refused(r) => r.as_str(),
            Ended::Shutdown => return,
        };
        let shared = self.shared;
        tracing::warn!(event = "kingxun_kxsvr_disconnected", address = %self.cfg.address, reason = %reason,
            retry_in_ms = retry_in.as_millis() as u64, "kingxun server link lost");
        let _ = shared
            .updates
            .send(Update::Health {
                links: shared.open_links.get(),
                error: Some(format!("kxsvr: {reason}")),
            })
            .await;
    }

    /// Commands that arrive while away fail at once rather than time out.
    async fn away(&mut self, until: Instant) {
        loop {
            tokio::select! {
                _ = sleep_until(until) => return,
                cmd = self.commands.recv() => {
                    let _ = cmd.request.progress.try_send(CommandProgress::Failed("kingxun server unreachable".into()));
                }
            }
        }
    }
}

/// Bytes one read takes at most.
const READ_CHUNK: usize = 4096;

/// One link to the server: the I/O around its sans-IO session
/// (`protocol::kingxun::web_session`). Says why it ended.
async fn session(
    cfg: &ViaKxsvr,
    shared: &Arc<Shared>,
    key: [u8; 16],
    iv0: [u8; 16],
    commands: &LinkSender,
    shutdown: &CancellationToken,
) -> String {
    let stream = match client::connect(&cfg.address).await {
        Ok(s) => s,
        Err(ended) => return lost(ended),
    };
    let (mut rd, mut wr) = stream.into_split();
    let settings = WebSettings {
        key,
        iv: iv0,
        host: cfg.host.clone(),
        heartbeat: cfg.heartbeat,
        command_timeout: shared.config.command_timeout,
        max_body: shared.config.max_body,
    };
    let (mut link, hello) =
        WebSession::<Box<LinkCommand>>::start(settings, Instant::now(), now_secs());
    if let Err(ended) = client::write(&mut wr, &hello.to_bytes()).await {
        return lost(ended);
    }
    let devtypes: HashMap<u32, u8> = cfg.devices.iter().map(|d| (d.id, d.devtype)).collect();
    let mut chunk = [0u8; READ_CHUNK];
    let mut outputs = Vec::new();
    loop {
        for output in outputs.drain(..) {
            match output {
                WebOutput::Send(frame) => {
                    if let Err(ended) = client::write(&mut wr, &frame.to_bytes()).await {
                        return lost(ended);
                    }
                }
                WebOutput::Connected => connected(cfg, shared).await,
                WebOutput::ServerDevices(total) => {
                    let mut s = VehicleState::default();
                    s.set(Field::ServerDevices, i64::from(total));
                    shared.updates.merge_state(server_vehicle(), s).await;
                }
                WebOutput::Done(cmd, outcome) => done(shared, cmd, outcome).await,
                WebOutput::Skipped(n) => {
                    tracing::warn!(event = "kingxun_kxsvr_bad_header", skipped = n);
                }
                WebOutput::Close(why) => return why.to_string(),
            }
        }
        let deadline = link.next_deadline();
        outputs = tokio::select! {
            _ = shutdown.cancelled() => return "shutdown".into(),
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                link.on_timer(Instant::now(), now_secs())
            }
            cmd = commands.recv(), if link.connected() => {
                if let Err(reason) = send_command(&mut link, &mut wr, &devtypes, cmd).await {
                    return reason;
                }
                continue;
            }
            read = rd.read(&mut chunk) => match read {
                Ok(0) => return link.on_eof().to_string(),
                Ok(n) => link.on_bytes(&chunk[..n], Instant::now()),
                Err(e) => return WebError::Read(e.into()).to_string(),
            },
        };
    }
}

/// Seals a command for the server and sends it; a write that fails ends the link and
/// fails every command waiting on it.
async fn send_command(
    link: &mut WebSession<Box<LinkCommand>>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    devtypes: &HashMap<u32, u8>,
    cmd: Box<LinkCommand>,
) -> Result<(), String> {
    let app = AppControl {
        dev_id: cmd.dev_id,
        dev_type: devtypes.get(&cmd.dev_id).copied().unwrap_or(2),
        time: now_secs(),
        user_id: 0,
        control: cmd.control,
    };
    let frame = match link.send_command(app, cmd, Instant::now()) {
        Ok(frame) => frame,
        Err(cmd) => {
            let failed = CommandProgress::Failed("kingxun server unreachable".into());
            let _ = cmd.request.progress.try_send(failed);
            return Ok(());
        }
    };
    if let Err(ended) = client::write(wr, &frame.to_bytes()).await {
        let reason = lost(ended);
        for cmd in link.take_pending() {
            let failed = CommandProgress::Failed(format!("send failed: {reason}"));
            let _ = cmd.request.progress.try_send(failed);
        }
        return Err(reason);
    }
    Ok(())
}

/// The server took our 9001: it and every device behind it are online.
async fn connected(cfg: &ViaKxsvr, shared: &Shared) {
    tracing::info!(event = "kingxun_kxsvr_connected", address = %cfg.address, "connected to kingxun server");
    shared.updates.availability(server_vehicle(), true).await;
    for d in &cfg.devices {
        let _ = shared
            .updates
            .send(Update::Vehicle(shared.info(d.id, None, Some(d.devtype))))
            .await;
        shared.updates.availability(vehicle_id(d.id), true).await;
    }
}

/// A command through the server ended.
async fn done(shared: &Shared, cmd: Box<LinkCommand>, outcome: Outcome) {
    let progress = match outcome {
        Outcome::Succeeded => {
            if !cmd.after.values.is_empty() {
                shared
                    .updates
                    .merge_state(cmd.request.vehicle.clone(), cmd.after.clone())
                    .await;
            }
            shared.remember_guard(cmd.dev_id, &cmd.control);
            CommandProgress::Succeeded
        }
        Outcome::Failed(why) => CommandProgress::Failed(why),
        Outcome::TimedOut => CommandProgress::TimedOut("kingxun server did not answer".into()),
    };
    let _ = cmd.request.progress.try_send(progress);
}
