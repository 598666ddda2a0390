//! The durable store: SQLite in WAL mode in `[buffer] dir`, one row per reading.
//!
//! Files in the directory:
//! - `buffer.db` (+ `buffer.db-wal`, `buffer.db-shm` while open): the queue;
//! - `buffer.lock`: held (`flock`) by the process using the directory, and
//!   holding its pid, so that a second daemon gets a clear error;
//! - `buffer.db.corrupt-<time>` (+ `-wal`): a database found unreadable,
//!   moved aside for `thingplus-gw buffer export --db`.
//!
//! Schema (version 1, `PRAGMA application_id` = "TPGW"):
//! - `readings(seq INTEGER PRIMARY KEY AUTOINCREMENT, sensor, t, v)`: one row
//!   per reading; `seq` is the place in the queue and is never reused, not
//!   even once the table is empty. `v` is an INTEGER or REAL for numbers
//!   (NULL for NaN), TEXT for strings, and a BLOB of JSON for objects.
//! - `sensors(id, name, last_t)`: sensor names as small integers, and the time
//!   of each sensor's newest reading, which keeps times increasing across
//!   restarts even if the clock stepped back (Thing+ drops older values).
//! - `meta(key, value)`: counters (`dropped`).
//!
//! One row per reading rather than compact batches: plain SQLite inserts
//! reach millions of rows per second on a small machine (see
//! `benches/buffer.rs`), far above what sensors produce, while a row per
//! reading keeps acknowledgements exact (a message never has to match a
//! batch), bounds exact, and the file readable with the `sqlite3` shell.
//!
//! Durability (`[buffer] fsync`): changes are committed at least every
//! [`super::COMMIT_INTERVAL`]; what is committed survives a crash of the
//! process. "always" opens the database with `synchronous=FULL`, so every
//! commit is on the disk; a period opens it with `synchronous=NORMAL` and
//! [`Store::sync`] runs a checkpoint once per period, which fsyncs the WAL and
//! the database; "never" uses `synchronous=OFF` and leaves flushing to the
//! kernel.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::{BufferStats, Store, StoreError, StoreResult, Stored};
use crate::config::{BufferConfig, Fsync};
use crate::sensor::{Reading, Value};

pub const DB_FILE: &str = "buffer.db";
pub const LOCK_FILE: &str = "buffer.lock";
const SCHEMA_VERSION: i64 = 1;
/// "TPGW": marks the file as a thingplus-gw buffer.
pub const APPLICATION_ID: i64 = 0x5450_4757;
/// SQLite's page cache: the backlog stays on disk, not in memory.
const CACHE_KIB: i64 = 1024;
/// The WAL is cut back to this size after a checkpoint.
const WAL_LIMIT: i64 = 4 << 20;
/// Appends between two checks of the size bounds (also checked at commit).
const BOUNDS_CHECK_EVERY: usize = 1024;
/// The smallest bound honoured, whatever `max_size` says.
const MIN_PAGES: u64 = 64;

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
    /// Readings it held, when they could be counted.
    pub lost_readings: Option<u64>,
}

struct SensorEntry {
    id: i64,
    last_t: i64,
    /// A clamped time was logged for this sensor.
    warned: bool,
}

/// What was read from a database file when it was opened.
struct Loaded {
    conn: Connection,
    next_seq: u64,
    pending: u64,
    sensors: HashMap<Arc<str>, SensorEntry>,
    names: HashMap<i64, Arc<str>>,
    dropped_total: u64,
    page_size: u64,
}

