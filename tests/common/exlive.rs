//! EXLIVE by hand over real TCP: a raw peer (a tracker link, or a fake platform's end of
//! one) and the messages the tests send.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vehicle2mqtt::protocol::exlive::{Frame, Message, Splitter};

/// How long a read waits before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A raw EXLIVE peer.
pub struct Peer {
    pub stream: TcpStream,
    buf: bytes::BytesMut,
    splitter: Splitter,
}

impl Peer {
    pub async fn connect(port: u16) -> Peer {
        Peer::on(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
    }

    pub fn on(stream: TcpStream) -> Peer {
        Peer {
            stream,
            buf: bytes::BytesMut::new(),
            splitter: Splitter::default(),
        }
    }

    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await
    }

    pub async fn send_msg(&mut self, msg: &Message) {
        self.send(line(msg).as_bytes()).await.unwrap();
    }

    /// The next message, or None when the link closed.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(Frame::Object(raw)) = self.splitter.split(&mut self.buf).unwrap() {
                return Some(Message::decode(&raw).unwrap());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("read timed out")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Connects and logs in as `name`; returns the link and the answer.
    pub async fn login(port: u16, name: &str, pass: &str) -> (Peer, Message) {
        let mut p = Peer::connect(port).await;
        p.send_msg(&login(name, pass)).await;
        let ack = p.recv().await.expect("an answer to login");
        (p, ack)
    }

    pub async fn expect_closed(&mut self) {
        while let Some(m) = self.recv().await {
            if !matches!(m, Message::Ack { .. }) {
                panic!("expected the link to close, got {m:?}");
            }
        }
    }
}

/// `msg` as sent on a link: its JSON and a newline.
pub fn line(msg: &Message) -> String {
    format!("{}\n", msg.encode())
}

/// A 1000 login as `name`.
pub fn login(name: &str, pass: &str) -> Message {
    Message::Login {
        name: name.into(),
        pass: pass.into(),
        ver: String::new(),
        kind: String::new(),
        mode: String::new(),
    }
}

/// The server's answer to a good login.
pub fn success() -> Message {
    Message::Ack {
        cmd: "1000".into(),
        result: "success".into(),
    }
}

/// A recent GPS time as a tracker sends it (Asia/Shanghai local time) and in UTC: the
/// bridge's staleness follows the tracker's own clock, so positions must be fresh.
pub fn gps_time() -> &'static (String, String) {
    static TIME: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    TIME.get_or_init(|| {
        let utc = chrono::Utc::now() - chrono::Duration::seconds(60);
        let local = utc + chrono::Duration::hours(8);
        (
            local.format("%Y-%m-%d %H:%M:%S").to_string(),
            utc.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
    })
}

/// A 1007 position of terminal `id` at [`gps_time`], with `extra` fields (`,"k":"v"`)
/// at the end of its body.
pub fn position(id: &str, extra: &str) -> String {
    let gpstime = &gps_time().0;
    format!(
        r#"{{"header":{{"cmd":"1007"}},"body":{{"code":"沪A12345","id":"{id}","lat":"31.2304","lng":"121.4737","veo":"42.5","dir":"270","gpstime":"{gpstime}","av":"1","alarm":"0","oil":"33.5","dis":"12345.6","wstate":"","cstate":"ACC on"{extra}}}}}"#
    )
}
