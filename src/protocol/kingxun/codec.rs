//! Framing as a tokio-util Decoder/Encoder.
//!
//! A bad header (wrong CRC, impossible flags) does not end the link: the decoder skips
//! one byte and looks again, reporting how much it skipped, so one corrupt frame costs
//! only itself. A `MsgBodyLen` above the limit is refused before anything is allocated;
//! that is fatal to the link, since the stream cannot be trusted past it.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{Frame, Header, COMMON_LEN};

pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// Bytes skipped while looking for a valid header.
    Skipped(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("body length {len} exceeds the limit of {max}")]
    TooLarge { len: u32, max: usize },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A 1008 trip carries every GPS point of the ride (16 bytes each): a two-hour ride at one
/// point per second is ~115 KiB, so trips get their own, larger limit.
pub const DEFAULT_MAX_TRIP_BODY: usize = 512 * 1024;

#[derive(Debug, Clone)]
pub struct KxCodec {
    /// Largest MsgBodyLen of any message but a 1008 trip.
    pub max_body: usize,
    /// Largest MsgBodyLen of a 1008 trip.
    pub max_trip_body: usize,
    /// Accept responses whose header CRC is unset (0), as kxSvr relays them.
    pub unset_response_crc: bool,
}

impl Default for KxCodec {
    fn default() -> Self {
        KxCodec::new(DEFAULT_MAX_BODY)
    }
}

impl KxCodec {
    pub fn new(max_body: usize) -> KxCodec {
        KxCodec {
            max_body,
            max_trip_body: DEFAULT_MAX_TRIP_BODY.max(max_body),
            unset_response_crc: false,
        }
    }

    fn limit(&self, msg_id: u16) -> usize {
        if msg_id == super::message::id::TRIP {
            self.max_trip_body
        } else {
            self.max_body
        }
    }
}

impl Decoder for KxCodec {
    type Item = Decoded;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, CodecError> {
        let mut skipped = 0;
        loop {
            if src.len() < COMMON_LEN {
                return Ok((skipped > 0).then_some(Decoded::Skipped(skipped)));
            }
            match Header::parse_with(src, self.unset_response_crc) {
                Ok(None) => return Ok((skipped > 0).then_some(Decoded::Skipped(skipped))),
                Err(_) => {
                    src.advance(1);
                    skipped += 1;
                }
                Ok(Some(header)) => {
                    if skipped > 0 {
                        // Report the junk first; the frame is decoded on the next call.
                        return Ok(Some(Decoded::Skipped(skipped)));
                    }
                    let max = self.limit(header.msg_id);
                    if header.body_len as usize > max {
                        return Err(CodecError::TooLarge {
                            len: header.body_len,
                            max,
                        });
                    }
                    let total = header.len() + header.body_len as usize;
                    if src.len() < total {
                        src.reserve(total - src.len());
                        return Ok(None);
                    }
                    let mut frame = src.split_to(total);
                    frame.advance(header.len());
                    return Ok(Some(Decoded::Frame(Frame {
                        header,
                        body: frame.freeze(),
                    })));
                }
            }
        }
    }
}

impl Encoder<Frame> for KxCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        debug_assert_eq!(frame.header.body_len as usize, frame.body.len());
        dst.reserve(frame.header.len() + frame.body.len());
        frame.header.write(dst);
        dst.extend_from_slice(&frame.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn decode_all(codec: &mut KxCodec, buf: &mut BytesMut) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Some(d) = codec.decode(buf).unwrap() {
            out.push(d);
        }
        out
    }

    #[test]
    fn partial_frames_yield_nothing_until_complete() {
        let frame = Frame::request(1002, 1, 42, 7, false, Bytes::from_static(b"abcdef"));
        let bytes = frame.to_bytes();
        let mut codec = KxCodec::default();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut {cut}");
            buf.extend_from_slice(&bytes[cut..]);
            assert_eq!(
                codec.decode(&mut buf).unwrap(),
                Some(Decoded::Frame(frame.clone()))
            );
        }
    }

    #[test]
    fn junk_and_corrupt_headers_are_skipped() {
        let a = Frame::request(1002, 1, 42, 7, false, Bytes::from_static(b"one"));
        let b = Frame::response(2001, 9, 0, false, Bytes::new());
        let mut corrupt = a.to_bytes();
        corrupt[13] ^= 0x55; // wrong CRC
        let mut stream = b"\x00\xffjunk".to_vec();
        stream.extend_from_slice(&a.to_bytes());
        stream.extend_from_slice(&corrupt);
        stream.extend_from_slice(&b.to_bytes());
        let mut buf = BytesMut::from(&stream[..]);
        let got = decode_all(&mut KxCodec::default(), &mut buf);
        let frames: Vec<_> = got
            .iter()
            .filter_map(|d| {
                if let Decoded::Frame(f) = d {
                    Some(f.clone())
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(frames, vec![a, b]);
        let skipped: usize = got
            .iter()
            .map(|d| if let Decoded::Skipped(n) = d { *n } else { 0 })
            .sum();
        assert_eq!(skipped, 6 + corrupt.len());
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut codec = KxCodec::new(1024);
        let mut header = Vec::new();
        Header {
            msg_id: 1002,
            seq: 1,
            body_len: u32::MAX,
            crypt: false,
            kind: super::super::Kind::Request {
                dev_id: 1,
                session_id: 1,
            },
        }
        .write(&mut header);
        let mut buf = BytesMut::from(&header[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1 << 20);
    }
}
