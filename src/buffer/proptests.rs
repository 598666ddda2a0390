//! The SQLite store against the in-memory model: random sequences of append,
//! read, ack, commit, reopen after a dropped handle and reopen after a
//! simulated crash (the files copied as they are on disk at that instant,
//! which is what a SIGKILL leaves).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::sqlite::{wal_path, SqliteOptions, SqliteStore, DB_FILE};
use super::{MemoryStore, Store, Stored};
use crate::config::Fsync;
use crate::reading::{Reading, Value};

const SENSORS: [&str; 4] = ["gw-temp-0", "gw-hum-0", "gw-\"q\"-é", "gw-loc-0"];

#[derive(Clone, Debug)]
enum Op {
    /// (sensor index, time step, value)
    Append(Vec<(usize, u16, Value)>),
    /// Many numbers at once (to fill several chunks).
    AppendMany(u16),
    Commit,
    /// Make the acknowledgements durable (the buffer does after each burst of acks).
    CommitAcks,
    Sync,
    Read {
        from: u16,
        max: u16,
    },
    /// Messages packed by the store, against `pack_values` over the model.
    ReadPacked {
        from: u16,
        max_bytes: u16,
        messages: u8,
    },
    /// Ack the first `n` pending readings, as the session does after a PUBACK.
    AckFront(u16),
    /// Ack an arbitrary range, relative to the end of the queue.
    AckRange {
        back: u16,
        len: u16,
    },
    /// As the session drains: the next messages from where the previous
    /// ones stopped (checked as `ReadPacked`), kept in flight.
    Drain {
        max_bytes: u16,
        messages: u8,
    },
    /// PUBACKs for up to this many messages in flight, oldest first (or,
    /// with `newest_first`, the newest one first, then the others in order).
    Pubacks {
        count: u8,
        newest_first: bool,
    },
    /// Drop the handle (a clean close) and open the directory again.
    Reopen,
    /// Copy the files as they are now (SIGKILL) and open the copy.
    Crash,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (-1.0e6..1.0e6f64).prop_map(Value::Number),
        2 => (-100_000i64..100_000).prop_map(|i| Value::Number(i as f64)),
        1 => prop_oneof![
            Just(Value::Number(-0.0)),
            Just(Value::Number(1e300)),
            Just(Value::Number(f64::INFINITY)),
            Just(Value::Number(9_007_199_254_740_993.0)),
        ],
        1 => "\\PC{0,12}".prop_map(Value::Text),
        1 => (-90.0..90.0f64, -180.0..180.0f64)
            .prop_map(|(lat, lng)| Value::Json(serde_json::json!({"lat": lat, "lng": lng}))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0..SENSORS.len(), 1..5000u16, value()), 0..40).prop_map(Op::Append),
        1 => (0..3000u16).prop_map(Op::AppendMany),
        2 => Just(Op::Commit),
        2 => Just(Op::CommitAcks),
        1 => Just(Op::Sync),
        3 => (0..3000u16, 0..2000u16).prop_map(|(from, max)| Op::Read { from, max }),
        2 => (0..3000u16, 20..6000u16, 0..5u8)
            .prop_map(|(from, max_bytes, messages)| Op::ReadPacked { from, max_bytes, messages }),
        3 => (0..1500u16).prop_map(Op::AckFront),
        1 => (0..3000u16, 0..1000u16).prop_map(|(back, len)| Op::AckRange { back, len }),
        3 => (200..8000u16, 1..5u8).prop_map(|(max_bytes, messages)| Op::Drain { max_bytes, messages }),
        3 => (1..6u8, prop::bool::weighted(0.1)).prop_map(|(count, newest_first)| Op::Pubacks { count, newest_first }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn fsync() -> impl Strategy<Value = Fsync> {
    prop_oneof![
        Just(Fsync::Never),
        Just(Fsync::Period(Duration::from_secs(1))),
        Just(Fsync::Always),
    ]
}

/// Copies the buffer files of `from` into the new directory `to`, byte for
/// byte as the kernel has them now: what a process killed at this instant
/// leaves on disk (uncommitted changes may be partly in the WAL, unmarked).
pub(crate) fn crash_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in [DB_FILE, "buffer.db-wal", "buffer.db-shm"] {
        let src = from.join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name)).unwrap();
        }
    }
}

