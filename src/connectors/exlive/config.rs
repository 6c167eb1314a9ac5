//! `[exlive]` configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shared::{check_listener, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExliveConfig {
    pub enabled: bool,
    /// Run the server that trackers and platforms log in to.
    pub server: bool,
    pub listen: SocketAddr,
    pub max_links: usize,
    /// Links from one address at once: one peer cannot take every slot. 0 = a tenth of
    /// `max_links` (at least 4). Raise it for many trackers behind one NAT.
    pub max_links_per_address: usize,
    /// Every link starts with a PROXY protocol v2 header (HAProxy's `send-proxy-v2` in
    /// front): the per-address limit and the logs see the device, not the balancer. A
    /// link without the header is refused.
    pub proxy_protocol: bool,
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Time zone of `gpstime`: "Asia/Shanghai", "UTC" or a fixed offset like "+08:00".
    pub timezone: String,
    /// Largest JSON object accepted on a link; a bigger one closes the link.
    pub max_message_size: usize,
    /// `overspeed` events above this speed for this section's vehicles (over
    /// `events.overspeed_kmh`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
    /// `overspeed_kmh` of single trackers, by their EXLIVE id (over the section's).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vehicle_overspeed_kmh: std::collections::BTreeMap<String, f64>,
    pub accounts: Vec<ExliveAccount>,
    pub commands: Vec<ExliveCommand>,
    /// Log in to an EXLIVE platform as a user and take its position stream.
    pub client: Option<ExliveClientConfig>,
}

impl Default for ExliveConfig {
    fn default() -> Self {
        ExliveConfig {
            enabled: false,
            server: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 1502)),
            max_links: 10_000,
            max_links_per_address: 0,
            proxy_protocol: false,
            heartbeat_timeout: Duration::from_secs(90),
            timezone: "Asia/Shanghai".into(),
            max_message_size: 64 * 1024,
            overspeed_kmh: None,
            vehicle_overspeed_kmh: Default::default(),
            accounts: Vec::new(),
            commands: Vec::new(),
            client: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExliveAccount {
    pub name: String,
    pub password: Secret,
    /// The vehicle ids this account may report (1007, 1010, 1013); empty = any. Others
    /// are refused and counted (`not_allowed`).
    #[serde(default)]
    pub vehicles: Vec<String>,
}

/// A pass-through command offered as an HA button on every EXLIVE vehicle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExliveCommand {
    /// Button key: lowercase letters, digits and '_'.
    pub name: String,
    /// The raw terminal command text sent in 1012 `data`.
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExliveClientConfig {
    /// host:port of the EXLIVE platform.
    pub address: String,
    pub name: String,
    pub password: Secret,
    #[serde(with = "humantime_serde", default = "default_heartbeat")]
    pub heartbeat: Duration,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}

impl ExliveConfig {
    /// `max_links_per_address`, with 0 resolved.
    pub fn links_per_address(&self) -> usize {
        match self.max_links_per_address {
            0 => (self.max_links / 10).max(4),
            n => n,
        }
    }

    /// Returns the offending key (relative to `exlive.`) and why.
    /// Every problem with an enabled section, each as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if !self.enabled {
            return out;
        }
        if let Err(e) = check_listener(&self.timezone, self.max_links) {
            out.push(e);
        }
        out.extend(crate::derive::config::speed_limit_problems(
            std::iter::once(("overspeed_kmh".to_string(), self.overspeed_kmh)).chain(
                self.vehicle_overspeed_kmh
                    .iter()
                    .map(|(id, v)| (format!("vehicle_overspeed_kmh.{id}"), Some(*v))),
            ),
        ));
        if !(256..=16 * 1024 * 1024).contains(&self.max_message_size) {
            out.push((
                "max_message_size".into(),
                "must be 256 bytes to 16 MiB".into(),
            ));
        }
        if self.heartbeat_timeout < Duration::from_secs(1) {
            out.push(("heartbeat_timeout".into(), "must be at least 1s".into()));
        }
        if self.server && self.accounts.is_empty() {
            out.push((
                "accounts".into(),
                "the server needs at least one [[exlive.accounts]] to log in with".into(),
            ));
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if a.name.is_empty() || a.password.is_empty() {
                out.push((
                    format!("accounts[{i}]"),
                    "name and password must be set".into(),
                ));
            }
        }
        for (i, c) in self.commands.iter().enumerate() {
            let ok = !c.name.is_empty()
                && c.name.len() <= 32
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
            if !ok {
                out.push((
                    format!("commands[{i}].name"),
                    "use 1-32 of a-z, 0-9 and _".into(),
                ));
            }
            if c.data.is_empty() {
                out.push((format!("commands[{i}].data"), "must not be empty".into()));
            }
        }
        if let Some(client) = &self.client {
            if client
                .address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                out.push((
                    "client.address".into(),
                    format!("`{}` is not host:port", client.address),
                ));
            }
            if client.heartbeat < Duration::from_secs(1) {
                out.push(("client.heartbeat".into(), "must be at least 1s".into()));
            }
        }
        if !self.server && self.client.is_none() {
            out.push((
                "server".into(),
                "with server = false, configure [exlive.client]".into(),
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

/// The `exlive` upstream: EXLIVE GPS platforms: links to our TCP listener and our own link to one.
pub struct Exlive;

impl crate::upstream::Upstream for Exlive {
    type Config = ExliveConfig;
    const TEXT_KEYS: &'static [&'static str] = &["client.name", "client.password"];
    fn enabled(config: &ExliveConfig) -> bool {
        config.enabled
    }
    fn problems(config: &ExliveConfig) -> Vec<(String, String)> {
        config.problems()
    }
    fn connector(
        config: &ExliveConfig,
        _state_dir: &std::path::Path,
    ) -> Box<dyn crate::connector::Connector> {
        Box::new(super::ExliveConnector::new(config.clone()))
    }
}
