//! A kingxun link session fed any byte stream (framed by the codec), with commands and
//! timer ticks between frames: it must never panic, never hand over a request before the
//! link is proven, and never prove a link for an unknown device.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use vehicle2mqtt::protocol::kingxun::session::{Output, Session, Settings, Start};
use vehicle2mqtt::protocol::kingxun::{Control, Decoded, KxCodec, Profile, RangeAnswer};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let phantom = flags & 1 == 1;
    let settings = Arc::new(Settings {
        idle_timeout: Duration::from_secs(600),
        read_timeout: Duration::from_secs(30),
        command_timeout: Duration::from_secs(20),
        bad_in_a_row: 20,
        range: RangeAnswer { max_range_m: 1, charge_notify_soc: 1, soc_min: 1 },
    });
    let start = Start {
        dev_id: 1001,
        seq: 1,
        key: [7; 16],
        phantom,
        trusted: flags & 2 == 2,
        profile: Profile::default(),
        session_id: 0x0102_0304,
        iv: [9; 16],
        first_seq: 0,
    };
    let mut now = Instant::now();
    let (mut session, _) = Session::<u8>::register(start, settings, now);
    let mut codec = KxCodec::new(1024);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(decoded)) = codec.decode(&mut buf) {
        let Decoded::Frame(frame) = decoded else {
            let _ = session.on_skipped();
            continue;
        };
        now += Duration::from_secs(u64::from(frame.header.seq % 40));
        let mut proven = session.proven();
        let out = match frame.header.msg_id % 7 {
            5 => session.on_timer(now, frame.header.crypt),
            6 => {
                let _ = session.send_command(Control::Lock { voice: 1 }, 1, 0, now);
                session.on_frame(frame, now, [3; 16])
            }
            _ => session.on_frame(frame, now, [3; 16]),
        };
        for o in &out {
            match o {
                Output::Proven => proven = true,
                Output::Request { .. } => assert!(proven),
                _ => {}
            }
        }
        assert!(!(phantom && session.proven()));
    }
});
