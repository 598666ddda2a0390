//! The compact encoding of a batch of readings, as one BLOB of the `chunks`
//! table.
//!
//! ```text
//! chunk  := version:u8 (=1)  seq0:varint  t0:zigzag  record*
//! record := (seq - seq0):varint  sensor:varint  (t - t0):zigzag  len:varint  value
//! ```
//! `value` is the reading's value as the JSON text Thing+ receives
//! ([`Value::write_json`]): a drain copies it into messages as it is, with no
//! decoding or number formatting. Records are independent of each other, so
//! a chunk can be filtered (partly acknowledged) record by record. Decoding
//! never panics on bad bytes.

use crate::sensor::Value;

pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged chunk: {0}")]
pub struct DecodeError(pub &'static str);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Builds one chunk.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
    seq0: u64,
    t0: i64,
    first: u64,
    last: u64,
    n: u64,
    scratch: String,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder::default()
    }

    pub fn push(&mut self, seq: u64, sensor: i64, t: i64, value: &Value) {
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        value.write_json(&mut text);
        self.push_json(seq, sensor, t, text.as_bytes());
        self.scratch = text;
    }

    /// Adds a record whose value is already JSON text.
    pub fn push_json(&mut self, seq: u64, sensor: i64, t: i64, value: &[u8]) {
        if self.n == 0 {
            self.buf.clear();
            self.buf.push(VERSION);
            put_varint(&mut self.buf, seq);
            put_varint(&mut self.buf, zigzag(t));
            self.seq0 = seq;
            self.t0 = t;
            self.first = seq;
        }
        put_varint(&mut self.buf, seq.wrapping_sub(self.seq0));
        put_varint(&mut self.buf, sensor as u64);
        put_varint(&mut self.buf, zigzag(t.wrapping_sub(self.t0)));
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(value);
        self.last = seq;
        self.n += 1;
    }

    /// Records so far.
    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Encoded bytes so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The chunk: (first seq, last seq, readings, data); the encoder is reset.
    pub fn finish(&mut self) -> Option<(u64, u64, u64, Vec<u8>)> {
        if self.n == 0 {
            return None;
        }
        let out = (self.first, self.last, self.n, std::mem::take(&mut self.buf));
        self.n = 0;
        Some(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    pub seq: u64,
    pub sensor: i64,
    pub t: i64,
    /// The value's JSON text (not checked: it is copied into messages as it is).
    pub value: &'a [u8],
}

impl Record<'_> {
    /// The value, parsed back from its JSON text.
    pub fn value(&self) -> Value {
        match serde_json::from_slice(self.value) {
            Ok(j) => Value::from_json(j),
            Err(_) => Value::Text(String::from_utf8_lossy(self.value).into_owned()),
        }
    }
}

/// Iterates the records of a chunk; stops at the first damaged byte.
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    seq0: u64,
    t0: i64,
    failed: bool,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Result<Decoder<'a>, DecodeError> {
        let mut d = Decoder {
            data,
            pos: 0,
            seq0: 0,
            t0: 0,
            failed: false,
        };
        match d.byte()? {
            VERSION => {}
            _ => return Err(DecodeError("unknown version")),
        }
        d.seq0 = d.varint()?;
        d.t0 = unzigzag(d.varint()?);
        Ok(d)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.data.get(self.pos).ok_or(DecodeError("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        // One or two bytes: every field of a record, nearly always.
        if let Some(&b) = self.data.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
            if let Some(&c) = self.data.get(self.pos + 1) {
                if c < 0x80 {
                    self.pos += 2;
                    return Ok(u64::from(b & 0x7f) | (u64::from(c) << 7));
                }
            }
        }
        self.varint_long()
    }

    #[cold]
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    #[inline]
    fn bytes(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError("length"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.data.len())
            .ok_or(DecodeError("truncated string"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn record(&mut self) -> Result<Record<'a>, DecodeError> {
        let seq = self.seq0.wrapping_add(self.varint()?);
        let sensor = self.varint()? as i64;
        let t = self.t0.wrapping_add(unzigzag(self.varint()?));
        let len = self.varint()?;
        let value = self.bytes(len)?;
        Ok(Record {
            seq,
            sensor,
            t,
            value,
        })
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let r = self.record();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Every record of a chunk, or the first error.
pub fn decode_all(data: &[u8]) -> Result<Vec<Record<'_>>, DecodeError> {
    Decoder::new(data)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>().prop_map(Value::Number),
            any::<i32>().prop_map(|i| Value::Number(f64::from(i))),
            "\\PC{0,20}".prop_map(Value::Text),
            (any::<i32>(), "\\PC{0,8}")
                .prop_map(|(a, b)| Value::Json(serde_json::json!({"a": a, "b": b}))),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(records in prop::collection::vec((1..1000u64, 0..50i64, -100_000i64..100_000, value()), 1..60),
                      seq0 in 0..u64::MAX / 2, t0 in -1i64 << 45..1i64 << 45) {
            let mut e = Encoder::new();
            let mut seq = seq0;
            let mut expect = Vec::new();
            for (step, sensor, dt, v) in &records {
                seq += step;
                e.push(seq, *sensor, t0 + dt, v);
                expect.push((seq, *sensor, t0 + dt, v.clone()));
            }
            let (first, last, n, data) = e.finish().unwrap();
            prop_assert_eq!(first, expect[0].0);
            prop_assert_eq!(last, expect.last().unwrap().0);
            prop_assert_eq!(n as usize, expect.len());
            let got = decode_all(&data).unwrap();
            prop_assert_eq!(got.len(), expect.len());
            for (g, (s, sensor, t, v)) in got.iter().zip(&expect) {
                prop_assert_eq!(g.seq, *s);
                prop_assert_eq!(g.sensor, *sensor);
                prop_assert_eq!(g.t, *t);
                // Kept as Thing+ receives it.
                let text = v.to_json_string();
                prop_assert_eq!(g.value, text.as_bytes());
                prop_assert_eq!(g.value().to_json_string(), v.to_json_string());
            }
        }

        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(d) = Decoder::new(&data) {
                for r in d.flatten() {
                    let _ = r.value();
                }
            }
        }
    }

    #[test]
    fn records_are_small() {
        let mut e = Encoder::new();
        e.push(1, 1, 1_700_000_000_000, &Value::Number(42.0));
        e.push(2, 1, 1_700_000_010_000, &Value::Number(27.5));
        let (_, _, _, data) = e.finish().unwrap();
        // header 1+1+6; records 1+1+1+1+"42" and 1+1+3+1+"27.5"
        assert_eq!(data.len(), 8 + 6 + 10);
    }
}
