//! Layered configuration: built-in defaults < TOML file < `V2M_` environment.
//!
//! Every section denies unknown keys so that a typo is an error, not a silent default.
//! Secrets are held in [`Secret`]: by its type, whatever the key is called, its value never
//! shows in `Debug`, in `check-config` output ([`Config::to_masked_toml`]) or in an error.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Json, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::shared::{
    active_interval, check_listener, check_polling, parse_timezone, require_timezone, Secret,
    DEFAULT_ACTIVE_INTERVAL,
};

use crate::registry::Upstreams;

mod describe;
use describe::*;

/// Text settings whose values are often all digits (PINs, passwords, ids, keys in hex).
/// From the environment they are taken exactly as written, as text: figment would read
/// `V2M_BRIDGE__COMMAND_PIN=0123` as the number 123. Each upstream adds its own.
const TEXT_KEYS: &[&str] = &[
    "bridge.command_pin",
    "bridge.http_token",
    "mqtt.username",
    "mqtt.password",
    "mqtt.client_id",
    "mqtt.base_topic",
    "mqtt.discovery_prefix",
    "cluster.instance_id",
];

/// Every text setting, the bridge's and each upstream's.
pub fn text_keys() -> Vec<String> {
    let mut keys: Vec<String> = TEXT_KEYS.iter().map(|k| k.to_string()).collect();
    keys.extend(Upstreams::text_keys());
    keys
}

/// One text value for one key, named after where it came from (an environment variable,
/// the Supervisor), so errors about it point there.
struct TextValue {
    key: String,
    value: String,
    from: String,
}

impl figment::Provider for TextValue {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.from.clone())
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::default(&self.key, &self.value).data()
    }
}

/// The environment layer: `V2M_MQTT__URL` sets `mqtt.url`.
const ENV_PREFIX: &str = "V2M_";
const ENV_SEPARATOR: &str = "__";

fn env_layer() -> Env {
    Env::prefixed(ENV_PREFIX).split(ENV_SEPARATOR)
}

/// The variable that sets `key` (dotted), as it is usually written.
fn env_var_for(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    )
}

/// `TEXT_KEYS` set in the environment, taken exactly as written.
fn text_from_env() -> Vec<TextValue> {
    text_keys()
        .into_iter()
        .filter_map(|key| {
            let var = env_var_for(&key);
            std::env::var(&var).ok().map(|value| TextValue {
                key: key.to_string(),
                value,
                from: format!("environment variable `{var}`"),
            })
        })
        .collect()
}

/// Tables that were renamed, as (old, new) dotted keys with the same parent: a layer
/// (the file, the environment) that still says the old name is read as if it said the
/// new one. A layer that says both keeps both, and the section refuses the pair.
const RENAMED: &[(&str, &str)] = &[("kingxun.upstream", "kingxun.kxsvr")];

/// `key` (dotted) with a renamed table in it named as it is now
/// (`kingxun.upstream.key` → `kingxun.kxsvr.key`).
fn current_key(key: &str) -> String {
    for (old, new) in RENAMED {
        if let Some(rest) = key.strip_prefix(old) {
            if rest.is_empty() || rest.starts_with('.') {
                return format!("{new}{rest}");
            }
        }
    }
    key.to_string()
}

/// A layer read with the [`RENAMED`] tables under their new names.
struct Renamed<P>(P);

impl<P: figment::Provider> figment::Provider for Renamed<P> {
    fn metadata(&self) -> figment::Metadata {
        self.0.metadata()
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            for (old, new) in RENAMED {
                rename_table(dict, old, new);
            }
        }
        Ok(data)
    }
    fn profile(&self) -> Option<figment::Profile> {
        self.0.profile()
    }
}

fn rename_table(dict: &mut figment::value::Dict, old: &str, new: &str) {
    let (parent, old_name) = old.rsplit_once('.').unwrap_or(("", old));
    let new_name = new.rsplit_once('.').map_or(new, |(_, name)| name);
    let mut table = dict;
    for part in parent.split('.').filter(|p| !p.is_empty()) {
        match table.get_mut(part) {
            Some(figment::value::Value::Dict(_, inner)) => table = inner,
            _ => return,
        }
    }
    if !table.contains_key(new_name) {
        if let Some(value) = table.remove(old_name) {
            table.insert(new_name.to_string(), value);
        }
    }
}

