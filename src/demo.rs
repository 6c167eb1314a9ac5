//! `vehicle2mqtt demo`: the bridge on its embedded broker with the kingxun and EXLIVE
//! listeners on local ports and simulated devices on both, plus a fake Lynk & Co cloud
//! and a fake iauto360 platform it polls, so a newcomer sees every kind of vehicle,
//! state and command within seconds with nothing installed.

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
    /// The fake xchanger cloud.
    pub xchanger: u16,
    /// The fake iauto360 platform, and the bridge's push endpoint it pushes to.
    pub iauto360: u16,
    pub push: u16,
}

const DEMO_APP_KEY: &str = "demo-app-key";
const DEMO_ESN: &str = "865432100012345";

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
                profile: None,
                accept_plain_frames: None,
            }
        })
        .collect();
    c.exlive.enabled = true;
    c.exlive.listen = ([127, 0, 0, 1], ports.exlive).into();
    c.exlive.accounts = vec![ExliveAccount {
        name: "demo".into(),
        password: Secret::new("demo"),
        vehicles: Vec::new(),
    }];
    c.exlive.commands = vec![ExliveCommand {
        name: "locate".into(),
        data: "WHERE#".into(),
    }];
    let x = &mut c.xchanger;
    x.enabled = true;
    x.base_url = format!("http://127.0.0.1:{}", ports.xchanger);
    x.auth_base_url = x.base_url.clone();
    let fake = sim::xchanger::FakeOptions::default();
    x.username = fake.username;
    x.password = Secret::new(fake.password);
    x.app_key = Secret::new(DEMO_APP_KEY);
    // The shipped defaults: commands are confirmed on their own schedule.
    x.poll_interval = Duration::from_secs(30);
    let i = &mut c.iauto360;
    i.enabled = true;
    i.base_url = format!("http://127.0.0.1:{}", ports.iauto360);
    let fake = sim::iauto360::FakeOptions::default();
    i.open_id = fake.open_id;
    i.secure_code = Secret::new(fake.secure_code);
    i.devices = vec![crate::connectors::iauto360::Iauto360Device {
        esn: DEMO_ESN.into(),
        name: Some("Demo car".into()),
    }];
    i.push_listen = Some(([127, 0, 0, 1], ports.push).into());
    i.poll_interval = Duration::from_secs(30);
    i.poll_interval_active = Some(Duration::from_secs(5));
    i.detail_interval = Duration::from_secs(300);
    c
}

/// The fake clouds the demo's cloud connectors poll; they stop when dropped.
pub struct Clouds {
    _xchanger: sim::xchanger::FakeXchanger,
    _iauto360: sim::iauto360::FakeIauto360,
}

/// Starts the fake clouds (before the bridge, so its first polls find them).
pub async fn clouds(config: &Config) -> anyhow::Result<Clouds> {
    let port = |url: &str| -> anyhow::Result<std::net::SocketAddr> {
        let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        port.map(|p| ([127, 0, 0, 1], p).into())
            .ok_or_else(|| anyhow::anyhow!("demo: no port in {url}"))
    };
    let xchanger = sim::xchanger::FakeXchanger::start(
        sim::xchanger::FakeOptions {
            app_key: Some(DEMO_APP_KEY.into()),
            ..Default::default()
        },
        port(&config.xchanger.base_url)?,
    )
    .await?;
    let push_url = config
        .iauto360
        .push_listen
        .map(|a| format!("http://{a}{}", config.iauto360.push_path));
    let iauto360 = sim::iauto360::FakeIauto360::start(
        sim::iauto360::FakeOptions {
            push_url,
            ..Default::default()
        },
        port(&config.iauto360.base_url)?,
    )
    .await?;
    Ok(Clouds {
        _xchanger: xchanger,
        _iauto360: iauto360,
    })
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
        profile: Default::default(),
        plain_status: false,
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
/// Every port the demo listens on must be free: the first taken one is named with the
/// flag that moves it (1883 is often taken on a Home Assistant host).
pub fn check_ports(config: &Config) -> Result<(), String> {
    let url_port = |url: &str| url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let mut wanted: Vec<(std::net::SocketAddr, &str)> = vec![
        (config.kingxun.listen, "--kingxun-port"),
        (config.exlive.listen, "--exlive-port"),
    ];
    if config.mqtt.url == "embedded" {
        wanted.insert(0, (config.mqtt.embedded_listen, "--mqtt-port"));
    }
    for (url, flag) in [
        (&config.xchanger.base_url, "--xchanger-port"),
        (&config.iauto360.base_url, "--iauto360-port"),
    ] {
        if let Some(p) = url_port(url) {
            wanted.push((([127, 0, 0, 1], p).into(), flag));
        }
    }
    if let Some(push) = config.iauto360.push_listen {
        wanted.push((push, "--push-port"));
    }
    for (addr, flag) in wanted {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(format!(
                "port {} is taken ({e}): start the demo with `{flag} <free port>`, e.g. `vehicle2mqtt demo {flag} {}`",
                addr.port(),
                addr.port().saturating_add(1)
            ));
        }
    }
    Ok(())
}

pub fn instructions(config: &Config) -> String {
    let port = config.mqtt.embedded_listen.port();
    let base = &config.mqtt.base_topic;
    // The embedded broker admits no anonymous client: its login goes on every command line.
    let login = if config.mqtt.username.is_empty() {
        String::new()
    } else {
        format!(
            " -u {} -P {}",
            config.mqtt.username,
            config.mqtt.password.expose()
        )
    };
    format!(
        "\nvehicle2mqtt demo: an MQTT broker on 127.0.0.1:{port}, kingxun devices kx1001 and kx1002, EXLIVE trackers ex7001 and ex7002,\n\
         a Lynk & Co car L6T7722E0LN000001 (fake xchanger cloud) and an OBD box ia{DEMO_ESN} (fake iauto360 platform).\n\
         \n  (mosquitto_sub / mosquitto_pub come with the mosquitto clients: apt install mosquitto-clients)\n\
         \n  Watch everything:      mosquitto_sub -h 127.0.0.1 -p {port}{login} -t '{base}/#' -v\n\
         \n  Unlock a scooter:      mosquitto_pub -h 127.0.0.1 -p {port}{login} -t '{base}/kx1001/lock/set' -m UNLOCK\n\
         \n  Locate a tracker:      mosquitto_pub -h 127.0.0.1 -p {port}{login} -t '{base}/ex7001/cmd_locate/set' -m PRESS\n\
         \n  Start the car:         mosquitto_pub -h 127.0.0.1 -p {port}{login} -t '{base}/L6T7722E0LN000001/engine/set' -m ON\n\
         \n  Results arrive on      {base}/<vehicle>/command/result\n\
         \n  Home Assistant: add the MQTT integration with broker 127.0.0.1, port {port}, user {user}, password {password}; the vehicles appear as devices.\n\
         \nPress Ctrl-C to stop.\n",
        user = config.mqtt.username,
        password = config.mqtt.password.expose(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let ports = DemoPorts {
            mqtt: 1883,
            kingxun: 10086,
            exlive: 1502,
            xchanger: 8480,
            iauto360: 8490,
            push: 8089,
        };
        let c = config(&ports, std::env::temp_dir());
        assert_eq!(c.xchanger.validate(), Ok(()));
        assert_eq!(c.iauto360.validate(), Ok(()));
        assert_eq!(c.kingxun.validate(), Ok(()));
        assert_eq!(c.exlive.validate(), Ok(()));
    }
}
