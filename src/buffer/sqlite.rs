//! The durable store: SQLite in WAL mode in `[buffer] dir`, readings kept in
//! compact batches ("chunks") of up to [`CHUNK_READINGS`] readings per row.
//!
//! Files in the directory:
//! - `buffer.db` (+ `buffer.db-wal`, `buffer.db-shm` while open): the queue;
//! - `buffer.lock`: held (`flock`) by the process using the directory, and
//!   holding its pid, so that a second daemon gets a clear error;
//! - `buffer.db.corrupt-<time>` (+ `-wal`): a database found unreadable,
//!   moved aside for `thingplus-gw buffer export --db` (the new database is
//!   rebuilt from what can still be read of it);
//! - `buffer.db.unusable-<time>`: a path that could not be opened at all
//!   (a directory, no permission), moved aside;
//! - `buffer.reserve`: allocated space given back to the filesystem when it
//!   is full, so that the oldest chunks can be deleted and acknowledgements
//!   committed (see [`Reserve`]).
//!
//! Schema (version 3, `PRAGMA application_id` = "TPGW"; a file of version 1
//! or 2 is upgraded at open, see [`SCHEMA_VERSION`]):
//! - `chunks(last_seq INTEGER PRIMARY KEY, first_seq, n, data)`: `n` readings
//!   with increasing seqs from `first_seq` to `last_seq`, encoded by
//!   [`super::codec`]. A chunk is pending when `last_seq >= acked_below`
//!   (below, it is acknowledged and waits to be deleted). A partly
//!   acknowledged chunk is rewritten without the acknowledged readings.
//! - `sensors(id, name, last_t)`: sensor names as small integers, and the time
//!   of each sensor's newest reading, which keeps times increasing across
//!   restarts even if the clock stepped back (Thing+ drops older values).
//! - `meta(key, value)`: `next_seq` (seqs are never reused, not even once the
//!   queue is empty), `dropped` (readings dropped by the bounds or found
//!   damaged), `acked_below` (every seq under it is acknowledged) and
//!   `checked_from` (a chunk whose `first_seq` is at or above it must carry
//!   a checksum, codec version 3: a damaged version byte cannot pass a
//!   chunk off as an older, unchecked one; 0 in a file created with
//!   schema 3, the next seq at the upgrade in an older one).
//!
//! Why chunks rather than a row per reading (measured with
//! `benches/buffer.rs` on a 2-core VM): SQLite inserts, reads and deletes cost
//! about 0.2 µs per row each; a row per reading spent about 0.45 s of the
//! buffer thread per million readings drained and drained at about a quarter
//! of what a plain MQTT publisher achieves through Mosquitto. In chunks the
//! database work per reading all but disappears. Each chunk keeps its
//! sensors' readings as the very `t,v,...` text a values message carries
//! (codec version 2), so that [`Store::read_packed`] builds a message by
//! copying a few runs of bytes per chunk: a drain decodes no reading and
//! formats no number. That costs disk: about 23 bytes per numeric reading
//! (version 1, which kept times as binary deltas, took about 12; the
//! drain through Mosquitto went from 0.44 to 0.58 of a plain publisher with
//! version 2 alone, same machine, same hour). Messages are closed at chunk
//! boundaries, so a chunk is always acknowledged whole.
//!
//! Appended readings wait in memory (the "tail") until the next commit, which
//! writes them as chunks; reads see them at once. Uncommitted readings are
//! lost in a crash either way, as in an open transaction.
//!
//! Durability (`[buffer] fsync`, driven by [`super::Buffer`]):
//! - "always": `synchronous=FULL`; appends and acknowledgements are
//!   committed after every burst of commands and every commit is fsynced.
//! - a period (default "1s"): `synchronous=NORMAL`; appends are committed
//!   once per period (or every [`super::COMMIT_READINGS`] readings) and each
//!   periodic commit is followed by [`Store::sync`], a checkpoint, which
//!   fsyncs the WAL and the database. A crash or a power cut loses at most
//!   the readings appended in the last period.
//! - "never": `synchronous=OFF`; commits every second, no fsync at all: a
//!   crash of the daemon loses at most a second, a power cut whatever the
//!   kernel had not written yet, and may damage the file (it is then moved
//!   aside at the next start).
//!
//! A full filesystem (SQLITE_FULL): the open transaction is rolled back
//! with its readings put back in the tail (a failed commit discards
//! nothing), the reserve is deleted, the oldest chunks are dropped and
//! counted, the WAL is truncated, and the write is made again. The tail is
//! bounded while nothing can be written ([`TAIL_MAX`], oldest dropped and
//! counted). Acknowledgements survive a rollback: the cursor stays.
//!
//! Acknowledgements are committed (without fsync outside "always") after
//! every burst, so that after a crash only messages in flight are sent again.
//! A drain's acknowledgement (from the oldest pending reading to a chunk
//! boundary) only moves `acked_below`: its commit writes one row. The chunks
//! under the cursor are deleted in one statement at the periodic commit (and
//! before anything else reads or changes chunks, and at open); deleting them
//! message by message cost as much as all the rest of the acknowledgement.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::codec::{self, Chunk, Decoder, Encoder};
use super::{
    BufferStats, ChunkFit, MessageBuilder, Packed, Store, StoreError, StoreResult, Stored,
};
use crate::clock::MAX_STAMP_LEAD_MS;
use crate::config::{BufferConfig, Fsync};
use crate::reading::Reading;

pub const DB_FILE: &str = "buffer.db";
pub const LOCK_FILE: &str = "buffer.lock";
pub const RESERVE_FILE: &str = "buffer.reserve";
/// 3: chunks carry a checksum (codec version 3, which an earlier daemon
/// cannot read: it would drop them as damaged; 2 brought codec version 2
/// the same way). A file of version 1 or 2 is upgraded in place at open:
/// its chunks stay as they are and are still read.
const SCHEMA_VERSION: i64 = 3;
/// "TPGW": marks the file as a thingplus-gw buffer.
pub const APPLICATION_ID: i64 = 0x5450_4757;
/// SQLite's page cache: the backlog stays on disk, not in memory.
const CACHE_KIB: i64 = 1024;
/// The WAL is cut back to this size after a checkpoint.
const WAL_LIMIT: i64 = 4 << 20;
/// WAL pages that trigger an automatic checkpoint (SQLite's default: 1000).
/// A checkpoint fsyncs the WAL and the database even at synchronous=NORMAL;
/// a drain commits its acknowledgements often, and at 1000 pages those
/// fsyncs were about half the drain's commit time. The WAL may now reach
/// 16 MiB (at 4 KiB pages) between checkpoints; durability is unchanged
/// (commits are in the WAL either way; the periodic sync still checkpoints).
const WAL_CHECKPOINT_PAGES: i64 = 4096;
/// Appends between two checks of the size bounds (also checked at commit).
const BOUNDS_CHECK_EVERY: usize = 1024;
/// The smallest bound honoured, whatever `max_size` says.
const MIN_PAGES: u64 = 64;
/// Readings per chunk, at most.
pub const CHUNK_READINGS: u64 = 512;
/// A chunk is closed at this size, so that a row fits in a 4 KiB page
/// (SQLite keeps a row of up to 4061 bytes in its page; a chunk passes this
/// by one reading at most) and fills most of it: a drain reads the pages.
const CHUNK_BYTES: usize = 3960;
/// Full chunks are written out of the tail before the commit once it holds this many.
const TAIL_FLUSH: usize = 2048;
/// Readings kept in memory while the disk takes none (a full filesystem):
/// beyond, the oldest of them are dropped and counted. About 6 MiB.
const TAIL_MAX: usize = 65_536;
/// The disk-full reserve (`buffer.reserve`): 1/32 of the filesystem, within
/// these bounds. Deleting the oldest chunks and committing an acknowledgement
/// needs a few pages of WAL; this is many times that.
const RESERVE_MIN: u64 = 128 << 10;
const RESERVE_MAX: u64 = 4 << 20;
/// Pages a commit may add to the file or the WAL beyond the WAL's
/// checkpoint size: [`super::COMMIT_READINGS`] readings in chunks, with
/// their b-tree and meta pages.
const COMMIT_PAGES: u64 = 96;

/// How the store keeps its file.
#[derive(Clone, Debug, PartialEq)]
pub struct SqliteOptions {
    /// Bound on the pages holding data, in bytes.
    pub max_size: u64,
    /// Free space kept on the filesystem, in percent (0: no floor).
    pub min_free_percent: f64,
    pub fsync: Fsync,
}

impl SqliteOptions {
    pub fn from_config(c: &BufferConfig) -> Self {
        SqliteOptions {
            max_size: c.max_size,
            min_free_percent: c.min_free_percent,
            fsync: c.fsync,
        }
    }

    /// No bounds (tests).
    pub fn unbounded(fsync: Fsync) -> Self {
        SqliteOptions {
            max_size: u64::MAX,
            min_free_percent: 0.0,
            fsync,
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the buffer directory {} is in use by another thingplus-gw process{}: only one daemon may use a buffer directory; stop the other one or give this one its own [buffer] dir", dir.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("cannot use the buffer directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error("cannot open the buffer database {}: {message}", path.display())]
    Db { path: PathBuf, message: String },
}

/// A database found unusable and moved aside.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    pub reason: String,
    pub moved_to: PathBuf,
    /// Readings it held that could not be read back, when they could be counted.
    pub lost_readings: Option<u64>,
    /// Readings read back into the new database.
    pub kept_readings: u64,
}

struct SensorEntry {
    id: i64,
    last_t: i64,
    /// A clamped time was logged for this sensor.
    warned: bool,
}

/// A reading appended and not yet written into a chunk.
struct TailEntry {
    seq: u64,
    sensor: i64,
    reading: Reading,
}

/// A chunk given whole to a drain: seqs `first..=last`, `n` readings.
#[derive(Clone, Copy, Debug)]
struct HandedChunk {
    first: u64,
    last: u64,
    n: u64,
}

/// `handed` stops growing at this many chunks (a reader far ahead of the
/// acknowledgements; they then take the exact path).
const HANDED_MAX: usize = 1 << 16;

/// What was read from a database file when it was opened.
struct Loaded {
    conn: Connection,
    next_seq: u64,
    pending: u64,
    sensors: HashMap<Arc<str>, SensorEntry>,
    names: IdMap<Arc<str>>,
    dropped_total: u64,
    page_size: u64,
    acked_below: u64,
    checked_from: u64,
    /// `next_seq` as `meta` has it (0: not there). The file may hold less
    /// than `next_seq` says (it was raised from the chunks): it is written
    /// at the next commit, before an acknowledgement can delete the
    /// newest chunk it was computed from.
    stored_next_seq: u64,
}

enum LoadError {
    /// The file is not a readable thingplus-gw buffer: move it aside.
    Corrupt(String),
    /// The path cannot be opened at all (a directory, no permission, read
    /// only): move it aside.
    Unusable(String),
    /// Anything else (permissions, I/O, a newer schema): leave the file alone.
    Other(String),
}

/// An episode of dropping the oldest readings because a bound was hit.
struct Episode {
    reason: String,
    dropped: u64,
}

/// The SQLite store. See the module documentation.
pub struct SqliteStore {
    // Declared before the lock: the database is closed before the directory is unlocked.
    conn: Connection,
    _lock: DirLock,
    dir: PathBuf,
    path: PathBuf,
    options: SqliteOptions,
    in_tx: bool,
    next_seq: u64,
    /// `next_seq` as last written to `meta`.
    stored_next_seq: u64,
    /// Readings in chunks and in the tail.
    pending: u64,
    tail: VecDeque<TailEntry>,
    sensors: HashMap<Arc<str>, SensorEntry>,
    names: IdMap<Arc<str>>,
    dirty_sensors: Vec<i64>,
    encoder: Encoder,
    page_size: u64,
    since_check: usize,
    dropped_since_start: u64,
    dropped_total: u64,
    meta_dirty: bool,
    /// Every reading with a smaller seq is acknowledged (or dropped): a
    /// drain acknowledges whole chunks at the front of the queue by moving
    /// this cursor, committed in `meta` as `acked_below`; the chunks under
    /// it are deleted later, many at once ([`SqliteStore::purge_acked`]).
    /// No chunk straddles it.
    acked_below: u64,
    /// `acked_below` as last written to `meta`.
    stored_acked_below: u64,
    /// Chunks under the cursor may still be in the table.
    acked_rows: bool,
    /// The chunks a drain was given whole, in order: every chunk from the
    /// first one at or after `handed_start` on, as long as the reads went
    /// on from where the previous one stopped. What lets
    /// [`SqliteStore::try_ack_front`] acknowledge without reading the table
    /// (once the cursor reaches `handed_start`, the first of them is the
    /// oldest pending chunk). Cleared whenever chunks are deleted or
    /// rewritten other than through the cursor.
    handed: VecDeque<HandedChunk>,
    handed_start: u64,
    /// The seq a read must start at to extend `handed` (just past its last chunk).
    handed_next: Option<u64>,
    episode: Option<Episode>,
    recoveries: Vec<Recovery>,
    /// Chunks from this seq on must carry a checksum (see the module documentation).
    checked_from: u64,
    /// Readings written into chunks by the open transaction, kept until it
    /// commits: a commit that fails (a full disk) puts them back in the tail.
    written: Vec<TailEntry>,
    /// Sensors registered since the last commit (their rows come with it).
    unsaved_sensors: Vec<i64>,
    /// The drop counters when the open transaction began.
    dropped_at_begin: (u64, u64, u64),
    /// Space set aside for deleting and acknowledging on a full disk.
    reserve: Reserve,
    /// The filesystem is full: a disk-full episode, for its log lines.
    disk_full: Option<DiskFull>,
}

