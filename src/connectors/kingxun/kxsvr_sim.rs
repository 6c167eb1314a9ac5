//! A fake kingxun server that behaves as kxSvr's code does (bingfao/kxSvr), for testing
//! the bridge's web-server role (9001/9002/4001–4005) against the real server's habits
//! rather than against what the bridge expects. Devices (the kingxun simulator) and web
//! servers (the bridge) share one port, as they do on kxSvr.
//!
//! Each behaviour names where kxSvr does it (files as stored at commits 288c51b
//! `KxLogicSys.cc`, 069eb94 `KxSvr.cc`/`KxSession.cc`/`KxClient.cpp`, 306b108 `KxMsgDef.h`;
//! docs/protocols/kingxun.md, "kxSvr's real behaviour", gives line numbers at dd42406):
//! - 1001 is answered 0 with `sessionId | IV` whatever its body (`DevRegMsgCallBack`:
//!   the body is never read); a session id is `0xFD000000 + n` (`KxServer::GetNewSessionId`).
//! - 1002 and 1004 are answered 0, empty and plain (`DevStatusMsgCallBack`,
//!   `DevUsedTrafficMsgCallBack`); other device messages have no handler and get no answer
//!   (`RegisterCallBacks`).
//! - A request other than 1001 with MsgId below 4001 whose SessionId is not the link's is
//!   dropped (`KxDevSession::checkMsgHeader`); 400x and 900x are not checked.
//! - 9001 is decrypted with the initial key and IV whatever its CryptFlag; a wrong host
//!   gets no answer; the answer is AES-encrypted `sessionId | newIV | time` with its
//!   trailer but **CryptFlag 0**, and the link's IV becomes newIV (`WebSvrRegMsgCallBack`).
//! - 9002 with host "kingxun.site" at body offset 8 is answered plain with
//!   `totalDevCount | svrStartTime` (`WebSvrHeartBeatMsgCallBack`).
//! - 4001/4002/4003/4004 that do not decrypt with the link's key and IV are dropped
//!   without an answer (`AppCtrl*CallBack`: nothing is sent when `checkAESPacketData`
//!   fails). Bodies are read as kxSvr's packed structs (`KxAppDevCtrl*_OrMsg`): 4003's
//!   maxSpeed is one byte there.
//! - A device that is not linked: RespCode 3 (`cst_nResp_Code_DEV_OFFLINE`).
//! - 4001 is forwarded as a 19-byte 2001 without usrId (`KxDevCtrlOpenLock_OrMsg`), 4002
//!   as 2002, **4003 as MsgId 2002** with the 15-byte guard struct
//!   (`AppCtrlDevGuardMsgCallBack` sets `MSG_DEVCTRL_LOCKDEV`), 4004 as a 14-byte 2004
//!   whose voice byte is never set (`AppCtrlDevElecLockCallBack`; modelled as 0xA5).
//!   **4005 has no handler** and is never answered.
//! - Forwarded 200x frames carry the web request's SeqNum, DevId 0, the device's
//!   SessionId and CryptFlag 0 (`KxDevSession::SendMsgPacket`), the body encrypted with the
//!   device's key and IV.
//! - The device's answer is relayed to the web server as the 400x MsgId and SeqNum with the
//!   device's RespCode, no body, and a header CRC left unset (0) (`KxServer::onMsgResp`).
//! - Every forwarded command older than 30 s is answered (again) with RespCode 5 by a sweep
//!   that runs once a minute, whether or not the device answered
//!   (`KxServer::CheckTimeOutSvrMsgWaitItem`); both figures are options here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::protocol::kingxun::*;

/// kxSvr's only accepted web-server host (KxLogicSys.cc `cst_szHost`).
pub const HOST: &str = "kingxun.site";
/// The byte kxSvr's forwarded 2004 carries where its voice field is never initialised.
pub const UNSET_VOICE: u8 = 0xA5;

#[derive(Debug, Clone)]
pub struct FakeKxSvrOptions {
    /// Initial key and IV for 9001 (kxSvr has them compiled in; tests pick their own).
    pub key: [u8; 16],
    pub iv: [u8; 16],
    /// Device keys, as kxSvr reads them from its database (`getDevAESKeyData`).
    pub device_keys: HashMap<u32, [u8; 16]>,
    /// How long a forwarded command waits for the device (kxSvr: 30 s).
    pub wait: Duration,
    /// How often the wait list is swept (kxSvr: 1 min).
    pub sweep_every: Duration,
}

/// A 200x frame as the fake sent it to a device.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub header: Header,
    /// The decrypted body.
    pub plain: Vec<u8>,
}

/// What the fake server saw and did.
#[derive(Debug, Default)]
pub struct FakeKxSvrLog {
    pub web_connects: AtomicU64,
    pub heartbeats: AtomicU64,
    pub registrations: AtomicU64,
    /// 400x dropped because they did not decrypt.
    pub dropped_undecryptable: AtomicU64,
    /// 4005 received and (as kxSvr) never answered.
    pub unanswered_lights: AtomicU64,
    pub forwarded: Mutex<Vec<Forwarded>>,
    /// devId → lock byte of its latest 1002.
    pub lock_status: Mutex<HashMap<u32, u8>>,
}

