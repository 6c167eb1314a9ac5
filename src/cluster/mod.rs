//! Several bridges on one base topic (docs/cluster.md), without I/O: the hub feeds it
//! what the broker says (instance states, heartbeats, vehicle claims, results) and the
//! time, and asks it who speaks for a vehicle, who answers a command and which cloud
//! accounts this instance may poll.
//!
//! - Members: the instances whose heartbeat was heard within `lease_ttl`, unless their
//!   `<base>/bridge/<id>/state` said `offline` (their last will, or a clean stop) after it.
//!   Heartbeats carry liveness, not retained states: a broker node that dies takes its
//!   clients' wills with it, and NATS was seen not to bring a retained `online` live
//!   (docs/cluster-brokers.md, tests/cluster_nats.rs). This instance is always a member.
//! - A TCP-linked vehicle belongs to the instance holding its proven link; a cloud
//!   account's vehicles to the instance polling the account. Each claim is retained on
//!   `<base>/<vehicle>/owner`; the newest claim wins, and an older holder yields.
//! - A cloud account is polled by its rendezvous home among the members, taken over only
//!   after `settle` (the one losing it stops at once), and never by an instance that has
//!   not heard its own heartbeat back for `lease_ttl` (fenced).

pub mod rendezvous;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::model::VehicleId;

/// An instance's cluster settings (the `[cluster]` section, once the hub runs on it).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This instance's name among the bridges on the base topic ([`valid_instance_id`]).
    pub instance_id: String,
    /// After the live instances change, how long before one takes over a cloud account
    /// (the one losing it stops at once).
    pub settle: Duration,
    /// An instance that has not heard its own heartbeat back for this long stops polling
    /// (fences itself): shorter than [`WILL_AFTER`] + `settle`, the time the others need
    /// to see it dead and wait.
    pub lease_ttl: Duration,
}

/// When the broker publishes a dead instance's will: 1.5 × the 30 s keepalive.
pub const WILL_AFTER: Duration = Duration::from_secs(45);
/// How often an instance sends itself a heartbeat through the broker.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// Claims remembered at most (any client that may publish on the base topic could
/// otherwise grow the map without end).
const MAX_CLAIMS: usize = 200_000;
/// Members remembered at most.
const MAX_MEMBERS: usize = 1_000;
/// Command ids remembered, cluster-wide, so a repeated id runs once.
const SEEN_IDS: usize = 16_384;
/// After its first connection, how long an instance listens before it claims anything:
/// long enough to hear a second instance with its id (which would otherwise take the
/// vehicles from the first, then stop).
pub const PROBATION: Duration = Duration::from_millis(2500 + BEAT_EVERY.as_millis() as u64);
/// How long a home waits before it answers a command `failed: offline`: a result from the
/// owner meanwhile (one whose claim this instance missed) silences it.
pub const HOME_ANSWER_AFTER: Duration = Duration::from_secs(1);
/// Home answers waiting at most.
const MAX_HOME_ANSWERS: usize = 10_000;
/// A claim dated further ahead than this is refused (a wrong clock, or forged).
const MAX_CLOCK_AHEAD: chrono::Duration = chrono::Duration::seconds(60);

/// A vehicle's owner as retained on `<base>/<vehicle>/owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub instance: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("not JSON with `instance` and `since`")]
    Malformed,
    #[error("`instance` is not an instance id")]
    BadInstance,
    #[error("`since` is not an RFC 3339 time")]
    BadSince,
}

impl Claim {
    /// An owner message: `None` when it clears the topic (an empty payload).
    pub fn parse(payload: &[u8]) -> Result<Option<Claim>, ClaimError> {
        if payload.is_empty() {
            return Ok(None);
        }
        #[derive(serde::Deserialize)]
        struct Wire {
            instance: String,
            since: String,
        }
        let wire: Wire = serde_json::from_slice(payload).map_err(|_| ClaimError::Malformed)?;
        if !valid_instance_id(&wire.instance) {
            return Err(ClaimError::BadInstance);
        }
        let since = DateTime::parse_from_rfc3339(&wire.since)
            .map_err(|_| ClaimError::BadSince)?
            .with_timezone(&Utc);
        Ok(Some(Claim {
            instance: wire.instance,
            since,
        }))
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "instance": self.instance,
            "since": self.since.to_rfc3339_opts(SecondsFormat::Millis, true),
        })
        .to_string()
    }

    /// Whether this claim overrides `other`: later, or as late and the greater id (so
    /// every instance orders two claims alike).
    fn newer_than(&self, other: &Claim) -> bool {
        (self.since, &self.instance) > (other.since, &other.instance)
    }
}

