//! The command gate: whether a command that needs the PIN may run. No I/O, the caller
//! gives the time, so every rule is tested with a made-up clock:
//! - the PIN (`bridge.command_pin`) is compared in constant time;
//! - wrong PINs are counted per vehicle and across all of them, each with a lockout that
//!   doubles (1 min to 1 h); while locked out the PIN is not even compared, so guessing
//!   gains nothing;
//! - a right PIN in HA's `Command PIN` text (`<vehicle>/pin/set`) arms that vehicle's
//!   next PIN command for `ARMED_FOR`, once;
//! - a vehicle holds at most `command_queue` commands waiting behind the one running;
//! - while a lock command is in flight the lock shows LOCKING / UNLOCKING;
//! - a refresh runs at most once per `bridge.refresh_min_gap` per vehicle, and never
//!   while the last one still runs (a flood of presses reads nothing more).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::command::{pin_matches, PinTries, PIN_TRIES_OVERALL, PIN_TRIES_PER_VEHICLE};
use crate::config::Secret;
use crate::model::{Command, VehicleId};

/// How long a PIN entered in HA's `Command PIN` text stays good for one command.
pub const ARMED_FOR: Duration = Duration::from_secs(30);

/// Why the gate said no (the text is the command's `reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("wrong or missing PIN")]
    WrongPin,
    #[error("PIN locked for {0} s after repeated wrong PINs")]
    Locked(u64),
    #[error("no command_pin is set")]
    NoPinSet,
    #[error("command queue for this vehicle is full")]
    QueueFull,
    #[error("a refresh of this vehicle is still running")]
    RefreshRunning,
    #[error("refreshed {0} s ago: bridge.refresh_min_gap is {1} s")]
    RefreshTooSoon(u64, u64),
}

pub struct CommandGate {
    pin: Secret,
    /// Wrong PINs in a row per vehicle (only vehicles that had one).
    tries: HashMap<VehicleId, PinTries>,
    overall: PinTries,
    /// Every wrong PIN since start.
    failures: u64,
    /// Vehicles whose next PIN command needs no code, until then.
    armed: HashMap<VehicleId, Instant>,
    /// Commands waiting behind the running one, at most, per vehicle.
    queue: usize,
    /// Commands handed to a vehicle's worker and not finished (only vehicles with one).
    in_flight: HashMap<VehicleId, usize>,
    /// LOCKING / UNLOCKING of a vehicle whose lock command is in flight.
    pending_lock: HashMap<VehicleId, &'static str>,
    /// `bridge.refresh_min_gap`.
    refresh_gap: Duration,
    /// When each vehicle's last refresh was accepted, and whether it still runs.
    refreshes: HashMap<VehicleId, (Instant, bool)>,
}

impl CommandGate {
    pub fn new(pin: Secret, queue: usize, refresh_gap: Duration) -> CommandGate {
        CommandGate {
            pin,
            tries: HashMap::new(),
            overall: PinTries::default(),
            failures: 0,
            armed: HashMap::new(),
            queue,
            in_flight: HashMap::new(),
            pending_lock: HashMap::new(),
            refresh_gap,
            refreshes: HashMap::new(),
        }
    }

    /// Whether the vehicle's queue has room (asked before the PIN, so a full queue does
    /// not use up an armed PIN).
    pub fn has_room(&self, vehicle: &VehicleId) -> Result<(), Refusal> {
        match self.in_flight.get(vehicle).is_some_and(|n| *n > self.queue) {
            true => Err(Refusal::QueueFull),
            false => Ok(()),
        }
    }

    /// Takes a place in the vehicle's queue: the running command and `queue` behind it.
    /// A refresh also needs its gap since the last one, and none running.
    pub fn enqueue(
        &mut self,
        vehicle: &VehicleId,
        command: &Command,
        now: Instant,
    ) -> Result<(), Refusal> {
        if self.in_flight.get(vehicle).is_some_and(|n| *n > self.queue) {
            return Err(Refusal::QueueFull);
        }
        if *command == Command::Refresh {
            match self.refreshes.get(vehicle) {
                Some((_, true)) => return Err(Refusal::RefreshRunning),
                Some((at, false)) if now.duration_since(*at) < self.refresh_gap => {
                    return Err(Refusal::RefreshTooSoon(
                        now.duration_since(*at).as_secs(),
                        self.refresh_gap.as_secs(),
                    ));
                }
                _ => {}
            }
            self.refreshes.insert(vehicle.clone(), (now, true));
        }
        *self.in_flight.entry(vehicle.clone()).or_default() += 1;
        Ok(())
    }

