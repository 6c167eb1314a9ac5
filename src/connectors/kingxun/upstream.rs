//! Web-server role: the bridge drives an existing kingxun server (docs/protocols/kingxun.md,
//! "9001 connect" to "4001–4005 commands through a server").
//! 9001 handshake with the initial key and IV, 9002 heartbeats well inside the server's
//! 500 s idle limit, commands as 4001–4005, reconnect with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::config::{hex16, KingxunUpstream};
use super::{now_secs, vehicle_id, Core, LinkCommand, LinkSender};
use crate::connector::Update;
use crate::connectors::client::{self, Client, Ended};
use crate::model::{CommandProgress, Field, VehicleId, VehicleInfo, VehicleState};
use crate::protocol::kingxun::session::{Answered, Awaiting};
use crate::protocol::kingxun::{
    crypto, id, resp_code_text, AppControl, Decoded, Frame, Kind, KxCodec, WebConnect,
    WebConnectAck, WebHeartbeat, WebHeartbeatAck,
};

/// Why a session ended, as the upstream's health shows it.
fn lost(ended: Ended) -> String {
    match ended {
        Ended::Lost(r) | Ended::Refused(r) => r,
        Ended::Shutdown => "shutdown".into(),
    }
}

/// The HA device that stands for the upstream server itself.
pub fn server_vehicle() -> VehicleId {
    VehicleId::new("kxserver").unwrap_or_else(|| unreachable!("a valid literal id"))
}

/// The 9001 answer's body. kxSvr encrypts it but leaves CryptFlag 0 (KxLogicSys.cc
/// `WebSvrRegMsgCallBack` never sets the flag), so it is decrypted whenever it decrypts
/// with a valid length/CRC trailer, whatever the flag says; only a body that does not
/// decrypt and is flagged plain is read as plain.
pub fn open_connect_ack(key: &[u8; 16], iv0: &[u8; 16], ack: &Frame) -> Option<WebConnectAck> {
    if let Ok(plain) = crypto::decrypt(key, iv0, &ack.body) {
        return WebConnectAck::decode(&plain).ok();
    }
    if ack.header.crypt || ack.body.len() != WebConnectAck::LEN {
        return None;
    }
    WebConnectAck::decode(&ack.body).ok()
}

pub(super) async fn run(
    cfg: KingxunUpstream,
    core: Arc<Core>,
    commands: LinkSender,
    shutdown: CancellationToken,
) {
    let (Some(key), Some(iv0)) = (hex16(&cfg.key), hex16(&cfg.iv)) else {
        return;
    };
    let _ = core
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
    let mut client = UpstreamClient {
        cfg: &cfg,
        core: &core,
        key,
        iv0,
        commands: &commands,
        shutdown: &shutdown,
    };
    client::run(&mut client, &shutdown).await;
    client.offline().await;
}

struct UpstreamClient<'a> {
    cfg: &'a KingxunUpstream,
    core: &'a Arc<Core>,
    key: [u8; 16],
    iv0: [u8; 16],
    commands: &'a LinkSender,
    shutdown: &'a CancellationToken,
}

impl UpstreamClient<'_> {
    /// The server and every device behind it go offline with the link.
    async fn offline(&self) {
        let devices = self.cfg.devices.iter().map(|d| vehicle_id(d.id));
        for vid in std::iter::once(server_vehicle()).chain(devices) {
            self.core.updates.availability(vid, false).await;
        }
    }
}

