//! `vehicle2mqtt demo`: the bridge on its embedded broker with every upstream of the
//! registry simulated on local ports (devices that link to its listeners, fake clouds it
//! polls), so a newcomer sees every kind of vehicle, state and command within seconds
//! with nothing installed. Each upstream's part is its [`crate::upstream::Simulated`].

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::registry::Upstreams;

/// The demo's ports: the embedded broker's and each upstream's (by flag, `kingxun-port`).
#[derive(Debug, Clone)]
pub struct DemoPorts {
    pub mqtt: u16,
    pub upstream: BTreeMap<&'static str, u16>,
}

impl Default for DemoPorts {
    fn default() -> Self {
        DemoPorts {
            mqtt: 1883,
            upstream: Upstreams::demo_ports().into_iter().collect(),
        }
    }
}

impl DemoPorts {
    /// The port for `flag`; an upstream asking for a flag it did not declare gets 0 (any).
    pub fn port(&self, flag: &str) -> u16 {
        self.upstream.get(flag).copied().unwrap_or(0)
    }
}

/// `--mqtt-port` and every upstream's `--<flag>` with its default.
impl clap::Args for DemoPorts {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let port = |flag: &'static str, default: u16| {
            clap::Arg::new(flag)
                .long(flag)
                .value_parser(clap::value_parser!(u16))
                .value_name("PORT")
                .help(format!("[default: {default}]"))
        };
        let mut cmd = cmd.arg(port("mqtt-port", 1883));
        for (flag, default) in Upstreams::demo_ports() {
            cmd = cmd.arg(port(flag, default));
        }
        cmd
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for DemoPorts {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let get = |flag: &str, default: u16| m.get_one::<u16>(flag).copied().unwrap_or(default);
        Ok(DemoPorts {
            mqtt: get("mqtt-port", 1883),
            upstream: Upstreams::demo_ports()
                .into_iter()
                .map(|(flag, default)| (flag, get(flag, default)))
                .collect(),
        })
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// A complete configuration for the demo; everything on 127.0.0.1.
pub fn config(ports: &DemoPorts, state_dir: std::path::PathBuf) -> Config {
    let mut c = Config::default();
    c.mqtt.url = "embedded".into();
    c.mqtt.embedded_listen = ([127, 0, 0, 1], ports.mqtt).into();
    c.bridge.state_dir = state_dir;
    c.upstreams.demo_config(&|flag| ports.port(flag));
    c
}

/// What the demo keeps running beside the bridge (fake clouds); they stop when dropped.
pub struct Clouds {
    _running: Vec<crate::upstream::Running>,
}

/// Starts the fake clouds (before the bridge, so its first polls find them).
pub async fn clouds(config: &Config) -> anyhow::Result<Clouds> {
    Ok(Clouds {
        _running: config.upstreams.demo_before().await?,
    })
}

/// Starts the simulated devices; each waits for the bridge's listener it links to. Runs
/// until `shutdown`.
pub async fn simulators(config: Config, shutdown: CancellationToken) {
    config.upstreams.demo_after(shutdown).await;
}

/// Every port the demo listens on must be free: the first taken one is named with the
/// flag that moves it (1883 is often taken on a Home Assistant host).
pub fn check_ports(config: &Config) -> Result<(), String> {
    let mut wanted = Vec::new();
    if config.mqtt.url == "embedded" {
        wanted.push((config.mqtt.embedded_listen, "mqtt-port"));
    }
    wanted.extend(config.upstreams.demo_addresses());
    for (addr, flag) in wanted {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(format!(
                "port {} is taken ({e}): start the demo with `--{flag} <free port>`, e.g. `vehicle2mqtt demo --{flag} {}`",
                addr.port(),
                addr.port().saturating_add(1)
            ));
        }
    }
    Ok(())
}

/// What the demo prints for the user.
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
    let mut text = format!(
        "\nvehicle2mqtt demo: an MQTT broker on 127.0.0.1:{port},\n  {}.\n\
         \n  (mosquitto_sub / mosquitto_pub come with the mosquitto clients: apt install mosquitto-clients)\n\
         \n  Watch everything:      mosquitto_sub -h 127.0.0.1 -p {port}{login} -t '{base}/#' -v\n",
        config.upstreams.demo_vehicles().join(",\n  ")
    );
    for (what, vehicle, topic, payload) in config.upstreams.demo_examples() {
        text += &format!(
            "\n  {:<22} mosquitto_pub -h 127.0.0.1 -p {port}{login} -t '{base}/{vehicle}/{topic}' -m {payload}\n",
            format!("{what}:")
        );
    }
    text += &format!(
        "\n  Results arrive on      {base}/<vehicle>/command/result\n\
         \n  Home Assistant: add the MQTT integration with broker 127.0.0.1, port {port}, user {user}, password {password}; the vehicles appear as devices.\n\
         \nPress Ctrl-C to stop.\n",
        user = config.mqtt.username,
        password = config.mqtt.password.expose(),
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid_and_enables_every_upstream() {
        let c = config(&DemoPorts::default(), std::env::temp_dir());
        assert_eq!(c.upstreams.problems(), Vec::new());
        let connectors = c.upstreams.connectors(&std::env::temp_dir());
        assert_eq!(connectors.len(), Upstreams::names().len());
    }
}