/// The key names of the [`Secret`] settings, for checks outside the bridge (the add-on's
/// schema must make each a password field). Nothing masks by this list: masking follows
/// the type. A unit test keeps it equal to the `Secret` fields of the config.
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "command_pin",
    "key",
    "iv",
    "app_key",
    "secure_code",
    "access_token",
    "refresh_token",
    "auth_code",
    "http_token",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoolFormat {
    OnOff,
    TrueFalse,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// "embedded", or mqtt://host:port, or mqtts://host:port; or several brokers, comma
    /// separated, tried in order (see [`MqttConfig::broker_urls`]).
    pub url: String,
    pub embedded_listen: SocketAddr,
    pub username: String,
    pub password: Secret,
    pub client_id: String,
    pub base_topic: String,
    pub discovery_prefix: String,
    pub discovery: bool,
    pub per_field_topics: bool,
    /// How booleans read on the per-field topics: "on_off" (ON / OFF, as Home Assistant
    /// likes them) or "true_false" (true / false, as evcc and most JSON tools expect).
    pub per_field_booleans: BoolFormat,
    pub ca_file: Option<PathBuf>,
    /// Capacity of the outgoing publish queue; past it, publishes are dropped and counted.
    pub queue_capacity: usize,
    /// MQTT protocol version: "auto" (5, falling back to 3.1.1 for a broker that refuses
    /// it), "5" or "3.1.1". The embedded broker speaks 3.1.1.
    pub protocol: MqttProtocol,
}

/// Which MQTT version the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MqttProtocol {
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

impl MqttProtocol {
    fn parse(s: &str) -> Option<MqttProtocol> {
        match s.trim() {
            "auto" => Some(MqttProtocol::Auto),
            "5" | "5.0" | "v5" => Some(MqttProtocol::V5),
            "3.1.1" | "311" | "v3.1.1" | "4" => Some(MqttProtocol::V311),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for MqttProtocol {
    /// Text or a bare number (`protocol = 5` in TOML, `V2M_MQTT__PROTOCOL=5`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MqttProtocol, D::Error> {
        struct Version;
        impl serde::de::Visitor<'_> for Version {
            type Value = MqttProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\", \"5\" or \"3.1.1\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MqttProtocol, E> {
                MqttProtocol::parse(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MqttProtocol, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MqttProtocol, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MqttProtocol, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Version)
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "embedded".into(),
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            username: String::new(),
            password: Secret::default(),
            // Empty: one made per installation (`state_dir::client_id`), so two bridges on
            // one broker never knock each other off with the same id.
            client_id: String::new(),
            base_topic: "vehicle2mqtt".into(),
            discovery_prefix: "homeassistant".into(),
            discovery: true,
            per_field_topics: false,
            per_field_booleans: BoolFormat::OnOff,
            ca_file: None,
            queue_capacity: 1_000,
            protocol: MqttProtocol::Auto,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    pub state_dir: PathBuf,
    pub command_pin: Secret,
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Commands waiting behind the one in flight, per vehicle.
    pub command_queue: usize,
    /// `/metrics` (Prometheus) and `/healthz` on this address, e.g. "127.0.0.1:9090";
    /// empty = off. An address that cannot be bound stops the bridge at start.
    pub http_listen: String,
    /// With it, the status page on `http_listen` offers actions (lock, unlock, refresh,
    /// purge) after a login with this token (at least 16 characters); without it (and
    /// without `ingress`) the page is read-only.
    pub http_token: Secret,
    /// Home Assistant ingress: requests from `ingress_from` (the Supervisor's proxy,
    /// which has authenticated the user) may act. Set by `vehicle2mqtt addon`; off
    /// elsewhere, where that address means nothing.
    pub ingress: bool,
    /// The Supervisor's ingress proxy (the add-on documentation's 172.30.32.2).
    pub ingress_from: String,
    /// The status page's map tiles: a URL template with {z}, {x} and {y}; empty turns
    /// the map off.
    pub map_tiles: String,
    /// A connector that cannot go on (e.g. its port is taken) stops the bridge (exit 1),
    /// so a supervisor sees it; `false` keeps the others running, unhealthy.
    pub exit_on_connector_failure: bool,
    /// Keep each vehicle's entities and last state in `state_dir/vehicles/` and show them
    /// again at start, before the vehicle reports.
    pub remember_vehicles: bool,
    /// Remove a field's entity when the vehicle kept reporting this long without it;
    /// "0s" (the default) never does.
    #[serde(with = "humantime_serde")]
    pub forget_absent_entities_after: Duration,
    /// A vehicle's Refresh runs at most this often (and never while the last one runs).
    #[serde(with = "humantime_serde")]
    pub refresh_min_gap: Duration,
    /// `stale_after` for single vehicles, by vehicle id (`kx1001 = "2h"`): a tracker that
    /// reports hourly beside scooters that report every minute.
    #[serde(default)]
    pub vehicle_stale_after: std::collections::BTreeMap<String, StaleAfter>,
}

/// A tile URL template the page may hand to Leaflet: empty, or http(s) with {z}, {x}
/// and {y} and nothing that could leave an attribute or a URL.
fn check_map_tiles(t: &str) -> Result<(), &'static str> {
    if t.is_empty() {
        return Ok(());
    }
    if !(t.starts_with("https://") || t.starts_with("http://")) {
        return Err("must start with https:// (or http://), or be empty to turn the map off");
    }
    if !["{z}", "{x}", "{y}"].iter().all(|p| t.contains(p)) {
        return Err("must contain {z}, {x} and {y}");
    }
    if t.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'<>`\\".contains(c))
    {
        return Err("must not contain spaces, quotes, < or >");
    }
    Ok(())
}

/// OpenStreetMap's standard tiles (their usage policy asks for light use and the
/// attribution the page shows).
pub const DEFAULT_MAP_TILES: &str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
/// The shortest `bridge.http_token`.
pub const MIN_HTTP_TOKEN: usize = 16;

/// A duration in a map (`humantime`, e.g. "2h").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StaleAfter(#[serde(with = "humantime_serde")] pub Duration);

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            state_dir: PathBuf::from("./data"),
            command_pin: Secret::default(),
            command_timeout: Duration::from_secs(60),
            stale_after: Duration::from_secs(30 * 60),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            command_queue: 8,
            http_listen: String::new(),
            http_token: Secret::default(),
            ingress: false,
            ingress_from: "172.30.32.2".into(),
            map_tiles: DEFAULT_MAP_TILES.into(),
            exit_on_connector_failure: true,
            remember_vehicles: true,
            forget_absent_entities_after: Duration::ZERO,
            refresh_min_gap: Duration::from_secs(30),
            vehicle_stale_after: Default::default(),
        }
    }
}

