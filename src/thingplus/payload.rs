//! Value and status payloads.

use std::borrow::Borrow;
use std::fmt::{self, Write as _};

use crate::fasthash::FxHashMap;
use crate::reading::{json_string_len, number_json, write_json_string, NumberBuffer};
use crate::reading::{Reading, Value};

/// A gateway or sensor status as Thing+ understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    On,
    Off,
    /// `err`, optionally with a detail (commas are replaced: the payload is comma-separated).
    Err(Option<String>),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::On => f.write_str("on"),
            Status::Off => f.write_str("off"),
            Status::Err(None) => f.write_str("err"),
            Status::Err(Some(detail)) => {
                f.write_str("err:")?;
                for c in detail.chars() {
                    // Commas split fields and new lines break nothing but logs: keep both out.
                    f.write_char(if c == ',' || c.is_control() { ' ' } else { c })?;
                }
                Ok(())
            }
        }
    }
}

/// `{gwStatus},{valid}` followed by `,{sensorId},{status},{valid}` per sensor.
/// `valid_s` is the valid duration in seconds (`-1`: unlimited).
pub fn encode_status<'a>(
    gateway: &Status,
    valid_s: i64,
    sensors: impl IntoIterator<Item = (&'a str, &'a Status)>,
) -> String {
    let mut out = format!("{gateway},{valid_s}");
    for (id, status) in sensors {
        let _ = write!(out, ",{id},{status},{valid_s}");
    }
    out
}

/// A status payload read back: the gateway's status and valid duration, then
/// `(sensor id, status, valid duration)` per sensor.
pub type ParsedStatus = (Status, i64, Vec<(String, Status, i64)>);

