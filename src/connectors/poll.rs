//! The cloud poll runtime shared by the connectors that poll a cloud per vehicle
//! (xchanger, iauto360), without I/O: when each vehicle is read next (a jittered
//! interval, the active one while it moves or a command waits, back-off while the cloud
//! struggles, quick confirming reads after a command), when it shows offline, and the
//! account-wide hold that one struggling cloud puts on every vehicle's reads. Each
//! connector's loop awaits `Schedule::due` and its own queues; what a poll reads stays
//! with its protocol.

use std::time::Duration;

use tokio::time::Instant;

/// Polls failed in a row before a polled (cloud) vehicle is shown offline.
pub(crate) const OFFLINE_AFTER: u32 = 3;

/// Re-reads after the cloud accepted a command, whatever the polling intervals: a car
/// reports within seconds (an xchanger unlock showed at +1.5 s), so confirmation starts
/// soon and backs off; the last step repeats until the bridge's `command_timeout`. About
/// seven reads a minute for one vehicle, and the account-wide hold still applies.
pub const CONFIRM_AFTER: [Duration; 6] = [
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(5),
    Duration::from_secs(8),
    Duration::from_secs(13),
    Duration::from_secs(15),
];

/// ±10 %, so that many vehicles (or bridges) do not poll in step.
pub(crate) fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// The wait after `failures` (≥ 1) transient failures in a row: `base`, 2×, 4×… up to
/// 30 minutes.
pub(crate) fn poll_backoff(base: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.saturating_sub(1).min(12))
        .min(Duration::from_secs(30 * 60))
}

/// A vehicle's two reading paces.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    /// Parked.
    pub idle: Duration,
    /// Moving, or a command waiting for its outcome.
    pub active: Duration,
}

/// What the next read should be, after one ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Idle,
    Active,
    /// The cloud struggled (timeout, 5xx, rate limit): back off by the failures so far.
    BackOff,
    /// A command waits for a read that shows it done: the next step of `CONFIRM_AFTER`.
    Confirm,
}

/// One vehicle's reads: when the next is due, and how many failed in a row.
#[derive(Debug)]
pub struct Schedule {
    due: Instant,
    failures: u32,
    confirm_reads: usize,
    /// What the last plan was (the `polling_phase` sensor starts from it).
    planned: Next,
}

impl Schedule {
    pub fn starting(at: Instant) -> Schedule {
        Schedule {
            due: at,
            failures: 0,
            confirm_reads: 0,
            planned: Next::Idle,
        }
    }

    /// A fleet of `fleet` vehicles spreads its first reads (50 ms per vehicle, at most
    /// half an interval) instead of calling for every one at once; a single vehicle
    /// starts at once. `share` (0..1) places this vehicle in the spread.
    pub fn spread(fleet: usize, interval: Duration, share: f64, now: Instant) -> Schedule {
        let fleet = u32::try_from(fleet).unwrap_or(u32::MAX);
        let spread = (interval / 2).min(Duration::from_millis(50).saturating_mul(fleet));
        Schedule::starting(now + spread.mul_f64(share.clamp(0.0, 1.0)))
    }

    pub fn due(&self) -> Instant {
        self.due
    }

    /// Reads that failed in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The cloud answered the read.
    pub fn answered(&mut self) {
        self.failures = 0;
    }

    /// The read failed; true once the vehicle should show offline.
    pub fn failed(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.failures >= OFFLINE_AFTER
    }

    /// The cloud accepted a command: read again soon, then at the following steps.
    pub fn command_accepted(&mut self, now: Instant) {
        self.confirm_reads = 0;
        self.plan(Next::Confirm, Intervals::ZERO, now);
    }

    /// A refresh: read now, then confirm at the following steps.
    pub fn read_now(&mut self, now: Instant) {
        self.confirm_reads = 0;
        self.planned = Next::Confirm;
        self.due = now;
    }

    /// Confirming reads made since the command or refresh.
    pub fn confirm_reads(&self) -> usize {
        self.confirm_reads
    }

    /// What the last plan was.
    pub fn planned(&self) -> Next {
        self.planned
    }

    /// The read is moved to `due` (quiet hours, polling off), its plan kept.
    pub fn postpone(&mut self, due: Instant) {
        self.due = due;
    }

    /// Plans the next read after one ran at `now`.
    pub fn plan(&mut self, next: Next, intervals: Intervals, now: Instant) {
        self.planned = next;
        let wait = match next {
            Next::Idle => jitter(intervals.idle),
            Next::Active => jitter(intervals.active),
            Next::BackOff => jitter(poll_backoff(intervals.active, self.failures.max(1))),
            Next::Confirm => {
                let step = CONFIRM_AFTER[self.confirm_reads.min(CONFIRM_AFTER.len() - 1)];
                self.confirm_reads += 1;
                step
            }
        };
        self.due = now + wait;
    }
}

