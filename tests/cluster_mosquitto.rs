//! Three real bridge processes on one real mosquitto and one base topic (docs/cluster.md):
//! simulated kingxun devices and EXLIVE links spread over them, a device hopping from one
//! instance to another, `kill -9` of the instance that polls the cloud account, a second
//! instance started with an id already running, a clean stop; and an instance frozen
//! (SIGSTOP: its connection stays open, its heartbeats stop, as when the network between
//! it and the broker fails). Measured throughout: one result per command id, no empty or
//! changed discovery document, vehicles re-owned or shown offline in the stated time, the
//! account polled by one instance at a time (requests counted on the way to the fake).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::exlive::{success, Peer};
use common::{Mosquitto, Msg, Probe};
use tokio_util::sync::CancellationToken;
use vehicle2mqtt::connectors::iauto360::sim::{FakeIauto360, FakeOptions};

async fn login_at(port: u16) -> (Peer, vehicle2mqtt::protocol::exlive::Message) {
    Peer::login(port, "fleet", "s3cret-pass").await
}

fn kx(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Which instances' ways to the cloud carried requests since `at` (at most one may).
fn pollers_since(instances: &[&Instance], at: Instant) -> Vec<String> {
    instances
        .iter()
        .filter(|i| i.requests.since(at) > 0)
        .map(|i| i.id.clone())
        .collect()
}

/// The one instance polling the account, once it is settled.
async fn the_poller(instances: &[&Instance]) -> String {
    let end = Instant::now() + T;
    loop {
        let window = Instant::now();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let active = pollers_since(instances, window);
        if active.len() == 1 {
            return active[0].clone();
        }
        assert!(active.len() < 2, "two pollers at once: {active:?}");
        assert!(Instant::now() < end, "account pollers: {active:?}");
    }
}

/// Never two pollers at once: a change of poller leaves a gap.
fn assert_one_poller_at_a_time(instances: &[Instance]) {
    let mut all: Vec<(Instant, String)> = instances
        .iter()
        .flat_map(|i| i.requests.times().into_iter().map(|t| (t, i.id.clone())))
        .collect();
    all.sort();
    for w in all.windows(2) {
        if w[0].1 != w[1].1 {
            let gap = w[1].0 - w[0].0;
            assert!(
                gap >= Duration::from_millis(900),
                "{} then {} {gap:?} apart",
                w[0].1,
                w[1].1
            );
        }
    }
}

async fn cluster(ids: &[&str]) -> (Mosquitto, Probe, FakeIauto360, Setup, Vec<Instance>) {
    let broker = Mosquitto::start();
    let base = format!("cl{}", rand::random::<u32>());
    let probe = Probe::connect(broker.port, &[&format!("{base}/#"), "homeassistant/#"]).await;
    let cloud = FakeIauto360::start(FakeOptions::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let setup = Setup {
        urls: broker.url(),
        base: base.clone(),
        proxy_protocol: false,
        cloud: Some(cloud.addr),
        extra: String::new(),
    };
    let mut n = Vec::new();
    for id in ids {
        n.push(Instance::start(&setup, id).await);
    }
    wait_online(&probe, &base, &n, T).await;
    (broker, probe, cloud, setup, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_a_fleet_and_survive_a_kill() {
    let (_broker, probe, _cloud, setup, mut n) = cluster(&["n1", "n2", "n3"]).await;
    let base = setup.base.clone();
    let poller = the_poller(&[&n[0], &n[1], &n[2]]).await;
    let p = n.iter().position(|i| i.id == poller).unwrap();
    let (q, r) = ((p + 1) % 3, (p + 2) % 3);

    // Devices: 1001 and 1002 at the poller, 1003 at q, 1004 at r; EXLIVE T7 at q.
    let mut links: HashMap<u32, CancellationToken> = HashMap::new();
    for (dev, at) in [(1001, p), (1002, p), (1003, q), (1004, r)] {
        links.insert(dev, device(&kx(n[at].kingxun), dev));
    }
    for (dev, at) in [(1001, p), (1002, p), (1003, q), (1004, r)] {
        wait_owner(&probe, &base, &format!("kx{dev}"), Some(&n[at].id), T).await;
    }
    let (mut ex_q, ack) = login_at(n[q].exlive).await;
    assert_eq!(ack, success());
    let t7 = common::exlive::position("T7", "");
    ex_q.send(t7.as_bytes()).await.unwrap();
    wait_owner(&probe, &base, "exT7", Some(&n[q].id), T).await;

    // Commands: each answered once, by the owner.
    for dev in [1001, 1002, 1003, 1004] {
        let res = command(&probe, &base, &format!("kx{dev}"), &format!("c-{dev}"), T).await;
        assert_eq!(res["status"], "succeeded", "kx{dev}: {res}");
    }
    // A vehicle nobody owns: one answer, `failed: offline`, from its home.
    let res = command(&probe, &base, "kx1005", "c-nobody", T).await;
    assert_eq!(
        (res["status"].as_str(), res["reason"].as_str()),
        (Some("failed"), Some("offline"))
    );
    // A repeated id runs nowhere again (counted below: still one result).
    probe
        .publish(
            &format!("{base}/kx1001/lock/set"),
            r#"{"id":"c-1001","action":"LOCK"}"#,
            false,
        )
        .await;

    // A hop: 1001 leaves the poller and links at q.
    links.remove(&1001).unwrap().cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hop_mark = probe.messages().len();
    let hop_at = Instant::now();
    links.insert(1001, device(&kx(n[q].kingxun), 1001));
    wait_owner(&probe, &base, "kx1001", Some(&n[q].id), T).await;
    eprintln!("hop: re-owned in {:?}", hop_at.elapsed());
    let res = command(&probe, &base, "kx1001", "c-hop", T).await;
    assert_eq!(res["status"], "succeeded", "after the hop: {res}");
    // An EXLIVE hop: T7 on a new link at r; the old link at q keeps talking about it.
    let (mut ex_r, _) = login_at(n[r].exlive).await;
    ex_r.send(t7.as_bytes()).await.unwrap();
    wait_owner(&probe, &base, "exT7", Some(&n[r].id), T).await;
    ex_q.send(t7.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        owner_of(&probe, &base, "exT7").as_deref(),
        Some(n[r].id.as_str()),
        "no tug of war"
    );

    // kill -9 of the poller, which holds 1002.
    let topic = format!("{base}/kx1002/availability");
    assert_eq!(last_text(&probe, &topic).as_deref(), Some("online"));
    let kill_mark = probe.messages().len();
    let killed_at = Instant::now();
    n[p].kill9();
    let within = Duration::from_secs(LEASE_S + SETTLE_S + 15);
    wait_new(&probe, kill_mark, "kx1002 offline", within, |m| {
        m.topic == topic && m.text() == "offline"
    })
    .await;
    let offline_after = killed_at.elapsed();
    // The OS closed its socket, so the broker sent its will at once: settle, not the lease.
    assert!(
        offline_after >= Duration::from_secs(SETTLE_S),
        "{offline_after:?}"
    );
    eprintln!("kill -9: its vehicle offline after {offline_after:?}");
    // The device links again at r: owned and commandable there.
    links.remove(&1002).unwrap().cancel();
    links.insert(1002, device(&kx(n[r].kingxun), 1002));
    wait_owner(&probe, &base, "kx1002", Some(&n[r].id), T).await;
    let res = command(&probe, &base, "kx1002", "c-after-kill", T).await;
    assert_eq!(res["status"], "succeeded", "{res}");
    let commandable_after = killed_at.elapsed();
    eprintln!("kill -9: its vehicle commandable at another instance after {commandable_after:?}");
    assert!(commandable_after < Duration::from_secs(30));
    // The account moves to a survivor.
    let next = the_poller(&[&n[q], &n[r]]).await;
    eprintln!(
        "kill -9: account polled again by {next} after {:?}",
        killed_at.elapsed()
    );
    let state = format!("{base}/bridge/state");
    assert_eq!(last_text(&probe, &state).as_deref(), Some("online"));

    // A second instance with a running id stops with status 2; the first keeps its own.
    let mut twin = Instance::start(&setup, &n[q].id).await;
    let code = twin.wait_exit(T).await;
    assert_eq!(code, Some(2), "{}", twin.log());
    assert!(twin.log().contains("another instance"), "{}", twin.log());
    assert_eq!(
        owner_of(&probe, &base, "kx1001").as_deref(),
        Some(n[q].id.as_str())
    );
    let res = command(&probe, &base, "kx1001", "c-after-twin", T).await;
    assert_eq!(res["status"], "succeeded", "{res}");

    // A clean stop of r: its vehicles offline and free, the cluster still online.
    let stop_mark = probe.messages().len();
    assert_eq!(n[r].terminate().await, Some(0));
    for topic in [
        format!("{base}/bridge/{}/state", n[r].id),
        format!("{base}/kx1004/availability"),
    ] {
        wait_new(&probe, stop_mark, &topic, T, |m| {
            m.topic == topic && m.text() == "offline"
        })
        .await;
    }
    let topic = format!("{base}/kx1004/owner");
    let end = Instant::now() + T;
    while !probe
        .messages()
        .iter()
        .skip(stop_mark)
        .any(|m| m.topic == topic && m.payload.is_empty())
    {
        if Instant::now() > end {
            for m in &probe.messages()[stop_mark..] {
                if !m.topic.ends_with("/state") || m.topic.contains("/bridge/") {
                    let text: String = m.text().chars().take(80).collect();
                    eprintln!("probe after stop: {} = {text}", m.topic);
                }
            }
            for l in n[r].log().lines().rev().take(30) {
                eprintln!("{}: {}", n[r].id, l.chars().take(240).collect::<String>());
            }
            panic!("kx1004 not freed by its owner's clean stop");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(last_text(&probe, &state).as_deref(), Some("online"));

    // Exactly one final result per id, cluster-wide.
    let answered = assert_one_result_each(
        &probe,
        &[
            "c-1001",
            "c-1002",
            "c-1003",
            "c-1004",
            "c-nobody",
            "c-hop",
            "c-after-kill",
            "c-after-twin",
        ],
    );
    // Takeovers kept HA calm: no removal, and what the new owner announced is
    // byte-identical to what the old one had left.
    let all: Vec<Msg> = probe.messages();
    assert_no_removal(&all, &base);
    assert_same_discovery(&all, "kx1001", hop_mark);
    assert_same_discovery(&all, "kx1002", kill_mark);
    assert_one_poller_at_a_time(&n);
    let counts: Vec<(String, usize)> = n
        .iter()
        .map(|i| (i.id.clone(), i.requests.count()))
        .collect();
    eprintln!("requests at the fake cloud per instance: {counts:?}; {answered} command ids, one result each");
    for l in links.values() {
        l.cancel();
    }
}

/// An instance cut off without its socket closing (frozen: SIGSTOP): its will never
/// comes, so the others go by its heartbeat. Its vehicles are shown offline after
/// `lease_ttl` + settle, the account moves, and when it wakes it yields and fences itself
/// (never a second poller).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_instance_is_given_up_by_its_heartbeat() {
    let (_broker, probe, _cloud, setup, n) = cluster(&["f1", "f2"]).await;
    let base = setup.base.clone();
    let poller = the_poller(&[&n[0], &n[1]]).await;
    let p = n.iter().position(|i| i.id == poller).unwrap();
    let other = 1 - p;
    let link = device(&kx(n[p].kingxun), 1006);
    wait_owner(&probe, &base, "kx1006", Some(&n[p].id), T).await;
    let topic = format!("{base}/kx1006/availability");
    probe
        .wait_for("online", T, |m| m.topic == topic && m.text() == "online")
        .await;

    let mark = probe.messages().len();
    let frozen_at = Instant::now();
    n[p].signal("STOP");
    let within = Duration::from_secs(LEASE_S + SETTLE_S + 15);
    wait_new(&probe, mark, "kx1006 offline", within, |m| {
        m.topic == topic && m.text() == "offline"
    })
    .await;
    let offline_after = frozen_at.elapsed();
    eprintln!("frozen: its vehicle offline after {offline_after:?}");
    // Its last heartbeat came up to 2 s before the freeze, and ticks are 1 s apart.
    assert!(
        offline_after >= Duration::from_secs(LEASE_S + SETTLE_S - 3),
        "before the lease ran out: {offline_after:?}"
    );
    let next = the_poller(&[&n[other]]).await;
    assert_eq!(next, n[other].id);
    eprintln!(
        "frozen: account polled by {next} after {:?}",
        frozen_at.elapsed()
    );
    // The device gives up on the frozen one and links at the other.
    link.cancel();
    let link = device(&kx(n[other].kingxun), 1006);
    wait_owner(&probe, &base, "kx1006", Some(&n[other].id), T).await;
    let res = command(&probe, &base, "kx1006", "f-moved", T).await;
    assert_eq!(res["status"], "succeeded", "{res}");

    // It wakes: it yields what moved, and polls nothing before it has heard itself
    // through the broker and waited settle (its lease ran out while it slept).
    let woke_at = Instant::now();
    n[p].signal("CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        owner_of(&probe, &base, "kx1006").as_deref(),
        Some(n[other].id.as_str())
    );
    assert_eq!(
        n[p].requests.since(woke_at),
        0,
        "a woken instance polled at once"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let res = command(&probe, &base, "kx1006", "f-after-wake", T).await;
    assert_eq!(res["status"], "succeeded", "{res}");
    assert_one_result_each(&probe, &["f-moved", "f-after-wake"]);
    assert_one_poller_at_a_time(&n);
    link.cancel();
}