struct DeviceLink {
    session_id: u32,
    key: [u8; 16],
    iv: [u8; 16],
    out: mpsc::UnboundedSender<Vec<u8>>,
}

struct Waiting {
    device_msg_id: u16,
    seq: u16,
    web_msg_id: u16,
    web: mpsc::UnboundedSender<Vec<u8>>,
    since: Instant,
}

struct Shared {
    opts: FakeKxSvrOptions,
    log: Arc<FakeKxSvrLog>,
    sessions: AtomicU32,
    devices: Mutex<HashMap<u32, DeviceLink>>,
    waiting: Mutex<Vec<Waiting>>,
}

/// A response header with the CRC left at 0, as `KxServer::onMsgResp` sends it.
fn unset_crc_response(msg_id: u16, seq: u16, code: u32) -> Vec<u8> {
    let mut out = Frame::response(msg_id, seq, code, false, Bytes::new()).to_bytes();
    out[13] = 0;
    out[14] = 0;
    out
}

fn sealed(key: &[u8; 16], iv: &[u8; 16], plain: &[u8]) -> Bytes {
    Bytes::from(crypto::encrypt(key, iv, plain))
}

pub async fn run(listener: TcpListener, opts: FakeKxSvrOptions, log: Arc<FakeKxSvrLog>) {
    let shared = Arc::new(Shared {
        opts,
        log,
        sessions: AtomicU32::new(0),
        devices: Mutex::new(HashMap::new()),
        waiting: Mutex::new(Vec::new()),
    });
    tokio::spawn(sweep(shared.clone()));
    while let Ok((stream, _)) = listener.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
            let writer = tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if wr.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
            serve(shared, FramedRead::new(rd, KxCodec::default()), tx).await;
            writer.abort();
        });
    }
}

async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.opts.sweep_every);
    loop {
        tick.tick().await;
        let Ok(mut waiting) = shared.waiting.lock() else {
            return;
        };
        for w in waiting.iter() {
            if w.since.elapsed() > shared.opts.wait {
                let _ = w.web.send(unset_crc_response(w.web_msg_id, w.seq, 5));
            }
        }
        let wait = shared.opts.wait;
        waiting.retain(|w| w.since.elapsed() < wait);
    }
}

struct Link {
    session_id: u32,
    key: [u8; 16],
    iv: [u8; 16],
    dev_id: Option<u32>,
}

async fn serve(
    shared: Arc<Shared>,
    mut frames: FramedRead<tokio::net::tcp::OwnedReadHalf, KxCodec>,
    out: mpsc::UnboundedSender<Vec<u8>>,
) {
    let session_id = 0xFD00_0000 + shared.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    let mut link = Link {
        session_id,
        key: [0; 16],
        iv: [0; 16],
        dev_id: None,
    };
    while let Some(Ok(decoded)) = frames.next().await {
        let Decoded::Frame(f) = decoded else { continue };
        match f.header.kind {
            Kind::Response { resp_code } => relay(&shared, &f, resp_code),
            Kind::Request {
                dev_id,
                session_id: sid,
            } => {
                let id = f.header.msg_id;
                if id != id::REGISTER && id < id::APP_UNLOCK && sid != link.session_id {
                    continue;
                }
                request(&shared, &mut link, dev_id, &f, &out);
            }
        }
    }
    if let Some(dev_id) = link.dev_id {
        if let Ok(mut d) = shared.devices.lock() {
            if d.get(&dev_id)
                .is_some_and(|l| l.session_id == link.session_id)
            {
                d.remove(&dev_id);
            }
        }
    }
}

/// A device's answer to a forwarded command goes back to the web server that asked.
fn relay(shared: &Shared, f: &Frame, resp_code: u32) {
    let Ok(waiting) = shared.waiting.lock() else {
        return;
    };
    if let Some(w) = waiting
        .iter()
        .find(|w| w.device_msg_id == f.header.msg_id && w.seq == f.header.seq)
    {
        let _ = w
            .web
            .send(unset_crc_response(w.web_msg_id, w.seq, resp_code));
    }
}

fn plain_answer(f: &Frame, code: u32, body: Vec<u8>) -> Vec<u8> {
    Frame::response(
        f.header.msg_id,
        f.header.seq,
        code,
        false,
        Bytes::from(body),
    )
    .to_bytes()
}

