//! A minimal upstream that exists only in the test build: it proves that an upstream is
//! its own folder plus one line in `connectors/mod.rs` and one in `registry.rs`, and
//! nothing else (config, `main`, `demo` and `simulate` pick it up from the registry).
//! Its vehicles report a fixed state once and answer every command with success.

use serde::{Deserialize, Serialize};

use crate::connector::{Connector, ConnectorContext, ConnectorFuture, Update};
use crate::model::{CommandProgress, Field, VehicleId, VehicleInfo, VehicleState};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchoConfig {
    pub enabled: bool,
    pub vehicles: Vec<String>,
    /// Text even when all digits (a PIN-like setting, to show TEXT_KEYS work).
    pub token: String,
}

/// The upstream's marker: what the registry names.
pub struct Echo;

impl crate::upstream::Upstream for Echo {
    type Config = EchoConfig;
    const TEXT_KEYS: &'static [&'static str] = &["token"];
    fn enabled(config: &EchoConfig) -> bool {
        config.enabled
    }
    fn problems(config: &EchoConfig) -> Vec<(String, String)> {
        match config.enabled && config.vehicles.is_empty() {
            true => vec![("vehicles".into(), "list at least one vehicle".into())],
            false => Vec::new(),
        }
    }
    fn connector(config: &EchoConfig, _state_dir: &std::path::Path) -> Box<dyn Connector> {
        Box::new(EchoConnector(config.clone()))
    }
}

struct EchoConnector(EchoConfig);

impl Connector for EchoConnector {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn run(self: Box<Self>, mut ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            for id in &self.0.vehicles {
                let Some(id) = VehicleId::new(&format!("echo{id}")) else {
                    continue;
                };
                let info = VehicleInfo {
                    id: id.clone(),
                    name: format!("Echo {id}"),
                    manufacturer: "echo".into(),
                    model: "echo".into(),
                    reported_model: None,
                    sw_version: None,
                    custom_name: false,
                    serial_number: None,
                    capabilities: Default::default(),
                    event_types: Default::default(),
                };
                let _ = ctx.updates.send(Update::Vehicle(info)).await;
                let mut state = VehicleState::default();
                state.set(Field::BatteryLevel, 42);
                ctx.updates.merge_state(id, state).await;
            }
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    Some(req) = ctx.commands.recv() => {
                        let _ = req.progress.send(CommandProgress::Succeeded).await;
                    }
                }
            }
        })
    }
}

/// `simulate echo`.
#[cfg(feature = "simulators")]
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1)]
    vehicles: u32,
}

#[cfg(feature = "simulators")]
impl crate::upstream::Simulated for Echo {
    const COMMAND: &'static str = "echo";
    const ABOUT: &'static str = "nothing: the test build's minimal upstream";
    type Args = Args;
    async fn simulate(args: Args, _: tokio_util::sync::CancellationToken) -> Result<(), String> {
        match args.vehicles {
            0 => Err("no vehicle to simulate".into()),
            _ => Ok(()),
        }
    }
    const DEMO_PORTS: &'static [(&'static str, u16)] = &[("echo-port", 9999)];
    fn demo_config(config: &mut EchoConfig, port: &dyn Fn(&str) -> u16) {
        config.enabled = true;
        config.vehicles = vec![port("echo-port").to_string()];
    }
    fn demo_addresses(_: &EchoConfig) -> Vec<crate::upstream::DemoAddress> {
        Vec::new()
    }
    fn demo_vehicles(config: &EchoConfig) -> String {
        format!("echo vehicles {:?}", config.vehicles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::connector::{CommandRequest, UpdateSink};
    use crate::model::Command;
    use tokio::sync::mpsc;

    fn load(toml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("config.toml");
        std::fs::write(&path, toml).map_err(|e| e.to_string())?;
        Config::load(Some(&path))
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn its_section_is_read_checked_and_shown_like_any_other() {
        let config = load("[echo]\nenabled = true\nvehicles = [\"7\"]\n").unwrap();
        assert!(config.upstreams.echo.enabled);
        assert_eq!(config.upstreams.echo.vehicles, ["7"]);
        let shown = config.to_masked_toml();
        assert!(shown.contains("[echo]"), "{shown}");

        let err = load("[echo]\nenabled = true\n").unwrap_err();
        assert!(
            err.contains("`echo.vehicles`") && err.contains("at least one"),
            "{err}"
        );
        let err = load("[echo]\nenabeld = true\n").unwrap_err();
        assert!(
            err.contains("enabeld"),
            "a typo in its section is an error: {err}"
        );
        let err = load("[echoo]\nenabled = true\n").unwrap_err();
        assert!(err.contains("echoo") && err.contains("`echo`"), "{err}");
        assert!(crate::config::text_keys().contains(&"echo.token".to_string()));
    }

    #[tokio::test]
    async fn the_bridge_gets_its_connector_and_it_runs() {
        let mut config = Config::default();
        config.upstreams.echo.enabled = true;
        config.upstreams.echo.vehicles = vec!["7".into()];
        let connectors = config.upstreams.connectors(std::path::Path::new("."));
        let names: Vec<_> = connectors.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["echo"], "only enabled upstreams start");

        let (tx, mut updates) = mpsc::channel(8);
        let (commands, rx) = mpsc::channel(8);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let Some(connector) = connectors.into_iter().next() else {
            panic!("no connector")
        };
        let task = tokio::spawn(connector.run(ConnectorContext::alone(
            UpdateSink::new(0, tx),
            rx,
            shutdown.clone(),
        )));
        let (_, first) = updates.recv().await.unwrap();
        assert!(
            matches!(first, Update::Vehicle(ref v) if v.id.as_str() == "echo7"),
            "{first:?}"
        );
        let (progress, mut answer) = mpsc::channel(2);
        let request = CommandRequest {
            id: "1".into(),
            vehicle: VehicleId::new("echo7").unwrap(),
            command: Command::Lock,
            progress,
        };
        commands.send(request).await.unwrap();
        assert!(matches!(
            answer.recv().await,
            Some(CommandProgress::Succeeded)
        ));
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[cfg(feature = "simulators")]
    #[tokio::test]
    async fn demo_and_simulate_include_it() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            target: crate::registry::SimTarget,
        }
        let cli = Cli::try_parse_from(["simulate", "echo", "--vehicles", "0"]).unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        assert_eq!(
            cli.target.run(shutdown).await,
            Err("no vehicle to simulate".into())
        );

        let ports = crate::demo::DemoPorts::default();
        assert_eq!(ports.port("echo-port"), 9999);
        let demo = crate::demo::config(&ports, std::env::temp_dir());
        assert_eq!(demo.upstreams.echo.vehicles, ["9999"]);
        assert!(crate::demo::instructions(&demo).contains("echo vehicles"));
    }
}
