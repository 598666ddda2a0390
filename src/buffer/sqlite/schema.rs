//! The database file: opened, its pragmas set, its schema created, checked
//! or upgraded, and the queue's state read back.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::append::SensorEntry;
use super::bounds::wal_pages;
use super::{to_i64, IdMap, SqliteOptions, CACHE_KIB, WAL_CHECKPOINT_PAGES, WAL_LIMIT};
use crate::config::Fsync;

/// 3: chunks carry a checksum (codec version 3). A daemon that knows only
/// an older schema refuses the file rather than drop such chunks as
/// damaged. A file of version 1 or 2 is upgraded in place at open: its
/// chunks stay as they are and are still read.
pub(super) const SCHEMA_VERSION: i64 = 3;
/// "TPGW": marks the file as a thingplus-gw buffer.
pub const APPLICATION_ID: i64 = 0x5450_4757;

/// What was read from a database file when it was opened.
pub(super) struct Loaded {
    pub(super) conn: Connection,
    pub(super) next_seq: u64,
    pub(super) pending: u64,
    pub(super) sensors: HashMap<Arc<str>, SensorEntry>,
    pub(super) names: IdMap<Arc<str>>,
    pub(super) dropped_total: u64,
    pub(super) page_size: u64,
    pub(super) acked_below: u64,
    pub(super) checked_from: u64,
    /// `next_seq` as `meta` has it (0: not there). The file may hold less
    /// than `next_seq` says (it was raised from the chunks): it is written
    /// at the next commit, before an acknowledgement can delete the
    /// newest chunk it was computed from.
    pub(super) stored_next_seq: u64,
}

pub(super) enum LoadError {
    /// The file is not a readable thingplus-gw buffer: move it aside.
    Corrupt(String),
    /// The path cannot be opened at all (a directory, no permission, read
    /// only): move it aside.
    Unusable(String),
    /// Anything else (permissions, I/O, a newer schema): leave the file alone.
    Other(String),
}

pub(super) fn classify(e: rusqlite::Error) -> LoadError {
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

pub(super) type SensorMaps = (HashMap<Arc<str>, SensorEntry>, IdMap<Arc<str>>);

pub(super) fn load_sensors(conn: &Connection) -> rusqlite::Result<SensorMaps> {
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

pub(super) fn meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub(super) fn set_meta(conn: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, to_i64(value)])
        .map(|_| ())
}

/// The acknowledged cursor (0 in a file without one): chunks with a smaller
/// `last_seq` were delivered.
pub(super) fn acked_below(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(meta(conn, "acked_below")?.unwrap_or(0).max(0))
}

/// Opens the file in WAL mode with the store's pragmas.
fn connect(path: &Path, options: &SqliteOptions) -> Result<Connection, LoadError> {
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
    Ok(conn)
}

/// Checks that the file is a thingplus-gw buffer of a schema this version
/// reads, creating the schema in an empty one. Returns the version to
/// upgrade from, if any.
fn check_schema(conn: &Connection) -> Result<Option<i64>, LoadError> {
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
        (v @ (1 | 2), APPLICATION_ID) => return Ok(Some(v)),
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
    Ok(None)
}

/// Opens the database file, creating the schema in a new one, and checks it.
pub(super) fn load(path: &Path, options: &SqliteOptions) -> Result<Loaded, LoadError> {
    let conn = connect(path, options)?;
    let upgrade_from = check_schema(&conn)?;
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