/// Letters, digits, `-`, `_`; 1 to 32 of them.
pub fn valid_instance_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Who answers a command for a vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answerer {
    /// This instance owns the vehicle: it runs the command.
    Owner,
    /// Nobody owns it and this instance is its rendezvous home: it answers `offline`.
    Home,
    /// Another instance (its owner, or its home).
    Elsewhere,
}

/// What a claim seen on the broker means here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Nothing,
    /// Another instance claimed a vehicle this one holds: let it go.
    Yield {
        to: String,
    },
    /// A claim naming this instance for a vehicle it does not hold (left by an earlier
    /// run): to be cleared, so the others stop sending it there.
    StaleOwnClaim,
    /// The owner topic of a vehicle this instance holds names an older or no owner (a
    /// claim republished by an instance that came back, a cleared topic, a forgery): to
    /// publish this instance's claim again, so every instance ends agreeing.
    Reassert(Claim),
}

/// Counters shown on `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterCounters {
    pub claims_refused: u64,
    pub yields: u64,
    pub repeated_ids: u64,
    pub orphans_marked: u64,
}

pub struct Cluster {
    me: String,
    /// This run's heartbeat: a random id and the start time (ms since 1970). Another on
    /// our beat topic is a second instance with this id; the later started one goes.
    incarnation: String,
    started_ms: i64,
    settle: Duration,
    lease_ttl: Duration,
    /// Instance → online, as their retained states say.
    members: BTreeMap<String, (bool, Instant)>,
    /// Instance → when its heartbeat was last heard.
    beats: HashMap<String, Instant>,
    /// The live members as last worked out (`refresh`).
    live: std::collections::BTreeSet<String>,
    /// When the live members last changed (or this instance connected).
    changed_at: Instant,
    /// The newest claim seen per vehicle.
    claims: HashMap<String, Claim>,
    /// The vehicles this instance holds, and since when.
    mine: HashMap<VehicleId, Claim>,
    /// Vehicles whose owner died or let them go, since when: after `settle` their home
    /// marks them offline unless someone claimed them.
    orphans: HashMap<String, Instant>,
    /// The last heartbeat of ours the broker sent back, and when we sent one.
    last_contact: Option<Instant>,
    last_beat: Option<Instant>,
    /// Heartbeats sent and when, by sequence number: the lease runs from when the one
    /// that came back was sent, not from when it was read.
    sent_beats: VecDeque<(u64, Instant)>,
    next_beat: u64,
    /// Contact came back after a fence: what this instance owns is shown again.
    recovered: bool,
    /// The live members and fence as last reported (`news`).
    reported: Option<(Vec<String>, bool)>,
    /// The cloud account of each connector (by index), and whether it may be polled here.
    accounts: Vec<Option<String>>,
    permits: Vec<bool>,
    seen_ids: HashSet<(String, String)>,
    seen_order: VecDeque<(String, String)>,
    /// Another live instance runs with this id.
    duplicate: bool,
    /// Commands this instance is to answer `offline` as their vehicle's home, unless the
    /// owner answers first: (when, vehicle, id, what).
    home_answers: VecDeque<(Instant, String, String, String)>,
    /// Fenced at the last look: contact coming back restarts `settle`.
    was_fenced: bool,
    /// Until when claims wait (from the first connection), and the vehicles waiting.
    probation_until: Option<Instant>,
    deferred: HashSet<VehicleId>,
    /// Claims naming this instance seen on probation: cleared after it unless this is a
    /// second instance of the id (whose twin holds them).
    stale_own: HashSet<String>,
    /// Vehicles claimed whose first report here is still to come: their discovery waits
    /// for it (a device's identity comes with its first report, and a document built
    /// without it would differ from the one its last owner left).
    fresh: HashSet<VehicleId>,
    pub counters: ClusterCounters,
}

