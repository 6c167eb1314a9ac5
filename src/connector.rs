//! The contract between the bridge and a connector.
//!
//! A connector owns its upstream I/O and speaks to the bridge only through
//! [`ConnectorContext`]: it sends [`Update`]s (vehicles, states, availability, events,
//! health) and receives [`CommandRequest`]s, answering each on its `progress` channel
//! with at most one `Accepted` followed by one final `Succeeded`/`Failed`. The bridge
//! owns timeouts: a connector that never answers produces `timeout`, not a hang.
//!
//! Connectors never touch MQTT or Home Assistant.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{Command, CommandProgress, VehicleEvent, VehicleId, VehicleInfo, VehicleState};

/// Declares a connector's named error counters: a struct of `AtomicU64`s and a
/// `snapshot()` for [`Update::Counters`]. Adding a counter is one line.
#[macro_export]
macro_rules! named_counters {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $(pub $field: std::sync::atomic::AtomicU64,)*
        }

        impl $name {
            pub fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
                [$((stringify!($field), self.$field.load(std::sync::atomic::Ordering::Relaxed)),)*]
                    .into_iter()
                    .collect()
            }
        }
    };
}

/// How often a connector reports its counters (only when they changed).
pub const COUNTERS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What a connector tells the bridge.
#[derive(Debug, Clone)]
pub enum Update {
    /// A vehicle exists (or its identity changed). Send before its first state.
    Vehicle(VehicleInfo),
    /// New state. With `replace`, fields absent from `state` are gone (their entities are
    /// removed); otherwise `state` is merged over what the bridge already has.
    State {
        vehicle: VehicleId,
        state: VehicleState,
        replace: bool,
    },
    /// The upstream's view of whether the vehicle is reachable.
    Availability { vehicle: VehicleId, online: bool },
    /// Every vehicle the upstream account has now (a cloud's vehicle list): a vehicle of
    /// this connector missing here has left the account, and its entities go.
    Roster(Vec<VehicleId>),
    Event {
        vehicle: VehicleId,
        event: VehicleEvent,
    },
    /// Connector health: open links (TCP connectors) and the latest error, if any.
    Health { links: usize, error: Option<String> },
    /// The trouble last reported in `Health` is over (e.g. a login works again).
    Recovered,
    /// The connector's named error counters (shown in `bridge/info`); send when changed.
    Counters(std::collections::BTreeMap<&'static str, u64>),
}

/// One command for one vehicle. Answer on `progress`; dropping it without a final
/// answer is reported as `failed`.
#[derive(Debug)]
pub struct CommandRequest {
    pub id: String,
    pub vehicle: VehicleId,
    pub command: Command,
    pub progress: mpsc::Sender<CommandProgress>,
}

/// Updates tagged with the connector they came from, so the bridge knows who owns a vehicle.
#[derive(Debug, Clone)]
pub struct UpdateSink {
    connector: usize,
    tx: mpsc::Sender<(usize, Update)>,
}

impl UpdateSink {
    pub fn new(connector: usize, tx: mpsc::Sender<(usize, Update)>) -> Self {
        UpdateSink { connector, tx }
    }

    /// Waits while the bridge's queue is full (the bridge never blocks on MQTT, so this
    /// is brief); fails only when the bridge has stopped.
    pub async fn send(&self, update: Update) -> Result<(), BridgeGone> {
        self.tx
            .send((self.connector, update))
            .await
            .map_err(|_| BridgeGone)
    }

    /// Merges `state` over what the bridge has for `vehicle` (the usual partial update).
    /// A stopped bridge is not the connector's error, so this cannot fail.
    pub async fn merge_state(&self, vehicle: VehicleId, state: VehicleState) {
        let _ = self
            .send(Update::State {
                vehicle,
                state,
                replace: false,
            })
            .await;
    }

    /// Publishes an event of `vehicle`.
    pub async fn event(&self, vehicle: VehicleId, event: VehicleEvent) {
        let _ = self.send(Update::Event { vehicle, event }).await;
    }

