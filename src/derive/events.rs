//! Events worked out from a vehicle's reports: overspeed and low battery, each with a
//! hysteresis so that a reading hovering at the threshold makes one event, not many.

use serde::{Deserialize, Serialize};

/// Every event type the deriver emits: the hub declares them in the vehicle's HA event
/// entity.
pub const EVENT_TYPES: &[&str] = &[
    "trip",
    "charge_session",
    "zone_enter",
    "zone_exit",
    "overspeed",
    "moving",
    "stopped",
    "inactive",
    "low_battery",
];

/// An overspeed episode ends once the speed is this far below the limit: GPS and CAN
/// speeds wobble by 2-3 km/h, and a driver holding the limit crosses it both ways.
pub const OVERSPEED_HYSTERESIS_KMH: f64 = 5.0;
/// `low_battery` re-arms once the level is this far above the threshold: a battery's
/// reading moves by 1-2 points with load and temperature.
pub const LOW_BATTERY_HYSTERESIS_PERCENT: f64 = 5.0;

/// An overspeed episode in progress.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub start_ms: i64,
    /// The last report above the limit.
    pub last_ms: i64,
    pub peak_kmh: f32,
    pub limit_kmh: f32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overspeed {
    episode: Option<Episode>,
}

impl Overspeed {
    /// A report's speed; the finished episode, if this ended one.
    pub fn report(
        &mut self,
        at_ms: i64,
        speed_kmh: Option<f64>,
        limit_kmh: Option<f64>,
    ) -> Option<Episode> {
        let speed = speed_kmh?;
        let Some(limit) = limit_kmh else {
            return self.episode.take();
        };
        match self.episode.as_mut() {
            Some(e) if speed > limit - OVERSPEED_HYSTERESIS_KMH => {
                if speed > limit {
                    e.last_ms = at_ms;
                    e.peak_kmh = e.peak_kmh.max(speed as f32);
                }
                None
            }
            Some(_) => self.episode.take(),
            None if speed > limit => {
                self.episode = Some(Episode {
                    start_ms: at_ms,
                    last_ms: at_ms,
                    peak_kmh: speed as f32,
                    limit_kmh: limit as f32,
                });
                None
            }
            None => None,
        }
    }

    /// Ends the episode (reports stopped, or the clock was reset).
    pub fn end(&mut self) -> Option<Episode> {
        self.episode.take()
    }

    pub fn is_open(&self) -> bool {
        self.episode.is_some()
    }
}

/// Whether `low_battery` was sent and not re-armed since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LowBattery {
    sent: bool,
}

impl LowBattery {
    /// True when this level makes a `low_battery` event.
    pub fn report(&mut self, level: Option<f64>, threshold: Option<f64>) -> bool {
        let (Some(level), Some(threshold)) = (level, threshold) else {
            return false;
        };
        if !self.sent && level <= threshold {
            self.sent = true;
            return true;
        }
        if self.sent && level >= threshold + LOW_BATTERY_HYSTERESIS_PERCENT {
            self.sent = false;
        }
        false
    }
}
