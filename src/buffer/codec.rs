//! The compact encoding of a batch of readings, as one BLOB of the `chunks`
//! table.
//!
//! Version 3 (the one written) is version 2 with a checksum:
//! ```text
//! chunk3 := 3:u8  crc:u32le  body2
//! ```
//! `crc` is the CRC32C (Castagnoli) of the version byte and of `body2`.
//! Parsing a version 3 chunk verifies it first, so a chunk damaged on disk
//! (a flipped bit on an SD card, a page of zeros after a truncation) is
//! refused before any of its text can go into a message. CRC32C detects
//! every burst of up to 32 bits and all but one in 2^32 of the rest; the
//! processors a gateway runs on compute it in hardware (SSE 4.2, ARMv8 CRC).
//!
//! Version 2 (read, not written: it has no checksum) keeps each sensor's
//! readings as the very text a values message carries, so that a drain
//! copies a chunk into a message sensor by sensor, without touching a
//! single reading:
//! ```text
//! chunk2 := 2:u8  body2
//! body2  := seq0:varint  n:varint  groups:varint  seqs_len:varint
//!           (sensor:varint  text_len:varint){groups}
//!           (seq - seq0:varint){n}           only when seqs_len > 0 (its bytes)
//!           (group:varint  pair_len:varint){n}             the index
//!           text{groups}                                    at the end
//! text   := "t,v" ("," "t,v")*   one sensor's readings in seq order, as in
//!                                `{"sensor":[t,v,t,v]}` (time in ms, value JSON)
//! ```
//! The index gives each reading's sensor and the length of its `t,v` text,
//! and the seqs are `seq0, seq0 + 1, ...` unless listed (a chunk rewritten
//! after a partial acknowledgement may have gaps), so a chunk can still be
//! read (and filtered) reading by reading. The texts are found from the end
//! of the chunk, so copying them needs no walk of the index.
//!
//! Version 1 (read, not written) is a list of records:
//! ```text
//! chunk1 := 1:u8  seq0:varint  t0:zigzag  record*
//! record := (seq - seq0):varint  sensor:varint  (t - t0):zigzag  len:varint  value
//! ```
//! In both, `value` is the reading's value as the JSON text Thing+ receives
//! ([`Value::write_json`]). Decoding never panics on bad bytes.

use crate::fasthash::FxHashMap;
use crate::reading::Value;

/// The version written.
pub const VERSION: u8 = 3;
const VERSION_2: u8 = 2;
const VERSION_1: u8 = 1;
/// Bytes of the checksum after a version 3 chunk's version byte.
const CRC_LEN: usize = 4;

/// The checksum of a version 3 chunk: its version byte and everything after
/// the checksum field.
fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&data[..1]), &data[1 + CRC_LEN..])
}

/// A chunk's format version (its first byte), if it has one.
pub fn version(data: &[u8]) -> Option<u8> {
    data.first().copied()
}

/// Whether the chunk carries a checksum (every chunk written since version 3).
pub fn is_checked(data: &[u8]) -> bool {
    version(data) == Some(VERSION)
}

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

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// One sensor's readings in the chunk being built.
struct Group {
    sensor: i64,
    text: Vec<u8>,
}

/// Builds one chunk.
#[derive(Default)]
pub struct Encoder {
    /// The first reading's seq.
    seq0: u64,
    last: u64,
    n: u64,
    groups: Vec<Group>,
    /// Group of a sensor, once there are too many groups to scan.
    places: FxHashMap<i64, usize>,
    /// Per reading: its group and the length of its text.
    index: Vec<u8>,
    /// Per reading: seq - seq0 (written only when not all consecutive).
    seqs: Vec<u8>,
    consecutive: bool,
    /// The group table's size, at most.
    table_bytes: usize,
    text_bytes: usize,
    scratch: String,
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
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

    /// Up to this many sensors in a chunk, groups are found by scanning them.
    const SCAN: usize = 8;

