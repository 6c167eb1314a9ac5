//! kingxun framing: any byte stream, in any chunking, must never panic the codec; every
//! frame it returns must have a valid header CRC, a body within the limit, and must
//! re-encode to exactly the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use vehicle2mqtt::protocol::kingxun::{Decoded, Header, KxCodec};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut codec = KxCodec::new(1024);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Decoded::Frame(f))) => {
                    assert!(f.body.len() <= 1024);
                    let bytes = f.to_bytes();
                    assert_eq!(Header::parse(&bytes).ok().flatten(), Some(f.header));
                }
                Ok(Some(Decoded::Skipped(n))) => assert!(n > 0),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