    /// The upstream's view of whether `vehicle` is reachable.
    pub async fn availability(&self, vehicle: VehicleId, online: bool) {
        let _ = self.send(Update::Availability { vehicle, online }).await;
    }
}

/// A polled vehicle's `connector_status` sensor: `"ok"` or the latest trouble, sent only
/// when it changes; going back to `"ok"` also tells the bridge the connector recovered.
#[derive(Debug, Default)]
pub struct ConnectionStatus {
    last: String,
}

impl ConnectionStatus {
    pub const OK: &'static str = "ok";

    pub async fn set(&mut self, updates: &UpdateSink, vehicle: &VehicleId, status: &str) {
        if status == self.last {
            return;
        }
        if status == Self::OK && !self.last.is_empty() {
            let _ = updates.send(Update::Recovered).await;
        }
        let mut state = VehicleState::default();
        state.set(crate::model::Field::ConnectorStatus, status);
        updates.merge_state(vehicle.clone(), state).await;
        self.last = status.to_string();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the bridge has stopped")]
pub struct BridgeGone;

/// Counts a connector's open links and reports every change to the bridge.
#[derive(Debug, Default)]
pub struct LinkGauge(std::sync::atomic::AtomicUsize);

impl LinkGauge {
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn opened(&self, updates: &UpdateSink) {
        let links = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let _ = updates.send(Update::Health { links, error: None }).await;
    }

    pub async fn closed(&self, updates: &UpdateSink) {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self
            .0
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)))
            .unwrap_or(0);
        let _ = updates
            .send(Update::Health {
                links: before.saturating_sub(1),
                error: None,
            })
            .await;
    }
}

/// Sends a connector's counters to the bridge when they changed since the last report.
#[derive(Debug, Default)]
pub struct CountersReport {
    last: std::collections::BTreeMap<&'static str, u64>,
}

impl CountersReport {
    pub async fn report(
        &mut self,
        snapshot: std::collections::BTreeMap<&'static str, u64>,
        updates: &UpdateSink,
    ) {
        if snapshot != self.last {
            self.last = snapshot.clone();
            let _ = updates.send(Update::Counters(snapshot)).await;
        }
    }
}

/// Hands a command to the task that owns its vehicle; a full queue, a gone task or an
/// unknown vehicle answers `failed` at once.
pub async fn route_command(
    routes: &std::collections::HashMap<VehicleId, mpsc::Sender<CommandRequest>>,
    req: CommandRequest,
) {
    let Some(tx) = routes.get(&req.vehicle) else {
        let _ = req
            .progress
            .send(CommandProgress::Failed("unknown vehicle".into()))
            .await;
        return;
    };
    if let Err(mpsc::error::TrySendError::Full(req) | mpsc::error::TrySendError::Closed(req)) =
        tx.try_send(req)
    {
        let _ = req
            .progress
            .send(CommandProgress::Failed("vehicle busy".into()))
            .await;
    }
}

/// Until when this cluster instance may speak for a cloud account: its last heartbeat
/// heard back through the broker plus `cluster.lease_ttl` (forever alone). A client checks
/// it right before each request, so an instance that was frozen or cut off sends nothing
/// when it wakes, before anything else has run (docs/cluster.md).
#[derive(Debug, Clone)]
pub struct Lease(std::sync::Arc<std::sync::atomic::AtomicU64>);

/// The clock leases are counted on: milliseconds since the first lease was made.
fn lease_clock() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

impl Lease {
    pub fn forever() -> Lease {
        Lease(std::sync::Arc::new(u64::MAX.into()))
    }

    /// A lease that has run out until it is renewed.
    pub fn expired() -> Lease {
        lease_clock();
        Lease(std::sync::Arc::new(0.into()))
    }