/// An episode of a full filesystem.
struct DiskFull {
    /// Readings dropped from memory because nothing could be written.
    dropped_unwritten: u64,
}

/// A chunk found damaged: its row, and why.
struct Damaged {
    first: u64,
    last: u64,
    n: u64,
    error: codec::DecodeError,
    /// The sensors it holds, as far as its damaged head says.
    sensors: Vec<i64>,
}

impl Damaged {
    fn new(first: i64, last: i64, n: i64, data: &[u8], error: codec::DecodeError) -> Damaged {
        Damaged {
            first: first.max(0) as u64,
            last: last.max(0) as u64,
            n: n.max(0) as u64,
            error,
            sensors: codec::sensors_unchecked(data),
        }
    }
}

/// A chunk at or above `checked_from` must carry a checksum.
fn require_checksum(
    data: &[u8],
    first_seq: i64,
    checked_from: u64,
) -> Result<(), codec::DecodeError> {
    if first_seq.max(0) as u64 >= checked_from && !codec::is_checked(data) {
        return Err(codec::DecodeError("no checksum where one is required"));
    }
    Ok(())
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    // Every column the store reads is written as an integer or a blob: a
    // value of another type was damaged on disk.
    matches!(
        e,
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..)
    ) || matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn is_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::DiskFull)
}

fn to_i64(x: u64) -> i64 {
    x.min(i64::MAX as u64) as i64
}

/// Hashes sensor ids (small integers) with one multiplication: decoding a
/// backlog looks one up per reading.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<i64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A chunk row.
struct ChunkRow {
    last: u64,
    first: u64,
    n: u64,
}

impl SqliteStore {
    /// Opens (or creates) the store in `dir`, taking the directory's lock.
    ///
    /// A database that cannot be read (not a database, corrupt, truncated, a
    /// foreign file) is moved aside with an error log saying what was lost
    /// and where the old file is, and a new one is started.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, OpenError> {
        fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let lock = DirLock::acquire(dir)?;
        let path = dir.join(DB_FILE);
        let mut recoveries = Vec::new();
        let loaded = match load(&path, &options) {
            Ok(l) => l,
            Err(LoadError::Other(message)) => return Err(OpenError::Db { path, message }),
            Err(LoadError::Corrupt(reason)) => {
                let (l, rec) =
                    rebuild(&path, &reason, "corrupt", None, &options).map_err(|message| {
                        OpenError::Db {
                            path: path.clone(),
                            message,
                        }
                    })?;
                recoveries.push(rec);
                l
            }
            Err(LoadError::Unusable(message)) if path.symlink_metadata().is_err() => {
                // Nothing there to move aside: the directory refuses a new file.
                return Err(OpenError::Db { path, message });
            }
            Err(LoadError::Unusable(reason)) => {
                let (l, rec) =
                    rebuild(&path, &reason, "unusable", None, &options).map_err(|message| {
                        OpenError::Db {
                            path: path.clone(),
                            message,
                        }
                    })?;
                recoveries.push(rec);
                l
            }
        };
        let mut store = SqliteStore {
            conn: loaded.conn,
            _lock: lock,
            dir: dir.to_owned(),
            path,
            options,
            in_tx: false,
            next_seq: loaded.next_seq,
            stored_next_seq: loaded.stored_next_seq,
            pending: loaded.pending,
            tail: VecDeque::new(),
            sensors: loaded.sensors,
            names: loaded.names,
            dirty_sensors: Vec::new(),
            encoder: Encoder::new(),
            page_size: loaded.page_size,
            since_check: 0,
            dropped_since_start: 0,
            dropped_total: loaded.dropped_total,
            meta_dirty: false,
            acked_below: loaded.acked_below,
            stored_acked_below: loaded.acked_below,
            acked_rows: false,
            handed: VecDeque::new(),
            handed_start: 0,
            handed_next: None,
            episode: None,
            recoveries,
            checked_from: loaded.checked_from,
            written: Vec::new(),
            unsaved_sensors: Vec::new(),
            dropped_at_begin: (0, 0, 0),
            reserve: Reserve::new(dir, loaded.page_size),
            disk_full: None,
        };
        store
            .reserve
            .fill_if_room(&store.dir, store.options.min_free_percent);
        // What a rebuild could not read back counts as dropped.
        let lost: u64 = store
            .recoveries
            .iter()
            .filter_map(|r| r.lost_readings)
            .sum();
        if lost > 0 {
            store.dropped_since_start += lost;
            store.dropped_total += lost;
            store.meta_dirty = true;
        }
        tracing::debug!(path = %store.path.display(), pending = store.pending, next_seq = store.next_seq, "buffer opened");
        // A smaller bound than the file holds applies at once.
        if store.pending > 0 {
            store.enforce_bounds_now();
        }
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Databases moved aside since this store was opened (at open or later).
    pub fn recoveries(&self) -> &[Recovery] {
        &self.recoveries
    }

