//! Committing: the tail written as chunks, sensors and `meta` brought up to
//! date, the transaction committed; and what a failed one leaves behind.

use std::collections::VecDeque;
use std::fs::File;

use rusqlite::params;

use super::append::TailEntry;
use super::schema::{load_sensors, set_meta};
use super::{to_i64, wal_path, SqliteStore};
use crate::config::Fsync;

impl SqliteStore {
    /// Writes the tail and what is kept in memory, checks the bounds, commits.
    pub(super) fn finish_tx(&mut self) -> rusqlite::Result<()> {
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
    pub(super) fn commit_open_tx(&mut self) -> rusqlite::Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        self.commit_with_meta()
    }

    /// Writes what changed of `meta` and commits.
    pub(super) fn commit_with_meta(&mut self) -> rusqlite::Result<()> {
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

    pub(super) fn try_sync(&mut self) -> rusqlite::Result<()> {
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

    /// After a failed statement: SQLite may have rolled the transaction back
    /// (disk full, I/O error). Bring the bookkeeping back in line with the file.
    pub(super) fn after_error(&mut self, e: &rusqlite::Error) {
        if self.in_tx && self.conn.is_autocommit() {
            self.rolled_back(e);
        }
    }

    /// The open transaction is gone (rolled back): what it wrote is back in
    /// the tail and its drops are not counted. Its acknowledgements stand
    /// (the broker has those readings): the cursor stays where they moved
    /// it, and is written with the next commit.
    pub(super) fn rolled_back(&mut self, e: &rusqlite::Error) {
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

    pub(super) fn reload_counts(&mut self) -> rusqlite::Result<()> {
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fill, store};
    use crate::buffer::Store;
    use crate::reading::{Reading, Value};

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
}
