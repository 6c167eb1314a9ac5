//! EXLIVE link simulator: N links log in and push 1007 positions along circular routes,
//! send heartbeats and answer 1012 pass-through commands with 1013.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::protocol::exlive::{Frame, Message, Position, Splitter};

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub server: String,
    pub links: usize,
    /// Positions per second per link.
    pub rate: f64,
    pub user: String,
    pub password: String,
    /// First EXLIVE vehicle id; link i reports id `first_id + i`.
    pub first_id: u64,
    /// Put the send time (unix ns) into `posinfo` as `t=<ns>` for latency measurement.
    pub stamp: bool,
    /// Drive this route instead of circling (every link alike).
    pub drive: Option<Arc<crate::sim::Drive>>,
}

#[derive(Debug, Default)]
pub struct SimStats {
    pub logged_in: AtomicU64,
    pub login_failed: AtomicU64,
    pub positions: AtomicU64,
    pub commands_answered: AtomicU64,
    pub errors: AtomicU64,
    /// Why the first link or device that failed ended, for the simulator's exit message.
    pub first_error: crate::sim::FirstError,
}

impl SimStats {
    fn failed(&self, err: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.note(err);
    }
}

pub use crate::sim::now_ns;

/// Runs every link until `shutdown`. Links start in groups of 20, 2 ms apart, so that
/// 10 000 links ramp up in about a second without a SYN flood.
pub async fn run(opts: SimOptions, stats: Arc<SimStats>, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.links {
        let (link_opts, stats, shutdown) = (opts.clone(), stats.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(err) = link(&link_opts, i, &stats, &shutdown).await {
                stats.failed(&err);
                tracing::debug!(link = i, error = %err, "simulated EXLIVE link ended");
            }
        });
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn link(
    opts: &SimOptions,
    index: usize,
    stats: &SimStats,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(&opts.server).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, Splitter::default());
    let login = Message::Login {
        name: opts.user.clone(),
        pass: opts.password.clone(),
        ver: "sim".into(),
        kind: String::new(),
        mode: String::new(),
    };
    wr.write_all(format!("{}\n", login.encode()).as_bytes())
        .await?;
    match frames.next().await {
        Some(Ok(Frame::Object(raw))) => match Message::decode(&raw)? {
            Message::Ack { result, .. } if Message::is_success(&result) => {
                stats.logged_in.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                stats.login_failed.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!("the server refused the login of `{}`: {other:?} (does [[exlive.accounts]] list it?)", opts.user);
            }
        },
        other => {
            stats.login_failed.fetch_add(1, Ordering::Relaxed);
            anyhow::bail!("no login answer: {other:?}");
        }
    }
    let id = (opts.first_id + index as u64).to_string();
    let center = (
        31.20 + (index % 100) as f64 * 0.01,
        121.40 + (index / 100) as f64 * 0.01,
    );
    // Timers tick at 1 ms at best: above 100/s, send bursts every 10 ms instead.
    let (period, burst) = if opts.rate > 100.0 {
        (
            Duration::from_millis(10),
            (opts.rate / 100.0).round().max(1.0) as u64,
        )
    } else {
        (Duration::from_secs_f64(1.0 / opts.rate.max(0.001)), 1)
    };
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heartbeat = interval(Duration::from_secs(30));
    let mut step = 0u64;
    let mut odometer = 1000.0 + index as f64;
    let set_off = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = wr.write_all(format!("{}\n", Message::Logout.encode()).as_bytes()).await;
                return Ok(());
            }
            _ = heartbeat.tick() => wr.write_all(format!("{}\n", Message::Heartbeat.encode()).as_bytes()).await?,
            _ = tick.tick() => for _ in 0..burst {
                step += 1;
                let driven = opts.drive.as_ref().map(|d| d.at(set_off.elapsed()));
                let (lat, lng, heading, speed, dis) = match driven {
                    Some(s) => (s.latitude, s.longitude, s.heading, s.speed_kmh, odometer + s.driven_m / 1000.0),
                    None => {
                        odometer += 0.01;
                        let (lat, lng, heading) = crate::sim::route_point(center.0, center.1, 800.0, step, 360);
                        (lat, lng, heading, 36.0, odometer)
                    }
                };
                let ignition = driven.is_none_or(|s| s.moving);
                let gpstime = chrono::Utc::now()
                    .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string();
                let posinfo = if opts.stamp { format!("t={}", now_ns()) } else { "上海市浦东新区".to_string() };
                let p = Message::Position(Position {
                    code: format!("沪A{:05}", index),
                    id: id.clone(),
                    lat: Some((lat * 1e6).round() / 1e6),
                    lng: Some((lng * 1e6).round() / 1e6),
                    veo: Some((speed * 10.0).round() / 10.0),
                    dir: Some(heading.round()),
                    gpstime: Some(gpstime),
                    av: Some(true),
                    alarm: Some(false),
                    oil: Some(42.5),
                    dis: Some((dis * 100.0).round() / 100.0),
                    wstate: None,
                    cstate: Some(if ignition { "ACC开" } else { "ACC关" }.into()),
                    posinfo: Some(posinfo),
                });
                wr.write_all(format!("{}\n", p.encode()).as_bytes()).await?;
                stats.positions.fetch_add(1, Ordering::Relaxed);
            },
            frame = frames.next() => match frame {
                Some(Ok(Frame::Object(raw))) => {
                    if let Ok(Message::Passthrough { terminalid, code, data }) = Message::decode(&raw) {
                        let reply = Message::PassthroughData { terminalid, code, data: format!("OK {data}") };
                        wr.write_all(format!("{}\n", reply.encode()).as_bytes()).await?;
                        stats.commands_answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Frame::Malformed(_))) => {}
                Some(Err(e)) => anyhow::bail!("read: {e}"),
                None => anyhow::bail!("server closed the link"),
            },
        }
    }
}

