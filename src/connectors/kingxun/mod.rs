//! kingxun connector: the bridge plays the kingxun server ("svrInstance") that e-bike and
//! e-motor trackers connect to. Devices register (1001), report status, trips, charges
//! and events, and take control commands 2001–2005. Optionally it also plays the web
//! server of an existing kingxun server, "via kxSvr" (`[kingxun.kxsvr]`, `via_kxsvr.rs`).

mod config;
#[cfg(feature = "simulators")]
pub mod kxsvr_sim;
mod report;
mod requests;
mod server;
#[cfg(feature = "simulators")]
pub mod sim;
mod via_kxsvr;

pub use report::*;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

use chrono::{SecondsFormat, Utc};

use crate::zone::Zone;
use serde_json::json;

pub use crate::protocol::kingxun::web_session::open_connect_ack;
pub use config::{
    Device, Kingxun, KingxunConfig, KingxunDevice, KxsvrDevice, ServerCommand, ViaKxsvr,
};
pub use via_kxsvr::server_vehicle;

use crate::connector::{
    CommandRequest, Connector, ConnectorContext, ConnectorFuture, LinkGauge, Update, UpdateSink,
};
use crate::model::{
    Capability, Command, CommandProgress, Field, GuardPower, Position, VehicleEvent, VehicleId,
    VehicleInfo, VehicleState,
};
use crate::protocol::kingxun::{
    ChargeDone, Control, DevEvent, LocalTime, Profile, RangeAnswer, Status, Target, Trip,
};

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
        unproven_frames,
        malformed_closed,
        registrations_throttled,
    }
}

/// Guard power flag and max speed (m/s × 100) as the user last set them; a 2003 always
/// carries both, so neither may be made up (docs/protocols/kingxun.md,
/// "2001–2005 commands to a device": no "0 = no limit").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuardSetting {
    pub power: Option<u8>,
    pub max_speed: Option<u16>,
}

/// What a command becomes on the wire, and the state it leaves behind on success.
/// `target` is the device's profile (direct link) or `Target::Server` (through a kingxun
/// server that carries out `server`'s extra commands).
pub fn control_for(
    command: &Command,
    cfg: &KingxunConfig,
    guard: GuardSetting,
    target: Target,
    server: &[ServerCommand],
) -> Result<(Control, VehicleState), String> {
    let through_server = target == Target::Server;
    let server_does = |c: ServerCommand| !through_server || server.contains(&c);
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
        // 0x0100 exists only in 4005's u16 lightFlag (docs/protocols/kingxun.md,
        // "4001–4005 commands through a server"); 2005 has one byte.
        Command::HazardLights if through_server && server_does(ServerCommand::Lights) => {
            Control::Lights { flags: 0x0100 }
        }
        Command::HazardLights if through_server => {
            return Err("this kingxun server does not carry out lights (4005): a stock kxSvr has no handler for it; list \"lights\" in kingxun.kxsvr.server_commands if yours does".into())
        }
        Command::Guard(_) | Command::MaxSpeed(_) if !server_does(ServerCommand::Guard) => {
            return Err("this kingxun server does not carry out guard commands: a stock kxSvr forwards 4003 to the device as a LOCK (2002); list \"guard\" in kingxun.kxsvr.server_commands if yours does".into())
        }
        Command::Guard(p) => {
            let power = match p {
                GuardPower::Off => 0,
                GuardPower::W100 => 1,
                GuardPower::W200 => 2,
                GuardPower::Unlimited => 0xFF,
            };
            let Some(max_speed) = guard.max_speed else {
                return Err("no max speed known for this vehicle: set max speed first (a guard command always carries one)".into());
            };
            after.set(Field::GuardPower, p.as_str());
            Control::Guard {
                power,
                max_speed,
                voice: 1,
            }
        }
        Command::MaxSpeed(kmh) => {
            // A 2003 carries the power flag too: the one last set, else 0xFF ("no power
            // limit"), which limits nothing; it is what the device runs with unguarded.
            let power = guard.power.unwrap_or(0xFF);
            if *kmh == 0 {
                return Err("max speed 0 is not a limit the device knows; use guard power off to stop the motor".into());
            }
            after.set(Field::MaxSpeed, i64::from(*kmh));
            // km/h → m/s × 100.
            Control::Guard {
                power,
                max_speed: (f64::from(*kmh) / 3.6 * 100.0).round().min(65535.0) as u16,
                voice: 0,
            }
        }
        other => return Err(format!("kingxun devices cannot `{}`", other.name())),
    };
    control.check(target).map_err(|e| match target {
        Target::Device(p) => format!("{e} (device profile `{}`)", p.name()),
        Target::Server => e.to_string(),
    })?;
    Ok((control, after))
}

