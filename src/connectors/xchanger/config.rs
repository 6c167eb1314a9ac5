//! `[xchanger]` configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shared::{check_polling, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// `api.xchanger.cn`, plain requests (retired by the cloud in 2023, kept for old accounts).
    V1,
    /// `device-api.xchanger.cn`, every request signed with `app_key`.
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataUnit {
    Kib,
    Bytes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XchangerConfig {
    pub enabled: bool,
    pub api: ApiVersion,
    /// Status and commands. Empty = the cloud's address for `api`.
    pub base_url: String,
    /// Login, token refresh, the vehicle list and the data plan. Empty =
    /// `https://api.xchanger.cn` for both APIs: the only public clients that log in
    /// (fineemb/Lynk-Co `__init__.py`: `_login_lynkco`, `_get_vehicles`) do it there, and
    /// none shows a v2 login, so v2 keeps v1's authentication and signs its data calls.
    pub auth_base_url: String,
    /// Log in with the app account...
    pub username: String,
    pub password: Secret,
    /// ...or with an authorization code...
    pub auth_code: Secret,
    pub redirect_uri: String,
    /// ...or with a token pair taken from the app.
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub user_id: String,
    /// v2 signing key: no default, never committed.
    pub app_key: Secret,
    /// Empty = every vehicle of the account.
    pub vins: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// While the engine runs or a command waits for its confirmation.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub poll_interval_active: Option<Duration>,
    /// How long the car stays unlocked when no door is opened (RDU `time.window`).
    pub unlock_window_min: u32,
    /// SIM card of the car: data-plan sensors on the first vehicle.
    pub iccid: String,
    #[serde(with = "humantime_serde")]
    pub data_plan_interval: Duration,
    /// Leave out positions the car marks as not trustworthy (`posCanBeTrusted: false`)
    /// instead of showing them with a wide accuracy circle.
    pub hide_untrusted_position: bool,
    /// Unit of `flowinfo`'s `sum`/`left`/`used`: "kib" (default; 3 145 728 is then a
    /// plausible 3 GiB plan, as bytes it would be 3 MiB) or "bytes".
    pub data_plan_unit: DataUnit,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Daily hours without scheduled reads, in `timezone` ("23:00-06:00"; empty: none).
    pub quiet_hours: String,
    /// Quiet hours of single cars, by VIN (the car's wins over `quiet_hours`).
    pub vehicle_quiet_hours: std::collections::BTreeMap<String, String>,
    /// `overspeed` events above this speed for this section's vehicles (over
    /// `events.overspeed_kmh`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overspeed_kmh: Option<f64>,
    /// `overspeed_kmh` of single cars, by VIN (over the section's).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vehicle_overspeed_kmh: std::collections::BTreeMap<String, f64>,
    /// The cars' time zone, for quiet hours ("+08:00", "Asia/Shanghai").
    pub timezone: String,
    /// Refresh wakes the car for a fresh position first (`PAI`, as the Geely app does when
    /// its map opens: docs/protocols/xchanger.md, "Refresh"), then reads its status.
    pub refresh_wakeup: bool,
}

impl Default for XchangerConfig {
    fn default() -> Self {
        XchangerConfig {
            enabled: false,
            api: ApiVersion::V2,
            base_url: String::new(),
            auth_base_url: String::new(),
            username: String::new(),
            password: Secret::default(),
            auth_code: Secret::default(),
            redirect_uri: "https://www.lynkco.com".into(),
            access_token: Secret::default(),
            refresh_token: Secret::default(),
            user_id: String::new(),
            app_key: Secret::default(),
            vins: Vec::new(),
            poll_interval: Duration::from_secs(5 * 60),
            poll_interval_active: None,
            unlock_window_min: 1,
            iccid: String::new(),
            data_plan_interval: Duration::from_secs(6 * 3600),
            hide_untrusted_position: false,
            data_plan_unit: DataUnit::Kib,
            request_timeout: Duration::from_secs(20),
            quiet_hours: String::new(),
            vehicle_quiet_hours: Default::default(),
            overspeed_kmh: None,
            vehicle_overspeed_kmh: Default::default(),
            timezone: "+08:00".into(),
            refresh_wakeup: true,
        }
    }
}

/// Which credentials the config gives, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Password,
    AuthCode,
    Tokens,
}

