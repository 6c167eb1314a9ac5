//! 1002 status: position, battery, locks.

use crate::protocol::kingxun::wire::{BodyError, Reader, Writer};

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
