//! kingxun peers driven by hand over real TCP: any peer speaking frames (a device, a web
//! server), and a device that registers, seals its requests with its key and answers.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::Decoder;
use vehicle2mqtt::connectors::kingxun::sim::derive_key;
use vehicle2mqtt::protocol::kingxun::{
    crypto, id, Decoded, Frame, Kind, KxCodec, Register, RegisterAck,
};

/// How long a read waits before the test fails (or, for `recv_within`, gives up).
pub const WAIT: Duration = Duration::from_secs(10);

/// One raw TCP peer speaking kingxun frames.
pub struct Peer {
    pub stream: TcpStream,
    buf: BytesMut,
    pub codec: KxCodec,
}

impl Peer {
    pub async fn connect(addr: impl ToSocketAddrs) -> Peer {
        Peer::on(TcpStream::connect(addr).await.unwrap())
    }

    pub fn on(stream: TcpStream) -> Peer {
        Peer {
            stream,
            buf: BytesMut::new(),
            codec: KxCodec::default(),
        }
    }

    pub async fn send(&mut self, f: &Frame) {
        self.stream.write_all(&f.to_bytes()).await.unwrap();
    }

    pub async fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b).await
    }

    /// The next frame with its raw bytes: `Ok(None)` when the link closed, `Err` when
    /// nothing came within `wait`.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(Frame, Vec<u8>)>, tokio::time::error::Elapsed> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let before = self.buf.clone();
            match self.codec.decode(&mut self.buf).unwrap() {
                Some(Decoded::Frame(f)) => {
                    let raw = before[..before.len() - self.buf.len()].to_vec();
                    return Ok(Some((f, raw)));
                }
                Some(Decoded::Skipped(_)) => continue,
                None => {}
            }
            let mut chunk = [0u8; 4096];
            let Ok(n) = tokio::time::timeout_at(end, self.stream.read(&mut chunk)).await? else {
                return Ok(None);
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame with its raw bytes, or `None` when nothing arrives within `wait`
    /// (or the link closed).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<(Frame, Vec<u8>)> {
        self.next_within(wait).await.ok().flatten()
    }

    pub async fn recv(&mut self) -> (Frame, Vec<u8>) {
        self.recv_within(WAIT).await.expect("a frame")
    }
}

/// A device driven by hand, byte by byte: its key is the simulator's for `seed`.
pub struct RawDevice {
    pub peer: Peer,
    pub dev_id: u32,
    pub session_id: u32,
    pub key: [u8; 16],
    pub iv: [u8; 16],
    pub seq: u16,
}

impl RawDevice {
    pub async fn connect(port: u16) -> TcpStream {
        TcpStream::connect(("127.0.0.1", port)).await.unwrap()
    }

    /// Device `dev_id` (its key from `seed`) on `stream`, not registered yet.
    pub fn on(stream: TcpStream, seed: u64, dev_id: u32, seq: u16) -> RawDevice {
        RawDevice {
            peer: Peer::on(stream),
            dev_id,
            session_id: 0,
            key: derive_key(seed, dev_id),
            iv: [0; 16],
            seq,
        }
    }

    /// Connects and registers; returns the device or the refusal's RespCode.
    pub async fn register(port: u16, seed: u64, dev_id: u32) -> Result<RawDevice, u32> {
        let mut d = RawDevice::on(Self::connect(port).await, seed, dev_id, 100);
        match d.register_within(WAIT).await.expect("registration answer") {
            Ok(_) => Ok(d),
            Err(code) => Err(code),
        }
    }

    /// A plain 1001: `Ok(session)` (kept, with the new IV), `Err(RespCode)` of a refusal,
    /// or `None` when no answer came within `within` (or the link closed).
    pub async fn register_within(&mut self, within: Duration) -> Option<Result<u32, u32>> {
        let body = Bytes::from(Register::default().encode());
        let frame = Frame::request(id::REGISTER, 1, self.dev_id, 0, false, body);
        self.send_raw(&frame.to_bytes()).await.ok()?;
        let (ack, _) = self.peer.next_within(within).await.ok()??;
        match ack.header.kind {
            Kind::Response { resp_code: 0 } => {
                let a = RegisterAck::decode(&ack.body).ok()?;
                self.session_id = a.session_id;
                self.iv = a.iv;
                Some(Ok(a.session_id))
            }
            Kind::Response { resp_code } => Some(Err(resp_code)),
            _ => None,
        }
    }

    pub async fn send(&mut self, f: Frame) {
        self.peer.send(&f).await;
    }

    pub async fn send_raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.peer.send_raw(b).await
    }

    /// Sends `plain` as the next request (sealed with the device's key when `crypt`);
    /// returns its SeqNum.
    pub async fn request(&mut self, msg_id: u16, crypt: bool, plain: Vec<u8>) -> u16 {
        self.seq += 1;
        let body = if crypt {
            crypto::encrypt(&self.key, &self.iv, &plain)
        } else {
            plain
        };
        let f = Frame::request(
            msg_id,
            self.seq,
            self.dev_id,
            self.session_id,
            crypt,
            Bytes::from(body),
        );
        self.send(f).await;
        self.seq
    }

    /// The next frame, or None when the link closed (a read that times out fails).
    pub async fn recv(&mut self) -> Option<Frame> {
        let next = self.peer.next_within(WAIT).await.expect("read timed out");
        next.map(|(f, _)| f)
    }

    /// The answer to request `seq`: its RespCode and body.
    pub async fn response(&mut self, seq: u16) -> (u32, Bytes) {
        loop {
            let f = self.recv().await.expect("a response");
            if let Kind::Response { resp_code } = f.header.kind {
                if f.header.seq == seq {
                    return (resp_code, f.body);
                }
            }
        }
    }
}
