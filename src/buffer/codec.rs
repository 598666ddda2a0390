//! The compact encoding of a batch of readings, as one BLOB of the `chunks`
//! table.
//!
//! ```text
//! chunk  := version:u8 (=1)  seq0:varint  t0:zigzag  record*
//! record := (seq - seq0):varint  sensor:varint  (t - t0):zigzag  value
//! value  := 0 zigzag            an integral number
//!         | 1 f64 (8 bytes LE)  any other number
//!         | 2                   NaN
//!         | 3 len:varint utf8   a string
//!         | 4 len:varint json   a JSON value
//! ```
//! Records are independent of each other, so a chunk can be filtered (partly
//! acknowledged) by copying records. Decoding never panics on bad bytes.

use crate::sensor::Value;

pub const VERSION: u8 = 1;

const INT: u8 = 0;
const F64: u8 = 1;
const NAN: u8 = 2;
const TEXT: u8 = 3;
const JSON: u8 = 4;

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

/// Integral numbers are stored as varints (1 to 8 bytes instead of 8).
fn exact_integer(n: f64) -> Option<i64> {
    let ok = n.fract() == 0.0
        && n.abs() <= 9_007_199_254_740_992.0
        && !(n == 0.0 && n.is_sign_negative());
    ok.then_some(n as i64)
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
    scratch: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder::default()
    }

    pub fn push(&mut self, seq: u64, sensor: i64, t: i64, value: &Value) {
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
        match value {
            Value::Number(n) if n.is_nan() => self.buf.push(NAN),
            Value::Number(n) => match exact_integer(*n) {
                Some(i) => {
                    self.buf.push(INT);
                    put_varint(&mut self.buf, zigzag(i));
                }
                None => {
                    self.buf.push(F64);
                    self.buf.extend_from_slice(&n.to_le_bytes());
                }
            },
            Value::Text(s) => {
                self.buf.push(TEXT);
                put_varint(&mut self.buf, s.len() as u64);
                self.buf.extend_from_slice(s.as_bytes());
            }
            Value::Json(j) => {
                self.scratch.clear();
                // Writing JSON to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut self.scratch, j);
                self.buf.push(JSON);
                put_varint(&mut self.buf, self.scratch.len() as u64);
                self.buf.extend_from_slice(&self.scratch);
            }
        }
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

/// A value as stored, borrowing strings from the chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue<'a> {
    Int(i64),
    F64(f64),
    Nan,
    Text(&'a str),
    Json(&'a [u8]),
}

impl RawValue<'_> {
    pub fn to_value(self) -> Value {
        match self {
            RawValue::Int(i) => Value::Number(i as f64),
            RawValue::F64(f) => Value::Number(f),
            RawValue::Nan => Value::Number(f64::NAN),
            RawValue::Text(s) => Value::Text(s.to_owned()),
            RawValue::Json(b) => match serde_json::from_slice(b) {
                Ok(j) => Value::Json(j),
                Err(_) => Value::Text(String::from_utf8_lossy(b).into_owned()),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    pub seq: u64,
    pub sensor: i64,
    pub t: i64,
    pub value: RawValue<'a>,
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

    fn varint(&mut self) -> Result<u64, DecodeError> {
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

    fn record(&mut self) -> Result<Record<'a>, DecodeError> {
        let seq = self.seq0.wrapping_add(self.varint()?);
        let sensor = self.varint()? as i64;
        let t = self.t0.wrapping_add(unzigzag(self.varint()?));
        let value = match self.byte()? {
            INT => RawValue::Int(unzigzag(self.varint()?)),
            F64 => {
                let b = self.bytes(8)?;
                RawValue::F64(f64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            NAN => RawValue::Nan,
            TEXT => {
                let len = self.varint()?;
                let b = self.bytes(len)?;
                RawValue::Text(std::str::from_utf8(b).map_err(|_| DecodeError("bad UTF-8"))?)
            }
            JSON => {
                let len = self.varint()?;
                RawValue::Json(self.bytes(len)?)
            }
            _ => return Err(DecodeError("unknown value type")),
        };
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

    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            }
            _ => a == b,
        }
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
                prop_assert!(same(&g.value.to_value(), v), "{:?} {:?}", g.value, v);
            }
        }

        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(d) = Decoder::new(&data) {
                for r in d.flatten() {
                    let _ = r.value.to_value();
                }
            }
        }
    }

    #[test]
    fn integral_numbers_are_small() {
        let mut e = Encoder::new();
        e.push(1, 1, 1_700_000_000_000, &Value::Number(42.0));
        e.push(2, 1, 1_700_000_010_000, &Value::Number(27.5));
        let (_, _, _, data) = e.finish().unwrap();
        // header 1+1+6, records 1+1+1+1+1 and 1+1+3+1+8
        assert_eq!(data.len(), 8 + 5 + 14);
    }
}