    /// The seq the next appended reading gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn enforce_bounds_now(&mut self) {
        self.since_check = 1;
        let r = self.begin().and_then(|()| self.finish_tx());
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot apply the buffer bounds");
            self.after_error(&e);
        }
    }

    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.in_tx {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_tx = true;
            self.dropped_at_begin = (
                self.dropped_total,
                self.dropped_since_start,
                self.episode.as_ref().map_or(0, |e| e.dropped),
            );
        }
        Ok(())
    }

    /// The database id of a sensor, registering it when new. Its row is
    /// written with the next commit ([`SqliteStore::commit_with_meta`]), so
    /// that an append never fails (a full disk fails commits, not appends).
    fn sensor_db_id(&mut self, name: &Arc<str>, t: i64) -> i64 {
        if let Some(e) = self.sensors.get(name) {
            return e.id;
        }
        let id = self.names.keys().max().map_or(1, |m| m + 1);
        self.unsaved_sensors.push(id);
        self.sensors.insert(
            name.clone(),
            SensorEntry {
                id,
                last_t: t.saturating_sub(1),
                warned: false,
            },
        );
        self.names.insert(id, name.clone());
        id
    }

    /// Puts the readings into the tail; nothing here touches the disk.
    fn push_readings(&mut self, readings: &[Reading]) {
        for r in readings {
            let id = self.sensor_db_id(&r.sensor_id, r.time_ms);
            let e = self
                .sensors
                .get_mut(&r.sensor_id)
                .expect("registered above");
            let behind = e.last_t.saturating_sub(r.time_ms);
            let t = if r.time_ms > e.last_t {
                r.time_ms
            } else if behind <= MAX_STAMP_LEAD_MS {
                // A small step back (NTP): keep the order Thing+ requires.
                if !e.warned {
                    e.warned = true;
                    tracing::warn!(
                        sensor_id = %r.sensor_id,
                        time_ms = r.time_ms,
                        newest_buffered_ms = e.last_t,
                        "a reading of {} is older than this sensor's newest buffered one (did the clock step back?): its time is moved forward to keep the order Thing+ requires",
                        r.sensor_id
                    );
                }
                e.last_t.saturating_add(1)
            } else {
                // A larger step back means the newest time was wrong (a wrong
                // timeSync or clock setting, since corrected): follow the
                // clock, as the clock itself does, instead of stamping every
                // later reading in the future for as long as the error was.
                tracing::warn!(
                    sensor_id = %r.sensor_id,
                    time_ms = r.time_ms,
                    newest_buffered_ms = e.last_t,
                    "a reading of {} is {} s older than this sensor's newest buffered one: that time was wrong (the clock went back by more than {} s), so readings keep the clock's time from here on",
                    r.sensor_id,
                    behind / 1000,
                    MAX_STAMP_LEAD_MS / 1000
                );
                r.time_ms
            };
            e.last_t = t;
            self.dirty_sensors.push(id);
            let mut reading = r.clone();
            reading.time_ms = t;
            self.tail.push_back(TailEntry {
                seq: self.next_seq,
                sensor: id,
                reading,
            });
            self.next_seq += 1;
            self.pending += 1;
            self.since_check += 1;
        }
        if self.dirty_sensors.len() > 1024 {
            self.dirty_sensors.sort_unstable();
            self.dirty_sensors.dedup();
        }
    }

    /// After appends: writes full chunks out of a long tail, checks the
    /// bounds when due.
    fn after_append(&mut self) -> rusqlite::Result<()> {
        if self.tail.len() >= TAIL_FLUSH {
            self.flush_tail(false)?;
        }
        if self.since_check >= BOUNDS_CHECK_EVERY && self.in_tx {
            self.enforce_bounds()?;
        }
        Ok(())
    }

    fn insert_chunk(&mut self, first: u64, last: u64, n: u64, data: &[u8]) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO chunks(last_seq, first_seq, n, data) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![to_i64(last), to_i64(first), to_i64(n), data])?;
        Ok(())
    }

    /// Writes the tail as chunks: all of it, or only full chunks.
    fn flush_tail(&mut self, all: bool) -> rusqlite::Result<()> {
        while !self.tail.is_empty() {
            if !all && (self.tail.len() as u64) < CHUNK_READINGS {
                break;
            }
            self.begin()?;
            let mut taken = 0;
            for e in &self.tail {
                if self.encoder.len() >= CHUNK_READINGS || self.encoder.bytes() >= CHUNK_BYTES {
                    break;
                }
                self.encoder
                    .push(e.seq, e.sensor, e.reading.time_ms, &e.reading.value);
                taken += 1;
            }
            let (first, last, n, data) = self.encoder.finish().expect("at least one reading");
            self.insert_chunk(first, last, n, &data)?;
            // Kept until committed: a rolled-back commit puts them back.
            self.written.extend(self.tail.drain(..taken));
        }
        Ok(())
    }

    fn try_read(&mut self, from: u64, max: usize) -> rusqlite::Result<Vec<Stored>> {
        let from = from.max(self.acked_below);
        let mut out = Vec::with_capacity(max.min(4096));
        let mut damaged = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // Sensor names for this batch only: another thread drops these
        // readings, and a shared reference count would bounce between cores.
        let mut local: Vec<(i64, Arc<str>)> = Vec::new();
        let mut name = |names: &IdMap<Arc<str>>, sensor: i64| -> Arc<str> {
            if let Some((_, n)) = local.iter().find(|(id, _)| *id == sensor) {
                return n.clone();
            }
            let n: Arc<str> = match names.get(&sensor) {
                Some(n) => Arc::from(&**n),
                None => Arc::from(format!("unknown-sensor-{sensor}")),
            };
            if local.len() < 64 {
                local.push((sensor, n.clone()));
            }
            n
        };
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT last_seq, n, data, first_seq FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq",
            )?;
            let mut rows = stmt.query(params![to_i64(from)])?;
            let checked_from = self.checked_from;
            'rows: while let Some(row) = rows.next()? {
                let data = row.get_ref(2)?.as_blob()?;
                let first = row.get::<_, i64>(3)?;
                let damage = |e| -> rusqlite::Result<Damaged> {
                    Ok(Damaged::new(first, row.get(0)?, row.get(1)?, data, e))
                };
                // The whole chunk is checked before any of it is returned.
                let decoded = require_checksum(data, first, checked_from)
                    .and_then(|()| Decoder::new(data))
                    .and_then(|d| d.collect::<Result<Vec<_>, _>>());
                let records = match decoded {
                    Ok(r) => r,
                    Err(e) => {
                        damaged.push(damage(e)?);
                        continue;
                    }
                };
                for rec in records {
                    if rec.seq < from {
                        continue;
                    }
                    out.push(Stored {
                        seq: rec.seq,
                        reading: Reading {
                            sensor_id: name(&self.names, rec.sensor),
                            time_ms: rec.t,
                            value: rec.value(),
                        },
                    });
                    if out.len() >= max {
                        break 'rows;
                    }
                }
            }
        }
        if !damaged.is_empty() {
            self.drop_damaged(&damaged)?;
            // Read again without the damaged chunks, so that what is returned is what is kept.
            return self.try_read(from, max);
        }
        let start = self.tail.partition_point(|e| e.seq < from);
        for e in self.tail.range(start..) {
            if out.len() >= max {
                break;
            }
            out.push(Stored {
                seq: e.seq,
                reading: e.reading.clone(),
            });
        }
        Ok(out)
    }

    /// Messages packed straight from the chunks: the values are kept as
    /// JSON text, so this copies bytes and formats times, nothing more.
    fn try_read_packed(
        &mut self,
        from: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> rusqlite::Result<Vec<Packed>> {
        if max_messages == 0 {
            return Ok(Vec::new());
        }
        // A read from just past the end of the drain's list of chunks given
        // whole extends it; any other read starts a new one.
        let from = from.max(self.acked_below);
        if self.handed_next != Some(from) {
            self.forget_handed();
            self.handed_start = from;
        }
        let mut extending = self.handed.len() < HANDED_MAX;
        let checked_from = self.checked_from;
        let handed = &mut self.handed;
        let handed_next = &mut self.handed_next;
        let mut damaged = Vec::new();
        let messages = {
            let names = &self.names;
            // A few sensors at a time, usually: a short list before the map.
            let mut recent: Vec<(i64, &str)> = Vec::with_capacity(8);
            let mut name = |sensor: i64| -> &str {
                if let Some((_, n)) = recent.iter().find(|(id, _)| *id == sensor) {
                    return n;
                }
                let n = names.get(&sensor).map_or("unknown-sensor", |n| &**n);
                if recent.len() == 8 {
                    recent.remove(0);
                }
                recent.push((sensor, n));
                n
            };
            let mut b = MessageBuilder::new(max_bytes, max_messages);
            let mut stmt = self.conn.prepare_cached(
                "SELECT last_seq, n, data, first_seq FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq",
            )?;
            let mut rows = stmt.query(params![to_i64(from)])?;
            let mut full = false;
            'rows: while let Some(row) = rows.next()? {
                let data = row.get_ref(2)?.as_blob()?;
                let last = row.get::<_, i64>(0)? as u64;
                let first = row.get::<_, i64>(3)?;
                let damage = |e| -> rusqlite::Result<Damaged> {
                    Ok(Damaged::new(first, last as i64, row.get(1)?, data, e))
                };
                // A whole chunk of version 2 or 3 is copied sensor by
                // sensor, once its checksum matched (in `Chunk::parse`). Its
                // head must agree with its row (counts and acknowledgements
                // come from it); if not, it is damaged.
                let parsed = require_checksum(data, first, checked_from)
                    .and_then(|()| Chunk::parse(data))
                    .and_then(|c| match c {
                        Some(c)
                            if c.seq0 != row.get::<_, i64>(3).unwrap_or(-1) as u64
                                || c.n != row.get::<_, i64>(1).unwrap_or(-1) as u64
                                || !c.fits(last) =>
                        {
                            Err(codec::DecodeError("head disagrees with its row"))
                        }
                        c => Ok(c),
                    });
                match parsed {
                    Ok(Some(c)) if c.seq0 >= from => {
                        let runs: Vec<(&str, &[u8])> =
                            c.groups.iter().map(|(s, text)| (name(*s), *text)).collect();
                        match b.add_chunk(c.seq0, last, c.n as usize, &runs) {
                            ChunkFit::Taken => {
                                if extending {
                                    handed.push_back(HandedChunk {
                                        first: c.seq0,
                                        last,
                                        n: c.n,
                                    });
                                    *handed_next = Some(last + 1);
                                    extending = handed.len() < HANDED_MAX;
                                }
                                continue;
                            }
                            ChunkFit::Full => {
                                full = true;
                                break 'rows;
                            }
                            ChunkFit::TooLarge => {}
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        damaged.push(damage(e)?);
                        continue;
                    }
                }
                // Read reading by reading: the list stops before this chunk.
                extending = false;
                *handed_next = None;
                let decoder = match Decoder::new(data) {
                    Ok(d) => d,
                    Err(e) => {
                        damaged.push(damage(e)?);
                        continue;
                    }
                };
                for rec in decoder {
                    let rec = match rec {
                        Ok(r) => r,
                        Err(e) => {
                            // What was taken of it goes too: the read starts again.
                            damaged.push(damage(e)?);
                            continue 'rows;
                        }
                    };
                    if rec.seq < from {
                        continue;
                    }
                    if !b.add(rec.seq, name(rec.sensor), rec.t, rec.value) {
                        full = true;
                        break 'rows;
                    }
                }
            }
            if !full {
                let start = self.tail.partition_point(|e| e.seq < from);
                let mut text = String::new();
                for e in self.tail.range(start..) {
                    text.clear();
                    e.reading.value.write_json(&mut text);
                    if !b.add(
                        e.seq,
                        &e.reading.sensor_id,
                        e.reading.time_ms,
                        text.as_bytes(),
                    ) {
                        break;
                    }
                }
            }
            b.finish(false)
        };
        if !damaged.is_empty() {
            self.drop_damaged(&damaged)?;
            return self.try_read_packed(from, max_bytes, max_messages);
        }
        Ok(messages)
    }

    /// Deletes chunks whose data failed its checksum or cannot be decoded
    /// (damaged on disk), counts their readings as dropped and says in one
    /// log line what was lost: how many readings, which seqs, which sensors.
    fn drop_damaged(&mut self, damaged: &[Damaged]) -> rusqlite::Result<()> {
        self.begin()?;
        self.forget_handed();
        let mut lost = 0u64;
        let mut ranges = Vec::new();
        let mut sensors: Vec<i64> = Vec::new();
        let mut reasons: Vec<&'static str> = Vec::new();
        for d in damaged {
            let deleted = self
                .conn
                .prepare_cached("DELETE FROM chunks WHERE last_seq = ?1")?
                .execute(params![to_i64(d.last)])?;
            if deleted == 0 {
                continue;
            }
            lost += d.n;
            ranges.push(format!("{}..={}", d.first, d.last));
            sensors.extend(&d.sensors);
            if !reasons.contains(&d.error.0) {
                reasons.push(d.error.0);
            }
        }
        if lost == 0 {
            return Ok(());
        }
        self.pending = self.pending.saturating_sub(lost);
        self.dropped_since_start += lost;
        self.dropped_total += lost;
        self.meta_dirty = true;
        sensors.sort_unstable();
        sensors.dedup();
        let names: Vec<&str> = sensors
            .iter()
            .filter_map(|id| self.names.get(id).map(|n| &**n))
            .collect();
        let names = if names.is_empty() {
            "unknown (the chunk's head is damaged too)".to_string()
        } else {
            names.join(", ")
        };
        let seqs = ranges.join(", ");
        let reason = reasons.join(", ");
        tracing::error!(
            readings = lost,
            seqs = %seqs,
            sensors = %names,
            reason = %reason,
            "damaged buffered readings were dropped, not sent: {lost} readings, seqs {seqs}, of sensors {names} ({reason}; the disk returned other bytes than were written: check the storage). They count as dropped"
        );
        Ok(())
    }

    /// Deletes the chunks under the acknowledged cursor, in one statement.
    /// Every path that reads or changes chunks other than a drain's reads and
    /// acknowledgements calls this first, and so sees only pending chunks.
    fn purge_acked(&mut self) -> rusqlite::Result<()> {
        if !self.acked_rows {
            return Ok(());
        }
        self.begin()?;
        self.conn
            .prepare_cached("DELETE FROM chunks WHERE last_seq < ?1")?
            .execute(params![to_i64(self.acked_below)])?;
        self.acked_rows = false;
        Ok(())
    }

    /// Acknowledges `range` by moving the cursor, when it covers whole
    /// chunks from the oldest pending one on, as given to a drain: then
    /// nothing is read or deleted, and the commit writes one `meta` row.
    /// Returns false, changing nothing, when that does not apply.
    fn try_ack_front(&mut self, range: &Range<u64>) -> bool {
        let (start, end) = (range.start, range.end);
        // With the cursor at or past where the list starts, its front is
        // the oldest pending chunk: no pending reading lies before `start`
        // when the range covers that chunk.
        match self.handed.front() {
            Some(front)
                if self.acked_below >= self.handed_start
                    && start <= front.first
                    && front.last < end => {}
            _ => return false,
        }
        let k = self.handed.partition_point(|c| c.last < end);
        // It must end where a chunk ends (chunks do not overlap, and the
        // tail's seqs come after every chunk's).
        if self.handed[k - 1].last + 1 != end {
            return false;
        }
        if self.begin().is_err() {
            return false; // the exact path reports it
        }
        let readings: u64 = self.handed.drain(..k).map(|c| c.n).sum();
        self.pending = self.pending.saturating_sub(readings);
        self.acked_below = self.acked_below.max(end);
        self.acked_rows = true;
        true
    }

    /// Chunks were deleted or rewritten: the drain's list no longer holds.
    fn forget_handed(&mut self) {
        self.handed.clear();
        self.handed_next = None;
    }

    fn try_ack(&mut self, range: &Range<u64>) -> rusqlite::Result<()> {
        if range.start >= range.end || self.pending == 0 || range.end <= self.acked_below {
            // (Nothing pending: the cursor stays, later readings are not under it.)
            return Ok(());
        }
        if self.try_ack_front(range) {
            return Ok(());
        }
        self.purge_acked()?;
        // The exact way deletes a chunk and writes its rest again: a failed
        // statement (disk full) must not leave the delete alone in the
        // transaction, which would lose the rest at the next commit.
        self.begin()?;
        self.conn.execute_batch("SAVEPOINT exact_ack")?;
        let (pending, acked_below) = (self.pending, self.acked_below);
        match self.try_ack_exact(range) {
            Ok(()) => self.conn.execute_batch("RELEASE exact_ack"),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self
                        .conn
                        .execute_batch("ROLLBACK TO exact_ack; RELEASE exact_ack");
                }
                self.pending = pending;
                self.acked_below = acked_below;
                self.forget_handed();
                Err(e)
            }
        }
    }

    /// [`SqliteStore::try_ack`] the exact way: chunks in the range deleted,
    /// chunks partly in it written again without the acknowledged readings.
    /// Changes nothing in memory but the pending count and the cursor
    /// before its last statement.
    fn try_ack_exact(&mut self, range: &Range<u64>) -> rusqlite::Result<()> {
        let (lo, hi) = (range.start, range.end);
        // Chunks overlapping the range.
        let rows: Vec<ChunkRow> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT last_seq, first_seq, n FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq",
            )?;
            let mut rows = stmt.query(params![to_i64(lo)])?;
            let mut v = Vec::new();
            while let Some(row) = rows.next()? {
                let c = ChunkRow {
                    last: row.get::<_, i64>(0)? as u64,
                    first: row.get::<_, i64>(1)? as u64,
                    n: row.get::<_, i64>(2)? as u64,
                };
                if c.first >= hi {
                    break;
                }
                v.push(c);
            }
            v
        };
        // Chunks given to the drain after `hi` are not touched: the list
        // holds (and the fast way comes back once the cursor reaches it).
        if !rows.is_empty() && self.handed.front().is_some_and(|c| c.first < hi) {
            self.forget_handed();
        }
        for c in rows {
            if c.first >= lo && c.last < hi {
                self.conn
                    .prepare_cached("DELETE FROM chunks WHERE last_seq = ?1")?
                    .execute(params![to_i64(c.last)])?;
                self.pending = self.pending.saturating_sub(c.n);
                continue;
            }
            // Partly acknowledged: keep the rest.
            let data: Vec<u8> = self
                .conn
                .prepare_cached("SELECT data FROM chunks WHERE last_seq = ?1")?
                .query_row(params![to_i64(c.last)], |r| r.get(0))?;
            let records = match require_checksum(&data, to_i64(c.first), self.checked_from)
                .and_then(|()| codec::decode_all(&data))
            {
                Ok(r) => r,
                Err(e) => {
                    let d = Damaged::new(to_i64(c.first), to_i64(c.last), to_i64(c.n), &data, e);
                    self.drop_damaged(&[d])?;
                    continue;
                }
            };
            let mut enc = Encoder::new();
            for r in records.iter().filter(|r| !(lo..hi).contains(&r.seq)) {
                enc.push_json(r.seq, r.sensor, r.t, r.value);
            }
            let removed = c.n.saturating_sub(enc.len());
            if removed == 0 {
                continue;
            }
            self.conn
                .prepare_cached("DELETE FROM chunks WHERE last_seq = ?1")?
                .execute(params![to_i64(c.last)])?;
            if let Some((first, last, n, data)) = enc.finish() {
                self.insert_chunk(first, last, n, &data)?;
            }
            self.pending = self.pending.saturating_sub(removed);
        }
        // Nothing pending left before `hi`: the cursor moves past it, so that
        // the acknowledgements after this one can take the fast way again.
        let next_first: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT first_seq FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq LIMIT 1",
            )?
            .query_row(params![to_i64(self.acked_below)], |r| r.get(0))
            .optional()?;
        // The tail last: nothing fails after this.
        let a = self.tail.partition_point(|e| e.seq < lo);
        let b = self.tail.partition_point(|e| e.seq < hi);
        if b > a {
            self.tail.drain(a..b);
            self.pending = self.pending.saturating_sub((b - a) as u64);
        }
        let rows_clear = next_first.is_none_or(|f| f as u64 >= hi);
        let tail_clear = self.tail.front().is_none_or(|e| e.seq >= hi);
        if rows_clear && tail_clear {
            self.acked_below = self.acked_below.max(hi.min(self.next_seq));
        }
        Ok(())
    }

    /// Writes the tail and what is kept in memory, checks the bounds, commits.
    fn finish_tx(&mut self) -> rusqlite::Result<()> {
        self.purge_acked()?;
        if !self.tail.is_empty() {
            self.flush_tail(true)?;
        }
        // Readings appended and acknowledged before any was written still
        // used seqs and moved sensor times: those are kept too.
        let idle = self.dirty_sensors.is_empty()
            && self.unsaved_sensors.is_empty()
            && !self.meta_dirty
            && self.next_seq == self.stored_next_seq
            && self.acked_below == self.stored_acked_below;
        if !self.in_tx && idle {
            return Ok(());
        }
        self.begin()?;
        if !self.dirty_sensors.is_empty() {
            self.dirty_sensors.sort_unstable();
            self.dirty_sensors.dedup();
            let names = &self.names;
            let sensors = &self.sensors;
            let mut stmt = self
                .conn
                .prepare_cached("UPDATE sensors SET last_t = ?2 WHERE id = ?1")?;
            for id in self.dirty_sensors.drain(..) {
                if let Some(e) = names.get(&id).and_then(|n| sensors.get(n)) {
                    stmt.execute(params![id, e.last_t])?;
                }
            }
        }
        if self.since_check > 0 {
            self.enforce_bounds()?;
        }
        self.commit_with_meta()
    }

    /// Commits the open transaction (acknowledgements, chunks already
    /// written) and leaves the tail for the next full commit.
    fn commit_open_tx(&mut self) -> rusqlite::Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        self.commit_with_meta()
    }

    /// Writes what changed of `meta` and commits.
    fn commit_with_meta(&mut self) -> rusqlite::Result<()> {
        if !self.unsaved_sensors.is_empty() {
            let mut stmt = self.conn.prepare_cached(
                "INSERT OR REPLACE INTO sensors(id, name, last_t) VALUES (?1, ?2, ?3)",
            )?;
            for id in &self.unsaved_sensors {
                if let Some((name, e)) = self
                    .names
                    .get(id)
                    .and_then(|n| self.sensors.get_key_value(n))
                {
                    stmt.execute(params![id, &**name, e.last_t])?;
                }
            }
        }
        if self.meta_dirty {
            set_meta(&self.conn, "dropped", self.dropped_total)?;
        }
        if self.acked_below != self.stored_acked_below {
            set_meta(&self.conn, "acked_below", self.acked_below)?;
        }
        // Seqs never come back, even when an acknowledgement deleted the
        // newest chunk (the only other record of how far they went): the
        // counter goes to just past what this commit holds (a tail not yet
        // written waits for the next full commit).
        let written_next = self.tail.front().map_or(self.next_seq, |e| e.seq);
        if written_next > self.stored_next_seq {
            set_meta(&self.conn, "next_seq", written_next)?;
        }
        self.conn.execute_batch("COMMIT")?;
        self.in_tx = false;
        self.meta_dirty = false;
        self.written.clear();
        self.unsaved_sensors.clear();
        self.stored_acked_below = self.acked_below;
        self.stored_next_seq = self.stored_next_seq.max(written_next);
        Ok(())
    }

    fn try_sync(&mut self) -> rusqlite::Result<()> {
        self.finish_tx()?;
        if let Fsync::Period(_) = self.options.fsync {
            // synchronous=NORMAL: a checkpoint fsyncs the WAL, copies it into
            // the database and fsyncs that.
            let (_busy, log, done): (i64, i64, i64) =
                self.conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
            if done < log {
                // A reader (`buffer check`) holds back part of the WAL: make
                // sure its frames are on the disk anyway.
                let wal = wal_path(&self.path);
                if let Err(e) = File::open(&wal).and_then(|f| f.sync_data()) {
                    tracing::warn!(path = %wal.display(), error = %e, "cannot fsync the buffer WAL");
                }
            }
        }
        Ok(())
    }

    /// Drops the oldest readings while the data pages exceed `max_size`, or
    /// while the filesystem is under its free-space floor and the file would
    /// have to grow. Freed pages are reused by later appends.
    fn enforce_bounds(&mut self) -> rusqlite::Result<()> {
        self.since_check = 0;
        // Acknowledged chunks are not counted against the bounds.
        self.purge_acked()?;
        let pragma = |conn: &Connection, name: &str| -> rusqlite::Result<u64> {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                .map(|v| v.max(0) as u64)
        };
        let page_count = pragma(&self.conn, "page_count")?;
        let used = page_count.saturating_sub(pragma(&self.conn, "freelist_count")?);
        let max_pages = (self.options.max_size / self.page_size).max(MIN_PAGES);
        // The floor counts what may still be written before the next
        // check: the WAL up to its checkpoint size, and one commit.
        let floor_hit = self.options.min_free_percent > 0.0
            && space(&self.dir).is_some_and(|sp| {
                let wal_now = fs::metadata(wal_path(&self.path)).map_or(0, |m| m.len());
                let wal_max = (wal_pages(&self.dir) + COMMIT_PAGES) * self.page_size;
                let headroom = wal_max.saturating_sub(wal_now) + COMMIT_PAGES * self.page_size;
                sp.free < sp.floor(self.options.min_free_percent) + headroom
            });
        let cap = if floor_hit {
            max_pages.min(page_count.max(MIN_PAGES))
        } else {
            max_pages
        };
        let margin = (cap / 64).max(16).min((cap / 4).max(1));
        if used + margin <= cap {
            if used + 3 * margin <= cap {
                if let Some(ep) = self.episode.take() {
                    tracing::warn!(
                        dropped = ep.dropped,
                        total_dropped = self.dropped_total,
                        "the buffer has room again: {} of the oldest readings were dropped while it was full ({})",
                        ep.dropped,
                        ep.reason
                    );
                }
            }
            return Ok(());
        }
        let target = cap.saturating_sub(2 * margin);
        let mut used = used;
        let mut dropped = 0;
        for _ in 0..4 {
            if used <= target {
                break;
            }
            let d = self.drop_oldest_pages(used - target)?;
            if d == 0 {
                break;
            }
            dropped += d;
            let page_count = pragma(&self.conn, "page_count")?;
            used = page_count.saturating_sub(pragma(&self.conn, "freelist_count")?);
        }
        if dropped == 0 {
            return Ok(());
        }
        let reason = if floor_hit {
            format!(
                "less than {}% free on the filesystem of {}",
                self.options.min_free_percent,
                self.dir.display()
            )
        } else {
            format!("max_size {} reached", format_size(self.options.max_size))
        };
        self.note_drops(dropped, reason);
        Ok(())
    }

    /// Counts readings dropped to keep a bound in the current episode,
    /// logging when one starts.
    fn note_drops(&mut self, dropped: u64, reason: String) {
        if dropped == 0 {
            return;
        }
        match &mut self.episode {
            Some(ep) => ep.dropped += dropped,
            None => {
                tracing::warn!(
                    dropped,
                    pending = self.pending,
                    "buffer full ({reason}): dropping the oldest readings so that sampling goes on; the count follows when there is room again"
                );
                self.episode = Some(Episode { reason, dropped });
            }
        }
    }

    /// Deletes the oldest chunks, about `pages` pages of them; returns the readings dropped.
    fn drop_oldest_pages(&mut self, pages: u64) -> rusqlite::Result<u64> {
        self.forget_handed();
        let chunks: u64 = self
            .conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get::<_, i64>(0))?
            as u64;
        if chunks == 0 {
            return Ok(0);
        }
        let total_pages = {
            let pc: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let fl: i64 = self
                .conn
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            (pc - fl).max(1) as u64
        };
        let k = (pages * chunks).div_ceil(total_pages).clamp(1, chunks);
        let (cutoff, readings): (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT max(last_seq), sum(n) FROM (SELECT last_seq, n FROM chunks ORDER BY last_seq LIMIT ?1)",
            params![to_i64(k)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let Some(cutoff) = cutoff else { return Ok(0) };
        self.conn
            .execute("DELETE FROM chunks WHERE last_seq <= ?1", params![cutoff])?;
        let dropped = readings.unwrap_or(0).max(0) as u64;
        self.pending = self.pending.saturating_sub(dropped);
        self.dropped_since_start += dropped;
        self.dropped_total += dropped;
        self.meta_dirty = true;
        Ok(dropped)
    }

    fn oldest_ms(&mut self) -> rusqlite::Result<Option<i64>> {
        let data: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT data FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq LIMIT 1",
                params![to_i64(self.acked_below)],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(data) = data {
            if let Some(Ok(rec)) = Decoder::new(&data).ok().and_then(|mut d| d.next()) {
                return Ok(Some(rec.t));
            }
        }
        Ok(self.tail.front().map(|e| e.reading.time_ms))
    }

    /// After a failed statement: SQLite may have rolled the transaction back
    /// (disk full, I/O error). Bring the bookkeeping back in line with the file.
    fn after_error(&mut self, e: &rusqlite::Error) {
        if self.in_tx && self.conn.is_autocommit() {
            self.rolled_back(e);
        }
    }

    /// The open transaction is gone (rolled back): what it wrote is back in
    /// the tail and its drops are not counted. Its acknowledgements stand
    /// (the broker has those readings): the cursor stays where they moved
    /// it, and is written with the next commit.
    fn rolled_back(&mut self, e: &rusqlite::Error) {
        self.in_tx = false;
        let mut tail: VecDeque<TailEntry> = self.written.drain(..).collect();
        tail.append(&mut self.tail);
        let acked = tail.partition_point(|t| t.seq < self.acked_below);
        tail.drain(..acked);
        let kept = tail.len();
        self.tail = tail;
        let (total, since_start, episode) = self.dropped_at_begin;
        self.dropped_total = total;
        self.dropped_since_start = since_start;
        if let Some(ep) = &mut self.episode {
            ep.dropped = ep.dropped.min(episode);
        }
        self.meta_dirty = true;
        // Chunks purged under the cursor since the last commit are back.
        self.acked_rows = true;
        self.forget_handed();
        tracing::warn!(
            error = %e,
            kept,
            "a buffer transaction failed and was rolled back ({e}): {kept} readings not yet committed are kept in memory and written with the next commit"
        );
        if let Err(e) = self.reload_counts() {
            tracing::error!(error = %e, "cannot re-read the buffer after a rollback: {e}");
        }
    }

    fn reload_counts(&mut self) -> rusqlite::Result<()> {
        self.pending = self.conn.query_row(
            "SELECT ifnull(sum(n), 0) FROM chunks WHERE last_seq >= ?1",
            params![to_i64(self.acked_below)],
            |r| r.get::<_, i64>(0),
        )? as u64
            + self.tail.len() as u64;
        // Sensors the file does not have are written with the next commit.
        let (saved, _) = load_sensors(&self.conn)?;
        let saved: std::collections::HashSet<i64> = saved.values().map(|e| e.id).collect();
        self.unsaved_sensors = self
            .names
            .keys()
            .copied()
            .filter(|id| !saved.contains(id))
            .collect();
        self.dirty_sensors = self.names.keys().copied().collect();
        Ok(())
    }

    /// The filesystem is full (a statement failed with SQLITE_FULL): roll
    /// back, release the reserve, drop the oldest chunks (counted) so that
    /// SQLite has free pages and WAL room again, and shrink the WAL. The
    /// failed operation is then tried once more.
    fn on_disk_full(&mut self, e: &rusqlite::Error) {
        if self.in_tx {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.rolled_back(e);
        }
        let released = self.reserve.release();
        if self.disk_full.is_none() {
            let reserve = if released {
                format!(
                    "released its {} reserve and ",
                    format_size(self.reserve.bytes)
                )
            } else {
                String::new()
            };
            tracing::error!(
                dir = %self.dir.display(),
                error = %e,
                "the filesystem of the buffer {} is full ({e}): the buffer {reserve}drops its oldest readings so that it can still acknowledge and take new ones; each dropped reading is counted, the total follows when there is room again",
                self.dir.display()
            );
            self.disk_full = Some(DiskFull {
                dropped_unwritten: 0,
            });
        }
        let pages = (self.reserve.bytes / self.page_size).max(MIN_PAGES);
        let made_room = (|| -> rusqlite::Result<u64> {
            self.begin()?;
            self.purge_acked()?;
            let d = self.drop_oldest_pages(pages)?;
            self.commit_with_meta()?;
            Ok(d)
        })();
        match made_room {
            Ok(d) => {
                self.forget_handed();
                let reason = format!("the filesystem of {} is full", self.dir.display());
                self.note_drops(d, reason);
                // The WAL back to nothing: its space goes back to the filesystem.
                let _ = self
                    .conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            Err(e2) => {
                if self.in_tx {
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    self.rolled_back(&e2);
                }
            }
        }
        self.bound_tail();
    }

    /// While nothing can be written, the tail is kept in memory up to
    /// [`TAIL_MAX`] readings; beyond, its oldest are dropped and counted.
    fn bound_tail(&mut self) {
        let excess = self.tail.len().saturating_sub(TAIL_MAX);
        if excess == 0 {
            return;
        }
        self.tail.drain(..excess);
        let n = excess as u64;
        self.pending = self.pending.saturating_sub(n);
        self.dropped_total += n;
        self.dropped_since_start += n;
        self.meta_dirty = true;
        if let Some(df) = &mut self.disk_full {
            df.dropped_unwritten += n;
        }
    }

    /// Sets the reserve aside again once the filesystem has room for it,
    /// which also ends a disk-full episode.
    fn after_commit(&mut self) {
        if self.reserve.present
            || !self
                .reserve
                .fill_if_room(&self.dir, self.options.min_free_percent)
        {
            return;
        }
        match self.disk_full.take() {
            Some(df) => tracing::warn!(
                dir = %self.dir.display(),
                dropped_unwritten = df.dropped_unwritten,
                total_dropped = self.dropped_total,
                "the buffer can write to {} again and has set its {} disk-full reserve aside again; {} readings that could not be written were dropped meanwhile (those dropped from the file are counted in the buffer-full lines)",
                self.dir.display(),
                format_size(self.reserve.bytes),
                df.dropped_unwritten
            ),
            None => tracing::info!(
                path = %self.reserve.path.display(),
                "the buffer has set its {} disk-full reserve aside",
                format_size(self.reserve.bytes)
            ),
        }
    }

    /// The database turned out corrupt while in use: move it aside and go on
    /// with a new one, keeping sequence numbers growing and the readings not
    /// yet written.
    fn recover(&mut self, e: &rusqlite::Error) {
        let reason = e.to_string();
        let lost = self
            .pending
            .saturating_sub((self.tail.len() + self.written.len()) as u64);
        // Close the broken database before moving it.
        match Connection::open_in_memory() {
            Ok(c) => drop(std::mem::replace(&mut self.conn, c)),
            Err(e) => {
                tracing::error!(error = %e, "cannot recover the buffer");
                return;
            }
        }
        if self.in_tx {
            // What the lost transaction wrote goes into the new database.
            // Its drops stand: those readings are not in the count of what
            // the old file held (`lost`), and not in the new one.
            let mut tail: VecDeque<TailEntry> = self.written.drain(..).collect();
            tail.append(&mut self.tail);
            self.tail = tail;
        }
        self.in_tx = false;
        self.dirty_sensors.clear();
        let loaded = match rebuild(&self.path, &reason, "corrupt", Some(lost), &self.options) {
            Ok((l, rec)) => {
                let lost = rec.lost_readings.unwrap_or(0);
                self.dropped_total += lost;
                self.dropped_since_start += lost;
                self.recoveries.push(rec);
                l
            }
            Err(m) => {
                tracing::error!(error = %m, path = %self.path.display(), "cannot start a new buffer database {}: {m}; readings are kept in memory until the next start", self.path.display());
                match load(Path::new(":memory:"), &self.options) {
                    Ok(l) => l,
                    Err(_) => return,
                }
            }
        };
        self.meta_dirty = true;
        let keep_seq = self.next_seq;
        let old_last_t: Vec<(Arc<str>, i64)> = self
            .sensors
            .iter()
            .map(|(n, e)| (n.clone(), e.last_t))
            .collect();
        self.conn = loaded.conn;
        self.next_seq = loaded.next_seq.max(keep_seq);
        self.stored_next_seq = 0;
        self.sensors = loaded.sensors;
        self.names = loaded.names;
        self.page_size = loaded.page_size;
        self.acked_below = loaded.acked_below;
        self.stored_acked_below = loaded.acked_below;
        self.acked_rows = false;
        self.forget_handed();
        self.episode = None;
        self.checked_from = loaded.checked_from;
        // The tail goes into the new database, under its sensor ids.
        let tail = std::mem::take(&mut self.tail);
        self.pending = loaded.pending;
        for mut e in tail {
            e.sensor = self.sensor_db_id(&e.reading.sensor_id, e.reading.time_ms);
            self.tail.push_back(e);
            self.pending += 1;
        }
        for (name, t) in old_last_t {
            if let Some(e) = self.sensors.get_mut(&name) {
                e.last_t = e.last_t.max(t);
                self.dirty_sensors.push(e.id);
            }
        }
    }

    /// Runs `op`; on a corrupt database, recovers, on a full disk makes
    /// room, and runs it once more.
    fn guarded<T>(&mut self, op: impl Fn(&mut Self) -> rusqlite::Result<T>) -> StoreResult<T> {
        match op(self) {
            Ok(v) => Ok(v),
            Err(e) if is_corrupt(&e) || is_full(&e) => {
                if is_corrupt(&e) {
                    self.recover(&e);
                } else {
                    self.on_disk_full(&e);
                }
                op(self).map_err(|e| {
                    if is_full(&e) && self.in_tx && !self.conn.is_autocommit() {
                        // Still full: the readings stay in the tail (bounded)
                        // for the next commit.
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    self.after_error(&e);
                    self.bound_tail();
                    failed(e)
                })
            }
            Err(e) => {
                self.after_error(&e);
                Err(failed(e))
            }
        }
    }
}

impl Store for SqliteStore {
    fn append(&mut self, readings: Vec<Reading>) -> StoreResult<()> {
        // In the tail first, so that a failing write below loses none of them.
        self.push_readings(&readings);
        let r = self.guarded(|s| s.after_append());
        self.bound_tail();
        r
    }

    fn commit(&mut self) -> StoreResult<()> {
        self.guarded(|s| s.finish_tx())?;
        self.after_commit();
        Ok(())
    }

    fn sync(&mut self) -> StoreResult<()> {
        self.guarded(|s| s.try_sync())?;
        self.after_commit();
        Ok(())
    }

    fn commit_acks(&mut self) -> StoreResult<()> {
        self.guarded(|s| s.commit_open_tx())?;
        if self.disk_full.is_some() {
            self.after_commit();
        }
        Ok(())
    }

    fn read_packed(
        &mut self,
        from: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> StoreResult<Vec<Packed>> {
        self.guarded(|s| s.try_read_packed(from, max_bytes, max_messages))
    }

    fn read(&mut self, from: u64, max: usize) -> StoreResult<Vec<Stored>> {
        self.guarded(|s| s.try_read(from, max))
    }

    fn ack(&mut self, range: Range<u64>) -> StoreResult<()> {
        self.guarded(|s| s.try_ack(&range))
    }

    fn stats(&mut self) -> StoreResult<BufferStats> {
        let oldest_ms = self.guarded(|s| s.oldest_ms())?;
        let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Ok(BufferStats {
            pending: self.pending,
            bytes: len(&self.path) + len(&wal_path(&self.path)),
            oldest_ms,
            dropped: self.dropped_since_start,
            memory_only: None,
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Err(e) = self.finish_tx() {
            tracing::error!(error = %e, "cannot commit the buffer on close");
        }
    }
}

/// `268435456` as `256 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn shm_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-shm");
    PathBuf::from(s)
}

fn classify(e: rusqlite::Error) -> LoadError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            LoadError::Corrupt(e.to_string())
        }
        // SQLITE_ERROR while reading our own schema: tables or columns missing.
        Some(ErrorCode::Unknown) => LoadError::Corrupt(format!("not a thingplus-gw buffer: {e}")),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            LoadError::Unusable(e.to_string())
        }
        _ => LoadError::Other(e.to_string()),
    }
}