impl Cluster {
    pub fn new(config: &ClusterConfig, accounts: Vec<Option<String>>, now: Instant) -> Cluster {
        let permits = vec![false; accounts.len()];
        let started_ms = Utc::now().timestamp_millis();
        Cluster {
            me: config.instance_id.clone(),
            incarnation: format!("{:016x} {started_ms}", rand::random::<u64>()),
            started_ms,
            settle: config.settle,
            lease_ttl: config.lease_ttl,
            members: BTreeMap::new(),
            beats: HashMap::new(),
            live: Default::default(),
            changed_at: now,
            claims: HashMap::new(),
            mine: HashMap::new(),
            orphans: HashMap::new(),
            last_contact: None,
            last_beat: None,
            sent_beats: VecDeque::new(),
            next_beat: 0,
            recovered: false,
            reported: None,
            accounts,
            permits,
            seen_ids: HashSet::new(),
            seen_order: VecDeque::new(),
            duplicate: false,
            was_fenced: false,
            home_answers: VecDeque::new(),
            probation_until: None,
            deferred: HashSet::new(),
            stale_own: HashSet::new(),
            fresh: HashSet::new(),
            counters: ClusterCounters::default(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The live members, this instance among them once its own state came back.
    pub fn live(&self) -> impl Iterator<Item = &str> {
        self.live.iter().map(|id| id.as_str())
    }

    fn is_live(&self, id: &str) -> bool {
        self.live.contains(id)
    }

    /// Works the live members out again (states, and heartbeats within `lease_ttl`); a
    /// change restarts `settle`, and the vehicles of a member gone wait for their home.
    pub fn refresh(&mut self, now: Instant) {
        // A member is live while its heartbeat comes, unless its state said `offline` (its
        // will, or a clean stop) after its last heartbeat. Heartbeats, not retained states,
        // carry liveness: a broker can fail to bring a retained message live (NATS, seen in
        // tests/cluster_nats.rs), and a dead node loses its clients' wills.
        let lease = self.lease_ttl;
        let mut live: std::collections::BTreeSet<String> = self
            .beats
            .iter()
            .filter(|(id, at)| {
                let stopped = self
                    .members
                    .get(*id)
                    .is_some_and(|(online, since)| !*online && since >= *at);
                now.saturating_duration_since(**at) <= lease && !stopped
            })
            .map(|(id, _)| id.clone())
            .collect();
        live.insert(self.me.clone());
        if live == self.live {
            return;
        }
        self.changed_at = now;
        for gone in self.live.difference(&live) {
            for (vehicle, claim) in &self.claims {
                if claim.instance == *gone {
                    self.orphans.insert(vehicle.clone(), now);
                }
            }
        }
        self.live = live;
    }

    /// The rendezvous home of `key` among the live members.
    pub fn home(&self, key: &str) -> Option<&str> {
        rendezvous::home(self.live(), key)
    }

    /// Whether this instance is the only live one (its will is then the cluster's).
    pub fn alone(&self) -> bool {
        self.live().all(|id| id == self.me)
    }

    /// Connected to the broker (again): the membership is being learnt anew.
    pub fn connected(&mut self, now: Instant) {
        self.changed_at = now;
        self.probation_until.get_or_insert(now + PROBATION);
    }

    fn on_probation(&self, now: Instant) -> bool {
        self.probation_until.is_none_or(|until| now < until)
    }

    /// The vehicles claimed during probation, once it is over (and no duplicate was
    /// heard): to claim now.
    pub fn due_claims(&mut self, now: Instant) -> Vec<VehicleId> {
        if self.on_probation(now) || self.duplicate {
            return Vec::new();
        }
        self.deferred.drain().collect()
    }

    /// `<base>/bridge/<id>/state` arrived. Returns whether the live members changed.
    pub fn on_member_state(&mut self, id: &str, payload: &[u8], now: Instant) -> bool {
        if !valid_instance_id(id) {
            return false;
        }
        let online = payload == b"online";
        if !self.members.contains_key(id) && self.members.len() >= MAX_MEMBERS {
            // Full (of forgeries, or of instances long gone): one offline makes room.
            let Some(gone) = self
                .members
                .iter()
                .find(|(m, (on, _))| !*on && **m != self.me)
                .map(|(m, _)| m.clone())
            else {
                return false;
            };
            self.members.remove(&gone);
        }
        self.members.insert(id.to_string(), (online, now));
        let before = self.live.clone();
        self.refresh(now);
        before != self.live
    }

    /// A heartbeat on `<base>/bridge/<from>/beat` (`payload`: its sender's incarnation).
    /// Ours coming back proves the broker hears us; ours with a foreign incarnation of an
    /// instance started earlier means this one is the second with this id (the earlier
    /// one stays); another's keeps it live.
    pub fn on_beat(&mut self, from: &str, payload: &[u8], now: Instant) {
        if from == self.me {
            let text = std::str::from_utf8(payload).unwrap_or_default();
            let mut parts = text.split(' ');
            let (nonce, started, seq) = (parts.next(), parts.next(), parts.next());
            let started = started.and_then(|s| s.parse::<i64>().ok());
            let (Some(nonce), Some(started)) = (nonce, started) else {
                return;
            };
            if nonce == self.nonce() && started == self.started_ms {
                // Ours: contact as of when it was sent (a heartbeat read late proves no
                // more than that).
                let sent_at = match seq.and_then(|s| s.parse::<u64>().ok()) {
                    Some(seq) => self
                        .sent_beats
                        .iter()
                        .find(|(n, _)| *n == seq)
                        .map(|(_, at)| *at),
                    None => Some(now),
                };
                if let Some(at) = sent_at {
                    self.last_contact = Some(self.last_contact.map_or(at, |c| c.max(at)));
                }
            } else {
                self.duplicate |= (started, nonce) < (self.started_ms, self.nonce());
            }
            return;
        }
        if !valid_instance_id(from) {
            return;
        }
        if !self.beats.contains_key(from) && self.beats.len() >= MAX_MEMBERS {
            // Full: the stalest beat, if it is older than the lease, makes room.
            let lease = self.lease_ttl;
            let Some(stale) = self
                .beats
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(**at) > lease)
                .min_by_key(|(_, at)| **at)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            self.beats.remove(&stale);
        }
        self.beats.insert(from.to_string(), now);
        self.refresh(now);
    }

    fn nonce(&self) -> &str {
        self.incarnation.split(' ').next().unwrap_or_default()
    }

    /// Whether another live instance, started earlier, uses this id.
    pub fn duplicate(&self) -> bool {
        self.duplicate
    }

    /// The heartbeat to publish on our beat topic, when one is due: the incarnation and a
    /// sequence number.
    pub fn beat(&mut self, now: Instant) -> Option<String> {
        let due = self
            .last_beat
            .is_none_or(|at| now.saturating_duration_since(at) >= BEAT_EVERY);
        if !due {
            return None;
        }
        self.last_beat = Some(now);
        self.next_beat += 1;
        if self.sent_beats.len() >= 64 {
            self.sent_beats.pop_front();
        }
        self.sent_beats.push_back((self.next_beat, now));
        Some(format!("{} {}", self.incarnation, self.next_beat))
    }

    /// The live members and whether this instance is fenced, when that changed since the
    /// last call (for the log).
    pub fn news(&mut self, now: Instant) -> Option<(Vec<String>, bool, usize)> {
        let now_seen = (
            self.live.iter().cloned().collect::<Vec<_>>(),
            self.fenced(now),
        );
        if self.reported.as_ref() == Some(&now_seen) {
            return None;
        }
        self.reported = Some(now_seen.clone());
        Some((now_seen.0, now_seen.1, self.orphans.len()))
    }

    /// Contact came back after a fence (once): what this instance owns is to be shown and
    /// claimed again, since the others may have marked it offline meanwhile.
    pub fn take_recovered(&mut self) -> bool {
        std::mem::take(&mut self.recovered)
    }

    /// Until when this instance may speak for its accounts: its last heartbeat heard back
    /// plus `lease_ttl` (`None`: never heard, or a second instance of the id).
    pub fn lease_until(&self) -> Option<Instant> {
        self.last_contact
            .filter(|_| !self.duplicate)
            .map(|at| at + self.lease_ttl)
    }

    /// Cut off from the broker for longer than `lease_ttl`.
    pub fn fenced(&self, now: Instant) -> bool {
        self.last_contact
            .is_none_or(|at| now.saturating_duration_since(at) > self.lease_ttl)
    }

    /// `<base>/<vehicle>/owner` arrived.
    pub fn on_claim(
        &mut self,
        vehicle: &str,
        payload: &[u8],
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Seen {
        // Only vehicle ids (bounded, and what the bridge itself publishes under).
        let Some(id) = VehicleId::new(vehicle).filter(|id| id.as_str() == vehicle) else {
            self.counters.claims_refused += 1;
            return Seen::Nothing;
        };
        let held = self.mine.get(&id).cloned();
        let claim = match Claim::parse(payload) {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                if let Some(mine) = held {
                    self.claims.insert(vehicle.to_string(), mine.clone());
                    return Seen::Reassert(mine);
                }
                if self.claims.remove(vehicle).is_some() {
                    self.orphans.insert(vehicle.to_string(), now);
                }
                return Seen::Nothing;
            }
            Err(_) => {
                self.counters.claims_refused += 1;
                return Seen::Nothing;
            }
        };
        if claim.since > wall + MAX_CLOCK_AHEAD {
            self.counters.claims_refused += 1;
            return Seen::Nothing;
        }
        if let Some(current) = self.claims.get(vehicle) {
            // An older claim arriving late; but a live instance's claim beats one by an
            // instance nobody hears, however new that says it is.
            let live_beats_dead = self.is_live(&claim.instance) && !self.is_live(&current.instance);
            if current.newer_than(&claim) && !live_beats_dead {
                return match held {
                    Some(mine) if claim.instance != self.me => Seen::Reassert(mine),
                    _ => Seen::Nothing,
                };
            }
        } else if self.claims.len() >= MAX_CLAIMS {
            self.counters.claims_refused += 1;
            return Seen::Nothing;
        }
        self.claims.insert(vehicle.to_string(), claim.clone());
        if self.is_live(&claim.instance) {
            self.orphans.remove(vehicle);
        } else {
            self.orphans.entry(vehicle.to_string()).or_insert(now);
        }
        match held {
            // Only to a live instance: a claim by one nobody hears (a forged one, or left
            // by an instance long gone) must not close a device's link here.
            Some(mine)
                if claim.instance != self.me
                    && claim.newer_than(&mine)
                    && self.is_live(&claim.instance) =>
            {
                self.counters.yields += 1;
                Seen::Yield { to: claim.instance }
            }
            // Newer, by an instance nobody hears: ours stands, and is said again.
            Some(mine) if claim.instance != self.me => {
                self.claims.insert(vehicle.to_string(), mine.clone());
                Seen::Reassert(mine)
            }
            None if claim.instance == self.me && self.on_probation(now) => {
                if self.stale_own.len() < MAX_CLAIMS {
                    self.stale_own.insert(vehicle.to_string());
                }
                Seen::Nothing
            }
            None if claim.instance == self.me && !self.duplicate => Seen::StaleOwnClaim,
            _ => Seen::Nothing,
        }
    }

    /// Claims naming this instance for vehicles it does not hold, seen on probation: to
    /// clear once probation is over (never by a second instance of the id).
    pub fn due_stale_claims(&mut self, now: Instant) -> Vec<String> {
        if self.on_probation(now) || self.duplicate {
            return Vec::new();
        }
        let pending: Vec<String> = self.stale_own.drain().collect();
        pending
            .into_iter()
            .filter(|v| {
                let still_ours = self.claims.get(v).is_some_and(|c| c.instance == self.me);
                let held = VehicleId::new(v).is_some_and(|id| self.mine.contains_key(&id));
                still_ours && !held
            })
            .collect()
    }

    /// This instance holds the vehicle now (a proven link, or its account's report). The
    /// claim to publish, when it is new.
    /// During probation the claim waits ([`Cluster::due_claims`]).
    pub fn claim(&mut self, id: &VehicleId, now: Instant, wall: DateTime<Utc>) -> Option<Claim> {
        if self.mine.contains_key(id) {
            return None;
        }
        if self.on_probation(now) || self.duplicate {
            if self.deferred.len() < MAX_CLAIMS {
                self.deferred.insert(id.clone());
            }
            return None;
        }
        // Newer than the claim it replaces even when this clock is behind that one's.
        let since = match self.claims.get(id.as_str()) {
            Some(current) => current
                .since
                .checked_add_signed(chrono::Duration::milliseconds(1))
                .map_or(wall, |after| wall.max(after)),
            None => wall,
        };
        let claim = Claim {
            instance: self.me.clone(),
            since,
        };
        self.mine.insert(id.clone(), claim.clone());
        self.fresh.insert(id.clone());
        self.claims.insert(id.to_string(), claim.clone());
        self.orphans.remove(id.as_str());
        Some(claim)
    }

    /// This instance let the vehicle go.
    /// Whether this is the vehicle's first report since this instance claimed it (asked
    /// once per report; true once).
    pub fn first_report(&mut self, id: &VehicleId) -> bool {
        self.fresh.remove(id)
    }

    pub fn release(&mut self, id: &VehicleId) {
        self.mine.remove(id);
        self.fresh.remove(id);
        self.deferred.remove(id);
    }

    pub fn owns(&self, id: &VehicleId) -> bool {
        self.mine.contains_key(id)
    }

    pub fn owned(&self) -> impl Iterator<Item = &VehicleId> {
        self.mine.keys()
    }

    /// The vehicles this instance holds, with their claims.
    pub fn owned_claims(&self) -> impl Iterator<Item = (&VehicleId, &Claim)> {
        self.mine.iter()
    }

    /// The cloud account of each connector, by index (`None`: not an account).
    pub fn set_accounts(&mut self, accounts: Vec<Option<String>>) {
        self.permits = vec![false; accounts.len()];
        self.accounts = accounts;
    }

    /// Who answers a command for `vehicle` (as the topic names it).
    /// Nobody answers as a home while on probation (until the others' heartbeats come,
    /// this instance would think itself home for every vehicle), while fenced, or while the
    /// members are changing.
    pub fn answerer(&self, vehicle: &str, now: Instant) -> Answerer {
        if VehicleId::new(vehicle).is_some_and(|id| self.mine.contains_key(&id)) {
            return Answerer::Owner;
        }
        // Nor while cut off, nor before the members have been steady for `settle` (a
        // broker stall makes everyone look dead for a while; what it thinks then of who
        // owns what is not to be said).
        let steady = now.saturating_duration_since(self.changed_at) >= self.settle;
        if self.on_probation(now) || self.fenced(now) || !steady {
            return Answerer::Elsewhere;
        }
        let owned_elsewhere = self
            .claims
            .get(vehicle)
            .is_some_and(|c| c.instance != self.me && self.is_live(&c.instance));
        if !owned_elsewhere && self.home(vehicle) == Some(self.me.as_str()) {
            return Answerer::Home;
        }
        Answerer::Elsewhere
    }

    /// Notes a command id (from a `/set`, or a result any instance published); returns
    /// whether it was seen before.
    pub fn seen_before(&mut self, vehicle: &str, id: &str) -> bool {
        if id.len() > 64 || vehicle.len() > 64 {
            return false; // not a command id (those are at most 64), not kept
        }
        let key = (vehicle.to_string(), id.to_string());
        if self.seen_ids.contains(&key) {
            self.counters.repeated_ids += 1;
            return true;
        }
        if self.seen_order.len() >= SEEN_IDS {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen_ids.remove(&old);
            }
        }
        self.seen_ids.insert(key.clone());
        self.seen_order.push_back(key);
        false
    }

    /// A command this instance answers as its vehicle's home: after
    /// [`HOME_ANSWER_AFTER`], unless a result for it comes first. `false` when too many wait
    /// (the command is dropped, its sender's timeout answers).
    pub fn defer_home_answer(&mut self, vehicle: &str, id: &str, what: &str, now: Instant) -> bool {
        if self.home_answers.len() >= MAX_HOME_ANSWERS {
            return false;
        }
        self.home_answers.push_back((
            now + HOME_ANSWER_AFTER,
            vehicle.to_string(),
            id.to_string(),
            what.to_string(),
        ));
        true
    }

    /// The home answers due now: (vehicle, id, what).
    pub fn due_home_answers(&mut self, now: Instant) -> Vec<(String, String, String)> {
        let mut due = Vec::new();
        while self.home_answers.front().is_some_and(|(at, ..)| *at <= now) {
            if let Some((_, vehicle, id, what)) = self.home_answers.pop_front() {
                due.push((vehicle, id, what));
            }
        }
        due
    }

    /// Notes an id without counting it as repeated (a result echoing back); a home answer
    /// still waiting for it is not given.
    pub fn note_result(&mut self, vehicle: &str, id: &str) {
        self.home_answers
            .retain(|(_, v, i, _)| !(v == vehicle && i == id));
        let before = self.counters.repeated_ids;
        self.seen_before(vehicle, id);
        self.counters.repeated_ids = before;
    }

    /// Orphans whose `settle` is over: the ones this instance is home for, to mark
    /// offline (each once).
    pub fn due_orphans(&mut self, now: Instant) -> Vec<String> {
        self.refresh(now);
        // Cut off, this instance cannot tell a dead owner from its own silence.
        if self.fenced(now) {
            return Vec::new();
        }
        let settle = self.settle;
        let due: Vec<String> = self
            .orphans
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= settle)
            .map(|(v, _)| v.clone())
            .collect();
        let mut mine = Vec::new();
        for vehicle in due {
            let held_elsewhere = self
                .claims
                .get(&vehicle)
                .is_some_and(|c| self.is_live(&c.instance) && c.instance != self.me);
            let held_here = VehicleId::new(&vehicle).is_some_and(|id| self.mine.contains_key(&id));
            if held_elsewhere || held_here {
                self.orphans.remove(&vehicle);
            } else if self.home(&vehicle) == Some(self.me.as_str()) {
                self.orphans.remove(&vehicle);
                self.counters.orphans_marked += 1;
                mine.push(vehicle);
            }
            // Another's to mark: kept, in case the members change and it becomes ours
            // (views of who is home differ for a while after a stall).
        }
        mine
    }

