//! The client role's link to an EXLIVE platform fed any byte stream in any pieces (after
//! the specification's login answer, or not), with timer ticks between pieces: it must
//! never panic, log in at most once, hand nothing on before it logged in, close after
//! too many malformed messages in a row, and say nothing after it closed.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;
use vehicle2mqtt::protocol::exlive::client_session::{ClientOutput, ClientSession, ClientSettings};

/// docs/protocols/exlive.md, "The specification's own examples".
const SPEC_ACK: &[u8] = br#"{"header":{"cmd":"8000"},"body":{"cmd":"1000","result":"success" }}"#;
const BAD_IN_A_ROW: u32 = 5;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let chunk = usize::from(flags >> 1).max(1);
    let settings = ClientSettings {
        name: "me".into(),
        pass: "pw".into(),
        ver: String::new(),
        heartbeat: Duration::from_secs(30),
        idle_limit: Duration::from_secs(90),
        max_message: 1024,
        bad_in_a_row: BAD_IN_A_ROW,
    };
    let mut now = Instant::now();
    let (mut session, _) = ClientSession::start(settings, now);
    let mut stream = Vec::new();
    if flags & 1 == 1 {
        stream.extend_from_slice(SPEC_ACK);
    }
    stream.extend_from_slice(data);
    let (mut logged_in, mut closed) = (false, false);
    for piece in stream.chunks(chunk) {
        let mut out = session.on_bytes(piece, now);
        if piece[0] % 3 == 0 {
            now += Duration::from_secs(u64::from(piece[piece.len() - 1] % 60));
            out.extend(session.on_timer(now));
        }
        for o in &out {
            assert!(!closed, "nothing after Close: {o:?}");
            match o {
                ClientOutput::LoggedIn => {
                    assert!(!logged_in);
                    logged_in = true;
                }
                ClientOutput::Deliver(_) | ClientOutput::Send(_) => assert!(logged_in),
                ClientOutput::Malformed { in_a_row, .. } => assert!(*in_a_row <= BAD_IN_A_ROW),
                ClientOutput::Close(_) => closed = true,
            }
        }
        assert_eq!(session.next_deadline().is_none(), closed);
    }
    if !closed {
        let out = session.on_eof(now);
        assert!(matches!(out.last(), Some(ClientOutput::Close(_))));
    }
});
