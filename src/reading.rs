//! The reading model shared by sensors, the buffer and the encoder. A leaf:
//! it imports nothing of the crate, so every other module may import it.

use std::fmt::Write as _;
use std::sync::Arc;

/// A sensor value as Thing+ accepts it: a number, a string or a JSON object
/// (a location is `{"lat":..,"lng":..}`).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
    Json(serde_json::Value),
}

impl Value {
    /// Appends the JSON form of the value. Integral numbers are written
    /// without a fraction so an integer type (humidity, onoff) reads `42`.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Number(n) => write_number(*n, out),
            Value::Text(s) => write_json_string(s, out),
            Value::Json(v) => {
                // serde_json writing to a String cannot fail.
                let _ = write!(out, "{v}");
            }
        }
    }

    pub fn to_json_string(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }

    /// The value as serde_json, for status output and tests.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Number(n) => {
                if is_integral(*n) {
                    serde_json::Value::from(*n as i64)
                } else {
                    serde_json::Number::from_f64(*n)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null)
                }
            }
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Json(v) => v.clone(),
        }
    }

    /// Inverse of [`Value::to_json`]: what a JSON value in a Thing+ payload means.
    pub fn from_json(v: serde_json::Value) -> Value {
        match v {
            serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Value::Text(s),
            other => Value::Json(other),
        }
    }
}

fn is_integral(n: f64) -> bool {
    n.fract() == 0.0 && n.abs() < 9.0e15
}

fn write_number(n: f64, out: &mut String) {
    out.push_str(number_json(n, &mut NumberBuffer::default()));
}

/// Scratch space for [`number_json`].
#[derive(Default)]
pub struct NumberBuffer {
    int: itoa::Buffer,
    float: zmij::Buffer,
}

/// The JSON text of a number (integral ones without a fraction), formatted
/// with itoa and zmij: a backlog drain formats millions of these.
pub fn number_json(n: f64, buf: &mut NumberBuffer) -> &str {
    if is_integral(n) {
        buf.int.format(n as i64)
    } else if n.is_finite() {
        buf.float.format_finite(n)
    } else {
        // Sensors never produce NaN/inf (they are rejected at sampling); keep the JSON valid anyway.
        "null"
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    if !needs_escape(s) {
        // Sensor ids and most values: nothing to escape.
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whether [`write_json_string`] must escape something in `s`.
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// The length of `s` as a JSON string literal, without writing it.
pub fn json_string_len(s: &str) -> usize {
    if !needs_escape(s) {
        return s.len() + 2;
    }
    let mut tmp = String::with_capacity(s.len() + 8);
    write_json_string(s, &mut tmp);
    tmp.len()
}

/// One sample of one sensor: `(sensor id, Unix time in ms, value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub sensor_id: Arc<str>,
    pub time_ms: i64,
    pub value: Value,
}

impl Reading {
    pub fn new(sensor_id: impl Into<Arc<str>>, time_ms: i64, value: Value) -> Self {
        Reading {
            sensor_id: sensor_id.into(),
            time_ms,
            value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_integral_without_fraction() {
        assert_eq!(Value::Number(42.0).to_json_string(), "42");
        assert_eq!(Value::Number(-3.0).to_json_string(), "-3");
        assert_eq!(Value::Number(27.5).to_json_string(), "27.5");
        assert_eq!(Value::Number(0.001).to_json_string(), "0.001");
    }

    #[test]
    fn strings_are_escaped() {
        let v = Value::Text("a\"b\\c\n\u{1}".into());
        let s = v.to_json_string();
        assert_eq!(s, r#""a\"b\\c\n\u0001""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}");
    }

    #[test]
    fn escaping_fast_path_agrees() {
        for s in [
            "plain-id_1.~",
            "",
            "é and ü",
            "tab\t",
            "q\"",
            "back\\",
            "\u{1f}",
        ] {
            let mut out = String::new();
            write_json_string(s, &mut out);
            assert_eq!(out.len(), json_string_len(s));
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
    }

    #[test]
    fn objects_round_trip() {
        let v = Value::Json(serde_json::json!({"lat": 37.1, "lng": 127.2}));
        let s = v.to_json_string();
        let back = Value::from_json(serde_json::from_str(&s).unwrap());
        assert_eq!(back, v);
    }
}
