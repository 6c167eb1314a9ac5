//! The client role's link without sockets: a made-up clock, bytes fed as a platform
//! sends them (docs/protocols/exlive.md, "Login sequence" and "Framing").

use super::*;
use proptest::prelude::*;

const HB: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(90);

/// The specification's own 8000 answer, verbatim (docs/protocols/exlive.md, "The
/// specification's own examples").
const SPEC_ACK: &[u8] = br#"{"header":{"cmd":"8000"},"body":{"cmd":"1000","result":"success" }}"#;

fn settings() -> ClientSettings {
    ClientSettings {
        name: "me".into(),
        pass: "pw".into(),
        ver: "1.0".into(),
        heartbeat: HB,
        idle_limit: IDLE,
        max_message: 1024,
        bad_in_a_row: 3,
    }
}

fn start() -> (ClientSession, Message, Instant) {
    let now = Instant::now();
    let (s, login) = ClientSession::start(settings(), now);
    (s, login, now)
}

fn ack(cmd: &str, result: &str) -> Vec<u8> {
    line(&Message::Ack {
        cmd: cmd.into(),
        result: result.into(),
    })
}

fn logged_in() -> (ClientSession, Instant) {
    let (mut s, _, now) = start();
    let out = s.on_bytes(SPEC_ACK, now);
    assert_eq!(
        out,
        [
            ClientOutput::LoggedIn,
            ClientOutput::Send(Message::GroupsRequest { client: true })
        ]
    );
    (s, now)
}

fn vehicle(id: &str) -> Message {
    Message::Vehicle {
        id: id.into(),
        code: String::new(),
        sim: String::new(),
    }
}

#[test]
fn the_login_goes_first_and_the_specifications_answer_is_taken_byte_by_byte() {
    let (mut s, login, now) = start();
    assert_eq!(
        login,
        Message::Login {
            name: "me".into(),
            pass: "pw".into(),
            ver: "1.0".into(),
            kind: String::new(),
            mode: String::new(),
        }
    );
    assert_eq!(
        line(&Message::Heartbeat),
        br#"{"body":{"result":""},"header":{"cmd":"1002"}}
"#
    );
    assert!(!s.logged_in());
    assert_eq!(s.next_deadline(), Some(now + LOGIN_TIMEOUT));
    let (last, first) = SPEC_ACK.split_last().unwrap();
    for b in first {
        assert_eq!(s.on_bytes(std::slice::from_ref(b), now), []);
    }
    assert!(!s.logged_in(), "not before the closing brace");
    let out = s.on_bytes(&[*last], now);
    assert_eq!(
        out,
        [
            ClientOutput::LoggedIn,
            ClientOutput::Send(Message::GroupsRequest { client: true })
        ]
    );
    assert!(s.logged_in());
    assert_eq!(s.buf.capacity(), 0, "nothing kept between messages");
}

#[test]
fn before_the_login_answer_other_messages_and_other_acks_are_ignored() {
    let (mut s, _, now) = start();
    assert_eq!(s.on_bytes(&line(&vehicle("501")), now), []);
    assert_eq!(s.on_bytes(&ack("1002", "success"), now), []);
    assert_eq!(s.on_bytes(&line(&Message::Logout), now), []);
    assert!(!s.logged_in());
    // An answer with no cmd is taken as the login's (some platforms leave it out).
    let out = s.on_bytes(&ack("", "succeed"), now);
    assert_eq!(out[0], ClientOutput::LoggedIn);
}

#[test]
fn a_refused_login_closes_with_its_result() {
    let (mut s, _, now) = start();
    let out = s.on_bytes(&ack("1000", "fail"), now);
    assert_eq!(
        out,
        [ClientOutput::Close(ClientError::Refused("fail".into()))]
    );
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.on_bytes(SPEC_ACK, now), [], "closed");
    assert_eq!(s.on_timer(now + LOGIN_TIMEOUT), []);
}

#[test]
fn no_login_answer_within_30_s_closes() {
    let (mut s, _, now) = start();
    // Other messages do not move the login's deadline.
    s.on_bytes(&line(&vehicle("1")), now + Duration::from_secs(29));
    assert_eq!(
        s.on_timer(now + LOGIN_TIMEOUT - Duration::from_millis(1)),
        []
    );
    let out = s.on_timer(now + LOGIN_TIMEOUT);
    assert_eq!(out, [ClientOutput::Close(ClientError::LoginTimeout)]);
    assert_eq!(
        ClientError::LoginTimeout.to_string(),
        "no login answer within 30 s"
    );
}

#[test]
fn heartbeats_go_every_period_and_a_late_timer_sends_one() {
    let (mut s, t0) = logged_in();
    assert_eq!(
        s.next_deadline(),
        Some(t0 + HB),
        "the first a period after login"
    );
    assert_eq!(s.on_timer(t0 + HB - Duration::from_millis(1)), []);
    // The platform talks, so silence never ends the link here.
    s.on_bytes(&line(&vehicle("1")), t0 + HB);
    assert_eq!(
        s.on_timer(t0 + HB),
        [ClientOutput::Send(Message::Heartbeat)]
    );
    assert_eq!(s.next_deadline(), Some(t0 + HB * 2));
    let late = t0 + HB * 3 + Duration::from_secs(1);
    s.on_bytes(&line(&vehicle("1")), late);
    assert_eq!(s.on_timer(late), [ClientOutput::Send(Message::Heartbeat)]);
    assert_eq!(s.next_deadline(), Some(late + HB));
}