fn guard_power_name(flag: u8) -> Option<&'static str> {
    let p = match flag {
        0 => GuardPower::Off,
        1 => GuardPower::W100,
        2 => GuardPower::W200,
        0xFF => GuardPower::Unlimited,
        _ => return None,
    };
    Some(p.as_str())
}

/// What every device link is allowed, from the config.
fn link_settings(cfg: &KingxunConfig) -> crate::protocol::kingxun::session::Settings {
    crate::protocol::kingxun::session::Settings {
        idle_timeout: cfg.idle_timeout,
        read_timeout: cfg.read_timeout,
        command_timeout: cfg.command_timeout,
        bad_in_a_row: crate::connectors::BAD_IN_A_ROW,
        // The answer to 1005: range on a full battery, charge reminder, lowest usable SoC.
        range: RangeAnswer {
            max_range_m: (cfg.range_full_km * 1000.0).clamp(0.0, u32::MAX as f64) as u32,
            charge_notify_soc: cfg.charge_notify_soc,
            soc_min: cfg.soc_min,
        },
    }
}

/// Guard settings persisted in `state_dir`, so a restart never forgets what a 2003 must carry.
const GUARD_FILE: &str = "kingxun_guard.json";

fn load_guard(dir: Option<&std::path::Path>) -> HashMap<u32, GuardSetting> {
    dir.and_then(|d| std::fs::read(d.join(GUARD_FILE)).ok())
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default()
}

/// (software version, device type) of a device as last reported.
pub(crate) type KnownIdentity = (Option<u32>, Option<u8>);

/// Where a link takes its commands (boxed: a command is large, and rare).
pub(crate) type LinkSender = Arc<crate::connectors::link::Mailbox<Box<LinkCommand>>>;

/// A command on its way to a link.
pub(crate) struct LinkCommand {
    /// The device it is for: routed by this, never by the vehicle id's text.
    pub dev_id: u32,
    pub control: Control,
    pub after: VehicleState,
    pub request: CommandRequest,
}

/// What the connector's tasks (the device server's links, the kxSvr link) share.
pub(crate) struct Shared {
    pub config: KingxunConfig,
    pub tz: Zone,
    pub updates: UpdateSink,
    /// devId → key and name.
    pub devices: crate::model::VecMap<u32, Device>,
    /// devId → (link id, command sender, what ends it) of the device's current link.
    pub links: Mutex<HashMap<u32, (u64, LinkSender, CancellationToken)>>,
    /// devId → (software version, device type) as last reported, so every announcement
    /// carries the best-known identity.
    pub known: Mutex<HashMap<u32, KnownIdentity>>,
    /// devId → guard power and max speed last set, for 2003; persisted in `state_dir`.
    pub guard: Mutex<HashMap<u32, GuardSetting>>,
    pub state_dir: Option<std::path::PathBuf>,
    /// What every device link is allowed (one copy for all links).
    pub link_settings: Arc<crate::protocol::kingxun::session::Settings>,
    pub next_link: AtomicU64,
    pub open_links: LinkGauge,
    pub counters: Counters,
    /// Bad input is logged a few lines at a time across all links, then summarised.
    pub bad_input_log: crate::connectors::LogLimiter,
    /// Registrations per address block, known ids and unknown alike.
    pub registrations: crate::connectors::GuessThrottle,
    /// Commands for devices reached through a kingxun server (`kxsvr`).
    pub kxsvr: Option<(std::collections::HashSet<u32>, LinkSender)>,
    /// Devices' capabilities, one copy per distinct set (they differ only by config).
    pub capability_sets: crate::shared::Interner<Capability>,
}

