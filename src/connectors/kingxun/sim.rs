//! kingxun device simulator: N devices register, report 1002 while riding a circular
//! route, send trips (1008) and events (1012), and obey 2001–2005 by changing their own
//! lock state, which their next 1002 (sent at once) shows.
//!
//! Keys are derived from a seed (splitmix64), so `--print-config` can print the
//! matching `[[kingxun.devices]]` table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::protocol::kingxun::*;

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub server: String,
    pub devices: usize,
    pub first_id: u32,
    pub key_seed: u64,
    pub interval: Duration,
    /// Send a trip every this many status reports (0 = never).
    pub trip_every: u64,
    /// Answer commands (tests turn this off to provoke timeouts).
    pub answer_commands: bool,
    /// Carry the send time (unix ns) as `t=<ns>` in the battery id, for latency
    /// measurement.
    pub stamp: bool,
    /// The 2001–2005 layout the simulated firmware reads.
    pub profile: Profile,
    /// Send 1002 plain, as kxSvr's own client does (and kxSvr expects: it reads the body
    /// as a struct). By default the simulated firmware seals it, which proves its key.
    pub plain_status: bool,
    /// Drive this route instead of circling (every device alike); at its end the device
    /// reports the ride as one 1008 trip, as a real one does, and no periodic trips.
    pub drive: Option<Arc<crate::sim::Drive>>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            server: "127.0.0.1:10086".into(),
            devices: 1,
            first_id: 1001,
            key_seed: 1,
            interval: Duration::from_secs(5),
            trip_every: 12,
            answer_commands: true,
            stamp: false,
            profile: Profile::Classic,
            plain_status: false,
            drive: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct SimStats {
    pub registered: AtomicU64,
    pub refused: AtomicU64,
    pub statuses: AtomicU64,
    pub commands: AtomicU64,
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

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The AES key of device `dev_id` under `seed`.
pub fn derive_key(seed: u64, dev_id: u32) -> [u8; 16] {
    let mut state = seed ^ (u64::from(dev_id) << 17);
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    key[8..].copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    key
}

/// The `[[kingxun.devices]]` entries matching these options.
pub fn config_toml(opts: &SimOptions) -> String {
    (0..opts.devices as u32)
        .map(|i| {
            let id = opts.first_id + i;
            format!(
                "[[kingxun.devices]]\nid = {id}\nkey = \"{}\"\nname = \"Sim scooter {id}\"\n",
                hex::encode(derive_key(opts.key_seed, id))
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn run(opts: SimOptions, stats: Arc<SimStats>, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.devices {
        let (o, stats, shutdown) = (opts.clone(), stats.clone(), shutdown.clone());
        tasks.spawn(async move {
            let dev_id = o.first_id + i as u32;
            if let Err(err) = device(&o, dev_id, i, &stats, &shutdown).await {
                stats.failed(&err);
                tracing::debug!(dev_id, error = %err, "simulated kingxun device ended");
            }
        });
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    while tasks.join_next().await.is_some() {}
}

struct Device {
    lock: u8,
    guard: (u8, u16),
    step: u64,
    mileage: u32,
    soc: u8,
}

fn now_local() -> LocalTime {
    LocalTime::from_naive((chrono::Utc::now() + chrono::Duration::hours(8)).naive_utc())
}

/// The 1008 a device sends after driving `drive` (just arrived): the route's ends and
/// length, the drive's time and speed (km/h = value × 0.0036, as `report.rs` reads it).
fn ride(drive: &crate::sim::Drive, index: usize, soc_begin: u8, soc_end: u8) -> Trip {
    let end = now_local();
    let took = chrono::Duration::from_std(drive.duration()).unwrap_or_default();
    let start =
        LocalTime::from_naive((chrono::Utc::now() - took + chrono::Duration::hours(8)).naive_utc());
    let length = drive.route.length_m();
    let (a, b) = (drive.route.at(0.0), drive.route.at(length));
    let speed = (drive.speed_kmh / 0.0036)
        .round()
        .clamp(0.0, f64::from(u16::MAX)) as u16;
    Trip {
        start,
        start_lng: a.1,
        start_lat: a.0,
        end,
        end_lng: b.1,
        end_lat: b.0,
        distance_m: length.round() as u32,
        soc_begin,
        soc_end,
        max_speed: speed,
        avg_speed: speed,
        max_current_ca: 1500,
        battery_id: format!("BAT{index:05}"),
        points: vec![(a.1, a.0), (b.1, b.0)],
    }
}

fn status(d: &Device, index: usize, stamp: bool, driven: Option<crate::sim::DriveState>) -> Status {
    let (lat, lng, _) = match driven {
        Some(s) => (s.latitude, s.longitude, s.heading),
        None => crate::sim::route_point(
            31.23 + (index % 100) as f64 * 0.005,
            121.47 + (index / 100) as f64 * 0.005,
            500.0,
            d.step,
            120,
        ),
    };
    let riding = driven.map_or(d.lock & 1 != 0, |s| s.moving);
    // The device's units: speed in cm/s, mileage in 10 m (docs/protocols/kingxun.md, 1002).
    let speed = match driven {
        Some(s) => (s.speed_kmh / 0.0036).round() as u16,
        None if riding => 5500,
        None => 0,
    };
    let mileage = match driven {
        Some(s) => d.mileage + (s.driven_m / 10.0) as u32,
        None => d.mileage,
    };
    Status {
        dev_type: 2,
        protocol: 1,
        lng,
        lat,
        mileage,
        driving: riding,
        speed,
        lock: d.lock,
        light: if riding { 0b01 } else { 0 },
        sensor: if riding { 0x01 } else { 0x02 },
        brake: 0,
        mini_battery: Some(MiniBattery {
            id: "MINI".into(),
            soc: 95,
            voltage_cv: 410,
            temp_cc: 2500,
        }),
        battery: Some(Battery {
            charging: driven.is_some_and(|s| s.charging),
            id: if stamp {
                format!("t={}", crate::sim::now_ns())
            } else {
                format!("BAT{index:05}")
            },
            soc: d.soc,
            voltage_cv: 5000 + u16::from(d.soc) * 3,
            temp_cc: 2850,
            cycles: 42,
            soh: 97,
            current_flag: 1,
            current_ca: if riding { 820 } else { 10 },
            cells: (0..4)
                .map(|c| Cell {
                    voltage_cv: 330 + c,
                    temp_cc: if c == 0 { Some(2800) } else { None },
                })
                .collect(),
        }),
    }
}

async fn device(
    o: &SimOptions,
    dev_id: u32,
    index: usize,
    stats: &SimStats,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let key = derive_key(o.key_seed, dev_id);
    let stream = TcpStream::connect(&o.server).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, KxCodec::default());
    let mut seq: u16 = 1;
    let reg = Register {
        time: now_local(),
        versions: [0x0100, 0x0001_0203, 1, 1, 1, 1],
        version_count: 6,
    }
    .encode();
    wr.write_all(&Frame::request(id::REGISTER, seq, dev_id, 0, false, Bytes::from(reg)).to_bytes())
        .await?;
    let ack = loop {
        match frames.next().await {
            Some(Ok(Decoded::Frame(f))) if f.header.msg_id == id::REGISTER => break f,
            Some(Ok(_)) => continue,
            other => anyhow::bail!("no registration answer from {}: {other:?}", o.server),
        }
    };
    let Kind::Response { resp_code: 0 } = ack.header.kind else {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        let code = match ack.header.kind {
            Kind::Response { resp_code } => resp_code,
            Kind::Request { .. } => u32::MAX,
        };
        anyhow::bail!(
            "the server refused device {dev_id}'s registration with code {code} ({}): is it in [[kingxun.devices]] with this --key-seed?",
            resp_code_text(code)
        );
    };
    let RegisterAck { session_id, iv } = RegisterAck::decode(&ack.body)?;
    stats.registered.fetch_add(1, Ordering::Relaxed);
    let mut d = Device {
        lock: 0,
        guard: (0xFF, 0),
        step: 0,
        mileage: 100_000 + index as u32,
        soc: 90,
    };
    let mut tick = interval(o.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut send_status = true;
    let set_off = tokio::time::Instant::now();
    let trip_every = if o.drive.is_some() { 0 } else { o.trip_every };
    let (soc_at_start, mut ride_reported) = (d.soc, false);
    loop {
        if send_status {
            send_status = false;
            seq = seq.wrapping_add(1);
            let driven = o.drive.as_ref().map(|r| r.at(set_off.elapsed()));
            let plain = status(&d, index, o.stamp, driven).encode();
            let body = if o.plain_status {
                plain
            } else {
                crypto::encrypt(&key, &iv, &plain)
            };
            let f = Frame::request(
                id::STATUS,
                seq,
                dev_id,
                session_id,
                !o.plain_status,
                Bytes::from(body),
            );
            wr.write_all(&f.to_bytes()).await?;
            stats.statuses.fetch_add(1, Ordering::Relaxed);
            // A trip: the ride once it arrived on a route, or one every `trip_every`.
            let arrived = o.drive.as_ref().filter(|r| !r.at(set_off.elapsed()).moving);
            let trip = match arrived {
                Some(drive) if !ride_reported => {
                    ride_reported = true;
                    Some(ride(drive, index, soc_at_start, d.soc))
                }
                _ if trip_every > 0 && d.step > 0 && d.step.is_multiple_of(trip_every) => {
                    let now = now_local();
                    Some(Trip {
                        start: now,
                        start_lng: 121.47,
                        start_lat: 31.23,
                        end: now,
                        end_lng: 121.48,
                        end_lat: 31.24,
                        distance_m: 1200,
                        soc_begin: d.soc.saturating_add(1),
                        soc_end: d.soc,
                        max_speed: 7000,
                        avg_speed: 4200,
                        max_current_ca: 1500,
                        battery_id: format!("BAT{index:05}"),
                        points: vec![(121.475, 31.235)],
                    })
                }
                _ => None,
            };
            if let Some(trip) = trip {
                seq = seq.wrapping_add(1);
                let body = crypto::encrypt(&key, &iv, &trip.encode());
                wr.write_all(
                    &Frame::request(id::TRIP, seq, dev_id, session_id, true, Bytes::from(body))
                        .to_bytes(),
                )
                .await?;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {
                d.step += 1;
                match o.drive.as_ref().map(|r| r.at(set_off.elapsed())) {
                    // On a route the mileage follows the route; the battery drains while
                    // moving and fills while charging.
                    Some(s) if s.moving && d.step.is_multiple_of(10) => {
                        d.soc = d.soc.saturating_sub(1).max(10)
                    }
                    Some(s) if s.charging => d.soc = d.soc.saturating_add(1).min(100),
                    Some(_) => {}
                    None if d.lock & 1 != 0 => {
                        d.mileage += 3;
                        if d.step.is_multiple_of(10) {
                            d.soc = d.soc.saturating_sub(1).max(10);
                        }
                    }
                    None => {}
                }
                send_status = true;
            }
            frame = frames.next() => {
                let f = match frame {
                    Some(Ok(Decoded::Frame(f))) => f,
                    Some(Ok(Decoded::Skipped(_))) => continue,
                    Some(Err(e)) => anyhow::bail!("read: {e}"),
                    None => anyhow::bail!("server closed the link"),
                };
                if let Kind::Response { resp_code } = f.header.kind {
                    // A server that cannot open the sealed status (an unknown device id
                    // is answered like a known one, so this is where it shows).
                    if resp_code != 0 && f.header.msg_id == id::STATUS && !o.plain_status {
                        anyhow::bail!(
                            "the server rejects device {dev_id}'s sealed status with code {resp_code} ({}): is it in [[kingxun.devices]] with this --key-seed?",
                            resp_code_text(resp_code)
                        );
                    }
                    continue;
                }
                let Kind::Request { .. } = f.header.kind else { continue };
                if !o.answer_commands {
                    continue;
                }
                let code = match crypto::decrypt(&key, &iv, &f.body).ok().and_then(|b| DeviceControl::decode(f.header.msg_id, &b, o.profile).ok()) {
                    Some(c) if c.session_id == session_id => {
                        match c.control {
                            Control::Unlock { .. } => d.lock |= 0x01 | 0x10,
                            Control::Lock { .. } => d.lock &= !(0x01 | 0x10),
                            Control::OpenLock { flags, .. } => d.lock |= flags & 0x0E,
                            Control::Guard { power, max_speed, .. } => d.guard = (power, max_speed),
                            Control::Lights { .. } => {}
                        }
                        0
                    }
                    _ => 1,
                };
                stats.commands.fetch_add(1, Ordering::Relaxed);
                wr.write_all(&Frame::response(f.header.msg_id, f.header.seq, code, false, Bytes::new()).to_bytes()).await?;
                send_status = true; // report the change at once
            }
        }
    }
}

/// `simulate kingxun`.
#[derive(clap::Args)]
pub struct Args {
    /// The bridge's kingxun listener, host:port.
    #[arg(long, default_value = "127.0.0.1:10086")]
    server: String,
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Seed the device keys are derived from.
    #[arg(long, default_value_t = 1)]
    key_seed: u64,
    #[arg(long, default_value_t = 1001)]
    first_id: u32,
    /// Time between status reports, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print the matching [[kingxun.devices]] config and exit.
    #[arg(long)]
    print_config: bool,
    /// Drive this route (GeoJSON LineString, or a JSON list of [latitude, longitude])
    /// at --speed, then stand at its end.
    #[arg(long)]
    route: Option<std::path::PathBuf>,
    /// km/h along --route.
    #[arg(long, default_value_t = 25.0)]
    speed: f64,
    /// After the route, charge this long (e.g. "10m").
    #[arg(long, value_parser = humantime::parse_duration)]
    charge: Option<Duration>,
}

/// The demo's devices: kx1001 and kx1002, keys from this seed.
const DEMO_SEED: u64 = 2024;
const DEMO_DEVICES: u32 = 2;

impl crate::upstream::Simulated for super::Kingxun {
    const COMMAND: &'static str = "kingxun";
    const ABOUT: &'static str = "kingxun devices that register, ride, report and obey commands";
    type Args = Args;

    async fn simulate(args: Args, shutdown: CancellationToken) -> Result<(), String> {
        let Args {
            server,
            devices,
            key_seed,
            first_id,
            interval,
            print_config,
            route,
            speed,
            charge,
        } = args;
        let opts = SimOptions {
            server,
            devices,
            key_seed,
            first_id,
            interval,
            drive: crate::sim::drive_from_args(route.as_deref(), speed, charge)?,
            ..Default::default()
        };
        if print_config {
            print!("{}", config_toml(&opts));
            return Ok(());
        }
        let stats = Arc::new(SimStats::default());
        run(opts, stats.clone(), shutdown.clone()).await;
        crate::sim::ended(&shutdown, &stats.first_error, "simulated device")
    }

    const DEMO_PORTS: &'static [(&'static str, u16)] = &[("kingxun-port", 10086)];
    fn demo_config(c: &mut super::KingxunConfig, port: &dyn Fn(&str) -> u16) {
        c.enabled = true;
        c.listen = ([127, 0, 0, 1], port("kingxun-port")).into();
        c.devices = (0..DEMO_DEVICES)
            .map(|i| super::KingxunDevice {
                overspeed_kmh: None,
                id: 1001 + i,
                key: crate::shared::Secret::new(hex::encode(derive_key(DEMO_SEED, 1001 + i))),
                name: Some(format!("Demo scooter {}", i + 1)),
                profile: None,
                accept_plain_frames: None,
            })
            .collect();
    }
    fn demo_addresses(c: &super::KingxunConfig) -> Vec<crate::upstream::DemoAddress> {
        vec![(c.listen, "kingxun-port")]
    }
    async fn demo_after(c: super::KingxunConfig, shutdown: CancellationToken) {
        if !crate::sim::wait_for(c.listen, &shutdown).await {
            tracing::error!("demo: the bridge's kingxun listener did not come up");
            return;
        }
        let opts = SimOptions {
            server: c.listen.to_string(),
            devices: DEMO_DEVICES as usize,
            first_id: 1001,
            key_seed: DEMO_SEED,
            interval: Duration::from_secs(2),
            trip_every: 15,
            ..Default::default()
        };
        run(opts, Default::default(), shutdown).await;
    }
    fn demo_vehicles(_: &super::KingxunConfig) -> String {
        "kingxun devices kx1001 and kx1002".into()
    }
    fn demo_examples(
        _: &super::KingxunConfig,
    ) -> Vec<(&'static str, String, &'static str, &'static str)> {
        vec![("Unlock a scooter", "kx1001".into(), "lock/set", "UNLOCK")]
    }
}