impl Intervals {
    const ZERO: Intervals = Intervals {
        idle: Duration::ZERO,
        active: Duration::ZERO,
    };
}

/// Account-wide back-off: a 429 or 5xx for one vehicle slows every read of the account.
#[derive(Debug, Default)]
pub struct Hold {
    failures: u32,
    until: Option<Instant>,
}

impl Hold {
    /// The cloud answered (even with an error): it is not struggling.
    pub fn clear(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// The cloud struggled: every read waits until the returned time (`base` doubled
    /// per failure in a row and jittered, but never less than what the cloud asked for).
    pub fn struggled(
        &mut self,
        base: Duration,
        at_least: Option<Duration>,
        now: Instant,
    ) -> Instant {
        self.failures = self.failures.saturating_add(1);
        // Jitter first: a cloud's Retry-After is a floor, never shortened by 10 %.
        let delay = jitter(poll_backoff(base, self.failures)).max(at_least.unwrap_or_default());
        let until = now + delay;
        self.until = Some(until);
        until
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// When reads may go on, while held.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|u| *u > now)
    }

    /// When a read planned for `due` may run.
    pub fn due(&self, due: Instant, now: Instant) -> Instant {
        self.until(now).map_or(due, |u| u.max(due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: Intervals = Intervals {
        idle: Duration::from_secs(600),
        active: Duration::from_secs(60),
    };

    fn within(d: Duration, base: Duration) -> bool {
        d >= base.mul_f64(0.9) && d <= base.mul_f64(1.1)
    }

    #[test]
    fn reads_follow_the_pace_back_off_and_confirm_commands() {
        let now = Instant::now();
        let mut s = Schedule::starting(now);
        s.plan(Next::Idle, PACE, now);
        assert!(within(s.due() - now, PACE.idle));
        s.plan(Next::Active, PACE, now);
        assert!(within(s.due() - now, PACE.active));
        // Failures double the wait: 60, 120, 240 s (±10 %); three make it offline.
        assert!(!s.failed());
        s.plan(Next::BackOff, PACE, now);
        assert!(within(s.due() - now, PACE.active));
        assert!(!s.failed());
        s.plan(Next::BackOff, PACE, now);
        assert!(within(s.due() - now, PACE.active * 2));
        assert!(s.failed(), "offline after {OFFLINE_AFTER}");
        s.plan(Next::BackOff, PACE, now);
        assert!(within(s.due() - now, PACE.active * 4));
        s.answered();
        assert_eq!(s.failures(), 0);
        // A command: 2, 3, 5, 8, 13, 15, 15 s, unjittered.
        s.command_accepted(now);
        let mut steps = vec![s.due() - now];
        for _ in 0..6 {
            s.plan(Next::Confirm, PACE, now);
            steps.push(s.due() - now);
        }
        let secs: Vec<u64> = steps.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 3, 5, 8, 13, 15, 15]);
        // The next command starts over.
        s.command_accepted(now);
        assert_eq!(s.due() - now, Duration::from_secs(2));
    }

    #[test]
    fn a_fleet_spreads_its_first_reads_and_one_vehicle_starts_at_once() {
        let now = Instant::now();
        let one = Schedule::spread(1, PACE.idle, 1.0, now);
        assert_eq!(one.due() - now, Duration::from_millis(50));
        let last = Schedule::spread(1000, PACE.idle, 1.0, now);
        assert_eq!(last.due() - now, Duration::from_secs(50));
        let huge = Schedule::spread(100_000, PACE.idle, 1.0, now);
        assert_eq!(huge.due() - now, PACE.idle / 2, "at most half an interval");
    }

    #[test]
    fn a_struggling_cloud_holds_every_read_of_the_account() {
        let now = Instant::now();
        let mut hold = Hold::default();
        assert_eq!(hold.due(now, now), now);
        let until = hold.struggled(Duration::from_secs(60), None, now);
        assert!(within(until - now, Duration::from_secs(60)));
        assert_eq!(hold.due(now, now), until, "a read due now waits");
        let later = now + Duration::from_secs(3600);
        assert_eq!(
            hold.due(later, now),
            later,
            "a read due later keeps its time"
        );
        // Retry-After wins when longer.
        let until = hold.struggled(Duration::from_secs(60), Some(Duration::from_secs(900)), now);
        assert!(until - now >= Duration::from_secs(900));
        assert_eq!(hold.failures(), 2);
        hold.clear();
        assert_eq!(hold.until(now), None);
    }
}
