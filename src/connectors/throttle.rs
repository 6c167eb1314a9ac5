//! One guard against guessing (device ids at registration, passwords at login), kept per
//! address block (`address_block`: a /24 or /64, so rotating addresses of one block is
//! still one peer) in one bounded table:
//! - attempts as a token bucket (`budget`): `burst` at once, then `per_second`;
//! - failures make the block's next attempt wait 0.25 s, doubling to 8 s, while the last
//!   failure is under 15 minutes old; a success clears them;
//! - `one_at_a_time`: parallel attempts of a block wait their turn, so the delay grows
//!   with every failure instead of being shared by attempts side by side.
//!
//! The throttle never sees an id: a known id and an unknown one wait alike, so timing
//! tells a guesser nothing. The table holds at most `TABLE_MAX` blocks; when it is full,
//! only blocks that carry nothing (budget refilled, at most one failure or none recent,
//! no attempt running) give way, so a flood of new addresses cannot wash out a repeat
//! offender. A newcomer that finds no room is not tracked and waits the longest wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::address_block;

/// Blocks remembered at most.
const TABLE_MAX: usize = 10_000;
/// Failures count for this long after the last one.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
const FIRST_FAILURE_DELAY: Duration = Duration::from_millis(250);
/// 0.25 s doubled five times.
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(8);

/// A token bucket: `burst` attempts at once, then `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub per_second: f64,
    pub burst: f64,
}

pub struct GuessThrottle {
    budget: Option<Budget>,
    one_at_a_time: bool,
    blocks: Mutex<HashMap<IpAddr, Block>>,
}

struct Block {
    tokens: f64,
    tokens_at: Instant,
    failures: u32,
    failed_at: Instant,
    /// Held by the block's attempt in flight (`one_at_a_time`); queued on by the others.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// The wait an attempt would have passed its caller's limit: it is not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the attempt would wait {0:?}")]
pub struct TooLong(pub Duration);

/// One attempt, admitted: report how it went (or drop it: nothing is recorded). Ends
/// the block's turn when it goes.
pub struct Attempt<'a> {
    throttle: &'a GuessThrottle,
    ip: IpAddr,
    waited: Duration,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Attempt<'_> {
    /// How long the throttle held this attempt back.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    pub fn failed(self) {
        self.throttle.failed(self.ip, Instant::now());
    }

    pub fn succeeded(self) {
        self.throttle.succeeded(self.ip);
    }
}

impl GuessThrottle {
    /// Registrations: a token bucket, failures only as reported.
    pub fn with_budget(per_second: f64, burst: f64) -> GuessThrottle {
        GuessThrottle::new(
            Some(Budget {
                per_second: per_second.max(0.1),
                burst: burst.max(1.0),
            }),
            false,
        )
    }

    /// Logins: no bucket, one attempt per block at a time, failures slow the next.
    pub fn one_at_a_time() -> GuessThrottle {
        GuessThrottle::new(None, true)
    }

    fn new(budget: Option<Budget>, one_at_a_time: bool) -> GuessThrottle {
        GuessThrottle {
            budget,
            one_at_a_time,
            blocks: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for `ip`'s turn (its block's attempt in flight, if one at a time) and then
    /// for what its budget and failures ask; `TooLong` at once, without waiting, when
    /// that would be longer than `max_wait`.
    pub async fn attempt(&self, ip: IpAddr, max_wait: Duration) -> Result<Attempt<'_>, TooLong> {
        let turn = match self.one_at_a_time {
            true => match self.turn(ip, Instant::now()) {
                Some(turn) => Some(turn.lock_owned().await),
                None => None,
            },
            false => None,
        };
        let wait = self.reserve(ip, Instant::now());
        if wait > max_wait {
            return Err(TooLong(wait));
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(Attempt {
            throttle: self,
            ip,
            waited: wait,
            _turn: turn,
        })
    }

    /// The turn `ip`'s block's attempts queue on; `None` when the table has no room.
    fn turn(&self, ip: IpAddr, now: Instant) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut blocks = self.blocks.lock().ok()?;
        self.block(&mut blocks, ip, now).map(|b| b.turn.clone())
    }