type SensorMaps = (HashMap<Arc<str>, SensorEntry>, IdMap<Arc<str>>);

fn load_sensors(conn: &Connection) -> rusqlite::Result<SensorMaps> {
    let mut sensors = HashMap::new();
    let mut names = IdMap::default();
    let mut stmt = conn.prepare("SELECT id, name, last_t FROM sensors")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let name: Arc<str> = Arc::from(row.get::<_, String>(1)?);
        let last_t: i64 = row.get(2)?;
        names.insert(id, name.clone());
        sensors.insert(
            name,
            SensorEntry {
                id,
                last_t,
                warned: false,
            },
        );
    }
    Ok((sensors, names))
}

fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

fn set_meta(conn: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, to_i64(value)])
        .map(|_| ())
}

/// The acknowledged cursor (0 in a file without one): chunks with a smaller
/// `last_seq` were delivered.
fn acked_below(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(meta(conn, "acked_below")?.unwrap_or(0).max(0))
}

/// Opens the database file, creating the schema in a new one, and checks it.
fn load(path: &Path, options: &SqliteOptions) -> Result<Loaded, LoadError> {
    let in_memory = path == Path::new(":memory:");
    let conn = Connection::open(path).map_err(classify)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(classify)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(classify)?;
    if !mode.eq_ignore_ascii_case("wal") && !in_memory {
        return Err(LoadError::Other(format!(
            "cannot switch the database to WAL mode (journal_mode is {mode})"
        )));
    }
    let synchronous = match options.fsync {
        Fsync::Always => "FULL",
        Fsync::Period(_) => "NORMAL",
        Fsync::Never => "OFF",
    };
    let wal_pages = match path.parent() {
        Some(dir) if !in_memory => wal_pages(dir),
        _ => WAL_CHECKPOINT_PAGES as u64,
    };
    let wal_limit = (WAL_LIMIT as u64).min(wal_pages * 4096);
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous}; PRAGMA cache_size=-{CACHE_KIB}; \
         PRAGMA journal_size_limit={wal_limit}; PRAGMA foreign_keys=OFF; PRAGMA mmap_size=0; PRAGMA wal_autocheckpoint={wal_pages};"
    ))
    .map_err(classify)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(classify)?;
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(classify)?;
    let mut upgrade_from = None;
    match (version, app) {
        (0, 0) => {
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(classify)?;
            if tables > 0 {
                return Err(LoadError::Corrupt(
                    "not a thingplus-gw buffer (it holds other tables)".into(),
                ));
            }
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 CREATE TABLE chunks(last_seq INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);
                 CREATE TABLE sensors(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_t INTEGER NOT NULL);
                 CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 INSERT INTO meta(key, value) VALUES ('checked_from', 0);
                 PRAGMA application_id={APPLICATION_ID};
                 PRAGMA user_version={SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(classify)?;
        }
        (SCHEMA_VERSION, APPLICATION_ID) => {}
        (v @ (1 | 2), APPLICATION_ID) => upgrade_from = Some(v),
        (v, APPLICATION_ID) if v > SCHEMA_VERSION => {
            return Err(LoadError::Other(format!(
                "it was written by a newer thingplus-gw (schema {v}, this one knows {SCHEMA_VERSION}); it is left untouched: run that version again, or move the file aside to start with an empty buffer (its readings stay in it)"
            )))
        }
        (v, a) => {
            return Err(LoadError::Corrupt(format!(
                "not a thingplus-gw buffer (application_id {a:#x}, user_version {v})"
            )))
        }
    }
    // Chunks acknowledged by the cursor before the last stop go now.
    let acked_below = acked_below(&conn).map_err(classify)?;
    conn.execute(
        "DELETE FROM chunks WHERE last_seq < ?1",
        params![acked_below],
    )
    .map_err(classify)?;
    // Reading every row of the queue once also finds damage early: a column
    // of another type than written (a page of zeros) is damage too.
    let (pending, last, bad): (i64, Option<i64>, i64) = conn
        .query_row(
            "SELECT ifnull(sum(n), 0), max(last_seq), \
                    count(*) FILTER (WHERE typeof(n) != 'integer' OR typeof(first_seq) != 'integer' OR typeof(data) != 'blob') \
             FROM chunks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(classify)?;
    if bad > 0 {
        return Err(LoadError::Corrupt(format!(
            "database disk image is malformed: {bad} rows of readings with damaged columns"
        )));
    }
    let stored_next_seq = meta(&conn, "next_seq").map_err(classify)?;
    let next_seq = stored_next_seq
        .unwrap_or(1)
        .max(last.unwrap_or(0) + 1)
        // Seqs under the cursor are used, even if the counter was not committed.
        .max(acked_below)
        .max(1) as u64;
    let (sensors, names) = load_sensors(&conn).map_err(classify)?;
    let dropped_total = meta(&conn, "dropped")
        .map_err(classify)?
        .unwrap_or(0)
        .max(0) as u64;
    let page_size = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .map_err(classify)?
        .max(512) as u64;
    if let Some(v) = upgrade_from {
        // Its chunks have no checksum; every one written from now on has.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             INSERT OR REPLACE INTO meta(key, value) VALUES ('checked_from', {next_seq});
             PRAGMA user_version={SCHEMA_VERSION};
             COMMIT;"
        ))
        .map_err(classify)?;
        tracing::info!(
            path = %path.display(),
            "buffer upgraded from schema {v} to schema {SCHEMA_VERSION} (the readings in it are kept as they are; those written from now on carry a checksum)"
        );
    }
    // A file without the key (none is written so) checks nothing it holds.
    let checked_from = meta(&conn, "checked_from")
        .map_err(classify)?
        .map_or(u64::MAX, |v| v.max(0) as u64);
    Ok(Loaded {
        checked_from,
        conn,
        next_seq,
        pending: pending.max(0) as u64,
        sensors,
        names,
        dropped_total,
        page_size,
        acked_below: acked_below as u64,
        stored_next_seq: stored_next_seq.unwrap_or(0).max(0) as u64,
    })
}

