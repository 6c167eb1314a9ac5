//! The web-server role's link to a kingxun server fed any byte stream in any pieces
//! (after a valid 9001 answer, or not), with timer ticks and commands between pieces: it
//! must never panic, connect at most once and before anything else, end each command at
//! most once, and say nothing after it closed.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;
use vehicle2mqtt::protocol::kingxun::web_session::{WebOutput, WebSession, WebSettings};
use vehicle2mqtt::protocol::kingxun::{crypto, id, AppControl, Control, Frame, WebConnectAck};

const KEY: [u8; 16] = [7; 16];
const IV0: [u8; 16] = [9; 16];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let chunk = usize::from(flags >> 1).max(1);
    let settings = WebSettings {
        key: KEY,
        iv: IV0,
        host: "kingxun.site".into(),
        heartbeat: Duration::from_secs(10),
        command_timeout: Duration::from_secs(20),
        max_body: 1024,
    };
    let mut now = Instant::now();
    let (mut session, _) = WebSession::<u32>::start(settings, now, 0);
    let mut stream = Vec::new();
    if flags & 1 == 1 {
        // Past the handshake, which a fuzzer cannot seal.
        let ack = WebConnectAck { session_id: 5, iv: [3; 16], time: 0 };
        let sealed = crypto::encrypt(&KEY, &IV0, &ack.encode());
        stream = Frame::response(id::WEB_CONNECT, 1, 0, false, Bytes::from(sealed)).to_bytes();
    }
    stream.extend_from_slice(data);
    let (mut connected, mut closed, mut other_seen) = (false, false, false);
    let (mut sent, mut done) = (0u32, HashSet::new());
    for piece in stream.chunks(chunk) {
        let mut out = session.on_bytes(piece, now);
        if piece[0] % 3 == 0 {
            now += Duration::from_secs(u64::from(piece[piece.len() - 1] % 40));
            out.extend(session.on_timer(now, 0));
        }
        if piece[0] % 5 == 1 {
            let app = AppControl { dev_id: 1, dev_type: 2, time: 0, user_id: 0, control: Control::Lock { voice: 1 } };
            if session.send_command(app, sent, now).is_ok() {
                sent += 1;
            }
        }
        for o in &out {
            assert!(!closed, "nothing after Close: {o:?}");
            match o {
                WebOutput::Connected => {
                    assert!(!connected && !other_seen);
                    connected = true;
                }
                WebOutput::Done(c, _) => {
                    assert!(*c < sent && done.insert(*c), "command {c} ended twice or never sent");
                    other_seen = true;
                }
                WebOutput::ServerDevices(_) | WebOutput::Send(_) => {
                    assert!(connected);
                    other_seen = true;
                }
                WebOutput::Skipped(_) => {}
                WebOutput::Close(_) => closed = true,
            }
        }
        assert_eq!(session.next_deadline().is_none(), closed);
    }
});
