//! What owners control of a cloud vehicle's reads, shared by the polling connectors
//! (xchanger, iauto360), without I/O except the store's hand-over to `state_dir::writer`:
//! - `Settings`: polling on or off and the two intervals, set per vehicle over MQTT
//!   (`polling/set`, `poll_interval/set`, `poll_interval_active/set`) and kept in
//!   `state_dir`, so a restart keeps them;
//! - `QuietHours`: daily local hours without scheduled reads ("23:00-06:00");
//! - `Plan`: when the next read is due and which `PollingPhase` that is, from the
//!   schedule, the account's hold, the settings and the quiet hours.
//!
//! Commands and refreshes read whatever the settings say: only scheduled reads pause.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{NaiveTime, Timelike};
use serde::{Deserialize, Serialize};

use super::poll::{Intervals, Next};
use crate::model::{Command, Field, PollingPhase, VehicleState};

/// Minutes a poll interval may be set to: 1 (the active pace the connectors use today) to
/// 24 h. Below a minute a cloud account is read faster than any public client of these
/// clouds reads by default, and iauto360 bills each call against a plan;
/// docs/protocols/xchanger.md and iauto360.md, "Polling".
pub const MIN_MINUTES: u16 = 1;
pub const MAX_MINUTES: u16 = 1440;

/// One vehicle's polling as its owner set it (`None`: the connector's configured value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default = "on")]
    pub polling: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_minutes: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_minutes: Option<u16>,
}

fn on() -> bool {
    true
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            polling: true,
            idle_minutes: None,
            active_minutes: None,
        }
    }
}

fn minutes(m: u16) -> Duration {
    Duration::from_secs(u64::from(m) * 60)
}

impl Settings {
    /// The intervals in force: the owner's, else the configured ones.
    pub fn intervals(&self, configured: Intervals) -> Intervals {
        // Clamped here too: a stored file edited by hand cannot make a cloud be hammered.
        let owner = |m: u16| minutes(m.clamp(MIN_MINUTES, MAX_MINUTES));
        Intervals {
            idle: self.idle_minutes.map_or(configured.idle, owner),
            active: self.active_minutes.map_or(configured.active, owner),
        }
    }

    /// A polling command changes the settings (`true`); any other leaves them (`false`).
    /// Minutes are checked by the bridge against the vehicle's `PollIntervals`; they are
    /// clamped here too, so a stored file edited by hand cannot make a cloud be hammered.
    pub fn apply(&mut self, command: &Command) -> bool {
        let clamp = |m: u16| m.clamp(MIN_MINUTES, MAX_MINUTES);
        match command {
            Command::Polling(on) => self.polling = *on,
            Command::PollInterval(m) => self.idle_minutes = Some(clamp(*m)),
            Command::PollIntervalActive(m) => self.active_minutes = Some(clamp(*m)),
            _ => return false,
        }
        true
    }

    /// What the vehicle's state shows of them: the switch's and the numbers' values.
    pub fn state(&self, configured: Intervals) -> VehicleState {
        let i = self.intervals(configured);
        let mut st = VehicleState::default();
        st.set(Field::Polling, self.polling)
            .set(Field::PollInterval, whole_minutes(i.idle))
            .set(Field::PollIntervalActive, whole_minutes(i.active));
        st
    }
}

fn whole_minutes(d: Duration) -> i64 {
    i64::try_from(d.as_secs().div_ceil(60)).unwrap_or(i64::MAX)
}

/// Daily local hours without scheduled reads; `from` == `to` is refused (all day would be
/// "polling off", which is the switch's job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    from: NaiveTime,
    to: NaiveTime,
}

impl QuietHours {
    /// "HH:MM-HH:MM" (24 h), across midnight allowed ("23:00-06:00").
    pub fn parse(text: &str) -> Option<QuietHours> {
        let (from, to) = text.trim().split_once('-')?;
        let time = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").ok();
        let (from, to) = (time(from)?, time(to)?);
        (from != to).then_some(QuietHours { from, to })
    }

    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.from < self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }

    /// How long from `t` until the quiet hours end; zero outside them.
    pub fn remaining(&self, t: NaiveTime) -> Duration {
        if !self.contains(t) {
            return Duration::ZERO;
        }
        let secs = |t: NaiveTime| i64::from(t.num_seconds_from_midnight());
        let left = (secs(self.to) - secs(t)).rem_euclid(24 * 3600);
        Duration::from_secs(u64::try_from(left).unwrap_or_default())
    }
}

/// When a vehicle is read next and why, given what the schedule planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// From now; `None`: no scheduled read (polling off) until a command or a refresh.
    pub wait: Option<Duration>,
    pub phase: PollingPhase,
}