/// Counts the readings in a damaged file, as far as it can be read.
/// Counts the readings in a damaged file, as far as it can be read: a row
/// whose columns are damaged counts the seqs between the rows around it,
/// and seqs past the newest sound row up to the counter `next_seq` count
/// too (chunks hold consecutive seqs, except those rewritten after a
/// partial acknowledgement).
fn count_readable(path: &Path) -> Option<u64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    let acked = acked_below(&conn).unwrap_or(0);
    let next = meta(&conn, "next_seq").ok().flatten().unwrap_or(0);
    let rows: Option<Vec<(Option<i64>, Option<i64>)>> = conn
        .prepare(
            "SELECT CASE WHEN typeof(last_seq) = 'integer' AND typeof(n) = 'integer' \
                     AND typeof(first_seq) = 'integer' THEN last_seq END, n \
             FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq",
        )
        .and_then(|mut st| {
            st.query_map(params![acked], |r| {
                Ok((r.get(0)?, r.get::<_, Option<i64>>(1).ok().flatten()))
            })?
            .collect()
        })
        .ok();
    drop(conn);
    let _ = fs::remove_file(shm_path(path));
    let rows = rows?;
    let mut held = 0i64;
    let mut prev_last = acked - 1;
    let mut damaged_run = false;
    for (last, n) in rows {
        match (last, n) {
            (Some(last), Some(n)) => {
                if damaged_run {
                    // The damaged rows held the seqs between the sound ones.
                    held += (last - n - prev_last).max(0);
                    damaged_run = false;
                }
                held += n.max(0);
                prev_last = last;
            }
            _ => damaged_run = true,
        }
    }
    if damaged_run || next - 1 > prev_last {
        held += (next - 1 - prev_last).max(0);
    }
    Some(held.max(0) as u64)
}

