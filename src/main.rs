//! The `vehicle2mqtt` binary: CLI, config loading, signal handling and wiring.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use vehicle2mqtt::config::{Config, ConfigError};
#[cfg(feature = "simulators")]
use vehicle2mqtt::registry::SimTarget;
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
    #[cfg(feature = "simulators")]
    /// Run a self-contained demo: embedded broker and every upstream simulated on local
    /// ports (devices linking to the bridge's listeners, fake clouds it polls).
    Demo {
        #[command(flatten)]
        ports: vehicle2mqtt::demo::DemoPorts,
    },
    /// Run as a Home Assistant add-on: the broker and its login come from the Supervisor's
    /// MQTT service (SUPERVISOR_TOKEN), the options from /data/options.json, state in
    /// /data/state. Needs no shell in the image.
    Addon {
        #[arg(long, default_value = "/data/options.json")]
        options: PathBuf,
        /// The Supervisor API.
        #[arg(long, default_value = "http://supervisor")]
        supervisor: String,
    },
    /// Exit 0 when a running bridge using this state dir is alive and healthy (MQTT
    /// connected, every connector running); 1 with the reason otherwise.
    Health {
        /// The bridge's state_dir (default: from the config).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Print a vehicle's logged trips (state_dir/trips/<vehicle>.jsonl), oldest first:
    /// JSON lines, or GPX / GeoJSON with each trip's path.
    Trips {
        /// The vehicle id (as in its topics, e.g. `ex7001`).
        vehicle: String,
        /// Only trips that started on or after this: `2026-12-01` (UTC) or RFC 3339.
        #[arg(long)]
        since: Option<String>,
        /// GPX 1.1, one track per trip.
        #[arg(long, conflicts_with = "geojson")]
        gpx: bool,
        /// A GeoJSON FeatureCollection, one LineString per trip.
        #[arg(long)]
        geojson: bool,
    },
    /// Simulate devices or upstreams against a running bridge.
    #[cfg(feature = "simulators")]
    Simulate {
        #[command(subcommand)]
        target: SimTarget,
    },
}

/// glibc's allocator keeps a heap per thread and keeps what is freed: a fleet's start
/// (the config of 10 000 devices, their first announcements and records) left ~40 MB
/// the bridge no longer used. Two heaps, and freed memory handed back 20 s after the
/// start and every 5 minutes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod heap {
    pub fn limit_arenas() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
    pub fn trim() {
        // SAFETY: malloc_trim only returns free pages to the system.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Other allocators (musl in the image) hand memory back by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod heap {
    pub fn limit_arenas() {}
    pub fn trim() {}
}

/// Thousands of tracker links need as many file descriptors: raise the soft limit to the
/// hard one and say what it is.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok {
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            limit.rlim_cur = before;
        }
    }
    tracing::info!(
        event = "open_file_limit",
        limit = limit.rlim_cur as u64,
        was = before as u64,
        "open file limit"
    );
}