    fn group(&mut self, sensor: i64) -> usize {
        if self.groups.len() <= Self::SCAN {
            if let Some(g) = self.groups.iter().position(|g| g.sensor == sensor) {
                return g;
            }
        } else if let Some(&g) = self.places.get(&sensor) {
            return g;
        }
        self.groups.push(Group {
            sensor,
            text: Vec::new(),
        });
        // The sensor, and its text length (under 2 MiB: 3 bytes).
        self.table_bytes += varint_len(sensor as u64) + 3;
        let g = self.groups.len() - 1;
        if self.groups.len() > Self::SCAN {
            if self.places.is_empty() {
                self.places
                    .extend(self.groups.iter().enumerate().map(|(i, g)| (g.sensor, i)));
            } else {
                self.places.insert(sensor, g);
            }
        }
        g
    }

    /// Adds a reading whose value is already JSON text. Seqs must grow.
    pub fn push_json(&mut self, seq: u64, sensor: i64, t: i64, value: &[u8]) {
        if self.n == 0 {
            self.seq0 = seq;
            self.consecutive = true;
        }
        let delta = seq.wrapping_sub(self.seq0);
        self.consecutive &= delta == self.n;
        put_varint(&mut self.seqs, delta);
        let g = self.group(sensor);
        let mut time = itoa::Buffer::new();
        let time = time.format(t).as_bytes();
        let text = &mut self.groups[g].text;
        if !text.is_empty() {
            text.push(b',');
            self.text_bytes += 1;
        }
        text.extend_from_slice(time);
        text.push(b',');
        text.extend_from_slice(value);
        let pair_len = time.len() + 1 + value.len();
        self.text_bytes += pair_len;
        put_varint(&mut self.index, g as u64);
        put_varint(&mut self.index, pair_len as u64);
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

    /// Encoded bytes so far (at most a few bytes over).
    pub fn bytes(&self) -> usize {
        let seqs = if self.consecutive { 0 } else { self.seqs.len() };
        let head = 1 + CRC_LEN + varint_len(self.seq0) + 3 + 3 + varint_len(seqs as u64);
        head + self.table_bytes + seqs + self.index.len() + self.text_bytes
    }

    /// The chunk: (first seq, last seq, readings, data); the encoder is reset.
    pub fn finish(&mut self) -> Option<(u64, u64, u64, Vec<u8>)> {
        if self.n == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(self.bytes());
        out.push(VERSION);
        out.extend_from_slice(&[0; CRC_LEN]);
        put_varint(&mut out, self.seq0);
        put_varint(&mut out, self.n);
        put_varint(&mut out, self.groups.len() as u64);
        let seqs: &[u8] = if self.consecutive { &[] } else { &self.seqs };
        put_varint(&mut out, seqs.len() as u64);
        for g in &self.groups {
            put_varint(&mut out, g.sensor as u64);
            put_varint(&mut out, g.text.len() as u64);
        }
        out.extend_from_slice(seqs);
        out.extend_from_slice(&self.index);
        for g in &self.groups {
            out.extend_from_slice(&g.text);
        }
        let crc = checksum(&out);
        out[1..1 + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        let done = (self.seq0, self.last, self.n, out);
        self.n = 0;
        self.groups.clear();
        self.places.clear();
        self.index.clear();
        self.seqs.clear();
        self.table_bytes = 0;
        self.text_bytes = 0;
        Some(done)
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

/// Reads varints and bytes off a chunk; every read is bounds-checked.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
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

    fn usize(&mut self) -> Result<usize, DecodeError> {
        usize::try_from(self.varint()?).map_err(|_| DecodeError("length"))
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
}

/// The head of a version 2 or 3 chunk: its sensors' texts, found without
/// reading the index.
pub struct Chunk<'a> {
    pub seq0: u64,
    /// Readings in the chunk.
    pub n: u64,
    /// Per sensor, in the order of its first reading: (sensor, `t,v,...` text).
    pub groups: Vec<(i64, &'a [u8])>,
    /// Where the list of seqs starts, when there is one.
    seqs: Option<usize>,
    /// Where the index starts, and where the texts start (the index ends).
    index: usize,
    texts: usize,
}

impl<'a> Chunk<'a> {
    /// Whether its readings can end at `last`: exactly there when the seqs
    /// are consecutive, at or after the `n`th seq otherwise.
    pub fn fits(&self, last: u64) -> bool {
        let Some(end) = self.seq0.checked_add(self.n - 1) else {
            return false;
        };
        match self.seqs {
            None => end == last,
            Some(_) => end <= last,
        }
    }

    /// `Ok(None)` for a chunk of version 1 (read it record by record). A
    /// version 3 chunk whose checksum does not match is an error.
    pub fn parse(data: &'a [u8]) -> Result<Option<Chunk<'a>>, DecodeError> {
        let mut r = Reader { data, pos: 0 };
        match r.byte()? {
            VERSION => {
                let stored = r.bytes(CRC_LEN as u64)?;
                if u32::from_le_bytes(stored.try_into().expect("4 bytes")) != checksum(data) {
                    return Err(DecodeError("checksum mismatch"));
                }
            }
            VERSION_2 => {}
            VERSION_1 => return Ok(None),
            _ => return Err(DecodeError("unknown version")),
        }
        let seq0 = r.varint()?;
        let n = r.varint()?;
        let count = r.usize()?;
        let seqs_len = r.usize()?;
        if count == 0 || n == 0 || count as u64 > n || count > data.len() || seqs_len > data.len() {
            return Err(DecodeError("bad header"));
        }
        // Lengths first (the texts' place is known once all are read): each
        // group holds a placeholder slice of its text's length meanwhile.
        let mut groups: Vec<(i64, &[u8])> = Vec::with_capacity(count);
        let mut total: usize = 0;
        for _ in 0..count {
            let sensor = r.varint()? as i64;
            let len = r.usize()?;
            if len == 0 {
                return Err(DecodeError("empty sensor text"));
            }
            total = total
                .checked_add(len)
                .filter(|t| *t <= data.len())
                .ok_or(DecodeError("texts longer than the chunk"))?;
            groups.push((sensor, &data[..len]));
        }
        let seqs = r.pos;
        let index = seqs
            .checked_add(seqs_len)
            .ok_or(DecodeError("bad header"))?;
        let texts = data
            .len()
            .checked_sub(total)
            .filter(|at| *at >= index)
            .ok_or(DecodeError("texts overlap the index"))?;
        let mut at = texts;
        for g in &mut groups {
            let len = g.1.len();
            g.1 = &data[at..at + len];
            at += len;
        }
        Ok(Some(Chunk {
            seq0,
            n,
            groups,
            seqs: (seqs_len > 0).then_some(seqs),
            index,
            texts,
        }))
    }
}

/// Iterates the records of a chunk; stops at the first damaged byte.
pub struct Decoder<'a> {
    r: Reader<'a>,
    seq0: u64,
    t0: i64,
    failed: bool,
    /// Version 2: per sensor, (sensor, its text, where its next reading starts).
    groups: Vec<(i64, &'a [u8], usize)>,
    /// Version 2: readings not yet returned, and where the texts start.
    left: u64,
    texts: usize,
    /// Version 2: the list of seqs, read beside the index (none: consecutive).
    seqs: Option<Reader<'a>>,
    /// Version 2: readings returned so far, and the last one's seq - seq0.
    done: u64,
    last_delta: u64,
    v2: bool,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Result<Decoder<'a>, DecodeError> {
        let mut d = Decoder {
            r: Reader { data, pos: 0 },
            seq0: 0,
            t0: 0,
            failed: false,
            groups: Vec::new(),
            left: 0,
            texts: data.len(),
            seqs: None,
            done: 0,
            last_delta: 0,
            v2: false,
        };
        match d.r.byte()? {
            VERSION_1 => {
                d.seq0 = d.r.varint()?;
                d.t0 = unzigzag(d.r.varint()?);
            }
            VERSION | VERSION_2 => {
                let c = Chunk::parse(data)?.expect("version 2 or 3");
                d.v2 = true;
                d.seq0 = c.seq0;
                d.left = c.n;
                d.r.pos = c.index;
                d.seqs = c.seqs.map(|pos| Reader {
                    data: &data[..c.index],
                    pos,
                });
                d.texts = c.texts;
                d.groups = c.groups.into_iter().map(|(s, t)| (s, t, 0)).collect();
            }
            _ => return Err(DecodeError("unknown version")),
        }
        Ok(d)
    }

    #[inline]
    fn record_v1(&mut self) -> Result<Record<'a>, DecodeError> {
        let seq = self.seq0.wrapping_add(self.r.varint()?);
        let sensor = self.r.varint()? as i64;
        let t = self.t0.wrapping_add(unzigzag(self.r.varint()?));
        let len = self.r.varint()?;
        let value = self.r.bytes(len)?;
        Ok(Record {
            seq,
            sensor,
            t,
            value,
        })
    }

    fn record_v2(&mut self) -> Result<Record<'a>, DecodeError> {
        let delta = match &mut self.seqs {
            Some(seqs) => seqs.varint()?,
            None => self.done,
        };
        // Seqs only grow within a chunk.
        if self.done > 0 && delta <= self.last_delta {
            return Err(DecodeError("seqs out of order"));
        }
        self.last_delta = delta;
        self.done += 1;
        let seq = self.seq0.wrapping_add(delta);
        let g = self.r.usize()?;
        let len = self.r.usize()?;
        if self.r.pos > self.texts {
            return Err(DecodeError("index runs into the texts"));
        }
        let (sensor, text, at) = self
            .groups
            .get_mut(g)
            .ok_or(DecodeError("unknown sensor group"))?;
        let pair = at
            .checked_add(len)
            .and_then(|end| text.get(*at..end))
            .ok_or(DecodeError("reading outside its sensor's text"))?;
        // A reading's text ends where the sensor's text does or at a comma.
        let end = *at + len;
        if end != text.len() && text.get(end) != Some(&b',') {
            return Err(DecodeError("reading lengths disagree with the text"));
        }
        *at = end + 1; // and the comma between readings
        let comma = pair
            .iter()
            .position(|b| *b == b',')
            .ok_or(DecodeError("reading without a time"))?;
        let t = std::str::from_utf8(&pair[..comma])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(DecodeError("bad time"))?;
        Ok(Record {
            seq,
            sensor: *sensor,
            t,
            value: &pair[comma + 1..],
        })
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = if self.v2 {
            if self.left == 0 {
                let seqs_left = self.seqs.as_ref().is_some_and(|s| s.pos != s.data.len());
                // Every sensor's text read to its end (past its last comma).
                let text_left = self.groups.iter().any(|(_, t, at)| *at != t.len() + 1);
                if self.r.pos != self.texts || seqs_left || text_left {
                    self.failed = true;
                    return Some(Err(DecodeError("index longer than its readings")));
                }
                return None;
            }
            self.left -= 1;
            self.record_v2()
        } else {
            if self.r.pos >= self.r.data.len() {
                return None;
            }
            self.record_v1()
        };
        self.failed = r.is_err();
        Some(r)
    }
}

/// The sensors a chunk names, without verifying its checksum: to say what a
/// damaged chunk held (as far as its head can still be read).
pub fn sensors_unchecked(data: &[u8]) -> Vec<i64> {
    let unchecked: Vec<u8>;
    let view = if version(data) == Some(VERSION) && data.len() > 1 + CRC_LEN {
        unchecked = [&[VERSION_2][..], &data[1 + CRC_LEN..]].concat();
        &unchecked[..]
    } else {
        data
    };
    let mut sensors: Vec<i64> = match Chunk::parse(view) {
        Ok(Some(c)) => c.groups.iter().map(|g| g.0).collect(),
        Ok(None) => Decoder::new(view)
            .map(|d| d.map_while(Result::ok).map(|r| r.sensor).collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    sensors.sort_unstable();
    sensors.dedup();
    sensors
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

        /// Damage in a real chunk of either version: an error or records, never a panic.
        #[test]
        fn damaged_chunks_never_panic(values in prop::collection::vec((0..4i64, value()), 1..20),
                                      flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                                      cut in any::<prop::sample::Index>(), v1 in any::<bool>()) {
            let mut e = Encoder::new();
            let texts: Vec<String> = values.iter().map(|(_, v)| v.to_json_string()).collect();
            for (i, ((sensor, _), text)) in values.iter().zip(&texts).enumerate() {
                e.push_json(i as u64, *sensor, 1000 + i as i64, text.as_bytes());
            }
            let mut data = if v1 {
                let records: Vec<_> = values.iter().zip(&texts).enumerate()
                    .map(|(i, ((s, _), t))| (i as u64, *s, 1000 + i as i64, t.as_bytes())).collect();
                encode_v1(&records)
            } else {
                e.finish().unwrap().3
            };
            for (at, b) in flips {
                let i = at.index(data.len());
                data[i] = b;
            }
            data.truncate(cut.index(data.len() + 1));
            if let Ok(d) = Decoder::new(&data) {
                for r in d.flatten() {
                    let _ = r.value();
                }
            }
            let _ = Chunk::parse(&data);
        }
    }

    #[test]
    fn records_are_small() {
        let mut e = Encoder::new();
        e.push(1, 1, 1_700_000_000_000, &Value::Number(42.0));
        e.push(2, 1, 1_700_000_010_000, &Value::Number(27.5));
        let (_, _, _, data) = e.finish().unwrap();
        // header 1+4+1+1+1+1 (version, checksum), group 1+1; no seqs
        // (consecutive); index 2+2; text "1700000000000,42,1700000010000,27.5"
        assert_eq!(data.len(), 11 + 4 + 35);
        assert!(data.ends_with(b"1700000000000,42,1700000010000,27.5"));
    }

    #[test]
    fn a_chunk_holds_each_sensors_readings_as_message_text() {
        let mut e = Encoder::new();
        e.push(10, 3, 1000, &Value::Number(1.5));
        e.push(11, 7, 1001, &Value::Text("a,b".into()));
        e.push(13, 3, 1002, &Value::Number(-2.0));
        let (first, last, n, data) = e.finish().unwrap();
        assert_eq!((first, last, n), (10, 13, 3));
        let c = Chunk::parse(&data).unwrap().unwrap();
        assert_eq!((c.seq0, c.n), (10, 3));
        assert_eq!(
            c.groups,
            vec![(3, &b"1000,1.5,1002,-2"[..]), (7, &b"1001,\"a,b\""[..])]
        );
        let got: Vec<_> = decode_all(&data)
            .unwrap()
            .iter()
            .map(|r| (r.seq, r.sensor, r.t, r.value.to_vec()))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, 3, 1000, b"1.5".to_vec()),
                (11, 7, 1001, b"\"a,b\"".to_vec()),
                (13, 3, 1002, b"-2".to_vec()),
            ]
        );
    }

