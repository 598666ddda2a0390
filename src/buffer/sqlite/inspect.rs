//! Offline access for `thingplus-gw buffer check` and `export`: reads a
//! database file without changing it (the daemon may be running).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::schema::{acked_below, meta};
use super::wal_path;
use crate::buffer::codec::{self, Decoder};

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

pub(super) fn open_read_only(path: &Path) -> Result<Connection, String> {
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
