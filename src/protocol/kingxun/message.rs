//! Typed message bodies (plain bytes, after decryption). All integers little-endian.
//!
//! Layouts follow PROTOCOLS.md §4 and the kxSvr device document. Where those give a
//! field without a size, the size chosen here is marked DECISION.

use thiserror::Error;

pub mod id {
    pub const REGISTER: u16 = 1001;
    pub const STATUS: u16 = 1002;
    pub const TRAFFIC: u16 = 1004;
    pub const RANGE: u16 = 1005;
    pub const TRIP: u16 = 1008;
    pub const CHARGE_DONE: u16 = 1010;
    pub const EVENTS: u16 = 1012;
    pub const UNLOCK: u16 = 2001;
    pub const LOCK: u16 = 2002;
    pub const GUARD: u16 = 2003;
    pub const OPEN_LOCK: u16 = 2004;
    pub const LIGHTS: u16 = 2005;
    pub const APP_UNLOCK: u16 = 4001;
    pub const APP_LOCK: u16 = 4002;
    pub const APP_GUARD: u16 = 4003;
    pub const APP_OPEN_LOCK: u16 = 4004;
    pub const APP_LIGHTS: u16 = 4005;
    pub const WEB_CONNECT: u16 = 9001;
    pub const WEB_HEARTBEAT: u16 = 9002;
}

/// RespCode meanings.
pub fn resp_code_text(code: u32) -> &'static str {
    match code {
        0 => "ok",
        1 => "rejected",
        2 => "redirect",
        3 => "device offline",
        4 => "bad device id",
        5 => "send to device failed",
        6 => "bad parameter",
        0xFF => "error",
        _ => "unknown error",
    }
}

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

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BodyError> {
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
    fn read(r: &mut Reader) -> Result<LocalTime, BodyError> {
        Ok(LocalTime {
            year: r.u16("year")?,
            month: r.u8("month")?,
            day: r.u8("day")?,
            hour: r.u8("hour")?,
            minute: r.u8("minute")?,
            second: r.u8("second")?,
        })
    }
    fn write(&self, w: &mut Writer) {
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

/// 1001 request: device registration (plain).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Register {
    pub time: LocalTime,
    /// Device hw, device sw, motor-controller hw, sw, dashboard hw, sw.
    pub versions: [u32; 6],
}

impl Register {
    pub fn decode(b: &[u8]) -> Result<Register, BodyError> {
        let mut r = Reader::new(b);
        let time = LocalTime::read(&mut r)?;
        let mut versions = [0u32; 6];
        for v in &mut versions {
            *v = r.u32("version")?;
        }
        Ok(Register { time, versions })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.time.write(&mut w);
        for v in self.versions {
            w.u32(v);
        }
        w.into_vec()
    }
}

/// 1001 response body (RespCode 0): the session id and the IV for AES.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterAck {
    pub session_id: u32,
    pub iv: [u8; 16],
}

