//! The durable store: SQLite in WAL mode in `[buffer] dir`, readings kept in
//! compact batches ("chunks") of up to [`CHUNK_READINGS`] readings per row.
//! `docs/buffer.md` describes the format and gives the measurements behind
//! the choices below.
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
//!   committed (see `disk_full`).
//!
//! Schema (version 3, `PRAGMA application_id` = "TPGW"; a file of version 1
//! or 2 is upgraded at open, see `schema`):
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
//! Chunks rather than a row per reading: SQLite's cost per row (insert,
//! read, delete) would dominate a drain. Each chunk keeps its sensors'
//! readings as the very `t,v,...` text a values message carries, so that
//! [`Store::read_packed`] builds a message by copying a few runs of bytes
//! per chunk: a drain decodes no reading and formats no number, at the
//! price of about twice the bytes on disk. Messages are closed at chunk
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
//! before anything else reads or changes chunks, and at open), since one
//! delete per message would cost as much as the rest of the acknowledgement.
//!
//! One file per concern: `schema` (opening the file), `append`,
//! `read`, `ack`, `commit`, `bounds`, `disk_full`, `recovery`
//! (moving a damaged file aside and salvaging it), `lock`, and
//! `inspect` (the offline `buffer check` and `buffer export`).

mod ack;
mod append;
mod bounds;
mod commit;
mod disk_full;
mod inspect;
mod lock;
mod read;
mod recovery;
mod schema;

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, ErrorCode};

use super::codec::Encoder;
use super::{BufferStats, Packed, Store, StoreError, StoreResult, Stored};
use crate::config::{BufferConfig, Fsync};
use crate::fasthash::FxHashMap;
use crate::reading::Reading;
use ack::HandedChunk;
use append::{SensorEntry, TailEntry};
use bounds::Episode;
use disk_full::{DiskFull, Reserve};
use lock::DirLock;
use recovery::rebuild;
use schema::{load, LoadError};

pub use bounds::free_percent;
pub use inspect::{export, inspect, ExportSummary, Inspection, SensorSummary};
pub use lock::lock_holder;
pub use schema::APPLICATION_ID;
pub const DB_FILE: &str = "buffer.db";
pub const LOCK_FILE: &str = "buffer.lock";
pub const RESERVE_FILE: &str = "buffer.reserve";

/// SQLite's page cache: the backlog stays on disk, not in memory.
const CACHE_KIB: i64 = 1024;
/// The WAL is cut back to this size after a checkpoint.
const WAL_LIMIT: i64 = 4 << 20;
/// WAL pages that trigger an automatic checkpoint (SQLite's default: 1000).
/// A checkpoint fsyncs the WAL and the database even at synchronous=NORMAL,
/// and a drain commits its acknowledgements often: fewer checkpoints keep
/// those fsyncs out of most of its commits. The WAL may reach 16 MiB (at
/// 4 KiB pages) between checkpoints; durability does not depend on it
/// (commits are in the WAL either way; the periodic sync checkpoints).
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

/// The kind of a failed statement, for the store's callers.
fn failed(e: rusqlite::Error) -> StoreError {
    let text = e.to_string();
    if is_corrupt(&e) {
        StoreError::Corrupt(text)
    } else if is_full(&e) {
        StoreError::Full(text)
    } else {
        StoreError::Io(text)
    }
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

/// Maps keyed by sensor ids: decoding a backlog looks one up per reading.
type IdMap<V> = FxHashMap<i64, V>;

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

#[cfg(test)]
mod testing {
    use rusqlite::params;

    use super::*;
    use crate::buffer::Store;
    use crate::reading::{Reading, Value};

    pub(super) fn store(dir: &Path) -> SqliteStore {
        SqliteStore::open(dir, SqliteOptions::unbounded(Fsync::Never)).unwrap()
    }

    pub(super) fn fill(s: &mut SqliteStore, n: usize) {
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

    pub(super) fn rows_under_cursor(s: &SqliteStore) -> i64 {
        s.conn
            .query_row(
                "SELECT count(*) FROM chunks WHERE last_seq < ?1",
                params![to_i64(s.acked_below)],
                |r| r.get(0),
            )
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;

    use super::*;

    fn sqlite_error(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn a_failed_statement_is_told_apart_by_what_the_caller_can_do() {
        let full = failed(sqlite_error(ffi::SQLITE_FULL));
        assert!(matches!(full, StoreError::Full(_)), "{full:?}");
        assert_eq!(full.to_string(), sqlite_error(ffi::SQLITE_FULL).to_string());
        for code in [ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB] {
            let e = failed(sqlite_error(code));
            assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
        }
        // A column of another type than written is damage too.
        let e = failed(rusqlite::Error::InvalidColumnType(
            0,
            "n".into(),
            rusqlite::types::Type::Text,
        ));
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
        for code in [
            ffi::SQLITE_IOERR,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_CONSTRAINT,
        ] {
            let e = failed(sqlite_error(code));
            assert!(matches!(e, StoreError::Io(_)), "{e:?}");
        }
    }
}
