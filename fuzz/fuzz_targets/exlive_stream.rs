//! EXLIVE: any byte stream, fed in arbitrary chunks, must never panic the splitter or
//! the message decoder, and every object the splitter returns must be brace-balanced
//! and within the size limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vehicle2mqtt::protocol::exlive::{Frame, Message, Splitter};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut splitter = Splitter::new(1024);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match splitter.split(&mut buf) {
                Ok(Some(Frame::Object(raw))) => {
                    assert!(raw.len() <= 1024 + 1, "object over the limit: {}", raw.len());
                    assert_eq!(raw.first(), Some(&b'{'));
                    assert_eq!(raw.last(), Some(&b'}'));
                    if let Ok(msg) = Message::decode(&raw) {
                        // Whatever decodes must encode and decode to the same message.
                        let again = Message::decode(msg.encode().as_bytes()).expect("re-decodes");
                        if !matches!(msg, Message::Unknown { .. }) {
                            assert_eq!(again.cmd(), msg.cmd());
                        }
                    }
                }
                Ok(Some(Frame::Malformed(_))) => {}
                Ok(None) => break,
                Err(_) => return, // the link would be closed
            }
        }
    }
});