/// Renames a database (and its WAL) to `buffer.db.<kind>-<time>`.
fn rename_aside(path: &Path, kind: &str) -> io::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "-");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DB_FILE.to_string());
    let mut target = path.with_file_name(format!("{name}.{kind}-{stamp}"));
    let mut i = 1;
    while target.symlink_metadata().is_ok() {
        target = path.with_file_name(format!("{name}.{kind}-{stamp}.{i}"));
        i += 1;
    }
    fs::rename(path, &target)?;
    let wal = wal_path(path);
    if wal.symlink_metadata().is_ok() {
        fs::rename(&wal, wal_path(&target))?;
    }
    let shm = shm_path(path);
    if shm.is_dir() {
        fs::rename(&shm, shm_path(&target))?;
    } else {
        let _ = fs::remove_file(&shm);
    }
    if let Some(dir) = path.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(target)
}

/// Moves a database that cannot be used aside (`kind`: "corrupt" for one
/// SQLite or the checks find damaged, "unusable" for a path that cannot be
/// opened at all), starts a new one in its place, rebuilt from what can
/// still be read of the old one, and logs what was kept and what was lost.
fn rebuild(
    path: &Path,
    reason: &str,
    kind: &str,
    held_hint: Option<u64>,
    options: &SqliteOptions,
) -> Result<(Loaded, Recovery), String> {
    let held = held_hint.or_else(|| count_readable(path));
    let target = rename_aside(path, kind).map_err(|e| {
        format!(
            "it is {} ({reason}) and cannot be moved aside: {e}",
            if kind == "corrupt" {
                "unreadable"
            } else {
                "unusable"
            }
        )
    })?;
    let fresh = |what: &str| {
        load(path, options).map_err(
            |(LoadError::Other(m) | LoadError::Corrupt(m) | LoadError::Unusable(m))| {
                format!(
                    "it was moved aside to {}, but a new one cannot be {what}: {m}",
                    target.display()
                )
            },
        )
    };
    let loaded = fresh("created")?;
    let salvaged = salvage(&target, &loaded.conn);
    let loaded = if salvaged.readings > 0 || salvaged.sensors > 0 {
        drop(loaded);
        fresh("opened")?
    } else {
        loaded
    };
    let lost = held.map(|h| h.saturating_sub(salvaged.readings));
    let what = match (lost, salvaged.skipped.is_empty()) {
        (Some(n), _) => format!("{n} pending readings"),
        (None, false) => format!(
            "the readings of seqs {} (their number cannot be read)",
            salvaged
                .skipped
                .iter()
                .map(|r| format!("{}..{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (None, true) => "the pending readings it held (their number cannot be read)".to_string(),
    };
    let state = if kind == "corrupt" {
        "unreadable"
    } else {
        "unusable"
    };
    tracing::error!(
        path = %path.display(),
        moved_to = %target.display(),
        reason,
        kept = salvaged.readings,
        lost = lost,
        "the buffer database {} is {state} ({reason}); it was moved aside to {} and a new one was started, rebuilt from what could still be read: {} readings kept. Lost: {what}. To rescue more by hand: thingplus-gw buffer export --db {}",
        path.display(),
        target.display(),
        salvaged.readings,
        target.display()
    );
    Ok((
        loaded,
        Recovery {
            reason: reason.to_string(),
            moved_to: target,
            lost_readings: lost,
            kept_readings: salvaged.readings,
        },
    ))
}

/// What [`salvage`] copied.
#[derive(Default)]
struct Salvaged {
    readings: u64,
    sensors: u64,
    /// Seq ranges that could not be read.
    skipped: Vec<Range<i64>>,
}

/// Copies what can still be read of a database moved aside into a new,
/// empty one: its sensors, its counters, and every chunk that passes its
/// checks (written anew, with a checksum). Damaged parts are jumped over
/// as `export` does. Nothing is copied when the sensors cannot be read
/// (the readings could not be named).
fn salvage(old: &Path, new: &Connection) -> Salvaged {
    let Ok(conn) = open_read_only(old) else {
        return Salvaged::default();
    };
    let _ = conn.execute_batch("PRAGMA writable_schema=ON");
    let sensors: Vec<(i64, String, i64)> = match conn
        .prepare("SELECT id, name, last_t FROM sensors")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        }) {
        Ok(s) if !s.is_empty() => s,
        _ => return Salvaged::default(),
    };
    let acked = acked_below(&conn).unwrap_or(0);
    let checked_from = meta(&conn, "checked_from")
        .ok()
        .flatten()
        .map_or(u64::MAX, |v| v.max(0) as u64);
    let old_next = meta(&conn, "next_seq").ok().flatten().unwrap_or(0);
    let dropped = meta(&conn, "dropped").ok().flatten().unwrap_or(0).max(0);
    // The newest row may be the damaged one: the counter bounds it too.
    let last: i64 = conn
        .query_row("SELECT ifnull(max(last_seq), 0) FROM chunks", [], |r| {
            r.get(0)
        })
        .unwrap_or(0)
        .max(old_next.saturating_sub(1));
    let copy = || -> rusqlite::Result<Salvaged> {
        let mut out = Salvaged::default();
        new.execute_batch("BEGIN IMMEDIATE")?;
        for (id, name, last_t) in &sensors {
            new.execute(
                "INSERT OR IGNORE INTO sensors(id, name, last_t) VALUES (?1, ?2, ?3)",
                params![id, name, last_t],
            )?;
            out.sensors += 1;
        }
        let mut stmt = conn.prepare(
            "SELECT last_seq, first_seq, data FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq LIMIT ?2",
        )?;
        // Rows 16 at a time; one at a time next to damage.
        let mut limit = 16;
        let mut insert = new
            .prepare("INSERT INTO chunks(last_seq, first_seq, n, data) VALUES (?1, ?2, ?3, ?4)")?;
        let mut enc = Encoder::new();
        let mut from = acked;
        let mut skip: i64 = 64;
        let mut top = acked.max(old_next);
        while from <= last {
            let batch: rusqlite::Result<Vec<(i64, i64, Vec<u8>)>> = stmt
                .query_map(params![from, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .and_then(|rows| rows.collect());
            match batch {
                Ok(rows) if rows.is_empty() => break,
                Err(_) if limit > 1 => limit = 1,
                Ok(rows) => {
                    skip = 64;
                    limit = 16;
                    for (chunk_last, chunk_first, data) in rows {
                        from = chunk_last + 1;
                        top = top.max(chunk_last + 1);
                        let Ok(records) = require_checksum(&data, chunk_first, checked_from)
                            .and_then(|()| codec::decode_all(&data))
                        else {
                            continue;
                        };
                        for r in records.iter().filter(|r| r.seq >= acked as u64) {
                            enc.push_json(r.seq, r.sensor, r.t, r.value);
                        }
                        if let Some((first, last, n, data)) = enc.finish() {
                            insert.execute(params![
                                to_i64(last),
                                to_i64(first),
                                to_i64(n),
                                data
                            ])?;
                            out.readings += n;
                        }
                    }
                }
                Err(_) => {
                    let end = from.saturating_add(skip).min(last + 1);
                    match out.skipped.last_mut() {
                        Some(prev) if prev.end == from => prev.end = end,
                        _ => out.skipped.push(from..end),
                    }
                    from = end;
                    skip = skip.saturating_mul(2);
                }
            }
        }
        drop(insert);
        set_meta(new, "next_seq", top.max(1) as u64)?;
        set_meta(new, "acked_below", acked as u64)?;
        set_meta(new, "dropped", dropped as u64)?;
        new.execute_batch("COMMIT")?;
        Ok(out)
    };
    let copied = copy();
    drop(conn);
    // Its reader's shared-memory file: not part of what is kept.
    let _ = fs::remove_file(shm_path(old));
    match copied {
        Ok(s) => s,
        Err(e) => {
            let _ = new.execute_batch("ROLLBACK");
            tracing::warn!(path = %old.display(), error = %e, "cannot copy what is readable of {} into the new buffer: {e}", old.display());
            Salvaged::default()
        }
    }
}

/// Free and total bytes of the filesystem holding `dir` (free: for
/// unprivileged use).
struct Space {
    free: u64,
    total: u64,
}

fn space(dir: &Path) -> Option<Space> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 || s.f_blocks == 0 {
        return None;
    }
    let unit = s.f_frsize as u64;
    Some(Space {
        free: (s.f_bavail as u64).saturating_mul(unit),
        total: (s.f_blocks as u64).saturating_mul(unit),
    })
}

impl Space {
    fn floor(&self, min_free_percent: f64) -> u64 {
        (self.total as f64 * min_free_percent / 100.0) as u64
    }
}

/// WAL pages between automatic checkpoints on the filesystem of `dir`:
/// [`WAL_CHECKPOINT_PAGES`], or 1/32 of a small filesystem, so that the
/// WAL cannot fill it.
fn wal_pages(dir: &Path) -> u64 {
    space(dir).map_or(WAL_CHECKPOINT_PAGES as u64, |s| {
        (s.total / 4096 / 32).clamp(64, WAL_CHECKPOINT_PAGES as u64)
    })
}

/// `buffer.reserve`: a file of allocated zeros that keeps space for the
/// store's own needs. When the filesystem is full anyway (another program
/// filled it, or it filled faster than the bounds are checked), it is
/// deleted, so that SQLite can delete the oldest chunks and commit
/// acknowledgements; it is set aside again once there is room.
struct Reserve {
    path: PathBuf,
    bytes: u64,
    present: bool,
}

impl Reserve {
    fn new(dir: &Path, page_size: u64) -> Reserve {
        let bytes = space(dir).map_or(RESERVE_MIN, |s| {
            (s.total / 32).clamp(RESERVE_MIN, RESERVE_MAX) / page_size.max(512) * page_size.max(512)
        });
        let path = dir.join(RESERVE_FILE);
        let present = fs::metadata(&path).is_ok_and(|m| m.len() >= bytes);
        Reserve {
            path,
            bytes,
            present,
        }
    }

    /// Allocates the file when the filesystem has room for it (twice its
    /// size) above the free-space floor. Returns whether it did.
    fn fill_if_room(&mut self, dir: &Path, min_free_percent: f64) -> bool {
        if self.present {
            return false;
        }
        let Some(sp) = space(dir) else { return false };
        if sp.free < sp.floor(min_free_percent) + 2 * self.bytes {
            return false;
        }
        let allocated = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .and_then(|f| {
                // SAFETY: fallocate on a descriptor we own.
                let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, self.bytes as libc::off_t) };
                if r == 0 {
                    return Ok(());
                }
                // A filesystem without fallocate: write the zeros.
                let mut f = f;
                let zeros = vec![0u8; 64 << 10];
                let mut left = self.bytes;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    f.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
                f.sync_data()
            });
        match allocated {
            Ok(()) => {
                self.present = true;
                true
            }
            Err(e) => {
                let _ = fs::remove_file(&self.path);
                tracing::debug!(path = %self.path.display(), error = %e, "cannot allocate the buffer's disk-full reserve");
                false
            }
        }
    }

    /// Deletes the file, giving its space back. Returns whether there was one.
    fn release(&mut self) -> bool {
        let was = self.present || self.path.exists();
        let _ = fs::remove_file(&self.path);
        self.present = false;
        was
    }
}