/// Parses a `v/a/g/{gw}/status` payload (the inverse of [`encode_status`],
/// for sensor ids made of the protocol's id characters). Used by the tests,
/// the demo cloud and the round-trip fuzz target.
pub fn parse_status(text: &str) -> Result<ParsedStatus, String> {
    fn status(s: &str) -> Result<Status, String> {
        match s {
            "on" => Ok(Status::On),
            "off" => Ok(Status::Off),
            "err" => Ok(Status::Err(None)),
            _ => match s.strip_prefix("err:") {
                Some(detail) => Ok(Status::Err(Some(detail.to_string()))),
                None => Err(format!("unknown status {s:?}")),
            },
        }
    }
    fn valid(s: &str) -> Result<i64, String> {
        s.parse::<i64>()
            .map_err(|_| format!("bad valid duration {s:?}"))
    }
    let fields: Vec<&str> = text.split(',').collect();
    if fields.len() < 2 || !(fields.len() - 2).is_multiple_of(3) {
        return Err(format!(
            "{} fields: expected status,valid then id,status,valid per sensor",
            fields.len()
        ));
    }
    let gateway = status(fields[0])?;
    let valid_s = valid(fields[1])?;
    let sensors = fields[2..]
        .chunks(3)
        .map(|c| Ok((c[0].to_string(), status(c[1])?, valid(c[2])?)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok((gateway, valid_s, sensors))
}

/// Encodes readings as one `v/a/g/{gw}` object: `{"sensorId":[t,v,t,v,...],...}`.
/// Sensors appear in order of first reading; each sensor's pairs keep input order.
pub fn encode_values<R: Borrow<Reading>>(readings: &[R]) -> String {
    pack_values(readings, usize::MAX).0
}

/// Encodes the longest prefix of `readings` whose message stays within
/// `max_bytes`. Returns the message and how many readings it holds. A first
/// reading that alone exceeds the limit is returned alone (consumed = 1) so the
/// caller can decide to drop it; callers check the length.
pub fn pack_values<R: Borrow<Reading>>(readings: &[R], max_bytes: usize) -> (String, usize) {
    let mut packer = Packer::new(max_bytes);
    let mut numbers = NumberBuffer::default();
    let mut text = String::new();
    for r in readings {
        let r = r.borrow();
        let v: &str = match &r.value {
            Value::Number(n) => number_json(*n, &mut numbers),
            other => {
                text.clear();
                other.write_json(&mut text);
                &text
            }
        };
        if !packer.push(&r.sensor_id, r.time_ms, v.as_bytes()) {
            break;
        }
    }
    let n = packer.len();
    let msg = String::from_utf8(packer.finish()).expect("JSON built from str is UTF-8");
    (msg, n)
}

/// Builds one `v/a/g/{gw}` message reading by reading, within a size bound:
/// `{"sensorId":[t,v,t,v,...],...}`, sensors in order of first reading.
/// [`pack_values`] is this over readings; the disk buffer feeds it values
/// it keeps already encoded.
///
/// Each reading's `t,v` text goes once into one buffer, in arrival order;
/// [`Packer::finish`] then writes each sensor's pairs together (a counting
/// sort of their places; with up to 8 sensors, one pass over the pairs per
/// sensor, which needs no table). No string per sensor, and sensors are found with
/// a fast hash: a message from a backlog of 1,000 sensors holds 1,000 of them.
/// Bounds up to this get their room allocated up front.
const PRESIZE_BYTES: usize = 1 << 20;

pub struct Packer<'a> {
    max_bytes: usize,
    index: FxHashMap<&'a str, usize>,
    /// (sensor id, texts it has in `taken`, its length as JSON)
    entries: Vec<(&'a str, usize, usize)>,
    /// Every reading's `t,v`, one after the other. Bytes: values kept
    /// encoded on disk are copied without a UTF-8 check each.
    pairs: Vec<u8>,
    /// Per text taken (one reading's `t,v`, or a run of one sensor's
    /// readings, `t,v,t,v`): (its entry, the end of its text in `pairs`).
    taken: Vec<(usize, usize)>,
    readings: usize,
    total: usize,
    times: TimeText,
}

/// Formats times in ms, rewriting only the last six digits when the rest
/// is as in the previous one (readings of a batch are close in time).
struct TimeText {
    buf: [u8; 24],
    len: usize,
    /// `(t / 1_000_000) * 1_000_000` of the text in `buf`, when
    /// `t >= 1_000_000` (the text then has at least 7 digits).
    base: Option<i64>,
}

impl TimeText {
    fn new() -> Self {
        TimeText {
            buf: [0; 24],
            len: 0,
            base: None,
        }
    }

    #[inline]
    fn format(&mut self, t: i64) -> &[u8] {
        const DIGITS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        if let Some(base) = self.base {
            if let Some(low @ 0..=999_999) = t.checked_sub(base) {
                let low = low as usize;
                let (a, b, c) = (low / 10_000, low / 100 % 100, low % 100);
                let six: &mut [u8; 6] = (&mut self.buf[self.len - 6..self.len])
                    .try_into()
                    .expect("six digits");
                *six = [
                    DIGITS[2 * a],
                    DIGITS[2 * a + 1],
                    DIGITS[2 * b],
                    DIGITS[2 * b + 1],
                    DIGITS[2 * c],
                    DIGITS[2 * c + 1],
                ];
                return &self.buf[..self.len];
            }
        }
        self.format_all(t)
    }

    #[cold]
    fn format_all(&mut self, t: i64) -> &[u8] {
        let mut f = itoa::Buffer::new();
        let text = f.format(t).as_bytes();
        self.buf[..text.len()].copy_from_slice(text);
        self.len = text.len();
        self.base = (t >= 1_000_000).then_some(t / 1_000_000 * 1_000_000);
        &self.buf[..self.len]
    }
}

impl<'a> Packer<'a> {
    pub fn new(max_bytes: usize) -> Self {
        let presize = if max_bytes <= PRESIZE_BYTES {
            max_bytes
        } else {
            0
        };
        Packer {
            max_bytes,
            index: FxHashMap::default(),
            entries: Vec::new(),
            // Sized for a full message of a drain (no regrowth while it
            // fills); not for callers without a real bound (one reading).
            pairs: Vec::with_capacity(presize),
            taken: Vec::with_capacity(presize / 16),
            readings: 0,
            total: 2, // {}
            times: TimeText::new(),
        }
    }

    /// Up to this many sensors, entries are found by scanning them.
    const SCAN: usize = 8;

    /// The entry of `id`. A backlog from the disk buffer names each sensor
    /// with one allocation, so with a few sensors a scan comparing pointers
    /// finds it without hashing or comparing the text, which costs more
    /// than the packing around it; many sensors use the map.
    #[inline]
    fn find(&self, id: &str) -> Option<usize> {
        if self.entries.len() > Self::SCAN {
            return self.index.get(id).copied();
        }
        let same = |(e, _, _): &(&str, usize, usize)| {
            std::ptr::eq(e.as_ptr(), id.as_ptr()) && e.len() == id.len()
        };
        self.entries
            .iter()
            .position(same)
            .or_else(|| self.entries.iter().position(|(e, _, _)| *e == id))
    }

    /// Adds a reading whose value is already JSON text (`&str` or bytes,
    /// copied as they are). Returns false, adding nothing, when the message
    /// would outgrow the bound; the first reading is always taken, so a
    /// message is never empty (and may be oversized: a caller checks
    /// [`Packer::bytes`]).
    #[inline]
    pub fn push(&mut self, id: &'a str, time_ms: i64, value_json: impl AsRef<[u8]>) -> bool {
        let value_json = value_json.as_ref();
        let entry = self.find(id);
        let t = self.times.format(time_ms);
        // "t,v"
        let added = Self::text_cost(
            entry,
            self.entries.is_empty(),
            id,
            t.len() + 1 + value_json.len(),
        );
        if self.total + added > self.max_bytes && !self.taken.is_empty() {
            return false;
        }
        self.total += added;
        let e = match entry {
            Some(e) => e,
            None => Self::add_entry(&mut self.entries, &mut self.index, id),
        };
        self.entries[e].1 += 1;
        self.pairs.extend_from_slice(t);
        self.pairs.push(b',');
        self.pairs.extend_from_slice(value_json);
        self.taken.push((e, self.pairs.len()));
        self.readings += 1;
        true
    }

    /// What a text of `len` bytes adds to the message: after a comma in
    /// the sensor's array when it has an entry, else `"id":[text]` and a
    /// comma before it unless it is the first sensor.
    #[inline]
    fn text_cost(entry: Option<usize>, first: bool, id: &str, len: usize) -> usize {
        match entry {
            Some(_) => len + 1,
            None => json_string_len(id) + 3 + len + usize::from(!first),
        }
    }

    /// What [`Packer::push_run`] of `text` adds.
    #[inline]
    pub fn run_cost(&self, id: &str, text: &[u8]) -> usize {
        Self::text_cost(self.find(id), self.entries.is_empty(), id, text.len())
    }

    /// Room left under the bound.
    pub fn room(&self) -> usize {
        self.max_bytes.saturating_sub(self.total)
    }

    /// Adds a sensor's entry (fields apart: a time text may be borrowed).
    #[inline]
    fn add_entry(
        entries: &mut Vec<(&'a str, usize, usize)>,
        index: &mut FxHashMap<&'a str, usize>,
        id: &'a str,
    ) -> usize {
        entries.push((id, 0, json_string_len(id)));
        if entries.len() > Self::SCAN {
            if index.is_empty() {
                index.extend(entries.iter().enumerate().map(|(i, e)| (e.0, i)));
            } else {
                index.insert(id, entries.len() - 1);
            }
        }
        entries.len() - 1
    }

    /// Adds readings of one sensor at once, given as the text of their
    /// pairs (`t,v,t,v`, as a values message holds them), unchecked. The
    /// caller makes sure it fits ([`Packer::run_cost`], [`Packer::room`])
    /// and counts the readings ([`Packer::add_readings`]).
    #[inline]
    pub fn push_run(&mut self, id: &'a str, text: &[u8]) {
        let entry = self.find(id);
        self.total += Self::text_cost(entry, self.entries.is_empty(), id, text.len());
        let e = match entry {
            Some(e) => e,
            None => Self::add_entry(&mut self.entries, &mut self.index, id),
        };
        self.entries[e].1 += 1;
        self.pairs.extend_from_slice(text);
        self.taken.push((e, self.pairs.len()));
    }

    /// Counts readings added as runs (see [`Packer::push_run`]).
    pub fn add_readings(&mut self, n: usize) {
        self.readings += n;
    }

    /// Readings in the message.
    pub fn len(&self) -> usize {
        self.readings
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }

    /// Size of the message so far.
    pub fn bytes(&self) -> usize {
        self.total
    }

    /// The message (UTF-8 when every value pushed was).
    pub fn finish(self) -> Vec<u8> {
        self.message()
    }

    /// Starts a new message, keeping the buffers (a drain builds many).
    pub fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
        self.pairs.clear();
        self.taken.clear();
        self.readings = 0;
        self.total = 2;
    }

    /// The message so far (see [`Packer::finish`]).
    pub fn message(&self) -> Vec<u8> {
        if self.entries.len() <= Self::SCAN {
            return self.finish_few();
        }
        // Where each sensor's pairs start among all the pairs, in entry order.
        let mut next: Vec<usize> = Vec::with_capacity(self.entries.len());
        let mut at = 0;
        for &(_, n, _) in &self.entries {
            next.push(at);
            at += n;
        }
        let mut spans = vec![(0, 0); self.taken.len()];
        let mut start = 0;
        for &(e, end) in &self.taken {
            spans[next[e]] = (start, end);
            next[e] += 1;
            start = end;
        }
        let mut out = Vec::with_capacity(self.total);
        out.push(b'{');
        let mut spans = spans.iter();
        let mut escaped = String::new();
        for (i, &(id, n, id_len)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_key(&mut out, id, id_len, &mut escaped);
            out.extend_from_slice(b":[");
            for (k, &(s, e)) in spans.by_ref().take(n).enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.pairs[s..e]);
            }
            out.push(b']');
        }
        out.push(b'}');
        debug_assert_eq!(out.len(), self.total);
        out
    }

    /// [`Packer::finish`] for a few sensors: one pass over the pairs per
    /// sensor, with no table of places to fill first.
    fn finish_few(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.total);
        out.push(b'{');
        let mut escaped = String::new();
        for (i, &(id, _, id_len)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_key(&mut out, id, id_len, &mut escaped);
            out.extend_from_slice(b":[");
            let mut start = 0;
            let mut first = true;
            for &(e, end) in &self.taken {
                if e == i {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(&self.pairs[start..end]);
                }
                start = end;
            }
            out.push(b']');
        }
        out.push(b'}');
        debug_assert_eq!(out.len(), self.total);
        out
    }
}