/// `simulate exlive`.
#[derive(clap::Args)]
pub struct Args {
    /// The bridge's EXLIVE listener, host:port.
    #[arg(long)]
    server: String,
    #[arg(long, default_value_t = 1)]
    links: usize,
    /// Positions per second per link.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// The account config.example.toml shows (`[[exlive.accounts]]`).
    #[arg(long, default_value = "fleet")]
    user: String,
    #[arg(long, default_value = "change-me")]
    password: String,
    /// First vehicle id (link i reports id + i).
    #[arg(long, default_value_t = 1000)]
    first_id: u64,
    /// Drive this route (GeoJSON LineString, or a JSON list of [latitude, longitude])
    /// at --speed, then stand at its end.
    #[arg(long)]
    route: Option<std::path::PathBuf>,
    /// km/h along --route.
    #[arg(long, default_value_t = 40.0)]
    speed: f64,
}

impl crate::upstream::Simulated for super::Exlive {
    const COMMAND: &'static str = "exlive";
    const ABOUT: &'static str = "EXLIVE links that log in and push 1007 positions";
    type Args = Args;

    async fn simulate(args: Args, shutdown: CancellationToken) -> Result<(), String> {
        let Args {
            server,
            links,
            rate,
            user,
            password,
            first_id,
            route,
            speed,
        } = args;
        let opts = SimOptions {
            server,
            links,
            rate,
            user,
            password,
            first_id,
            stamp: false,
            drive: crate::sim::drive_from_args(route.as_deref(), speed, None)?,
        };
        let stats = Arc::new(SimStats::default());
        let reporter = {
            let (stats, shutdown) = (stats.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => {
                            use std::sync::atomic::Ordering::Relaxed;
                            tracing::info!(logged_in = stats.logged_in.load(Relaxed), login_failed = stats.login_failed.load(Relaxed),
                                positions = stats.positions.load(Relaxed), commands = stats.commands_answered.load(Relaxed),
                                errors = stats.errors.load(Relaxed), "simulator");
                        }
                    }
                }
            })
        };
        run(opts, stats.clone(), shutdown.clone()).await;
        reporter.abort();
        crate::sim::ended(&shutdown, &stats.first_error, "simulated link")
    }

    const DEMO_PORTS: &'static [(&'static str, u16)] = &[("exlive-port", 1502)];
    fn demo_config(c: &mut super::ExliveConfig, port: &dyn Fn(&str) -> u16) {
        c.enabled = true;
        c.listen = ([127, 0, 0, 1], port("exlive-port")).into();
        c.accounts = vec![super::ExliveAccount {
            name: "demo".into(),
            password: crate::shared::Secret::new("demo"),
            vehicles: Vec::new(),
        }];
        c.commands = vec![super::ExliveCommand {
            name: "locate".into(),
            data: "WHERE#".into(),
        }];
    }
    fn demo_addresses(c: &super::ExliveConfig) -> Vec<crate::upstream::DemoAddress> {
        vec![(c.listen, "exlive-port")]
    }
    async fn demo_after(c: super::ExliveConfig, shutdown: CancellationToken) {
        if !crate::sim::wait_for(c.listen, &shutdown).await {
            tracing::error!("demo: the bridge's EXLIVE listener did not come up");
            return;
        }
        let opts = SimOptions {
            server: c.listen.to_string(),
            links: 2,
            rate: 0.5,
            user: "demo".into(),
            password: "demo".into(),
            first_id: 7001,
            stamp: false,
            drive: None,
        };
        run(opts, Default::default(), shutdown).await;
    }
    fn demo_vehicles(_: &super::ExliveConfig) -> String {
        "EXLIVE trackers ex7001 and ex7002".into()
    }
    fn demo_examples(
        _: &super::ExliveConfig,
    ) -> Vec<(&'static str, String, &'static str, &'static str)> {
        vec![(
            "Locate a tracker",
            "ex7001".into(),
            "cmd_locate/set",
            "PRESS",
        )]
    }
}
