//! The attacker's suite against the real binary on real sockets (and a real mosquitto):
//! each attack fails, the legitimate user keeps working, and the log stays small.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, Mosquitto, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(15);

struct Running {
    _child: KillOnDrop,
    dir: tempfile::TempDir,
    base: String,
    port: u16,
}

impl Running {
    fn log_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.path().join("log"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

/// The bridge with an EXLIVE server: account `fleet` (vehicles 7001 and 7002 only),
/// at most 50 links, 5 per address.
async fn exlive_bridge(broker: &Mosquitto) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("x{}", rand::random::<u32>());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[exlive]
enabled = true
listen = "127.0.0.1:{port}"
max_links = 50
max_links_per_address = 5

[[exlive.accounts]]
name = "fleet"
password = "s3cret-pass"
vehicles = ["7001", "7002"]
"#
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vehicle2mqtt"))
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("V2M_BRIDGE__STATE_DIR", dir.path().join("state"))
        .env("V2M_MQTT__URL", broker.url())
        .env("V2M_MQTT__BASE_TOPIC", &base)
        .env("V2M_MQTT__CLIENT_ID", format!("{base}-bridge"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    assert!(common::wait_port_async(port, T).await, "EXLIVE listener");
    Running {
        _child: KillOnDrop(child),
        dir,
        base,
        port,
    }
}

fn login(user: &str, pass: &str) -> String {
    format!(
        "{{\"header\":{{\"cmd\":\"1000\"}},\"body\":{{\"name\":\"{user}\",\"pass\":\"{pass}\",\"ver\":\"1\",\"type\":\"1\",\"mode\":\"1\"}}}}\n"
    )
}

fn position(id: &str, lat: f64) -> String {
    format!(
        "{{\"header\":{{\"cmd\":\"1007\"}},\"body\":{{\"code\":\"car{id}\",\"id\":\"{id}\",\"lat\":\"{lat}\",\"lng\":\"121.47\",\"veo\":\"0\",\"dir\":\"0\",\"gpstime\":\"2025-06-01 08:00:00\",\"av\":\"1\",\"alarm\":\"0\",\"dis\":\"1\"}}}}\n"
    )
}

/// Reads until the peer closes (or `within` passes): what it said, and whether it closed.
async fn read_all(s: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn exlive_floods_guesses_and_impostors_fail_and_the_log_stays_small() {
    let broker = Mosquitto::start();
    let bridge = exlive_bridge(&broker).await;
    let addr = format!("127.0.0.1:{}", bridge.port);
    let probe = Probe::connect(broker.port, &[&format!("{}/#", bridge.base)]).await;
    let log_before = bridge.log_bytes();

    // 1. Garbage before login: 2 MB of `{a{a...` closes the link after a few messages,
    //    and the log gets a handful of lines, not megabytes.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let flood = "{a".repeat(1 << 20);
    let _ = s.write_all(flood.as_bytes()).await;
    let (_, closed) = read_all(&mut s, T).await;
    assert!(closed, "the flooding link was kept open");
    // Zero bytes and near-JSON in a second link.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let _ = s.write_all(&vec![0u8; 1 << 16]).await;
    let _ = s
        .write_all(b"{\"header\":{\"cmd\":1007}}\n".repeat(100).as_slice())
        .await;
    let _ = read_all(&mut s, Duration::from_secs(3)).await;

    // 2. Parallel password guessing from one address: logins queue one at a time and
    //    slow down, so 20 links guessing at once finish only a few guesses in 3 s.
    let mut guesses = Vec::new();
    for i in 0..20 {
        let addr = addr.clone();
        guesses.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.ok()?;
            s.write_all(login("fleet", &format!("guess{i}")).as_bytes())
                .await
                .ok()?;
            let (answer, _) = read_all(&mut s, Duration::from_secs(3)).await;
            answer.contains("\"cmd\":\"1000\"").then_some(())
        }));
    }
    let mut answered = 0;
    for g in guesses {
        if g.await.unwrap().is_some() {
            answered += 1;
        }
    }
    assert!(
        answered <= 6,
        "{answered} of 20 parallel guesses were answered within 3 s"
    );

    // 3. One address cannot take every slot: the sixth link from it is closed at once.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sixth = TcpStream::connect(&addr).await.unwrap();
    let (_, closed) = read_all(&mut sixth, Duration::from_secs(2)).await;
    assert!(closed, "a sixth link from one address was kept");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 4. The right account may report only its own vehicles: 9999 is refused, 7001 shows.
    let mut legit = loop {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(login("fleet", "s3cret-pass").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if String::from_utf8_lossy(&buf[..n]).contains("success") {
            break s;
        }
        // The throttle from the guesses above may still hold this address back.
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    legit
        .write_all((position("9999", 10.0) + &position("7001", 31.23)).as_bytes())
        .await
        .unwrap();
    probe
        .wait_for("the allowed vehicle", T, |m| {
            m.topic == format!("{}/ex7001/state", bridge.base)
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !probe.messages().iter().any(|m| m.topic.contains("ex9999")),
        "an account posted for a vehicle it may not report"
    );
    let info = probe
        .wait_for("counters", T, |m| {
            m.topic == format!("{}/bridge/info", bridge.base)
                && m.json()["connectors"][0]["counters"]["not_allowed"] == 1
        })
        .await
        .json();
    let c = &info["connectors"][0]["counters"];
    assert!(c["malformed_closed"].as_u64() >= Some(1), "{c}");
    assert!(c["logins_failed"].as_u64() >= Some(1), "{c}");
    assert!(c["links_refused"].as_u64() >= Some(1), "{c}");
    drop(legit);

    // The log: a few kilobytes for megabytes of attack.
    let grew = bridge.log_bytes() - log_before;
    assert!(grew < 64 * 1024, "the log grew by {grew} bytes");
    let mut summary = std::io::stdout();
    let _ = writeln!(summary, "attack log growth: {grew} bytes");
}
