//! The hub in a cluster (docs/cluster.md): what it tells the other instances and what it
//! makes of theirs. [`crate::cluster::Cluster`] decides; this file turns its answers into
//! publishes and actions. Without `cluster.instance_id` nothing here runs and
//! [`Hub::speaks_for`] is always true.

use crate::cluster::{Answerer, Seen};
use crate::model::VehicleId;

use super::{Action, Hub, Mqtt, SubscribeOptions};

impl<M: Mqtt> Hub<M> {
    /// The one guard of every per-vehicle publish (state, availability, discovery,
    /// events, trips, removals): alone, the bridge speaks for every vehicle; in a cluster,
    /// only for those it owns. Results are not guarded: whoever took a command answers it.
    pub(super) fn speaks_for(&self, id: &VehicleId) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.owns(id))
    }

    /// Who answers a command for `vehicle`: always this instance when alone.
    pub(super) fn answerer(&self, vehicle: &str) -> Answerer {
        self.cluster
            .as_ref()
            .map_or(Answerer::Owner, |c| c.answerer(vehicle, self.now.mono))
    }

    /// Whether a command id was answered before, anywhere in the cluster (alone: never
    /// asked, a repeated id there is the sender's to avoid as before).
    pub(super) fn repeated(&mut self, vehicle: &str, id: Option<&str>) -> bool {
        match (&mut self.cluster, id) {
            (Some(c), Some(id)) => c.seen_before(vehicle, id),
            _ => false,
        }
    }

    /// A command for a vehicle nobody live owns, as far as this instance knows: answered
    /// `failed: offline` a moment later, unless its owner (whose claim this instance may
    /// have missed) answers first.
    pub(super) fn answer_as_home(&mut self, vehicle: &str, id: &str, what: &str) {
        if VehicleId::new(vehicle).is_none_or(|v| v.as_str() != vehicle) {
            // Not a vehicle id: nobody can own it, nothing is kept.
            return self.reject(vehicle, id, what, "unknown vehicle");
        }
        let now = self.now.mono;
        if let Some(c) = &mut self.cluster {
            if !c.defer_home_answer(vehicle, id, what, now) {
                tracing::warn!(
                    event = "cluster_home_answers_full",
                    vehicle,
                    "too many commands for vehicles nobody owns; dropped"
                );
            }
        }
    }

    /// The topic `bridge/info` goes to: this instance's own in a cluster.
    pub(super) fn info_topic(&self) -> String {
        match &self.cluster {
            Some(c) => self.topics.instance_info(c.me()),
            None => self.topics.bridge_info(),
        }
    }

    /// Connected (again): this instance's state, the cluster's subscriptions, and the
    /// claims it holds again (a newer one elsewhere still wins).
    pub(super) fn cluster_connected(&mut self) {
        let Some(c) = &mut self.cluster else { return };
        c.connected(self.now.mono);
        let me = c.me().to_string();
        self.send(self.topics.instance_state(&me), "online", true);
        for filter in self.topics.cluster_filters() {
            self.mqtt.subscribe(&filter, SubscribeOptions::default());
        }
        self.send_owned_claims();
    }

    /// `<vehicle>/owner`: the claim, or empty to clear it.
    fn send_owner(&mut self, vehicle: &str, claim: Option<&crate::cluster::Claim>) {
        let payload = claim.map(|c| c.to_json().into_bytes()).unwrap_or_default();
        self.send(self.topics.vehicle(vehicle, "owner"), payload, true);
    }

    /// Every claim this instance holds, again (a newer one elsewhere still wins); returns
    /// the vehicles.
    fn send_owned_claims(&mut self) -> Vec<VehicleId> {
        let claims: Vec<(VehicleId, crate::cluster::Claim)> = self
            .cluster
            .as_ref()
            .map(|c| {
                c.owned_claims()
                    .map(|(id, claim)| (id.clone(), claim.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (id, claim) in &claims {
            self.send_owner(id.as_str(), Some(claim));
        }
        claims.into_iter().map(|(id, _)| id).collect()
    }

    /// A message on a cluster topic (`parts`: the topic below the base). Returns whether
    /// it was one.
    pub(super) fn on_cluster_message(
        &mut self,
        parts: &[&str],
        payload: &[u8],
        retain: bool,
    ) -> bool {
        let now = self.now;
        let Some(c) = &mut self.cluster else {
            return false;
        };
        match parts {
            ["bridge", "state"] => {
                // Another instance's sentinel went (its will): the cluster is still here.
                if payload == b"offline" && self.link.connected {
                    self.send(self.topics.bridge_state(), "online", true);
                }
            }
            ["bridge", instance, "state"] => {
                if c.on_member_state(instance, payload, now.mono) {
                    self.membership_changed();
                }
            }
            // A retained heartbeat is a forgery (ours never are): it would stop this
            // instance on every start.
            ["bridge", _, "beat"] if retain => {}
            ["bridge", instance, "beat"] => {
                c.on_beat(instance, payload, now.mono);
                if *instance == c.me() {
                    if let Some(until) = c.lease_until() {
                        self.actions.push(Action::Lease(until));
                    }
                }
            }
            [vehicle, "owner"] => match c.on_claim(vehicle, payload, now.mono, now.wall) {
                Seen::Nothing => {}
                Seen::Yield { to } => {
                    if let Some(id) = VehicleId::new(vehicle) {
                        self.yield_vehicle(id, to);
                    }
                }
                Seen::StaleOwnClaim => self.send_owner(vehicle, None),
                Seen::Reassert(claim) => self.send_owner(vehicle, Some(&claim)),
            },
            [vehicle, "command", "result"] => {
                #[derive(serde::Deserialize)]
                struct Result {
                    id: String,
                }
                if let Ok(r) = serde_json::from_slice::<Result>(payload) {
                    c.note_result(vehicle, &r.id);
                }
            }
            _ => return false,
        }
        true
    }

    fn membership_changed(&mut self) {
        let Some(c) = &self.cluster else { return };
        let live: Vec<&str> = c.live().collect();
        tracing::info!(event = "cluster_members", live = ?live, "live cluster instances changed");
        self.status.changed();
    }

    /// This instance holds the vehicle now (a proven link, or its account's report): the
    /// claim goes out, then its availability and state; its discovery with its first
    /// report here.
    pub(super) fn claim(&mut self, id: &VehicleId) {
        let (now, wall) = (self.now.mono, self.now.wall);
        let Some(claim) = self.cluster.as_mut().and_then(|c| c.claim(id, now, wall)) else {
            return;
        };
        tracing::info!(event = "cluster_claimed", vehicle = %id, "this instance owns the vehicle now");
        self.send_owner(id.as_str(), Some(&claim));
        // Discovery waits for the vehicle's first report here (`first_report`).
        self.field_payloads.remove(id);
        if self.fleet.get(id).is_some_and(|v| v.has_reported()) {
            self.publish_state(id);
        }
        self.publish_availability(id, true);
    }

    /// Whether the vehicle's discovery is due with this report: its first since this
    /// instance claimed it.
    pub(super) fn first_report_since_claim(&mut self, id: &VehicleId) -> bool {
        self.cluster.as_mut().is_some_and(|c| c.first_report(id))
    }

    /// Another instance claimed a vehicle this one holds: stop speaking for it, close the
    /// stale link, fail its commands here with `moved to <instance>`.
    fn yield_vehicle(&mut self, id: VehicleId, to: String) {
        if let Some(c) = &mut self.cluster {
            c.release(&id);
        }
        tracing::info!(event = "cluster_yielded", vehicle = %id, to = %to, "another instance owns the vehicle now");
        self.outbox.forget(&id);
        // What waits for it (an availability, an event, a document) is not said late.
        let (mine, docs) = (
            format!("{}/{}/", self.topics.base, id.as_str()),
            format!("/{}/{}_", self.topics.node, id.as_str()),
        );
        let result = "/command/result";
        self.outbox.drop_waiting(|topic| {
            (topic.starts_with(&mine) && !topic.ends_with(result)) || topic.contains(&docs)
        });
        self.status.changed();
        let owner = self.fleet.get(&id).map(|v| v.owner());
        self.actions.push(Action::Moved {
            vehicle: id,
            owner,
            to,
        });
    }

    /// The vehicle leaves the bridge: its claim goes too, so nobody routes to us.
    pub(super) fn unclaim(&mut self, id: &VehicleId) {
        if let Some(c) = &mut self.cluster {
            if c.owns(id) {
                c.release(id);
                self.send_owner(id.as_str(), None);
            }
        }
    }

    /// Every info tick: the heartbeat, the accounts this instance may poll, the vehicles
    /// of a dead instance this one is home for (shown offline), a second instance with
    /// this id (this one goes).
    pub(super) fn cluster_tick(&mut self) {
        let now = self.now.mono;
        let Some(c) = &mut self.cluster else { return };
        if c.duplicate() {
            let why = format!(
                "another instance with cluster.instance_id `{}` runs on this broker (started earlier); this one stops",
                c.me()
            );
            self.actions.push(Action::Duplicate(why));
            return;
        }
        if !self.link.connected {
            // A fence takes effect while away from the broker too.
            if let Some(permits) = c.permits(now) {
                self.actions.push(Action::Permits(permits));
            }
            return;
        }
        let home_answers = c.due_home_answers(now);
        if let Some((live, fenced, orphans)) = c.news(now) {
            tracing::info!(event = "cluster_view", live = ?live, fenced, orphans,
                "live instances as this one sees them");
        }
        let due_claims = c.due_claims(now);
        // Claimed again below rather than cleared first.
        let mut stale_claims = c.due_stale_claims(now);
        stale_claims.retain(|v| !due_claims.iter().any(|d| d.as_str() == v));
        let beat = c.beat(now);
        let recovered = c.take_recovered();
        let permits = c.permits(now);
        let orphans = c.due_orphans(now);
        let me = c.me().to_string();
        if let Some(beat) = beat {
            self.send(self.topics.instance_beat(&me), beat, false);
        }
        if recovered {
            // Back after a fence: the others may have shown these offline meanwhile.
            let owned = self.send_owned_claims();
            tracing::info!(
                event = "cluster_recovered",
                vehicles = owned.len(),
                "in contact again after a fence: claims and availability said again"
            );
            for id in owned {
                self.publish_availability(&id, true);
            }
        }
        if let Some(permits) = permits {
            tracing::info!(event = "cluster_permits", permits = ?permits, "cloud accounts this instance polls changed");
            self.actions.push(Action::Permits(permits));
        }
        for (vehicle, id, what) in home_answers {
            self.publish_result(
                &vehicle,
                &id,
                &what,
                crate::model::CommandStatus::Failed,
                Some("offline"),
                None,
            );
        }
        for vehicle in stale_claims {
            self.send_owner(&vehicle, None);
        }
        for id in due_claims {
            if self.fleet.contains(&id) {
                self.claim(&id);
            }
        }
        for vehicle in orphans {
            tracing::info!(event = "cluster_orphan_offline", vehicle = %vehicle, home = true,
                "its owner is gone and nobody linked it since: shown offline");
            let topic = self.topics.vehicle(&vehicle, "availability");
            self.send(topic, "offline", true);
            if let Some(id) = VehicleId::new(&vehicle) {
                self.fleet.set_online(&id, false);
            }
        }
    }

    /// A clean stop: the vehicles this instance holds go offline and free, then the
    /// instance; the cluster only when this was the last one.
    pub(super) fn cluster_going_offline(&mut self) -> bool {
        let Some(c) = &self.cluster else {
            return true;
        };
        let (me, alone) = (c.me().to_string(), c.alone());
        let owned: Vec<VehicleId> = c.owned().cloned().collect();
        for id in owned {
            self.send(
                self.topics.vehicle(id.as_str(), "availability"),
                "offline",
                true,
            );
            self.send_owner(id.as_str(), None);
        }
        self.send(self.topics.instance_state(&me), "offline", true);
        alone
    }
}
