//! PROXY protocol v2 on a device listener (`exlive.proxy_protocol`), against the real
//! binary on real sockets: the header's address is the device's (per-address limit, log),
//! the device's first bytes in the same write are not lost, and a link without a proper
//! header, or a slow one, is refused.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::exlive::{login, success, Peer};
use common::{KillOnDrop, Mosquitto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vehicle2mqtt::protocol::proxy_v2;

const T: Duration = Duration::from_secs(15);

struct Running {
    _child: KillOnDrop,
    dir: tempfile::TempDir,
    port: u16,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

/// The real binary with `config(port)` for a listener on a free `port`, logging to
/// `dir/log`.
async fn spawn(broker: &Mosquitto, config: impl FnOnce(u16) -> String) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("p{}", rand::random::<u32>());
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(port)).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = common::bridge_against(broker, dir.path(), &base)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    assert!(common::wait_port_async(port, T).await, "device listener");
    Running {
        _child: KillOnDrop(child),
        dir,
        port,
    }
}

/// The binary with an EXLIVE server behind a balancer: one link per device address.
async fn bridge(broker: &Mosquitto) -> Running {
    spawn(broker, |port| {
        format!(
            r#"[exlive]
enabled = true
listen = "127.0.0.1:{port}"
max_links = 20
max_links_per_address = 1
proxy_protocol = true

[[exlive.accounts]]
name = "fleet"
password = "s3cret-pass"
"#
        )
    })
    .await
}

fn header(source: &str, port: u16) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    proxy_v2::encode(source, destination).unwrap()
}

fn login_line() -> Vec<u8> {
    common::exlive::line(&login("fleet", "s3cret-pass")).into_bytes()
}

