//! The PROXY protocol version 2 header a TCP load balancer (HAProxy's `send-proxy-v2`)
//! puts in front of a connection, so the server sees the client's address instead of the
//! balancer's. Sans-IO: [`parse`] takes the bytes received so far and says "more",
//! "here is the header and its length", or why the bytes are no header. The facts and
//! their source: docs/protocols/proxy-protocol-v2.md.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, 2-byte length.
pub const FIXED_LEN: usize = 16;
/// The most address and TLV bytes accepted after the fixed part. The spec allows up to
/// 65 535; a balancer sends 12 (IPv4) or 36 (IPv6) plus a few TLVs. Past this a
/// "header" only costs memory, so it is refused.
pub const MAX_PAYLOAD: usize = 1024;

/// What the header says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `LOCAL` (the balancer's own health check), or `PROXY` with an unspecified family:
    /// the connection's real endpoints stand.
    Local,
    /// `PROXY` over TCP: the client's address and the one it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// A parsed header and how many bytes it took (what follows is the client's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub origin: Origin,
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY v2 signature")]
    BadSignature,
    #[error("PROXY protocol version {0} (only 2 is spoken)")]
    BadVersion(u8),
    #[error("PROXY command {0:#x} (only LOCAL and PROXY exist)")]
    BadCommand(u8),
    #[error("PROXY family/transport {0:#04x} (only TCP over IPv4 or IPv6 is taken)")]
    Unsupported(u8),
    #[error("PROXY length {len} is shorter than its addresses ({needed})")]
    Short { len: usize, needed: usize },
    #[error("PROXY length {0} is over the {MAX_PAYLOAD} bytes accepted")]
    TooLong(usize),
}

/// Parses a header from the start of `buf`. `Ok(None)`: not all of it has arrived yet
/// (bytes that cannot start a header are refused at once, not waited on).
pub fn parse(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(ProxyError::BadSignature);
    }
    let Some(fixed) = buf.get(..FIXED_LEN) else {
        // Version and command are checked as soon as they are here.
        if let Some(&vc) = buf.get(12) {
            check_version_command(vc)?;
        }
        return Ok(None);
    };
    let is_proxy = check_version_command(fixed[12])?;
    let family = fixed[13];
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_PAYLOAD {
        return Err(ProxyError::TooLong(len));
    }
    let needed = match (is_proxy, family) {
        (false, _) | (true, 0x00) => 0,
        (true, 0x11) => 12,
        (true, 0x21) => 36,
        (true, other) => return Err(ProxyError::Unsupported(other)),
    };
    if len < needed {
        return Err(ProxyError::Short { len, needed });
    }
    let Some(payload) = buf.get(FIXED_LEN..FIXED_LEN + len) else {
        return Ok(None);
    };
    let origin = match (is_proxy, family) {
        (true, 0x11) => {
            let ip = |at: usize| {
                Ipv4Addr::new(
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                )
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            Origin::Proxied {
                source: SocketAddr::V4(SocketAddrV4::new(ip(0), port(8))),
                destination: SocketAddr::V4(SocketAddrV4::new(ip(4), port(10))),
            }
        }
        (true, 0x21) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&payload[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            Origin::Proxied {
                source: SocketAddr::V6(SocketAddrV6::new(ip(0), port(32), 0, 0)),
                destination: SocketAddr::V6(SocketAddrV6::new(ip(16), port(34), 0, 0)),
            }
        }
        // LOCAL, or PROXY with UNSPEC: the addresses (if any) are ignored.
        _ => Origin::Local,
    };
    Ok(Some(Header {
        origin,
        len: FIXED_LEN + len,
    }))
}

/// Version 2 and a known command; returns whether it is `PROXY` (else `LOCAL`).
fn check_version_command(byte: u8) -> Result<bool, ProxyError> {
    if byte >> 4 != 2 {
        return Err(ProxyError::BadVersion(byte >> 4));
    }
    match byte & 0x0f {
        0x0 => Ok(false),
        0x1 => Ok(true),
        other => Err(ProxyError::BadCommand(other)),
    }
}

/// The header for `source` → `destination` (both of one family): what a balancer sends,
/// for tests and the device simulator.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Option<Vec<u8>> {
    let (family, src, dst): (u8, Vec<u8>, Vec<u8>) = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            (0x11, s.ip().octets().into(), d.ip().octets().into())
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            (0x21, s.ip().octets().into(), d.ip().octets().into())
        }
        _ => return None,
    };
    let len = (2 * src.len() + 4) as u16;
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, family]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests;
