//! Control commands: 2001–2005 to a device, 4001–4005 to a kingxun server.

use super::message::id;
use super::wire::{BodyError, Reader, Writer};

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
    /// 2003 / 4003. `power`: 0 off, 1 100 W, 2 200 W, 0xFF unlimited. `max_speed`: m/s × 100,
    /// u16 on the wire except in the `kxsvr` profile (u8, as kxSvr's struct has it).
    Guard {
        power: u8,
        max_speed: u16,
        voice: u8,
    },
    /// 2004 / 4004. `flags`: 0x02 seat, 0x04 glovebox, 0x08 helmet.
    OpenLock { flags: u8, voice: u8 },
    /// 2005 / 4005. `flags`: 0x01 headlight, 0x04 high beam, 0x10 position, 0x40 left,
    /// 0x80 right; 4005 (the server document: docs/protocols/kingxun.md,
    /// "4001–4005 commands through a server") is u16 and adds 0x0100 hazard and 0x0400
    /// brake light, 2005 (devProctol.md) is one byte, so those two cannot reach a device
    /// directly.
    Lights { flags: u16 },
}

/// Which published layout a device expects where the sources disagree
/// (docs/protocols/kingxun.md, "Layout forks"; docs/kingxun-profiles.md).
///
/// | body | `classic` (default) | `doc-2025` | `kxsvr` |
/// |------|---------------------|------------|---------|
/// | 2001 | 19 bytes, no usrId  | 23, usrId  | 19      |
/// | 2003 maxSpeed | u16        | u16        | u8      |
/// | 2004 | 13 bytes, no voice  | 13         | 14, voice |
/// | 2005 lightFlag | u8        | u8         | u8      |
///
/// `classic` is what two sources agree on: 2001 without usrId (kxSvr's
/// `KxDevCtrlOpenLock_OrMsg` and devProctol.md before 2025-08), 2004 without voice (every
/// devProctol.md version; kxSvr's 14th byte is never initialised, so firmware that works
/// with kxSvr cannot depend on it), 2003 maxSpeed u16 (every devProctol.md version and the
/// server document's 4003; kxSvr's u8 never reaches a device, since kxSvr forwards 4003 as
/// 2002), 2005 lightFlag u8 (devProctol.md; kxSvr has no 2005).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Profile {
    #[default]
    #[serde(rename = "classic")]
    Classic,
    /// devProctol.md since 2025-08-21: 2001 carries usrId.
    #[serde(rename = "doc-2025")]
    Doc2025,
    /// Byte for byte what kxSvr's structs (`KxMsgDef.h`) would send.
    #[serde(rename = "kxsvr")]
    Kxsvr,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Classic => "classic",
            Profile::Doc2025 => "doc-2025",
            Profile::Kxsvr => "kxsvr",
        }
    }
    /// 2001 carries `usrId u32` after the session id.
    pub fn unlock_has_user_id(self) -> bool {
        self == Profile::Doc2025
    }
    /// 2004 carries a voice byte after `lockFlag`.
    pub fn open_lock_has_voice(self) -> bool {
        self == Profile::Kxsvr
    }
    /// The largest 2003 maxSpeed (m/s × 100) the layout can carry.
    pub fn max_speed_limit(self) -> u16 {
        if self == Profile::Kxsvr {
            u16::from(u8::MAX)
        } else {
            u16::MAX
        }
    }
}