/// Whether the bridge closed the link without a word within `within`.
async fn closed_silently(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn links_behind_a_balancer_are_the_devices_own() {
    let broker = Mosquitto::start();
    let b = bridge(&broker).await;

    // The header and the login in one write: the login is not lost, and the log names
    // the device's address, not the balancer's.
    let mut bytes = header("203.0.113.5:40001", b.port);
    bytes.extend_from_slice(&login_line());
    let mut first = Peer::connect(b.port).await;
    first.send(&bytes).await.unwrap();
    assert_eq!(first.recv().await, Some(success()));

    // Another device through the same balancer (one TCP peer): its own address, its own
    // slot, though max_links_per_address is 1.
    let mut second = Peer::connect(b.port).await;
    second
        .send(&header("198.51.100.9:40002", b.port))
        .await
        .unwrap();
    second.send(&login_line()).await.unwrap();
    assert_eq!(second.recv().await, Some(success()));

    // A second link from the first device's address: past its one slot, refused.
    let mut third = TcpStream::connect(("127.0.0.1", b.port)).await.unwrap();
    third
        .write_all(&header("203.0.113.5:40003", b.port))
        .await
        .unwrap();
    third.write_all(&login_line()).await.unwrap();
    assert!(
        closed_silently(&mut third, T).await,
        "a second link from 203.0.113.5 was served"
    );

    // A header in pieces, a byte at a time: still a device.
    let mut slow_but_whole = Peer::connect(b.port).await;
    for byte in header("192.0.2.77:40004", b.port) {
        slow_but_whole.send(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    slow_but_whole.send(&login_line()).await.unwrap();
    assert_eq!(slow_but_whole.recv().await, Some(success()));

    // LOCAL (the balancer's health check): the real peer's address stands.
    let mut local = proxy_v2::SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    local.extend_from_slice(&login_line());
    let mut check = Peer::connect(b.port).await;
    check.send(&local).await.unwrap();
    assert_eq!(check.recv().await, Some(success()));

    let log = b.log();
    assert!(
        log.contains("203.0.113.5:40001"),
        "the device's address in the log:\n{log}"
    );
    assert!(log.contains("198.51.100.9:40002"), "{log}");
    assert!(log.contains("192.0.2.77:40004"), "{log}");
    assert!(log.contains("max_links_per_address reached"), "{log}");
    drop((first, second, slow_but_whole, check));
}

#[tokio::test]
async fn links_without_a_proper_header_are_refused() {
    let broker = Mosquitto::start();
    let b = bridge(&broker).await;

    // A tracker that knows nothing of the balancer: its login is never answered.
    let mut plain = TcpStream::connect(("127.0.0.1", b.port)).await.unwrap();
    plain.write_all(&login_line()).await.unwrap();
    assert!(
        closed_silently(&mut plain, T).await,
        "a link without a header was served"
    );

    // Version 1's text header; a header almost right (UDP); an oversized length.
    let v1 = b"PROXY TCP4 203.0.113.5 127.0.0.1 40001 1502\r\n".to_vec();
    let mut udp = header("203.0.113.5:40001", b.port);
    udp[13] = 0x12;
    let mut huge = header("203.0.113.5:40001", b.port);
    huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    for (what, bytes) in [("v1", v1), ("udp", udp), ("huge", huge)] {
        let mut s = TcpStream::connect(("127.0.0.1", b.port)).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let _ = s.write_all(&login_line()).await;
        assert!(closed_silently(&mut s, T).await, "{what}: served");
    }

    // A link that sends part of a header and then nothing: closed after the 5 s allowed.
    let started = std::time::Instant::now();
    let mut stalled = TcpStream::connect(("127.0.0.1", b.port)).await.unwrap();
    stalled
        .write_all(&header("203.0.113.5:40001", b.port)[..10])
        .await
        .unwrap();
    assert!(
        closed_silently(&mut stalled, T).await,
        "a stalled header kept its link"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed before its time"
    );

    // Meanwhile a proper device still gets in.
    let mut ok = Peer::connect(b.port).await;
    let mut bytes = header("192.0.2.1:40009", b.port);
    bytes.extend_from_slice(&login_line());
    ok.send(&bytes).await.unwrap();
    assert_eq!(ok.recv().await, Some(success()));

    // Refusals are logged at powers of two (1, 2, 4, 8 ...), each with its reason.
    let log = b.log();
    assert!(
        log.contains("bad PROXY header: no PROXY v2 signature"),
        "{log}"
    );
    assert!(log.contains("family/transport 0x12"), "{log}");
    assert!(!log.contains("s3cret-pass"), "a password in the log");
}

/// kingxun's listener takes the same setting: a device behind the header registers; one
/// without it gets no answer.
#[tokio::test]
async fn a_kingxun_device_behind_a_balancer_registers() {
    use common::kingxun::RawDevice;
    const SEED: u64 = 5;
    let broker = Mosquitto::start();
    let key = hex::encode(vehicle2mqtt::connectors::kingxun::sim::derive_key(
        SEED, 1001,
    ));
    let b = spawn(&broker, |port| {
        format!(
            "[kingxun]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nproxy_protocol = true\n\n\
             [[kingxun.devices]]\nid = 1001\nkey = \"{key}\"\n"
        )
    })
    .await;
    let port = b.port;

    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(&header("203.0.113.44:50000", port))
        .await
        .unwrap();
    let mut device = RawDevice::on(stream, SEED, 1001, 100);
    assert!(
        matches!(device.register_within(T).await, Some(Ok(_))),
        "registered behind the header"
    );
    let mut bare = RawDevice::on(
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        SEED,
        1001,
        100,
    );
    assert_eq!(
        bare.register_within(Duration::from_secs(8)).await,
        None,
        "answered without a header"
    );
    let log = b.log();
    assert!(log.contains("203.0.113.44:50000"), "{log}");
}

/// Through a real HAProxy (Debian `haproxy`, `send-proxy-v2`): the bridge sees each
/// client's own port, which only the header carries (HAProxy's own connection to the
/// bridge has another). Run by `.ci/haproxy-test`, which installs HAProxy.
#[tokio::test]
#[ignore = "needs haproxy: .ci/haproxy-test"]
async fn through_a_real_haproxy() {
    let broker = Mosquitto::start();
    let b = bridge(&broker).await;
    let front = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend devices\n  bind 127.0.0.1:{front}\n  default_backend bridges\n\
             backend bridges\n  server b1 127.0.0.1:{} send-proxy-v2\n",
            b.port
        ),
    )
    .unwrap();
    let haproxy = std::process::Command::new(
        ["/usr/sbin/haproxy", "haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists() || *p == "haproxy")
            .unwrap(),
    )
    .args(["-db", "-f"])
    .arg(&cfg)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("haproxy runs");
    let _haproxy = KillOnDrop(haproxy);
    assert!(common::wait_port_async(front, T).await, "haproxy listens");

    let mut ports = Vec::new();
    let mut peers = Vec::new();
    // Two links from one client address: the first served, the second refused past
    // max_links_per_address = 1.
    // The readiness probe's own link through HAProxy may still hold the address's one
    // slot for a moment: the first device tries again until it is served.
    for attempt in 0.. {
        let stream = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
        let port = stream.local_addr().unwrap().port();
        let mut p = Peer::on(stream);
        p.send(&login_line()).await.unwrap();
        match p.recv().await {
            Some(answer) => {
                assert_eq!(answer, success(), "through haproxy");
                ports.push(port);
                peers.push(p);
                break;
            }
            None if attempt < 20 => tokio::time::sleep(Duration::from_millis(250)).await,
            None => panic!("no login through haproxy"),
        }
    }
    let stream = TcpStream::connect(("127.0.0.1", front)).await.unwrap();
    let mut p = Peer::on(stream);
    p.send(&login_line()).await.unwrap();
    peers.push(p);
    let mut second = peers.pop().unwrap();
    assert!(
        closed_silently(&mut second.stream, T).await,
        "the second link from 127.0.0.1 took a slot past max_links_per_address = 1"
    );
    let log = b.log();
    assert!(
        log.contains(&format!("peer=127.0.0.1:{} ", ports[0])),
        "the bridge logged the client's own port {}:\n{log}",
        ports[0]
    );
}