impl RegisterAck {
    pub fn decode(b: &[u8]) -> Result<RegisterAck, BodyError> {
        let mut r = Reader::new(b);
        Ok(RegisterAck {
            session_id: r.u32("session_id")?,
            iv: r.bytes16("iv")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.session_id).bytes(&self.iv);
        w.into_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniBattery {
    pub id: String,
    pub soc: u8,
    /// Volts × 100.
    pub voltage_cv: u16,
    /// °C × 100.
    pub temp_cc: i16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub voltage_cv: u16,
    /// `None` when the cell has no sensor (0xFFFF on the wire).
    pub temp_cc: Option<i16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Battery {
    pub charging: bool,
    pub id: String,
    pub soc: u8,
    pub voltage_cv: u16,
    pub temp_cc: i16,
    pub cycles: u16,
    pub soh: u8,
    /// 1 discharging, 2 charging.
    pub current_flag: u8,
    /// Amperes × 100.
    pub current_ca: u16,
    pub cells: Vec<Cell>,
}

/// 1002: device status.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub dev_type: u8,
    pub protocol: u8,
    pub lng: f64,
    pub lat: f64,
    /// Units of 10 m.
    pub mileage: u32,
    pub driving: bool,
    /// mm/s.
    pub speed: u16,
    /// bit0 electric lock, bit1 seat, bit2 glovebox, bit3 helmet, bit4 motor, bit5 helmet 2; 1 = open.
    pub lock: u8,
    /// 2-bit fields: headlight, high beam, position, turn (01 left, 10 right), hazard, brake light.
    pub light: u16,
    /// bit0 seat, bit1 kickstand, bit2 child seat, bit4 tipped over.
    pub sensor: u8,
    /// bit0 rear, bit1 front, bit4 ABS, bit5 TCS.
    pub brake: u8,
    pub mini_battery: Option<MiniBattery>,
    pub battery: Option<Battery>,
}

impl Status {
    pub fn decode(b: &[u8]) -> Result<Status, BodyError> {
        let mut r = Reader::new(b);
        let dev_type = r.u8("dev_type")?;
        let protocol = r.u8("protocol")?;
        let lng = r.f64("lng")?;
        let lat = r.f64("lat")?;
        let mileage = r.u32("mileage")?;
        let driving = r.u8("driving")? != 0;
        let speed = r.u16("speed")?;
        let lock = r.u8("lock")?;
        let light = r.u16("light")?;
        let sensor = r.u8("sensor")?;
        let brake = r.u8("brake")?;
        let _reserved = r.u8("reserved")?;
        let mini_exists = r.u8("mini_exists")? != 0;
        let mini = MiniBattery {
            id: r.fixed_str(30, "mini_id")?,
            soc: r.u8("mini_soc")?,
            voltage_cv: r.u16("mini_voltage")?,
            temp_cc: r.i16("mini_temp")?,
        };
        let exists = r.u8("battery_exists")? != 0;
        let charging = r.u8("charge_flag")? != 0;
        let id = r.fixed_str(32, "battery_id")?;
        let soc = r.u8("soc")?;
        let voltage_cv = r.u16("voltage")?;
        let temp_cc = r.i16("temp")?;
        let cycles = r.u16("cycles")?;
        let soh = r.u8("soh")?;
        let current_flag = r.u8("current_flag")?;
        let current_ca = r.u16("current")?;
        let count = r.u8("series_count")? as usize;
        let mut cells = Vec::with_capacity(count);
        for _ in 0..count {
            let voltage_cv = r.u16("cell_voltage")?;
            let temp = r.i16("cell_temp")?;
            cells.push(Cell {
                voltage_cv,
                temp_cc: (temp != -1).then_some(temp),
            });
        }
        Ok(Status {
            dev_type,
            protocol,
            lng,
            lat,
            mileage,
            driving,
            speed,
            lock,
            light,
            sensor,
            brake,
            mini_battery: mini_exists.then_some(mini),
            battery: exists.then_some(Battery {
                charging,
                id,
                soc,
                voltage_cv,
                temp_cc,
                cycles,
                soh,
                current_flag,
                current_ca,
                cells,
            }),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.dev_type)
            .u8(self.protocol)
            .f64(self.lng)
            .f64(self.lat)
            .u32(self.mileage);
        w.u8(self.driving as u8).u16(self.speed);
        w.u8(self.lock)
            .u16(self.light)
            .u8(self.sensor)
            .u8(self.brake)
            .u8(0);
        match &self.mini_battery {
            Some(m) => {
                w.u8(1)
                    .fixed_str(&m.id, 30)
                    .u8(m.soc)
                    .u16(m.voltage_cv)
                    .i16(m.temp_cc);
            }
            None => {
                w.u8(0).fixed_str("", 30).u8(0).u16(0).i16(0);
            }
        }
        match &self.battery {
            Some(b) => {
                w.u8(1)
                    .u8(b.charging as u8)
                    .fixed_str(&b.id, 32)
                    .u8(b.soc)
                    .u16(b.voltage_cv)
                    .i16(b.temp_cc);
                w.u16(b.cycles)
                    .u8(b.soh)
                    .u8(b.current_flag)
                    .u16(b.current_ca);
                w.u8(b.cells.len().min(255) as u8);
                for c in b.cells.iter().take(255) {
                    w.u16(c.voltage_cv).i16(c.temp_cc.unwrap_or(-1));
                }
            }
            None => {
                w.u8(0)
                    .u8(0)
                    .fixed_str("", 32)
                    .u8(0)
                    .u16(0)
                    .i16(0)
                    .u16(0)
                    .u8(0)
                    .u8(0)
                    .u16(0)
                    .u8(0);
            }
        }
        w.into_vec()
    }
}

/// 1004: data used this month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    pub dev_type: u8,
    pub protocol: u8,
    pub used_kib: u32,
}

impl Traffic {
    pub fn decode(b: &[u8]) -> Result<Traffic, BodyError> {
        let mut r = Reader::new(b);
        Ok(Traffic {
            dev_type: r.u8("dev_type")?,
            protocol: r.u8("protocol")?,
            used_kib: r.u32("used")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.dev_type).u8(self.protocol).u32(self.used_kib);
        w.into_vec()
    }
}

/// 1005 request: how far does this battery go?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    pub dev_type: u8,
    pub battery_id: String,
    pub soc: u8,
    pub voltage_cv: u16,
}

impl RangeQuery {
    pub fn decode(b: &[u8]) -> Result<RangeQuery, BodyError> {
        let mut r = Reader::new(b);
        Ok(RangeQuery {
            dev_type: r.u8("dev_type")?,
            battery_id: r.fixed_str(32, "battery_id")?,
            soc: r.u8("soc")?,
            voltage_cv: r.u16("voltage")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.dev_type)
            .fixed_str(&self.battery_id, 32)
            .u8(self.soc)
            .u16(self.voltage_cv);
        w.into_vec()
    }
}

/// 1005 response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeAnswer {
    pub max_range_m: u32,
    pub charge_notify_soc: u8,
    pub soc_min: u8,
}

impl RangeAnswer {
    pub fn decode(b: &[u8]) -> Result<RangeAnswer, BodyError> {
        let mut r = Reader::new(b);
        Ok(RangeAnswer {
            max_range_m: r.u32("max_range")?,
            charge_notify_soc: r.u8("notify_soc")?,
            soc_min: r.u8("soc_min")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.max_range_m)
            .u8(self.charge_notify_soc)
            .u8(self.soc_min);
        w.into_vec()
    }
}

/// 1008: a finished trip (encrypted).
///
/// DECISION (PROTOCOLS.md lists the fields, sizes from the device doc):
/// start time, start lng/lat f64, end time, end lng/lat f64, distance u32 (m),
/// soc begin u8, soc end u8, max speed u16 (mm/s), avg speed u16 (mm/s),
/// max current u16 (A × 100), battery id [32], point count u32, points (lng, lat f64).
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub start: LocalTime,
    pub start_lng: f64,
    pub start_lat: f64,
    pub end: LocalTime,
    pub end_lng: f64,
    pub end_lat: f64,
    pub distance_m: u32,
    pub soc_begin: u8,
    pub soc_end: u8,
    pub max_speed: u16,
    pub avg_speed: u16,
    pub max_current_ca: u16,
    pub battery_id: String,
    pub points: Vec<(f64, f64)>,
}

impl Trip {
    pub fn decode(b: &[u8]) -> Result<Trip, BodyError> {
        let mut r = Reader::new(b);
        let start = LocalTime::read(&mut r)?;
        let (start_lng, start_lat) = (r.f64("start_lng")?, r.f64("start_lat")?);
        let end = LocalTime::read(&mut r)?;
        let (end_lng, end_lat) = (r.f64("end_lng")?, r.f64("end_lat")?);
        let distance_m = r.u32("distance")?;
        let soc_begin = r.u8("soc_begin")?;
        let soc_end = r.u8("soc_end")?;
        let max_speed = r.u16("max_speed")?;
        let avg_speed = r.u16("avg_speed")?;
        let max_current_ca = r.u16("max_current")?;
        let battery_id = r.fixed_str(32, "battery_id")?;
        let count = r.u32("point_count")? as usize;
        // Check before allocating: the count comes from outside.
        if count.saturating_mul(16) > r.remaining() {
            return Err(BodyError::Short {
                what: "points",
                need: count.saturating_mul(16),
                at: b.len() - r.remaining(),
                have: r.remaining(),
            });
        }
        let mut points = Vec::with_capacity(count);
        for _ in 0..count {
            points.push((r.f64("point_lng")?, r.f64("point_lat")?));
        }
        Ok(Trip {
            start,
            start_lng,
            start_lat,
            end,
            end_lng,
            end_lat,
            distance_m,
            soc_begin,
            soc_end,
            max_speed,
            avg_speed,
            max_current_ca,
            battery_id,
            points,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.start.write(&mut w);
        w.f64(self.start_lng).f64(self.start_lat);
        self.end.write(&mut w);
        w.f64(self.end_lng)
            .f64(self.end_lat)
            .u32(self.distance_m)
            .u8(self.soc_begin)
            .u8(self.soc_end);
        w.u16(self.max_speed)
            .u16(self.avg_speed)
            .u16(self.max_current_ca)
            .fixed_str(&self.battery_id, 32);
        w.u32(self.points.len() as u32);
        for (lng, lat) in &self.points {
            w.f64(*lng).f64(*lat);
        }
        w.into_vec()
    }
}

/// 1010: charging finished (encrypted).
///
/// DECISION: start time, lng/lat f64, end time, max current u16 (A × 100),
/// soc begin u8, soc end u8, voltage begin u16 (V × 100), voltage end u16 (V × 100).
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeDone {
    pub start: LocalTime,
    pub lng: f64,
    pub lat: f64,
    pub end: LocalTime,
    pub max_current_ca: u16,
    pub soc_begin: u8,
    pub soc_end: u8,
    pub voltage_begin_cv: u16,
    pub voltage_end_cv: u16,
}

impl ChargeDone {
    pub fn decode(b: &[u8]) -> Result<ChargeDone, BodyError> {
        let mut r = Reader::new(b);
        Ok(ChargeDone {
            start: LocalTime::read(&mut r)?,
            lng: r.f64("lng")?,
            lat: r.f64("lat")?,
            end: LocalTime::read(&mut r)?,
            max_current_ca: r.u16("max_current")?,
            soc_begin: r.u8("soc_begin")?,
            soc_end: r.u8("soc_end")?,
            voltage_begin_cv: r.u16("voltage_begin")?,
            voltage_end_cv: r.u16("voltage_end")?,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.start.write(&mut w);
        w.f64(self.lng).f64(self.lat);
        self.end.write(&mut w);
        w.u16(self.max_current_ca)
            .u8(self.soc_begin)
            .u8(self.soc_end)
            .u16(self.voltage_begin_cv)
            .u16(self.voltage_end_cv);
        w.into_vec()
    }
}

/// One device event of a 1012.
#[derive(Debug, Clone, PartialEq)]
pub struct DevEvent {
    pub time: LocalTime,
    pub millis: u16,
    /// 1 key unlock, 2 network unlock, 3 auto lock, 4 user lock, 5 charging, 6 battery
    /// removed, 7 battery inserted, 8 tipped over, 9 moved while locked, 10–13 later types.
    pub kind: u8,
    pub user_id: u32,
    /// mm/s.
    pub speed: u16,
    pub lng: f64,
    pub lat: f64,
}

impl DevEvent {
    /// A stable snake_case name for HA.
    pub fn type_name(kind: u8) -> String {
        match kind {
            1 => "key_unlock".into(),
            2 => "network_unlock".into(),
            3 => "auto_lock".into(),
            4 => "user_lock".into(),
            5 => "charging_started".into(),
            6 => "battery_removed".into(),
            7 => "battery_inserted".into(),
            8 => "tipped_over".into(),
            9 => "moved_while_locked".into(),
            n => format!("event_{n}"),
        }
    }
}

/// 1012: device events (encrypted).
///
/// DECISION: count u8, then per event: time (7 bytes), milliseconds u16, type u8,
/// user id u32, speed u16 (mm/s), lng f64, lat f64 (32 bytes each).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Events {
    pub events: Vec<DevEvent>,
}

impl Events {
    pub fn decode(b: &[u8]) -> Result<Events, BodyError> {
        let mut r = Reader::new(b);
        let count = r.u8("event_count")? as usize;
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(DevEvent {
                time: LocalTime::read(&mut r)?,
                millis: r.u16("millis")?,
                kind: r.u8("event_type")?,
                user_id: r.u32("user_id")?,
                speed: r.u16("speed")?,
                lng: r.f64("lng")?,
                lat: r.f64("lat")?,
            });
        }
        Ok(Events { events })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.events.len().min(255) as u8);
        for e in self.events.iter().take(255) {
            e.time.write(&mut w);
            w.u16(e.millis)
                .u8(e.kind)
                .u32(e.user_id)
                .u16(e.speed)
                .f64(e.lng)
                .f64(e.lat);
        }
        w.into_vec()
    }
}

/// Parameters of a control command, shared by 2001–2005 (device) and 4001–4005 (app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// 2001 / 4001.
    Unlock {
        allow_min: u16,
        lowest_soc: u8,
        farthest_m: u32,
    },
    /// 2002 / 4002.
    Lock { voice: u8 },
    /// 2003 / 4003. `power`: 0 off, 1 100 W, 2 200 W, 0xFF unlimited. `max_speed`: m/s × 100
    /// (u16 per the document; DECISION, the kxSvr code has u8).
    Guard {
        power: u8,
        max_speed: u16,
        voice: u8,
    },
    /// 2004 / 4004. `flags`: 0x02 seat, 0x04 glovebox, 0x08 helmet.
    OpenLock { flags: u8, voice: u8 },
    /// 2005 / 4005. `flags` (u16 as in 4005): 0x01 headlight, 0x04 high beam, 0x10
    /// position, 0x40 left, 0x80 right, 0x0100 hazard, 0x0400 brake light.
    Lights { flags: u16 },
}

impl Control {
    pub fn device_msg_id(&self) -> u16 {
        match self {
            Control::Unlock { .. } => id::UNLOCK,
            Control::Lock { .. } => id::LOCK,
            Control::Guard { .. } => id::GUARD,
            Control::OpenLock { .. } => id::OPEN_LOCK,
            Control::Lights { .. } => id::LIGHTS,
        }
    }

    pub fn app_msg_id(&self) -> u16 {
        self.device_msg_id() + 2000
    }

    fn write_params(&self, w: &mut Writer, app: bool) {
        match *self {
            Control::Unlock {
                allow_min,
                lowest_soc,
                farthest_m,
            } => {
                w.u16(allow_min).u8(lowest_soc).u32(farthest_m);
            }
            Control::Lock { voice } => {
                w.u8(voice);
            }
            Control::Guard {
                power,
                max_speed,
                voice,
            } => {
                w.u8(power).u16(max_speed).u8(voice);
            }
            Control::OpenLock { flags, voice } => {
                // The device's 2004 has no voice byte; the app's 4004 has warningVoice.
                w.u8(flags);
                if app {
                    w.u8(voice);
                }
            }
            Control::Lights { flags } => {
                w.u16(flags);
            }
        }
    }

    fn read_params(msg_id: u16, r: &mut Reader, app: bool) -> Result<Control, BodyError> {
        Ok(match msg_id % 1000 {
            1 => Control::Unlock {
                allow_min: r.u16("allow_time")?,
                lowest_soc: r.u8("lowest_soc")?,
                farthest_m: r.u32("farthest")?,
            },
            2 => Control::Lock {
                voice: r.u8("voice")?,
            },
            3 => Control::Guard {
                power: r.u8("power")?,
                max_speed: r.u16("max_speed")?,
                voice: r.u8("voice")?,
            },
            4 => Control::OpenLock {
                flags: r.u8("lock_flag")?,
                voice: if app { r.u8("voice")? } else { 0 },
            },
            5 => Control::Lights {
                flags: r.u16("light_flag")?,
            },
            other => {
                return Err(BodyError::Range {
                    what: "control message",
                    value: other.into(),
                })
            }
        })
    }
}

/// 2001–2005 body: `svrtime u64 | sessionId u32 | [usrId u32, 2001 only] | params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceControl {
    pub svr_time: u64,
    pub session_id: u32,
    /// Only carried by 2001.
    pub user_id: u32,
    pub control: Control,
}

impl DeviceControl {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.svr_time).u32(self.session_id);
        if let Control::Unlock { .. } = self.control {
            w.u32(self.user_id);
        }
        self.control.write_params(&mut w, false);
        w.into_vec()
    }
    pub fn decode(msg_id: u16, b: &[u8]) -> Result<DeviceControl, BodyError> {
        let mut r = Reader::new(b);
        let svr_time = r.u64("svr_time")?;
        let session_id = r.u32("session_id")?;
        let user_id = if msg_id == id::UNLOCK {
            r.u32("user_id")?
        } else {
            0
        };
        let control = Control::read_params(msg_id, &mut r, false)?;
        Ok(DeviceControl {
            svr_time,
            session_id,
            user_id,
            control,
        })
    }
}

