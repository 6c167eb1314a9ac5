//! `[kingxun]` configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::kingxun::{Profile, DEFAULT_MAX_TRIP_BODY};
use crate::shared::{check_listener, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KingxunConfig {
    pub enabled: bool,
    /// Where devices connect (the bridge plays the kingxun "svrInstance").
    pub listen: SocketAddr,
    pub max_links: usize,
    /// Links from one address at once: one peer cannot take every slot. 0 = a tenth of
    /// `max_links` (at least 4). Raise it for many devices behind one carrier NAT.
    pub max_links_per_address: usize,
    /// Every link starts with a PROXY protocol v2 header (HAProxy's `send-proxy-v2` in
    /// front): the per-address limit and the logs see the device, not the balancer. A
    /// link without the header is refused.
    pub proxy_protocol: bool,
    /// A link with no frame for this long is closed and its device goes offline.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A frame started but not finished within this time closes the link.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long a command waits for the device's answer.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Largest MsgBodyLen accepted, except for 1008 trips.
    pub max_body: usize,
    /// Largest 1008 trip body (every GPS point of a ride, 16 bytes each).
    pub max_trip_body: usize,
    /// Layout of 2001–2005 for devices that do not name their own (see `Profile`).
    pub profile: Profile,
    /// Trust a link from its registration alone (plain frames). Off: a link becomes the
    /// device's, and what it says is published, only once it sent one frame sealed with
    /// the device's key and the session IV. Only for firmware that never encrypts: with
    /// it on, anyone who knows a device id can speak for that device.
    pub accept_plain_frames: bool,
    /// Unlock (2001) parameters.
    pub allow_time_min: u16,
    pub lowest_soc: u8,
    pub farthest_dist_m: u32,
    /// Answer to 1005: range on a full battery, charge reminder and lowest usable SoC.
    pub range_full_km: f64,
    pub charge_notify_soc: u8,
    pub soc_min: u8,
    /// Upper bound of the max-speed number entity, km/h.
    pub max_speed_kmh: u16,
    /// Time zone of device local times.
    pub timezone: String,
    /// `overspeed` events above this speed for this section's vehicles (over
    /// `events.overspeed_kmh`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
    pub devices: Vec<KingxunDevice>,
    /// Drive an existing kingxun server as its "web server" (9001/9002/4001–4005):
    /// `[kingxun.kxsvr]`. `[kingxun.upstream]`, its name before, is still read: by this
    /// alias, and in every config layer by `config::RENAMED`.
    #[serde(alias = "upstream")]
    pub kxsvr: Option<ViaKxsvr>,
}

/// `[kingxun.kxsvr]`: the bridge as the web server of an existing kingxun server (kxSvr).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViaKxsvr {
    /// host:port of the kingxun server.
    pub address: String,
    /// Initial AES key and IV for 9001 (32 hex characters each; no default).
    pub key: Secret,
    pub iv: Secret,
    #[serde(default = "default_host")]
    pub host: String,
    /// Well inside the server's 500 s idle limit.
    #[serde(with = "humantime_serde", default = "default_heartbeat")]
    pub heartbeat: Duration,
    #[serde(default)]
    pub devices: Vec<KxsvrDevice>,
    /// Commands beyond unlock, lock and open-lock that this server carries out as the
    /// server document describes them (docs/protocols/kingxun.md,
    /// "4001–4005 commands through a server"): "guard" (4003: guard power and max
    /// speed) and "lights" (4005).
    /// A stock kxSvr does neither: it forwards 4003 to the device as a LOCK (2002) and
    /// has no 4005 handler (docs/protocols/kingxun.md, "kxSvr's real behaviour"), so they
    /// are off unless listed here.
    #[serde(default)]
    pub server_commands: Vec<ServerCommand>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerCommand {
    Guard,
    Lights,
}

fn default_host() -> String {
    "kingxun.site".into()
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(60)
}

/// A device reached through the kingxun server (`[[kingxun.kxsvr.devices]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KxsvrDevice {
    pub id: u32,
    #[serde(default = "default_devtype")]
    pub devtype: u8,
    #[serde(default)]
    pub name: Option<String>,
    /// This vehicle's `overspeed` limit (over its section's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
}