enum LoadError {
    /// The file is not a readable thingplus-gw buffer: move it aside.
    Corrupt(String),
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
    pending: u64,
    sensors: HashMap<Arc<str>, SensorEntry>,
    names: HashMap<i64, Arc<str>>,
    dirty_sensors: Vec<i64>,
    page_size: u64,
    since_check: usize,
    dropped_since_start: u64,
    dropped_total: u64,
    meta_dirty: bool,
    episode: Option<Episode>,
    recoveries: Vec<Recovery>,
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn to_i64(x: u64) -> i64 {
    x.min(i64::MAX as u64) as i64
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
                let rec = move_aside(&path, &reason, None).map_err(|source| OpenError::Dir {
                    dir: dir.to_owned(),
                    source,
                })?;
                recoveries.push(rec);
                match load(&path, &options) {
                    Ok(l) => l,
                    Err(LoadError::Other(message) | LoadError::Corrupt(message)) => {
                        return Err(OpenError::Db { path, message })
                    }
                }
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
            pending: loaded.pending,
            sensors: loaded.sensors,
            names: loaded.names,
            dirty_sensors: Vec::new(),
            page_size: loaded.page_size,
            since_check: 0,
            dropped_since_start: 0,
            dropped_total: loaded.dropped_total,
            meta_dirty: false,
            episode: None,
            recoveries,
        };
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
        let r = self.begin().and_then(|()| self.enforce_bounds());
        let r = r.and_then(|()| self.finish_tx());
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot apply the buffer bounds");
            self.after_error(&e);
        }
    }

    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.in_tx {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_tx = true;
        }
        Ok(())
    }

    fn sensor_id(&mut self, name: &Arc<str>, t: i64) -> rusqlite::Result<(i64, i64)> {
        if let Some(e) = self.sensors.get_mut(name) {
            let t = if t <= e.last_t {
                if !e.warned {
                    e.warned = true;
                    tracing::warn!(
                        sensor_id = %name,
                        time_ms = t,
                        newest_buffered_ms = e.last_t,
                        "a reading is older than this sensor's newest buffered one (did the clock step back?): its time is moved forward to keep the order Thing+ requires"
                    );
                }
                e.last_t.saturating_add(1)
            } else {
                t
            };
            e.last_t = t;
            return Ok((e.id, t));
        }
        self.conn
            .prepare_cached("INSERT INTO sensors(name, last_t) VALUES (?1, ?2)")?
            .execute(params![&**name, t])?;
        let id = self.conn.last_insert_rowid();
        self.sensors.insert(
            name.clone(),
            SensorEntry {
                id,
                last_t: t,
                warned: false,
            },
        );
        self.names.insert(id, name.clone());
        Ok((id, t))
    }

    fn try_append(&mut self, readings: &[Reading]) -> rusqlite::Result<()> {
        self.begin()?;
        for r in readings {
            let (sensor, t) = self.sensor_id(&r.sensor_id, r.time_ms)?;
            self.dirty_sensors.push(sensor);
            self.conn
                .prepare_cached("INSERT INTO readings(seq, sensor, t, v) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![
                    to_i64(self.next_seq),
                    sensor,
                    t,
                    SqlValue(&r.value)
                ])?;
            self.next_seq += 1;
            self.pending += 1;
            self.since_check += 1;
            if self.since_check >= BOUNDS_CHECK_EVERY {
                self.enforce_bounds()?;
            }
        }
        if self.dirty_sensors.len() > 256 {
            self.dirty_sensors.sort_unstable();
            self.dirty_sensors.dedup();
        }
        Ok(())
    }

    fn try_read(&mut self, from: u64, max: usize) -> rusqlite::Result<Vec<Stored>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, sensor, t, v FROM readings WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![to_i64(from), to_i64(max as u64)])?;
        let mut out = Vec::with_capacity(max.min(4096));
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let sensor: i64 = row.get(1)?;
            let name = match self.names.get(&sensor) {
                Some(n) => n.clone(),
                None => Arc::from(format!("unknown-sensor-{sensor}")),
            };
            out.push(Stored {
                seq: seq as u64,
                reading: Reading {
                    sensor_id: name,
                    time_ms: row.get(2)?,
                    value: value_from_sql(row.get_ref(3)?),
                },
            });
        }
        Ok(out)
    }

    fn try_ack(&mut self, range: &Range<u64>) -> rusqlite::Result<()> {
        if range.start >= range.end || self.pending == 0 {
            return Ok(());
        }
        self.begin()?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM readings WHERE seq >= ?1 AND seq < ?2")?
            .execute(params![to_i64(range.start), to_i64(range.end)])?;
        self.pending = self.pending.saturating_sub(n as u64);
        Ok(())
    }

    /// Writes what is kept in memory between commits, checks the bounds, commits.
    fn finish_tx(&mut self) -> rusqlite::Result<()> {
        if !self.in_tx {
            return Ok(());
        }
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
        if self.meta_dirty {
            self.conn
                .prepare_cached("INSERT INTO meta(key, value) VALUES ('dropped', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
                .execute(params![to_i64(self.dropped_total)])?;
            self.meta_dirty = false;
        }
        self.conn.execute_batch("COMMIT")?;
        self.in_tx = false;
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
        let pragma = |conn: &Connection, name: &str| -> rusqlite::Result<u64> {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                .map(|v| v.max(0) as u64)
        };
        let page_count = pragma(&self.conn, "page_count")?;
        let used = page_count.saturating_sub(pragma(&self.conn, "freelist_count")?);
        let max_pages = (self.options.max_size / self.page_size).max(MIN_PAGES);
        let floor_hit = self.options.min_free_percent > 0.0
            && free_percent(&self.dir).is_some_and(|p| p < self.options.min_free_percent);
        let cap = if floor_hit {
            max_pages.min(page_count.max(MIN_PAGES / 4))
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
            if used <= target || self.pending == 0 {
                break;
            }
            let per_page = self.pending as f64 / used.max(1) as f64;
            let n = (((used - target) as f64) * per_page).ceil() as u64 + 1;
            dropped += self.drop_oldest(n)?;
            let page_count = pragma(&self.conn, "page_count")?;
            used = page_count.saturating_sub(pragma(&self.conn, "freelist_count")?);
        }
        if dropped == 0 {
            return Ok(());
        }
        match &mut self.episode {
            Some(ep) => ep.dropped += dropped,
            None => {
                let reason = if floor_hit {
                    format!(
                        "less than {}% free on the filesystem of {}",
                        self.options.min_free_percent,
                        self.dir.display()
                    )
                } else {
                    format!("max_size {} reached", format_size(self.options.max_size))
                };
                tracing::warn!(
                    dropped,
                    pending = self.pending,
                    "buffer full ({reason}): dropping the oldest readings so that sampling goes on; the count follows when there is room again"
                );
                self.episode = Some(Episode { reason, dropped });
            }
        }
        Ok(())
    }

    fn drop_oldest(&mut self, n: u64) -> rusqlite::Result<u64> {
        let deleted = if n >= self.pending {
            self.conn.execute("DELETE FROM readings", [])?
        } else {
            self.conn.execute(
                "DELETE FROM readings WHERE seq < (SELECT seq FROM readings ORDER BY seq LIMIT 1 OFFSET ?1)",
                params![to_i64(n)],
            )?
        } as u64;
        self.pending = self.pending.saturating_sub(deleted);
        self.dropped_since_start += deleted;
        self.dropped_total += deleted;
        self.meta_dirty = true;
        Ok(deleted)
    }

    fn oldest_ms(&self) -> rusqlite::Result<Option<i64>> {
        match self
            .conn
            .query_row("SELECT t FROM readings ORDER BY seq LIMIT 1", [], |r| {
                r.get(0)
            }) {
            Ok(t) => Ok(Some(t)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// After a failed statement: SQLite may have rolled the transaction back
    /// (disk full, I/O error). Bring the bookkeeping back in line with the file.
    fn after_error(&mut self, e: &rusqlite::Error) {
        if self.in_tx && self.conn.is_autocommit() {
            tracing::error!(error = %e, "the buffer transaction was rolled back: readings appended since the last commit are lost");
            self.in_tx = false;
            self.dirty_sensors.clear();
            if let Err(e) = self.reload_counts() {
                tracing::error!(error = %e, "cannot re-read the buffer after a rollback");
            }
        }
    }

    fn reload_counts(&mut self) -> rusqlite::Result<()> {
        self.pending = self
            .conn
            .query_row("SELECT count(*) FROM readings", [], |r| r.get::<_, i64>(0))?
            as u64;
        let (sensors, names) = load_sensors(&self.conn)?;
        for (name, mut entry) in sensors {
            if let Some(old) = self.sensors.get(&name) {
                entry.last_t = entry.last_t.max(old.last_t);
            }
            self.sensors.insert(name, entry);
        }
        self.sensors.retain(|_, e| names.contains_key(&e.id));
        self.names = names;
        Ok(())
    }

    /// The database turned out corrupt while in use: move it aside and go on
    /// with a new one, keeping sequence numbers growing.
    fn recover(&mut self, e: &rusqlite::Error) {
        let reason = e.to_string();
        let lost = self.pending;
        // Close the broken database before moving it.
        match Connection::open_in_memory() {
            Ok(c) => drop(std::mem::replace(&mut self.conn, c)),
            Err(e) => {
                tracing::error!(error = %e, "cannot recover the buffer");
                return;
            }
        }
        self.in_tx = false;
        self.dirty_sensors.clear();
        let moved = move_aside(&self.path, &reason, Some(lost));
        let loaded = match moved {
            Ok(rec) => {
                self.recoveries.push(rec);
                load(&self.path, &self.options)
            }
            Err(e) => Err(LoadError::Other(format!("cannot move it aside: {e}"))),
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(LoadError::Corrupt(m) | LoadError::Other(m)) => {
                tracing::error!(error = %m, path = %self.path.display(), "cannot start a new buffer database: readings are kept in memory until the next start");
                match load(Path::new(":memory:"), &self.options) {
                    Ok(l) => l,
                    Err(_) => return,
                }
            }
        };
        let keep_seq = self.next_seq;
        self.conn = loaded.conn;
        self.next_seq = loaded.next_seq.max(keep_seq);
        self.pending = loaded.pending;
        self.sensors = loaded.sensors;
        self.names = loaded.names;
        self.page_size = loaded.page_size;
        self.episode = None;
    }

    /// Runs `op`; on a corrupt database, recovers and runs it once more.
    fn guarded<T>(&mut self, op: impl Fn(&mut Self) -> rusqlite::Result<T>) -> StoreResult<T> {
        match op(self) {
            Ok(v) => Ok(v),
            Err(e) if is_corrupt(&e) => {
                self.recover(&e);
                op(self).map_err(|e| {
                    self.after_error(&e);
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
        self.guarded(|s| s.try_append(&readings))
    }

    fn commit(&mut self) -> StoreResult<()> {
        self.guarded(|s| s.finish_tx())
    }

    fn sync(&mut self) -> StoreResult<()> {
        self.guarded(|s| s.try_sync())
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

/// A number, a string or JSON as SQLite stores it.
struct SqlValue<'a>(&'a Value);

/// Integral numbers are stored as INTEGER (1 to 8 bytes instead of 8).
fn exact_integer(n: f64) -> Option<i64> {
    let ok = n.fract() == 0.0
        && n.abs() <= 9_007_199_254_740_992.0
        && !(n == 0.0 && n.is_sign_negative());
    ok.then_some(n as i64)
}

impl ToSql for SqlValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Number(n) if n.is_nan() => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Number(n) => match exact_integer(*n) {
                Some(i) => ToSqlOutput::Borrowed(ValueRef::Integer(i)),
                None => ToSqlOutput::Borrowed(ValueRef::Real(*n)),
            },
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Json(j) => ToSqlOutput::Owned(rusqlite::types::Value::Blob(
                serde_json::to_vec(j).unwrap_or_default(),
            )),
        })
    }
}

fn value_from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Number(f64::NAN),
        ValueRef::Integer(i) => Value::Number(i as f64),
        ValueRef::Real(f) => Value::Number(f),
        ValueRef::Text(b) => Value::Text(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Blob(b) => match serde_json::from_slice(b) {
            Ok(j) => Value::Json(j),
            Err(_) => Value::Text(String::from_utf8_lossy(b).into_owned()),
        },
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
        _ => LoadError::Other(e.to_string()),
    }
}

type SensorMaps = (HashMap<Arc<str>, SensorEntry>, HashMap<i64, Arc<str>>);

fn load_sensors(conn: &Connection) -> rusqlite::Result<SensorMaps> {
    let mut sensors = HashMap::new();
    let mut names = HashMap::new();
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
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous}; PRAGMA cache_size=-{CACHE_KIB}; \
         PRAGMA journal_size_limit={WAL_LIMIT}; PRAGMA foreign_keys=OFF; PRAGMA mmap_size=0;"
    ))
    .map_err(classify)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(classify)?;
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(classify)?;
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
                 CREATE TABLE readings(seq INTEGER PRIMARY KEY AUTOINCREMENT, sensor INTEGER NOT NULL, t INTEGER NOT NULL, v);
                 CREATE TABLE sensors(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_t INTEGER NOT NULL);
                 CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
                 PRAGMA application_id={APPLICATION_ID};
                 PRAGMA user_version={SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(classify)?;
        }
        (SCHEMA_VERSION, APPLICATION_ID) => {}
        (v, APPLICATION_ID) if v > SCHEMA_VERSION => {
            return Err(LoadError::Other(format!(
                "it was written by a newer thingplus-gw (schema {v}, this one knows {SCHEMA_VERSION}); it is left untouched"
            )))
        }
        (v, a) => {
            return Err(LoadError::Corrupt(format!(
                "not a thingplus-gw buffer (application_id {a:#x}, user_version {v})"
            )))
        }
    }
    // Reading every page of the queue once also finds damage early.
    let pending = conn
        .query_row("SELECT count(*) FROM readings", [], |r| r.get::<_, i64>(0))
        .map_err(classify)? as u64;
    let next_seq = conn
        .query_row(
            "SELECT max(ifnull((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0), \
                        ifnull((SELECT max(seq) FROM readings), 0)) + 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(classify)?
        .max(1) as u64;
    let (sensors, names) = load_sensors(&conn).map_err(classify)?;
    let dropped_total =
        match conn.query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(v) => v.max(0) as u64,
            Err(rusqlite::Error::QueryReturnedNoRows) => 0,
            Err(e) => return Err(classify(e)),
        };
    let page_size = conn
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .map_err(classify)?
        .max(512) as u64;
    Ok(Loaded {
        conn,
        next_seq,
        pending,
        sensors,
        names,
        dropped_total,
        page_size,
    })
}