#[test]
fn silence_past_the_idle_limit_closes_and_any_message_moves_it() {
    let (mut s, t0) = logged_in();
    let talk = t0 + Duration::from_secs(50);
    s.on_bytes(&line(&Message::Heartbeat), talk);
    for at in [30, 60, 90, 120] {
        let out = s.on_timer(t0 + Duration::from_secs(at));
        assert_eq!(out, [ClientOutput::Send(Message::Heartbeat)], "at {at} s");
    }
    assert_eq!(s.next_deadline(), Some(talk + IDLE));
    let out = s.on_timer(talk + IDLE);
    assert_eq!(out, [ClientOutput::Close(ClientError::Silent)]);
}

#[test]
fn groups_are_answered_with_their_vehicles_request_and_the_rest_handed_on() {
    let (mut s, t0) = logged_in();
    let group = Message::Group {
        groupid: "3".into(),
        relation: String::new(),
        customer: "c".into(),
        groupname: "Fleet".into(),
    };
    let reply = Message::PassthroughData {
        terminalid: "501".into(),
        code: String::new(),
        data: "done".into(),
    };
    let mut stream = line(&group);
    stream.extend(line(&vehicle("501")));
    // Bare concatenated objects, without newlines, frame as well.
    stream.extend(reply.encode().into_bytes());
    let out = s.on_bytes(&stream, t0);
    assert_eq!(
        out,
        [
            ClientOutput::Send(Message::VehiclesRequest {
                groupid: "3".into()
            }),
            ClientOutput::Deliver(vehicle("501")),
            ClientOutput::Deliver(reply),
        ]
    );
    // A second login answer is nobody's business but the connector's.
    let out = s.on_bytes(SPEC_ACK, t0);
    assert!(matches!(
        out[..],
        [ClientOutput::Deliver(Message::Ack { .. })]
    ));
    let out = s.on_bytes(&line(&Message::Logout), t0);
    assert_eq!(out, [ClientOutput::Close(ClientError::LoggedOut)]);
}

#[test]
fn malformed_messages_cost_themselves_until_too_many_come_in_a_row() {
    let (mut s, t0) = logged_in();
    let out = s.on_bytes(b"{not json}\n{\"header\":{}}\n", t0);
    assert!(matches!(
        out[..],
        [
            ClientOutput::Malformed {
                what: Malformed::Undecodable(DecodeError::Json(_)),
                in_a_row: 1
            },
            ClientOutput::Malformed {
                what: Malformed::Undecodable(DecodeError::NoCommand),
                in_a_row: 2
            },
        ]
    ));
    // A good one resets the count.
    let out = s.on_bytes(&line(&vehicle("1")), t0);
    assert_eq!(out, [ClientOutput::Deliver(vehicle("1"))]);
    let out = s.on_bytes(b"{x}{y}{z}{", t0);
    assert_eq!(out.len(), 4);
    assert_eq!(
        out[3],
        ClientOutput::Close(ClientError::TooManyMalformed { in_a_row: 3 })
    );
    assert_eq!(s.buf.capacity(), 0);
}

#[test]
fn an_object_over_the_limit_is_a_typed_error_before_it_is_all_buffered() {
    let (mut s, t0) = logged_in();
    let mut big = b"{\"header\":{\"cmd\":\"1003\"},\"body\":{\"msg\":\"".to_vec();
    big.resize(5000, b'a');
    let mut out = Vec::new();
    for piece in big.chunks(100) {
        out.extend(s.on_bytes(piece, t0));
        assert!(s.buf.len() <= 1024 + 100);
    }
    assert_eq!(
        out,
        [ClientOutput::Close(ClientError::TooLarge { max: 1024 })]
    );
    assert!(!s.logged_in());
}

#[test]
fn the_end_of_the_stream_closes_and_an_unclosed_object_is_malformed() {
    let (mut s, t0) = logged_in();
    s.on_bytes(br#"{"header":{"cmd":"1001"},"body":{"data":""}"#, t0);
    let out = s.on_eof(t0);
    assert_eq!(
        out,
        [
            ClientOutput::Malformed {
                what: Malformed::Unclosed { len: 43 },
                in_a_row: 1
            },
            ClientOutput::Close(ClientError::Closed)
        ]
    );
    assert_eq!(s.on_eof(t0), [], "once");
    let (mut s, _, now) = start();
    assert_eq!(s.on_eof(now), [ClientOutput::Close(ClientError::Closed)]);
}

proptest! {
    /// Any bytes, in any pieces: no panic, a bounded buffer, and what comes out does not
    /// depend on how the stream was cut.
    #[test]
    fn any_bytes_in_any_pieces(
        junk in proptest::collection::vec(any::<u8>(), 0..400),
        cut in 1usize..50,
    ) {
        let mut stream = SPEC_ACK.to_vec();
        stream.extend_from_slice(&junk);
        stream.extend(line(&vehicle("7")));
        let (mut whole, _, t0) = start();
        let all = whole.on_bytes(&stream, t0);
        let (mut pieces, _, _) = start();
        let mut got = Vec::new();
        for piece in stream.chunks(cut) {
            got.extend(pieces.on_bytes(piece, t0));
            prop_assert!(pieces.buf.len() <= 1024 + cut);
        }
        prop_assert_eq!(all, got);
    }
}
