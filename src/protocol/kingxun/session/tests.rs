//! The link session without sockets: every rule of `serve_link` as inputs and outputs.

use super::*;
use proptest::prelude::*;

const KEY: [u8; 16] = [7; 16];
const IV: [u8; 16] = [9; 16];
const SID: u32 = 0x1122_3344;
const DEV: u32 = 1001;

fn settings() -> std::sync::Arc<Settings> {
    std::sync::Arc::new(Settings {
        idle_timeout: Duration::from_secs(600),
        read_timeout: Duration::from_secs(30),
        command_timeout: Duration::from_secs(20),
        bad_in_a_row: 20,
        range: RangeAnswer {
            max_range_m: 60_000,
            charge_notify_soc: 20,
            soc_min: 5,
        },
    })
}

fn start(phantom: bool, trusted: bool) -> Start {
    Start {
        dev_id: DEV,
        seq: 5,
        key: KEY,
        phantom,
        trusted,
        profile: Profile::default(),
        session_id: SID,
        iv: IV,
        first_seq: 100,
    }
}

fn open(
    phantom: bool,
    trusted: bool,
) -> (Session<&'static str>, Vec<Output<&'static str>>, Instant) {
    let now = Instant::now();
    let (s, out) = Session::register(start(phantom, trusted), settings(), now);
    (s, out, now)
}

fn plain(msg_id: u16, seq: u16, sid: u32, body: &[u8]) -> Frame {
    Frame::request(msg_id, seq, DEV, sid, false, Bytes::copy_from_slice(body))
}

fn sealed(msg_id: u16, seq: u16, key: &[u8; 16], iv: &[u8; 16], body: &[u8]) -> Frame {
    let body = crypto::encrypt(key, iv, body);
    Frame::request(msg_id, seq, DEV, SID, true, Bytes::from(body))
}

