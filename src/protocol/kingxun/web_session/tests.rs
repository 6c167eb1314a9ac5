//! The web-server role's link without sockets: a made-up clock, bytes fed as a kxSvr
//! sends them (docs/protocols/kingxun.md, "9001 connect" to "kxSvr's real behaviour").

use super::*;
use crate::protocol::kingxun::{Control, Header, COMMON_LEN};
use proptest::prelude::*;

const KEY: [u8; 16] = [0x11; 16];
const IV0: [u8; 16] = [0x22; 16];
const NEW_IV: [u8; 16] = [0x33; 16];
const SID: u32 = 0xFD00_0001;
const HB: Duration = Duration::from_secs(10);
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

type Out = Vec<WebOutput<&'static str>>;

fn settings() -> WebSettings {
    WebSettings {
        key: KEY,
        iv: IV0,
        host: "kingxun.site".into(),
        heartbeat: HB,
        command_timeout: CMD_TIMEOUT,
        max_body: 1024,
    }
}

fn start() -> (WebSession<&'static str>, Frame, Instant) {
    let now = Instant::now();
    let (s, hello) = WebSession::start(settings(), now, 1_700_000_000);
    (s, hello, now)
}

/// kxSvr's 9001 answer: sealed with the initial key and IV, CryptFlag 0.
fn connect_answer(key: &[u8; 16], code: u32) -> Vec<u8> {
    let ack = WebConnectAck {
        session_id: SID,
        iv: NEW_IV,
        time: 1_700_000_001,
    };
    let sealed = crypto::encrypt(key, &IV0, &ack.encode());
    Frame::response(id::WEB_CONNECT, 1, code, false, Bytes::from(sealed)).to_bytes()
}

/// A relayed answer as kxSvr sends it: the header CRC left 0.
fn relayed(msg_id: u16, seq: u16, code: u32) -> Vec<u8> {
    let mut bytes = Frame::response(msg_id, seq, code, false, Bytes::new()).to_bytes();
    bytes[13] = 0;
    bytes[14] = 0;
    bytes
}

fn heartbeat_answer(seq: u16, total: u32) -> Vec<u8> {
    let body = WebHeartbeatAck {
        total_devices: total,
        start_time: 1,
    };
    Frame::response(id::WEB_HEARTBEAT, seq, 0, false, Bytes::from(body.encode())).to_bytes()
}

fn connected() -> (WebSession<&'static str>, Instant) {
    let (mut s, _, now) = start();
    let out = s.on_bytes(&connect_answer(&KEY, 0), now);
    assert!(matches!(out[..], [WebOutput::Connected]));
    (s, now)
}