/// Counts the readings in a damaged file, as far as it can be read.
fn count_readable(path: &Path) -> Option<u64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row("SELECT count(*) FROM readings", [], |r| r.get::<_, i64>(0))
        .ok()
        .map(|n| n as u64)
}

/// Renames a database (and its WAL) to `buffer.db.corrupt-<time>` and logs it.
fn move_aside(path: &Path, reason: &str, pending: Option<u64>) -> io::Result<Recovery> {
    let lost = pending.or_else(|| count_readable(path));
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "-");
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| DB_FILE.to_string());
    let mut target = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    let mut i = 1;
    while target.exists() {
        target = path.with_file_name(format!("{name}.corrupt-{stamp}.{i}"));
        i += 1;
    }
    fs::rename(path, &target)?;
    let wal = wal_path(path);
    if wal.exists() {
        fs::rename(&wal, wal_path(&target))?;
    }
    let _ = fs::remove_file(shm_path(path));
    if let Some(dir) = path.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    let what = match lost {
        Some(n) => format!("{n} pending readings"),
        None => "the pending readings it held (their number cannot be read)".to_string(),
    };
    tracing::error!(
        path = %path.display(),
        moved_to = %target.display(),
        reason,
        "the buffer database is unreadable ({reason}); it was moved aside to {} and a new one was started. Lost: {what}. To rescue what is readable: thingplus-gw buffer export --db {}",
        target.display(),
        target.display()
    );
    Ok(Recovery {
        reason: reason.to_string(),
        moved_to: target,
        lost_readings: lost,
    })
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
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(OpenError::Locked {
                    dir: dir.to_owned(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(io_err(err));
        }
        file.set_len(0).map_err(io_err)?;
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
    pub rows: Option<u64>,
    pub sensors: Vec<SensorSummary>,
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    pub next_seq: Option<u64>,
    pub dropped: Option<u64>,
    /// `PRAGMA integrity_check` lines ("ok" when sound).
    pub integrity: Vec<String>,
    /// Queries that failed.
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
    out.rows = get!("rows", "SELECT count(*) FROM readings").map(|n| n as u64);
    out.oldest_ms = get!("oldest", "SELECT t FROM readings ORDER BY seq LIMIT 1");
    out.newest_ms = get!("newest", "SELECT t FROM readings ORDER BY seq DESC LIMIT 1");
    out.next_seq = get!(
        "next seq",
        "SELECT max(ifnull((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0), \
                    ifnull((SELECT max(seq) FROM readings), 0)) + 1"
    )
    .map(|n| n as u64);
    out.dropped = match conn.query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(v) => Some(v as u64),
        Err(rusqlite::Error::QueryReturnedNoRows) => Some(0),
        Err(e) => {
            errors.push(format!("dropped: {e}"));
            None
        }
    };
    let sensors = conn
        .prepare(
            "SELECT s.name, count(r.seq), max(r.t) FROM sensors s LEFT JOIN readings r ON r.sensor = s.id \
             GROUP BY s.id ORDER BY s.name",
        )
        .and_then(|mut st| {
            st.query_map([], |r| {
                Ok(SensorSummary {
                    name: r.get(0)?,
                    pending: r.get::<_, i64>(1)? as u64,
                    newest_ms: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        });
    match sensors {
        Ok(s) => out.sensors = s,
        Err(e) => errors.push(format!("sensors: {e}")),
    }
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
    // The last seq: from the table, or (its end damaged) from the counter.
    let last: i64 = conn
        .query_row("SELECT ifnull(max(seq), 0) FROM readings", [], |r| r.get(0))
        .or_else(|_| {
            conn.query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'readings'",
                [],
                |r| r.get(0),
            )
        })
        .map_err(|e| format!("{}: cannot read the readings: {e}", path.display()))?;
    let mut summary = ExportSummary::default();
    let mut from: i64 = 0;
    let mut skip: i64 = 1000;
    let mut line = String::new();
    let mut stmt = conn
        .prepare("SELECT seq, sensor, t, v FROM readings WHERE seq >= ?1 ORDER BY seq LIMIT 1000")
        .map_err(|e| e.to_string())?;
    while from <= last {
        let batch: rusqlite::Result<Vec<(i64, i64, i64, Value)>> = stmt
            .query_map(params![from], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    value_from_sql(r.get_ref(3)?),
                ))
            })
            .and_then(|rows| rows.collect());
        match batch {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                skip = 1000;
                for (seq, sensor, t, v) in rows {
                    line.clear();
                    line.push_str("{\"seq\":");
                    line.push_str(&seq.to_string());
                    line.push_str(",\"sensor\":");
                    let name = names
                        .get(&sensor)
                        .cloned()
                        .unwrap_or_else(|| format!("unknown-sensor-{sensor}"));
                    crate::sensor::value::write_json_string(&name, &mut line);
                    line.push_str(",\"time\":");
                    line.push_str(&t.to_string());
                    line.push_str(",\"value\":");
                    v.write_json(&mut line);
                    line.push_str("}\n");
                    out.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
                    summary.readings += 1;
                    from = seq + 1;
                }
            }
            Err(_) => {
                // Jump over the damage, further each time it goes on.
                let end = from.saturating_add(skip).min(last + 1);
                match summary.skipped.last_mut() {
                    Some(r) if r.end == from as u64 => r.end = end as u64,
                    _ => summary.skipped.push(from as u64..end as u64),
                }
                from = end;
                skip = skip.saturating_mul(2);
            }
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(summary)
}