/// How long before a polling-off vehicle looks again whether it was turned back on: it is
/// woken by the command that does, so this only bounds a missed wake-up.
pub const OFF_RECHECK: Duration = Duration::from_secs(3600);

impl Plan {
    /// `next`: what the schedule planned after the last read; `planned`: its wait from
    /// now; `held`: the account's hold left, if any; `local`: the vehicle's local time.
    pub fn new(
        next: Next,
        planned: Duration,
        held: Option<Duration>,
        settings: &Settings,
        quiet: Option<&QuietHours>,
        local: NaiveTime,
    ) -> Plan {
        let held_wait = |w: Duration| held.map_or(w, |h| h.max(w));
        if next == Next::Confirm {
            // A command's or a refresh's reads run whatever the settings say.
            return Plan {
                wait: Some(held_wait(planned)),
                phase: PollingPhase::Confirming,
            };
        }
        if !settings.polling {
            return Plan {
                wait: None,
                phase: PollingPhase::Off,
            };
        }
        if let Some(h) = held.filter(|h| *h > planned) {
            return Plan {
                wait: Some(h),
                phase: PollingPhase::Held,
            };
        }
        let quiet_left = quiet.map_or(Duration::ZERO, |q| q.remaining(local));
        if !quiet_left.is_zero() {
            return Plan {
                wait: Some(planned.max(quiet_left)),
                phase: PollingPhase::QuietHours,
            };
        }
        let phase = match next {
            Next::Idle => PollingPhase::Idle,
            Next::Active => PollingPhase::Active,
            Next::BackOff => PollingPhase::BackingOff,
            Next::Confirm => PollingPhase::Confirming,
        };
        Plan {
            wait: Some(planned),
            phase,
        }
    }

