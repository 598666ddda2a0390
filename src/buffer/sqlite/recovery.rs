//! Recovery: a database found unreadable is moved aside and a new one
//! rebuilt from what can still be read of it.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::{params, Connection, OpenFlags};

use super::append::TailEntry;
use super::inspect::open_read_only;
use super::read::require_checksum;
use super::schema::{acked_below, load, meta, set_meta, LoadError, Loaded};
use super::{shm_path, to_i64, wal_path, Recovery, SqliteOptions, SqliteStore, DB_FILE};
use crate::buffer::codec::{self, Encoder};

impl SqliteStore {
    /// The database turned out corrupt while in use: move it aside and go on
    /// with a new one, keeping sequence numbers growing and the readings not
    /// yet written.
    pub(super) fn recover(&mut self, e: &rusqlite::Error) {
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
}

/// Counts the readings in a damaged file, as far as it can be read: a row
/// whose columns are damaged counts the seqs between the rows around it,
/// and seqs past the newest sound row up to the counter `next_seq` count
/// too (chunks hold consecutive seqs, except those rewritten after a
/// partial acknowledgement).
pub(super) fn count_readable(path: &Path) -> Option<u64> {
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
pub(super) fn rename_aside(path: &Path, kind: &str) -> io::Result<PathBuf> {
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
pub(super) fn rebuild(
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
pub(super) struct Salvaged {
    pub(super) readings: u64,
    pub(super) sensors: u64,
    /// Seq ranges that could not be read.
    pub(super) skipped: Vec<Range<i64>>,
}

/// Copies what can still be read of a database moved aside into a new,
/// empty one: its sensors, its counters, and every chunk that passes its
/// checks (written anew, with a checksum). Damaged parts are jumped over
/// as `export` does. Nothing is copied when the sensors cannot be read
/// (the readings could not be named).
pub(super) fn salvage(old: &Path, new: &Connection) -> Salvaged {
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
