//! Value conversion shared by every source: raw numbers, text and JSON
//! fields become sensor values (`raw * scale + offset`, rounding for
//! integer types, text kept as text). Pure.

use regex::Regex;
use serde_json::Value as J;

use crate::config::{SensorConfig, ValueType};
use crate::reading::Value;

/// Turns text (file contents, a cell) into a value: the regex's first group
/// (or the whole text), trimmed; numbers become `raw * scale + offset`,
/// rounded for integer types.
pub fn parse(
    text: &str,
    regex: Option<&Regex>,
    value_type: ValueType,
    scale: f64,
    offset: f64,
) -> Result<Value, String> {
    let raw = match regex {
        Some(re) => re
            .captures(text)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str())
            .ok_or_else(|| format!("the regex {} does not match {}", re.as_str(), excerpt(text)))?,
        None => text,
    }
    .trim();
    match value_type {
        ValueType::Text => Ok(Value::Text(raw.to_string())),
        ValueType::Number | ValueType::Integer => {
            let n: f64 = raw
                .parse()
                .map_err(|_| format!("not a number: {}", excerpt(raw)))?;
            number_value(n, value_type, scale, offset)
                .map_err(|_| format!("not a finite number: {}", excerpt(raw)))
        }
    }
}

/// A raw number as a value: `raw * scale + offset`, rounded for integer
/// types, as text for text types.
pub fn number_value(
    raw: f64,
    value_type: ValueType,
    scale: f64,
    offset: f64,
) -> Result<Value, String> {
    let v = raw * scale + offset;
    if !v.is_finite() {
        return Err(format!("not a finite number: {raw}"));
    }
    Ok(match value_type {
        ValueType::Integer => Value::Number(v.round()),
        // Drop binary noise such as 45.300000000000004 from raw * 0.001.
        ValueType::Number => Value::Number(round_sig(v)),
        ValueType::Text => Value::Text(Value::Number(round_sig(v)).to_json_string()),
    })
}

/// A field's JSON value as a sensor value: numbers get `scale`/`offset`
/// (and rounding for integer types); numeric text is parsed first; objects
/// and arrays (a location) pass through as they are.
pub fn field_value(v: &J, cfg: &SensorConfig) -> Result<Value, String> {
    match v {
        J::Number(n) => number_value(
            n.as_f64().unwrap_or(f64::NAN),
            cfg.value_type,
            cfg.scale,
            cfg.offset,
        ),
        J::String(s) => parse(s, None, cfg.value_type, cfg.scale, cfg.offset),
        J::Bool(b) => match cfg.value_type {
            ValueType::Text => Ok(Value::Text(b.to_string())),
            _ => number_value(f64::from(u8::from(*b)), cfg.value_type, 1.0, 0.0),
        },
        J::Object(_) | J::Array(_) => Ok(Value::Json(v.clone())),
        J::Null => Err("no value".into()),
    }
}

/// Rounds to 12 significant digits.
fn round_sig(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let digits = 12 - v.abs().log10().ceil() as i32;
    if !(0..=300).contains(&digits) {
        return v;
    }
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn excerpt(s: &str) -> String {
    let mut e: String = s.trim().chars().take(40).collect();
    if s.trim().chars().count() > 40 {
        e.push('…');
    }
    format!("{e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SensorSource;

    #[test]
    fn sysfs_millidegrees() {
        let v = parse("45300\n", None, ValueType::Number, 0.001, 0.0).unwrap();
        assert_eq!(v, Value::Number(45.3));
    }

    #[test]
    fn regex_first_group_w1_style() {
        let re = Regex::new(r"t=(-?\d+)").unwrap();
        let text = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        let v = parse(text, Some(&re), ValueType::Number, 0.001, 0.0).unwrap();
        assert_eq!(v, Value::Number(23.125));
        let e = parse("crc=00 NO", Some(&re), ValueType::Number, 1.0, 0.0).unwrap_err();
        assert!(e.contains("does not match"));
    }

    #[test]
    fn integers_are_rounded_and_offset_applies() {
        let v = parse("41.6", None, ValueType::Integer, 1.0, 0.0).unwrap();
        assert_eq!(v, Value::Number(42.0));
        let v = parse("10", None, ValueType::Number, 2.0, -1.5).unwrap();
        assert_eq!(v, Value::Number(18.5));
    }

    #[test]
    fn text_is_kept() {
        let v = parse("  Charging\n", None, ValueType::Text, 1.0, 0.0).unwrap();
        assert_eq!(v, Value::Text("Charging".into()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("abc", None, ValueType::Number, 1.0, 0.0)
            .unwrap_err()
            .contains("not a number"));
        assert!(parse("", None, ValueType::Number, 1.0, 0.0).is_err());
        assert!(parse("inf", None, ValueType::Number, 1.0, 0.0).is_err());
    }

    #[test]
    fn numbers_lose_binary_noise_and_text_types_get_their_decimal_form() {
        assert_eq!(
            number_value(45_300.0, ValueType::Number, 0.001, 0.0).unwrap(),
            Value::Number(45.3)
        );
        assert_eq!(
            number_value(0.1, ValueType::Text, 3.0, 0.0).unwrap(),
            Value::Text("0.3".into())
        );
        assert_eq!(
            number_value(-2.5, ValueType::Integer, 1.0, 0.0).unwrap(),
            Value::Number(-3.0)
        );
        assert_eq!(
            number_value(0.0, ValueType::Number, 1.0, 0.0).unwrap(),
            Value::Number(0.0)
        );
        assert!(number_value(f64::MAX, ValueType::Number, 10.0, 0.0).is_err());
        assert!(number_value(f64::NAN, ValueType::Number, 1.0, 0.0).is_err());
    }

    fn sensor(vt: ValueType, scale: f64) -> SensorConfig {
        SensorConfig {
            id: "s".into(),
            sensor_type: "number".into(),
            source: SensorSource::Serial {
                port: "p".into(),
                field: "f".into(),
            },
            value_type: vt,
            scale,
            offset: 0.0,
            interval: None,
            event: false,
        }
    }

    #[test]
    fn field_values_take_scale_and_types() {
        let n = sensor(ValueType::Number, 0.1);
        assert_eq!(field_value(&J::from(215), &n).unwrap(), Value::Number(21.5));
        assert_eq!(
            field_value(&J::from("215"), &n).unwrap(),
            Value::Number(21.5)
        );
        assert!(field_value(&J::from("x"), &n).is_err());
        assert_eq!(field_value(&J::Null, &n).unwrap_err(), "no value");
        let i = sensor(ValueType::Integer, 1.0);
        assert_eq!(field_value(&J::Bool(true), &i).unwrap(), Value::Number(1.0));
        let t = sensor(ValueType::Text, 1.0);
        assert_eq!(
            field_value(&J::from(" on "), &t).unwrap(),
            Value::Text("on".into())
        );
        assert_eq!(
            field_value(&J::Bool(false), &t).unwrap(),
            Value::Text("false".into())
        );
        let loc = serde_json::json!({"lat": 1.5, "lng": 2.5});
        assert_eq!(field_value(&loc, &n).unwrap(), Value::Json(loc.clone()));
    }
}