impl XchangerConfig {
    /// The interval while a vehicle is active (see `config::active_interval`).
    pub fn active_interval(&self) -> Duration {
        crate::shared::active_interval(self.poll_interval, self.poll_interval_active)
    }

    pub fn base_url(&self) -> String {
        let url = if self.base_url.trim().is_empty() {
            match self.api {
                ApiVersion::V1 => "https://api.xchanger.cn",
                ApiVersion::V2 => "https://device-api.xchanger.cn",
            }
        } else {
            self.base_url.trim()
        };
        url.trim_end_matches('/').to_string()
    }

    pub fn auth_base_url(&self) -> String {
        let url = match self.auth_base_url.trim() {
            "" => "https://api.xchanger.cn",
            url => url,
        };
        url.trim_end_matches('/').to_string()
    }

    /// Every way in the config offers to get tokens.
    pub fn credentials(&self) -> Vec<Credentials> {
        let mut out = Vec::new();
        if !self.username.is_empty() && !self.password.is_empty() {
            out.push(Credentials::Password);
        }
        if !self.auth_code.is_empty() {
            out.push(Credentials::AuthCode);
        }
        if !self.access_token.is_empty()
            && !self.refresh_token.is_empty()
            && !self.user_id.is_empty()
        {
            out.push(Credentials::Tokens);
        }
        out
    }

    /// Who the persisted tokens belong to: tokens of another account are never reused.
    pub fn account(&self) -> String {
        if !self.username.is_empty() {
            format!("user:{}", self.username)
        } else if !self.user_id.is_empty() {
            format!("id:{}", self.user_id)
        } else {
            "auth_code".into()
        }
    }