    pub fn renew_until(&self, until: std::time::Instant) {
        let ms = until.saturating_duration_since(lease_clock()).as_millis();
        self.0.store(
            u64::try_from(ms).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn valid(&self) -> bool {
        let now = lease_clock().elapsed().as_millis();
        u128::from(self.0.load(std::sync::atomic::Ordering::Relaxed)) > now
    }
}

/// Everything a connector is given when it starts.
pub struct ConnectorContext {
    pub updates: UpdateSink,
    pub commands: mpsc::Receiver<CommandRequest>,
    pub shutdown: CancellationToken,
    /// Cluster: vehicles another instance owns now; a TCP connector closes their stale
    /// links and stops reporting them from those links (docs/cluster.md).
    pub releases: mpsc::Receiver<VehicleId>,
    /// Cluster: whether this instance may run the connector's cloud account
    /// ([`Connector::cloud_account`]) now; always true alone.
    pub permit: tokio::sync::watch::Receiver<bool>,
    /// Cluster: the time-bound side of the permit, checked before each cloud request.
    pub lease: Lease,
}

impl ConnectorContext {
    /// A context for a connector alone (tests, tools): nothing is ever released, the
    /// account always permitted.
    pub fn alone(
        updates: UpdateSink,
        commands: mpsc::Receiver<CommandRequest>,
        shutdown: CancellationToken,
    ) -> ConnectorContext {
        let (_, releases) = mpsc::channel(1);
        let (_, permit) = tokio::sync::watch::channel(true);
        ConnectorContext {
            updates,
            commands,
            shutdown,
            releases,
            permit,
            lease: Lease::forever(),
        }
    }
}

pub type ConnectorFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A connector: started once, runs until `shutdown` is cancelled. It reconnects to its
/// upstream by itself; returning an error means it cannot go on at all.
pub trait Connector: Send {
    /// Short lowercase name, e.g. "exlive".
    fn name(&self) -> &'static str;
    /// Every vehicle this connector can ever have, when its config lists them all (a
    /// vehicle remembered from an earlier run and missing here was removed from the
    /// config, so its Home Assistant entities go). `None` when vehicles come and go on
    /// their own (a cloud account, tracker logins): those are only removed on request.
    fn configured_vehicles(&self) -> Option<Vec<crate::model::VehicleId>> {
        None
    }
    /// `overspeed_kmh` of the connector's section and of its vehicle entries (each wins
    /// over `events.overspeed_kmh`, a vehicle's over its section's).
    fn speed_limits(&self) -> SpeedLimits {
        SpeedLimits::default()
    }
    /// The cloud account this connector logs in to (a stable key, no secret in it), when
    /// it has one: in a cluster one live instance at a time runs it.
    fn cloud_account(&self) -> Option<String> {
        None
    }
    /// A connector that is all account (a cloud poller) gives a fresh copy of itself: in
    /// a cluster the bridge runs a copy while this instance holds the account's permit
    /// and stops it when the permit goes. `None`: the connector reads `ctx.permit` itself.
    fn fresh_copy(&self) -> Option<Box<dyn Connector>> {
        None
    }
    fn run(self: Box<Self>, ctx: ConnectorContext) -> ConnectorFuture;
}

/// Speed limits a connector's config sets for `overspeed` events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeedLimits {
    /// The section's `overspeed_kmh`.
    pub section: Option<f64>,
    /// Vehicle entries' `overspeed_kmh`.
    pub vehicles: Vec<(crate::model::VehicleId, f64)>,
}

impl SpeedLimits {
    /// A section's limit and its `vehicle_overspeed_kmh` table, each key made vehicle ids
    /// by `ids` (none for a key that makes no id).
    pub fn from_table<I: IntoIterator<Item = crate::model::VehicleId>>(
        section: Option<f64>,
        table: &std::collections::BTreeMap<String, f64>,
        ids: impl Fn(&str) -> I,
    ) -> SpeedLimits {
        SpeedLimits {
            section,
            vehicles: table
                .iter()
                .flat_map(|(key, kmh)| ids(key).into_iter().map(move |id| (id, *kmh)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use super::Lease;
    use std::time::{Duration, Instant};

    #[test]
    fn a_lease_holds_until_its_time_and_not_after() {
        assert!(Lease::forever().valid());
        let lease = Lease::expired();
        assert!(!lease.valid(), "nothing heard yet");
        lease.renew_until(Instant::now() + Duration::from_secs(60));
        assert!(lease.valid());
        let copy = lease.clone();
        lease.renew_until(Instant::now());
        assert!(!copy.valid(), "every copy sees the renewal, and its end");
    }
}