fn sent(out: &Out) -> Vec<&Frame> {
    out.iter()
        .filter_map(|o| match o {
            WebOutput::Send(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn closed(out: &Out) -> Option<&WebError> {
    match out.last() {
        Some(WebOutput::Close(why)) => Some(why),
        _ => None,
    }
}

fn lock(dev_id: u32) -> AppControl {
    AppControl {
        dev_id,
        dev_type: 2,
        time: 5,
        user_id: 0,
        control: Control::Lock { voice: 3 },
    }
}

#[test]
fn the_9001_is_sealed_with_the_initial_key_and_kxsvrs_answer_is_taken_byte_by_byte() {
    let (mut s, hello, now) = start();
    let bytes = hello.to_bytes();
    assert_eq!(bytes[9], 1, "CryptFlag 1");
    assert_eq!(&bytes[15..23], &[0; 8], "DevId 0, SessionId 0");
    let plain = crypto::decrypt(&KEY, &IV0, &hello.body).unwrap();
    let told = WebConnect::decode(&plain).unwrap();
    assert_eq!(told.time, 1_700_000_000);
    assert_eq!(told.host, "kingxun.site");
    assert!(!s.connected());
    assert_eq!(s.next_deadline(), Some(now + CONNECT_TIMEOUT));

    let answer = connect_answer(&KEY, 0);
    let (last, first) = answer.split_last().unwrap();
    for b in first {
        assert!(s.on_bytes(std::slice::from_ref(b), now).is_empty());
    }
    assert!(!s.connected(), "not before the last byte");
    let out = s.on_bytes(&[*last], now);
    assert!(matches!(out[..], [WebOutput::Connected]));
    assert!(s.connected());
    assert_eq!(
        s.next_deadline(),
        Some(now),
        "the first heartbeat goes at once"
    );
    assert_eq!(s.buf.capacity(), 0, "nothing kept between frames");
}

#[test]
fn the_9001_header_is_golden() {
    let (_, hello, _) = start();
    let bytes = hello.to_bytes();
    let len = hello.body.len() as u32;
    assert_eq!(
        len,
        32 + 6,
        "a 21-byte WebConnect padded to 32, then nDataLen and crc16"
    );
    let mut common = vec![0x29, 0x23, 0x00, 0x01, 0x00];
    common.extend_from_slice(&len.to_le_bytes());
    common.extend_from_slice(&[0x01, 0, 0, 0]);
    assert_eq!(&bytes[..13], &common[..]);
    assert_eq!(
        &bytes[13..15],
        &crate::protocol::kingxun::crc16(&common).to_le_bytes()
    );
}

#[test]
fn until_its_answer_other_frames_are_ignored_and_a_bad_answer_closes() {
    let (mut s, _, now) = start();
    assert!(s.on_bytes(&heartbeat_answer(1, 3), now).is_empty());
    assert!(s.on_bytes(&relayed(id::APP_LOCK, 1, 0), now).is_empty());

    let out = s.on_bytes(&connect_answer(&KEY, 1), now);
    let why = closed(&out).unwrap();
    assert!(matches!(why, WebError::ConnectRefused { code: 1 }));
    assert_eq!(why.to_string(), "9001 refused: 1 (rejected)");
    assert!(
        s.on_bytes(&connect_answer(&KEY, 0), now).is_empty(),
        "closed"
    );
    assert_eq!(s.next_deadline(), None);

    let (mut s, _, now) = start();
    let out = s.on_bytes(&connect_answer(&[0; 16], 0), now);
    assert!(matches!(closed(&out), Some(WebError::ConnectUnreadable)));

    let (mut s, _, now) = start();
    let request = Frame::request(id::WEB_CONNECT, 1, 0, 0, false, Bytes::new());
    let out = s.on_bytes(&request.to_bytes(), now);
    assert!(matches!(closed(&out), Some(WebError::ConnectNotResponse)));
}

#[test]
fn no_9001_answer_within_15_s_closes() {
    let (mut s, _, now) = start();
    let almost = now + CONNECT_TIMEOUT - Duration::from_millis(1);
    assert!(s.on_timer(almost, 0).is_empty());
    let out = s.on_timer(now + CONNECT_TIMEOUT, 0);
    let why = closed(&out).unwrap();
    assert!(matches!(why, WebError::NoConnectAnswer));
    assert_eq!(why.to_string(), "no 9001 answer within 15 s");
    assert!(s.on_timer(now + CONNECT_TIMEOUT * 2, 0).is_empty());
}

#[test]
fn heartbeats_go_every_period_are_numbered_and_unanswered_ones_close() {
    let (mut s, t0) = connected();
    let out = s.on_timer(t0, 7);
    let hb = sent(&out);
    assert_eq!(hb.len(), 1);
    let hb = hb[0];
    assert_eq!(hb.header.msg_id, id::WEB_HEARTBEAT);
    assert_eq!(hb.header.seq, 2, "after the 9001's 1");
    assert!(!hb.header.crypt, "9002 is plain");
    assert_eq!(
        hb.header.kind,
        Kind::Request {
            dev_id: 0,
            session_id: SID
        }
    );
    let body = WebHeartbeat {
        time: 7,
        host: "kingxun.site".into(),
    };
    assert_eq!(hb.body.as_ref(), &body.encode()[..]);
    assert_eq!(s.next_deadline(), Some(t0 + HB));
    assert!(s.on_timer(t0 + HB - Duration::from_millis(1), 0).is_empty());

    // Answered: the server's device count comes out.
    let out = s.on_bytes(&heartbeat_answer(2, 42), t0 + Duration::from_secs(1));
    assert!(matches!(out[..], [WebOutput::ServerDevices(42)]));

    // Unanswered from t0+1 s: beats at 10, 20, 30 go; at 40, 39 s of silence is past
    // three periods and 5 s.
    for (i, at) in [10, 20, 30].into_iter().enumerate() {
        let out = s.on_timer(t0 + Duration::from_secs(at), 0);
        assert_eq!(sent(&out)[0].header.seq, 3 + i as u16, "at {at} s");
    }
    let out = s.on_timer(t0 + Duration::from_secs(40), 0);
    let why = closed(&out).unwrap();
    assert!(matches!(why, WebError::HeartbeatsUnanswered));
    assert_eq!(why.to_string(), "no answer to heartbeats");
}

#[test]
fn a_late_timer_sends_one_heartbeat_and_the_next_is_a_period_later() {
    let (mut s, t0) = connected();
    s.on_timer(t0, 0);
    let late = t0 + HB * 2 + Duration::from_secs(3);
    // Any frame counts as heard.
    s.on_bytes(&relayed(id::APP_LOCK, 999, 0), late);
    assert_eq!(sent(&s.on_timer(late, 0)).len(), 1);
    assert_eq!(s.next_deadline(), Some(late + HB));
}

#[test]
fn a_command_is_sealed_with_the_new_iv_and_its_answer_matched_by_seq_and_msg_id() {
    let (mut s, _, t0) = start();
    assert_eq!(s.send_command(lock(1001), "early", t0), Err("early"));
    let out = s.on_bytes(&connect_answer(&KEY, 0), t0);
    assert!(matches!(out[..], [WebOutput::Connected]));

    let frame = s.send_command(lock(1001), "lock", t0).unwrap();
    assert_eq!(frame.header.msg_id, id::APP_LOCK);
    assert_eq!(frame.header.seq, 2);
    assert!(frame.header.crypt);
    assert_eq!(
        frame.header.kind,
        Kind::Request {
            dev_id: 0,
            session_id: SID
        }
    );
    #[rustfmt::skip]
    let golden = [
        0xE9, 0x03, 0x00, 0x00, // devId 1001
        0x02,                   // devtype
        5, 0, 0, 0, 0, 0, 0, 0, // timestamp
        0, 0, 0, 0,             // usrId
        0x03,                   // voice
    ];
    assert_eq!(crypto::decrypt(&KEY, &NEW_IV, &frame.body).unwrap(), golden);
    assert!(crypto::decrypt(&KEY, &IV0, &frame.body).is_err());

    // Same SeqNum, another MsgId: not this command's answer; it keeps waiting.
    assert!(s.on_bytes(&relayed(id::APP_UNLOCK, 2, 0), t0).is_empty());
    // Another SeqNum: nobody waits for it.
    assert!(s.on_bytes(&relayed(id::APP_LOCK, 3, 0), t0).is_empty());
    let out = s.on_bytes(&relayed(id::APP_LOCK, 2, 0), t0);
    assert!(matches!(
        out[..],
        [WebOutput::Done("lock", Outcome::Succeeded)]
    ));
    // kxSvr's second answer (5 after its 30 s wait) is ignored.
    assert!(s.on_bytes(&relayed(id::APP_LOCK, 2, 5), t0).is_empty());

    // A refusal, numbered after the first command.
    let frame = s.send_command(lock(1002), "offline", t0).unwrap();
    assert_eq!(frame.header.seq, 3);
    let out = s.on_bytes(&relayed(id::APP_LOCK, 3, 3), t0);
    let [WebOutput::Done("offline", Outcome::Failed(why))] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(why, "server answered 3 (device offline)");
}

#[test]
fn an_unanswered_command_times_out_at_its_deadline_and_a_late_answer_is_ignored() {
    let (mut s, t0) = connected();
    s.on_timer(t0, 0);
    let at = t0 + Duration::from_secs(1);
    let frame = s.send_command(lock(1001), "lock", at).unwrap();
    // Heartbeat at 10 s, the command's deadline at 21 s.
    assert_eq!(s.next_deadline(), Some(t0 + HB));
    s.on_bytes(&heartbeat_answer(2, 1), t0 + HB);
    s.on_timer(t0 + HB, 0);
    assert_eq!(s.next_deadline(), Some(t0 + HB * 2));
    s.on_bytes(&heartbeat_answer(3, 1), t0 + HB * 2);
    let out = s.on_timer(t0 + HB * 2, 0);
    assert!(out.iter().all(|o| matches!(o, WebOutput::Send(_))));
    assert_eq!(s.next_deadline(), Some(at + CMD_TIMEOUT));
    let out = s.on_timer(at + CMD_TIMEOUT, 0);
    assert!(matches!(
        out[..],
        [WebOutput::Done("lock", Outcome::TimedOut)]
    ));
    let late = relayed(id::APP_LOCK, frame.header.seq, 0);
    assert!(s.on_bytes(&late, at + CMD_TIMEOUT).is_empty());
    assert_eq!(s.take_pending().count(), 0);
}

#[test]
fn junk_is_skipped_and_an_oversized_length_is_a_typed_error() {
    let (mut s, t0) = connected();
    let out = s.on_bytes(b"\x00\xffjunk that is no header at all", t0);
    assert!(out.iter().all(|o| matches!(o, WebOutput::Skipped(_))));
    assert!(!out.is_empty());
    assert!(s.connected(), "junk does not end the link");

    let mut header = Vec::new();
    Header {
        msg_id: id::WEB_HEARTBEAT,
        seq: 1,
        body_len: u32::MAX,
        crypt: false,
        kind: Kind::Response { resp_code: 0 },
    }
    .write(&mut header);
    let mut s = connected().0;
    let out = s.on_bytes(&header, t0);
    let why = closed(&out).unwrap();
    assert!(matches!(why, WebError::Read(CodecError::TooLarge { .. })));
    assert!(why.to_string().starts_with("read: body length"));
    assert!(s.buf.capacity() < 1 << 20, "refused before buffering");
    assert!(!s.connected());
}

#[test]
fn the_end_of_the_stream_says_where_it_came() {
    let (mut s, _, _) = start();
    assert!(matches!(s.on_eof(), WebError::ClosedDuringConnect));
    let (mut s, t0) = connected();
    assert!(matches!(s.on_eof(), WebError::Closed));
    let (mut s, _) = connected();
    let half = heartbeat_answer(2, 1);
    s.on_bytes(&half[..COMMON_LEN + 2], t0);
    assert!(matches!(s.on_eof(), WebError::Read(CodecError::Io(_))));
}

#[test]
fn sequence_numbers_wrap() {
    let (mut s, t0) = connected();
    s.seq = u16::MAX;
    let frame = s.send_command(lock(1), "a", t0).unwrap();
    assert_eq!(frame.header.seq, 0);
    let out = s.on_bytes(&relayed(id::APP_LOCK, 0, 0), t0);
    assert!(matches!(
        out[..],
        [WebOutput::Done("a", Outcome::Succeeded)]
    ));
}

/// What a run of outputs says, comparable.
fn summary(out: &Out) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            WebOutput::Send(f) => format!("send {:?}", f.to_bytes()),
            WebOutput::Skipped(_) => "skipped".into(),
            WebOutput::Close(why) => format!("close {why}"),
            other => format!("{other:?}"),
        })
        .collect()
}

proptest! {
    /// Any bytes, in any pieces: no panic, at most one frame buffered, and what comes
    /// out does not depend on how the stream was cut (skips aside, which a cut can split).
    #[test]
    fn any_bytes_in_any_pieces(
        junk in proptest::collection::vec(any::<u8>(), 0..300),
        cut in 1usize..40,
    ) {
        let mut stream = connect_answer(&KEY, 0);
        stream.extend_from_slice(&junk);
        stream.extend_from_slice(&heartbeat_answer(2, 9));
        let (mut whole, _, t0) = start();
        let all = whole.on_bytes(&stream, t0);
        let (mut pieces, _, _) = start();
        let mut got = Vec::new();
        for piece in stream.chunks(cut) {
            got.extend(pieces.on_bytes(piece, t0));
            prop_assert!(pieces.buf.len() <= COMMON_LEN + 8 + 1024 + cut);
        }
        let keep = |v: Vec<String>| v.into_iter().filter(|s| s != "skipped").collect::<Vec<_>>();
        prop_assert_eq!(keep(summary(&all)), keep(summary(&got)));
    }
}
