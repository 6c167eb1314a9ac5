//! Typed EXLIVE messages. Values arrive as strings; a number that does not parse makes
//! that field `None`, never the whole message lost.

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no header.cmd")]
    NoCommand,
}

/// 1007: a vehicle position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Position {
    /// Plate or name.
    pub code: String,
    pub id: String,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    /// Speed, km/h.
    pub veo: Option<f64>,
    /// Heading, degrees.
    pub dir: Option<f64>,
    /// "yyyy-MM-dd HH:mm:ss", platform local time.
    pub gpstime: Option<String>,
    /// Valid fix.
    pub av: Option<bool>,
    pub alarm: Option<bool>,
    pub oil: Option<f64>,
    /// Total mileage, km.
    pub dis: Option<f64>,
    pub wstate: Option<String>,
    pub cstate: Option<String>,
    pub posinfo: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// 1000
    Login {
        name: String,
        pass: String,
        ver: String,
        kind: String,
        mode: String,
    },
    /// 8000: answer to `cmd`.
    Ack { cmd: String, result: String },
    /// 1001
    Logout,
    /// 1002
    Heartbeat,
    /// 1003
    Text { msg: String },
    /// 1004
    TerminalCommand { id: String, data: String },
    /// 1005
    CustomerGroups { data: String },
    /// 1006
    VehicleData { data: String },
    /// 1007
    Position(Position),
    /// 1008: ask for groups (and customers when `client`).
    GroupsRequest { client: bool },
    /// 1009
    Group {
        groupid: String,
        relation: String,
        customer: String,
        groupname: String,
    },
    /// 1010
    VehiclesRequest { groupid: String },
    /// 1011
    Vehicle {
        id: String,
        code: String,
        sim: String,
    },
    /// 1012: pass-through command to a terminal.
    Passthrough {
        terminalid: String,
        code: String,
        data: String,
    },
    /// 1013: pass-through data from a terminal.
    PassthroughData {
        terminalid: String,
        code: String,
        data: String,
    },
    /// Any other command, kept for logging.
    Unknown { cmd: String, body: Value },
}

/// Decodes raw object bytes as UTF-8, falling back to GBK.
pub fn decode_text(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => {
            let (text, _, _) = encoding_rs::GBK.decode(raw);
            text
        }
    }
}