struct Harness {
    root: tempfile::TempDir,
    generation: usize,
    dir: PathBuf,
    fsync: Fsync,
    store: Option<SqliteStore>,
    /// The model as the store should be now.
    model: MemoryStore,
    /// The seq the next append gets.
    next_seq: u64,
    /// Every reading ever appended, by seq.
    appended: BTreeMap<u64, Reading>,
    /// Readings with a seq below this were appended before a full commit.
    committed_next: u64,
    /// Acknowledged seqs: durably (never to come back), and not yet.
    durable_acks: BTreeSet<u64>,
    pending_acks: BTreeSet<u64>,
    clock: HashMap<usize, i64>,
    /// The session's read position and its messages awaiting a PUBACK.
    cursor: u64,
    in_flight: std::collections::VecDeque<std::ops::Range<u64>>,
}

impl Harness {
    fn new(fsync: Fsync) -> Harness {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("g0");
        let store = SqliteStore::open(&dir, SqliteOptions::unbounded(fsync)).unwrap();
        Harness {
            root,
            generation: 0,
            dir,
            fsync,
            store: Some(store),
            model: MemoryStore::new(u64::MAX),
            next_seq: 1,
            appended: BTreeMap::new(),
            committed_next: 1,
            durable_acks: BTreeSet::new(),
            pending_acks: BTreeSet::new(),
            clock: HashMap::new(),
            cursor: 0,
            in_flight: Default::default(),
        }
    }

    fn store(&mut self) -> &mut SqliteStore {
        self.store.as_mut().unwrap()
    }

    fn acks_durable(&mut self) {
        self.durable_acks
            .append(&mut std::mem::take(&mut self.pending_acks));
    }

    fn committed_now(&mut self) {
        self.committed_next = self.next_seq;
        self.acks_durable();
    }

    fn append(&mut self, readings: Vec<Reading>) {
        for r in &readings {
            self.appended.insert(self.next_seq, r.clone());
            self.next_seq += 1;
        }
        self.store().append(readings.clone()).unwrap();
        self.model.append(readings).unwrap();
    }

    fn ack(&mut self, range: std::ops::Range<u64>) {
        let acked: Vec<u64> = self
            .model
            .read(range.start, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|s| s.seq)
            .take_while(|s| *s < range.end)
            .collect();
        self.pending_acks.extend(acked);
        self.store().ack(range.clone()).unwrap();
        self.model.ack(range).unwrap();
    }

    fn check_read(&mut self, from: u64, max: usize) -> Result<(), TestCaseError> {
        let got = self.store().read(from, max).unwrap();
        let want = self.model.read(from, max).unwrap();
        prop_assert_eq!(wire(&got), wire(&want), "read({}, {})", from, max);
        check_order(&got)?;
        for s in &got {
            prop_assert!(
                !self.durable_acks.contains(&s.seq) && !self.pending_acks.contains(&s.seq),
                "acknowledged seq {} came back",
                s.seq
            );
        }
        Ok(())
    }

    /// After a crash: everything committed and not durably acknowledged is
    /// there; nothing durably acknowledged is; nothing was never appended.
    /// Uncommitted readings may or may not have survived.
    fn check_after_crash(&mut self) -> Result<(), TestCaseError> {
        let got = self.store().read(0, usize::MAX).unwrap();
        check_order(&got)?;
        let present: BTreeMap<u64, WireReading> = got
            .iter()
            .map(|s| (s.seq, wire_reading(&s.reading)))
            .collect();
        for (seq, r) in self.appended.range(..self.committed_next) {
            if self.durable_acks.contains(seq) {
                prop_assert!(
                    !present.contains_key(seq),
                    "durably acknowledged seq {} came back",
                    seq
                );
            } else {
                prop_assert_eq!(
                    present.get(seq),
                    Some(&wire_reading(r)),
                    "committed seq {} lost",
                    seq
                );
            }
        }
        for (seq, r) in &present {
            let appended = self.appended.get(seq).map(wire_reading);
            prop_assert_eq!(appended.as_ref(), Some(r), "seq {} never appended so", seq);
            prop_assert!(!self.durable_acks.contains(seq));
        }
        let next = self.store().next_seq();
        prop_assert!(
            next >= self.committed_next,
            "a committed seq would be used again"
        );
        prop_assert!(got.last().is_none_or(|s| s.seq < next));
        // What is there now is the state to go on from.
        self.model = MemoryStore::from_parts(got, next);
        self.next_seq = next;
        self.pending_acks.clear();
        self.committed_next = next;
        // Seqs of readings lost in the crash may be given again.
        self.appended.retain(|seq, _| *seq < next);
        self.durable_acks.retain(|seq| *seq < next);
        Ok(())
    }