    /// The cloud accounts this instance may poll now, by connector index; `Some` when
    /// that changed. Losing one is at once; gaining one waits for `settle` after the
    /// last change of the members, and never while fenced.
    pub fn permits(&mut self, now: Instant) -> Option<Vec<bool>> {
        self.refresh(now);
        // Nor on probation, nor as a second instance of an id: its twin would be home too.
        let fenced = self.fenced(now) || self.duplicate;
        // Back from a fence (cut off, frozen): the others may have taken over meanwhile,
        // so nothing is gained before a whole `settle` with contact.
        // (Not hearing itself before its first heartbeat came back is no fence to recover
        // from: nothing was held.)
        if self.fenced(now) {
            self.was_fenced |= self.last_contact.is_some();
        } else if std::mem::take(&mut self.was_fenced) {
            self.changed_at = now;
            self.recovered = true;
        }
        let settled = now.saturating_duration_since(self.changed_at) >= self.settle
            && !self.on_probation(now);
        let mut changed = false;
        for (i, account) in self.accounts.iter().enumerate() {
            let Some(key) = account else { continue };
            let home = !fenced && self.home(key) == Some(self.me.as_str());
            let permit = match (self.permits[i], home) {
                (_, false) => false,
                (true, true) => true,
                (false, true) => settled,
            };
            changed |= permit != self.permits[i];
            self.permits[i] = permit;
        }
        changed.then(|| self.permits.clone())
    }

    /// Whether connector `index` is a cloud account (polled by one instance).
    pub fn is_account(&self, index: usize) -> bool {
        self.accounts.get(index).is_some_and(|a| a.is_some())
    }

    /// Whether connector `index` may run its account here.
    pub fn permitted(&self, index: usize) -> bool {
        self.permits.get(index).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
