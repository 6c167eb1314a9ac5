//! `vehicle2mqtt demo`: the bridge on its embedded broker with the kingxun and EXLIVE
//! listeners on local ports, and simulated devices on both, so a newcomer sees vehicles,
//! states and commands within seconds with nothing installed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::connectors::exlive::{ExliveAccount, ExliveCommand};
use crate::connectors::kingxun::KingxunDevice;
use crate::sim;

pub const DEMO_SEED: u64 = 2024;
pub const KINGXUN_DEVICES: u32 = 2;
pub const EXLIVE_LINKS: usize = 2;

pub struct DemoPorts {
    pub mqtt: u16,
    pub kingxun: u16,
    pub exlive: u16,
}

/// A complete configuration for the demo; everything on 127.0.0.1.
pub fn config(ports: &DemoPorts, state_dir: std::path::PathBuf) -> Config {
    let mut c = Config::default();
    c.mqtt.url = "embedded".into();
    c.mqtt.embedded_listen = ([127, 0, 0, 1], ports.mqtt).into();
    c.bridge.state_dir = state_dir;
    c.kingxun.enabled = true;
    c.kingxun.listen = ([127, 0, 0, 1], ports.kingxun).into();
    c.kingxun.devices = (0..KINGXUN_DEVICES)
        .map(|i| {
            let id = 1001 + i;
            KingxunDevice {
                id,
                key: Secret::new(hex::encode(sim::kingxun::derive_key(DEMO_SEED, id))),
                name: Some(format!("Demo scooter {}", i + 1)),
            }
        })
        .collect();
    c.exlive.enabled = true;
    c.exlive.listen = ([127, 0, 0, 1], ports.exlive).into();
    c.exlive.accounts = vec![ExliveAccount {
        name: "demo".into(),
        password: Secret::new("demo"),
    }];
    c.exlive.commands = vec![ExliveCommand {
        name: "locate".into(),
        data: "WHERE#".into(),
    }];
    c
}

async fn wait_for(addr: std::net::SocketAddr, shutdown: &CancellationToken) -> bool {
    for _ in 0..200 {
        if shutdown.is_cancelled() {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Starts the simulators once the bridge listens; runs until `shutdown`.
pub async fn simulators(config: Config, shutdown: CancellationToken) {
    if !wait_for(config.kingxun.listen, &shutdown).await
        || !wait_for(config.exlive.listen, &shutdown).await
    {
        tracing::error!("demo: the bridge's listeners did not come up; simulators not started");
        return;
    }
    let kx = sim::kingxun::SimOptions {
        server: config.kingxun.listen.to_string(),
        devices: KINGXUN_DEVICES as usize,
        first_id: 1001,
        key_seed: DEMO_SEED,
        interval: Duration::from_secs(2),
        trip_every: 15,
        answer_commands: true,
        stamp: false,
    };
    let ex = sim::exlive::SimOptions {
        server: config.exlive.listen.to_string(),
        links: EXLIVE_LINKS,
        rate: 0.5,
        user: "demo".into(),
        password: "demo".into(),
        first_id: 7001,
        stamp: false,
    };
    tokio::join!(
        sim::kingxun::run(kx, Default::default(), shutdown.clone()),
        sim::exlive::run(ex, Default::default(), shutdown.clone()),
    );
}

/// What the demo prints for the user.
pub fn instructions(config: &Config) -> String {
    let port = config.mqtt.embedded_listen.port();
    let base = &config.mqtt.base_topic;
    format!(
        "\nvehicle2mqtt demo: an MQTT broker on 127.0.0.1:{port}, kingxun devices kx1001 and kx1002, EXLIVE trackers ex7001 and ex7002.\n\
         \n  Watch everything:      mosquitto_sub -h 127.0.0.1 -p {port} -t '{base}/#' -v\n\
         \n  Unlock a scooter:      mosquitto_pub -h 127.0.0.1 -p {port} -t '{base}/kx1001/lock/set' -m UNLOCK\n\
         \n  Locate a tracker:      mosquitto_pub -h 127.0.0.1 -p {port} -t '{base}/ex7001/cmd_locate/set' -m PRESS\n\
         \n  Results arrive on      {base}/<vehicle>/command/result\n\
         \n  Home Assistant: add the MQTT integration with broker 127.0.0.1, port {port}; the vehicles appear as devices.\n\
         \nPress Ctrl-C to stop.\n"
    )
}
