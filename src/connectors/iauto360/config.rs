//! `[iauto360]` configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connectors::polling::QuietHours;
use crate::shared::{check_polling, Secret};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Iauto360Config {
    pub enabled: bool,
    pub base_url: String,
    pub open_id: String,
    /// Signs every request and every event push; no default.
    pub secure_code: Secret,
    /// `overspeed` events above this speed for this section's vehicles (over
    /// `events.overspeed_kmh`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
    pub devices: Vec<Iauto360Device>,
    /// Latest condition (1011).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// While the ignition is on or a command waits.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub poll_interval_active: Option<Duration>,
    /// Binding, tyres, battery history, health check, vehicle info, trips, fuel.
    #[serde(with = "humantime_serde")]
    pub detail_interval: Duration,
    /// Billing plan sent with every call; none = the platform picks.
    pub plan: Option<i64>,
    /// Where the platform pushes vehicle events (e.g. "0.0.0.0:8089"); none = no push.
    pub push_listen: Option<SocketAddr>,
    pub push_path: String,
    /// Largest push body accepted (413 beyond).
    pub push_max_body: usize,
    /// Push connections open at once; more are closed at once (and counted).
    pub push_max_connections: usize,
    /// A push's headers, and then its body, must arrive within this time each.
    #[serde(with = "humantime_serde")]
    pub push_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Daily local hours without scheduled reads for every box, e.g. "23:00-06:00" (a
    /// device's own `quiet_hours` wins); commands and refreshes still read.
    pub quiet_hours: Option<String>,
    /// The local time of `quiet_hours`: a tz database name, UTC or ±HH:MM.
    pub timezone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iauto360Device {
    pub esn: String,
    #[serde(default)]
    pub name: Option<String>,
    /// This box's quiet hours, instead of the section's.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// This vehicle's `overspeed` limit (over its section's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
}

impl Default for Iauto360Config {
    fn default() -> Self {
        Iauto360Config {
            enabled: false,
            base_url: "https://open.iauto360.cn".into(),
            open_id: String::new(),
            secure_code: Secret::default(),
            overspeed_kmh: None,
            devices: Vec::new(),
            poll_interval: Duration::from_secs(5 * 60),
            poll_interval_active: None,
            detail_interval: Duration::from_secs(3600),
            plan: None,
            push_listen: None,
            push_path: "/iauto360/events".into(),
            push_max_body: 256 * 1024,
            push_max_connections: 256,
            push_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            quiet_hours: None,
            timezone: "+08:00".into(),
        }
    }
}

pub fn valid_esn(esn: &str) -> bool {
    (4..=32).contains(&esn.len()) && esn.chars().all(|c| c.is_ascii_alphanumeric())
}

impl Iauto360Config {
    /// The interval while a vehicle is active (see `config::active_interval`).
    pub fn active_interval(&self) -> Duration {
        crate::shared::active_interval(self.poll_interval, self.poll_interval_active)
    }

    /// The quiet hours of `device` (its own, else the section's); `None` also when they do
    /// not parse (validation refused those).
    pub fn quiet_hours(&self, device: &Iauto360Device) -> Option<QuietHours> {
        device
            .quiet_hours
            .as_deref()
            .or(self.quiet_hours.as_deref())
            .and_then(QuietHours::parse)
    }

    /// Every problem with an enabled section, each as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if !self.enabled {
            return out;
        }
        let err = |k: &str, r: &str| (k.to_string(), r.to_string());
        out.extend(crate::derive::config::speed_limit_problems(
            std::iter::once(("overspeed_kmh".to_string(), self.overspeed_kmh)).chain(
                self.devices.iter().map(|d| {
                    (
                        format!("devices[esn={}].overspeed_kmh", d.esn),
                        d.overspeed_kmh,
                    )
                }),
            ),
        ));
        if let Err(e) = check_polling(
            &self.base_url,
            self.poll_interval,
            self.poll_interval_active,
            self.request_timeout,
        ) {
            out.push(e);
        }
        if self.open_id.is_empty()
            || !self
                .open_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            out.push(err("open_id", "must be set (letters, digits, '-', '_')"));
        }
        if self.secure_code.is_empty() {
            out.push(err("secure_code", "must be set (it signs every call)"));
        }
        if self.devices.is_empty() {
            out.push(err("devices", "list at least one device (esn)"));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.devices {
            if !valid_esn(&d.esn) {
                out.push((
                    "devices".into(),
                    format!("esn `{}` must be 4 to 32 letters or digits", d.esn),
                ));
            }
            if !seen.insert(d.esn.as_str()) {
                out.push(("devices".into(), format!("esn `{}` is listed twice", d.esn)));
            }
        }
        let quiet = "must be \"HH:MM-HH:MM\" (24 h, e.g. \"23:00-06:00\"), two different times";
        if self
            .quiet_hours
            .as_deref()
            .is_some_and(|q| QuietHours::parse(q).is_none())
        {
            out.push(err("quiet_hours", quiet));
        }
        for d in &self.devices {
            if d.quiet_hours
                .as_deref()
                .is_some_and(|q| QuietHours::parse(q).is_none())
            {
                out.push((
                    "devices".into(),
                    format!("esn `{}`: quiet_hours {quiet}", d.esn),
                ));
            }
        }
        if crate::shared::parse_timezone(&self.timezone).is_none() {
            out.push((
                "timezone".into(),
                format!(
                    "`{}`: use a tz database name (Asia/Shanghai), UTC or ±HH:MM",
                    self.timezone
                ),
            ));
        }
        if self.detail_interval < Duration::from_secs(1) {
            out.push(err("detail_interval", "must be at least 1s"));
        }
        if !self.push_path.starts_with('/') || self.push_path.contains(['?', '#', ' ']) {
            out.push(err("push_path", "must be a path starting with '/'"));
        }
        if !(1..=100_000).contains(&self.push_max_connections) {
            out.push(err("push_max_connections", "must be 1 to 100000"));
        }
        if self.push_read_timeout < Duration::from_millis(100) {
            out.push(err("push_read_timeout", "must be at least 100ms"));
        }
        if !(1024..=16 << 20).contains(&self.push_max_body) {
            out.push(err("push_max_body", "must be 1 KiB to 16 MiB"));
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

/// The `iauto360` upstream: the iauto360 (车智汇) open platform for OBD boxes, polled and pushed.
pub struct Iauto360;

impl crate::upstream::Upstream for Iauto360 {
    type Config = Iauto360Config;
    const TEXT_KEYS: &'static [&'static str] = &["open_id", "secure_code"];
    fn enabled(config: &Iauto360Config) -> bool {
        config.enabled
    }
    fn problems(config: &Iauto360Config) -> Vec<(String, String)> {
        config.problems()
    }
    fn connector(
        config: &Iauto360Config,
        state_dir: &std::path::Path,
    ) -> Box<dyn crate::connector::Connector> {
        Box::new(
            super::Iauto360Connector::new(config.clone()).with_state_dir(state_dir.to_path_buf()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An enabled, valid config with one device.
    fn valid() -> Iauto360Config {
        Iauto360Config {
            enabled: true,
            open_id: "OPEN123".into(),
            secure_code: Secret::new("s"),
            devices: vec![Iauto360Device {
                overspeed_kmh: None,
                esn: "865432100012345".into(),
                name: None,
                quiet_hours: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_short_poll_interval_alone_is_valid() {
        let c = Iauto360Config {
            poll_interval: Duration::from_secs(5),
            ..valid()
        };
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.active_interval(), Duration::from_secs(5));
    }

    #[test]
    fn validation_names_the_key() {
        let ok = valid();
        assert_eq!(ok.validate(), Ok(()));
        let key = |c: Iauto360Config| c.validate().unwrap_err().0;
        assert_eq!(
            key(Iauto360Config {
                secure_code: Secret::default(),
                ..ok.clone()
            }),
            "secure_code"
        );
        assert_eq!(
            key(Iauto360Config {
                open_id: "a/b".into(),
                ..ok.clone()
            }),
            "open_id"
        );
        assert_eq!(
            key(Iauto360Config {
                devices: vec![],
                ..ok.clone()
            }),
            "devices"
        );
        let twice = vec![ok.devices[0].clone(), ok.devices[0].clone()];
        assert_eq!(
            key(Iauto360Config {
                devices: twice,
                ..ok.clone()
            }),
            "devices"
        );
        assert_eq!(
            key(Iauto360Config {
                push_path: "events".into(),
                ..ok.clone()
            }),
            "push_path"
        );
        assert_eq!(
            key(Iauto360Config {
                base_url: "open.iauto360.cn".into(),
                ..ok.clone()
            }),
            "base_url"
        );
        for bad in ["23:00", "06:00-06:00", "25:00-06:00", ""] {
            assert_eq!(
                key(Iauto360Config {
                    quiet_hours: Some(bad.into()),
                    ..ok.clone()
                }),
                "quiet_hours",
                "{bad}"
            );
        }
        assert_eq!(
            key(Iauto360Config {
                timezone: "Mars/Olympus".into(),
                ..ok.clone()
            }),
            "timezone"
        );
        let mut night = ok.clone();
        night.devices[0].quiet_hours = Some("23:00".into());
        assert_eq!(key(night), "devices");
    }

    #[test]
    fn a_device_s_quiet_hours_win_over_the_section_s() {
        let mut c = Iauto360Config {
            quiet_hours: Some("23:00-06:00".into()),
            timezone: "Asia/Shanghai".into(),
            ..valid()
        };
        assert_eq!(c.validate(), Ok(()));
        let all = c.quiet_hours(&c.devices[0]);
        assert_eq!(all, QuietHours::parse("23:00-06:00"));
        c.devices[0].quiet_hours = Some("01:00-05:00".into());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.quiet_hours(&c.devices[0]),
            QuietHours::parse("01:00-05:00")
        );
        assert_eq!(valid().quiet_hours(&valid().devices[0]), None);
    }
}
