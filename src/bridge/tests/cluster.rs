//! The hub as one instance of a cluster (docs/cluster.md): the guard that keeps a
//! non-owner quiet, claims, yielding, who answers a command, orphans, the cluster state.

use super::*;
use crate::cluster::PROBATION;

/// Instance `a`, connected, with `others` live beside it (their states and heartbeats
/// heard), past its probation.
fn instance(others: &[&str]) -> Rig {
    let mut c = config();
    c.cluster.instance_id = "a".into();
    let mut rig = Rig::new(c);
    rig.connect();
    rig.message(&format!("{BASE}/bridge/a/state"), "online", true);
    for id in others {
        rig.message(&format!("{BASE}/bridge/{id}/beat"), "f00 1", false);
        rig.message(&format!("{BASE}/bridge/{id}/state"), "online", true);
    }
    rig.advance(PROBATION);
    rig.tick(Tick::Info);
    echo_own_beats(&mut rig);
    // The members steady for `settle` (10 s), the others heard meanwhile.
    rig.advance(Duration::from_secs(10));
    for id in others {
        rig.message(&format!("{BASE}/bridge/{id}/beat"), "f00 1", false);
    }
    rig.mqtt.0.sent.borrow_mut().clear();
    rig.tick(Tick::Info);
    echo_own_beats(&mut rig);
    rig.published();
    rig.actions.clear();
    rig
}

/// The broker brings this instance's heartbeats back (the fake client does not).
fn echo_own_beats(rig: &mut Rig) {
    let beats: Vec<Msg> = rig
        .mqtt
        .0
        .sent
        .borrow()
        .iter()
        .filter(|m| m.topic == format!("{BASE}/bridge/a/beat"))
        .cloned()
        .collect();
    assert!(!beats.is_empty(), "a heartbeat went out");
    for beat in beats {
        rig.message(&beat.topic, beat.text(), false);
    }
}

fn about<'a>(sent: &'a [Msg], vehicle: &str) -> Vec<&'a Msg> {
    sent.iter()
        .filter(|m| {
            m.topic.contains(&format!("/{vehicle}/")) || m.topic.contains(&format!("/{vehicle}_"))
        })
        .collect()
}

fn claim_of(instance: &str, at: &Now) -> String {
    format!(
        r#"{{"instance":"{instance}","since":"{}"}}"#,
        at.rfc3339_for_tests()
    )
}

/// Links a scooter at this instance: announced, proven (online), reporting.
fn link(rig: &mut Rig, id: &str) {
    rig.update(Update::Vehicle(scooter(id)));
    rig.update(Update::Availability {
        vehicle: vid(id),
        online: true,
    });
    rig.report(id, state(80));
}

#[test]
fn a_vehicle_nobody_here_holds_gets_no_publish_at_all() {
    let mut rig = instance(&["b"]);
    rig.update(Update::Vehicle(scooter("kx1")));
    rig.report("kx1", state(80));
    rig.update(Update::Event {
        vehicle: vid("kx1"),
        event: VehicleEvent {
            event_type: "tip_over".into(),
            attributes: Default::default(),
        },
    });
    rig.update(Update::Availability {
        vehicle: vid("kx1"),
        online: false,
    });
    rig.tick(Tick::Stale);
    let sent = rig.published();
    assert!(about(&sent, "kx1").is_empty(), "{sent:?}");
}

