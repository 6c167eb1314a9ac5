//! Typed message bodies (plain bytes, after decryption). All integers little-endian.
//!
//! Layouts follow PROTOCOLS.md §4 and the kxSvr device document. Where those give a
//! field without a size, the size chosen here is marked DECISION.

use super::wire::{BodyError, LocalTime, Reader, Writer};

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

/// 1001 request: device registration (plain).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Register {
    pub time: LocalTime,
    /// Device hw, device sw, motor-controller hw, sw, dashboard hw, sw.
    pub versions: [u32; 6],
    /// How many of `versions` the body carried: 6 today, 4 (a 23-byte body) from firmware
    /// before October 2024, fewer from anything else kxSvr accepts.
    pub version_count: usize,
}

impl Register {
    /// The full 31-byte body.
    pub fn decode(b: &[u8]) -> Result<Register, BodyError> {
        let reg = Register::decode_lenient(b);
        if reg.version_count < 6 {
            return Err(BodyError::Length {
                what: "1001",
                expected: 31,
                found: b.len(),
            });
        }
        Ok(reg)
    }

    /// As much as the body carries. kxSvr answers every 1001 without reading its body
    /// (KxLogicSys.cc `DevRegMsgCallBack`), so neither may the bridge refuse one for it.
    pub fn decode_lenient(b: &[u8]) -> Register {
        let mut r = Reader::new(b);
        let time = LocalTime::read(&mut r).unwrap_or_default();
        let mut versions = [0u32; 6];
        let mut version_count = 0;
        for v in &mut versions {
            match r.u32("version") {
                Ok(x) => {
                    *v = x;
                    version_count += 1;
                }
                Err(_) => break,
            }
        }
        Register {
            time,
            versions,
            version_count,
        }
    }

    /// The device's software version, when the body carried it.
    pub fn software_version(&self) -> Option<u32> {
        (self.version_count >= 2).then_some(self.versions[1])
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.time.write(&mut w);
        for v in self.versions.iter().take(self.version_count) {
            w.u32(*v);
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
        // kxSvr's `KxDevStatusPacketBody_Base` ends in one series slot, so a client built
        // on it sends those 4 bytes even for a count of 0 (KxMsgDef.h, KxClient.cpp).
        if !(count == 0 && r.remaining() == 4) {
            r.finish("1002")?;
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
        let t = Traffic {
            dev_type: r.u8("dev_type")?,
            protocol: r.u8("protocol")?,
            used_kib: r.u32("used")?,
        };
        r.finish("1004")?;
        Ok(t)
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
        let start = LocalTime::read_valid(&mut r, "1008 start time")?;
        let (start_lng, start_lat) = (r.f64("start_lng")?, r.f64("start_lat")?);
        let end = LocalTime::read_valid(&mut r, "1008 end time")?;
        let (end_lng, end_lat) = (r.f64("end_lng")?, r.f64("end_lat")?);
        let distance_m = r.u32("distance")?;
        let soc_begin = r.u8("soc_begin")?;
        let soc_end = r.u8("soc_end")?;
        let max_speed = r.u16("max_speed")?;
        let avg_speed = r.u16("avg_speed")?;
        let max_current_ca = r.u16("max_current")?;
        let battery_id = r.fixed_str(32, "battery_id")?;
        let count = r.u32("point_count")? as usize;
        // Check before allocating: the count comes from outside, and it must account for
        // every byte that follows.
        if count.saturating_mul(16) != r.remaining() {
            return Err(BodyError::Length {
                what: "1008 points",
                expected: r.position().saturating_add(count.saturating_mul(16)),
                found: b.len(),
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
        let c = ChargeDone {
            start: LocalTime::read_valid(&mut r, "1010 start time")?,
            lng: r.f64("lng")?,
            lat: r.f64("lat")?,
            end: LocalTime::read_valid(&mut r, "1010 end time")?,
            max_current_ca: r.u16("max_current")?,
            soc_begin: r.u8("soc_begin")?,
            soc_end: r.u8("soc_end")?,
            voltage_begin_cv: r.u16("voltage_begin")?,
            voltage_end_cv: r.u16("voltage_end")?,
        };
        r.finish("1010")?;
        Ok(c)
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
    /// devProctol.md (current, PROTOCOLS.md §5): 1 phone Bluetooth proximity unlock,
    /// 2 network unlock, 3 auto lock, 4 user lock, 5 charging, 6 battery removed, 7 battery
    /// inserted, 8 tipped over, 9 moved while locked, 10 tipped over while riding, 11 key
    /// unlock, 12 key lock, 13 ride started.
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
            1 => "proximity_unlock".into(),
            2 => "network_unlock".into(),
            3 => "auto_lock".into(),
            4 => "user_lock".into(),
            5 => "charging_started".into(),
            6 => "battery_removed".into(),
            7 => "battery_inserted".into(),
            8 => "tipped_over".into(),
            9 => "moved_while_locked".into(),
            10 => "tipped_over_riding".into(),
            11 => "key_unlock".into(),
            12 => "key_lock".into(),
            13 => "ride_started".into(),
            n => format!("event_{n}"),
        }
    }
}

/// Bytes per event in a 1012.
pub const EVENT_LEN: usize = 32;

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
        if b.len() != 1 + count * EVENT_LEN {
            return Err(BodyError::Length {
                what: "1012 events",
                expected: 1 + count * EVENT_LEN,
                found: b.len(),
            });
        }
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(DevEvent {
                time: LocalTime::read_valid(&mut r, "1012 event time")?,
                millis: match r.u16("millis")? {
                    ms @ 0..=999 => ms,
                    ms => {
                        return Err(BodyError::Range {
                            what: "1012 event milliseconds",
                            value: ms.into(),
                        })
                    }
                },
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