/// The whole configuration: `[mqtt]`, `[bridge]` and a section per upstream of the
/// registry (`config.upstreams.<name>`). Every section is optional; an unknown one is an
/// error.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub bridge: BridgeConfig,
    /// `[trips]`, `[events]`, `[[zones]]`: what the bridge works out of every vehicle's
    /// reports (`crate::derive`).
    pub derive: crate::derive::DeriveConfig,
    /// `[cluster]`: several bridges on one base topic (docs/cluster.md).
    pub cluster: ClusterSection,
    pub upstreams: Upstreams,
}

/// `[cluster]`: off while `instance_id` is empty; then the bridge behaves as one alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This instance's name among the bridges on the base topic: letters, digits, `-`,
    /// `_` (at most 32). Set, it turns cluster mode on.
    pub instance_id: String,
    /// After the live instances change, how long before one takes over a cloud account.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// An instance that has not heard its own heartbeat back through the broker for this
    /// long stops polling cloud accounts.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            instance_id: String::new(),
            settle: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(20),
        }
    }
}

impl ClusterSection {
    /// The cluster's settings when cluster mode is on.
    pub fn settings(&self) -> Option<crate::cluster::ClusterConfig> {
        (!self.instance_id.is_empty()).then(|| crate::cluster::ClusterConfig {
            instance_id: self.instance_id.clone(),
            settle: self.settle,
            lease_ttl: self.lease_ttl,
        })
    }