#[test]
fn a_proven_link_waits_for_probation_then_claims_then_announces_with_its_report() {
    let mut c = config();
    c.cluster.instance_id = "a".into();
    let mut rig = Rig::new(c);
    rig.connect();
    rig.message(&format!("{BASE}/bridge/a/state"), "online", true);
    link(&mut rig, "kx1");
    assert!(
        about(&rig.published(), "kx1").is_empty(),
        "on probation: quiet"
    );
    rig.advance(PROBATION);
    rig.tick(Tick::Info);
    let sent = rig.published();
    let owner = sent
        .iter()
        .find(|m| m.topic == format!("{BASE}/kx1/owner"))
        .expect("the claim");
    assert!(owner.retain);
    assert_eq!(owner.json()["instance"], "a");
    assert!(
        !sent.iter().any(|m| m.topic.starts_with("homeassistant/")),
        "discovery waits for the vehicle's first report here, which carries its identity"
    );
    assert!(sent
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/state") && m.retain));
    let availability = sent
        .iter()
        .find(|m| m.topic == format!("{BASE}/kx1/availability"))
        .expect("availability");
    assert_eq!(availability.text(), "online");
    rig.report("kx1", state(81));
    let sent = rig.published();
    assert!(sent
        .iter()
        .any(|m| m.topic.starts_with("homeassistant/") && m.topic.contains("kx1_")));
}

#[test]
fn a_newer_claim_elsewhere_moves_the_vehicle_and_silences_this_instance() {
    let mut rig = instance(&["b"]);
    link(&mut rig, "kx1");
    let before: Vec<Msg> = rig.published();
    assert!(before
        .iter()
        .any(|m| m.topic == format!("{BASE}/kx1/owner")));
    rig.advance(Duration::from_secs(1));
    let claim = claim_of("b", &rig.now);
    rig.message(&format!("{BASE}/kx1/owner"), &claim, true);
    let moved: Vec<_> = rig
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Moved { vehicle, owner, to } => Some((vehicle.clone(), *owner, to.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(moved, vec![(vid("kx1"), Some(0), "b".to_string())]);
    rig.report("kx1", state(70));
    rig.update(Update::Availability {
        vehicle: vid("kx1"),
        online: false,
    });
    let sent = rig.published();
    assert!(
        about(&sent, "kx1").is_empty(),
        "not the owner any more: {sent:?}"
    );
    // An older claim arriving late changes nothing.
    rig.message(
        &format!("{BASE}/kx1/owner"),
        &claim_of("a", &rig.now.after(Duration::ZERO)),
        true,
    );
}

#[test]
fn each_command_is_answered_by_exactly_one_instance() {
    let mut rig = instance(&["b"]);
    link(&mut rig, "kx1");
    rig.published();
    // Owned here: run.
    rig.set("kx1", "horn", r#"{"id":"c1","action":"PRESS"}"#);
    assert_eq!(rig.commands().len(), 1);
    // The same id again (or a result of it seen from another instance): not again.
    rig.set("kx1", "horn", r#"{"id":"c1","action":"PRESS"}"#);
    assert!(rig.commands().is_empty());
    assert!(
        rig.published().is_empty(),
        "a repeated id gets no second result"
    );
    rig.message(
        &format!("{BASE}/kx1/command/result"),
        r#"{"id":"c2","status":"succeeded"}"#,
        false,
    );
    rig.set("kx1", "horn", r#"{"id":"c2","action":"PRESS"}"#);
    assert!(rig.commands().is_empty());
    // Owned by b (live): b answers, this instance says nothing.
    rig.message(&format!("{BASE}/kx9/owner"), &claim_of("b", &rig.now), true);
    rig.set("kx9", "horn", r#"{"id":"c3","action":"PRESS"}"#);
    assert!(rig.commands().is_empty());
    assert!(rig.published().is_empty());
}

#[test]
fn a_vehicle_nobody_owns_is_answered_offline_by_its_home_alone() {
    // With a alone live, a is every vehicle's home.
    let mut rig = instance(&[]);
    rig.set("kx5", "lock", r#"{"id":"c1","action":"LOCK"}"#);
    assert!(rig.commands().is_empty());
    assert!(
        rig.published().is_empty(),
        "a moment for an owner it may not know of"
    );
    rig.advance(crate::cluster::HOME_ANSWER_AFTER);
    rig.tick(Tick::Info);
    let sent: Vec<Msg> = rig
        .published()
        .into_iter()
        .filter(|m| m.topic.ends_with("/command/result"))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].topic, format!("{BASE}/kx5/command/result"));
    assert_eq!(sent[0].json()["status"], "failed");
    assert_eq!(sent[0].json()["reason"], "offline");
    assert_eq!(sent[0].json()["id"], "c1");

    // An owner whose claim this instance missed answers first: the home stays silent.
    rig.set("kx6", "lock", r#"{"id":"c2","action":"LOCK"}"#);
    rig.message(
        &format!("{BASE}/kx6/command/result"),
        r#"{"id":"c2","status":"accepted"}"#,
        false,
    );
    rig.advance(crate::cluster::HOME_ANSWER_AFTER);
    rig.tick(Tick::Info);
    assert!(!rig
        .published()
        .iter()
        .any(|m| m.topic.ends_with("/command/result")));
}

#[test]
fn a_dead_instances_vehicles_are_shown_offline_by_their_home_after_settle() {
    let mut rig = instance(&["b"]);
    rig.message(&format!("{BASE}/kx2/owner"), &claim_of("b", &rig.now), true);
    rig.published();
    rig.message(&format!("{BASE}/bridge/b/state"), "offline", true);
    rig.tick(Tick::Info);
    assert!(about(&rig.published(), "kx2").is_empty(), "settle first");
    rig.advance(Duration::from_secs(10));
    rig.tick(Tick::Info);
    let sent = rig.published();
    let shown: Vec<_> = about(&sent, "kx2");
    assert_eq!(shown.len(), 1, "{sent:?}");
    assert_eq!(shown[0].topic, format!("{BASE}/kx2/availability"));
    assert_eq!(shown[0].text(), "offline");
    rig.advance(Duration::from_secs(10));
    rig.tick(Tick::Info);
    assert!(about(&rig.published(), "kx2").is_empty(), "once");
}

#[test]
fn the_cluster_state_stays_online_while_an_instance_lives() {
    let mut rig = instance(&["b"]);
    rig.message(&format!("{BASE}/bridge/state"), "offline", true);
    let sent = rig.published();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].topic, format!("{BASE}/bridge/state"));
    assert_eq!(sent[0].text(), "online");
    assert!(sent[0].retain);
    rig.message(&format!("{BASE}/bridge/state"), "online", true);
    assert!(rig.published().is_empty());
}

#[test]
fn a_clean_stop_frees_its_vehicles_and_leaves_the_cluster_online_unless_last() {
    let mut rig = instance(&["b"]);
    link(&mut rig, "kx1");
    rig.published();
    rig.hub.going_offline();
    let sent = rig.published();
    let topics: Vec<(&str, &str)> = sent.iter().map(|m| (m.topic.as_str(), m.text())).collect();
    assert!(
        topics.contains(&("v2m/kx1/availability", "offline")),
        "{topics:?}"
    );
    assert!(topics.contains(&("v2m/kx1/owner", "")), "{topics:?}");
    assert!(
        topics.contains(&("v2m/bridge/a/state", "offline")),
        "{topics:?}"
    );
    assert!(
        !topics.iter().any(|(t, _)| *t == "v2m/bridge/state"),
        "b still runs"
    );

    let mut last = instance(&[]);
    last.hub.going_offline();
    let sent = last.published();
    assert!(sent
        .iter()
        .any(|m| m.topic == "v2m/bridge/state" && m.text() == "offline"));
}

#[test]
fn an_earlier_instance_with_this_id_stops_this_one() {
    let mut rig = instance(&[]);
    rig.message(&format!("{BASE}/bridge/a/beat"), "0123 1", false);
    rig.tick(Tick::Info);
    assert!(rig
        .actions
        .iter()
        .any(|a| matches!(a, Action::Duplicate(why) if why.contains("`a`"))));
}

#[test]
fn discovery_names_no_instance_so_every_owner_publishes_the_same_bytes() {
    let docs = |me: &str| {
        let mut c = config();
        c.cluster.instance_id = me.into();
        let mut rig = Rig::new(c);
        rig.now = Now {
            mono: rig.now.mono,
            wall: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        };
        rig.connect();
        rig.message(&format!("{BASE}/bridge/{me}/state"), "online", true);
        rig.advance(PROBATION);
        rig.tick(Tick::Info);
        link(&mut rig, "kx1");
        let mut docs: Vec<(String, String)> = rig
            .published()
            .into_iter()
            .filter(|m| m.topic.starts_with("homeassistant/") && m.topic.contains("kx1_"))
            .map(|m| (m.topic.clone(), m.text().to_string()))
            .collect();
        docs.sort();
        docs
    };
    let (a, b) = (docs("a"), docs("b"));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert!(!a
        .iter()
        .any(|(_, d)| d.contains("\"a\"") || d.contains("bridge/a/")));
}

#[test]
fn each_instance_is_its_own_bridge_device_under_the_clusters() {
    let mut c = config();
    c.cluster.instance_id = "node-1".into();
    let mut rig = Rig::new(c);
    rig.connect();
    let sent = rig.published();
    let version = sent
        .iter()
        .find(|m| m.topic == "homeassistant/sensor/v2m/bridge_node-node-1_version/config")
        .expect("the instance's version sensor");
    let doc = version.json();
    assert_eq!(doc["state_topic"], "v2m/bridge/node-1/info");
    assert_eq!(doc["availability_topic"], "v2m/bridge/node-1/state");
    assert_eq!(doc["device"]["via_device"], "v2m_bridge_v2m");
    let purge = sent
        .iter()
        .find(|m| m.topic == "homeassistant/button/v2m/bridge_purge/config")
        .expect("the cluster's purge button");
    assert_eq!(purge.json()["device"]["identifiers"][0], "v2m_bridge_v2m");
    // Another instance's retained device is left alone.
    rig.message(
        "homeassistant/sensor/v2m/bridge_node-node-2_version/config",
        "{}",
        true,
    );
    assert!(rig.published().is_empty());
}
