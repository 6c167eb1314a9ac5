//! The outbox: what found MQTT busy or away waits here, bounded, in the order that keeps
//! Home Assistant right: messages first (oldest first), then each owed vehicle's newest
//! state (coalesced: a reconnect sends the latest state, never a replay of stale ones),
//! then owed discovery (built only while nothing else waits, so a fleet's link storm
//! queues vehicles, not documents). No I/O of its own: it is handed a [`Sink`], the MQTT
//! client's publish that never waits, so its rules are tested with a sink of any room.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::model::VehicleId;

/// Where the outbox publishes: never waits, says whether the message was taken.
pub trait Sink {
    fn try_publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> bool;
    /// A message was dropped past the outbox's bound (counted, logged sampled).
    fn dropped(&self, topic: &str);
}

impl Sink for crate::mqtt::Publisher {
    fn try_publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> bool {
        crate::mqtt::Publisher::try_publish(self, topic, payload, retain)
    }
    fn dropped(&self, topic: &str) {
        crate::mqtt::Publisher::dropped(self, topic)
    }
}

pub struct Outbox {
    /// Messages (other than states) that found MQTT busy, oldest first.
    retry: VecDeque<(String, Vec<u8>, bool)>,
    limit: usize,
    /// Vehicles whose newest state is not yet published.
    unsent_states: HashSet<VehicleId>,
    /// Vehicles whose discovery waits (true: every document again).
    owed_discovery: HashMap<VehicleId, bool>,
}