fn sent<'a>(out: &'a [Output<&'static str>]) -> Vec<&'a Frame> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn code(f: &Frame) -> u32 {
    match f.header.kind {
        Kind::Response { resp_code } => resp_code,
        Kind::Request { .. } => panic!("a request was sent as an answer"),
    }
}

fn range_query(soc: u8) -> Vec<u8> {
    super::super::RangeQuery {
        dev_type: 2,
        battery_id: "B1".into(),
        soc,
        voltage_cv: 5200,
    }
    .encode()
}

#[test]
fn the_first_frame_must_be_a_1001() {
    // A 1002 first: "bad parameter" (6) to its own MsgId and SeqNum, then close.
    let Opening::Refused { reply: Some(r) } = opening(&plain(id::STATUS, 3, 0, b"")) else {
        panic!("a 1002 opened a link");
    };
    assert_eq!(
        (r.header.msg_id, r.header.seq, code(&r)),
        (id::STATUS, 3, 6)
    );
    // A response first: closed without a word.
    let resp = Frame::response(id::REGISTER, 1, 0, false, Bytes::new());
    assert_eq!(opening(&resp), Opening::Refused { reply: None });
    // A sealed 1001 is accepted and says nothing (there is no IV yet).
    let f = Frame::request(id::REGISTER, 8, DEV, 0, true, Bytes::from_static(&[1; 32]));
    assert_eq!(
        opening(&f),
        Opening::Register {
            dev_id: DEV,
            seq: 8,
            register: Register::default()
        }
    );
}

#[test]
fn registration_answers_session_and_iv_and_proves_only_trusted_known_devices() {
    let (_, out, _) = open(false, false);
    let [Output::Send(ack)] = out.as_slice() else {
        panic!("{out:?}");
    };
    // RespCode 0, then SessionId u32 LE and the 16-byte IV (docs/protocols/kingxun.md,
    // "1001 registration").
    assert_eq!((ack.header.msg_id, ack.header.seq, code(ack)), (1001, 5, 0));
    let mut body = vec![0x44, 0x33, 0x22, 0x11];
    body.extend_from_slice(&IV);
    assert_eq!(&ack.body[..], &body[..]);

    let (s, out, _) = open(false, true);
    assert!(s.proven());
    assert!(matches!(out.as_slice(), [Output::Send(_), Output::Proven]));
    // An unknown id is never proven, even where plain frames are trusted.
    let (s, out, _) = open(true, true);
    assert!(!s.proven());
    assert_eq!(out.len(), 1);
}

#[test]
fn an_unproven_link_is_answered_but_nothing_it_says_is_acted_on() {
    let (mut s, _, now) = open(false, false);
    let out = s.on_frame(plain(id::STATUS, 1, SID, &[0; 40]), now, [0; 16]);
    assert!(matches!(
        out[0],
        Output::Event(LinkEvent::Unproven {
            msg_id: id::STATUS,
            first: true
        })
    ));
    assert_eq!(code(sent(&out)[0]), RESP_OK);
    assert!(!out.iter().any(|o| matches!(o, Output::Request { .. })));
    // Told once per link.
    let out = s.on_frame(plain(id::STATUS, 2, SID, &[0; 40]), now, [0; 16]);
    assert!(matches!(
        out[0],
        Output::Event(LinkEvent::Unproven { first: false, .. })
    ));
    // 1005 still gets its answer, the same one a proven device gets.
    let out = s.on_frame(plain(id::RANGE, 3, SID, &range_query(50)), now, [0; 16]);
    let answer = sent(&out)[0];
    assert_eq!(code(answer), RESP_OK);
    assert_eq!(&answer.body[..], &settings().range.encode()[..]);
    // A malformed 1005: "bad parameter".
    let out = s.on_frame(plain(id::RANGE, 4, SID, &[1]), now, [0; 16]);
    assert_eq!(code(sent(&out)[0]), RESP_BAD_PARAMETER);
}

#[test]
fn a_frame_sealed_with_key_and_session_iv_proves_the_link_and_is_handed_over_opened() {
    let (mut s, _, now) = open(false, false);
    let out = s.on_frame(
        sealed(id::STATUS, 1, &KEY, &IV, b"status body"),
        now,
        [0; 16],
    );
    assert!(matches!(out[0], Output::Proven));
    let Output::Request { frame, body } = &out[1] else {
        panic!("{out:?}");
    };
    assert_eq!(
        (frame.header.msg_id, &body[..]),
        (id::STATUS, &b"status body"[..])
    );
    assert!(s.proven());
    // Proven links hand plain frames over too (firmware that seals only sometimes).
    let out = s.on_frame(plain(id::TRAFFIC, 2, SID, b"t"), now, [0; 16]);
    assert!(matches!(out.as_slice(), [Output::Request { .. }]));
}

#[test]
fn impostors_are_refused_and_closed_after_twenty_bad_frames_in_a_row() {
    let (mut s, _, now) = open(false, false);
    // Wrong session: rejected (1).
    let out = s.on_frame(plain(id::STATUS, 1, SID ^ 1, b""), now, [0; 16]);
    assert!(matches!(
        out[0],
        Output::Event(LinkEvent::BadSession { from: DEV })
    ));
    assert_eq!(code(sent(&out)[0]), RESP_REJECTED);
    // Sealed with a wrong key: rejected, not proven.
    let out = s.on_frame(sealed(id::STATUS, 2, &[1; 16], &IV, b"x"), now, [0; 16]);
    assert!(matches!(
        out[0],
        Output::Event(LinkEvent::DecryptFailed { msg_id: id::STATUS })
    ));
    assert!(!s.proven());
    // A good frame resets the count.
    s.on_frame(plain(id::STATUS, 3, SID, b""), now, [0; 16]);
    assert_eq!(s.bad_in_a_row(), 0);
    for i in 0..19 {
        let out = s.on_frame(plain(id::STATUS, i, SID ^ 1, b""), now, [0; 16]);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Close(_))),
            "closed after {i}"
        );
    }
    let out = s.on_frame(plain(id::STATUS, 20, 7, b""), now, [0; 16]);
    assert!(out.contains(&Output::Event(LinkEvent::TooManyBad { in_a_row: 20 })));
    assert!(matches!(out.last(), Some(Output::Close(_))));
}