impl Client for UpstreamClient<'_> {
    /// A kxSvr that refuses 9001 is retried with the usual back-off (a wrong key shows
    /// as an answer that does not decrypt, which is a lost link, not a refusal).
    const REFUSED_WAIT: Duration = Duration::from_secs(15 * 60);

    async fn session(&mut self) -> Ended {
        let (cfg, core) = (self.cfg, self.core);
        let reason = session(cfg, core, self.key, self.iv0, self.commands, self.shutdown).await;
        self.offline().await;
        Ended::Lost(reason)
    }

    async fn ended(&mut self, ended: &Ended, retry_in: Duration) {
        let reason = match ended {
            Ended::Lost(r) | Ended::Refused(r) => r.as_str(),
            Ended::Shutdown => return,
        };
        let core = self.core;
        tracing::warn!(event = "kingxun_upstream_disconnected", address = %self.cfg.address, reason = %reason,
            retry_in_ms = retry_in.as_millis() as u64, "kingxun server link lost");
        let _ = core
            .updates
            .send(Update::Health {
                links: core.open_links.get(),
                error: Some(format!("upstream: {reason}")),
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

async fn session(
    cfg: &KingxunUpstream,
    core: &Arc<Core>,
    key: [u8; 16],
    iv0: [u8; 16],
    commands: &LinkSender,
    shutdown: &CancellationToken,
) -> String {
    let stream = match client::connect(&cfg.address).await {
        Ok(s) => s,
        Err(ended) => return lost(ended),
    };
    let (rd, mut wr) = stream.into_split();
    let mut codec = KxCodec::new(core.config.max_body);
    // kxSvr relays device answers with an unset header CRC (see `Header::parse_with`).
    codec.unset_response_crc = true;
    let mut frames = FramedRead::new(rd, codec);
    let mut seq: u16 = 1;
    let hello = crypto::encrypt(
        &key,
        &iv0,
        &WebConnect {
            time: now_secs(),
            host: cfg.host.clone(),
        }
        .encode(),
    );
    let hello = Frame::request(id::WEB_CONNECT, seq, 0, 0, true, Bytes::from(hello));
    if let Err(ended) = client::write(&mut wr, &hello.to_bytes()).await {
        return lost(ended);
    }
    let ack = loop {
        match timeout(Duration::from_secs(15), frames.next()).await {
            Err(_) => return "no 9001 answer within 15 s".into(),
            Ok(None) => return "server closed the link during 9001".into(),
            Ok(Some(Err(e))) => return format!("read: {e}"),
            Ok(Some(Ok(Decoded::Frame(f)))) if f.header.msg_id == id::WEB_CONNECT => break f,
            Ok(Some(Ok(_))) => continue,
        }
    };
    let Kind::Response { resp_code } = ack.header.kind else {
        return "9001 answer is not a response".into();
    };
    if resp_code != 0 {
        return format!("9001 refused: {resp_code} ({})", resp_code_text(resp_code));
    }
    let Some(WebConnectAck { session_id, iv, .. }) = open_connect_ack(&key, &iv0, &ack) else {
        return "9001 answer cannot be decrypted or parsed (wrong key or IV?)".into();
    };
    tracing::info!(event = "kingxun_upstream_connected", address = %cfg.address, "connected to kingxun server");
    core.updates.availability(server_vehicle(), true).await;
    for d in &cfg.devices {
        let _ = core
            .updates
            .send(Update::Vehicle(core.info(d.id, None, Some(d.devtype))))
            .await;
        core.updates.availability(vehicle_id(d.id), true).await;
    }
    let devtypes: HashMap<u32, u8> = cfg.devices.iter().map(|d| (d.id, d.devtype)).collect();
    let mut pending: Awaiting<Box<LinkCommand>> = Awaiting::default();
    let mut heartbeat = interval_at(Instant::now(), cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The server answers heartbeats; three unanswered ones mean the link is dead.
    let mut last_heard = Instant::now();
    loop {
        let next_deadline = pending.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => return "shutdown".into(),
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > cfg.heartbeat * 3 + Duration::from_secs(5) {
                    return "no answer to heartbeats".into();
                }
                seq = seq.wrapping_add(1);
                let hb = WebHeartbeat { time: now_secs(), host: cfg.host.clone() }.encode();
                let hb = Frame::request(id::WEB_HEARTBEAT, seq, 0, session_id, false, Bytes::from(hb));
                if let Err(ended) = client::write(&mut wr, &hb.to_bytes()).await {
                    return lost(ended);
                }
            }
            _ = async { sleep_until(next_deadline.unwrap_or_else(Instant::now)).await }, if next_deadline.is_some() => {
                let now = Instant::now();
                for cmd in pending.expired(now) {
                    let _ = cmd.request.progress.try_send(CommandProgress::TimedOut("kingxun server did not answer".into()));
                }
            }
            cmd = commands.recv() => {
                let dev_id = cmd.dev_id;
                seq = seq.wrapping_add(1);
                let body = AppControl { dev_id, dev_type: devtypes.get(&dev_id).copied().unwrap_or(2), time: now_secs(), user_id: 0, control: cmd.control }.encode();
                let sealed = crypto::encrypt(&key, &iv, &body);
                let frame = Frame::request(cmd.control.app_msg_id(), seq, 0, session_id, true, Bytes::from(sealed));
                if let Err(ended) = client::write(&mut wr, &frame.to_bytes()).await {
                    let reason = lost(ended);
                    let _ = cmd.request.progress.try_send(CommandProgress::Failed(format!("send failed: {reason}")));
                    return reason;
                }
                let msg_id = frame.header.msg_id;
                pending.push(seq, msg_id, Instant::now() + core.config.command_timeout, cmd);
            }
            frame = frames.next() => {
                let frame = match frame {
                    None => return "server closed the link".into(),
                    Some(Err(e)) => return format!("read: {e}"),
                    Some(Ok(Decoded::Skipped(n))) => {
                        tracing::warn!(event = "kingxun_upstream_bad_header", skipped = n);
                        continue;
                    }
                    Some(Ok(Decoded::Frame(f))) => f,
                };
                last_heard = Instant::now();
                let Kind::Response { resp_code } = frame.header.kind else { continue };
                if frame.header.msg_id == id::WEB_HEARTBEAT {
                    if let Ok(ack) = WebHeartbeatAck::decode(&frame.body) {
                        let mut s = VehicleState::default();
                        s.set(Field::ServerDevices, i64::from(ack.total_devices));
                        core.updates.merge_state(server_vehicle(), s).await;
                    }
                    continue;
                }
                // kxSvr also answers every relayed command again with 5 ("send failed") once
                // its own 30 s wait is over (KxSvr.cc `CheckTimeOutSvrMsgWaitItem` sweeps
                // answered ones too): a SeqNum no longer pending is ignored.
                if let Answered::Command(cmd) = pending.answered(frame.header.seq, frame.header.msg_id) {
                    if resp_code == 0 {
                        if !cmd.after.values.is_empty() {
                            core.updates.merge_state(cmd.request.vehicle.clone(), cmd.after.clone()).await;
                        }
                        core.remember_guard(cmd.dev_id, &cmd.control);
                        let _ = cmd.request.progress.try_send(CommandProgress::Succeeded);
                    } else {
                        let _ = cmd.request.progress.try_send(CommandProgress::Failed(format!(
                            "server answered {resp_code} ({})", resp_code_text(resp_code))));
                    }
                }
            }
        }
    }
}