impl Shared {
    /// The vehicle's identity; `sw` / `dev_type` update what is remembered.
    pub fn info(&self, dev_id: u32, sw: Option<u32>, dev_type: Option<u8>) -> VehicleInfo {
        let (sw, dev_type) = match self.known.lock() {
            // Nothing to remember (a configured device not yet linked): no entry, so
            // 10 000 configured devices do not fill the map with blanks.
            Ok(known) if sw.is_none() && dev_type.is_none() => {
                known.get(&dev_id).copied().unwrap_or_default()
            }
            Ok(mut known) => {
                let entry = known.entry(dev_id).or_default();
                entry.0 = sw.or(entry.0);
                entry.1 = dev_type.or(entry.1);
                *entry
            }
            Err(_) => (sw, dev_type),
        };
        let custom = self
            .devices
            .get(&dev_id)
            .and_then(|d| d.name.as_deref().map(str::to_string));
        let custom_name = custom.is_some();
        let name = custom.unwrap_or_else(|| format!("kingxun {dev_id}"));
        static EVENT_TYPES: std::sync::OnceLock<std::sync::Arc<[String]>> =
            std::sync::OnceLock::new();
        let event_types = EVENT_TYPES
            .get_or_init(|| {
                let mut types: Vec<String> = vec!["trip".into(), "charge_finished".into()];
                types.extend((1..=13).map(DevEvent::type_name));
                types.into()
            })
            .clone();
        let mut capabilities = vec![
            Capability::Lock,
            Capability::OpenSeat,
            Capability::OpenGlovebox,
            Capability::OpenHelmet,
        ];
        let server = self.server_commands(dev_id);
        let guard = server.is_none_or(|s| s.contains(&ServerCommand::Guard));
        if guard {
            capabilities.push(Capability::GuardPower);
            capabilities.push(Capability::MaxSpeed {
                max: self.max_speed_kmh(dev_id),
            });
        }
        // Hazard lights exist only in 4005's two-byte lightFlag: through a server that
        // carries out 4005, never on a direct link (2005 has one byte).
        if server.is_some_and(|s| s.contains(&ServerCommand::Lights)) {
            capabilities.push(Capability::HazardLights);
        }
        VehicleInfo {
            id: vehicle_id(dev_id),
            name,
            manufacturer: "kingxun".into(),
            model: device_model(0).into(),
            reported_model: dev_type.map(|t| device_model(t).into()),
            sw_version: sw.map(|v| format!("{}.{}.{}", v >> 16, (v >> 8) & 0xFF, v & 0xFF)),
            custom_name,
            serial_number: Some(dev_id.to_string()),
            capabilities: self.capability_sets.shared(capabilities),
            event_types,
        }
    }

    /// `Some(commands)` for a device reached through a kingxun server, `None` for a
    /// device that links to the bridge itself.
    fn server_commands(&self, dev_id: u32) -> Option<&[ServerCommand]> {
        let kx = self.config.kxsvr.as_ref()?;
        kx.devices
            .iter()
            .any(|d| d.id == dev_id)
            .then_some(kx.server_commands.as_slice())
    }

    /// Whether plain frames are trusted from this device: its registration alone makes
    /// its link the device's (`accept_plain_frames`, per device or for all).
    pub fn accepts_plain(&self, dev_id: u32) -> bool {
        self.devices
            .get(&dev_id)
            .and_then(|d| d.accept_plain_frames)
            .unwrap_or(self.config.accept_plain_frames)
    }

    /// The 2001–2005 layout of a directly linked device.
    pub fn profile(&self, dev_id: u32) -> Profile {
        self.devices
            .get(&dev_id)
            .and_then(|d| d.profile)
            .unwrap_or(self.config.profile)
    }

    fn target(&self, dev_id: u32) -> Target {
        if self.server_commands(dev_id).is_some() {
            Target::Server
        } else {
            Target::Device(self.profile(dev_id))
        }
    }

    /// The max-speed entity's upper bound: the config's, or what the profile can carry.
    fn max_speed_kmh(&self, dev_id: u32) -> u16 {
        let limit = match self.target(dev_id) {
            Target::Device(p) => (f64::from(p.max_speed_limit()) * 0.036).floor() as u16,
            Target::Server => u16::MAX,
        };
        self.config.max_speed_kmh.min(limit).max(1)
    }

    /// Remembers a guard setting the device accepted, and persists it.
    pub fn remember_guard(&self, dev_id: u32, control: &Control) {
        let Control::Guard {
            power, max_speed, ..
        } = *control
        else {
            return;
        };
        let bytes = {
            let Ok(mut g) = self.guard.lock() else { return };
            g.insert(
                dev_id,
                GuardSetting {
                    power: Some(power),
                    max_speed: Some(max_speed),
                },
            );
            serde_json::to_vec(&*g)
        };
        let Some(dir) = &self.state_dir else { return };
        match bytes {
            // The writer's thread does the fsync: never on this worker, never under the lock.
            Ok(bytes) => {
                crate::state_dir::writer::write(dir, GUARD_FILE, bytes, "kingxun_guard_not_saved")
            }
            Err(e) => tracing::warn!(event = "kingxun_guard_not_saved", error = %e),
        }
    }