fn default_devtype() -> u8 {
    2
}

pub fn hex16(s: &Secret) -> Option<[u8; 16]> {
    hex::decode(s.expose().trim()).ok()?.try_into().ok()
}

impl Default for KingxunConfig {
    fn default() -> Self {
        KingxunConfig {
            enabled: false,
            // kxSvr's default build listens on 10086 (KxSvr.cc `main`); devices are
            // provisioned with an address and port, so match what they were given.
            listen: SocketAddr::from(([0, 0, 0, 0], 10086)),
            max_links: 10_000,
            max_links_per_address: 0,
            proxy_protocol: false,
            idle_timeout: Duration::from_secs(600),
            read_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(30),
            max_body: 64 * 1024,
            max_trip_body: DEFAULT_MAX_TRIP_BODY,
            profile: Profile::Classic,
            accept_plain_frames: false,
            allow_time_min: 240,
            lowest_soc: 5,
            farthest_dist_m: 100_000,
            range_full_km: 60.0,
            charge_notify_soc: 20,
            soc_min: 5,
            max_speed_kmh: 45,
            timezone: "Asia/Shanghai".into(),
            overspeed_kmh: None,
            devices: Vec::new(),
            kxsvr: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KingxunDevice {
    pub id: u32,
    /// The device's AES-128 key: 32 hex characters.
    pub key: Secret,
    #[serde(default)]
    pub name: Option<String>,
    /// This device's 2001–2005 layout, when it differs from `kingxun.profile`.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Overrides `kingxun.accept_plain_frames` for this device.
    #[serde(default)]
    pub accept_plain_frames: Option<bool>,
    /// This vehicle's `overspeed` limit (over its section's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
}

impl KingxunDevice {
    pub fn key_bytes(&self) -> Option<[u8; 16]> {
        let raw = hex::decode(self.key.expose().trim()).ok()?;
        raw.try_into().ok()
    }
}

/// A configured device as its links need it: the key as bytes, not the config's hex text
/// (10 000 devices: one sorted vector, no text per key).
pub struct Device {
    /// `None` for a key that is not 32 hex characters (the config check refuses it).
    pub key: Option<[u8; 16]>,
    pub name: Option<Box<str>>,
    pub profile: Option<Profile>,
    pub accept_plain_frames: Option<bool>,
}

impl From<KingxunDevice> for Device {
    fn from(d: KingxunDevice) -> Device {
        Device {
            key: d.key_bytes(),
            name: d.name.map(String::into_boxed_str),
            profile: d.profile,
            accept_plain_frames: d.accept_plain_frames,
        }
    }
}

impl KingxunConfig {
    /// `max_links_per_address`, with 0 resolved.
    pub fn links_per_address(&self) -> usize {
        match self.max_links_per_address {
            0 => (self.max_links / 10).max(4),
            n => n,
        }
    }
}

impl KingxunConfig {
    /// Every problem with an enabled section, each as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if !self.enabled {
            return out;
        }
        let devices = self.devices.iter().map(|d| (d.id, d.overspeed_kmh));
        let via = self.kxsvr.iter().flat_map(|k| &k.devices);
        out.extend(crate::derive::config::speed_limit_problems(
            std::iter::once(("overspeed_kmh".to_string(), self.overspeed_kmh))
                .chain(devices.map(|(id, v)| (format!("devices[id={id}].overspeed_kmh"), v)))
                .chain(via.map(|d| {
                    (
                        format!("kxsvr.devices[id={}].overspeed_kmh", d.id),
                        d.overspeed_kmh,
                    )
                })),
        ));
        if let Err(e) = check_listener(&self.timezone, self.max_links) {
            out.push(e);
        }
        if !(64..=16 * 1024 * 1024).contains(&self.max_body) {
            out.push(("max_body".into(), "must be 64 bytes to 16 MiB".into()));
        }
        if !(self.max_body..=64 * 1024 * 1024).contains(&self.max_trip_body) {
            out.push((
                "max_trip_body".into(),
                "must be at least max_body and at most 64 MiB".into(),
            ));
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("read_timeout", self.read_timeout),
            ("command_timeout", self.command_timeout),
        ] {
            if d < Duration::from_millis(100) {
                out.push((key.into(), "must be at least 100ms".into()));
            }
        }
        if !(self.range_full_km.is_finite() && self.range_full_km > 0.0) {
            out.push(("range_full_km".into(), "must be a positive number".into()));
        }
        if self.lowest_soc > 100 || self.charge_notify_soc > 100 || self.soc_min > 100 {
            out.push(("lowest_soc".into(), "percentages must be 0 to 100".into()));
        }
        if self.max_speed_kmh == 0 {
            out.push(("max_speed_kmh".into(), "must be at least 1".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            if d.key_bytes().is_none() {
                out.push((
                    format!("devices[{i}].key"),
                    "must be 32 hex characters (16 bytes)".into(),
                ));
            }
            if !seen.insert(d.id) {
                out.push((
                    format!("devices[{i}].id"),
                    format!("device {} is listed twice", d.id),
                ));
            }
        }
        if let Some(kx) = &self.kxsvr {
            if kx
                .address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                out.push((
                    "kxsvr.address".into(),
                    format!("`{}` is not host:port", kx.address),
                ));
            }
            if hex16(&kx.key).is_none() {
                out.push((
                    "kxsvr.key".into(),
                    "must be 32 hex characters (16 bytes)".into(),
                ));
            }
            if hex16(&kx.iv).is_none() {
                out.push((
                    "kxsvr.iv".into(),
                    "must be 32 hex characters (16 bytes)".into(),
                ));
            }
            if kx.host.is_empty() || kx.host.len() > 31 {
                out.push(("kxsvr.host".into(), "must be 1 to 31 characters".into()));
            }
            if !(Duration::from_secs(1) / 10..=Duration::from_secs(400)).contains(&kx.heartbeat) {
                out.push((
                    "kxsvr.heartbeat".into(),
                    "must be at most 400s (the server drops links idle for 500 s)".into(),
                ));
            }
            for (i, d) in kx.devices.iter().enumerate() {
                if !seen.insert(d.id) {
                    out.push((
                        format!("kxsvr.devices[{i}].id"),
                        format!("device {} is listed twice", d.id),
                    ));
                }
            }
        }
        if self.devices.is_empty() && self.kxsvr.as_ref().is_none_or(|u| u.devices.is_empty()) {
            out.push((
                "devices".into(),
                "list at least one [[kingxun.devices]] (id and key) or [[kingxun.kxsvr.devices]]"
                    .into(),
            ));
        }
        out
    }

    /// The first problem, if any (see `problems`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }
}

/// The `kingxun` upstream: kingxun e-bike trackers linking to our TCP listener (and,
/// optionally, our link to a kingxun server, `kxsvr`).
pub struct Kingxun;

impl crate::upstream::Upstream for Kingxun {
    type Config = KingxunConfig;
    /// `kxsvr.*`, and the same under `upstream`, the section's name before (still read).
    const TEXT_KEYS: &'static [&'static str] = &[
        "kxsvr.key",
        "kxsvr.iv",
        "kxsvr.host",
        "upstream.key",
        "upstream.iv",
        "upstream.host",
    ];
    fn enabled(config: &KingxunConfig) -> bool {
        config.enabled
    }
    fn problems(config: &KingxunConfig) -> Vec<(String, String)> {
        config.problems()
    }
    fn connector(
        config: &KingxunConfig,
        state_dir: &std::path::Path,
    ) -> Box<dyn crate::connector::Connector> {
        Box::new(
            super::KingxunConnector::new(config.clone()).with_state_dir(state_dir.to_path_buf()),
        )
    }
}
