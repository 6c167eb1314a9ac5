//! kingxun connector: the bridge plays the kingxun server ("svrInstance") that e-bike and
//! e-motor trackers connect to. Devices register (1001), report status, trips, charges
//! and events, and take control commands 2001–2005.

mod config;
mod server;
mod upstream;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use chrono::{FixedOffset, SecondsFormat, TimeZone, Utc};
use serde_json::json;
use tokio::sync::mpsc;

pub use config::{KingxunConfig, KingxunDevice, KingxunUpstream, UpstreamDevice};
pub use upstream::server_vehicle;

use crate::connector::{
    CommandRequest, Connector, ConnectorContext, ConnectorFuture, LinkGauge, Update, UpdateSink,
};
use crate::model::{
    Capability, Command, CommandProgress, Field, GuardPower, Position, VehicleEvent, VehicleId,
    VehicleInfo, VehicleState,
};
use crate::protocol::kingxun::{ChargeDone, Control, DevEvent, LocalTime, Status, Trip};

crate::named_counters! {
    /// Named error counters, in `bridge/info` and behind each logged event.
    pub struct Counters {
        links_refused,
        unknown_devices,
        bad_headers,
        bad_bodies,
        decrypt_failures,
        bad_sessions,
        unknown_msgs,
        oversized,
        stalled,
        idle_closed,
    }
}

/// `svrtime` / `timestamp` fields: unix seconds.
pub(crate) fn now_secs() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// Vehicle ids on the bridge: `kx<devId>`.
pub fn vehicle_id(dev_id: u32) -> VehicleId {
    VehicleId::new(&format!("kx{dev_id}"))
        .unwrap_or_else(|| unreachable!("kx<number> is always a valid id"))
}

fn device_model(dev_type: u8) -> &'static str {
    match dev_type {
        1 => "E-bike",
        2 => "E-motor",
        4 => "E-tricycle",
        6 => "Electric four-wheeler",
        _ => "Two-wheeler",
    }
}

/// 2-bit light field: 0b01 on.
fn light_on(light: u16, shift: u16) -> bool {
    (light >> shift) & 0b11 == 0b01
}

/// Translates a 1002 into vehicle state.
pub fn status_state(s: &Status) -> VehicleState {
    let mut v = VehicleState {
        position: Position::new(s.lat, s.lng),
        ..Default::default()
    };
    v.set_f64(Field::Odometer, f64::from(s.mileage) / 100.0);
    v.set(Field::Driving, s.driving);
    v.set_f64(Field::Speed, f64::from(s.speed) * 0.0036);
    let open = |bit: u8| s.lock & (1 << bit) != 0;
    v.set(Field::Lock, if open(0) { "UNLOCKED" } else { "LOCKED" });
    v.set(Field::SeatLock, open(1));
    v.set(Field::GloveboxLock, open(2));
    v.set(Field::HelmetLock, open(3) || open(5));
    v.set(Field::MotorLock, open(4));
    v.set(Field::Headlight, light_on(s.light, 0));
    v.set(Field::SeatOccupied, s.sensor & 0x01 != 0);
    v.set(Field::Kickstand, s.sensor & 0x02 != 0);
    v.set(Field::Fallen, s.sensor & 0x10 != 0);
    v.set(Field::Braking, s.brake & 0x03 != 0);
    v.attributes.insert("light_status".into(), s.light.into());
    if let Some(m) = &s.mini_battery {
        v.set(Field::MiniBatteryLevel, i64::from(m.soc.min(100)));
        v.set_f64(Field::MiniBatteryVoltage, f64::from(m.voltage_cv) / 100.0);
        v.set_f64(Field::MiniBatteryTemperature, f64::from(m.temp_cc) / 100.0);
    }
    v.set(Field::BatteryPresent, s.battery.is_some());
    if let Some(b) = &s.battery {
        v.set(Field::BatteryLevel, i64::from(b.soc.min(100)));
        v.set_f64(Field::BatteryVoltage, f64::from(b.voltage_cv) / 100.0);
        v.set_f64(Field::BatteryTemperature, f64::from(b.temp_cc) / 100.0);
        v.set(Field::BatteryCycles, i64::from(b.cycles));
        v.set(Field::BatteryHealth, i64::from(b.soh.min(100)));
        // Positive while discharging, negative while charging.
        let sign = if b.current_flag == 2 { -1.0 } else { 1.0 };
        v.set_f64(
            Field::BatteryCurrent,
            sign * f64::from(b.current_ca) / 100.0,
        );
        v.set(Field::Charging, b.charging);
        if !b.id.is_empty() {
            v.attributes
                .insert("battery_id".into(), b.id.clone().into());
        }
        let volts: Vec<f64> = b
            .cells
            .iter()
            .map(|c| f64::from(c.voltage_cv) / 100.0)
            .collect();
        let temps: Vec<Option<f64>> = b
            .cells
            .iter()
            .map(|c| c.temp_cc.map(|t| f64::from(t) / 100.0))
            .collect();
        if !volts.is_empty() {
            v.attributes.insert("cell_voltages".into(), json!(volts));
            v.attributes
                .insert("cell_temperatures".into(), json!(temps));
        }
    }
    v
}