    /// Reads packed messages and checks them against `pack_values` over the model.
    fn check_packed(
        &mut self,
        from: u64,
        max_bytes: usize,
        messages: usize,
    ) -> Result<Vec<super::Packed>, TestCaseError> {
        let got = self.store().read_packed(from, max_bytes, messages).unwrap();
        let want = self.model.read(from, usize::MAX).unwrap();
        prop_assert!(got.len() <= messages);
        let mut i = 0;
        for m in &got {
            // The next readings in order, packed as pack_values packs
            // them; the store may close a message early (at a chunk
            // boundary), never late.
            let n = m.count;
            prop_assert!(n >= 1 && i + n <= want.len());
            let (greedy, most) = crate::thingplus::pack_values(&want[i..], max_bytes);
            prop_assert!(n <= most);
            let (payload, all) = crate::thingplus::pack_values(&want[i..i + n], usize::MAX);
            prop_assert_eq!(all, n);
            prop_assert_eq!(&m.payload[..], payload.as_bytes());
            if n == most {
                prop_assert_eq!(&m.payload[..], greedy.as_bytes());
            }
            prop_assert_eq!(m.seqs.clone(), want[i].seq..want[i + n - 1].seq + 1);
            prop_assert!(m.payload.len() <= max_bytes || n == 1);
            i += n;
        }
        if got.len() < messages {
            prop_assert_eq!(i, want.len(), "readings left out");
        }
        Ok(got)
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append(items) => {
                let readings: Vec<Reading> = items
                    .into_iter()
                    .map(|(s, step, v)| {
                        let t = self.clock.entry(s).or_insert(1_700_000_000_000);
                        *t += i64::from(step);
                        Reading::new(SENSORS[s], *t, v)
                    })
                    .collect();
                self.append(readings);
            }
            Op::AppendMany(n) => {
                let readings: Vec<Reading> = (0..usize::from(n))
                    .map(|i| {
                        let s = i % 3;
                        let t = self.clock.entry(s).or_insert(1_700_000_000_000);
                        *t += 10;
                        Reading::new(SENSORS[s], *t, Value::Number(i as f64 * 0.5))
                    })
                    .collect();
                self.append(readings);
            }
            Op::Commit => {
                self.store().commit().unwrap();
                self.committed_now();
            }
            Op::CommitAcks => {
                self.store().commit_acks().unwrap();
                self.acks_durable();
            }
            Op::Sync => {
                self.store().sync().unwrap();
                self.committed_now();
            }
            Op::Read { from, max } => {
                let first = self.model.read(0, 1).unwrap().first().map_or(1, |s| s.seq);
                self.check_read(first.saturating_sub(5) + u64::from(from), usize::from(max))?;
            }
            Op::ReadPacked {
                from,
                max_bytes,
                messages,
            } => {
                let first = self.model.read(0, 1).unwrap().first().map_or(1, |s| s.seq);
                let from = first.saturating_sub(5) + u64::from(from);
                self.check_packed(from, usize::from(max_bytes), usize::from(messages))?;
            }
            Op::Drain {
                max_bytes,
                messages,
            } => {
                let got =
                    self.check_packed(self.cursor, usize::from(max_bytes), usize::from(messages))?;
                if let Some(last) = got.last() {
                    self.cursor = last.seqs.end;
                }
                self.in_flight.extend(got.into_iter().map(|m| m.seqs));
            }
            Op::Pubacks {
                count,
                newest_first,
            } => {
                if newest_first {
                    if let Some(r) = self.in_flight.pop_back() {
                        self.ack(r);
                    }
                }
                for _ in 0..count {
                    let Some(r) = self.in_flight.pop_front() else {
                        break;
                    };
                    self.ack(r);
                }
            }
            Op::AckFront(n) => {
                let front = self.model.read(0, usize::from(n)).unwrap();
                if let (Some(a), Some(b)) = (front.first(), front.last()) {
                    self.ack(a.seq..b.seq + 1);
                }
            }
            Op::AckRange { back, len } => {
                let end = self.model.stats().unwrap().pending; // any number will do as a base
                let start = self.next_seq.saturating_sub(u64::from(back)).max(1) + end % 3;
                self.ack(start..start + u64::from(len));
            }
            Op::Reopen => {
                drop(self.store.take());
                self.store = Some(
                    SqliteStore::open(&self.dir, SqliteOptions::unbounded(self.fsync)).unwrap(),
                );
                self.committed_now();
                // A new connection replays from the oldest pending reading.
                self.cursor = 0;
                self.in_flight.clear();
            }
            Op::Crash => {
                self.generation += 1;
                let next = self.root.path().join(format!("g{}", self.generation));
                crash_image(&self.dir, &next);
                // The old handle is of no further interest (it may commit to the old directory).
                drop(self.store.take());
                self.dir = next;
                self.store = Some(
                    SqliteStore::open(&self.dir, SqliteOptions::unbounded(self.fsync)).unwrap(),
                );
                self.check_after_crash()?;
                self.cursor = 0;
                self.in_flight.clear();
            }
        }
        let got = self.store().stats().unwrap();
        let want = self.model.stats().unwrap();
        prop_assert_eq!(got.pending, want.pending, "pending");
        prop_assert_eq!(got.oldest_ms, want.oldest_ms, "oldest");
        Ok(())
    }
}