fn text(body: &Map<String, Value>, key: &str) -> String {
    match body.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn opt_text(body: &Map<String, Value>, key: &str) -> Option<String> {
    Some(text(body, key)).filter(|s| !s.trim().is_empty())
}

fn number(body: &Map<String, Value>, key: &str) -> Option<f64> {
    let v = match body.get(key)? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    v.is_finite().then_some(v)
}

fn flag(body: &Map<String, Value>, key: &str) -> Option<bool> {
    match body.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|v| v != 0),
        Value::String(s) => match s.trim() {
            "1" | "true" => Some(true),
            "0" | "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

impl Message {
    /// Parses one object (as found by the splitter).
    pub fn decode(raw: &[u8]) -> Result<Message, DecodeError> {
        let text_form = decode_text(raw);
        let value: Value =
            serde_json::from_str(&text_form).map_err(|e| DecodeError::Json(e.to_string()))?;
        let cmd = match value.get("header").and_then(|h| h.get("cmd")) {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(DecodeError::NoCommand),
        };
        let empty = Map::new();
        let body = value
            .get("body")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let b = body;
        Ok(match cmd.as_str() {
            "1000" => Message::Login {
                name: text(b, "name"),
                pass: text(b, "pass"),
                ver: text(b, "ver"),
                kind: text(b, "type"),
                mode: text(b, "mode"),
            },
            "8000" => Message::Ack {
                cmd: text(b, "cmd"),
                result: text(b, "result"),
            },
            "1001" => Message::Logout,
            "1002" => Message::Heartbeat,
            "1003" => Message::Text {
                msg: text(b, "msg"),
            },
            "1004" => Message::TerminalCommand {
                id: text(b, "id"),
                data: text(b, "data"),
            },
            "1005" => Message::CustomerGroups {
                data: text(b, "data"),
            },
            "1006" => Message::VehicleData {
                data: text(b, "data"),
            },
            "1007" => Message::Position(Position {
                code: text(b, "code"),
                id: text(b, "id"),
                lat: number(b, "lat"),
                lng: number(b, "lng"),
                veo: number(b, "veo"),
                dir: number(b, "dir"),
                gpstime: opt_text(b, "gpstime"),
                av: flag(b, "av"),
                alarm: flag(b, "alarm"),
                oil: number(b, "oil"),
                dis: number(b, "dis"),
                wstate: opt_text(b, "wstate"),
                cstate: opt_text(b, "cstate"),
                posinfo: opt_text(b, "posinfo"),
            }),
            "1008" => Message::GroupsRequest {
                client: flag(b, "client").unwrap_or(false),
            },
            "1009" => Message::Group {
                groupid: text(b, "groupid"),
                relation: text(b, "relation"),
                customer: text(b, "customer"),
                // The specification spells it "goupname" (docs/protocols/exlive.md,
                // "1008 to 1011 groups and vehicles").
                groupname: opt_text(b, "groupname").unwrap_or_else(|| text(b, "goupname")),
            },
            "1010" => Message::VehiclesRequest {
                groupid: text(b, "groupid"),
            },
            "1011" => Message::Vehicle {
                id: text(b, "id"),
                code: text(b, "code"),
                sim: text(b, "sim"),
            },
            "1012" => Message::Passthrough {
                terminalid: text(b, "terminalid"),
                code: text(b, "code"),
                data: text(b, "data"),
            },
            "1013" => Message::PassthroughData {
                terminalid: text(b, "terminalid"),
                code: text(b, "code"),
                data: text(b, "data"),
            },
            _ => Message::Unknown {
                cmd,
                body: Value::Object(body.clone()),
            },
        })
    }

    pub fn cmd(&self) -> &str {
        match self {
            Message::Login { .. } => "1000",
            Message::Ack { .. } => "8000",
            Message::Logout => "1001",
            Message::Heartbeat => "1002",
            Message::Text { .. } => "1003",
            Message::TerminalCommand { .. } => "1004",
            Message::CustomerGroups { .. } => "1005",
            Message::VehicleData { .. } => "1006",
            Message::Position(_) => "1007",
            Message::GroupsRequest { .. } => "1008",
            Message::Group { .. } => "1009",
            Message::VehiclesRequest { .. } => "1010",
            Message::Vehicle { .. } => "1011",
            Message::Passthrough { .. } => "1012",
            Message::PassthroughData { .. } => "1013",
            Message::Unknown { cmd, .. } => cmd,
        }
    }

    /// The message as one line of JSON (all values strings), without a terminator.
    pub fn encode(&self) -> String {
        fn num(v: Option<f64>) -> String {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        fn flag(v: Option<bool>) -> &'static str {
            match v {
                Some(true) => "1",
                Some(false) => "0",
                None => "",
            }
        }
        let body = match self {
            Message::Login {
                name,
                pass,
                ver,
                kind,
                mode,
            } => {
                json!({"name": name, "pass": pass, "ver": ver, "type": kind, "mode": mode})
            }
            Message::Ack { cmd, result } => json!({"cmd": cmd, "result": result}),
            Message::Logout => json!({"data": ""}),
            Message::Heartbeat => json!({"result": ""}),
            Message::Text { msg } => json!({"msg": msg}),
            Message::TerminalCommand { id, data } => json!({"id": id, "data": data}),
            Message::CustomerGroups { data } | Message::VehicleData { data } => {
                json!({"data": data})
            }
            Message::Position(p) => json!({
                "code": p.code, "id": p.id, "lat": num(p.lat), "lng": num(p.lng),
                "veo": num(p.veo), "dir": num(p.dir), "gpstime": p.gpstime.clone().unwrap_or_default(),
                "av": flag(p.av), "alarm": flag(p.alarm), "oil": num(p.oil), "dis": num(p.dis),
                "wstate": p.wstate.clone().unwrap_or_default(), "cstate": p.cstate.clone().unwrap_or_default(),
                "posinfo": p.posinfo.clone().unwrap_or_default(),
            }),
            Message::GroupsRequest { client } => {
                json!({"client": if *client { "true" } else { "false" }})
            }
            Message::Group {
                groupid,
                relation,
                customer,
                groupname,
            } => {
                json!({"groupid": groupid, "relation": relation, "customer": customer, "groupname": groupname})
            }
            Message::VehiclesRequest { groupid } => json!({"groupid": groupid}),
            Message::Vehicle { id, code, sim } => json!({"id": id, "code": code, "sim": sim}),
            Message::Passthrough {
                terminalid,
                code,
                data,
            }
            | Message::PassthroughData {
                terminalid,
                code,
                data,
            } => {
                json!({"terminalid": terminalid, "code": code, "data": data})
            }
            Message::Unknown { body, .. } => body.clone(),
        };
        json!({"header": {"cmd": self.cmd()}, "body": body}).to_string()
    }

    /// Whether an 8000 result means success ("success" per the specification, "succeed" per
    /// one public client: docs/protocols/exlive.md, "1000 login and 8000 ack").
    pub fn is_success(result: &str) -> bool {
        matches!(
            result.trim().to_ascii_lowercase().as_str(),
            "success" | "succeed" | "succeeded" | "ok"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_login_and_ack() {
        let m = Message::decode(br#"{"header":{"cmd":"1000"},"body":{"name":"exlive","pass":"000000","ver":"","type":"","mode":""}}"#).unwrap();
        assert_eq!(
            m,
            Message::Login {
                name: "exlive".into(),
                pass: "000000".into(),
                ver: "".into(),
                kind: "".into(),
                mode: "".into()
            }
        );
        let ack = Message::decode(
            br#"{"header":{"cmd":"8000"},"body":{"cmd":"1000","result":"success" }}"#,
        )
        .unwrap();
        assert_eq!(
            ack,
            Message::Ack {
                cmd: "1000".into(),
                result: "success".into()
            }
        );
        assert!(
            Message::is_success("success")
                && Message::is_success("succeed")
                && !Message::is_success("fail")
        );
    }

    #[test]
    fn position_with_bad_numbers_keeps_the_rest() {
        let m = Message::decode(
            br#"{"header":{"cmd":"1007"},"body":{"code":"A12345","id":"77","lat":"31.2304","lng":"121.4737","veo":"fast","dir":"90","gpstime":"2011-11-01 12:38:39","av":"1","alarm":"0","oil":"","dis":"12345.6","wstate":"","cstate":"ACC on","posinfo":""}}"#,
        )
        .unwrap();
        let Message::Position(p) = m else { panic!() };
        assert_eq!(p.code, "A12345");
        assert_eq!(p.lat, Some(31.2304));
        assert_eq!(p.veo, None, "unparsable speed is absent");
        assert_eq!(p.oil, None);
        assert_eq!(p.dir, Some(90.0));
        assert_eq!(p.av, Some(true));
        assert_eq!(p.alarm, Some(false));
        assert_eq!(p.cstate.as_deref(), Some("ACC on"));
        assert_eq!(p.posinfo, None);
    }

    #[test]
    fn gbk_posinfo() {
        let (gbk, _, _) = encoding_rs::GBK.encode("上海市浦东新区");
        let mut raw = br#"{"header":{"cmd":"1007"},"body":{"id":"1","posinfo":""#.to_vec();
        raw.extend_from_slice(&gbk);
        raw.extend_from_slice(br#""}}"#);
        let Message::Position(p) = Message::decode(&raw).unwrap() else {
            panic!()
        };
        assert_eq!(p.posinfo.as_deref(), Some("上海市浦东新区"));
    }

    #[test]
    fn numeric_cmd_unknown_and_missing_header() {
        assert_eq!(
            Message::decode(br#"{"header":{"cmd":1002},"body":{}}"#).unwrap(),
            Message::Heartbeat
        );
        let m = Message::decode(br#"{"header":{"cmd":"4242"},"body":{"x":"1"}}"#).unwrap();
        assert!(matches!(m, Message::Unknown { ref cmd, .. } if cmd == "4242"));
        assert_eq!(
            Message::decode(br#"{"body":{}}"#),
            Err(DecodeError::NoCommand)
        );
        assert!(matches!(
            Message::decode(b"{nope}"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn group_accepts_the_seed_typo() {
        let m = Message::decode(br#"{"header":{"cmd":"1009"},"body":{"groupid":"3","relation":"","customer":"c","goupname":"Fleet"}}"#).unwrap();
        assert!(matches!(m, Message::Group { ref groupname, .. } if groupname == "Fleet"));
    }

    #[test]
    fn encode_matches_the_seed_shape() {
        assert_eq!(
            Message::Ack {
                cmd: "1000".into(),
                result: "success".into()
            }
            .encode(),
            r#"{"body":{"cmd":"1000","result":"success"},"header":{"cmd":"8000"}}"#
        );
    }
}