/// Who a control is for: a device (2001–2005, in its profile) or a server (4001–4005, as
/// the server document and kxSvr's `KxAppDevCtrl*_OrMsg` structs lay them out;
/// docs/protocols/kingxun.md, "4001–4005 commands through a server").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Device(Profile),
    Server,
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

    /// Whether `target`'s layout can carry this control's values at all.
    pub fn check(&self, target: Target) -> Result<(), BodyError> {
        match (*self, target) {
            (Control::Guard { max_speed, .. }, Target::Device(p))
                if max_speed > p.max_speed_limit() =>
            {
                Err(BodyError::Range {
                    what: "max speed for this device profile",
                    value: max_speed.into(),
                })
            }
            (Control::Lights { flags }, Target::Device(_)) if flags > 0xFF => {
                Err(BodyError::Range {
                    what: "2005 lightFlag (one byte)",
                    value: flags.into(),
                })
            }
            _ => Ok(()),
        }
    }

    fn write_params(&self, w: &mut Writer, target: Target) {
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
                w.u8(power);
                match target {
                    Target::Device(Profile::Kxsvr) => w.u8(max_speed.min(255) as u8),
                    _ => w.u16(max_speed),
                };
                w.u8(voice);
            }
            Control::OpenLock { flags, voice } => {
                w.u8(flags);
                match target {
                    Target::Server => {
                        w.u8(voice);
                    }
                    Target::Device(p) if p.open_lock_has_voice() => {
                        w.u8(voice);
                    }
                    Target::Device(_) => {}
                }
            }
            Control::Lights { flags } => match target {
                Target::Server => {
                    w.u16(flags);
                }
                Target::Device(_) => {
                    w.u8(flags as u8);
                }
            },
        }
    }

    /// Reads the parameters a device or server would; bytes after them are left unread
    /// (a device of one profile receiving another's longer body still acts on its fields).
    fn read_params(msg_id: u16, r: &mut Reader, target: Target) -> Result<Control, BodyError> {
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
                max_speed: match target {
                    Target::Device(Profile::Kxsvr) => r.u8("max_speed")?.into(),
                    _ => r.u16("max_speed")?,
                },
                voice: r.u8("voice")?,
            },
            4 => {
                let flags = r.u8("lock_flag")?;
                let voice = match target {
                    Target::Server => r.u8("voice")?,
                    Target::Device(p) if p.open_lock_has_voice() => r.u8("voice")?,
                    Target::Device(_) => 0,
                };
                Control::OpenLock { flags, voice }
            }
            5 => Control::Lights {
                flags: match target {
                    Target::Server => r.u16("light_flag")?,
                    Target::Device(_) => r.u8("light_flag")?.into(),
                },
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

/// 2001–2005 body: `svrtime u64 | sessionId u32 | [usrId u32: 2001, doc-2025 only] | params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceControl {
    pub svr_time: u64,
    pub session_id: u32,
    /// Carried by 2001 in the `doc-2025` profile only.
    pub user_id: u32,
    pub control: Control,
}

impl DeviceControl {
    pub fn encode(&self, profile: Profile) -> Result<Vec<u8>, BodyError> {
        self.control.check(Target::Device(profile))?;
        let mut w = Writer::new();
        w.u64(self.svr_time).u32(self.session_id);
        if matches!(self.control, Control::Unlock { .. }) && profile.unlock_has_user_id() {
            w.u32(self.user_id);
        }
        self.control.write_params(&mut w, Target::Device(profile));
        Ok(w.into_vec())
    }
    pub fn decode(msg_id: u16, b: &[u8], profile: Profile) -> Result<DeviceControl, BodyError> {
        let mut r = Reader::new(b);
        let svr_time = r.u64("svr_time")?;
        let session_id = r.u32("session_id")?;
        let user_id = if msg_id == id::UNLOCK && profile.unlock_has_user_id() {
            r.u32("user_id")?
        } else {
            0
        };
        let control = Control::read_params(msg_id, &mut r, Target::Device(profile))?;
        Ok(DeviceControl {
            svr_time,
            session_id,
            user_id,
            control,
        })
    }
}

/// 4001–4005 body: `devId u32 | devtype u8 | time u64 | usrId i32 | params` (the server
/// document, docs/protocols/kingxun.md, "4001–4005 commands through a server"; kxSvr's
/// `KxAppDevCtrl*_OrMsg` structs agree except 4003's maxSpeed, u8 there).
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
        self.control.write_params(&mut w, Target::Server);
        w.into_vec()
    }
    pub fn decode(msg_id: u16, b: &[u8]) -> Result<AppControl, BodyError> {
        let mut r = Reader::new(b);
        Ok(AppControl {
            dev_id: r.u32("dev_id")?,
            dev_type: r.u8("dev_type")?,
            time: r.u64("time")?,
            user_id: r.i32("user_id")?,
            control: Control::read_params(msg_id, &mut r, Target::Server)?,
        })
    }
}
