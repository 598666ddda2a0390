//! The Thing+ value and status encoders: whatever the sensors produce,
//! encoding then parsing back gives the input again, and packing into
//! size-bounded messages loses, duplicates or reorders nothing.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use thingplus_gw::reading::{Reading, Value};
use thingplus_gw::thingplus::compress::{self, Compression};
use thingplus_gw::thingplus::{
    encode_status, encode_values, pack_values, parse_status, parse_values, Status,
};

/// A sensor id as the configuration allows it (URL-unreserved characters),
/// or any text (ids are JSON strings in the values message).
fn sensor_id(u: &mut Unstructured, any: bool) -> Result<String> {
    if any {
        return u.arbitrary::<String>();
    }
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~";
    let len = u.int_in_range(1..=24)?;
    (0..len)
        .map(|_| Ok(char::from(*u.choose(CHARS)?)))
        .collect()
}

fn json(u: &mut Unstructured, depth: u32) -> Result<Json> {
    Ok(match u.int_in_range(0..=6)? {
        0 => Json::Null,
        1 => Json::Bool(u.arbitrary()?),
        2 => Json::from(u.arbitrary::<i64>()?),
        3 => Json::from(u.arbitrary::<u64>()?),
        4 => serde_json::Number::from_f64(u.arbitrary()?).map_or(Json::Null, Json::Number),
        5 => Json::String(u.arbitrary()?),
        _ if depth > 3 => Json::Null,
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=4)? {
                m.insert(u.arbitrary()?, json(u, depth + 1)?);
            }
            Json::Object(m)
        }
    })
}

/// A value as sensors make them: a finite number, text, or an object or
/// array (a location). NaN and infinities are rejected at sampling.
fn value(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => {
            let n: f64 = u.arbitrary()?;
            Value::Number(if n.is_finite() { n } else { 0.0 })
        }
        1 => Value::Text(u.arbitrary()?),
        2 => Value::Json(serde_json::json!({
            "lat": u.int_in_range(-90_000_000..=90_000_000i64)? as f64 / 1e6,
            "lng": u.int_in_range(-180_000_000..=180_000_000i64)? as f64 / 1e6,
        })),
        _ => match json(u, 1)? {
            v @ (Json::Object(_) | Json::Array(_)) => Value::Json(v),
            _ => Value::Json(Json::Array(vec![json(u, 1)?])),
        },
    })
}

fn status(u: &mut Unstructured) -> Result<Status> {
    Ok(match u.int_in_range(0..=3)? {
        0 => Status::On,
        1 => Status::Off,
        2 => Status::Err(None),
        _ => Status::Err(Some(u.arbitrary()?)),
    })
}

/// What a status reads as once encoded: commas and control characters in an
/// error detail become spaces.
fn as_sent(s: &Status) -> Status {
    match s {
        Status::Err(Some(d)) => Status::Err(Some(
            d.chars()
                .map(|c| if c == ',' || c.is_control() { ' ' } else { c })
                .collect(),
        )),
        other => other.clone(),
    }
}

/// Readings grouped per sensor, in order: what must survive encoding.
fn per_sensor(rs: &[Reading]) -> Vec<(String, Vec<(i64, Value)>)> {
    let mut out: Vec<(String, Vec<(i64, Value)>)> = Vec::new();
    for r in rs {
        let id = r.sensor_id.to_string();
        match out.iter_mut().find(|(i, _)| *i == id) {
            Some((_, v)) => v.push((r.time_ms, r.value.clone())),
            None => out.push((id, vec![(r.time_ms, r.value.clone())])),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn run(u: &mut Unstructured) -> Result<()> {
    let any_ids: bool = u.arbitrary()?;
    let nsensors = u.int_in_range(1..=5)?;
    let ids: Vec<String> = (0..nsensors)
        .map(|_| sensor_id(u, any_ids))
        .collect::<Result<_>>()?;
    let mut readings = Vec::new();
    for _ in 0..u.int_in_range(0..=24)? {
        let id = u.choose(&ids)?.as_str();
        readings.push(Reading::new(id, u.arbitrary::<i64>()?, value(u)?));
    }

    // Values: one message.
    let text = encode_values(&readings);
    let back = parse_values(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(per_sensor(&back), per_sensor(&readings), "{text}");

    // gzip, as `[mqtt] compress` sends it, gives back the message (once per
    // input: a gzip encoder's set-up dominates the cost of small messages).
    let sent = Compression::Gzip { min_bytes: 0 }.apply(text.as_bytes().to_vec());
    assert!(sent.len() <= text.len());
    let got = compress::decode(&sent, text.len()).expect("gunzip");
    assert_eq!(&*got, text.as_bytes());

    // Values: messages of at most max_bytes, in order.
    let max_bytes = u.int_in_range(2..=1024)?;
    let mut start = 0;
    let mut again = Vec::new();
    while start < readings.len() {
        let (msg, n) = pack_values(&readings[start..], max_bytes);
        assert!(n >= 1);
        assert!(
            n == 1 || msg.len() <= max_bytes,
            "{} > {max_bytes}",
            msg.len()
        );
        let part = parse_values(msg.as_bytes()).unwrap_or_else(|e| panic!("{e}: {msg}"));
        assert_eq!(per_sensor(&part), per_sensor(&readings[start..start + n]));
        again.extend_from_slice(&readings[start..start + n]);
        start += n;
    }
    assert_eq!(per_sensor(&again), per_sensor(&readings));

    // Status: ids as the configuration allows them.
    let gw = status(u)?;
    let valid: i64 = u.arbitrary()?;
    let mut sensors = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        sensors.push((sensor_id(u, false)?, status(u)?));
    }
    let text = encode_status(&gw, valid, sensors.iter().map(|(i, s)| (i.as_str(), s)));
    let (gw2, valid2, sensors2) = parse_status(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(gw2, as_sent(&gw));
    assert_eq!(valid2, valid);
    assert_eq!(sensors2.len(), sensors.len());
    for ((id, s), (id2, s2, v2)) in sensors.iter().zip(&sensors2) {
        assert_eq!((id, &as_sent(s), valid), (id2, s2, *v2), "{text}");
    }
    Ok(())
}

/// A payload as the cloud would see it (the protocol's examples are seeds):
/// what parses, once encoded again, parses to the same thing.
fn reparse(data: &[u8]) {
    if let Ok(readings) = parse_values(data) {
        let text = encode_values(&readings);
        let back = parse_values(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(per_sensor(&back), per_sensor(&readings), "{text}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((gw, valid, sensors)) = parse_status(text) {
            let again = encode_status(&gw, valid, sensors.iter().map(|(i, s, _)| (i.as_str(), s)));
            let (gw2, valid2, sensors2) = parse_status(&again).unwrap();
            assert_eq!(gw2, as_sent(&gw));
            assert_eq!(valid2, valid);
            assert_eq!(sensors2.len(), sensors.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: 'v'/'s'/'{' (a payload), 'z' (a gzip payload) or anything else (structured readings).
    match data.first() {
        Some(b'{') => reparse(data),
        Some(b'v' | b's') => reparse(&data[1..]),
        // A gzip payload: gunzipping is bounded, and what it gives parses as above.
        Some(b'z') => {
            if let Ok(out) = compress::decode(&data[1..], 1 << 16) {
                assert!(out.len() <= 1 << 16);
                reparse(&out);
            }
        }
        _ => {
            let _ = run(&mut Unstructured::new(data));
        }
    }
});
