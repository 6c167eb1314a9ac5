use super::*;

fn config(id: &str) -> ClusterConfig {
    ClusterConfig {
        instance_id: id.into(),
        settle: Duration::from_secs(10),
        lease_ttl: Duration::from_secs(20),
    }
}

/// When a member made by [`member`] has had its members steady for `settle`.
const STEADY: Duration = Duration::from_secs(10);

fn wall(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn claim(instance: &str, secs: i64) -> Vec<u8> {
    Claim {
        instance: instance.into(),
        since: wall(secs),
    }
    .to_json()
    .into_bytes()
}

fn vid(s: &str) -> VehicleId {
    VehicleId::new(s).unwrap()
}

/// An instance that sees `live` online and has heard its own heartbeat.
fn member(me: &str, live: &[&str], accounts: Vec<Option<String>>, t0: Instant) -> Cluster {
    let mut c = Cluster::new(&config(me), accounts, t0);
    for id in live.iter().filter(|id| **id != me) {
        c.on_beat(id, b"theirs", t0);
    }
    for id in live {
        c.on_member_state(id, b"online", t0);
    }
    let beat = c.incarnation().to_string();
    c.on_beat(me, beat.as_bytes(), t0);
    c.connected(t0);
    c
}

#[test]
fn a_claim_round_trips_and_bad_ones_are_refused() {
    let c = Claim {
        instance: "node-1".into(),
        since: wall(0),
    };
    assert_eq!(
        c.to_json(),
        r#"{"instance":"node-1","since":"2027-01-15T08:00:00.000Z"}"#
    );
    assert_eq!(Claim::parse(c.to_json().as_bytes()), Ok(Some(c)));
    assert_eq!(Claim::parse(b""), Ok(None), "an empty payload clears");
    assert_eq!(Claim::parse(b"node-1"), Err(ClaimError::Malformed));
    assert_eq!(
        Claim::parse(b"12345"),
        Err(ClaimError::Malformed),
        "a numeric string"
    );
    assert_eq!(
        Claim::parse(br#"{"instance":"a/b","since":"2027-01-15T08:00:00Z"}"#),
        Err(ClaimError::BadInstance)
    );
    assert_eq!(
        Claim::parse(br#"{"instance":"","since":"2027-01-15T08:00:00Z"}"#),
        Err(ClaimError::BadInstance)
    );
    assert_eq!(
        Claim::parse(br#"{"instance":"a","since":"yesterday"}"#),
        Err(ClaimError::BadSince)
    );
    assert_eq!(
        Claim::parse(br#"{"instance":"a","since":1800000000}"#),
        Err(ClaimError::Malformed),
        "a number for the time"
    );
    let long = format!(
        r#"{{"instance":"{}","since":"2027-01-15T08:00:00Z"}}"#,
        "a".repeat(33)
    );
    assert_eq!(Claim::parse(long.as_bytes()), Err(ClaimError::BadInstance));
}

/// The device linked again at B: A, holding an older link, yields; B, seeing A's older
/// claim arrive after its own, keeps it. Both end agreeing, whatever the order.
#[test]
fn the_newest_claim_wins_in_any_order() {
    let t0 = Instant::now();
    for a_first in [true, false] {
        let mut a = member("a", &["a", "b"], vec![], t0);
        let mut b = member("b", &["a", "b"], vec![], t0);
        let v = vid("kx1");
        let claim_a = a
            .claim(&v, t0 + PROBATION, wall(0))
            .expect("a new claim")
            .to_json();
        let claim_b = b
            .claim(&v, t0 + PROBATION, wall(5))
            .expect("a new claim")
            .to_json();
        let (first, second) = match a_first {
            true => (&claim_a, &claim_b),
            false => (&claim_b, &claim_a),
        };
        let mut seen_a = Vec::new();
        let mut seen_b = Vec::new();
        for payload in [first, second] {
            seen_a.push(a.on_claim("kx1", payload.as_bytes(), t0, wall(6)));
            seen_b.push(b.on_claim("kx1", payload.as_bytes(), t0, wall(6)));
        }
        assert!(
            seen_a.contains(&Seen::Yield { to: "b".into() }),
            "a yields: {seen_a:?}"
        );
        a.release(&v);
        // b keeps it, saying its claim again against a's older one.
        assert!(
            seen_b.iter().all(|s| match s {
                Seen::Nothing => true,
                Seen::Reassert(c) => c.instance == "b",
                _ => false,
            }),
            "b keeps it: {seen_b:?}"
        );
        assert!(b.owns(&v) && !a.owns(&v));
        assert_eq!(a.answerer("kx1", t0 + STEADY), Answerer::Elsewhere);
        assert_eq!(b.answerer("kx1", t0 + STEADY), Answerer::Owner);
    }
}

#[test]
fn equal_times_are_ordered_by_instance_id() {
    let t0 = Instant::now();
    let mut a = member("a", &["a", "b"], vec![], t0);
    let v = vid("kx1");
    a.claim(&v, t0 + PROBATION, wall(0));
    let seen = a.on_claim("kx1", &claim("b", 0), t0, wall(0));
    assert_eq!(
        seen,
        Seen::Yield { to: "b".into() },
        "b > a at the same instant"
    );
    let mut b = member("b", &["a", "b"], vec![], t0);
    b.claim(&v, t0 + PROBATION, wall(0));
    assert!(matches!(
        b.on_claim("kx1", &claim("a", 0), t0, wall(0)),
        Seen::Reassert(c) if c.instance == "b"
    ));
}

/// A forged claim cannot take a vehicle from its holder: one dated far ahead is refused
/// and counted, and a malformed one costs only itself.
#[test]
fn forged_claims_are_refused() {
    let t0 = Instant::now();
    let mut a = member("a", &["a", "b"], vec![], t0);
    let v = vid("kx1");
    a.claim(&v, t0 + PROBATION, wall(0));
    assert_eq!(
        a.on_claim("kx1", &claim("b", 3600), t0, wall(1)),
        Seen::Nothing
    );
    assert_eq!(
        a.on_claim("kx1", b"{\"instance\":", t0, wall(1)),
        Seen::Nothing
    );
    assert_eq!(a.on_claim("kx1", b"\xff\xfe", t0, wall(1)), Seen::Nothing);
    assert_eq!(a.counters.claims_refused, 3);
    assert!(a.owns(&v));
    assert_eq!(a.answerer("kx1", t0 + STEADY), Answerer::Owner);
}

/// A claim this instance left in an earlier run (it no longer holds the link) is to be
/// cleared, or the others would keep sending its commands here.
#[test]
fn an_own_claim_from_an_earlier_run_is_stale() {
    let t0 = Instant::now();
    let mut a = member("a", &["a"], vec![], t0);
    let later = t0 + PROBATION;
    assert_eq!(
        a.on_claim("kx1", &claim("a", -600), later, wall(0)),
        Seen::StaleOwnClaim
    );
    assert_eq!(a.on_claim("kx1", b"", later, wall(0)), Seen::Nothing);
}

/// Nobody owns the vehicle: exactly one live instance answers (its rendezvous home);
/// once an instance owns it, only the owner does.
#[test]
fn exactly_one_instance_answers_a_command() {
    let t0 = Instant::now();
    let live = ["a", "b", "c"];
    let mut all: Vec<Cluster> = live
        .iter()
        .map(|me| member(me, &live, vec![], t0))
        .collect();
    for n in 0..200 {
        let v = format!("kx{n}");
        let answering = all
            .iter()
            .filter(|c| c.answerer(&v, t0 + STEADY) != Answerer::Elsewhere)
            .count();
        assert_eq!(answering, 1, "{v}: {answering} answer an unowned vehicle");
    }
    // c links kx7; everyone learns the claim.
    let claim_c = all[2]
        .claim(&vid("kx7"), t0 + PROBATION, wall(0))
        .unwrap()
        .to_json();
    for c in &mut all[..2] {
        c.on_claim("kx7", claim_c.as_bytes(), t0, wall(0));
    }
    let answers: Vec<Answerer> = all.iter().map(|c| c.answerer("kx7", t0 + STEADY)).collect();
    assert_eq!(
        answers,
        [Answerer::Elsewhere, Answerer::Elsewhere, Answerer::Owner]
    );
    // c dies: its will says offline; the home answers again.
    for c in &mut all[..2] {
        c.on_member_state("c", b"offline", t0);
    }
    let answering: Vec<Answerer> = all[..2]
        .iter()
        .map(|c| c.answerer("kx7", t0 + STEADY))
        .collect();
    assert_eq!(
        answering.iter().filter(|a| **a == Answerer::Home).count(),
        1,
        "{answering:?}"
    );
    // An id that names no valid vehicle still has one home.
    let odd = "x y";
    assert_eq!(
        all[..2]
            .iter()
            .filter(|c| c.answerer(odd, t0 + STEADY) == Answerer::Home)
            .count(),
        1
    );
}

#[test]
fn a_repeated_command_id_is_seen_and_counted() {
    let t0 = Instant::now();
    let mut a = member("a", &["a"], vec![], t0);
    assert!(!a.seen_before("kx1", "42"));
    assert!(a.seen_before("kx1", "42"), "the replay");
    assert!(!a.seen_before("kx2", "42"), "ids are per vehicle");
    a.note_result("kx3", "7");
    assert!(
        a.seen_before("kx3", "7"),
        "a result another instance published"
    );
    assert_eq!(a.counters.repeated_ids, 2);
    // Bounded: the oldest ids go first.
    for n in 0..SEEN_IDS {
        a.seen_before("kx9", &n.to_string());
    }
    assert!(
        !a.seen_before("kx1", "42"),
        "forgotten after {SEEN_IDS} newer ids"
    );
}

/// A dead owner's vehicles wait `settle` for a new link, then their home (one instance)
/// marks them offline; a vehicle that linked elsewhere first is left alone.
#[test]
fn a_dead_owners_vehicles_go_offline_after_settle_unless_claimed() {
    let t0 = Instant::now();
    let live = ["a", "b", "c"];
    let mut survivors: Vec<Cluster> = ["a", "b"]
        .iter()
        .map(|me| member(me, &live, vec![], t0))
        .collect();
    for s in &mut survivors {
        for n in 0..50 {
            s.on_claim(&format!("kx{n}"), &claim("c", 0), t0, wall(0));
        }
    }
    let died = t0 + Duration::from_secs(1);
    for s in &mut survivors {
        s.on_member_state("c", b"offline", died);
    }
    // kx0 links again at a before settle is over.
    let claim_a = survivors[0]
        .claim(&vid("kx0"), t0 + PROBATION, wall(2))
        .unwrap()
        .to_json();
    survivors[1].on_claim("kx0", claim_a.as_bytes(), died, wall(2));
    for s in &mut survivors {
        assert!(
            s.due_orphans(died + Duration::from_secs(9)).is_empty(),
            "not before settle"
        );
    }
    let mut marked: Vec<String> = survivors
        .iter_mut()
        .flat_map(|s| s.due_orphans(died + Duration::from_secs(10)))
        .collect();
    marked.sort();
    let mut want: Vec<String> = (1..50).map(|n| format!("kx{n}")).collect();
    want.sort();
    assert_eq!(marked, want, "each once, by one instance, kx0 not at all");
    for s in &mut survivors {
        assert!(
            s.due_orphans(died + Duration::from_secs(60)).is_empty(),
            "only once"
        );
    }
}

/// A cloud account: polled by its home; a newcomer that becomes home waits `settle`,
/// the one losing it stops at once, so the two never poll together.
#[test]
fn an_account_moves_without_two_pollers() {
    let t0 = Instant::now();
    let key = "xchanger:user:alice".to_string();
    // With node-1..3 the home is node-1, without node-1 it is node-2 (rendezvous tests).
    let mut n2 = member(
        "node-2",
        &["node-2", "node-3"],
        vec![Some(key.clone()), None],
        t0,
    );
    assert_eq!(n2.permits(t0), None, "nothing before settle");
    let t1 = t0 + Duration::from_secs(10);
    let beat = n2.incarnation().to_string();
    n2.on_beat("node-2", beat.as_bytes(), t1);
    n2.on_beat("node-3", b"theirs", t1);
    assert_eq!(n2.permits(t1), Some(vec![true, false]), "home after settle");
    assert!(n2.permitted(0) && !n2.permitted(1) && n2.is_account(0) && !n2.is_account(1));
    // node-1 joins: node-2 stops at once (before node-1's settle is over).
    let mut n1 = member(
        "node-1",
        &["node-1", "node-2", "node-3"],
        vec![Some(key.clone()), None],
        t1,
    );
    n2.on_beat("node-1", b"theirs", t1);
    n2.on_member_state("node-1", b"online", t1);
    assert_eq!(n2.permits(t1), Some(vec![false, false]), "lost at once");
    assert_eq!(n1.permits(t1 + Duration::from_secs(9)), None);
    let t2 = t1 + Duration::from_secs(10);
    let beat = n1.incarnation().to_string();
    n1.on_beat("node-1", beat.as_bytes(), t2);
    n1.on_beat("node-2", b"theirs", t2);
    n1.on_beat("node-3", b"theirs", t2);
    assert_eq!(n1.permits(t2), Some(vec![true, false]));
    // node-1 is cut off: its heartbeat stops coming back; after lease_ttl it fences itself.
    assert_eq!(
        n1.permits(t2 + Duration::from_secs(20)),
        None,
        "within the lease"
    );
    assert_eq!(
        n1.permits(t2 + Duration::from_secs(21)),
        Some(vec![false, false]),
        "fenced"
    );
    assert!(n1.fenced(t2 + Duration::from_secs(21)));
    // The others see it dead after its will and wait settle: later than the fence.
    assert!(config("x").lease_ttl < WILL_AFTER + config("x").settle);
}

#[test]
fn a_foreign_heartbeat_on_our_topic_is_a_second_instance() {
    let t0 = Instant::now();
    let mut a = member("a", &["a"], vec![], t0);
    assert!(!a.duplicate());
    a.on_beat("a", b"0123456789abcdef 99999999999999", t0);
    assert!(!a.duplicate(), "started later: the other one goes");
    a.on_beat("a", b"not a heartbeat", t0);
    assert!(!a.duplicate());
    a.on_beat("a", b"0123456789abcdef 1", t0);
    assert!(a.duplicate(), "started earlier: this one goes");
}

#[test]
fn membership_is_bounded_and_checked() {
    let t0 = Instant::now();
    let mut a = member("a", &["a"], vec![], t0);
    assert!(!a.on_member_state("not/an/id", b"online", t0));
    assert!(!a.on_member_state("a", b"online", t0), "unchanged");
    for n in 0..2 * MAX_MEMBERS {
        a.on_beat(&format!("m{n}"), b"theirs", t0);
        a.on_member_state(&format!("m{n}"), b"online", t0);
    }
    assert_eq!(
        a.live().count(),
        MAX_MEMBERS + 1,
        "the others heard, and itself"
    );
    assert!(!a.alone());
    let b = member("b", &["b"], vec![], t0);
    assert!(b.alone());
}

#[test]
fn heartbeats_are_due_every_beat() {
    let t0 = Instant::now();
    let mut a = Cluster::new(&config("a"), vec![], t0);
    assert!(a.fenced(t0), "fenced until its first heartbeat returns");
    let first = a.beat(t0).expect("due at once");
    assert!(a.beat(t0 + BEAT_EVERY / 2).is_none());
    let second = a.beat(t0 + BEAT_EVERY).expect("due again");
    assert_ne!(first, second, "numbered");
    // The lease runs from when a heartbeat was sent, however late it is read back.
    let read_late = t0 + Duration::from_secs(15);
    a.on_beat("a", first.as_bytes(), read_late);
    assert_eq!(a.lease_until(), Some(t0 + config("a").lease_ttl));
    a.on_beat("a", second.as_bytes(), read_late);
    assert_eq!(
        a.lease_until(),
        Some(t0 + BEAT_EVERY + config("a").lease_ttl)
    );
    a.on_beat("a", first.as_bytes(), read_late);
    assert_eq!(
        a.lease_until(),
        Some(t0 + BEAT_EVERY + config("a").lease_ttl),
        "an older one read later takes nothing back"
    );
}

/// The owner topic of a vehicle this instance holds says an older owner, nobody, or one
/// nobody hears: this instance says its claim again (after a reconnect, its old claim may
/// have overwritten a newer one; the newer holder's reassertion restores it).
#[test]
fn a_holder_reasserts_against_older_empty_and_ghost_claims() {
    let t0 = Instant::now();
    let mut b = member("b", &["a", "b"], vec![], t0);
    let v = vid("kx1");
    let mine = b.claim(&v, t0 + PROBATION, wall(5)).unwrap();
    assert_eq!(
        b.on_claim("kx1", &claim("a", 1), t0, wall(10)),
        Seen::Reassert(mine.clone())
    );
    assert_eq!(
        b.on_claim("kx1", b"", t0, wall(10)),
        Seen::Reassert(mine.clone())
    );
    assert_eq!(
        b.on_claim("kx1", &claim("ghost", 9), t0, wall(10)),
        Seen::Reassert(mine.clone())
    );
    assert_eq!(
        b.on_claim("kx1", mine.to_json().as_bytes(), t0, wall(10)),
        Seen::Nothing
    );
    // A claim for what is not a vehicle id is refused, and kept nowhere.
    let refused = b.counters.claims_refused;
    assert_eq!(
        b.on_claim("kx 1", &claim("a", 1), t0, wall(10)),
        Seen::Nothing
    );
    assert_eq!(b.counters.claims_refused, refused + 1);
}

/// A new claim is newer than the one it replaces even when this instance's clock is
/// behind the last owner's.
#[test]
fn a_claim_is_newer_than_the_last_even_with_a_clock_behind() {
    let t0 = Instant::now();
    let mut b = member("b", &["a", "b"], vec![], t0);
    b.on_claim("kx1", &claim("a", 30), t0, wall(31));
    let v = vid("kx1");
    let mine = b.claim(&v, t0 + PROBATION, wall(10)).unwrap();
    assert!(mine.since > wall(30), "{mine:?}");
}

/// Forged members and heartbeats fill the tables; an instance starting later still gets
/// in once they are old, and on probation nobody answers as a home.
#[test]
fn full_tables_make_room_and_probation_answers_nothing_as_home() {
    let t0 = Instant::now();
    let mut a = member("a", &["a"], vec![], t0);
    for n in 0..MAX_MEMBERS {
        a.on_beat(&format!("f{n}"), b"x", t0);
        a.on_member_state(&format!("f{n}"), b"offline", t0);
    }
    let later = t0 + Duration::from_secs(30);
    a.on_beat("late", b"x", later);
    a.on_member_state("late", b"online", later);
    assert!(a.live().any(|m| m == "late"), "let in");
    let fresh = Cluster::new(&config("z"), vec![], t0);
    assert_eq!(fresh.answerer("kx1", t0), Answerer::Elsewhere);
}

/// A broker node died with the instance's connection: no will ever comes (NATS), its
/// retained state still reads `online`. Its silence past `lease_ttl` is its death: its
/// vehicles go to their home after `settle`, and its account moves.
#[test]
fn a_silent_member_is_dead_though_its_state_says_online() {
    let t0 = Instant::now();
    let key = "xchanger:user:alice".to_string();
    let mut n2 = member("node-2", &["node-1", "node-2"], vec![Some(key)], t0);
    n2.on_claim("kx1", &claim("node-1", 0), t0, wall(0));
    assert_eq!(n2.answerer("kx1", t0 + STEADY), Answerer::Elsewhere);
    // node-2 keeps hearing itself; node-1 falls silent at t0.
    let mine = n2.incarnation().to_string();
    let mut t = t0;
    for _ in 0..15 {
        t += BEAT_EVERY;
        n2.on_beat("node-2", mine.as_bytes(), t);
    }
    let dead_at = t0 + config("x").lease_ttl + Duration::from_secs(1);
    assert_eq!(
        n2.permits(t0 + Duration::from_secs(19)),
        None,
        "node-1 still live"
    );
    assert!(n2.live().any(|m| m == "node-1"));
    n2.permits(dead_at);
    assert!(!n2.live().any(|m| m == "node-1"), "silent past lease_ttl");
    assert_eq!(
        n2.answerer("kx1", dead_at),
        Answerer::Elsewhere,
        "the members just changed"
    );
    assert_eq!(
        n2.answerer("kx1", dead_at + STEADY),
        Answerer::Home,
        "its vehicle answered by its home"
    );
    assert!(n2.due_orphans(dead_at + Duration::from_secs(9)).is_empty());
    assert_eq!(
        n2.due_orphans(dead_at + Duration::from_secs(10)),
        vec!["kx1".to_string()]
    );
    let later = dead_at + Duration::from_secs(10);
    n2.on_beat("node-2", mine.as_bytes(), later);
    assert_eq!(
        n2.permits(later),
        Some(vec![true]),
        "the account, after settle"
    );
}

/// A newly started instance claims nothing until it has listened for a second instance
/// with its id; then what it was to claim is claimed, unless it is that second one.
#[test]
fn claims_wait_for_probation_and_a_duplicate_claims_nothing() {
    let t0 = Instant::now();
    let mut a = member("a", &["a"], vec![], t0);
    let v = vid("kx1");
    assert_eq!(a.claim(&v, t0, wall(0)), None, "on probation");
    assert!(!a.owns(&v));
    assert!(a.due_claims(t0 + Duration::from_secs(1)).is_empty());
    assert_eq!(a.due_claims(t0 + PROBATION), vec![v.clone()]);
    assert!(a.claim(&v, t0 + PROBATION, wall(0)).is_some());
    assert!(a.due_claims(t0 + PROBATION).is_empty(), "each once");

    let mut b = member("b", &["b"], vec![], t0);
    assert_eq!(b.claim(&v, t0, wall(0)), None);
    b.on_beat("b", b"0123456789abcdef 1", t0);
    assert!(b.duplicate());
    assert!(b.due_claims(t0 + PROBATION).is_empty());
    assert_eq!(b.claim(&v, t0 + PROBATION, wall(0)), None);
}

/// A claim naming this instance, left by an earlier run, is cleared after probation; a
/// second instance of the id never clears its twin's.
#[test]
fn own_stale_claims_wait_for_probation_and_a_twin_keeps_its_hands_off() {
    let t0 = Instant::now();
    let mut fresh = member("a", &["a"], vec![], t0);
    assert_eq!(
        fresh.on_claim("kx1", &claim("a", 0), t0, wall(10)),
        Seen::Nothing
    );
    assert!(fresh.due_stale_claims(t0).is_empty(), "on probation");
    assert_eq!(
        fresh.due_stale_claims(t0 + PROBATION),
        vec!["kx1".to_string()]
    );
    assert_eq!(
        fresh.on_claim("kx2", &claim("a", 0), t0 + PROBATION, wall(10)),
        Seen::StaleOwnClaim
    );

    let mut twin = member("a", &["a"], vec![], t0);
    twin.on_claim("kx1", &claim("a", 0), t0, wall(10));
    twin.on_beat("a", b"0123456789abcdef 1", t0);
    assert!(twin.due_stale_claims(t0 + PROBATION).is_empty());
    assert_eq!(
        twin.on_claim("kx2", &claim("a", 0), t0 + PROBATION, wall(10)),
        Seen::Nothing
    );
}

/// An instance that was cut off (or frozen) and hears itself again gains nothing before a
/// whole settle: meanwhile another instance may have taken its accounts.
#[test]
fn back_from_a_fence_an_instance_waits_settle_again() {
    let t0 = Instant::now();
    let account = || vec![Some("xchanger:a".to_string())];
    let mut a = member("a", &["a"], account(), t0);
    assert_eq!(a.permits(t0 + Duration::from_secs(10)), Some(vec![true]));
    let woke = t0 + Duration::from_secs(60);
    assert_eq!(a.permits(woke), Some(vec![false]), "fenced on waking");
    let beat = a.incarnation().to_string();
    a.on_beat("a", beat.as_bytes(), woke);
    assert_eq!(a.permits(woke + Duration::from_secs(1)), None, "settling");
    assert_eq!(
        a.permits(woke + Duration::from_secs(11)),
        Some(vec![true]),
        "after settle"
    );
}

#[test]
fn the_lease_runs_from_the_last_own_heartbeat_heard() {
    let t0 = Instant::now();
    let mut a = Cluster::new(&config("a"), vec![], t0);
    assert_eq!(a.lease_until(), None, "never heard");
    let beat = a.incarnation().to_string();
    a.on_beat("a", beat.as_bytes(), t0 + Duration::from_secs(3));
    assert_eq!(
        a.lease_until(),
        Some(t0 + Duration::from_secs(3) + config("a").lease_ttl)
    );
    a.on_beat("a", b"0123456789abcdef 1", t0);
    assert_eq!(
        a.lease_until(),
        None,
        "a second instance of the id has none"
    );
}

/// A newer claim by an instance nobody hears (forged by any client that may publish on
/// the base topic, or left by one long gone) takes nothing from the live owner.
#[test]
fn a_claim_by_an_instance_not_live_takes_nothing() {
    let t0 = Instant::now();
    let mut a = member("a", &["a", "b"], vec![], t0);
    let v = vid("kx1");
    a.claim(&v, t0 + PROBATION, wall(0));
    assert!(matches!(
        a.on_claim("kx1", &claim("ghost", 5), t0, wall(10)),
        Seen::Reassert(c) if c.instance == "a"
    ));
    assert!(a.owns(&v));
    assert_eq!(
        a.on_claim("kx1", &claim("b", 6), t0, wall(10)),
        Seen::Yield { to: "b".into() }
    );
    // A ghost dated ahead does not pin the vehicle: a live claim still moves it.
    let mut c = member("c", &["c", "b"], vec![], t0);
    c.claim(&v, t0 + PROBATION, wall(0));
    c.on_claim("kx1", &claim("ghost", 50), t0, wall(10));
    assert_eq!(
        c.on_claim("kx1", &claim("b", 6), t0, wall(10)),
        Seen::Yield { to: "b".into() }
    );
}