    /// Version 1 as it was written before version 2, for files of that time.
    fn encode_v1(records: &[(u64, i64, i64, &[u8])]) -> Vec<u8> {
        fn zigzag(v: i64) -> u64 {
            ((v << 1) ^ (v >> 63)) as u64
        }
        let (seq0, _, t0, _) = records[0];
        let mut out = vec![1];
        put_varint(&mut out, seq0);
        put_varint(&mut out, zigzag(t0));
        for &(seq, sensor, t, v) in records {
            put_varint(&mut out, seq - seq0);
            put_varint(&mut out, sensor as u64);
            put_varint(&mut out, zigzag(t - t0));
            put_varint(&mut out, v.len() as u64);
            out.extend_from_slice(v);
        }
        out
    }

    /// A chunk as version 2 wrote it: version 3 without its checksum.
    fn as_v2(data: &[u8]) -> Vec<u8> {
        let mut v = vec![2];
        v.extend_from_slice(&data[1 + CRC_LEN..]);
        v
    }

    #[test]
    fn every_flipped_bit_of_a_chunk_is_refused() {
        let mut e = Encoder::new();
        e.push(7, 1, 1_700_000_000_000, &Value::Number(21.5));
        e.push(8, 2, 1_700_000_000_001, &Value::Text("ok".into()));
        e.push(9, 1, 1_700_000_000_002, &Value::Number(22.5));
        let (_, _, _, data) = e.finish().unwrap();
        assert!(is_checked(&data));
        assert_eq!(decode_all(&data).unwrap().len(), 3);
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data.clone();
                bad[i] ^= 1 << bit;
                // A flipped version byte makes it an older, unchecked
                // chunk: the store refuses those from `checked_from` on.
                let refused = Chunk::parse(&bad).is_err() && Decoder::new(&bad).is_err();
                assert!(
                    refused || (i == 0 && !is_checked(&bad)),
                    "byte {i} bit {bit} flipped went unnoticed"
                );
            }
        }
        // Zeros where the file was cut, and a shortened chunk.
        let mut zeroed = data.clone();
        let len = zeroed.len();
        zeroed[len - 8..].fill(0);
        assert_eq!(
            Chunk::parse(&zeroed).err(),
            Some(DecodeError("checksum mismatch"))
        );
        assert!(Chunk::parse(&data[..len - 1]).is_err());
    }

    #[test]
    fn version_2_chunks_without_a_checksum_are_still_read() {
        let mut e = Encoder::new();
        e.push(10, 3, 1000, &Value::Number(1.5));
        e.push(11, 7, 1001, &Value::Text("a,b".into()));
        let (_, _, _, data) = e.finish().unwrap();
        let old = as_v2(&data);
        assert!(!is_checked(&old));
        let c = Chunk::parse(&old).unwrap().unwrap();
        assert_eq!(
            c.groups,
            vec![(3, &b"1000,1.5"[..]), (7, &b"1001,\"a,b\""[..])]
        );
        let got: Vec<_> = decode_all(&old)
            .unwrap()
            .iter()
            .map(|r| (r.seq, r.sensor, r.t, r.value.to_vec()))
            .collect();
        let new: Vec<_> = decode_all(&data)
            .unwrap()
            .iter()
            .map(|r| (r.seq, r.sensor, r.t, r.value.to_vec()))
            .collect();
        assert_eq!(got, new);
    }

    #[test]
    fn version_1_chunks_are_still_read() {
        let data = encode_v1(&[(5, 1, 1000, b"42"), (6, 2, 999, b"\"x\"")]);
        assert!(
            Chunk::parse(&data).unwrap().is_none(),
            "no fast path for v1"
        );
        let got = decode_all(&data).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].seq, got[0].sensor, got[0].t, got[0].value),
            (5, 1, 1000, &b"42"[..])
        );
        assert_eq!(
            (got[1].seq, got[1].sensor, got[1].t, got[1].value),
            (6, 2, 999, &b"\"x\""[..])
        );
    }

    #[test]
    fn a_reading_length_that_disagrees_with_the_text_is_refused() {
        let mut e = Encoder::new();
        e.push(1, 1, 1_700_000_000_000, &Value::Number(21.5));
        e.push(2, 1, 1_700_000_000_001, &Value::Number(22.5));
        let (_, _, _, data) = e.finish().unwrap();
        let index = Chunk::parse(&data).unwrap().unwrap().index;
        // The first reading's length is 18 ("1700000000000,21.5").
        assert_eq!(data[index + 1], 18);
        for wrong in [16, 17, 19] {
            let mut bad = data.clone();
            bad[index + 1] = wrong;
            assert!(decode_all(&bad).is_err(), "length {wrong} misread");
        }
        // Seqs listed out of order.
        let mut e = Encoder::new();
        e.push(5, 1, 1000, &Value::Number(1.0));
        e.push(9, 1, 1001, &Value::Number(2.0));
        let (_, _, _, mut data) = e.finish().unwrap();
        let c = Chunk::parse(&data).unwrap().unwrap();
        let seqs = c.seqs.unwrap();
        assert_eq!(&data[seqs..seqs + 2], &[0, 4]);
        data[seqs + 1] = 0;
        assert!(decode_all(&data).is_err());
    }

    #[test]
    fn damaged_version_2_chunks_are_refused_not_misread() {
        let mut e = Encoder::new();
        e.push(1, 1, 1000, &Value::Number(1.0));
        e.push(2, 2, 1001, &Value::Number(2.0));
        let (_, _, _, data) = e.finish().unwrap();
        // Cut short: the texts no longer add up.
        assert!(decode_all(&data[..data.len() - 3]).is_err());
        // A group index that does not exist.
        let mut bad = data.clone();
        let index = Chunk::parse(&data).unwrap().unwrap().index;
        bad[index] = 9;
        assert!(decode_all(&bad).is_err());
        // A time that is not a number.
        let mut bad = data.clone();
        let at = bad.len() - "1001,2".len();
        bad[at] = b'x';
        assert!(decode_all(&bad).is_err());
    }
}