/// A reading as Thing+ receives it: the store keeps values as their JSON
/// text, so NaN and infinities come back as null, -0 as 0.
type WireReading = (String, i64, String);

fn wire_reading(r: &Reading) -> WireReading {
    (r.sensor_id.to_string(), r.time_ms, r.value.to_json_string())
}

fn wire(rs: &[Stored]) -> Vec<(u64, WireReading)> {
    rs.iter()
        .map(|s| (s.seq, wire_reading(&s.reading)))
        .collect()
}

/// Seqs strictly increase, and so do times per sensor.
fn check_order(rs: &[Stored]) -> Result<(), TestCaseError> {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for w in rs.windows(2) {
        prop_assert!(w[0].seq < w[1].seq, "seqs out of order");
    }
    for s in rs {
        if let Some(prev) = last.insert(&s.reading.sensor_id, s.reading.time_ms) {
            prop_assert!(
                prev < s.reading.time_ms,
                "times out of order for {}",
                s.reading.sensor_id
            );
        }
    }
    Ok(())
}

proptest! {
    // PROPTEST_CASES=1000 for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        max_shrink_iters: 2000,
        .. ProptestConfig::default()
    })]

    #[test]
    fn sqlite_store_behaves_like_the_model(fsync in fsync(), ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new(fsync);
        for op in ops {
            h.apply(op)?;
        }
        h.check_read(0, usize::MAX)?;
        // Whatever was committed survives one more crash.
        h.apply(Op::Crash)?;
        h.check_read(0, usize::MAX)?;
    }
}

#[test]
fn seqs_only_grow_across_restarts_even_when_empty() {
    let root = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::unbounded(Fsync::Never);
    let mut s = SqliteStore::open(root.path(), opts.clone()).unwrap();
    s.append(vec![Reading::new("a", 1, Value::Number(1.0)); 3])
        .unwrap();
    let seqs: Vec<u64> = s.read(0, 10).unwrap().iter().map(|x| x.seq).collect();
    s.ack(0..u64::MAX).unwrap();
    drop(s);
    let mut s = SqliteStore::open(root.path(), opts).unwrap();
    assert_eq!(s.stats().unwrap().pending, 0);
    s.append(vec![Reading::new("a", 10, Value::Number(1.0))])
        .unwrap();
    let again = s.read(0, 10).unwrap();
    assert!(
        again[0].seq > *seqs.last().unwrap(),
        "{again:?} after {seqs:?}"
    );
    assert!(wal_path(s.path()).exists());
}