impl Outbox {
    /// `limit` messages wait at most; past it the oldest is dropped.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            retry: VecDeque::new(),
            limit: limit.max(1),
            unsent_states: HashSet::new(),
            owed_discovery: HashMap::new(),
        }
    }

    /// Publishes now if the sink has room and nothing older waits, else queues it.
    /// Returns true when the oldest waiting message had to be dropped for it.
    pub fn send(
        &mut self,
        sink: &impl Sink,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> bool {
        if self.retry.is_empty() && sink.try_publish(&topic, payload.clone(), retain) {
            return false;
        }
        let mut dropped = false;
        if self.retry.len() >= self.limit {
            if let Some((oldest, _, _)) = self.retry.pop_front() {
                sink.dropped(&oldest);
                dropped = true;
            }
        }
        self.retry.push_back((topic, payload, retain));
        dropped
    }

    /// Messages wait: anything new must queue behind them.
    pub fn is_behind(&self) -> bool {
        !self.retry.is_empty()
    }

    /// Messages waiting for room, and vehicles whose newest state is owed.
    pub fn waiting(&self) -> (usize, usize) {
        (self.retry.len(), self.unsent_states.len())
    }

    /// Something waits: a retry, a state or a discovery.
    pub fn has_work(&self) -> bool {
        !self.retry.is_empty() || !self.unsent_states.is_empty() || !self.owed_discovery.is_empty()
    }

    /// The vehicle's newest state is owed. True when one was owed already (coalesced).
    pub fn owe_state(&mut self, id: VehicleId) -> bool {
        !self.unsent_states.insert(id)
    }

    pub fn state_sent(&mut self, id: &VehicleId) {
        self.unsent_states.remove(id);
    }

    /// The vehicle's discovery is owed (`force`: every document again).
    pub fn owe_discovery(&mut self, id: VehicleId, force: bool) {
        *self.owed_discovery.entry(id).or_default() |= force;
    }

    /// Sends waiting messages, oldest first, until the sink has no room. True when none
    /// waits any more.
    pub fn flush_messages(&mut self, sink: &impl Sink) -> bool {
        while let Some((topic, payload, retain)) = self.retry.pop_front() {
            if !sink.try_publish(&topic, payload.clone(), retain) {
                self.retry.push_front((topic, payload, retain));
                return false;
            }
        }
        true
    }

    /// The owed states, taken out to be tried; what finds no room is owed again.
    pub fn take_unsent_states(&mut self) -> Vec<VehicleId> {
        self.unsent_states.drain().collect()
    }

    /// The next owed discovery, only while no message waits.
    pub fn next_owed_discovery(&mut self) -> Option<(VehicleId, bool)> {
        if self.is_behind() {
            return None;
        }
        let id = self.owed_discovery.keys().next()?.clone();
        let force = self.owed_discovery.remove(&id).unwrap_or(false);
        Some((id, force))
    }

    /// A vehicle gone from the bridge is owed nothing.
    pub fn forget(&mut self, id: &VehicleId) {
        self.unsent_states.remove(id);
        self.owed_discovery.remove(id);
    }

    /// Drops the waiting messages whose topic `gone` says (a vehicle that moved to another
    /// cluster instance: what it was owed is the new owner's to say now).
    pub fn drop_waiting(&mut self, gone: impl Fn(&str) -> bool) {
        self.retry.retain(|(topic, _, _)| !gone(topic));
    }

    /// A storm's queues keep their room once emptied (a fleet's worth of entries): it is
    /// handed back when they are empty again.
    pub fn release_empty(&mut self) {
        if self.retry.is_empty() {
            self.retry.shrink_to_fit();
        }
        if self.unsent_states.is_empty() {
            self.unsent_states.shrink_to_fit();
        }
        if self.owed_discovery.is_empty() {
            self.owed_discovery.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A sink with room for `room` messages, recording what it took and dropped.
    #[derive(Default)]
    struct FakeSink {
        room: RefCell<usize>,
        taken: RefCell<Vec<String>>,
        dropped: RefCell<Vec<String>>,
    }

    impl FakeSink {
        fn with_room(n: usize) -> FakeSink {
            FakeSink {
                room: RefCell::new(n),
                ..FakeSink::default()
            }
        }
        fn set_room(&self, n: usize) {
            *self.room.borrow_mut() = n;
        }
    }

    impl Sink for FakeSink {
        fn try_publish(&self, topic: &str, _: Vec<u8>, _: bool) -> bool {
            let mut room = self.room.borrow_mut();
            if *room == 0 {
                return false;
            }
            *room -= 1;
            self.taken.borrow_mut().push(topic.to_string());
            true
        }
        fn dropped(&self, topic: &str) {
            self.dropped.borrow_mut().push(topic.to_string());
        }
    }

    fn vid(s: &str) -> VehicleId {
        VehicleId::new(s).unwrap()
    }

    #[test]
    fn messages_keep_their_order_behind_the_first_that_found_no_room() {
        let sink = FakeSink::with_room(1);
        let mut out = Outbox::new(10);
        for t in ["a", "b", "c"] {
            assert!(!out.send(&sink, t.into(), Vec::new(), false));
        }
        assert_eq!(*sink.taken.borrow(), ["a"]);
        assert!(out.is_behind());
        // Room for one: "d" must not overtake "b" and "c".
        sink.set_room(1);
        out.send(&sink, "d".into(), Vec::new(), false);
        assert_eq!(*sink.taken.borrow(), ["a"], "nothing overtakes what waits");
        sink.set_room(2);
        assert!(!out.flush_messages(&sink));
        sink.set_room(10);
        assert!(out.flush_messages(&sink));
        assert_eq!(*sink.taken.borrow(), ["a", "b", "c", "d"]);
        assert!(!out.is_behind());
    }

    #[test]
    fn past_its_bound_the_oldest_message_is_dropped_and_told() {
        let sink = FakeSink::with_room(0);
        let mut out = Outbox::new(2);
        assert!(!out.send(&sink, "1".into(), Vec::new(), true));
        assert!(!out.send(&sink, "2".into(), Vec::new(), true));
        assert!(out.send(&sink, "3".into(), Vec::new(), true));
        assert_eq!(*sink.dropped.borrow(), ["1"]);
        sink.set_room(10);
        assert!(out.flush_messages(&sink));
        assert_eq!(*sink.taken.borrow(), ["2", "3"]);
    }

    #[test]
    fn states_coalesce_and_discovery_waits_for_the_messages() {
        let sink = FakeSink::with_room(0);
        let mut out = Outbox::new(10);
        assert!(!out.owe_state(vid("kx1")));
        assert!(out.owe_state(vid("kx1")), "the second is coalesced");
        out.owe_discovery(vid("kx1"), false);
        out.owe_discovery(vid("kx1"), true);
        out.send(&sink, "bridge/info".into(), Vec::new(), true);
        assert_eq!(out.next_owed_discovery(), None, "not while a message waits");
        sink.set_room(10);
        assert!(out.flush_messages(&sink));
        assert_eq!(out.take_unsent_states(), vec![vid("kx1")]);
        assert_eq!(
            out.next_owed_discovery(),
            Some((vid("kx1"), true)),
            "force sticks"
        );
        assert!(!out.has_work());
        out.owe_state(vid("kx2"));
        out.owe_discovery(vid("kx2"), false);
        out.forget(&vid("kx2"));
        assert!(!out.has_work(), "a forgotten vehicle is owed nothing");
    }
}
