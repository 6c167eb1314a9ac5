//! EXLIVE codec: golden messages from the specification (docs/protocols/exlive.md,
//! "The specification's own examples"), split at every byte offset, and
//! property tests over random message streams.

use bytes::BytesMut;
use proptest::prelude::*;
use vehicle2mqtt::protocol::exlive::{Frame, Message, Position, Splitter};

/// The specification's own examples, verbatim (including the 1001 lacking its final brace
/// and the 1013 lacking its final brace).
const SEED: &str = r#"{"header":{"cmd":"1000"},"body":{"name":"exlive","pass":"000000","ver":"","type":"","mode":""}}
{"header":{"cmd":"8000"},"body":{"cmd":"1000","result":"success" }}
{"header":{"cmd":"1001"},"body":{"data":""}
{"header":{"cmd":"1002"},"body":{"result":"" }}
{"header":{"cmd":"1003"},"body":{"msg":"" }}
{"header":{"cmd":"1007"},"body":{"code":"","id":"","lat":"","lng":"","veo":"","dir":"","gpstime":"","av":"","alarm":"","oil":"","dis":"","wstate":"","cstate":"","posinfo":"" }}
{"header":{"cmd":"1008"},"body":{"client":"true" }}
{"header":{"cmd":"1009"},"body":{"groupid":"","relation":"","customer":"","goupname":"" }}
{"header":{"cmd":"1012"},"body":{"terminalid":"","code":"","data":"" }}
"#;

fn frames(stream: &[u8], chunks: &[usize]) -> Vec<Frame> {
    let mut s = Splitter::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at: usize = 0;
    for &c in chunks.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(c).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        while let Some(f) = s.split(&mut buf).expect("no error") {
            out.push(f);
        }
        if at == stream.len() {
            break;
        }
    }
    out
}

fn cmds(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match f {
            Frame::Object(b) => Message::decode(b)
                .map(|m| m.cmd().to_string())
                .unwrap_or_else(|e| format!("err:{e}")),
            Frame::Malformed(_) => "malformed".to_string(),
        })
        .collect()
}

#[test]
fn seed_stream_parses_with_the_broken_1001_costing_only_itself() {
    let got = cmds(&frames(SEED.as_bytes(), &[]));
    assert_eq!(
        got,
        [
            "1000",
            "8000",
            "malformed",
            "1002",
            "1003",
            "1007",
            "1008",
            "1009",
            "1012"
        ]
    );
}

#[test]
fn seed_stream_split_at_every_offset() {
    let whole = cmds(&frames(SEED.as_bytes(), &[]));
    for cut in 1..SEED.len() {
        assert_eq!(
            cmds(&frames(SEED.as_bytes(), &[cut])),
            whole,
            "cut at {cut}"
        );
    }
    // One byte at a time.
    assert_eq!(cmds(&frames(SEED.as_bytes(), &vec![1; SEED.len()])), whole);
}

#[test]
fn gbk_stream_split_at_every_offset() {
    // JSON text with an escaped backslash (`\\`) and braces inside the string.
    let (gbk, _, _) = encoding_rs::GBK.encode("浙江省杭州市{西湖区}\\\\文三路");
    let mut one = br#"{"header":{"cmd":"1007"},"body":{"id":"9","posinfo":""#.to_vec();
    one.extend_from_slice(&gbk);
    one.extend_from_slice(br#""}}"#);
    let mut stream = one.clone();
    stream.extend_from_slice(&one);
    for cut in 1..stream.len() {
        let f = frames(&stream, &[cut]);
        assert_eq!(f.len(), 2, "cut at {cut}: {f:?}");
        for frame in f {
            let Frame::Object(b) = frame else {
                panic!("cut at {cut}")
            };
            let Message::Position(p) = Message::decode(&b).unwrap() else {
                panic!()
            };
            assert_eq!(p.posinfo.as_deref(), Some("浙江省杭州市{西湖区}\\文三路"));
        }
    }
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 {}\\[\\]:,\"\\\\]{0,12}",
        Just("上海市{浦东}".to_string()),
        Just(String::new()),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Heartbeat),
        Just(Message::Logout),
        (arb_text(), arb_text()).prop_map(|(name, pass)| Message::Login {
            name,
            pass,
            ver: String::new(),
            kind: String::new(),
            mode: String::new()
        }),
        (arb_text(), arb_text(), arb_text()).prop_map(|(terminalid, code, data)| {
            Message::Passthrough {
                terminalid,
                code,
                data,
            }
        }),
        (
            arb_text(),
            -90.0f64..90.0,
            -180.0f64..180.0,
            proptest::option::of(0.0f64..200.0),
            arb_text()
        )
            .prop_map(
                |(code, lat, lng, veo, posinfo)| Message::Position(Position {
                    code,
                    id: "7".into(),
                    lat: Some(lat),
                    lng: Some(lng),
                    veo,
                    posinfo: Some(posinfo).filter(|s| !s.trim().is_empty()),
                    ..Default::default()
                })
            ),
    ]
}

proptest! {
    #[test]
    fn random_streams_round_trip(
        msgs in proptest::collection::vec(arb_message(), 1..8),
        seps in proptest::collection::vec(prop_oneof![Just(""), Just("\n"), Just("\r\n"), Just("  \t")], 8),
        gbk in any::<bool>(),
        chunks in proptest::collection::vec(1usize..40, 0..20),
    ) {
        let mut stream = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let text = m.encode();
            if gbk {
                stream.extend_from_slice(&encoding_rs::GBK.encode(&text).0);
            } else {
                stream.extend_from_slice(text.as_bytes());
            }
            stream.extend_from_slice(seps[i % seps.len()].as_bytes());
        }
        let got: Vec<Message> = frames(&stream, &chunks)
            .into_iter()
            .map(|f| match f {
                Frame::Object(b) => Message::decode(&b).expect("decodes"),
                Frame::Malformed(b) => panic!("malformed: {:?}", String::from_utf8_lossy(&b)),
            })
            .collect();
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut s = Splitter::new(256);
        let mut buf = BytesMut::from(&data[..]);
        for _ in 0..600 {
            match s.split(&mut buf) {
                Ok(Some(Frame::Object(b))) => { let _ = Message::decode(&b); }
                Ok(Some(Frame::Malformed(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