    /// The configured device a vehicle id stands for: the one `d` whose
    /// `vehicle_id(d)` it is (`kx` and the decimal devId, one-to-one), so `kx007` or
    /// `kx+7` name no device.
    fn device_of(&self, vehicle: &VehicleId) -> Option<u32> {
        let digits = vehicle.as_str().strip_prefix(ID_PREFIX)?;
        let dev_id = digits.parse::<u32>().ok()?;
        let configured = self.devices.contains_key(&dev_id)
            || self
                .kxsvr
                .as_ref()
                .is_some_and(|(ids, _)| ids.contains(&dev_id));
        (configured && vehicle_id(dev_id) == *vehicle).then_some(dev_id)
    }

    /// Another cluster instance owns the device now (it linked there): its link here is
    /// stale, and ends without marking it offline (docs/cluster.md).
    fn release(&self, vehicle: &VehicleId) {
        let Some(dev_id) = self.device_of(vehicle) else {
            return;
        };
        let link = self.links.lock().ok().and_then(|mut l| l.remove(&dev_id));
        if let Some((id, _, end)) = link {
            tracing::info!(
                event = "kingxun_link_released",
                dev_id,
                link = id,
                "another instance holds the device's link now: closing this one"
            );
            end.cancel();
        }
    }

    fn send_command(&self, req: CommandRequest) {
        let Some(dev_id) = self.device_of(&req.vehicle) else {
            let _ = req
                .progress
                .try_send(CommandProgress::Failed("not a kingxun vehicle".into()));
            return;
        };
        let guard = self
            .guard
            .lock()
            .map(|g| g.get(&dev_id).copied().unwrap_or_default())
            .unwrap_or_default();
        let server = self.server_commands(dev_id).unwrap_or(&[]);
        let (control, after) = match control_for(
            &req.command,
            &self.config,
            guard,
            self.target(dev_id),
            server,
        ) {
            Ok(c) => c,
            Err(reason) => {
                let _ = req.progress.try_send(CommandProgress::Failed(reason));
                return;
            }
        };
        let via_kxsvr = self
            .kxsvr
            .as_ref()
            .filter(|(ids, _)| ids.contains(&dev_id))
            .map(|(_, tx)| tx.clone());
        let link = via_kxsvr.or_else(|| {
            self.links
                .lock()
                .ok()
                .and_then(|l| l.get(&dev_id).map(|(_, tx, _)| tx.clone()))
        });
        let Some(link) = link else {
            let _ = req
                .progress
                .try_send(CommandProgress::Failed("offline".into()));
            return;
        };
        if let Err(refused) = link.try_send(Box::new(LinkCommand {
            dev_id,
            control,
            after,
            request: req,
        })) {
            let _ = refused
                .request
                .progress
                .try_send(CommandProgress::Failed("offline".into()));
        }
    }
}

pub struct KingxunConnector {
    config: KingxunConfig,
    state_dir: Option<std::path::PathBuf>,
}

impl KingxunConnector {
    pub fn new(config: KingxunConfig) -> Self {
        KingxunConnector {
            config,
            state_dir: None,
        }
    }

    /// Where guard settings persist across restarts.
    pub fn with_state_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.state_dir = Some(dir);
        self
    }
}

