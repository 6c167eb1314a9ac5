//! Finds whole JSON objects in an EXLIVE byte stream.
//!
//! The protocol defines no framing: peers send bare concatenated objects or
//! newline-terminated ones, in UTF-8 or GBK. This splitter tracks brace depth outside
//! strings, honours escapes, skips whitespace (and any stray bytes) between objects and
//! enforces a size limit per object.
//!
//! Encoding: bytes are scanned as UTF-8 while they are valid UTF-8. A GBK trail byte can
//! be ASCII (`{`, `}`, `\`), and whenever that happens the bytes stop being valid UTF-8
//! at or before that trail byte; the object is then re-scanned from its start as GBK,
//! where every lead byte (0x81–0xFE) takes the next byte with it.
//!
//! Recovery: inside an object a `{` may only follow `:`, `[` or `,`. A `{` anywhere else
//! means the previous object never closed (the specification's own 1001 example lacks its
//! final brace: docs/protocols/exlive.md, "Framing"): that object is returned as
//! [`Frame::Malformed`] and a new one starts there.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Default largest object, in bytes.
pub const DEFAULT_MAX_OBJECT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete, brace-balanced object (not yet parsed as JSON).
    Object(Bytes),
    /// An object that was cut short by the start of the next one.
    Malformed(Bytes),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error("object exceeds {max} bytes")]
    TooLarge { max: usize },
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for SplitError {
    fn from(e: std::io::Error) -> Self {
        SplitError::Io(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Utf8,
    Gbk,
}

/// Scan state of the object being assembled; persists across reads so no byte is
/// scanned twice (except on the rare switch to GBK).
#[derive(Debug, Clone)]
pub struct Splitter {
    max: usize,
    /// Offset in the buffer where the current object starts, if one has started.
    in_object: bool,
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Last significant byte outside strings (for recovery).
    last_sig: u8,
    encoding: Encoding,
    /// UTF-8 continuation bytes still expected.
    utf8_need: u8,
    /// GBK: the next byte is a trail byte.
    gbk_trail: bool,
    /// Bytes skipped between objects that were not whitespace.
    pub junk_bytes: u64,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new(DEFAULT_MAX_OBJECT)
    }
}

impl Splitter {
    pub fn new(max: usize) -> Splitter {
        Splitter {
            max,
            in_object: false,
            pos: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            last_sig: 0,
            encoding: Encoding::Utf8,
            utf8_need: 0,
            gbk_trail: false,
            junk_bytes: 0,
        }
    }

    fn reset_object(&mut self) {
        self.in_object = false;
        self.pos = 0;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
        self.last_sig = 0;
        self.encoding = Encoding::Utf8;
        self.utf8_need = 0;
        self.gbk_trail = false;
    }

    fn begin_object(&mut self) {
        self.reset_object();
        self.in_object = true;
        self.pos = 1;
        self.depth = 1;
        self.last_sig = b'{';
    }

    /// Returns the next frame from `buf`, consuming its bytes, or `None` when more bytes
    /// are needed.
    pub fn split(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SplitError> {
        if !self.in_object {
            // Skip everything up to the next '{'.
            match buf.iter().position(|&b| b == b'{') {
                Some(start) => {
                    self.junk_bytes += buf[..start]
                        .iter()
                        .filter(|b| !b.is_ascii_whitespace())
                        .count() as u64;
                    let _ = buf.split_to(start);
                    self.begin_object();
                }
                None => {
                    self.junk_bytes +=
                        buf.iter().filter(|b| !b.is_ascii_whitespace()).count() as u64;
                    buf.clear();
                    return Ok(None);
                }
            }
        }
        while self.pos < buf.len() {
            let b = buf[self.pos];
            let i = self.pos;
            self.pos += 1;
            if b >= 0x80 && self.escaped {
                // An escape applies to the whole (multi-byte) character that follows.
                self.escaped = false;
            }
            // Multi-byte characters: never structural.
            match self.encoding {
                Encoding::Utf8 => {
                    if self.utf8_need > 0 {
                        if (0x80..=0xBF).contains(&b) {
                            self.utf8_need -= 1;
                            continue;
                        }
                        self.rescan_as_gbk();
                        continue;
                    }
                    if b >= 0x80 {
                        match b {
                            0xC2..=0xDF => self.utf8_need = 1,
                            0xE0..=0xEF => self.utf8_need = 2,
                            0xF0..=0xF4 => self.utf8_need = 3,
                            _ => self.rescan_as_gbk(),
                        }
                        continue;
                    }
                }
                Encoding::Gbk => {
                    if self.gbk_trail {
                        self.gbk_trail = false;
                        continue;
                    }
                    if (0x81..=0xFE).contains(&b) {
                        self.gbk_trail = true;
                        continue;
                    }
                    if b >= 0x80 {
                        continue;
                    }
                }
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    self.last_sig = b'"';
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' => {
                    if !matches!(self.last_sig, b':' | b'[' | b',') {
                        // The current object never closed: hand it back as malformed and
                        // start over at this brace.
                        let bad = buf.split_to(i).freeze();
                        self.begin_object();
                        return Ok(Some(Frame::Malformed(bad)));
                    }
                    self.depth += 1;
                    self.last_sig = b;
                }
                b'}' => {
                    self.depth -= 1;
                    self.last_sig = b;
                    if self.depth == 0 {
                        let obj = buf.split_to(self.pos).freeze();
                        self.reset_object();
                        return Ok(Some(Frame::Object(obj)));
                    }
                }
                b if b.is_ascii_whitespace() => {}
                _ => self.last_sig = b,
            }
            if self.pos > self.max {
                return Err(SplitError::TooLarge { max: self.max });
            }
        }
        if buf.len() > self.max {
            return Err(SplitError::TooLarge { max: self.max });
        }
        Ok(None)
    }

    /// The bytes are not UTF-8: start this object again as GBK.
    fn rescan_as_gbk(&mut self) {
        self.begin_object();
        self.encoding = Encoding::Gbk;
    }
}

impl Decoder for Splitter {
    type Item = Frame;
    type Error = SplitError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SplitError> {
        self.split(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SplitError> {
        match self.split(src)? {
            Some(frame) => Ok(Some(frame)),
            None if self.in_object && !src.is_empty() => {
                // The link closed mid-object.
                let rest = src.split().freeze();
                self.reset_object();
                Ok(Some(Frame::Malformed(rest)))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(input: &[u8]) -> Vec<Frame> {
        let mut s = Splitter::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = s.split(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn obj(s: &[u8]) -> Frame {
        Frame::Object(Bytes::copy_from_slice(s))
    }

    #[test]
    fn concatenated_and_newline_terminated() {
        let a = br#"{"header":{"cmd":"1002"},"body":{"result":""}}"#;
        let mut input = Vec::new();
        input.extend_from_slice(a);
        input.extend_from_slice(a);
        input.extend_from_slice(b"\r\n  \n");
        input.extend_from_slice(a);
        input.push(b'\n');
        assert_eq!(split_all(&input), vec![obj(a), obj(a), obj(a)]);
    }

    #[test]
    fn braces_inside_strings_and_escapes_are_not_structure() {
        let a = br#"{"body":{"posinfo":"a}b{c\"}\\"}}"#;
        assert_eq!(split_all(a), vec![obj(a)]);
    }

    #[test]
    fn gbk_trail_bytes_that_look_like_braces_and_backslashes() {
        // GBK 0xD5 0x7B and 0x81 0x7D and 0x95 0x5C: trail bytes '{', '}', '\'.
        let mut a = b"{\"body\":{\"posinfo\":\"".to_vec();
        a.extend_from_slice(&[0xD5, 0x7B, 0x81, 0x7D, 0x95, 0x5C]);
        a.extend_from_slice(b"\"}}");
        let mut input = a.clone();
        input.extend_from_slice(b"{}");
        assert_eq!(split_all(&input), vec![obj(&a), obj(b"{}")]);
    }

    #[test]
    fn utf8_multibyte_before_a_brace() {
        // "中" = E4 B8 AD, directly followed by structural bytes.
        let a = "{\"body\":{\"posinfo\":\"中\"},\"x\":\"中\"}".as_bytes();
        assert_eq!(split_all(a), vec![obj(a)]);
    }

    #[test]
    fn missing_final_brace_costs_only_that_message() {
        let bad = br#"{"header":{"cmd":"1001"},"body":{"data":""}"#;
        let good = br#"{"header":{"cmd":"1002"},"body":{"result":""}}"#;
        let mut input = bad.to_vec();
        input.push(b'\n');
        input.extend_from_slice(good);
        let frames = split_all(&input);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(matches!(&frames[0], Frame::Malformed(b) if b.starts_with(bad)));
        assert_eq!(frames[1], obj(good));
    }

    #[test]
    fn junk_between_objects_is_skipped_and_counted() {
        let mut s = Splitter::default();
        let mut buf = BytesMut::from(&b"xx{}\x00yy{}"[..]);
        assert_eq!(s.split(&mut buf).unwrap(), Some(obj(b"{}")));
        assert_eq!(s.split(&mut buf).unwrap(), Some(obj(b"{}")));
        assert_eq!(s.junk_bytes, 5);
    }

    #[test]
    fn oversized_object_is_refused_before_it_completes() {
        let mut s = Splitter::new(32);
        let mut buf =
            BytesMut::from(&br#"{"body":{"posinfo":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"#[..]);
        assert_eq!(s.split(&mut buf), Err(SplitError::TooLarge { max: 32 }));
    }

    #[test]
    fn eof_mid_object_is_malformed() {
        let mut s = Splitter::default();
        let mut buf = BytesMut::from(&br#"{"header":{"cmd""#[..]);
        assert_eq!(
            s.decode_eof(&mut buf).unwrap(),
            Some(Frame::Malformed(Bytes::from_static(br#"{"header":{"cmd""#)))
        );
    }
}