    /// Takes one attempt for `ip`'s block: how long it must wait (the later of its
    /// budget's and its failures' waits; zero when neither holds it back).
    fn reserve(&self, ip: IpAddr, now: Instant) -> Duration {
        let Ok(mut blocks) = self.blocks.lock() else {
            return self.longest_wait();
        };
        let Some(block) = self.block(&mut blocks, ip, now) else {
            return self.longest_wait();
        };
        let mut wait = failure_delay(block, now);
        if let Some(budget) = self.budget {
            block.tokens = refilled(block, budget, now) - 1.0;
            block.tokens_at = now;
            if block.tokens < 0.0 {
                wait = wait.max(Duration::from_secs_f64(-block.tokens / budget.per_second));
            }
        }
        wait
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let Ok(mut blocks) = self.blocks.lock() else {
            return;
        };
        // No room: every block is a repeat offender; the newcomer is not recorded.
        let Some(block) = self.block(&mut blocks, ip, now) else {
            return;
        };
        if now.saturating_duration_since(block.failed_at) >= FAILURE_WINDOW {
            block.failures = 0;
        }
        block.failures = block.failures.saturating_add(1);
        block.failed_at = now;
    }

    fn succeeded(&self, ip: IpAddr) {
        if let Ok(mut blocks) = self.blocks.lock() {
            if let Some(block) = blocks.get_mut(&address_block(ip)) {
                block.failures = 0;
            }
        }
    }

    /// What an untracked attempt waits: as long as a tracked one ever does.
    fn longest_wait(&self) -> Duration {
        match self.budget {
            Some(budget) => Duration::from_secs_f64(1.0 / budget.per_second),
            None => MAX_FAILURE_DELAY,
        }
    }

    /// `ip`'s block, made when new; `None` when the table is full of blocks that
    /// carry something.
    fn block<'t>(
        &self,
        blocks: &'t mut HashMap<IpAddr, Block>,
        ip: IpAddr,
        now: Instant,
    ) -> Option<&'t mut Block> {
        let key = address_block(ip);
        if !blocks.contains_key(&key) && blocks.len() >= TABLE_MAX {
            blocks.retain(|_, b| !self.carries_nothing(b, now));
            if blocks.len() >= TABLE_MAX {
                return None;
            }
        }
        let burst = self.budget.map_or(0.0, |b| b.burst);
        Some(blocks.entry(key).or_insert_with(|| Block {
            tokens: burst,
            tokens_at: now,
            failures: 0,
            failed_at: now,
            turn: Arc::default(),
        }))
    }

    /// Whether forgetting `block` loses nothing worth keeping.
    fn carries_nothing(&self, block: &Block, now: Instant) -> bool {
        let refilled = self
            .budget
            .is_none_or(|budget| refilled(block, budget, now) >= budget.burst);
        let no_offender =
            block.failures <= 1 || now.saturating_duration_since(block.failed_at) >= FAILURE_WINDOW;
        let idle = Arc::strong_count(&block.turn) == 1;
        refilled && no_offender && idle
    }
}

fn refilled(block: &Block, budget: Budget, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(block.tokens_at).as_secs_f64();
    (block.tokens + elapsed * budget.per_second).min(budget.burst)
}

