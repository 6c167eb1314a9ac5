//! PROXY v2 headers: any bytes, in any prefix, must never panic the parser; a prefix of
//! a header is never an error, a header found never claims more bytes than it was given,
//! and a proxied one re-encodes to the bytes it came from (when it has no TLVs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vehicle2mqtt::protocol::proxy_v2::{encode, parse, Origin, FIXED_LEN, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Ok(Some(header)) = whole {
        assert!(header.len <= data.len() && header.len <= FIXED_LEN + MAX_PAYLOAD);
        for cut in 0..header.len {
            assert_eq!(parse(&data[..cut]), Ok(None));
        }
        if let Origin::Proxied { source, destination } = header.origin {
            let plain = if source.is_ipv4() { FIXED_LEN + 12 } else { FIXED_LEN + 36 };
            if header.len == plain && data[13] & 0x0f == 1 {
                assert_eq!(encode(source, destination).as_deref(), Some(&data[..plain]));
            }
        }
    }
});
