//! The embedded broker's door: the bridge answers MQTT logins itself, in front of
//! rumqttd, because rumqttd drops a refused login without a CONNACK (a client then shows
//! only "connection failed", and `mosquitto_sub` sends CONNECT again forever, issue #27).
//! A right login is handed to rumqttd on its loopback port with the bytes read so far;
//! a wrong or missing one gets CONNACK "not authorised" (3.1.1 return code 5, MQTT 5
//! reason 0x87), is logged (rate-limited) and counted, and its address waits longer
//! after each failure (`connectors::throttle`), like every other login here.
//!
//! Only CONNECT is parsed (MQTT 3.1 / 3.1.1 section 3.1, MQTT 5 section 3.1), and only
//! as far as the password.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Secret;
use crate::connectors::throttle::GuessThrottle;

/// A CONNECT larger than this is refused unread (it carries a will at most).
const MAX_CONNECT: usize = 64 * 1024;
/// A client must send its CONNECT within this.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// A guesser's wait past this is not worth holding a connection for: it is closed.
const MAX_WAIT: Duration = Duration::from_secs(10);

static REFUSED_LOGINS: AtomicU64 = AtomicU64::new(0);

/// Logins the embedded broker refused since the start.
pub fn refused_logins() -> u64 {
    REFUSED_LOGINS.load(Ordering::Relaxed)
}

/// What a CONNECT says, as far as the door cares.
#[derive(Debug, PartialEq, Eq)]
pub struct Connect {
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub level: u8,
    pub username: Option<Vec<u8>>,
    pub password: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("CONNECT over {MAX_CONNECT} bytes")]
    TooBig,
    #[error("malformed CONNECT: {0}")]
    Malformed(&'static str),
}