/// A sensor id as a JSON key: written straight when nothing needs escaping
/// (`id_len`, its quoted length, is then `id.len() + 2`: every valid id).
#[inline]
fn push_key(out: &mut Vec<u8>, id: &str, id_len: usize, escaped: &mut String) {
    if id_len == id.len() + 2 {
        out.push(b'"');
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
    } else {
        escaped.clear();
        write_json_string(id, escaped);
        out.extend_from_slice(escaped.as_bytes());
    }
}

/// Error from [`parse_values`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a JSON object of sensor ids")]
    NotAnObject,
    #[error("sensor {0}: expected an array [time, value, time, value, ...]")]
    BadArray(String),
}

/// Parses a `v/a/g/{gw}` values message back into readings (used by the demo
/// cloud, tests and the round-trip fuzz target).
pub fn parse_values(bytes: &[u8]) -> Result<Vec<Reading>, ParseError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    let serde_json::Value::Object(map) = v else {
        return Err(ParseError::NotAnObject);
    };
    let mut out = Vec::new();
    for (id, arr) in map {
        let serde_json::Value::Array(items) = arr else {
            return Err(ParseError::BadArray(id));
        };
        if items.len() % 2 != 0 {
            return Err(ParseError::BadArray(id));
        }
        let sid: std::sync::Arc<str> = id.as_str().into();
        let mut it = items.into_iter();
        while let (Some(t), Some(v)) = (it.next(), it.next()) {
            let Some(t) = t.as_i64() else {
                return Err(ParseError::BadArray(id));
            };
            out.push(Reading {
                sensor_id: sid.clone(),
                time_ms: t,
                value: Value::from_json(v),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn r(id: &str, t: i64, v: f64) -> Reading {
        Reading::new(id, t, Value::Number(v))
    }

    #[test]
    fn status_matches_protocol_example() {
        let s = encode_status(
            &Status::On,
            120,
            [
                ("b827eb1dcccc-temperature-0", &Status::On),
                ("b827eb1dcccc-onoff-0", &Status::Err(None)),
            ],
        );
        assert_eq!(
            s,
            "on,120,b827eb1dcccc-temperature-0,on,120,b827eb1dcccc-onoff-0,err,120"
        );
    }

    #[test]
    fn status_parses_back() {
        let text = "on,120,a-temperature-0,on,120,a-onoff-0,err:no file  x,120,b,off,120,c,err,120";
        let (gw, valid, sensors) = parse_status(text).unwrap();
        assert_eq!((gw, valid), (Status::On, 120));
        assert_eq!(sensors.len(), 4);
        assert_eq!(sensors[1].1, Status::Err(Some("no file  x".into())));
        assert_eq!(sensors[3].1, Status::Err(None));
        let again = encode_status(
            &Status::On,
            120,
            sensors.iter().map(|(id, s, _)| (id.as_str(), s)),
        );
        assert_eq!(again, text);
        for bad in ["", "on", "on,x", "maybe,1", "on,1,a,on", "on,1,a,on,x"] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_detail_has_no_commas() {
        let s = Status::Err(Some("read /sys/x: No such file, or dir".into()));
        assert_eq!(s.to_string(), "err:read /sys/x: No such file  or dir");
    }

    #[test]
    fn values_match_protocol_example() {
        let rs = [
            r("b827eb1dcccc-temperature-0", 1461563978000, 27.5),
            r("b827eb1dcccc-temperature-0", 1461563988000, 28.5),
        ];
        assert_eq!(
            encode_values(&rs),
            r#"{"b827eb1dcccc-temperature-0":[1461563978000,27.5,1461563988000,28.5]}"#
        );
    }

    #[test]
    fn values_group_by_sensor_keeping_order() {
        let rs = [r("a", 1, 1.0), r("b", 2, 2.0), r("a", 3, 3.0)];
        assert_eq!(encode_values(&rs), r#"{"a":[1,1,3,3],"b":[2,2]}"#);
        let back = parse_values(encode_values(&rs).as_bytes()).unwrap();
        let a: Vec<i64> = back
            .iter()
            .filter(|x| &*x.sensor_id == "a")
            .map(|x| x.time_ms)
            .collect();
        assert_eq!(a, vec![1, 3]);
    }

    /// Entries found by pointer, by text (the same id in another
    /// allocation) and, past a few sensors, through the map.
    #[test]
    fn many_sensors_and_copied_ids_group_the_same() {
        for sensors in [3, 8, 9, 40] {
            // Each reading's id is its own allocation: no pointer matches.
            let rs: Vec<Reading> = (0..sensors * 5)
                .map(|i| r(&format!("s{}", i % sensors), i as i64, i as f64))
                .collect();
            let msg = encode_values(&rs);
            let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), sensors, "{msg}");
            for k in 0..sensors {
                let want: Vec<f64> = (0..5)
                    .flat_map(|j| {
                        let i = (j * sensors + k) as f64;
                        [i, i]
                    })
                    .collect();
                let got: Vec<f64> = obj[&format!("s{k}")]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                assert_eq!(got, want, "{msg}");
            }
            // Shared allocations (as the disk buffer gives them) pack alike.
            let ids: Vec<Arc<str>> = (0..sensors).map(|k| Arc::from(format!("s{k}"))).collect();
            let shared: Vec<Reading> = rs
                .iter()
                .enumerate()
                .map(|(i, x)| Reading::new(ids[i % sensors].clone(), x.time_ms, x.value.clone()))
                .collect();
            assert_eq!(encode_values(&shared), msg);
        }
    }

    #[test]
    fn pack_respects_the_limit_and_reports_exact_length() {
        let rs: Vec<Reading> = (0..1000)
            .map(|i| {
                r(
                    &format!("s{}", i % 7),
                    1_700_000_000_000 + i,
                    i as f64 * 0.5,
                )
            })
            .collect();
        let mut start = 0;
        let mut seen = 0;
        while start < rs.len() {
            let (msg, n) = pack_values(&rs[start..], 500);
            assert!(n > 0);
            assert!(msg.len() <= 500, "{} > 500", msg.len());
            let back = parse_values(msg.as_bytes()).unwrap();
            assert_eq!(back.len(), n);
            seen += n;
            start += n;
        }
        assert_eq!(seen, rs.len());
    }

    #[test]
    fn times_are_formatted_like_itoa() {
        let mut tt = TimeText::new();
        let mut x: u64 = 1;
        let mut t: i64 = 1_699_999_000_000;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += match x % 5 {
                0 => 1,
                1 => 999,
                2 => 1_000_001,
                3 => -((x >> 40) as i64 % 2_000_000),
                _ => (x >> 50) as i64,
            };
            let t = if x.is_multiple_of(97) {
                -(t % 10_000_000)
            } else {
                t
            };
            assert_eq!(
                tt.format(t),
                itoa::Buffer::new().format(t).as_bytes(),
                "{t}"
            );
        }
        for t in [
            0,
            999_999,
            1_000_000,
            1_000_001,
            9_999_999,
            10_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(
                tt.format(t),
                itoa::Buffer::new().format(t).as_bytes(),
                "{t}"
            );
        }
    }

    #[test]
    fn many_sensors_group_correctly() {
        // More sensors than the linear scan covers; ids not sharing allocations.
        let rs: Vec<Reading> = (0..400)
            .map(|i| r(&format!("s{}", i % 40), i, i as f64))
            .collect();
        let msg = encode_values(&rs);
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 40);
        for k in 0..40 {
            let want: Vec<i64> = (0..10).flat_map(|j| [k + 40 * j, k + 40 * j]).collect();
            let got: Vec<i64> = v[format!("s{k}")]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            assert_eq!(got, want);
        }
        let back = parse_values(msg.as_bytes()).unwrap();
        assert_eq!(back.len(), 400);
    }

    /// The plain way to encode (per-sensor strings and SipHash), the
    /// reference the packer must equal byte for byte.
    fn pack_values_reference(readings: &[Reading], max_bytes: usize) -> (String, usize) {
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        let mut entries: Vec<(&str, String)> = Vec::new();
        let mut total = 2;
        let mut consumed = 0;
        let mut pair = String::new();
        for r in readings {
            pair.clear();
            let _ = write!(pair, "{},", r.time_ms);
            r.value.write_json(&mut pair);
            let id: &str = &r.sensor_id;
            let added = match index.get(id) {
                Some(_) => pair.len() + 1,
                None => json_string_len(id) + 3 + pair.len() + usize::from(!entries.is_empty()),
            };
            if total + added > max_bytes && consumed > 0 {
                break;
            }
            total += added;
            consumed += 1;
            match index.get(id) {
                Some(&i) => {
                    entries[i].1.push(',');
                    entries[i].1.push_str(&pair);
                }
                None => {
                    index.insert(id, entries.len());
                    entries.push((id, pair.clone()));
                }
            }
        }
        let mut out = String::from("{");
        for (i, (id, body)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_string(id, &mut out);
            out.push_str(":[");
            out.push_str(body);
            out.push(']');
        }
        out.push('}');
        (out, consumed)
    }

    #[test]
    fn fast_encoder_equals_the_reference() {
        let ids = [
            "a",
            "b827eb1dcccc-temperature-0",
            "q\"uote",
            "é",
            "t\tab",
            "z",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..300 {
            let len = rand(60) as usize;
            let rs: Vec<Reading> = (0..len)
                .map(|i| {
                    let value = match rand(5) {
                        0 => Value::Number(rand(100_000) as f64 / 7.0),
                        1 => Value::Number(rand(1000) as f64 - 500.0),
                        2 => Value::Text(format!("v{}\n,", rand(50))),
                        3 => Value::Json(serde_json::json!({"lat": 37.5, "lng": rand(90)})),
                        _ => Value::Number(f64::from_bits(rand(u64::MAX))),
                    };
                    Reading::new(
                        ids[rand(ids.len() as u64) as usize],
                        1_700_000_000_000 + i as i64 * 1000 - rand(3) as i64,
                        value,
                    )
                })
                .collect();
            for max in [0, 20, 60, 200, 1000, usize::MAX] {
                let want = pack_values_reference(&rs, max);
                assert_eq!(pack_values(&rs, max), want, "round {round}, max {max}");
            }
        }
    }

    #[test]
    fn oversized_single_reading_is_returned_alone() {
        let big = Reading::new("s", 1, Value::Text("x".repeat(100)));
        let (msg, n) = pack_values(&[big.clone(), big], 50);
        assert_eq!(n, 1);
        assert!(msg.len() > 50);
    }

    #[test]
    fn mixed_value_kinds_round_trip() {
        let rs = vec![
            Reading::new(
                "loc",
                1,
                Value::Json(serde_json::json!({"lat":37.1,"lng":127.2})),
            ),
            Reading::new("txt", 2, Value::Text("hello, \"world\"".into())),
            Reading::new("n", 3, Value::Number(-0.25)),
        ];
        let back = parse_values(encode_values(&rs).as_bytes()).unwrap();
        let mut back = back;
        back.sort_by_key(|r| r.time_ms);
        assert_eq!(back, rs);
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        assert!(matches!(
            parse_values(b"[1,2]"),
            Err(ParseError::NotAnObject)
        ));
        assert!(matches!(
            parse_values(br#"{"a":[1]}"#),
            Err(ParseError::BadArray(_))
        ));
        assert!(matches!(
            parse_values(br#"{"a":["x",1]}"#),
            Err(ParseError::BadArray(_))
        ));
        assert!(matches!(parse_values(b"{"), Err(ParseError::Json(_))));
    }
}