#[test]
fn an_unknown_id_cannot_be_proven_by_any_sealed_frame() {
    let (mut s, _, now) = open(true, false);
    // The phantom's key is the random one the caller gave; a frame sealed with a guess
    // fails like any other.
    let out = s.on_frame(sealed(id::STATUS, 1, &[3; 16], &IV, b"x"), now, [0; 16]);
    assert!(matches!(
        out[0],
        Output::Event(LinkEvent::DecryptFailed { .. })
    ));
    // Even one sealed right (the caller's random key leaked) is never trusted.
    let out = s.on_frame(sealed(id::STATUS, 2, &KEY, &IV, b"x"), now, [0; 16]);
    assert!(!s.proven());
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Proven | Output::Request { .. })));
}

#[test]
fn a_repeated_1001_gets_a_fresh_iv_and_another_id_is_refused() {
    let (mut s, _, now) = open(false, false);
    let fresh = [0xAB; 16];
    let out = s.on_frame(plain(id::REGISTER, 9, 0, b""), now, fresh);
    let ack = sent(&out)[0];
    assert_eq!(&ack.body[4..], &fresh[..]);
    assert_eq!(&ack.body[..4], &SID.to_le_bytes()[..]);
    // The old IV no longer opens; the fresh one does.
    let out = s.on_frame(sealed(id::STATUS, 10, &KEY, &IV, b"x"), now, [0; 16]);
    assert!(matches!(
        out[0],
        Output::Event(LinkEvent::DecryptFailed { .. })
    ));
    let out = s.on_frame(sealed(id::STATUS, 11, &KEY, &fresh, b"x"), now, [0; 16]);
    assert!(matches!(out[0], Output::Proven));
    // A 1001 for another device on this link: "bad devId" (4).
    let other = Frame::request(id::REGISTER, 12, 2002, 0, false, Bytes::new());
    let out = s.on_frame(other, now, [0; 16]);
    assert!(matches!(
        out[0],
        Output::Event(LinkEvent::ReregisterOtherId { from: 2002 })
    ));
    assert_eq!(code(sent(&out)[0]), RESP_BAD_DEVICE);
}

#[test]
fn a_command_is_sealed_and_matched_to_its_answer_by_seq_and_msg_id() {
    let (mut s, _, now) = open(false, false);
    let unlock = Control::Unlock {
        allow_min: 5,
        lowest_soc: 10,
        farthest_m: 3000,
    };
    let frame = s
        .send_command(unlock, "unlock", 1_700_000_000, now)
        .unwrap();
    assert_eq!((frame.header.msg_id, frame.header.seq), (id::UNLOCK, 101));
    assert!(frame.header.crypt);
    let expected = DeviceControl {
        svr_time: 1_700_000_000,
        session_id: SID,
        user_id: 0,
        control: unlock,
    }
    .encode(Profile::default())
    .unwrap();
    assert_eq!(crypto::decrypt(&KEY, &IV, &frame.body).unwrap(), expected);

    // An answer to another SeqNum, or with another MsgId, settles nothing.
    let stray = Frame::response(id::UNLOCK, 7, 0, false, Bytes::new());
    assert_eq!(
        s.on_frame(stray, now, [0; 16]),
        vec![Output::Event(LinkEvent::UnexpectedResponse { seq: 7 })]
    );
    let wrong = Frame::response(id::LOCK, 101, 0, false, Bytes::new());
    assert!(matches!(
        s.on_frame(wrong, now, [0; 16])[0],
        Output::Event(LinkEvent::ResponseMismatch { seq: 101, .. })
    ));
    let right = Frame::response(id::UNLOCK, 101, 0, false, Bytes::new());
    assert_eq!(
        s.on_frame(right, now, [0; 16]),
        vec![Output::Done("unlock", Outcome::Succeeded)]
    );
    // A refusal names the device's code.
    let lock = Control::Lock { voice: 1 };
    let f = s.send_command(lock, "lock", 0, now).unwrap();
    let refused = Frame::response(id::LOCK, f.header.seq, 3, false, Bytes::new());
    let out = s.on_frame(refused, now, [0; 16]);
    assert!(
        matches!(&out[0], Output::Done("lock", Outcome::Failed(why)) if why.starts_with("device answered 3"))
    );
}

