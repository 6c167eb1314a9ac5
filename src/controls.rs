//! The controls catalog: every fixed-payload control a vehicle can offer, one row each,
//! beside the field catalog in `model/mod.rs`. A row says which capability offers it, its
//! entity key (also its `<vehicle>/<key>/set` topic), how Home Assistant shows it, and
//! the exact payloads that make a command, with the ones that need the PIN. The command
//! parser (`bridge/command.rs`), the discovery documents (`hass/vehicle.rs`) and the PIN
//! rules read this table; a new button is one row.
//!
//! Controls that take a value (guard power, max speed) or are named by the config
//! (EXLIVE pass-through `cmd_<name>`) are parsed where their value is.

use crate::model::{Capability, Command};

/// How Home Assistant shows a control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Widget {
    /// A lock entity: first payload locks, second unlocks; its state is the `lock` field.
    Lock,
    /// A switch: first payload turns it on, second off; `state_field` is its state.
    Switch {
        name: &'static str,
        icon: &'static str,
        state_field: &'static str,
    },
    /// A button: its one payload (`PRESS`).
    Button {
        name: &'static str,
        icon: &'static str,
    },
}

/// One control.
#[derive(Debug)]
pub struct Control {
    pub capability: Capability,
    pub key: &'static str,
    pub widget: Widget,
    /// Exact payload → command, and whether that command needs the PIN.
    pub payloads: &'static [(&'static str, Command, bool)],
    /// Other spellings accepted for a payload (`START` for `ON`).
    pub aliases: &'static [(&'static str, &'static str)],
}

/// What a button sends.
pub const PRESS: &str = "PRESS";

const fn button(
    capability: Capability,
    key: &'static str,
    name: &'static str,
    icon: &'static str,
    payloads: &'static [(&'static str, Command, bool)],
) -> Control {
    Control {
        capability,
        key,
        widget: Widget::Button { name, icon },
        payloads,
        aliases: &[],
    }
}

pub const CONTROLS: &[Control] = &[
    Control {
        capability: Capability::Lock,
        key: "lock",
        widget: Widget::Lock,
        payloads: &[
            ("LOCK", Command::Lock, false),
            ("UNLOCK", Command::Unlock, true),
        ],
        aliases: &[],
    },
    Control {
        capability: Capability::Engine,
        key: "engine",
        widget: Widget::Switch {
            name: "Engine",
            icon: "mdi:engine",
            state_field: "engine_running",
        },
        payloads: &[
            ("ON", Command::EngineStart, true),
            ("OFF", Command::EngineStop, false),
        ],
        aliases: &[("START", "ON"), ("STOP", "OFF")],
    },
    button(
        Capability::HornAndLights,
        "horn_lights",
        "Horn and lights",
        "mdi:car-light-alert",
        &[(PRESS, Command::HornAndLights, false)],
    ),
    button(
        Capability::FlashLights,
        "flash_lights",
        "Flash lights",
        "mdi:car-light-high",
        &[(PRESS, Command::FlashLights, false)],
    ),
    button(
        Capability::Horn,
        "horn",
        "Horn",
        "mdi:bullhorn",
        &[(PRESS, Command::Horn, false)],
    ),
    button(
        Capability::OpenSeat,
        "open_seat",
        "Open seat",
        "mdi:seat",
        &[(PRESS, Command::OpenSeat, false)],
    ),
    button(
        Capability::OpenGlovebox,
        "open_glovebox",
        "Open glovebox",
        "mdi:archive-lock-open",
        &[(PRESS, Command::OpenGlovebox, false)],
    ),
    button(
        Capability::OpenHelmet,
        "open_helmet",
        "Release helmet",
        "mdi:racing-helmet",
        &[(PRESS, Command::OpenHelmet, false)],
    ),
    button(
        Capability::HazardLights,
        "hazard_lights",
        "Hazard lights",
        "mdi:hazard-lights",
        &[(PRESS, Command::HazardLights, false)],
    ),
    // Nothing here moves a vehicle: no PIN.
    button(
        Capability::Refresh,
        "refresh",
        "Refresh",
        "mdi:refresh",
        &[(PRESS, Command::Refresh, false)],
    ),
    Control {
        capability: Capability::Polling,
        key: "polling",
        widget: Widget::Switch {
            name: "Polling",
            icon: "mdi:timer-sync-outline",
            state_field: "polling",
        },
        payloads: &[
            ("ON", Command::Polling(true), false),
            ("OFF", Command::Polling(false), false),
        ],
        aliases: &[],
    },
];

/// The control behind an entity key.
pub fn by_key(key: &str) -> Option<&'static Control> {
    CONTROLS.iter().find(|c| c.key == key)
}

/// The control a capability offers (none for value-taking and pass-through ones).
pub fn by_capability(capability: &Capability) -> Option<&'static Control> {
    CONTROLS.iter().find(|c| c.capability == *capability)
}

impl Control {
    /// The command for exactly this payload (or one of its aliases).
    pub fn command(&self, payload: &str) -> Option<Command> {
        let payload = self
            .aliases
            .iter()
            .find(|(alias, _)| *alias == payload)
            .map_or(payload, |(_, canonical)| *canonical);
        self.payloads
            .iter()
            .find(|(p, _, _)| *p == payload)
            .map(|(_, command, _)| command.clone())
    }

    /// Whether some command of this control needs the PIN.
    pub fn needs_pin(&self) -> bool {
        self.payloads.iter().any(|(_, _, pin)| *pin)
    }
}

/// Whether `command` needs the PIN (when one is set).
pub fn command_needs_pin(command: &Command) -> bool {
    CONTROLS
        .iter()
        .flat_map(|c| c.payloads)
        .any(|(_, c, pin)| *pin && c == command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_reachable_and_consistent() {
        for control in CONTROLS {
            assert_eq!(
                by_key(control.key).map(|c| c.key),
                Some(control.key),
                "keys are unique"
            );
            assert_eq!(
                by_capability(&control.capability).map(|c| c.key),
                Some(control.key)
            );
            assert!(
                !control.payloads.is_empty(),
                "{} has no payload",
                control.key
            );
            for (payload, command, _) in control.payloads {
                assert_eq!(control.command(payload).as_ref(), Some(command));
            }
            for (alias, canonical) in control.aliases {
                assert_eq!(control.command(alias), control.command(canonical));
            }
            if let Widget::Button { .. } = control.widget {
                assert_eq!(
                    control.payloads.len(),
                    1,
                    "{}: a button has one payload",
                    control.key
                );
                assert_eq!(control.payloads[0].0, PRESS);
            }
        }
    }

    #[test]
    fn the_pin_guards_unlocking_and_starting_only() {
        let guarded: Vec<_> = CONTROLS
            .iter()
            .flat_map(|c| c.payloads)
            .filter(|(_, _, pin)| *pin)
            .map(|(_, c, _)| c.clone())
            .collect();
        assert_eq!(guarded, [Command::Unlock, Command::EngineStart]);
        assert!(command_needs_pin(&Command::Unlock) && !command_needs_pin(&Command::Lock));
        assert_eq!(
            by_key("lock").map(|c| c.command("unlock")),
            Some(None),
            "exact payloads only"
        );
    }
}