/// 4001–4005 body: `devId u32 | devtype u8 | time u64 | usrId i32 | params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppControl {
    pub dev_id: u32,
    pub dev_type: u8,
    pub time: u64,
    pub user_id: i32,
    pub control: Control,
}

impl AppControl {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.dev_id)
            .u8(self.dev_type)
            .u64(self.time)
            .i32(self.user_id);
        self.control.write_params(&mut w, true);
        w.into_vec()
    }
    pub fn decode(msg_id: u16, b: &[u8]) -> Result<AppControl, BodyError> {
        let mut r = Reader::new(b);
        Ok(AppControl {
            dev_id: r.u32("dev_id")?,
            dev_type: r.u8("dev_type")?,
            time: r.u64("time")?,
            user_id: r.i32("user_id")?,
            control: Control::read_params(msg_id, &mut r, true)?,
        })
    }
}

/// 9001 request: `time u64 | host, NUL-terminated` (encrypted with the initial key/IV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConnect {
    pub time: u64,
    pub host: String,
}

impl WebConnect {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.time).bytes(self.host.as_bytes()).u8(0);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebConnect, BodyError> {
        let mut r = Reader::new(b);
        let time = r.u64("time")?;
        Ok(WebConnect {
            time,
            host: r.c_str(),
        })
    }
}

