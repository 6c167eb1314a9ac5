//! The `vehicle2mqtt` binary: CLI, config loading, signal handling and wiring.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use vehicle2mqtt::config::Config;
use vehicle2mqtt::connector::Connector;
use vehicle2mqtt::{bridge, logging, state_dir};

#[derive(Parser)]
#[command(
    name = "vehicle2mqtt",
    version,
    about = "Connected vehicles into MQTT and Home Assistant"
)]
struct Cli {
    /// Config file (TOML). Default: ./config.toml if it exists, else built-in defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the bridge (the default).
    Run,
    /// Print the effective configuration with secrets masked; exit 2 if it is invalid.
    CheckConfig,
}

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok((config, _)) => config,
        Err(err) => {
            eprintln!("vehicle2mqtt: invalid configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::CheckConfig => {
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Cmd::Run => run(config),
    }
}

fn run(config: Config) -> ExitCode {
    logging::init(config.bridge.log_format, &config.bridge.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(
                event = "fatal",
                error = format!("{err:#}"),
                "vehicle2mqtt stopped"
            );
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    state_dir::prepare(&config.bridge.state_dir)?;
    let connectors: Vec<Box<dyn Connector>> = Vec::new();
    if connectors.is_empty() {
        tracing::warn!(
            event = "no_connectors",
            "no connector is enabled: the bridge will only publish its own state"
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    tracing::info!(
        event = "starting",
        version = env!("CARGO_PKG_VERSION"),
        "vehicle2mqtt starting"
    );
    bridge::run(config, connectors, shutdown).await
}

async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(event = "signal", signal = "SIGTERM"),
            _ = int.recv() => tracing::info!(event = "signal", signal = "SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