fn host_at(body: &[u8], at: usize) -> String {
    let rest = body.get(at..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

fn request(
    shared: &Shared,
    link: &mut Link,
    dev_id: u32,
    f: &Frame,
    out: &mpsc::UnboundedSender<Vec<u8>>,
) {
    let log = &shared.log;
    match f.header.msg_id {
        id::REGISTER => {
            let iv: [u8; 16] = rand::random();
            link.key = shared
                .opts
                .device_keys
                .get(&dev_id)
                .copied()
                .unwrap_or([0; 16]);
            link.iv = iv;
            link.dev_id = Some(dev_id);
            log.registrations.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut d) = shared.devices.lock() {
                d.insert(
                    dev_id,
                    DeviceLink {
                        session_id: link.session_id,
                        key: link.key,
                        iv,
                        out: out.clone(),
                    },
                );
            }
            let ack = RegisterAck {
                session_id: link.session_id,
                iv,
            };
            let _ = out.send(plain_answer(f, 0, ack.encode()));
        }
        id::STATUS => {
            if let (Ok(s), Ok(mut m)) = (Status::decode(&f.body), log.lock_status.lock()) {
                m.insert(dev_id, s.lock);
            }
            let _ = out.send(plain_answer(f, 0, Vec::new()));
        }
        id::TRAFFIC => {
            let _ = out.send(plain_answer(f, 0, Vec::new()));
        }
        id::WEB_CONNECT => {
            let Ok(plain) = crypto::decrypt(&shared.opts.key, &shared.opts.iv, &f.body) else {
                return;
            };
            if host_at(&plain, 8) != HOST {
                return;
            }
            log.web_connects.fetch_add(1, Ordering::Relaxed);
            let new_iv: [u8; 16] = rand::random();
            let ack = WebConnectAck {
                session_id: link.session_id,
                iv: new_iv,
                time: chrono::Utc::now().timestamp().max(0) as u64,
            };
            let body = sealed(&shared.opts.key, &shared.opts.iv, &ack.encode());
            // CryptFlag 0 on an encrypted body: the flag is never set.
            let _ =
                out.send(Frame::response(f.header.msg_id, f.header.seq, 0, false, body).to_bytes());
            link.key = shared.opts.key;
            link.iv = new_iv;
        }
        id::WEB_HEARTBEAT => {
            if host_at(&f.body, 8) != HOST {
                return;
            }
            log.heartbeats.fetch_add(1, Ordering::Relaxed);
            let count = shared.devices.lock().map(|d| d.len()).unwrap_or(0) as u32;
            let ack = WebHeartbeatAck {
                total_devices: count,
                start_time: 1_700_000_000,
            };
            let _ = out.send(plain_answer(f, 0, ack.encode()));
        }
        id::APP_LIGHTS => {
            log.unanswered_lights.fetch_add(1, Ordering::Relaxed);
        }
        m @ id::APP_UNLOCK..=id::APP_OPEN_LOCK => {
            let Ok(plain) = crypto::decrypt(&link.key, &link.iv, &f.body) else {
                log.dropped_undecryptable.fetch_add(1, Ordering::Relaxed);
                return;
            };
            forward(shared, m, f, &plain, out);
        }
        _ => {}
    }
}

/// 4001–4004 → the device, laid out as kxSvr's `KxDevCtrl*_OrMsg` structs.
fn forward(
    shared: &Shared,
    web_msg_id: u16,
    f: &Frame,
    app: &[u8],
    web: &mpsc::UnboundedSender<Vec<u8>>,
) {
    // `KxAppDevCtrl*_OrMsg`: devId u32 | devtype u8 | svrTime u64 | usrId i32 | params.
    if app.len() < 17 {
        return;
    }
    let dev_id = u32::from_le_bytes([app[0], app[1], app[2], app[3]]);
    let svr_time = &app[5..13];
    let params = &app[17..];
    let devices = match shared.devices.lock() {
        Ok(d) => d,
        Err(_) => return,
    };
    let Some(dev) = devices.get(&dev_id) else {
        let _ = web.send(plain_answer(f, 3, Vec::new()));
        return;
    };
    let mut body = svr_time.to_vec();
    body.extend_from_slice(&dev.session_id.to_le_bytes());
    let device_msg_id = match web_msg_id {
        id::APP_UNLOCK => {
            // nAlowTime u16 | nLowestSocP u8 | nFarthestDist u32.
            body.extend_from_slice(params.get(..7).unwrap_or_default());
            id::UNLOCK
        }
        id::APP_LOCK => {
            body.push(params.first().copied().unwrap_or(0));
            id::LOCK
        }
        id::APP_GUARD => {
            // MotorPowerFlag u8 | nMaxSpeed u8 | nVoiceIndex u8, sent as MsgId 2002.
            body.extend_from_slice(params.get(..3).unwrap_or_default());
            id::LOCK
        }
        _ => {
            body.push(params.first().copied().unwrap_or(0));
            body.push(UNSET_VOICE);
            id::OPEN_LOCK
        }
    };
    let frame = Frame::request(
        device_msg_id,
        f.header.seq,
        0,
        dev.session_id,
        false,
        sealed(&dev.key, &dev.iv, &body),
    );
    if let Ok(mut log) = shared.log.forwarded.lock() {
        log.push(Forwarded {
            header: frame.header,
            plain: body,
        });
    }
    if dev.out.send(frame.to_bytes()).is_ok() {
        if let Ok(mut w) = shared.waiting.lock() {
            w.push(Waiting {
                device_msg_id,
                seq: f.header.seq,
                web_msg_id,
                web: web.clone(),
                since: Instant::now(),
            });
        }
    }
}
