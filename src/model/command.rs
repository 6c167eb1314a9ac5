//! What a vehicle can be asked to do and how a command ends.

use serde::Serialize;

/// Motor power limits of a two-wheeler's guard mode (kingxun 2003 / 4003).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GuardPower {
    Off,
    W100,
    W200,
    Unlimited,
}

impl GuardPower {
    pub const OPTIONS: [&'static str; 4] = ["off", "100W", "200W", "unlimited"];

    pub fn as_str(self) -> &'static str {
        match self {
            GuardPower::Off => "off",
            GuardPower::W100 => "100W",
            GuardPower::W200 => "200W",
            GuardPower::Unlimited => "unlimited",
        }
    }

    pub fn parse(s: &str) -> Option<GuardPower> {
        match s.trim() {
            "off" => Some(GuardPower::Off),
            "100W" => Some(GuardPower::W100),
            "200W" => Some(GuardPower::W200),
            "unlimited" => Some(GuardPower::Unlimited),
            _ => None,
        }
    }
}

/// What a vehicle can be asked to do; a connector lists what each vehicle supports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Lock and unlock (HA lock entity `lock`).
    Lock,
    /// Engine start and stop (HA switch `engine`).
    Engine,
    HornAndLights,
    FlashLights,
    Horn,
    OpenSeat,
    OpenGlovebox,
    OpenHelmet,
    /// Hazard lights (HA button `hazard_lights`).
    HazardLights,
    GuardPower,
    /// Speed limit in km/h, 1..=max.
    MaxSpeed {
        max: u16,
    },
    /// A named raw command for the terminal (EXLIVE pass-through), HA button `cmd_<name>`.
    Passthrough(String),
    /// Ask the upstream for a fresh report now (HA button `refresh`).
    Refresh,
    /// Scheduled reads on or off for this vehicle (HA switch `polling`).
    Polling,
    /// The vehicle's poll intervals may be set, in minutes, `min..=max` (HA numbers
    /// `poll_interval`, `poll_interval_active`): what the upstream tolerates.
    PollIntervals {
        min: u16,
        max: u16,
    },
}

/// A command for one vehicle, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lock,
    Unlock,
    EngineStart,
    EngineStop,
    HornAndLights,
    FlashLights,
    Horn,
    OpenSeat,
    OpenGlovebox,
    OpenHelmet,
    HazardLights,
    Guard(GuardPower),
    MaxSpeed(u16),
    Passthrough(String),
    Refresh,
    Polling(bool),
    /// Minutes between reads while parked.
    PollInterval(u16),
    /// Minutes between reads while driving (or a command waits).
    PollIntervalActive(u16),
}

impl Command {
    /// The name used in `command/result`.
    pub fn name(&self) -> String {
        match self {
            Command::Lock => "lock".into(),
            Command::Unlock => "unlock".into(),
            Command::EngineStart => "engine_start".into(),
            Command::EngineStop => "engine_stop".into(),
            Command::HornAndLights => "horn_lights".into(),
            Command::FlashLights => "flash_lights".into(),
            Command::Horn => "horn".into(),
            Command::OpenSeat => "open_seat".into(),
            Command::OpenGlovebox => "open_glovebox".into(),
            Command::OpenHelmet => "open_helmet".into(),
            Command::HazardLights => "hazard_lights".into(),
            Command::Guard(p) => format!("guard_power:{}", p.as_str()),
            Command::MaxSpeed(v) => format!("max_speed:{v}"),
            Command::Passthrough(name) => format!("cmd_{name}"),
            Command::Refresh => "refresh".into(),
            Command::Polling(true) => "polling_on".into(),
            Command::Polling(false) => "polling_off".into(),
            Command::PollInterval(m) => format!("poll_interval:{m}"),
            Command::PollIntervalActive(m) => format!("poll_interval_active:{m}"),
        }
    }
}

/// The status of a command as published on `command/result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    Accepted,
    Succeeded,
    Failed,
    Timeout,
    Rejected,
}

impl CommandStatus {
    pub fn is_final(self) -> bool {
        self != CommandStatus::Accepted
    }
}

/// What a connector reports about a command it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandProgress {
    /// The upstream took the command but has not confirmed it yet.
    Accepted,
    Succeeded,
    /// Done as far as anyone can tell, with what that rests on (e.g. horn and lights,
    /// which leave no state to read back: the cloud's own acknowledgement).
    SucceededBecause(String),
    Failed(String),
    /// The upstream's own wait ran out (e.g. a device that never answered).
    TimedOut(String),
    /// Not attempted, and why (e.g. a refresh while the cloud holds reads back): the
    /// result is `rejected`.
    Refused(String),
    /// A report newer than the command arrived (a refresh): `succeeded`, with the time
    /// the vehicle reported (RFC 3339).
    Fresh {
        reported_at: String,
    },
}

/// What a cloud vehicle's read schedule is doing now (the `polling_phase` sensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollingPhase {
    /// Parked: the idle interval.
    Idle,
    /// Driving: the active interval.
    Active,
    /// Quick reads confirming a command or a refresh.
    Confirming,
    /// Reads of this vehicle failed: waiting longer each time.
    BackingOff,
    /// The cloud struggled (429 / 5xx): every read of the account waits.
    Held,
    /// Inside the configured quiet hours: no scheduled reads.
    QuietHours,
    /// The owner turned polling off.
    Off,
}

impl PollingPhase {
    pub const OPTIONS: &'static [&'static str] = &[
        "idle",
        "active",
        "confirming",
        "backing_off",
        "held",
        "quiet_hours",
        "off",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PollingPhase::Idle => "idle",
            PollingPhase::Active => "active",
            PollingPhase::Confirming => "confirming",
            PollingPhase::BackingOff => "backing_off",
            PollingPhase::Held => "held",
            PollingPhase::QuietHours => "quiet_hours",
            PollingPhase::Off => "off",
        }
    }
}
