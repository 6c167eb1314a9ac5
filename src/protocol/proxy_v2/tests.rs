//! Golden headers worked out by hand from the spec (docs/protocols/proxy-protocol-v2.md):
//! every byte annotated.
use super::*;

const SIG: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

fn v4_header() -> Vec<u8> {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[
        0x21, // version 2, command PROXY
        0x11, // AF_INET, STREAM
        0x00, 0x0c, // 12 address bytes follow
        192, 0, 2, 1, // source 192.0.2.1
        198, 51, 100, 7, // destination 198.51.100.7
        0xdc, 0x04, // source port 56324
        0x1e, 0x14, // destination port 7700
    ]);
    h
}

#[test]
fn the_signature_is_the_specs() {
    assert_eq!(SIGNATURE, SIG);
}

#[test]
fn an_ipv4_header() {
    let h = v4_header();
    assert_eq!(
        parse(&h),
        Ok(Some(Header {
            origin: Origin::Proxied {
                source: "192.0.2.1:56324".parse().unwrap(),
                destination: "198.51.100.7:7700".parse().unwrap(),
            },
            len: 28,
        }))
    );
    assert_eq!(
        encode(
            "192.0.2.1:56324".parse().unwrap(),
            "198.51.100.7:7700".parse().unwrap()
        ),
        Some(h)
    );
}

#[test]
fn an_ipv6_header() {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]); // PROXY, AF_INET6 STREAM, 36 bytes
    h.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    ]); // 2001:db8::1
    h.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02,
    ]); // 2001:db8::2
    h.extend_from_slice(&[0x01, 0xbb, 0x05, 0xde]); // ports 443, 1502
    let header = parse(&h).unwrap().unwrap();
    assert_eq!(header.len, 52);
    assert_eq!(
        header.origin,
        Origin::Proxied {
            source: "[2001:db8::1]:443".parse().unwrap(),
            destination: "[2001:db8::2]:1502".parse().unwrap(),
        }
    );
    assert_eq!(
        encode(
            "[2001:db8::1]:443".parse().unwrap(),
            "[2001:db8::2]:1502".parse().unwrap()
        ),
        Some(h)
    );
    assert_eq!(
        encode(
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::2]:1".parse().unwrap()
        ),
        None,
        "one family for both"
    );
}

/// HAProxy's health check: LOCAL, no addresses; the real endpoints stand.
#[test]
fn a_local_header() {
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(
        parse(&h),
        Ok(Some(Header {
            origin: Origin::Local,
            len: 16
        }))
    );
    // LOCAL with addresses: they are skipped, not used.
    let mut h = v4_header();
    h[12] = 0x20;
    assert_eq!(
        parse(&h),
        Ok(Some(Header {
            origin: Origin::Local,
            len: 28
        }))
    );
    // PROXY with the UNSPEC family: as LOCAL.
    let mut h = SIG.to_vec();
    h.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
    assert_eq!(parse(&h).unwrap().unwrap().origin, Origin::Local);
}

/// TLVs (here a 4-byte NOOP, type 0x04) count in the length and are skipped.
#[test]
fn tlvs_are_skipped() {
    let mut h = v4_header();
    h[15] = 12 + 7;
    h.extend_from_slice(&[0x04, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]);
    h.extend_from_slice(b"\x40\x40first frame");
    let header = parse(&h).unwrap().unwrap();
    assert_eq!(header.len, 35);
    assert_eq!(
        &h[header.len..],
        b"\x40\x40first frame",
        "what follows is the device's"
    );
}

/// Every split point: more is wanted until the last byte, never an error.
#[test]
fn a_header_in_pieces() {
    let h = v4_header();
    for cut in 0..h.len() {
        assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
    }
    assert!(parse(&h).unwrap().is_some());
}

#[test]
fn no_header_is_refused_at_once() {
    // A device's own first bytes (kingxun starts 0x40 0x40; EXLIVE with JSON).
    assert_eq!(parse(b"@@\x00\x10"), Err(ProxyError::BadSignature));
    assert_eq!(parse(b"{\"cmd\":1001}"), Err(ProxyError::BadSignature));
    // Version 1's text header.
    assert_eq!(
        parse(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 7700\r\n"),
        Err(ProxyError::BadSignature)
    );
    // Almost the signature.
    let mut h = v4_header();
    h[11] = 0x0b;
    assert_eq!(parse(&h), Err(ProxyError::BadSignature));
    assert_eq!(parse(&h[..3]), Ok(None), "a prefix of the signature waits");
    assert_eq!(parse(&[0x0d, 0x0a, 0x00]), Err(ProxyError::BadSignature));
}

#[test]
fn bad_fields_are_named() {
    let with = |at: usize, byte: u8| {
        let mut h = v4_header();
        h[at] = byte;
        parse(&h)
    };
    assert_eq!(with(12, 0x11), Err(ProxyError::BadVersion(1)));
    assert_eq!(with(12, 0x22), Err(ProxyError::BadCommand(2)));
    assert_eq!(with(13, 0x12), Err(ProxyError::Unsupported(0x12)), "UDP");
    assert_eq!(
        with(13, 0x31),
        Err(ProxyError::Unsupported(0x31)),
        "AF_UNIX"
    );
    assert_eq!(with(15, 8), Err(ProxyError::Short { len: 8, needed: 12 }));
    // The version is refused as soon as its byte arrives.
    let mut h = v4_header();
    h[12] = 0x31;
    assert_eq!(parse(&h[..13]), Err(ProxyError::BadVersion(3)));
}

/// A length past the cap is refused before anything of it is waited for.
#[test]
fn an_oversized_length_is_refused() {
    let mut h = v4_header();
    h[14] = 0xff;
    h[15] = 0xff;
    assert_eq!(parse(&h[..16]), Err(ProxyError::TooLong(65535)));
    let mut h = v4_header();
    h[14..16].copy_from_slice(&((MAX_PAYLOAD as u16) + 1).to_be_bytes());
    assert_eq!(parse(&h[..16]), Err(ProxyError::TooLong(MAX_PAYLOAD + 1)));
    let mut h = v4_header();
    h[14..16].copy_from_slice(&(MAX_PAYLOAD as u16).to_be_bytes());
    h.resize(FIXED_LEN + MAX_PAYLOAD, 0);
    assert_eq!(
        parse(&h).unwrap().unwrap().len,
        FIXED_LEN + MAX_PAYLOAD,
        "the cap itself is taken"
    );
}

/// Round trip over many addresses: what `encode` makes, `parse` reads back whole.
#[test]
fn encode_then_parse_round_trips() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let (a, b) = (next(), next());
        let (source, destination): (SocketAddr, SocketAddr) = if a & 1 == 0 {
            (
                SocketAddr::from((Ipv4Addr::from(a as u32), (a >> 32) as u16)),
                SocketAddr::from((Ipv4Addr::from(b as u32), (b >> 32) as u16)),
            )
        } else {
            let ip = |x: u64, y: u64| Ipv6Addr::from(((x as u128) << 64) | y as u128);
            (
                SocketAddr::from((ip(a, b), (a >> 48) as u16)),
                SocketAddr::from((ip(b, a), (b >> 48) as u16)),
            )
        };
        let mut bytes = encode(source, destination).unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(&a.to_be_bytes());
        assert_eq!(
            parse(&bytes),
            Ok(Some(Header {
                origin: Origin::Proxied {
                    source,
                    destination
                },
                len
            }))
        );
    }
}