    fn problems(&self, mqtt_url: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.instance_id.is_empty() {
            return problems;
        }
        if !crate::cluster::valid_instance_id(&self.instance_id) {
            problems.push((
                "cluster.instance_id".into(),
                "must be 1 to 32 letters, digits, `-` or `_`".into(),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.settle) {
            problems.push(("cluster.settle".into(), "must be 1 s to 5 min".into()));
        }
        let most = crate::cluster::WILL_AFTER + self.settle;
        let least = crate::cluster::BEAT_EVERY * 3;
        if self.lease_ttl < least || self.lease_ttl >= most {
            problems.push((
                "cluster.lease_ttl".into(),
                format!(
                    "must be at least {} s (three heartbeats) and less than {} s (the {} s the others take to see an instance dead, plus settle): else two instances may poll one account",
                    least.as_secs(),
                    most.as_secs(),
                    crate::cluster::WILL_AFTER.as_secs()
                ),
            ));
        }
        if mqtt_url == "embedded" {
            problems.push((
                "mqtt.url".into(),
                "cluster mode needs a broker every instance reaches, not the embedded one".into(),
            ));
        }
        problems
    }
}

impl Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("mqtt", &self.mqtt)?;
        map.serialize_entry("bridge", &self.bridge)?;
        map.serialize_entry("trips", &self.derive.trips)?;
        map.serialize_entry("events", &self.derive.events)?;
        if !self.cluster.instance_id.is_empty() {
            map.serialize_entry("cluster", &self.cluster)?;
        }
        if !self.derive.zones.is_empty() {
            map.serialize_entry("zones", &self.derive.zones)?;
        }
        self.upstreams.serialize_sections(&mut map)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Config, D::Error> {
        struct Sections;
        impl<'de> serde::de::Visitor<'de> for Sections {
            type Value = Config;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the configuration's sections")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Config, A::Error> {
                let mut config = Config::default();
                // An unknown section is refused while its key is read, so that the error
                // carries the key and where it came from, as an unknown key in a section does.
                while let Some(name) = map.next_key_seed(SectionName)? {
                    match name.as_str() {
                        "mqtt" => config.mqtt = map.next_value()?,
                        "bridge" => config.bridge = map.next_value()?,
                        "trips" => config.derive.trips = map.next_value()?,
                        "events" => config.derive.events = map.next_value()?,
                        "zones" => config.derive.zones = map.next_value()?,
                        "cluster" => config.cluster = map.next_value()?,
                        other => {
                            if !config.upstreams.deserialize_section(other, &mut map)? {
                                return Err(serde::de::Error::unknown_field(
                                    other,
                                    section_names(),
                                ));
                            }
                        }
                    }
                }
                Ok(config)
            }
        }
        d.deserialize_map(Sections)
    }
}

/// A section's name, refused when no section has it.
struct SectionName;

impl<'de> serde::de::DeserializeSeed<'de> for SectionName {
    type Value = String;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let name = String::deserialize(d)?;
        if section_names().contains(&name.as_str()) {
            Ok(name)
        } else {
            Err(serde::de::Error::unknown_field(&name, section_names()))
        }
    }
}

/// `mqtt`, `bridge` and every upstream's section, for "expected one of" in errors.
fn section_names() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = vec!["mqtt", "bridge", "trips", "events", "zones", "cluster"];
        names.extend(Upstreams::names());
        names
    })
}

/// Where the broker lives, parsed from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    Embedded,
    Tcp { host: String, port: u16, tls: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", describe_figment(.0))]
    Figment(#[from] Box<figment::Error>),
    /// Every problem found, not just the first.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// One invalid setting: which key, where its value came from, and why it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub source_name: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid value for key `{}` (from {}): {}",
            self.key, self.source_name, self.reason
        )
    }
}

/// Where a key's value came from, in words a user recognises: the file's path, the
/// environment variable, or the built-in default; never a place in our source code.
/// A list entry (`kingxun.devices[0].key`) is found by its list.
fn source_of(figment: &Figment, key: &str) -> String {
    let mut path = key.to_string();
    loop {
        let lookup = path.split('[').next().unwrap_or(&path).to_string();
        if let Some(m) = figment.find_metadata(&lookup) {
            return describe_metadata(m, &lookup);
        }
        match lookup.rsplit_once('.') {
            Some((parent, _)) => path = parent.to_string(),
            None => return "the built-in defaults".into(),
        }
    }
}