    /// Checks an enabled section; the error names the key and why.
    /// Every problem with an enabled section, each as (key, reason).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        if !self.enabled {
            return out;
        }
        let err = |k: &str, r: &str| (k.to_string(), r.to_string());
        out.extend(crate::derive::config::speed_limit_problems(
            std::iter::once(("overspeed_kmh".to_string(), self.overspeed_kmh)).chain(
                self.vehicle_overspeed_kmh
                    .iter()
                    .map(|(vin, v)| (format!("vehicle_overspeed_kmh.{vin}"), Some(*v))),
            ),
        ));
        if let Err(e) = check_polling(
            &self.base_url(),
            self.poll_interval,
            self.poll_interval_active,
            self.request_timeout,
        ) {
            out.push(e);
        }
        if let Err((k, r)) = check_polling(
            &self.auth_base_url(),
            self.poll_interval,
            None,
            self.request_timeout,
        ) {
            if k == "base_url" {
                out.push(("auth_base_url".into(), r));
            }
        }
        if crate::zone::Zone::parse(&self.timezone).is_none() {
            out.push(err(
                "timezone",
                "a UTC offset (\"+08:00\") or an IANA zone (\"Asia/Shanghai\")",
            ));
        }
        let quiet = std::iter::once(("quiet_hours".to_string(), &self.quiet_hours)).chain(
            self.vehicle_quiet_hours
                .iter()
                .map(|(vin, q)| (format!("vehicle_quiet_hours.{vin}"), q)),
        );
        for vin in self.vehicle_quiet_hours.keys() {
            if !valid_vin(vin) {
                out.push((
                    format!("vehicle_quiet_hours.{vin}"),
                    "is not a VIN (6 to 32 letters and digits)".into(),
                ));
            }
        }
        for (key, text) in quiet {
            if !text.trim().is_empty()
                && crate::connectors::polling::QuietHours::parse(text).is_none()
            {
                out.push((key, "\"HH:MM-HH:MM\", e.g. \"23:00-06:00\"".into()));
            }
        }
        if (self.username.is_empty()) != (self.password.is_empty()) {
            out.push(err("password", "username and password go together"));
        }
        if self.credentials().is_empty() {
            out.push(err(
                "username",
                "give username + password, or auth_code, or access_token + refresh_token + user_id",
            ));
        }
        if self.api == ApiVersion::V2 && self.app_key.is_empty() {
            out.push(err(
                "app_key",
                "api v2 signs every request: set the app's signing key",
            ));
        }
        if !(1..=60).contains(&self.unlock_window_min) {
            out.push(err("unlock_window_min", "must be 1 to 60"));
        }
        if self.data_plan_interval < Duration::from_secs(60) {
            out.push(err("data_plan_interval", "must be at least 1m"));
        }
        if let Some(vin) = self.vins.iter().find(|v| !valid_vin(v)) {
            out.push((
                "vins".into(),
                format!("`{vin}` is not a VIN (letters and digits, 6 to 32)"),
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

pub fn valid_vin(vin: &str) -> bool {
    (6..=32).contains(&vin.len()) && vin.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The `xchanger` upstream: the xchanger cloud (Lynk & Co / Geely cars), polled.
pub struct Xchanger;

impl crate::upstream::Upstream for Xchanger {
    type Config = XchangerConfig;
    const TEXT_KEYS: &'static [&'static str] = &[
        "username",
        "password",
        "auth_code",
        "access_token",
        "refresh_token",
        "user_id",
        "app_key",
        "iccid",
        "timezone",
        "quiet_hours",
    ];
    fn enabled(config: &XchangerConfig) -> bool {
        config.enabled
    }
    fn problems(config: &XchangerConfig) -> Vec<(String, String)> {
        config.problems()
    }
    fn connector(
        config: &XchangerConfig,
        state_dir: &std::path::Path,
    ) -> Box<dyn crate::connector::Connector> {
        Box::new(super::XchangerConnector::new(
            config.clone(),
            state_dir.to_path_buf(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> XchangerConfig {
        XchangerConfig {
            enabled: true,
            username: "u".into(),
            password: Secret::new("p"),
            app_key: Secret::new("k"),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_key() {
        assert_eq!(enabled().validate(), Ok(()));
        let key = |c: XchangerConfig| c.validate().unwrap_err().0;
        assert_eq!(
            key(XchangerConfig {
                app_key: Secret::default(),
                ..enabled()
            }),
            "app_key"
        );
        assert_eq!(
            key(XchangerConfig {
                password: Secret::default(),
                ..enabled()
            }),
            "password"
        );
        assert_eq!(
            key(XchangerConfig {
                username: String::new(),
                password: Secret::default(),
                ..enabled()
            }),
            "username"
        );
        assert_eq!(
            key(XchangerConfig {
                vins: vec!["L6T/../x".into()],
                ..enabled()
            }),
            "vins"
        );
        assert_eq!(
            key(XchangerConfig {
                unlock_window_min: 0,
                ..enabled()
            }),
            "unlock_window_min"
        );
        assert_eq!(
            key(XchangerConfig {
                base_url: "ftp://x".into(),
                ..enabled()
            }),
            "base_url"
        );
        let v1 = XchangerConfig {
            api: ApiVersion::V1,
            app_key: Secret::default(),
            ..enabled()
        };
        assert_eq!(v1.validate(), Ok(()));
        assert_eq!(v1.base_url(), "https://api.xchanger.cn");
        assert_eq!(enabled().auth_base_url(), "https://api.xchanger.cn");
    }

    #[test]
    fn any_single_interval_composes_with_the_defaults() {
        // Only poll_interval set, shorter than the 1 min active default: valid, and the
        // active interval follows it.
        let fast = XchangerConfig {
            poll_interval: Duration::from_secs(5),
            ..enabled()
        };
        assert_eq!(fast.validate(), Ok(()));
        assert_eq!(fast.active_interval(), Duration::from_secs(5));
        assert_eq!(enabled().active_interval(), Duration::from_secs(60));
        // An explicit active interval longer than poll_interval: the error names both.
        let (key, reason) = XchangerConfig {
            poll_interval: Duration::from_secs(5),
            poll_interval_active: Some(Duration::from_secs(60)),
            ..enabled()
        }
        .validate()
        .unwrap_err();
        assert_eq!(key, "poll_interval_active");
        assert!(
            reason.contains("poll_interval (5s)") && reason.contains("1m"),
            "{reason}"
        );
        // Only poll_interval_active set: valid whenever it is not longer than the default.
        let active_only = XchangerConfig {
            poll_interval_active: Some(Duration::from_secs(3)),
            ..enabled()
        };
        assert_eq!(active_only.validate(), Ok(()));
    }
}