    /// A command of the vehicle's reached its final outcome: its place is free.
    pub fn finished(&mut self, vehicle: &VehicleId, command: &Command) {
        if let Some(n) = self.in_flight.get_mut(vehicle) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.in_flight.remove(vehicle);
            }
        }
        if *command == Command::Refresh {
            if let Some((_, running)) = self.refreshes.get_mut(vehicle) {
                *running = false;
            }
        }
    }

    /// A lock command started (or was queued): the lock shows `pending` until it ends.
    pub fn lock_pending(&mut self, vehicle: &VehicleId, pending: &'static str) {
        self.pending_lock.insert(vehicle.clone(), pending);
    }

    /// LOCKING / UNLOCKING while the vehicle's lock command is in flight.
    pub fn pending_lock(&self, vehicle: &VehicleId) -> Option<&'static str> {
        self.pending_lock.get(vehicle).copied()
    }

    /// The lock command ended: whether one was pending.
    pub fn lock_done(&mut self, vehicle: &VehicleId) -> bool {
        self.pending_lock.remove(vehicle).is_some()
    }

    /// Every wrong PIN since start (`pin_failures` in `bridge/info`).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// May `command` run on `vehicle`, given `code` (the payload's)? A command that
    /// needs no PIN, or any command while no PIN is set, may. An armed vehicle's next
    /// PIN command without a code may, once.
    pub fn admit(
        &mut self,
        vehicle: &VehicleId,
        command: &Command,
        code: Option<&str>,
        now: Instant,
    ) -> Result<(), Refusal> {
        if self.pin.is_empty() || !crate::controls::command_needs_pin(command) {
            return Ok(());
        }
        if code.is_none() && self.armed.remove(vehicle).is_some_and(|until| now < until) {
            return Ok(());
        }
        self.check(vehicle, code, now)
    }

    /// `<vehicle>/pin/set`: a right PIN arms the vehicle's next PIN command for
    /// `ARMED_FOR`; a wrong one counts like any wrong PIN.
    pub fn arm(
        &mut self,
        vehicle: &VehicleId,
        code: Option<&str>,
        now: Instant,
    ) -> Result<(), Refusal> {
        if self.pin.is_empty() {
            return Err(Refusal::NoPinSet);
        }
        self.check(vehicle, code, now)?;
        self.armed.insert(vehicle.clone(), now + ARMED_FOR);
        Ok(())
    }

    /// A vehicle gone from the bridge leaves nothing behind.
    pub fn forget(&mut self, vehicle: &VehicleId) {
        self.tries.remove(vehicle);
        self.armed.remove(vehicle);
        self.in_flight.remove(vehicle);
        self.pending_lock.remove(vehicle);
        self.refreshes.remove(vehicle);
    }

    fn check(
        &mut self,
        vehicle: &VehicleId,
        code: Option<&str>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let mine = self.tries.get(vehicle).copied().unwrap_or_default();
        if let Some(left) = mine.locked(now).or(self.overall.locked(now)) {
            return Err(Refusal::Locked(left));
        }
        if !pin_matches(self.pin.expose(), code) {
            let tries = self.tries.entry(vehicle.clone()).or_default();
            tries.failed(now, PIN_TRIES_PER_VEHICLE);
            self.overall.failed(now, PIN_TRIES_OVERALL);
            self.failures += 1;
            tracing::warn!(event = "wrong_pin", vehicle = %vehicle, failures = tries.failures(), "wrong or missing PIN");
            return Err(Refusal::WrongPin);
        }
        self.tries.remove(vehicle);
        self.overall.reset();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::{PIN_LOCKOUT, PIN_LOCKOUT_MAX};
    use super::*;

    fn vid(s: &str) -> VehicleId {
        VehicleId::new(s).unwrap()
    }

    fn gate() -> CommandGate {
        CommandGate::new(Secret::new("2468"), 2, Duration::from_secs(30))
    }

    #[test]
    fn only_pin_commands_need_it_and_only_when_a_pin_is_set() {
        let now = Instant::now();
        let (mut g, car) = (gate(), vid("car"));
        assert_eq!(g.admit(&car, &Command::Lock, None, now), Ok(()));
        assert_eq!(
            g.admit(&car, &Command::Unlock, None, now),
            Err(Refusal::WrongPin)
        );
        assert_eq!(g.admit(&car, &Command::Unlock, Some("2468"), now), Ok(()));
        let mut open = CommandGate::new(Secret::new(""), 2, Duration::from_secs(30));
        assert_eq!(open.admit(&car, &Command::Unlock, None, now), Ok(()));
        assert_eq!(open.arm(&car, Some("2468"), now), Err(Refusal::NoPinSet));
        assert_eq!(g.failures(), 1);
    }

    #[test]
    fn wrong_pins_lock_the_vehicle_out_doubling_and_a_locked_pin_is_not_compared() {
        let t0 = Instant::now();
        let (mut g, car, other) = (gate(), vid("car"), vid("other"));
        for _ in 0..PIN_TRIES_PER_VEHICLE {
            assert_eq!(
                g.admit(&car, &Command::Unlock, Some("0000"), t0),
                Err(Refusal::WrongPin)
            );
        }
        // Locked: even the right PIN is refused, and not counted.
        let locked = g.admit(&car, &Command::Unlock, Some("2468"), t0);
        assert_eq!(locked, Err(Refusal::Locked(PIN_LOCKOUT.as_secs())));
        assert_eq!(g.failures(), u64::from(PIN_TRIES_PER_VEHICLE));
        // Another vehicle is not locked by this one's guesses.
        assert_eq!(g.admit(&other, &Command::Unlock, Some("2468"), t0), Ok(()));
        // After the lockout one more wrong PIN doubles it.
        let t1 = t0 + PIN_LOCKOUT + Duration::from_secs(1);
        assert_eq!(
            g.admit(&car, &Command::Unlock, Some("1111"), t1),
            Err(Refusal::WrongPin)
        );
        assert_eq!(
            g.admit(&car, &Command::Unlock, Some("2468"), t1),
            Err(Refusal::Locked(2 * PIN_LOCKOUT.as_secs()))
        );
        // The right PIN once unlocked clears the count.
        let t2 = t1 + PIN_LOCKOUT_MAX;
        assert_eq!(g.admit(&car, &Command::Unlock, Some("2468"), t2), Ok(()));
        assert_eq!(
            g.admit(&car, &Command::Unlock, Some("0"), t2),
            Err(Refusal::WrongPin)
        );
        assert_eq!(
            g.admit(&car, &Command::Unlock, Some("2468"), t2),
            Ok(()),
            "one wrong PIN is not a lockout"
        );
    }

    #[test]
    fn guesses_spread_over_many_vehicles_lock_every_vehicle() {
        let t0 = Instant::now();
        let mut g = gate();
        for n in 0..PIN_TRIES_OVERALL {
            let v = vid(&format!("kx{n}"));
            assert_eq!(
                g.admit(&v, &Command::Unlock, Some("9999"), t0),
                Err(Refusal::WrongPin)
            );
        }
        let fresh = vid("never_guessed");
        assert!(matches!(
            g.admit(&fresh, &Command::Unlock, Some("2468"), t0),
            Err(Refusal::Locked(_))
        ));
    }

    #[test]
    fn an_armed_pin_lets_one_command_through_within_its_time() {
        let t0 = Instant::now();
        let (mut g, car) = (gate(), vid("car"));
        assert_eq!(g.arm(&car, Some("0000"), t0), Err(Refusal::WrongPin));
        assert_eq!(
            g.admit(&car, &Command::Unlock, None, t0),
            Err(Refusal::WrongPin),
            "a wrong PIN arms nothing"
        );
        assert_eq!(g.arm(&car, Some("2468"), t0), Ok(()));
        assert_eq!(g.admit(&car, &Command::Unlock, None, t0), Ok(()));
        assert_eq!(
            g.admit(&car, &Command::Unlock, None, t0),
            Err(Refusal::WrongPin),
            "once"
        );
        // Armed, but too late.
        assert_eq!(g.arm(&car, Some("2468"), t0), Ok(()));
        let late = t0 + ARMED_FOR + Duration::from_millis(1);
        assert_eq!(
            g.admit(&car, &Command::Unlock, None, late),
            Err(Refusal::WrongPin)
        );
        // Armed for one vehicle only; a code in the payload is checked even when armed.
        assert_eq!(g.arm(&car, Some("2468"), t0), Ok(()));
        assert_eq!(
            g.admit(&vid("other"), &Command::Unlock, None, t0),
            Err(Refusal::WrongPin)
        );
        assert_eq!(
            g.admit(&car, &Command::Unlock, Some("0000"), t0),
            Err(Refusal::WrongPin)
        );
        g.forget(&car);
        assert_eq!(
            g.admit(&car, &Command::Unlock, None, t0),
            Err(Refusal::WrongPin),
            "forgotten"
        );
    }

    #[test]
    fn a_vehicle_queues_the_running_command_and_queue_more_and_a_final_outcome_frees_one() {
        let (mut g, car, bike) = (gate(), vid("car"), vid("bike"));
        let (t0, horn) = (Instant::now(), Command::Horn);
        for _ in 0..3 {
            assert_eq!(
                g.enqueue(&car, &horn, t0),
                Ok(()),
                "one running, two waiting"
            );
        }
        assert_eq!(g.enqueue(&car, &horn, t0), Err(Refusal::QueueFull));
        assert_eq!(g.enqueue(&bike, &horn, t0), Ok(()), "per vehicle");
        g.finished(&car, &horn);
        assert_eq!(g.enqueue(&car, &horn, t0), Ok(()));
        assert_eq!(g.enqueue(&car, &horn, t0), Err(Refusal::QueueFull));
        g.forget(&car);
        assert_eq!(
            g.enqueue(&car, &horn, t0),
            Ok(()),
            "a forgotten vehicle starts empty"
        );
        g.finished(&bike, &horn);
        g.finished(&bike, &horn);
        assert!(
            !g.in_flight.contains_key(&bike),
            "more outcomes than commands leave nothing"
        );
    }

    #[test]
    fn the_lock_shows_its_transition_until_the_command_ends() {
        let (mut g, car) = (gate(), vid("car"));
        assert_eq!(g.pending_lock(&car), None);
        g.lock_pending(&car, crate::model::lock_state::UNLOCKING);
        assert_eq!(
            g.pending_lock(&car),
            Some(crate::model::lock_state::UNLOCKING)
        );
        assert!(g.lock_done(&car));
        assert!(!g.lock_done(&car), "once");
        g.lock_pending(&car, crate::model::lock_state::LOCKING);
        g.forget(&car);
        assert_eq!(g.pending_lock(&car), None);
    }

    #[test]
    fn a_refresh_runs_once_per_gap_and_never_beside_another() {
        let (mut g, car, bike) = (gate(), vid("car"), vid("bike"));
        let t0 = Instant::now();
        let refresh = Command::Refresh;
        assert_eq!(g.enqueue(&car, &refresh, t0), Ok(()));
        let later = t0 + Duration::from_secs(45);
        assert_eq!(
            g.enqueue(&car, &refresh, later),
            Err(Refusal::RefreshRunning),
            "past the gap, but the first still runs"
        );
        assert_eq!(g.enqueue(&bike, &refresh, t0), Ok(()), "per vehicle");
        assert_eq!(
            g.enqueue(&car, &Command::Horn, t0),
            Ok(()),
            "other commands queue"
        );
        g.finished(&car, &refresh);
        let soon = t0 + Duration::from_secs(10);
        assert_eq!(
            g.enqueue(&car, &refresh, soon),
            Err(Refusal::RefreshTooSoon(10, 30))
        );
        assert_eq!(
            Refusal::RefreshTooSoon(10, 30).to_string(),
            "refreshed 10 s ago: bridge.refresh_min_gap is 30 s"
        );
        assert_eq!(
            g.enqueue(&car, &refresh, t0 + Duration::from_secs(30)),
            Ok(())
        );
        g.forget(&car);
        assert_eq!(
            g.enqueue(&car, &refresh, t0 + Duration::from_secs(31)),
            Ok(())
        );
    }
}