/// 9001 response body: `sessionId u32 | newIV [16] | time u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConnectAck {
    pub session_id: u32,
    pub iv: [u8; 16],
    pub time: u64,
}

impl WebConnectAck {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.session_id).bytes(&self.iv).u64(self.time);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebConnectAck, BodyError> {
        let mut r = Reader::new(b);
        Ok(WebConnectAck {
            session_id: r.u32("session_id")?,
            iv: r.bytes16("iv")?,
            time: r.u64("time")?,
        })
    }
}

/// 9002 request (plain): `time u64 | host [32]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebHeartbeat {
    pub time: u64,
    pub host: String,
}

impl WebHeartbeat {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.time).fixed_str(&self.host, 32);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebHeartbeat, BodyError> {
        let mut r = Reader::new(b);
        Ok(WebHeartbeat {
            time: r.u64("time")?,
            host: r.fixed_str(32, "host")?,
        })
    }
}

/// 9002 response body: `totalDevCount u32 | svrStartTime u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebHeartbeatAck {
    pub total_devices: u32,
    pub start_time: u64,
}

impl WebHeartbeatAck {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.total_devices).u64(self.start_time);
        w.into_vec()
    }
    pub fn decode(b: &[u8]) -> Result<WebHeartbeatAck, BodyError> {
        let mut r = Reader::new(b);
        Ok(WebHeartbeatAck {
            total_devices: r.u32("total")?,
            start_time: r.u64("start_time")?,
        })
    }
}