/// `key` (dotted) is the setting whose value `m` tells the source of: a value from the
/// environment is named by its variable.
fn describe_metadata(m: &figment::Metadata, key: &str) -> String {
    if m.name == figment::Provider::metadata(&env_layer()).name {
        return describe_env_var(key);
    }
    match &m.source {
        Some(figment::Source::File(path)) => format!("{} {}", m.name, path.display()),
        Some(figment::Source::Custom(s)) => s.clone(),
        // A value set in code: the defaults, or what the bridge itself was told (the
        // Supervisor's broker for the add-on).
        Some(figment::Source::Code(_)) if m.name.contains("defaults") => {
            "the built-in defaults".into()
        }
        Some(_) => m.name.to_string(),
        None => m.name.to_string(),
    }
}

impl Config {
    /// Builds the effective configuration. `file` is read when given (it must exist) or,
    /// when `None`, `config.toml` in the working directory if present. A `.json` file is
    /// read as JSON (the Home Assistant add-on passes its `/data/options.json`).
    pub fn load(file: Option<&Path>) -> Result<(Config, Figment), ConfigError> {
        Config::load_with(file, &[])
    }

    /// Like `load`, with `overrides` (dotted key, text) on top of everything: values the
    /// program itself learned (the Supervisor's broker), kept as text exactly as given.
    pub fn load_with(
        file: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<(Config, Figment), ConfigError> {
        Config::load_over(Config::default(), file, overrides)
    }

    /// Like `load_with`, starting from `base` instead of the defaults (the demo's setup,
    /// which a user's file and `V2M_` variables may still change).
    pub fn load_over(
        base: Config,
        file: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<(Config, Figment), ConfigError> {
        // Every layer but the defaults may still name a table by its old name (RENAMED).
        let mut figment = Figment::from(Serialized::defaults(base));
        match file {
            Some(path) if path.extension().is_some_and(|e| e == "json") => {
                figment = figment.merge(Renamed(Json::file_exact(path)))
            }
            Some(path) => figment = figment.merge(Renamed(Toml::file_exact(path))),
            None if Path::new("config.toml").exists() => {
                figment = figment.merge(Renamed(Toml::file_exact("config.toml")))
            }
            None => {}
        }
        figment = figment.merge(Renamed(env_layer()));
        for text in text_from_env() {
            figment = figment.merge(Renamed(text));
        }
        for (key, value) in overrides {
            figment = figment.merge(Renamed(TextValue {
                key: key.clone(),
                value: value.clone(),
                from: "the Supervisor's MQTT service".into(),
            }));
        }
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate(&figment)?;
        Ok((config, figment))
    }

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let mut problems: Vec<(String, String)> = self.derive.problems();
        let mut check = |key: &str, ok: bool, reason: &str| {
            if !ok {
                problems.push((key.to_string(), reason.to_string()));
            }
        };
        let topic_rule = "must be non-empty and free of '+', '#', '.', spaces and a leading or \
                          trailing '/' (a '.' breaks brokers that map topics to subjects, as NATS does)";
        check(
            "mqtt.base_topic",
            valid_topic_segment(&self.mqtt.base_topic, true),
            topic_rule,
        );
        check(
            "mqtt.discovery_prefix",
            valid_topic_segment(&self.mqtt.discovery_prefix, true),
            topic_rule,
        );
        check(
            "mqtt.client_id",
            self.mqtt.client_id.len() <= 64,
            "must be at most 64 characters (empty: one is made and kept in state_dir)",
        );
        check(
            "mqtt.queue_capacity",
            self.mqtt.queue_capacity > 0,
            "must be at least 1",
        );
        check(
            "bridge.command_timeout",
            !self.bridge.command_timeout.is_zero(),
            "must be greater than 0",
        );
        check(
            "bridge.stale_after",
            !self.bridge.stale_after.is_zero(),
            "must be greater than 0",
        );
        check(
            "bridge.command_queue",
            (1..=1000).contains(&self.bridge.command_queue),
            "must be 1 to 1000",
        );
        check(
            "bridge.refresh_min_gap",
            (Duration::from_secs(1)..=Duration::from_secs(24 * 3600))
                .contains(&self.bridge.refresh_min_gap),
            "must be 1 s to 24 h",
        );
        for (id, after) in &self.bridge.vehicle_stale_after {
            let key = format!("bridge.vehicle_stale_after.{id}");
            if crate::model::VehicleId::new(id).is_none() {
                problems.push((key.clone(), "is not a vehicle id ([A-Za-z0-9_-])".into()));
            }
            if after.0.is_zero() {
                problems.push((key, "must be greater than 0".into()));
            }
        }
        if let Err(reason) = self.mqtt.broker_urls() {
            problems.push(("mqtt.url".into(), reason));
        }
        if self.mqtt.url == "embedded"
            && !self.mqtt.embedded_listen.ip().is_loopback()
            && (self.mqtt.username.is_empty() || self.mqtt.password.is_empty())
        {
            problems.push((
                "mqtt.embedded_listen".into(),
                format!(
                    "{} reaches beyond this machine: set mqtt.username and mqtt.password for the embedded broker first",
                    self.mqtt.embedded_listen
                ),
            ));
        }
        let http = self.bridge.http_listen.trim();
        if !http.is_empty() && http.parse::<std::net::SocketAddr>().is_err() {
            problems.push((
                "bridge.http_listen".into(),
                format!("`{http}` is not host:port (e.g. 127.0.0.1:9090)"),
            ));
        }
        let token = self.bridge.http_token.expose();
        if !token.is_empty() && (token.chars().count() < MIN_HTTP_TOKEN || token.len() > 256) {
            problems.push((
                "bridge.http_token".into(),
                format!("must be {MIN_HTTP_TOKEN} to 256 characters (e.g. `openssl rand -hex 16`)"),
            ));
        }
        if self.bridge.ingress
            && self
                .bridge
                .ingress_from
                .parse::<std::net::IpAddr>()
                .is_err()
        {
            problems.push((
                "bridge.ingress_from".into(),
                format!("`{}` is not an IP address", self.bridge.ingress_from),
            ));
        }
        if let Err(reason) = check_map_tiles(&self.bridge.map_tiles) {
            problems.push(("bridge.map_tiles".into(), reason.into()));
        }
        if let Err(reason) = tracing_subscriber::EnvFilter::try_new(&self.bridge.log_level) {
            problems.push(("bridge.log_level".into(), reason.to_string()));
        }
        problems.extend(self.cluster.problems(&self.mqtt.url));
        problems.extend(self.upstreams.problems());
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid(
            problems
                .into_iter()
                .map(|(key, reason)| Problem {
                    source_name: source_of(figment, &key),
                    key,
                    reason,
                })
                .collect(),
        ))
    }