/// Percentage of the filesystem holding `dir` that is free for unprivileged use.
pub fn free_percent(dir: &Path) -> Option<f64> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 || s.f_blocks == 0 {
        return None;
    }
    Some(s.f_bavail as f64 * 100.0 / s.f_blocks as f64)
}

/// An exclusive `flock` on `buffer.lock`, released when the process ends
/// however it ends.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, OpenError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| OpenError::Dir {
            dir: dir.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        // A child being spawned by another thread of this process holds a
        // copy of our previous lock's descriptor until its exec closes it, so
        // a lock that names this very process is retried for a moment before
        // it counts as held.
        let own_retry_until = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(err));
            }
            let mut text = String::new();
            let _ = file.seek(io::SeekFrom::Start(0));
            let _ = file.read_to_string(&mut text);
            let pid: Option<u32> = text.trim().parse().ok();
            if pid == Some(std::process::id()) && std::time::Instant::now() < own_retry_until {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            return Err(OpenError::Locked {
                dir: dir.to_owned(),
                pid,
            });
        }
        file.set_len(0).map_err(io_err)?;
        file.seek(io::SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_err)?;
        Ok(DirLock { _file: file })
    }
}

/// The pid of the process holding `dir`, if one does.
pub fn lock_holder(dir: &Path) -> Option<Option<u32>> {
    let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
    // SAFETY: flock on a descriptor we own; a shared lock is released on close.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return None;
    }
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    Some(text.trim().parse().ok())
}

// ------------------------------------------------------------- offline access

/// What `thingplus-gw buffer check` reports about a database file.
#[derive(Clone, Debug, Default)]
pub struct Inspection {
    pub db_bytes: u64,
    pub wal_bytes: u64,
    pub page_size: u64,
    pub pages: u64,
    pub free_pages: u64,
    /// Rows of the `chunks` table.
    pub rows: Option<u64>,
    /// Readings in them.
    pub pending: Option<u64>,
    pub sensors: Vec<SensorSummary>,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    pub next_seq: Option<u64>,
    pub dropped: Option<u64>,
    /// `PRAGMA integrity_check` lines ("ok" when sound).
    pub integrity: Vec<String>,
    /// What could not be read.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SensorSummary {
    pub name: String,
    pub pending: u64,
    pub newest_ms: Option<i64>,
}

fn open_read_only(path: &Path) -> Result<Connection, String> {
    if !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    Ok(conn)
}

/// Reads a buffer database without changing it (the daemon may be running).
pub fn inspect(path: &Path, integrity: bool) -> Result<Inspection, String> {
    let conn = open_read_only(path)?;
    let len = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut out = Inspection {
        db_bytes: len(path),
        wal_bytes: len(&wal_path(path)),
        ..Inspection::default()
    };
    let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0));
    let mut errors = Vec::new();
    macro_rules! get {
        ($what:expr, $sql:expr) => {
            match one($sql) {
                Ok(v) => v,
                Err(rusqlite::Error::QueryReturnedNoRows) => None,
                Err(e) => {
                    errors.push(format!("{}: {e}", $what));
                    None
                }
            }
        };
    }
    out.page_size = get!("page size", "PRAGMA page_size").unwrap_or(0) as u64;
    out.pages = get!("page count", "PRAGMA page_count").unwrap_or(0) as u64;
    out.free_pages = get!("free pages", "PRAGMA freelist_count").unwrap_or(0) as u64;
    // Chunks under the acknowledged cursor are not pending (deleted at the next start).
    let acked = acked_below(&conn).unwrap_or(0);
    out.rows = get!(
        "rows",
        &format!("SELECT count(*) FROM chunks WHERE last_seq >= {acked}")
    )
    .map(|n| n as u64);
    let last = get!("next seq", "SELECT max(last_seq) FROM chunks");
    let stored_next = get!("next seq", "SELECT value FROM meta WHERE key = 'next_seq'");
    if errors.is_empty() {
        out.next_seq = Some(
            stored_next
                .unwrap_or(1)
                .max(last.unwrap_or(0) + 1)
                .max(acked) as u64,
        );
    }
    out.dropped = match meta(&conn, "dropped") {
        Ok(v) => Some(v.unwrap_or(0).max(0) as u64),
        Err(e) => {
            errors.push(format!("dropped: {e}"));
            None
        }
    };
    // Every reading, per sensor: this decodes the whole queue.
    let names: HashMap<i64, String> =
        match conn
            .prepare("SELECT id, name FROM sensors")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<HashMap<_, _>>>()
            }) {
            Ok(n) => n,
            Err(e) => {
                errors.push(format!("sensors: {e}"));
                HashMap::new()
            }
        };
    let mut per_sensor: HashMap<i64, (u64, i64)> = HashMap::new();
    let mut pending = 0u64;
    let scan = conn
        .prepare("SELECT last_seq, data FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq")
        .and_then(|mut st| {
            let mut rows = st.query(params![acked])?;
            while let Some(row) = rows.next()? {
                let last: i64 = row.get(0)?;
                let data = row.get_ref(1)?.as_blob()?;
                let records = Decoder::new(data).and_then(|d| d.collect::<Result<Vec<_>, _>>());
                match records {
                    Ok(records) => {
                        for r in records {
                            pending += 1;
                            out.oldest_ms.get_or_insert(r.t);
                            out.newest_ms = Some(r.t);
                            let e = per_sensor.entry(r.sensor).or_insert((0, r.t));
                            e.0 += 1;
                            e.1 = e.1.max(r.t);
                        }
                    }
                    Err(e) => errors.push(format!("chunk ending at seq {last}: {e}")),
                }
            }
            Ok(())
        });
    match scan {
        Ok(()) => out.pending = Some(pending),
        Err(e) => errors.push(format!("readings: {e}")),
    }
    let mut sensors: Vec<SensorSummary> = names
        .iter()
        .map(|(id, name)| SensorSummary {
            name: name.clone(),
            pending: per_sensor.get(id).map_or(0, |e| e.0),
            newest_ms: per_sensor.get(id).map(|e| e.1),
        })
        .collect();
    sensors.sort_by(|a, b| a.name.cmp(&b.name));
    out.sensors = sensors;
    if integrity {
        let lines = conn.prepare("PRAGMA integrity_check").and_then(|mut st| {
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
        match lines {
            Ok(l) => out.integrity = l,
            Err(e) => out.integrity = vec![e.to_string()],
        }
    }
    out.errors = errors;
    Ok(out)
}

/// What `export` wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportSummary {
    pub readings: u64,
    /// Seq ranges that could not be read (damaged pages), skipped.
    pub skipped: Vec<Range<u64>>,
}

