//! Frame headers.
//!
//! ```text
//! offset size field
//! 0      2    MsgId        u16 LE
//! 2      1    TypeFlag     0 request, 1 response
//! 3      2    SeqNum       u16 LE (a response echoes the request's)
//! 5      4    MsgBodyLen   u32 LE (bytes after the header)
//! 9      1    CryptFlag    1 = AES body
//! 10     3    Reserved
//! 13     2    Crc16        CRC-16/XMODEM of bytes 0..13
//! request:  15 DevId u32 | 19 SessionId u32   (23 bytes)
//! response: 15 RespCode u32                   (19 bytes)
//! ```

use bytes::{BufMut, Bytes};

pub const COMMON_LEN: usize = 15;
pub const REQUEST_LEN: usize = 23;
pub const RESPONSE_LEN: usize = 19;

const XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// CRC-16/XMODEM (poly 0x1021, init 0, no reflection).
pub fn crc16(data: &[u8]) -> u16 {
    XMODEM.checksum(data)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request { dev_id: u32, session_id: u32 },
    Response { resp_code: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_id: u16,
    pub seq: u16,
    pub body_len: u32,
    pub crypt: bool,
    pub kind: Kind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header CRC {found:#06x}, expected {expected:#06x}")]
    Crc { found: u16, expected: u16 },
    #[error("type flag {0} is neither 0 nor 1")]
    TypeFlag(u8),
    #[error("crypt flag {0} is neither 0 nor 1")]
    CryptFlag(u8),
}

impl Header {
    pub fn len(&self) -> usize {
        match self.kind {
            Kind::Request { .. } => REQUEST_LEN,
            Kind::Response { .. } => RESPONSE_LEN,
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses the common 15 bytes. `Ok(None)` on fewer bytes than the full header.
    pub fn parse(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
        Header::parse_with(buf, false)
    }

    /// Like `parse`; with `unset_response_crc`, a *response* whose Crc16 is 0x0000 is taken
    /// as unset rather than wrong. kxSvr relays a device's answer to the web server with a
    /// header whose CRC line is commented out (KxSvr.cc `KxServer::onMsgResp` and
    /// `CheckTimeOutSvrMsgWaitItem`), so a web server that insisted would never see one.
    pub fn parse_with(buf: &[u8], unset_response_crc: bool) -> Result<Option<Header>, HeaderError> {
        if buf.len() < COMMON_LEN {
            return Ok(None);
        }
        let expected = crc16(&buf[..13]);
        let found = u16::from_le_bytes([buf[13], buf[14]]);
        let unset_ok = unset_response_crc && found == 0 && buf[2] == 1;
        if found != expected && !unset_ok {
            return Err(HeaderError::Crc { found, expected });
        }
        let crypt = match buf[9] {
            0 => false,
            1 => true,
            other => return Err(HeaderError::CryptFlag(other)),
        };
        let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let kind_len = match buf[2] {
            0 => REQUEST_LEN,
            1 => RESPONSE_LEN,
            other => return Err(HeaderError::TypeFlag(other)),
        };
        if buf.len() < kind_len {
            return Ok(None);
        }
        let kind = if kind_len == REQUEST_LEN {
            Kind::Request {
                dev_id: u32_at(15),
                session_id: u32_at(19),
            }
        } else {
            Kind::Response {
                resp_code: u32_at(15),
            }
        };
        Ok(Some(Header {
            msg_id: u16::from_le_bytes([buf[0], buf[1]]),
            seq: u16::from_le_bytes([buf[3], buf[4]]),
            body_len: u32_at(5),
            crypt,
            kind,
        }))
    }

    pub fn write(&self, out: &mut impl BufMut) {
        let mut common = [0u8; 13];
        common[0..2].copy_from_slice(&self.msg_id.to_le_bytes());
        common[2] = matches!(self.kind, Kind::Response { .. }) as u8;
        common[3..5].copy_from_slice(&self.seq.to_le_bytes());
        common[5..9].copy_from_slice(&self.body_len.to_le_bytes());
        common[9] = self.crypt as u8;
        out.put_slice(&common);
        out.put_u16_le(crc16(&common));
        match self.kind {
            Kind::Request { dev_id, session_id } => {
                out.put_u32_le(dev_id);
                out.put_u32_le(session_id);
            }
            Kind::Response { resp_code } => out.put_u32_le(resp_code),
        }
    }
}

/// A header and its (still encrypted, when `crypt`) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub body: Bytes,
}

impl Frame {
    pub fn request(
        msg_id: u16,
        seq: u16,
        dev_id: u32,
        session_id: u32,
        crypt: bool,
        body: Bytes,
    ) -> Frame {
        Frame {
            header: Header {
                msg_id,
                seq,
                body_len: body.len() as u32,
                crypt,
                kind: Kind::Request { dev_id, session_id },
            },
            body,
        }
    }

    pub fn response(msg_id: u16, seq: u16, resp_code: u32, crypt: bool, body: Bytes) -> Frame {
        Frame {
            header: Header {
                msg_id,
                seq,
                body_len: body.len() as u32,
                crypt,
                kind: Kind::Response { resp_code },
            },
            body,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.body.len());
        self.header.write(&mut out);
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        // The CRC catalogue's check value for CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn golden_request_header() {
        // 1002 request, seq 7, 4-byte body, plain, devId 0x01020304, session 0xA1B2C3D4.
        let frame = Frame::request(
            1002,
            7,
            0x0102_0304,
            0xA1B2_C3D4,
            false,
            Bytes::from_static(&[9, 9, 9, 9]),
        );
        let bytes = frame.to_bytes();
        let common: [u8; 13] = [
            0xEA, 0x03, // MsgId 1002
            0x00, // TypeFlag request
            0x07, 0x00, // SeqNum 7
            0x04, 0x00, 0x00, 0x00, // MsgBodyLen 4
            0x00, // CryptFlag 0
            0x00, 0x00, 0x00, // Reserved
        ];
        assert_eq!(&bytes[..13], &common);
        let crc = crc16(&common).to_le_bytes();
        assert_eq!(&bytes[13..15], &crc);
        assert_eq!(&bytes[15..19], &[0x04, 0x03, 0x02, 0x01]); // DevId
        assert_eq!(&bytes[19..23], &[0xD4, 0xC3, 0xB2, 0xA1]); // SessionId
        assert_eq!(&bytes[23..], &[9, 9, 9, 9]);
        assert_eq!(Header::parse(&bytes).unwrap(), Some(frame.header));
    }

    #[test]
    fn golden_response_header() {
        let frame = Frame::response(1001, 0x1234, 2, false, Bytes::new());
        let bytes = frame.to_bytes();
        assert_eq!(bytes.len(), RESPONSE_LEN);
        assert_eq!(
            &bytes[..13],
            &[0xE9, 0x03, 0x01, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&bytes[15..19], &[2, 0, 0, 0]); // RespCode 2
    }

    #[test]
    fn bad_crc_and_flags() {
        let mut bytes = Frame::request(1001, 1, 5, 0, false, Bytes::new()).to_bytes();
        bytes[13] ^= 0xFF;
        assert!(matches!(
            Header::parse(&bytes),
            Err(HeaderError::Crc { .. })
        ));
        let mut common = [0u8; 13];
        common[2] = 7;
        let mut raw = common.to_vec();
        raw.extend_from_slice(&crc16(&common).to_le_bytes());
        raw.extend_from_slice(&[0; 8]);
        assert_eq!(Header::parse(&raw), Err(HeaderError::TypeFlag(7)));
    }
}