    /// The effective configuration as TOML, every [`Secret`] masked.
    pub fn to_masked_toml(&self) -> String {
        masked_toml(self)
    }
}

impl MqttConfig {
    /// The brokers `url` names, in the order they are tried: "embedded", one URL, or
    /// several comma separated (spaces around the commas allowed). A bad element is named
    /// with its position; "embedded" cannot be part of a list.
    pub fn broker_urls(&self) -> Result<Vec<BrokerUrl>, String> {
        if !self.url.contains(',') {
            return parse_broker_url(&self.url).map(|url| vec![url]);
        }
        let mut urls = Vec::new();
        for (i, element) in self.url.split(',').map(str::trim).enumerate() {
            let position = i + 1;
            match element {
                "" => return Err(format!("broker {position} of the list is empty")),
                "embedded" => {
                    return Err(format!(
                        "broker {position} of the list is \"embedded\", which cannot be part of a list: \
                         use \"embedded\" alone, or only mqtt:// and mqtts:// URLs"
                    ))
                }
                _ => urls.push(
                    parse_broker_url(element)
                        .map_err(|reason| format!("broker {position} of the list: {reason}"))?,
                ),
            }
        }
        Ok(urls)
    }
}

/// One broker: "embedded", mqtt://host[:port] or mqtts://host[:port] (IPv6 in brackets).
fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    if url == "embedded" {
        return Ok(BrokerUrl::Embedded);
    }
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(format!(
            "`{url}` is neither \"embedded\" nor mqtt://host:port nor mqtts://host:port"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p.parse::<u16>().map_err(|_| format!("bad port `{p}`"))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
            )
        }
        _ => (rest.to_string(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok(BrokerUrl::Tcp { host, port, tls })
}

#[cfg(test)]
mod tests;
