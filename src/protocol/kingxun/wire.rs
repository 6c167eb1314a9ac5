//! Little-endian readers and writers shared by every body, and the device's local time.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("body too short: {what} needs {need} bytes at offset {at}, {have} left")]
    Short {
        what: &'static str,
        need: usize,
        at: usize,
        have: usize,
    },
    #[error("{what}: {value} is out of range")]
    Range { what: &'static str, value: u64 },
    #[error("{what}: body is {found} bytes, its own counts make it {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{what} is not a valid date and time")]
    BadTime { what: &'static str },
}

/// A bounds-checked little-endian reader.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Fails unless the body ended exactly here: a body longer than its own fields and
    /// counts say is malformed, never silently cut.
    pub fn finish(&self, what: &'static str) -> Result<(), BodyError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(BodyError::Length {
                what,
                expected: self.pos,
                found: self.buf.len(),
            })
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BodyError> {
        if self.remaining() < n {
            return Err(BodyError::Short {
                what,
                need: n,
                at: self.pos,
                have: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], BodyError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, BodyError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, BodyError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub fn i16(&mut self, what: &'static str) -> Result<i16, BodyError> {
        Ok(i16::from_le_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, BodyError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub fn i32(&mut self, what: &'static str) -> Result<i32, BodyError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, BodyError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub fn f64(&mut self, what: &'static str) -> Result<f64, BodyError> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }
    pub fn bytes16(&mut self, what: &'static str) -> Result<[u8; 16], BodyError> {
        self.array(what)
    }
    /// A fixed-size, NUL-padded string.
    pub fn fixed_str(&mut self, n: usize, what: &'static str) -> Result<String, BodyError> {
        let raw = self.take(n, what)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(n);
        Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
    }
    /// A NUL-terminated string (the rest of the body when there is no NUL).
    pub fn c_str(&mut self) -> String {
        let rest = &self.buf[self.pos..];
        let (text, consumed) = match rest.iter().position(|&b| b == 0) {
            Some(end) => (&rest[..end], end + 1),
            None => (rest, rest.len()),
        };
        self.pos += consumed;
        String::from_utf8_lossy(text).into_owned()
    }
}

/// Little-endian writer helpers.
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        Writer(Vec::with_capacity(64))
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Writes `s` NUL-padded (and truncated) to `n` bytes.
    pub fn fixed_str(&mut self, s: &str, n: usize) -> &mut Self {
        let b = s.as_bytes();
        let len = b.len().min(n);
        self.0.extend_from_slice(&b[..len]);
        self.0.resize(self.0.len() + (n - len), 0);
        self
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

/// Device local time: year u16, month..second u8 (7 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl LocalTime {
    /// Reads a time that must be a real date and time (events, trips, charges).
    pub(crate) fn read_valid(r: &mut Reader, what: &'static str) -> Result<LocalTime, BodyError> {
        let t = LocalTime::read(r)?;
        if t.to_naive().is_none() {
            return Err(BodyError::BadTime { what });
        }
        Ok(t)
    }

    pub(crate) fn read(r: &mut Reader) -> Result<LocalTime, BodyError> {
        Ok(LocalTime {
            year: r.u16("year")?,
            month: r.u8("month")?,
            day: r.u8("day")?,
            hour: r.u8("hour")?,
            minute: r.u8("minute")?,
            second: r.u8("second")?,
        })
    }
    pub(crate) fn write(&self, w: &mut Writer) {
        w.u16(self.year)
            .u8(self.month)
            .u8(self.day)
            .u8(self.hour)
            .u8(self.minute)
            .u8(self.second);
    }
    /// As a naive date-time, if it is a valid one.
    pub fn to_naive(&self) -> Option<chrono::NaiveDateTime> {
        chrono::NaiveDate::from_ymd_opt(self.year.into(), self.month.into(), self.day.into())?
            .and_hms_opt(self.hour.into(), self.minute.into(), self.second.into())
    }
    pub fn from_naive(t: chrono::NaiveDateTime) -> LocalTime {
        use chrono::{Datelike, Timelike};
        LocalTime {
            year: t.year().clamp(0, u16::MAX as i32) as u16,
            month: t.month() as u8,
            day: t.day() as u8,
            hour: t.hour() as u8,
            minute: t.minute() as u8,
            second: t.second() as u8,
        }
    }
}