impl Connector for KingxunConnector {
    fn name(&self) -> &'static str {
        "kingxun"
    }

    fn configured_vehicles(&self) -> Option<Vec<VehicleId>> {
        let mut ids: Vec<VehicleId> = self
            .config
            .devices
            .iter()
            .map(|d| vehicle_id(d.id))
            .collect();
        if let Some(kx) = &self.config.kxsvr {
            ids.push(via_kxsvr::server_vehicle());
            ids.extend(kx.devices.iter().map(|d| vehicle_id(d.id)));
        }
        Some(ids)
    }

    fn speed_limits(&self) -> crate::connector::SpeedLimits {
        let direct = self.config.devices.iter().map(|d| (d.id, d.overspeed_kmh));
        let via = self.config.kxsvr.iter().flat_map(|k| &k.devices);
        crate::connector::SpeedLimits {
            section: self.config.overspeed_kmh,
            vehicles: direct
                .chain(via.map(|d| (d.id, d.overspeed_kmh)))
                .filter_map(|(id, kmh)| Some((vehicle_id(id), kmh?)))
                .collect(),
        }
    }

    fn run(mut self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture {
        Box::pin(async move {
            let tz = crate::shared::require_timezone("kingxun", &self.config.timezone)?;
            let kxsvr_tx = crate::connectors::link::Mailbox::new(64);
            let kxsvr_ids: std::collections::HashSet<u32> = self
                .config
                .kxsvr
                .iter()
                .flat_map(|kx| kx.devices.iter().map(|d| d.id))
                .collect();
            let shared = Arc::new(Shared {
                capability_sets: Default::default(),
                kxsvr: self
                    .config
                    .kxsvr
                    .as_ref()
                    .map(|_| (kxsvr_ids.clone(), kxsvr_tx.clone())),
                // The device list lives once, in this map (10 000 devices with keys).
                devices: crate::model::VecMap::from_unsorted(
                    std::mem::take(&mut self.config.devices)
                        .into_iter()
                        .map(|d| (d.id, Device::from(d)))
                        .collect(),
                ),
                config: self.config.clone(),
                tz,
                updates: ctx.updates.clone(),
                links: Mutex::new(HashMap::new()),
                guard: Mutex::new(load_guard(self.state_dir.as_deref())),
                state_dir: self.state_dir.clone(),
                link_settings: Arc::new(link_settings(&self.config)),
                known: Mutex::new(HashMap::new()),
                next_link: AtomicU64::new(1),
                open_links: LinkGauge::default(),
                counters: Counters::default(),
                // A burst as big as the links one address may hold, then a tenth of
                // that per second: a fleet behind one NAT re-registers in seconds, an id
                // guesser gets ~200 guesses a second that all look alike.
                registrations: crate::connectors::GuessThrottle::with_budget(
                    (self.config.links_per_address() / 10).max(1) as f64,
                    self.config.links_per_address() as f64,
                ),
                bad_input_log: crate::connectors::LogLimiter::new(
                    10,
                    std::time::Duration::from_secs(10),
                ),
            });
            let trusting: Vec<u32> = shared
                .devices
                .keys()
                .copied()
                .filter(|d| shared.accepts_plain(*d))
                .collect();
            if !trusting.is_empty() {
                tracing::warn!(event = "kingxun_plain_frames_trusted", devices = ?trusting,
                    "accept_plain_frames: anyone who knows these device ids can register as them, report positions and states in their name and receive their commands; use it only for firmware that never encrypts a frame");
            }
            // Every configured device exists (offline) before it first connects.
            for dev_id in shared.devices.keys().chain(kxsvr_ids.iter()) {
                let _ = ctx
                    .updates
                    .send(Update::Vehicle(shared.info(*dev_id, None, None)))
                    .await;
                ctx.updates.availability(vehicle_id(*dev_id), false).await;
            }
            // What the user last set stays shown after a restart.
            let remembered: Vec<(u32, GuardSetting)> = shared
                .guard
                .lock()
                .map(|g| g.iter().map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default();
            for (dev_id, g) in remembered {
                let mut s = VehicleState::default();
                if let Some(p) = g.power.and_then(guard_power_name) {
                    s.set(Field::GuardPower, p);
                }
                if let Some(ms) = g.max_speed {
                    s.set(Field::MaxSpeed, (f64::from(ms) * 0.036).round() as i64);
                }
                if !s.values.is_empty() {
                    ctx.updates.merge_state(vehicle_id(dev_id), s).await;
                }
            }
            let ConnectorContext {
                mut commands,
                shutdown,
                mut releases,
                ..
            } = ctx;
            let mut tasks = crate::connectors::Tasks::default();
            // The device server runs when devices connect to us directly.
            if !shared.devices.is_empty() {
                let listener = crate::connectors::listen(self.config.listen)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("kingxun cannot listen on {}: {e}", self.config.listen)
                    })?;
                tracing::info!(event = "kingxun_listening", listen = %listener.local_addr()?, devices = shared.devices.len(),
                    "kingxun device server listening");
                let server = server::run(listener, shared.clone(), shutdown.clone());
                tasks.spawn("kingxun device server", async move {
                    server.await;
                    Ok(())
                });
            }
            if let Some(kx) = self.config.kxsvr.clone() {
                let link = via_kxsvr::run(kx, shared.clone(), kxsvr_tx, shutdown.clone());
                tasks.spawn("kingxun server link", async move {
                    link.await;
                    Ok(())
                });
            }
            let mut counters_tick = tokio::time::interval(crate::connector::COUNTERS_EVERY);
            let mut report = crate::connector::CountersReport::default();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(req) = commands.recv() => shared.send_command(req),
                    Some(vehicle) = releases.recv() => shared.release(&vehicle),
                    _ = counters_tick.tick() => report.report(shared.counters.snapshot(), &shared.updates).await,
                    reason = tasks.ended() => {
                        if shutdown.is_cancelled() {
                            break;
                        }
                        return Err(reason);
                    }
                }
            }
            tasks.stop().await;
            Ok(())
        })
    }
}
