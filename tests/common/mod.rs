//! Shared test harness: a real mosquitto per test on its own port, an MQTT probe client
//! that records everything it sees, a connector the test drives by hand, bridges in this
//! process and the real binary, and upstream peers driven by hand (`kingxun`, `exlive`).
#![allow(dead_code)]

pub mod cluster;
pub mod exlive;
pub mod kingxun;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::config::Config;
use vehicle2mqtt::connector::{Connector, ConnectorContext, ConnectorFuture};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Like [`wait_port`], without blocking the test's runtime (for in-process servers).
pub async fn wait_port_async(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A mosquitto broker on a free loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Replaces the default (anonymous) listener settings.
    listener_conf: Option<String>,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
            listener_conf: None,
        };
        m.spawn();
        m
    }

    /// A broker whose listener takes `conf` (e.g. a password file or TLS) instead of
    /// allowing anonymous clients. `setup` prepares files in the broker's folder first.
    pub fn start_with(setup: impl FnOnce(&std::path::Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = setup(dir.path());
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            listener_conf: Some(conf),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\npersistence false\nmax_packet_size 2000000\n{}\n",
                self.port,
                self.listener_conf
                    .as_deref()
                    .unwrap_or("allow_anonymous true")
            ),
        )
        .expect("write mosquitto.conf");
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("mosquitto"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (.ci/run installs it)");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "mosquitto did not start on {}",
            self.port
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// An MQTT client that records every message on its subscriptions.
pub struct Probe {
    pub client: AsyncClient,
    log: Arc<Mutex<Vec<Msg>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub async fn connect(port: u16, filters: &[&str]) -> Probe {
        Probe::connect_login(port, filters, None).await
    }

    /// Like `connect`, logging in as `(username, password)` (the embedded broker
    /// admits no anonymous client).
    pub async fn connect_login(port: u16, filters: &[&str], login: Option<(&str, &str)>) -> Probe {
        let id = format!("probe-{}", rand::random::<u32>());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(2 << 20, 2 << 20);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let sink = log.clone();
        let subs: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        let sub_client = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &subs {
                            let _ = sub_client.subscribe(f.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        if !filters.is_empty() {
            tokio::time::timeout(Duration::from_secs(10), ready_rx)
                .await
                .expect("probe subscribed")
                .ok();
        }
        Probe { client, log, task }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// Waits until a message matches, returning the first such message.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Msg {
        let end = Instant::now() + timeout;
        loop {
            // Snapshot first: the predicate may read the probe itself.
            let snapshot = self.messages();
            if let Some(m) = snapshot.into_iter().find(|m| pred(m)) {
                return m;
            }
            if Instant::now() > end {
                let seen: Vec<String> = self
                    .messages()
                    .iter()
                    .map(|m| format!("{} = {}", m.topic, m.text()))
                    .take(60)
                    .collect();
                panic!("timed out waiting for {what}; saw:\n{}", seen.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_topic(&self, topic: &str, timeout: Duration) -> Msg {
        self.wait_for(topic, timeout, |m| m.topic == topic).await
    }

    pub async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .expect("publish");
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connector that hands its context to the test, which then plays the upstream.
pub struct HandConnector {
    pub ctx: oneshot::Sender<ConnectorContext>,
}

impl Connector for HandConnector {
    fn name(&self) -> &'static str {
        "test"
    }
    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            let shutdown = ctx.shutdown.clone();
            let _ = self.ctx.send(ctx);
            shutdown.cancelled().await;
            Ok(())
        })
    }
}

/// A config for tests: the given broker, a unique base topic and state dir.
pub fn test_config(broker_url: &str, state_dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.mqtt.url = broker_url.to_string();
    c.mqtt.base_topic = format!("t{}", rand::random::<u32>());
    c.mqtt.client_id = format!("v2m-{}", rand::random::<u32>());
    c.bridge.state_dir = state_dir.to_path_buf();
    c
}

/// A bridge running in this process with one hand-driven connector.
pub struct RunningBridge {
    pub ctx: ConnectorContext,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningBridge {
    pub async fn start(config: Config) -> RunningBridge {
        let (tx, rx) = oneshot::channel();
        let shutdown = CancellationToken::new();
        let connectors: Vec<Box<dyn Connector>> = vec![Box::new(HandConnector { ctx: tx })];
        let task = tokio::spawn(vehicle2mqtt::bridge::run(
            config,
            connectors,
            shutdown.clone(),
        ));
        let ctx = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("connector started")
            .expect("ctx");
        RunningBridge {
            ctx,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// The real binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_vehicle2mqtt");

/// A command for the binary with a clean environment (no stray `V2M_` from the caller)
/// in the working directory `dir`, its state in `dir/state`.
pub fn bridge_cmd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.env("V2M_BRIDGE__STATE_DIR", dir.join("state"));
    cmd
}

/// [`bridge_cmd`] pointed at `broker` with topics under `base` (client id `<base>-bridge`).
pub fn bridge_against(broker: &Mosquitto, dir: &std::path::Path, base: &str) -> Command {
    let mut cmd = bridge_cmd(dir);
    cmd.env("V2M_MQTT__URL", broker.url())
        .env("V2M_MQTT__BASE_TOPIC", base)
        .env("V2M_MQTT__CLIENT_ID", format!("{base}-bridge"));
    cmd
}

/// Kills a child process on drop, so a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn command_rx(
    ctx: &mut ConnectorContext,
) -> &mut mpsc::Receiver<vehicle2mqtt::connector::CommandRequest> {
    &mut ctx.commands
}

/// A bridge running in this process with a real connector, against a real broker.
pub struct ConnectorBridge {
    pub base: String,
    /// The free port handed to the connector's listener.
    pub port: u16,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl ConnectorBridge {
    /// `setup` completes the config (given a free port for the connector's listener) and
    /// returns the connector and whether its listener will open (to wait for it).
    pub async fn start_with(
        broker: &Mosquitto,
        setup: impl FnOnce(&mut Config, u16) -> (Box<dyn Connector>, bool),
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bridge = Self::start_in(broker, dir.path(), free_port(), setup).await;
        bridge._dir = Some(dir);
        bridge
    }

    /// As [`start_with`](Self::start_with), with the state in `state_dir` and the
    /// listener on `port` (a restart: the same state, where the devices link again).
    pub async fn start_in(
        broker: &Mosquitto,
        state_dir: &std::path::Path,
        port: u16,
        setup: impl FnOnce(&mut Config, u16) -> (Box<dyn Connector>, bool),
    ) -> Self {
        let mut config = test_config(&broker.url(), state_dir);
        let (connector, listens) = setup(&mut config, port);
        let shutdown = CancellationToken::new();
        let base = config.mqtt.base_topic.clone();
        let task = tokio::spawn(vehicle2mqtt::bridge::run(
            config,
            vec![connector],
            shutdown.clone(),
        ));
        if listens {
            assert!(
                wait_port_async(port, Duration::from_secs(10)).await,
                "the connector's listener did not start"
            );
        }
        ConnectorBridge {
            base,
            port,
            shutdown,
            task,
            _dir: None,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    pub fn topic(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.base)
    }

    /// The state dir [`start_with`](Self::start_with) made.
    #[allow(dead_code)] // not every test binary looks into it
    pub fn state_dir(&self) -> &std::path::Path {
        self._dir
            .as_ref()
            .map_or(std::path::Path::new(""), |d| d.path())
    }
}

/// The embedded broker's login the bridge made in `state_dir`, waiting for the file.
pub fn embedded_login(state_dir: &std::path::Path) -> (String, String) {
    let path = state_dir.join("embedded_broker.json");
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(raw) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&raw) {
                return (
                    v["username"].as_str().unwrap_or_default().to_string(),
                    v["password"].as_str().unwrap_or_default().to_string(),
                );
            }
        }
        assert!(
            Instant::now() < end,
            "no embedded broker login in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
