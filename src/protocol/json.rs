//! Lenient readers for the cloud APIs' JSON, where one field may arrive as a number or as
//! a numeric string: a missing or malformed value is `None`, never an error.

use serde_json::Value;

/// A finite number given as a JSON number or a numeric string.
pub fn number(v: Option<&Value>) -> Option<f64> {
    let n = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// Non-blank text (trimmed), or a number written out.
pub fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
