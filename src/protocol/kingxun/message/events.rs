//! 1012 device events.

use crate::protocol::kingxun::wire::{BodyError, LocalTime, Reader, Writer};

/// One device event of a 1012.
#[derive(Debug, Clone, PartialEq)]
pub struct DevEvent {
    pub time: LocalTime,
    pub millis: u16,
    /// devProctol.md (current; docs/protocols/kingxun.md, "1012 events"): 1 phone
    /// Bluetooth proximity unlock, 2 network unlock, 3 auto lock, 4 user lock, 5 charging,
    /// 6 battery removed, 7 battery inserted, 8 tipped over, 9 moved while locked, 10 tipped
    /// over while riding, 11 key unlock, 12 key lock, 13 ride started.
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