/// Writes every reading of a buffer database as JSON lines, oldest first:
/// `{"seq":1,"sensor":"id","time":1700000000000,"value":27.5}`. Damaged parts
/// are skipped and reported, so that as much as possible is rescued.
pub fn export(path: &Path, out: &mut dyn io::Write) -> Result<ExportSummary, String> {
    let conn = open_read_only(path)?;
    // Lets SQLite read a file shorter than its header says (truncated), as
    // far as it goes; nothing is written.
    let _ = conn.execute_batch("PRAGMA writable_schema=ON");
    let names: HashMap<i64, String> = conn
        .prepare("SELECT id, name FROM sensors")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<HashMap<_, _>>>()
        })
        .map_err(|e| format!("{}: cannot read the sensor names: {e}", path.display()))?;
    // The last seq: from the table or from the counter, whichever is
    // larger (the newest row may be the damaged one).
    let newest = conn.query_row("SELECT ifnull(max(last_seq), 0) FROM chunks", [], |r| {
        r.get::<_, i64>(0)
    });
    let counter = meta(&conn, "next_seq").map(|v| v.unwrap_or(1) - 1);
    let last: i64 = match (newest, counter) {
        (Ok(a), Ok(b)) => a.max(b),
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => a,
        (Err(e), Err(_)) => {
            return Err(format!("{}: cannot read the readings: {e}", path.display()))
        }
    };
    let mut summary = ExportSummary::default();
    // Chunks under the acknowledged cursor were delivered.
    let mut from: i64 = acked_below(&conn).unwrap_or(0);
    let mut skip: i64 = 1000;
    let mut line = String::new();
    let mut stmt = conn
        .prepare("SELECT last_seq, first_seq, data FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq LIMIT 16")
        .map_err(|e| e.to_string())?;
    let skipped = |summary: &mut ExportSummary, r: Range<u64>| match summary.skipped.last_mut() {
        Some(prev) if prev.end == r.start => prev.end = r.end,
        _ => summary.skipped.push(r),
    };
    while from <= last {
        let batch: rusqlite::Result<Vec<(i64, i64, Vec<u8>)>> = stmt
            .query_map(params![from], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect());
        match batch {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                skip = 1000;
                for (chunk_last, chunk_first, data) in rows {
                    let mut next = chunk_first.max(from) as u64;
                    let decoded = Decoder::new(&data).and_then(|d| {
                        for rec in d {
                            let rec = rec?;
                            if rec.seq < from as u64 {
                                continue;
                            }
                            line.clear();
                            line.push_str("{\"seq\":");
                            line.push_str(&rec.seq.to_string());
                            line.push_str(",\"sensor\":");
                            let name = names
                                .get(&rec.sensor)
                                .cloned()
                                .unwrap_or_else(|| format!("unknown-sensor-{}", rec.sensor));
                            crate::reading::write_json_string(&name, &mut line);
                            line.push_str(",\"time\":");
                            line.push_str(&rec.t.to_string());
                            line.push_str(",\"value\":");
                            line.push_str(&String::from_utf8_lossy(rec.value));
                            line.push_str("}\n");
                            if out.write_all(line.as_bytes()).is_err() {
                                return Err(codec::DecodeError("write failed"));
                            }
                            summary.readings += 1;
                            next = rec.seq + 1;
                        }
                        Ok(())
                    });
                    if let Err(e) = decoded {
                        if e.0 == "write failed" {
                            return Err("cannot write the output".into());
                        }
                        skipped(&mut summary, next..chunk_last as u64 + 1);
                    }
                    from = chunk_last + 1;
                }
            }
            Err(_) => {
                // Jump over the damage, further each time it goes on.
                let end = from.saturating_add(skip).min(last + 1);
                skipped(&mut summary, from as u64..end as u64);
                from = end;
                skip = skip.saturating_mul(2);
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Value;

    #[test]
    fn a_small_step_back_keeps_the_order_a_large_one_follows_the_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        let t0 = 1_800_000_000_000;
        let times = |s: &mut SqliteStore| -> Vec<i64> {
            s.read(0, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|r| r.reading.time_ms)
                .collect()
        };
        let at = |t: i64| Reading::new("a", t, Value::Number(1.0));
        // 30 s back: moved just after the newest.
        s.append(vec![at(t0), at(t0 - 30_000)]).unwrap();
        s.commit().unwrap();
        assert_eq!(times(&mut s), [t0, t0 + 1]);
        // An hour back: the newest time was wrong; the clock's time is kept,
        // and the next readings follow it, also after a reopen.
        s.append(vec![at(t0 - 3_600_000)]).unwrap();
        s.commit().unwrap();
        drop(s);
        let mut s = store(tmp.path());
        s.append(vec![at(t0 - 3_599_000)]).unwrap();
        s.commit().unwrap();
        assert_eq!(times(&mut s), [t0, t0 + 1, t0 - 3_600_000, t0 - 3_599_000]);
    }

    fn store(dir: &Path) -> SqliteStore {
        SqliteStore::open(dir, SqliteOptions::unbounded(Fsync::Never)).unwrap()
    }

    fn fill(s: &mut SqliteStore, n: usize) {
        let readings: Vec<Reading> = (0..n)
            .map(|i| {
                let sensor = ["a", "b"][i % 2];
                Reading::new(
                    sensor,
                    1_700_000_000_000 + i as i64,
                    Value::Number(i as f64),
                )
            })
            .collect();
        s.append(readings).unwrap();
        s.commit().unwrap();
    }

    fn rows_under_cursor(s: &SqliteStore) -> i64 {
        s.conn
            .query_row(
                "SELECT count(*) FROM chunks WHERE last_seq < ?1",
                params![to_i64(s.acked_below)],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn a_drains_acknowledgements_move_the_cursor_and_chunks_go_later() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 5000);
        let first = s.read_packed(0, 8192, 3).unwrap();
        // Read ahead, as the session does, before the PUBACKs.
        let more = s
            .read_packed(first.last().unwrap().seqs.end, 8192, 3)
            .unwrap();
        for m in first.iter().chain(&more) {
            s.ack(m.seqs.clone()).unwrap();
            s.commit_acks().unwrap();
            assert_eq!(s.acked_below, m.seqs.end, "the fast way was taken");
        }
        let acked: usize = first.iter().chain(&more).map(|m| m.count).sum();
        assert_eq!(s.stats().unwrap().pending, 5000 - acked as u64);
        assert!(
            rows_under_cursor(&s) > 0,
            "chunks are deleted later, not per message"
        );
        // Nothing under the cursor is read again, before or after a reopen.
        let rest = s.read(0, usize::MAX).unwrap();
        assert_eq!(rest.len(), 5000 - acked);
        assert_eq!(rest[0].seq, s.acked_below);
        drop(s);
        let mut s = store(tmp.path());
        assert_eq!(rows_under_cursor(&s), 0, "purged at open");
        assert_eq!(s.stats().unwrap().pending, 5000 - acked as u64);
        assert_eq!(s.read(0, usize::MAX).unwrap(), rest);
    }

    #[test]
    fn the_periodic_commit_deletes_the_acknowledged_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 3000);
        let msgs = s.read_packed(0, 8192, 2).unwrap();
        for m in &msgs {
            s.ack(m.seqs.clone()).unwrap();
        }
        s.commit_acks().unwrap();
        assert!(rows_under_cursor(&s) > 0);
        s.commit().unwrap();
        assert_eq!(rows_under_cursor(&s), 0);
    }

    #[test]
    fn an_acknowledgement_other_than_a_drains_takes_the_exact_way_and_then_the_fast_one_again() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 4000);
        let msgs = s.read_packed(0, 8192, 4).unwrap();
        // Half of the first message: not a chunk boundary.
        let r = &msgs[0].seqs;
        let mid = r.start + (r.end - r.start) / 2;
        s.ack(r.start..mid).unwrap();
        assert_eq!(s.acked_below, mid, "exact way; the cursor follows");
        assert!(
            s.handed.is_empty(),
            "a chunk was rewritten: the list is dropped"
        );
        s.ack(mid..r.end).unwrap();
        // A new read from the session's position starts a new list...
        let next = s.read_packed(msgs[1].seqs.start, 8192, 2).unwrap();
        assert_eq!(next[0].seqs, msgs[1].seqs);
        // ...which the cursor has reached: fast again.
        s.ack(next[0].seqs.clone()).unwrap();
        assert_eq!(s.acked_below, next[0].seqs.end);
        assert!(
            rows_under_cursor(&s) > 0,
            "fast way: the chunks stay for now"
        );
        let left = s.read(0, usize::MAX).unwrap();
        assert_eq!(left[0].seq, next[0].seqs.end);
        assert_eq!(s.stats().unwrap().pending, left.len() as u64);
    }

    #[test]
    fn a_read_again_from_a_later_message_keeps_the_fast_way_once_the_earlier_ones_are_acknowledged()
    {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 6000);
        let m = s.read_packed(0, 8192, 2).unwrap();
        // The session reads again from its second message (its queue was
        // full), while the first is still in flight.
        let again = s.read_packed(m[1].seqs.start, 8192, 2).unwrap();
        assert_eq!(again[0].seqs, m[1].seqs);
        // The first one's PUBACK: not in the new list, the exact way...
        s.ack(m[0].seqs.clone()).unwrap();
        assert_eq!(s.acked_below, m[0].seqs.end);
        assert!(!s.handed.is_empty(), "later chunks were not touched");
        // ...and the next ones the fast way again.
        for r in &again {
            s.ack(r.seqs.clone()).unwrap();
            assert_eq!(s.acked_below, r.seqs.end);
        }
        assert!(rows_under_cursor(&s) > 0, "fast way: chunks deleted later");
        let left = s.read(0, usize::MAX).unwrap();
        assert_eq!(left[0].seq, again[1].seqs.end);
        assert_eq!(s.stats().unwrap().pending, left.len() as u64);
    }

    #[test]
    fn a_chunk_whose_head_disagrees_with_its_row_is_dropped_as_damaged_not_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 3000);
        let (last, n, mut data): (i64, i64, Vec<u8>) = s
            .conn
            .query_row(
                "SELECT last_seq, n, data FROM chunks ORDER BY last_seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        // Its count of readings, damaged (the row still says `n`).
        data[2] = 0xff;
        data[3] = 0x7f;
        s.conn
            .execute(
                "UPDATE chunks SET data = ?1 WHERE last_seq = ?2",
                params![data, last],
            )
            .unwrap();
        let msgs = s.read_packed(0, 8192, 4).unwrap();
        assert!(
            msgs[0].seqs.start > last as u64,
            "the damaged chunk is not sent"
        );
        assert!(msgs.iter().all(|m| m.count < 400));
        assert_eq!(s.stats().unwrap().pending, 3000 - n as u64);
        for m in &msgs {
            s.ack(m.seqs.clone()).unwrap();
        }
        let sent: usize = msgs.iter().map(|m| m.count).sum();
        assert_eq!(s.stats().unwrap().pending, 3000 - n as u64 - sent as u64);
    }

    #[test]
    fn a_statement_failing_in_an_exact_acknowledgement_undoes_the_whole_acknowledgement() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 600);
        // The chunk's rest cannot be written again (as on a full disk).
        s.conn
            .execute_batch(
                "CREATE TRIGGER fail BEFORE INSERT ON chunks BEGIN SELECT RAISE(ABORT, 'injected'); END;",
            )
            .unwrap();
        assert!(s.ack(1..50).is_err());
        s.conn.execute_batch("DROP TRIGGER fail").unwrap();
        assert_eq!(s.stats().unwrap().pending, 600);
        s.commit().unwrap();
        drop(s);
        let mut s = store(tmp.path());
        let all = s.read(0, usize::MAX).unwrap();
        assert_eq!(all.len(), 600, "the chunk's other readings were kept");
        assert_eq!(all[0].seq, 1);
        // And the acknowledgement works once the disk has room.
        s.ack(1..50).unwrap();
        assert_eq!(s.stats().unwrap().pending, 551);
    }

    #[test]
    fn a_chunk_passed_off_as_an_older_version_without_its_checksum_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 3000);
        let (last, n, data): (i64, i64, Vec<u8>) = s
            .conn
            .query_row(
                "SELECT last_seq, n, data FROM chunks ORDER BY last_seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        // A well-formed version 2 chunk: what a damaged version byte (and
        // checksum) could make of it.
        let v2 = [&[2u8][..], &data[5..]].concat();
        assert_eq!(codec::decode_all(&v2).unwrap().len() as i64, n);
        s.conn
            .execute(
                "UPDATE chunks SET data = ?1 WHERE last_seq = ?2",
                params![v2, last],
            )
            .unwrap();
        let all = s.read(0, usize::MAX).unwrap();
        assert_eq!(all[0].seq, last as u64 + 1, "not returned");
        let stats = s.stats().unwrap();
        assert_eq!(stats.dropped, n as u64, "counted");
        assert_eq!(stats.pending, 3000 - n as u64);
    }

    #[test]
    fn a_failed_commit_keeps_its_readings_and_sensors_for_the_next_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 100);
        // The chunks cannot be written (as on a full disk) for one commit.
        s.conn
            .execute_batch(
                "CREATE TEMP TRIGGER fail BEFORE INSERT ON chunks BEGIN SELECT RAISE(FAIL, 'injected'); END;",
            )
            .unwrap();
        let fresh: Vec<Reading> = (0..3000)
            .map(|i| Reading::new("new-sensor", 1_800_000_000_000 + i, Value::Number(i as f64)))
            .collect();
        s.append(fresh.clone()).unwrap_or_default();
        assert!(s.commit().is_err());
        // Explicitly rolled back, as SQLite does on a full disk.
        if !s.conn.is_autocommit() {
            s.conn.execute_batch("ROLLBACK").unwrap();
            let e = rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            );
            s.after_error(&e);
        }
        s.conn.execute_batch("DROP TRIGGER fail").unwrap();
        assert_eq!(s.stats().unwrap().pending, 3100);
        s.commit().unwrap();
        drop(s);
        let mut s = store(tmp.path());
        let all = s.read(0, usize::MAX).unwrap();
        assert_eq!(all.len(), 3100);
        let got: Vec<Reading> = all[100..].iter().map(|x| x.reading.clone()).collect();
        assert_eq!(got, fresh, "the same readings, under their sensor's name");
        assert_eq!(s.stats().unwrap().dropped, 0);
    }

    #[test]
    fn acknowledging_seqs_never_given_does_not_hide_later_readings() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 600);
        let msgs = s.read_packed(0, 1 << 20, 1).unwrap();
        s.ack(0..u64::MAX).unwrap();
        assert_eq!(s.stats().unwrap().pending, 0);
        assert!(s.acked_below <= s.next_seq());
        fill(&mut s, 10);
        assert_eq!(s.read(0, usize::MAX).unwrap().len(), 10);
        assert_eq!(msgs[0].count, 600);
    }
}