/// A CONNECT from the start of `buf`: `Ok(None)` while more bytes are needed, else the
/// packet and its length in bytes.
pub fn parse_connect(buf: &[u8]) -> Result<Option<(Connect, usize)>, ConnectError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(ConnectError::NotConnect);
    }
    // Remaining length: up to four 7-bit groups (section 2.2.3).
    let mut remaining = 0usize;
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(ConnectError::Malformed("remaining length over four bytes"));
        }
    }
    let total = at + remaining;
    if total > MAX_CONNECT {
        return Err(ConnectError::TooBig);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut r = Reader {
        buf: &buf[at..total],
    };
    let name = r.string()?;
    let level = r.u8()?;
    match (name, level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => {}
        _ => return Err(ConnectError::Malformed("unknown protocol name or level")),
    }
    let flags = r.u8()?;
    r.take(2)?; // keep alive
    if level == 5 {
        let len = r.varint()?;
        r.take(len)?; // properties
    }
    r.string()?; // client id
    if flags & 0x04 != 0 {
        if level == 5 {
            let len = r.varint()?;
            r.take(len)?; // will properties
        }
        r.string()?; // will topic
        r.string()?; // will payload
    }
    let username = (flags & 0x80 != 0)
        .then(|| r.string().map(<[u8]>::to_vec))
        .transpose()?;
    let password = (flags & 0x40 != 0)
        .then(|| r.string().map(<[u8]>::to_vec))
        .transpose()?;
    Ok(Some((
        Connect {
            level,
            username,
            password,
        },
        total,
    )))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConnectError> {
        if self.buf.len() < n {
            return Err(ConnectError::Malformed("shorter than its fields"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ConnectError> {
        Ok(self.take(1)?[0])
    }

    /// A two-byte length and that many bytes.
    fn string(&mut self) -> Result<&'a [u8], ConnectError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        self.take(len)
    }

    fn varint(&mut self) -> Result<usize, ConnectError> {
        let mut value = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            value |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ConnectError::Malformed("property length over four bytes"))
    }
}

/// The CONNACK that refuses a login: 3.1.1 return code 5 "not authorized", MQTT 5 reason
/// 0x87 "Not authorized" with no properties.
pub fn connack_not_authorised(level: u8) -> &'static [u8] {
    match level {
        5 => &[0x20, 0x03, 0x00, 0x87, 0x00],
        _ => &[0x20, 0x02, 0x00, 0x05],
    }
}

/// Whether `c` carries the broker's login (compared in constant time; no login set: any).
fn admits(c: &Connect, login: Option<&(String, Secret)>) -> bool {
    let Some((user, password)) = login else {
        return true;
    };
    let same = |given: &Option<Vec<u8>>, wanted: &[u8]| {
        given
            .as_deref()
            .is_some_and(|g| bool::from(g.ct_eq(wanted)))
    };
    // Both compared, always: a right user with a wrong password takes as long as neither.
    let user_ok = same(&c.username, user.as_bytes());
    let password_ok = same(&c.password, password.expose().as_bytes());
    user_ok & password_ok
}

/// Accepts on `listener` until the process ends, at most `max_connections` at once.
pub async fn serve(
    listener: TcpListener,
    inner: SocketAddr,
    login: Option<(String, Secret)>,
    max_connections: usize,
) {
    let login = Arc::new(login);
    let throttle = Arc::new(GuessThrottle::one_at_a_time());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let log = Arc::new(crate::connectors::LogLimiter::new(
        10,
        Duration::from_secs(60),
    ));
    let mut backoff = crate::connectors::AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(err) => {
                let (wait, worth_a_line) = backoff.failed();
                if worth_a_line {
                    tracing::warn!(event = "embedded_broker_accept_failed", error = %err, "accept failed");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // full: the connection closes at once
        };
        let (login, throttle, log) = (login.clone(), throttle.clone(), log.clone());
        tokio::spawn(async move {
            let _slot = slot;
            door(stream, peer, inner, &login, &throttle, &log).await;
        });
    }
}

async fn door(
    mut stream: TcpStream,
    peer: SocketAddr,
    inner: SocketAddr,
    login: &Option<(String, Secret)>,
    throttle: &GuessThrottle,
    log: &crate::connectors::LogLimiter,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(256);
    let read = tokio::time::timeout(CONNECT_WITHIN, async {
        loop {
            match parse_connect(&buf) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                // A port probe, or a client that gave up: nothing to say.
                Ok(0) | Err(_) if buf.is_empty() => return Err(String::new()),
                Ok(0) | Err(_) => return Err("closed before its CONNECT".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let (connect, _len) = match read {
        Ok(Ok(found)) => found,
        Ok(Err(reason)) => {
            if !reason.is_empty() && log.allow() == Ok(true) {
                tracing::warn!(event = "embedded_broker_bad_connect", peer = %peer, reason, "not an MQTT login; closed");
            }
            return;
        }
        Err(_) => return, // silent past CONNECT_WITHIN: closed
    };
    let Ok(attempt) = throttle.attempt(peer.ip(), MAX_WAIT).await else {
        let _ = stream
            .write_all(connack_not_authorised(connect.level))
            .await;
        return;
    };
    if !admits(&connect, login.as_ref()) {
        attempt.failed();
        let n = REFUSED_LOGINS.fetch_add(1, Ordering::Relaxed) + 1;
        crate::status_page::problems::record(
            "embedded_broker_login_refused",
            peer,
            "MQTT login refused: wrong or missing user name or password",
        );
        if log.allow() == Ok(true) {
            tracing::warn!(event = "embedded_broker_login_refused", peer = %peer, refused = n,
                "MQTT login refused (wrong or missing user name or password; the bridge's own is in state_dir/embedded_broker.json)");
        }
        let _ = stream
            .write_all(connack_not_authorised(connect.level))
            .await;
        let _ = stream.shutdown().await;
        return;
    }
    attempt.succeeded();
    let Ok(mut broker) = TcpStream::connect(inner).await else {
        tracing::error!(
            event = "embedded_broker_unreachable",
            "the embedded broker does not accept on its loopback port"
        );
        return;
    };
    let _ = broker.set_nodelay(true);
    if broker.write_all(&buf).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut broker).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3.1.1 CONNECT, byte by byte (MQTT 3.1.1 section 3.1): client id "c1", user "u",
    /// password "pw".
    const CONNECT_311: &[u8] = &[
        0x10, 21, // CONNECT, remaining length 21
        0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
        0x04, // level 4 = 3.1.1
        0xC2, // flags: user name, password, clean session
        0x00, 0x3C, // keep alive 60 s
        0x00, 0x02, b'c', b'1', // client id
        0x00, 0x01, b'u', // user name
        0x00, 0x02, b'p', b'w', // password
    ];

    /// The same in MQTT 5 (section 3.1), with an empty property list.
    const CONNECT_5: &[u8] = &[
        0x10, 22, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xC2, 0x00, 0x3C,
        0x00, // properties: none
        0x00, 0x02, b'c', b'1', 0x00, 0x01, b'u', 0x00, 0x02, b'p', b'w',
    ];

    fn login() -> Option<(String, Secret)> {
        Some(("u".into(), Secret::new("pw")))
    }

    #[test]
    fn a_connect_is_read_in_any_pieces_and_its_login_checked() {
        for packet in [CONNECT_311, CONNECT_5] {
            for cut in 0..packet.len() {
                assert_eq!(parse_connect(&packet[..cut]), Ok(None), "{cut} bytes");
            }
            let (c, len) = parse_connect(packet).unwrap().unwrap();
            assert_eq!(len, packet.len());
            assert_eq!(c.username.as_deref(), Some(&b"u"[..]));
            assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
            assert!(admits(&c, login().as_ref()));
            let wrong = Connect {
                password: Some(b"px".to_vec()),
                ..c
            };
            assert!(!admits(&wrong, login().as_ref()));
            assert!(admits(&wrong, None), "no login set: anyone");
        }
        // Bytes after the CONNECT (a SUBSCRIBE sent at once) are not part of it.
        let mut more = CONNECT_311.to_vec();
        more.extend_from_slice(&[0x82, 0x05]);
        assert_eq!(parse_connect(&more).unwrap().unwrap().1, CONNECT_311.len());
    }

    #[test]
    fn no_login_a_will_and_garbage() {
        // 3.1.1 with a will and no user name: flags 0x06 (will, clean session).
        let packet: &[u8] = &[
            0x10, 20, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x01, b'c',
            0x00, 0x01, b't', 0x00, 0x02, b'w', b'!',
        ];
        let (c, _) = parse_connect(packet).unwrap().unwrap();
        assert_eq!((c.username, c.password), (None, None));
        assert!(!admits(
            &parse_connect(packet).unwrap().unwrap().0,
            login().as_ref()
        ));
        assert_eq!(
            parse_connect(b"GET / HTTP/1.1\r\n"),
            Err(ConnectError::NotConnect)
        );
        assert_eq!(
            parse_connect(&[0x10, 0xff, 0xff, 0xff, 0x7f]),
            Err(ConnectError::TooBig)
        );
        assert!(matches!(
            parse_connect(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(ConnectError::Malformed(_))
        ));
        // A length that says more than the packet holds.
        assert!(matches!(
            parse_connect(&[0x10, 4, 0x00, 0x09, b'M', b'Q']),
            Err(ConnectError::Malformed(_))
        ));
        assert!(matches!(
            parse_connect(&[0x10, 7, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x09]),
            Err(ConnectError::Malformed(_))
        ));
        assert_eq!(connack_not_authorised(4), &[0x20, 0x02, 0x00, 0x05]);
        assert_eq!(connack_not_authorised(5), &[0x20, 0x03, 0x00, 0x87, 0x00]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_cost_only_an_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_connect(&bytes);
        }
    }
}