fn failure_delay(block: &Block, now: Instant) -> Duration {
    if block.failures == 0 || now.saturating_duration_since(block.failed_at) >= FAILURE_WINDOW {
        return Duration::ZERO;
    }
    (FIRST_FAILURE_DELAY * (1 << (block.failures - 1).min(5))).min(MAX_FAILURE_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_budget_allows_a_burst_then_paces_every_block_alike() {
        let t = GuessThrottle::with_budget(10.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(t.reserve(ip("10.0.0.1"), t0).is_zero(), "within the burst");
        }
        let wait = t.reserve(ip("10.0.0.77"), t0);
        assert!(
            (wait.as_secs_f64() - 0.1).abs() < 1e-6,
            "{wait:?}: same block"
        );
        let wait = t.reserve(ip("10.0.0.1"), t0);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}: queued");
        assert!(t.reserve(ip("10.0.1.1"), t0).is_zero(), "another block");
        assert!(t
            .reserve(ip("10.0.0.1"), t0 + Duration::from_secs(10))
            .is_zero());
    }

    #[test]
    fn failures_double_the_wait_to_8_s_and_a_success_clears_them() {
        let t = GuessThrottle::one_at_a_time();
        let (a, t0) = (ip("10.1.2.3"), Instant::now());
        assert_eq!(t.reserve(a, t0), Duration::ZERO);
        t.failed(a, t0);
        assert_eq!(t.reserve(a, t0), ms(250));
        t.failed(a, t0);
        t.failed(a, t0);
        assert_eq!(t.reserve(a, t0), ms(1000));
        for _ in 0..20 {
            t.failed(a, t0);
        }
        assert_eq!(t.reserve(a, t0), ms(8000));
        assert_eq!(t.reserve(ip("10.1.2.200"), t0), ms(8000), "same /24");
        assert_eq!(t.reserve(ip("10.1.3.1"), t0), Duration::ZERO, "another /24");
        t.succeeded(a);
        assert_eq!(t.reserve(a, t0), Duration::ZERO);
    }

    #[test]
    fn failures_are_forgotten_15_minutes_after_the_last() {
        let t = GuessThrottle::one_at_a_time();
        let (a, t0) = (ip("2001:db8::1"), Instant::now());
        for _ in 0..6 {
            t.failed(a, t0);
        }
        let later = t0 + FAILURE_WINDOW - ms(1);
        assert_eq!(t.reserve(ip("2001:db8::ffff"), later), ms(8000), "same /64");
        let after = t0 + FAILURE_WINDOW;
        assert_eq!(t.reserve(a, after), Duration::ZERO);
        t.failed(a, after);
        assert_eq!(t.reserve(a, after), ms(250), "counting starts again");
    }

    #[test]
    fn a_flood_of_new_blocks_cannot_wash_out_a_repeat_offender() {
        let t = GuessThrottle::one_at_a_time();
        let (offender, t0) = (ip("192.0.2.1"), Instant::now());
        t.failed(offender, t0);
        t.failed(offender, t0);
        for n in 0..(TABLE_MAX as u32 * 2) {
            let flood = IpAddr::from(std::net::Ipv4Addr::from((10 << 24) | (n << 8)));
            t.failed(flood, t0);
        }
        assert!(t.blocks.lock().unwrap().len() <= TABLE_MAX, "bounded");
        assert_eq!(t.reserve(offender, t0), ms(500), "still remembered");
    }

    #[test]
    fn a_newcomer_that_finds_no_room_waits_the_longest_wait() {
        let t = GuessThrottle::with_budget(10.0, 3.0);
        let t0 = Instant::now();
        for n in 0..TABLE_MAX as u32 {
            let busy = IpAddr::from(std::net::Ipv4Addr::from((10 << 24) | (n << 8)));
            t.reserve(busy, t0); // not refilled yet: kept
        }
        assert_eq!(
            t.reserve(ip("192.0.2.1"), t0),
            ms(100),
            "one refill interval"
        );
        let refilled = t0 + Duration::from_secs(1);
        assert!(t.reserve(ip("192.0.2.1"), refilled).is_zero(), "room again");
        assert!(t.blocks.lock().unwrap().len() <= TABLE_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_per_block_at_a_time() {
        let t = GuessThrottle::one_at_a_time();
        let (a, long) = (ip("10.0.0.1"), Duration::from_secs(60));
        let first = t.attempt(a, long).await.unwrap();
        let second = t.attempt(ip("10.0.0.2"), long);
        tokio::pin!(second);
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "waits for the first of its block"
        );
        let other = t.attempt(ip("10.9.9.9"), long).await;
        assert!(other.is_ok(), "another block does not wait");
        first.failed();
        let second = second.await.unwrap();
        assert_eq!(second.waited(), ms(250), "and then sits out the failure");
        second.failed();
        let refused = t.attempt(ip("10.0.0.3"), ms(100)).await.err();
        assert_eq!(refused, Some(TooLong(ms(500))), "over the caller's limit");
    }
}