    /// The sensors' values: `polling_phase`, and `next_poll` (cleared while none is due).
    pub fn state(&self, now: chrono::DateTime<chrono::Utc>) -> VehicleState {
        let mut st = VehicleState::default();
        st.set(Field::PollingPhase, self.phase.as_str());
        match self
            .wait
            .and_then(|w| chrono::Duration::from_std(w).ok())
            .map(|w| now + w)
        {
            Some(at) => {
                st.set(
                    Field::NextPoll,
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            }
            None => {
                st.clear(Field::NextPoll);
            }
        }
        st
    }
}

/// Every vehicle's `Settings` of one connector, in `state_dir/<file>` (written off the
/// async workers by `state_dir::writer`). Bounded by the connector's vehicles.
pub struct SettingsStore {
    dir: Option<PathBuf>,
    file: &'static str,
    by_vehicle: Mutex<BTreeMap<String, Settings>>,
}

impl SettingsStore {
    /// What an earlier run kept (nothing when the file is missing or unreadable).
    pub fn load(dir: Option<PathBuf>, file: &'static str) -> SettingsStore {
        let by_vehicle = dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(file)).ok())
            .filter(|raw| raw.len() <= 1024 * 1024)
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default();
        SettingsStore {
            dir,
            file,
            by_vehicle: Mutex::new(by_vehicle),
        }
    }

    pub fn get(&self, vehicle: &str) -> Settings {
        let map = self.by_vehicle.lock().unwrap_or_else(|p| p.into_inner());
        map.get(vehicle).copied().unwrap_or_default()
    }

    /// Keeps `settings` for `vehicle` (and writes the file when it changed).
    pub fn set(&self, vehicle: &str, settings: Settings) {
        let mut map = self.by_vehicle.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(vehicle) == Some(&settings) {
            return;
        }
        map.insert(vehicle.to_string(), settings);
        // Handed over under the lock (no I/O: the writer thread does it), so two vehicles
        // setting at once cannot have the older file written last.
        if let (Some(dir), Ok(bytes)) = (&self.dir, serde_json::to_vec_pretty(&*map)) {
            crate::state_dir::writer::write(dir, self.file, bytes, "polling_settings_saved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Intervals = Intervals {
        idle: Duration::from_secs(600),
        active: Duration::from_secs(60),
    };

    fn t(s: &str) -> NaiveTime {
        NaiveTime::parse_from_str(s, "%H:%M").unwrap()
    }

    #[test]
    fn settings_change_only_by_polling_commands_and_show_in_the_state() {
        let mut s = Settings::default();
        assert_eq!(s.intervals(PACE).idle, PACE.idle);
        assert!(!s.apply(&Command::Horn));
        assert!(s.apply(&Command::PollInterval(15)));
        assert!(
            s.apply(&Command::PollIntervalActive(0)),
            "clamped, not refused, here"
        );
        assert!(s.apply(&Command::Polling(false)));
        assert_eq!(s.intervals(PACE).idle, Duration::from_secs(900));
        assert_eq!(s.intervals(PACE).active, Duration::from_secs(60));
        let st = s.state(PACE).to_json();
        assert_eq!(st["polling"], false);
        assert_eq!(st["poll_interval"], 15);
        assert_eq!(st["poll_interval_active"], 1);
        // A file edited by hand cannot make a cloud be read back to back.
        let zero: Settings =
            serde_json::from_str(r#"{"idle_minutes": 0, "active_minutes": 9999}"#).unwrap();
        assert_eq!(zero.intervals(PACE).idle, Duration::from_secs(60));
        assert_eq!(zero.intervals(PACE).active, Duration::from_secs(1440 * 60));
        // What a stored file says comes back; missing keys are the defaults.
        let back: Settings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            serde_json::from_str::<Settings>("{}").unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn quiet_hours_cross_midnight_and_say_when_they_end() {
        let q = QuietHours::parse("23:00-06:00").unwrap();
        assert!(q.contains(t("23:00")) && q.contains(t("02:00")) && !q.contains(t("06:00")));
        assert!(!q.contains(t("12:00")));
        assert_eq!(
            q.remaining(t("23:30")),
            Duration::from_secs(6 * 3600 + 1800)
        );
        assert_eq!(q.remaining(t("05:59")), Duration::from_secs(60));
        assert_eq!(q.remaining(t("12:00")), Duration::ZERO);
        let day = QuietHours::parse(" 09:00 - 17:00 ").unwrap();
        assert!(day.contains(t("09:00")) && !day.contains(t("17:00")));
        for bad in [
            "",
            "23:00",
            "25:00-06:00",
            "06:00-06:00",
            "a-b",
            "23:00-06:00-07:00",
        ] {
            assert_eq!(QuietHours::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_plan_follows_confirmations_off_holds_and_quiet_hours_in_that_order() {
        let on = Settings::default();
        let off = Settings {
            polling: false,
            ..on
        };
        let quiet = QuietHours::parse("23:00-06:00").unwrap();
        let min = Duration::from_secs(60);
        let plan =
            |next, held, s: &Settings, at| Plan::new(next, min, held, s, Some(&quiet), t(at));
        assert_eq!(
            plan(Next::Idle, None, &on, "12:00").phase,
            PollingPhase::Idle
        );
        assert_eq!(
            plan(Next::Active, None, &on, "12:00").phase,
            PollingPhase::Active
        );
        assert_eq!(
            plan(Next::BackOff, None, &on, "12:00").phase,
            PollingPhase::BackingOff
        );
        let confirming = plan(Next::Confirm, None, &off, "02:00");
        assert_eq!(
            (confirming.phase, confirming.wait),
            (PollingPhase::Confirming, Some(min)),
            "a command's reads run while off and in quiet hours"
        );
        assert_eq!(plan(Next::Idle, None, &off, "12:00").wait, None);
        assert_eq!(
            plan(Next::Idle, None, &off, "12:00").phase,
            PollingPhase::Off
        );
        let held = plan(Next::Idle, Some(Duration::from_secs(900)), &on, "12:00");
        assert_eq!(
            (held.phase, held.wait),
            (PollingPhase::Held, Some(Duration::from_secs(900)))
        );
        let night = plan(Next::Idle, None, &on, "05:00");
        assert_eq!(
            (night.phase, night.wait),
            (PollingPhase::QuietHours, Some(Duration::from_secs(3600)))
        );
        let st = night
            .state(chrono::DateTime::from_timestamp(0, 0).unwrap())
            .to_json();
        assert_eq!(st["polling_phase"], "quiet_hours");
        assert_eq!(st["next_poll"], "1970-01-01T01:00:00Z");
    }

    #[test]
    fn the_store_keeps_settings_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SettingsStore::load(Some(dir.path().to_path_buf()), "polling.json");
        let mut s = store.get("car");
        s.apply(&Command::PollInterval(30));
        store.set("car", s);
        assert!(crate::state_dir::writer::flush(Duration::from_secs(5)));
        let again = SettingsStore::load(Some(dir.path().to_path_buf()), "polling.json");
        assert_eq!(again.get("car").idle_minutes, Some(30));
        assert_eq!(again.get("other"), Settings::default());
        std::fs::write(dir.path().join("polling.json"), b"{garbage").unwrap();
        let broken = SettingsStore::load(Some(dir.path().to_path_buf()), "polling.json");
        assert_eq!(
            broken.get("car"),
            Settings::default(),
            "a broken file costs only itself"
        );
    }
}