#[test]
fn commands_time_out_and_quiet_or_stalled_links_close() {
    let (mut s, _, now) = open(false, false);
    let lock = Control::Lock { voice: 1 };
    s.send_command(lock, "lock", 0, now).unwrap();
    let cfg = settings();
    assert_eq!(s.next_deadline(), now + cfg.read_timeout / 2);
    let at = now + cfg.command_timeout;
    let out = s.on_timer(at, false);
    assert_eq!(out, vec![Output::Done("lock", Outcome::TimedOut)]);
    assert_eq!(s.take_pending().count(), 0);

    // Half a frame in the buffer for read_timeout: stalled.
    let t = now + Duration::from_secs(40);
    s.note_buffer(true, t);
    assert!(s.next_deadline() <= t + cfg.read_timeout);
    let out = s.on_timer(t + cfg.read_timeout, true);
    assert!(out.contains(&Output::Event(LinkEvent::Stalled)));
    // The rest arrived in time: nothing closes.
    let (mut s, _, now) = open(false, false);
    s.note_buffer(true, now);
    assert!(s.on_timer(now + Duration::from_secs(29), false).is_empty());

    // Nothing for idle_timeout: closed; a frame moves the deadline.
    let (mut s, _, now) = open(false, false);
    s.on_frame(
        plain(id::STATUS, 1, SID, b""),
        now + Duration::from_secs(300),
        [0; 16],
    );
    assert!(s.on_timer(now + cfg.idle_timeout, false).is_empty());
    let out = s.on_timer(now + Duration::from_secs(900), false);
    assert_eq!(
        out,
        vec![
            Output::Event(LinkEvent::IdleClosed),
            Output::Close("idle past idle_timeout")
        ]
    );
}

#[test]
fn junk_the_codec_skipped_counts_towards_closing() {
    let (mut s, _, _) = open(false, false);
    for _ in 0..19 {
        assert!(s.on_skipped().is_none());
    }
    assert!(matches!(s.on_skipped(), Some(Output::Close(_))));
}

proptest! {
    /// Whatever a peer sends, in any order with commands and timers, the session never
    /// panics, never hands over a request before the link is proven, and never proves a
    /// phantom.
    #[test]
    fn any_input_is_safe(
        phantom in any::<bool>(),
        steps in proptest::collection::vec(
            (0u8..4, any::<u16>(), any::<u16>(), any::<u32>(), any::<bool>(),
             proptest::collection::vec(any::<u8>(), 0..64)),
            0..40),
    ) {
        let (mut s, _, now) = open(phantom, false);
        let mut t = now;
        for (kind, msg_id, seq, sid, crypt, body) in steps {
            let mut proven = s.proven();
            t += Duration::from_secs(u64::from(seq % 50));
            let out = match kind {
                0 => {
                    let f = Frame::request(msg_id, seq, DEV, sid, crypt, Bytes::from(body));
                    s.on_frame(f, t, [1; 16])
                }
                1 => s.on_frame(Frame::response(msg_id, seq, sid, crypt, Bytes::from(body)), t, [1; 16]),
                2 => s.on_timer(t, crypt),
                _ => {
                    let _ = s.send_command(Control::Lock { voice: 1 }, "lock", 0, t);
                    Vec::new()
                }
            };
            for o in &out {
                match o {
                    Output::Proven => proven = true,
                    Output::Request { .. } => prop_assert!(proven, "a request handed over unproven"),
                    _ => {}
                }
            }
            prop_assert!(!(phantom && s.proven()));
        }
    }
}