fn local_to_utc(t: &LocalTime, tz: FixedOffset) -> Option<chrono::DateTime<Utc>> {
    Some(
        tz.from_local_datetime(&t.to_naive()?)
            .single()?
            .with_timezone(&Utc),
    )
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A 1008 as "last trip" sensors and a `trip` event.
pub fn trip_update(t: &Trip, tz: FixedOffset) -> (VehicleState, VehicleEvent) {
    let mut v = VehicleState::default();
    let km = f64::from(t.distance_m) / 1000.0;
    v.set_f64(Field::LastTripDistance, km);
    v.set_f64(Field::LastTripMaxSpeed, f64::from(t.max_speed) * 0.0036);
    v.set_f64(Field::LastTripAvgSpeed, f64::from(t.avg_speed) * 0.0036);
    let (start, end) = (local_to_utc(&t.start, tz), local_to_utc(&t.end, tz));
    let mut attrs = serde_json::Map::new();
    if let (Some(s), Some(e)) = (start, end) {
        let minutes = (e - s).num_seconds().max(0) as f64 / 60.0;
        v.set_f64(Field::LastTripDuration, (minutes * 10.0).round() / 10.0);
        attrs.insert("start".into(), rfc3339(s).into());
        attrs.insert("end".into(), rfc3339(e).into());
    }
    if let Some(e) = end {
        v.set(Field::LastTripEnd, rfc3339(e));
    }
    attrs.insert("distance_km".into(), json!(km));
    attrs.insert("soc_begin".into(), t.soc_begin.into());
    attrs.insert("soc_end".into(), t.soc_end.into());
    attrs.insert(
        "max_speed_kmh".into(),
        json!((f64::from(t.max_speed) * 0.036).round() / 10.0),
    );
    attrs.insert(
        "avg_speed_kmh".into(),
        json!((f64::from(t.avg_speed) * 0.036).round() / 10.0),
    );
    attrs.insert(
        "max_current_a".into(),
        json!(f64::from(t.max_current_ca) / 100.0),
    );
    attrs.insert("start_position".into(), json!([t.start_lat, t.start_lng]));
    attrs.insert("end_position".into(), json!([t.end_lat, t.end_lng]));
    attrs.insert("points".into(), t.points.len().into());
    (
        v,
        VehicleEvent {
            event_type: "trip".into(),
            attributes: attrs,
        },
    )
}

pub fn charge_event(c: &ChargeDone, tz: FixedOffset) -> VehicleEvent {
    let mut attrs = serde_json::Map::new();
    if let Some(s) = local_to_utc(&c.start, tz) {
        attrs.insert("start".into(), rfc3339(s).into());
    }
    if let Some(e) = local_to_utc(&c.end, tz) {
        attrs.insert("end".into(), rfc3339(e).into());
    }
    attrs.insert("soc_begin".into(), c.soc_begin.into());
    attrs.insert("soc_end".into(), c.soc_end.into());
    attrs.insert(
        "voltage_begin".into(),
        json!(f64::from(c.voltage_begin_cv) / 100.0),
    );
    attrs.insert(
        "voltage_end".into(),
        json!(f64::from(c.voltage_end_cv) / 100.0),
    );
    attrs.insert(
        "max_current_a".into(),
        json!(f64::from(c.max_current_ca) / 100.0),
    );
    VehicleEvent {
        event_type: "charge_finished".into(),
        attributes: attrs,
    }
}

pub fn device_event(e: &DevEvent, tz: FixedOffset) -> VehicleEvent {
    let mut attrs = serde_json::Map::new();
    if let Some(t) = local_to_utc(&e.time, tz) {
        let t = t + chrono::Duration::milliseconds(i64::from(e.millis.min(999)));
        attrs.insert(
            "time".into(),
            t.to_rfc3339_opts(SecondsFormat::Millis, true).into(),
        );
    }
    attrs.insert("code".into(), e.kind.into());
    attrs.insert("user_id".into(), e.user_id.into());
    attrs.insert(
        "speed_kmh".into(),
        json!((f64::from(e.speed) * 0.036).round() / 10.0),
    );
    if Position::new(e.lat, e.lng).is_some() {
        attrs.insert("position".into(), json!([e.lat, e.lng]));
    }
    VehicleEvent {
        event_type: DevEvent::type_name(e.kind),
        attributes: attrs,
    }
}

/// What a command becomes on the wire, and the state it leaves behind on success.
pub fn control_for(
    command: &Command,
    cfg: &KingxunConfig,
    guard: (u8, u16),
) -> Result<(Control, VehicleState), String> {
    let mut after = VehicleState::default();
    let control = match command {
        Command::Unlock => Control::Unlock {
            allow_min: cfg.allow_time_min,
            lowest_soc: cfg.lowest_soc,
            farthest_m: cfg.farthest_dist_m,
        },
        Command::Lock => Control::Lock { voice: 1 },
        Command::OpenSeat => Control::OpenLock {
            flags: 0x02,
            voice: 1,
        },
        Command::OpenGlovebox => Control::OpenLock {
            flags: 0x04,
            voice: 1,
        },
        Command::OpenHelmet => Control::OpenLock {
            flags: 0x08,
            voice: 1,
        },
        Command::HazardLights => Control::Lights { flags: 0x0100 },
        Command::Guard(p) => {
            let power = match p {
                GuardPower::Off => 0,
                GuardPower::W100 => 1,
                GuardPower::W200 => 2,
                GuardPower::Unlimited => 0xFF,
            };
            after.set(Field::GuardPower, p.as_str());
            Control::Guard {
                power,
                max_speed: guard.1,
                voice: 1,
            }
        }
        Command::MaxSpeed(kmh) => {
            after.set(Field::MaxSpeed, i64::from(*kmh));
            // km/h → m/s × 100.
            Control::Guard {
                power: guard.0,
                max_speed: (f64::from(*kmh) / 3.6 * 100.0).round() as u16,
                voice: 0,
            }
        }
        other => return Err(format!("kingxun devices cannot `{}`", other.name())),
    };
    Ok((control, after))
}

/// (software version, device type) of a device as last reported.
pub(crate) type KnownIdentity = (Option<u32>, Option<u8>);

/// A command on its way to a link.
pub(crate) struct LinkCommand {
    pub control: Control,
    pub after: VehicleState,
    pub request: CommandRequest,
}

pub(crate) struct Core {
    pub config: KingxunConfig,
    pub tz: FixedOffset,
    pub updates: UpdateSink,
    /// devId → key and name.
    pub devices: HashMap<u32, KingxunDevice>,
    /// devId → (link id, command sender) of the device's current link.
    pub links: Mutex<HashMap<u32, (u64, mpsc::Sender<LinkCommand>)>>,
    /// devId → (software version, device type) as last reported, so every announcement
    /// carries the best-known identity.
    pub known: Mutex<HashMap<u32, KnownIdentity>>,
    /// devId → (guard power flag, max speed m/s × 100) last set, for 2003.
    pub guard: Mutex<HashMap<u32, (u8, u16)>>,
    pub next_link: AtomicU64,
    pub open_links: LinkGauge,
    pub counters: Counters,
    /// Commands for devices reached through an upstream kingxun server.
    pub upstream: Option<(std::collections::HashSet<u32>, mpsc::Sender<LinkCommand>)>,
}

impl Core {
    /// The vehicle's identity; `sw` / `dev_type` update what is remembered.
    pub fn info(&self, dev_id: u32, sw: Option<u32>, dev_type: Option<u8>) -> VehicleInfo {
        let (sw, dev_type) = match self.known.lock() {
            Ok(mut known) => {
                let entry = known.entry(dev_id).or_default();
                entry.0 = sw.or(entry.0);
                entry.1 = dev_type.or(entry.1);
                *entry
            }
            Err(_) => (sw, dev_type),
        };
        let name = self
            .devices
            .get(&dev_id)
            .and_then(|d| d.name.clone())
            .unwrap_or_else(|| format!("kingxun {dev_id}"));
        let mut event_types: Vec<String> = vec!["trip".into(), "charge_finished".into()];
        event_types.extend((1..=13).map(DevEvent::type_name));
        VehicleInfo {
            id: vehicle_id(dev_id),
            name,
            manufacturer: "kingxun".into(),
            model: device_model(dev_type.unwrap_or(0)).into(),
            sw_version: sw.map(|v| format!("{}.{}.{}", v >> 16, (v >> 8) & 0xFF, v & 0xFF)),
            capabilities: vec![
                Capability::Lock,
                Capability::OpenSeat,
                Capability::OpenGlovebox,
                Capability::OpenHelmet,
                Capability::HazardLights,
                Capability::GuardPower,
                Capability::MaxSpeed {
                    max: self.config.max_speed_kmh,
                },
            ],
            event_types,
        }
    }

    fn send_command(&self, req: CommandRequest) {
        let Some(dev_id) = req
            .vehicle
            .as_str()
            .strip_prefix("kx")
            .and_then(|s| s.parse::<u32>().ok())
        else {
            let _ = req
                .progress
                .try_send(CommandProgress::Failed("not a kingxun vehicle".into()));
            return;
        };
        let guard = self
            .guard
            .lock()
            .map(|g| g.get(&dev_id).copied().unwrap_or((0xFF, 0)))
            .unwrap_or((0xFF, 0));
        let (control, after) = match control_for(&req.command, &self.config, guard) {
            Ok(c) => c,
            Err(reason) => {
                let _ = req.progress.try_send(CommandProgress::Failed(reason));
                return;
            }
        };
        let upstream = self
            .upstream
            .as_ref()
            .filter(|(ids, _)| ids.contains(&dev_id))
            .map(|(_, tx)| tx.clone());
        let link = upstream.or_else(|| {
            self.links
                .lock()
                .ok()
                .and_then(|l| l.get(&dev_id).map(|(_, tx)| tx.clone()))
        });
        let Some(link) = link else {
            let _ = req
                .progress
                .try_send(CommandProgress::Failed("offline".into()));
            return;
        };
        if let Err(err) = link.try_send(LinkCommand {
            control,
            after,
            request: req,
        }) {
            let req = match err {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => {
                    c.request
                }
            };
            let _ = req
                .progress
                .try_send(CommandProgress::Failed("offline".into()));
        }
    }
}

pub struct KingxunConnector {
    config: KingxunConfig,
}

impl KingxunConnector {
    pub fn new(config: KingxunConfig) -> Self {
        KingxunConnector { config }
    }
}

impl Connector for KingxunConnector {
    fn name(&self) -> &'static str {
        "kingxun"
    }

    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            let tz = crate::config::require_timezone("kingxun", &self.config.timezone)?;
            let (upstream_tx, upstream_rx) = mpsc::channel(64);
            let upstream_ids: std::collections::HashSet<u32> = self
                .config
                .upstream
                .iter()
                .flat_map(|u| u.devices.iter().map(|d| d.id))
                .collect();
            let core = Arc::new(Core {
                upstream: self
                    .config
                    .upstream
                    .as_ref()
                    .map(|_| (upstream_ids.clone(), upstream_tx)),
                devices: self
                    .config
                    .devices
                    .iter()
                    .map(|d| (d.id, d.clone()))
                    .collect(),
                config: self.config.clone(),
                tz,
                updates: ctx.updates.clone(),
                links: Mutex::new(HashMap::new()),
                guard: Mutex::new(HashMap::new()),
                known: Mutex::new(HashMap::new()),
                next_link: AtomicU64::new(1),
                open_links: LinkGauge::default(),
                counters: Counters::default(),
            });
            // Every configured device exists (offline) before it first connects.
            for dev_id in core.devices.keys().chain(upstream_ids.iter()) {
                let _ = ctx
                    .updates
                    .send(Update::Vehicle(core.info(*dev_id, None, None)))
                    .await;
                ctx.updates.availability(vehicle_id(*dev_id), false).await;
            }
            let ConnectorContext {
                mut commands,
                shutdown,
                ..
            } = ctx;
            let mut tasks = Vec::new();
            // The device server runs when devices connect to us directly.
            if !core.devices.is_empty() {
                let listener = tokio::net::TcpListener::bind(self.config.listen)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("kingxun cannot listen on {}: {e}", self.config.listen)
                    })?;
                tracing::info!(event = "kingxun_listening", listen = %listener.local_addr()?, devices = core.devices.len(),
                    "kingxun device server listening");
                tasks.push(tokio::spawn(server::run(
                    listener,
                    core.clone(),
                    shutdown.clone(),
                )));
            }
            if let Some(up) = self.config.upstream.clone() {
                tasks.push(tokio::spawn(upstream::run(
                    up,
                    core.clone(),
                    upstream_rx,
                    shutdown.clone(),
                )));
            }
            let mut counters_tick = tokio::time::interval(crate::connector::COUNTERS_EVERY);
            let mut report = crate::connector::CountersReport::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(req) = commands.recv() => core.send_command(req),
                    _ = counters_tick.tick() => report.report(core.counters.snapshot(), &core.updates).await,
                }
            }
            for t in tasks {
                t.abort();
            }
            Ok(())
        })
    }
}