/// One problem a line, each as a list item.
fn bullet_list(text: &str) -> String {
    text.lines()
        .map(|l| format!("  - {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The loaded config, or the problems printed and the exit code for them.
fn loaded<T>(result: Result<(Config, T), ConfigError>) -> Result<Config, ExitCode> {
    result.map(|(config, _)| config).map_err(|err| {
        eprintln!(
            "vehicle2mqtt: invalid configuration:\n{}",
            bullet_list(&err.to_string())
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Run);
    #[cfg(feature = "simulators")]
    if let Cmd::Simulate { target } = command {
        return simulate(target);
    }
    if let Cmd::Health {
        state_dir: Some(dir),
    } = &command
    {
        return health(dir);
    }
    if let Cmd::Addon {
        options,
        supervisor,
    } = &command
    {
        let overrides = match addon_broker(supervisor) {
            Ok(o) => o,
            Err(err) => {
                eprintln!("vehicle2mqtt: cannot start as an add-on: {err:#}");
                return ExitCode::FAILURE;
            }
        };
        return match Config::load_with(Some(options), &overrides) {
            Ok((mut config, _)) => {
                vehicle2mqtt::status_page::addon_page(&mut config.bridge);
                run(config, false)
            }
            Err(err) => {
                eprintln!(
                    "vehicle2mqtt: invalid add-on options:\n{}",
                    bullet_list(&err.to_string())
                );
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    #[cfg(feature = "simulators")]
    if let Cmd::Demo { ports } = command {
        let state = std::env::temp_dir().join(format!("vehicle2mqtt-demo-{}", std::process::id()));
        // The demo's setup, under whatever the user's file and V2M_ variables say.
        let base = vehicle2mqtt::demo::config(&ports, state.clone());
        let config = match loaded(Config::load_over(base, cli.config.as_deref(), &[])) {
            Ok(config) => config,
            Err(code) => return code,
        };
        if let Err(busy) = vehicle2mqtt::demo::check_ports(&config) {
            eprintln!("vehicle2mqtt demo: {busy}");
            return ExitCode::FAILURE;
        }
        let code = run(config, true);
        // Nothing of the demo stays behind (it holds the fake clouds' tokens).
        let _ = std::fs::remove_dir_all(&state);
        return code;
    }
    let config = match loaded(Config::load(cli.config.as_deref())) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match command {
        Cmd::CheckConfig => {
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Cmd::Run => run(config, false),
        Cmd::Health { .. } => health(&config.bridge.state_dir),
        Cmd::Trips {
            vehicle,
            since,
            gpx,
            geojson,
        } => trips(&config, &vehicle, since.as_deref(), gpx, geojson),
        #[cfg(feature = "simulators")]
        Cmd::Simulate { .. } | Cmd::Demo { .. } => {
            unreachable!("handled before the config is read")
        }
        Cmd::Addon { .. } => unreachable!("handled before the config is read"),
    }
}

/// `vehicle2mqtt trips`: the log printed; 1 with the reason when there is none.
fn trips(
    config: &Config,
    vehicle: &str,
    since: Option<&str>,
    gpx: bool,
    geojson: bool,
) -> ExitCode {
    use vehicle2mqtt::trip_log;
    let since = match since.map(parse_since).transpose() {
        Ok(s) => s,
        Err(bad) => {
            eprintln!(
                "vehicle2mqtt trips: --since {bad:?} is not a date (2026-12-01) or RFC 3339 time"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let state_dir = &config.bridge.state_dir;
    match trip_log::read(state_dir, vehicle, since, config.derive.trips.keep) {
        Ok((trips, bad)) => {
            if bad > 0 {
                eprintln!("vehicle2mqtt trips: {bad} unreadable line(s) skipped");
            }
            let out = match (gpx, geojson) {
                (true, _) => trip_log::to_gpx(vehicle, &trips),
                (_, true) => trip_log::to_geojson(&trips),
                _ => trip_log::to_json_lines(&trips),
            };
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("vehicle2mqtt trips: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A day (UTC midnight) or an RFC 3339 time.
fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| text.to_string())
}

/// Asks the Supervisor for the MQTT service: the config keys it sets (the options file
/// cannot know the broker or its login). Passed as text, so a numeric password stays
/// exactly as the Supervisor gave it.
fn addon_broker(supervisor: &str) -> anyhow::Result<Vec<(String, String)>> {
    use anyhow::Context;
    let token = std::env::var("SUPERVISOR_TOKEN")
        .context("SUPERVISOR_TOKEN is not set (is this running under the Supervisor?)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = format!("{}/services/mqtt", supervisor.trim_end_matches('/'));
    let answer: serde_json::Value = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()?;
        let resp = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            anyhow::bail!(
                "{url} answered {status}: is the MQTT integration (Mosquitto add-on) set up?"
            );
        }
        Ok::<_, anyhow::Error>(resp.json().await?)
    })?;
    let d = &answer["data"];
    let text = |k: &str| match &d[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let (host, port) = (text("host"), text("port"));
    if host.is_empty() || port.is_empty() {
        anyhow::bail!("{url} gave no broker host and port");
    }
    let scheme = if d["ssl"] == serde_json::Value::Bool(true) {
        "mqtts"
    } else {
        "mqtt"
    };
    eprintln!("vehicle2mqtt: broker {scheme}://{host}:{port} from the Supervisor");
    let mut out = vec![
        ("mqtt.url".to_string(), format!("{scheme}://{host}:{port}")),
        ("mqtt.username".to_string(), text("username")),
        ("mqtt.password".to_string(), text("password")),
    ];
    if std::env::var_os("V2M_MQTT__CLIENT_ID").is_none() {
        out.push(("mqtt.client_id".into(), "vehicle2mqtt-addon".into()));
    }
    if std::env::var_os("V2M_BRIDGE__STATE_DIR").is_none() {
        out.push(("bridge.state_dir".into(), "/data/state".into()));
    }
    Ok(out)
}

fn health(dir: &std::path::Path) -> ExitCode {
    match state_dir::check_alive(dir) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("vehicle2mqtt is not healthy: {reason}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "simulators")]
fn simulate(target: SimTarget) -> ExitCode {
    logging::init(vehicle2mqtt::config::LogFormat::Text, "info");
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    let outcome: Result<(), String> = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        target.run(shutdown).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("vehicle2mqtt simulate: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, demo: bool) -> ExitCode {
    heap::limit_arenas();
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
    match runtime.block_on(serve(config, demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<vehicle2mqtt::bridge::DuplicateInstance>() => {
            tracing::error!(event = "cluster_duplicate_instance", error = %err, "vehicle2mqtt stopped");
            eprintln!("vehicle2mqtt: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
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

async fn serve(mut config: Config, demo: bool) -> anyhow::Result<()> {
    state_dir::prepare(&config.bridge.state_dir)?;
    raise_open_file_limit();
    if config.mqtt.url == "embedded" && config.mqtt.username.is_empty() {
        // Made (and printed) once; the demo's instructions show it too.
        let (user, password) = state_dir::embedded_login(&config.bridge.state_dir)?;
        config.mqtt.username = user;
        config.mqtt.password = vehicle2mqtt::config::Secret::new(password);
    }
    let connectors = config.upstreams.connectors(&config.bridge.state_dir);
    if connectors.is_empty() {
        tracing::warn!(
            event = "no_connectors",
            "no connector is enabled: the bridge will only publish its own state"
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    tokio::spawn(async {
        // Once the start's garbage is freed, then rarely: a trim holds the allocator a
        // moment, which a busy bridge feels as latency.
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(heap::trim).await;
        }
    });
    // Held until the bridge stops: the fake clouds of the demo.
    #[cfg(not(feature = "simulators"))]
    let _ = demo;
    #[cfg(feature = "simulators")]
    let _clouds = match demo {
        true => Some(vehicle2mqtt::demo::clouds(&config).await?),
        false => None,
    };
    #[cfg(feature = "simulators")]
    if demo {
        eprintln!("{}", vehicle2mqtt::demo::instructions(&config));
        tokio::spawn(vehicle2mqtt::demo::simulators(
            config.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        event = "starting",
        version = env!("CARGO_PKG_VERSION"),
        "vehicle2mqtt starting"
    );
    // The connectors have their sections; the hub needs none (a fleet's device list
    // would otherwise be held twice). Dropped here: `Config { upstreams: .., ..config }`
    // would keep the old sections alive until this function returns, the bridge's life.
    drop(std::mem::take(&mut config.upstreams));
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
