//! The device loop on the fake platform (real HTTP on loopback) in paused tokio time:
//! what a refresh, polling off and quiet hours cost in 1011 reads, minutes in a moment.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sim::{Fail, FakeIauto360, FakeOptions};
use super::*;
use crate::shared::Secret;

const ESN: &str = "865432100012345";

struct Harness {
    fake: FakeIauto360,
    commands: mpsc::Sender<CommandRequest>,
    updates: mpsc::Receiver<(usize, Update)>,
    /// Every state field published so far, newest last.
    states: Vec<VehicleState>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn harness(tweak: impl FnOnce(&mut Iauto360Config)) -> Harness {
    let fake = FakeIauto360::start(FakeOptions::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut cfg = Iauto360Config {
        enabled: true,
        base_url: fake.url(),
        open_id: "OPEN123".into(),
        secure_code: Secret::new("SECRETcode"),
        devices: vec![Iauto360Device {
            overspeed_kmh: None,
            esn: ESN.into(),
            name: None,
            quiet_hours: None,
        }],
        poll_interval: Duration::from_secs(600),
        detail_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    tweak(&mut cfg);
    assert_eq!(cfg.validate(), Ok(()));
    let dir = tempfile::tempdir().unwrap();
    let (tx, updates) = mpsc::channel(1024);
    let (commands, rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let ctx = ConnectorContext::alone(UpdateSink::new(0, tx), rx, shutdown.clone());
    let connector = Box::new(Iauto360Connector::new(cfg).with_state_dir(dir.path().into()));
    tokio::spawn(connector.run(ctx));
    Harness {
        fake,
        commands,
        updates,
        states: Vec::new(),
        shutdown,
        _dir: dir,
    }
}

fn vid() -> VehicleId {
    vehicle_id(ESN).unwrap()
}

impl Harness {
    async fn send(&self, command: Command) -> mpsc::Receiver<CommandProgress> {
        let (progress, rx) = mpsc::channel(8);
        let req = CommandRequest {
            id: "t".into(),
            vehicle: vid(),
            command,
            progress,
        };
        self.commands.send(req).await.unwrap();
        rx
    }

    /// Takes the updates sent so far (lets the loop run first).
    async fn drain(&mut self) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Ok((_, u)) = self.updates.try_recv() {
            if let Update::State { state, .. } = u {
                self.states.push(state);
            }
        }
    }

    /// The last published value of `field`.
    fn last(&self, field: Field) -> Option<serde_json::Value> {
        self.states
            .iter()
            .rev()
            .find_map(|s| s.get(field))
            .map(|v| serde_json::to_value(v).unwrap())
    }

    async fn wait_reads(&self, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.fake.reads(ESN) < n {
            assert!(
                Instant::now() < deadline,
                "{} reads of {n}",
                self.fake.reads(ESN)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The final progress of a command (after `Accepted`).
async fn outcome(rx: &mut mpsc::Receiver<CommandProgress>) -> CommandProgress {
    loop {
        match rx.recv().await {
            Some(CommandProgress::Accepted) => continue,
            Some(p) => return p,
            None => panic!("the command was dropped"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_refresh_without_a_newer_report_fails_after_the_confirming_reads() {
    let mut h = harness(|_| {}).await;
    h.wait_reads(1).await;
    let pressed = Instant::now();
    let mut rx = h.send(Command::Refresh).await;
    let CommandProgress::Failed(why) = outcome(&mut rx).await else {
        panic!("not failed")
    };
    // The read at once, then one per step of CONFIRM_AFTER (2+3+5+8+13+15 = 46 s).
    assert!(
        why.starts_with("no report newer than the press after 7 reads (last report at 20"),
        "{why}"
    );
    assert_eq!(h.fake.reads(ESN), 1 + 7);
    let took = Instant::now() - pressed;
    assert!(
        (Duration::from_secs(46)..Duration::from_secs(50)).contains(&took),
        "{took:?}"
    );
    // Then back to the idle pace: nothing more for minutes.
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert_eq!(h.fake.reads(ESN), 8);
    h.drain().await;
    assert_eq!(h.last(Field::PollingPhase), Some("idle".into()));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_ends_fresh_with_the_report_s_own_time() {
    let h = harness(|_| {}).await;
    h.wait_reads(1).await;
    let uploaded = chrono::Utc::now().timestamp() + 1;
    h.fake.set_active_time(ESN, uploaded);
    let mut rx = h.send(Command::Refresh).await;
    let expected = chrono::DateTime::from_timestamp(uploaded, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        outcome(&mut rx).await,
        CommandProgress::Fresh {
            reported_at: expected
        }
    );
    assert_eq!(h.fake.reads(ESN), 2, "one read for the refresh");
    assert_eq!(h.fake.calls().by_service.get(&1001).copied(), Some(2));
}

#[tokio::test(start_paused = true)]
async fn polling_off_makes_no_scheduled_reads_but_a_refresh_still_reads() {
    let mut h = harness(|c| c.poll_interval = Duration::from_secs(60)).await;
    h.wait_reads(1).await;
    let mut rx = h.send(Command::Polling(false)).await;
    assert_eq!(rx.recv().await, Some(CommandProgress::Succeeded));
    let before = h.fake.reads(ESN);
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(h.fake.reads(ESN), before, "no scheduled read while off");
    h.drain().await;
    assert_eq!(h.last(Field::Polling), Some(false.into()));
    assert_eq!(h.last(Field::PollingPhase), Some("off".into()));
    assert!(h
        .states
        .iter()
        .any(|s| s.cleared.contains(&Field::NextPoll)));

    let mut rx = h.send(Command::Refresh).await;
    assert!(matches!(outcome(&mut rx).await, CommandProgress::Failed(_)));
    assert_eq!(
        h.fake.reads(ESN),
        before + 7,
        "the refresh read and confirmed"
    );
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(h.fake.reads(ESN), before + 7, "and off again after it");

    // On again, at 2 minutes: a read every 2 minutes (±10 %).
    let mut rx = h.send(Command::PollInterval(2)).await;
    assert_eq!(rx.recv().await, Some(CommandProgress::Succeeded));
    let mut rx = h.send(Command::Polling(true)).await;
    assert_eq!(rx.recv().await, Some(CommandProgress::Succeeded));
    let on = h.fake.reads(ESN);
    tokio::time::sleep(Duration::from_secs(10 * 60 + 30)).await;
    let made = h.fake.reads(ESN) - on;
    assert!(
        (4..=6).contains(&made),
        "{made} reads in 10 minutes at 2 minutes"
    );
    h.drain().await;
    assert_eq!(h.last(Field::PollInterval), Some(2.into()));
}

#[tokio::test(start_paused = true)]
async fn quiet_hours_hold_scheduled_reads_back() {
    // Quiet from an hour ago to an hour from now, UTC.
    let now = chrono::Utc::now();
    let hhmm = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
    let quiet = format!(
        "{}-{}",
        hhmm(now - chrono::Duration::hours(1)),
        hhmm(now + chrono::Duration::hours(1))
    );
    let mut h = harness(|c| {
        c.poll_interval = Duration::from_secs(60);
        c.timezone = "UTC".into();
        c.devices[0].quiet_hours = Some(quiet);
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    assert_eq!(h.fake.reads(ESN), 0);
    h.drain().await;
    assert_eq!(h.last(Field::PollingPhase), Some("quiet_hours".into()));
    // A refresh reads all the same.
    h.fake
        .set_active_time(ESN, chrono::Utc::now().timestamp() + 1);
    let mut rx = h.send(Command::Refresh).await;
    assert!(matches!(
        outcome(&mut rx).await,
        CommandProgress::Fresh { .. }
    ));
    assert_eq!(h.fake.reads(ESN), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_while_the_platform_holds_back_reads_nothing() {
    let h = harness(|_| {}).await;
    h.fake.fail_next(1011, [Fail::Http(429)]);
    h.wait_reads(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rx = h.send(Command::Refresh).await;
    let Some(CommandProgress::Refused(why)) = rx.recv().await else {
        panic!("not refused")
    };
    assert!(why.contains("holding reads back until"), "{why}");
    assert!(why.ends_with("nothing was read"), "{why}");
    assert_eq!(h.fake.reads(ESN), 1);
}

#[tokio::test(start_paused = true)]
async fn settings_start_shown_and_capabilities_are_offered() {
    let mut h = harness(|c| c.poll_interval_active = Some(Duration::from_secs(120))).await;
    h.wait_reads(1).await;
    h.drain().await;
    assert_eq!(h.last(Field::Polling), Some(true.into()));
    assert_eq!(h.last(Field::PollInterval), Some(10.into()));
    assert_eq!(h.last(Field::PollIntervalActive), Some(2.into()));
    let device = Iauto360Device {
        overspeed_kmh: None,
        esn: ESN.into(),
        name: None,
        quiet_hours: None,
    };
    let caps = info(&vid(), &device).capabilities;
    for c in [
        Capability::Lock,
        Capability::Refresh,
        Capability::Polling,
        Capability::PollIntervals { min: 1, max: 1440 },
    ] {
        assert!(caps.contains(&c), "{c:?}");
    }
}
