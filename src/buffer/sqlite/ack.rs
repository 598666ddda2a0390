//! Acknowledging: a drain's acknowledgements move the `acked_below` cursor;
//! any other range is deleted (or its chunks rewritten) the exact way.

use std::ops::Range;

use rusqlite::{params, OptionalExtension};

use super::read::{require_checksum, Damaged};
use super::{to_i64, SqliteStore};
use crate::buffer::codec::{self, Encoder};

/// A chunk given whole to a drain: seqs `first..=last`, `n` readings.
#[derive(Clone, Copy, Debug)]
pub(super) struct HandedChunk {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) n: u64,
}

/// `handed` stops growing at this many chunks (a reader far ahead of the
/// acknowledgements; they then take the exact path).
pub(super) const HANDED_MAX: usize = 1 << 16;

/// A chunk row.
pub(super) struct ChunkRow {
    pub(super) last: u64,
    pub(super) first: u64,
    pub(super) n: u64,
}

impl SqliteStore {
    /// Deletes the chunks under the acknowledged cursor, in one statement.
    /// Every path that reads or changes chunks other than a drain's reads and
    /// acknowledgements calls this first, and so sees only pending chunks.
    pub(super) fn purge_acked(&mut self) -> rusqlite::Result<()> {
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
    pub(super) fn try_ack_front(&mut self, range: &Range<u64>) -> bool {
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
    pub(super) fn forget_handed(&mut self) {
        self.handed.clear();
        self.handed_next = None;
    }

    pub(super) fn try_ack(&mut self, range: &Range<u64>) -> rusqlite::Result<()> {
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
    pub(super) fn try_ack_exact(&mut self, range: &Range<u64>) -> rusqlite::Result<()> {
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fill, rows_under_cursor, store};
    use crate::buffer::{Store, StoreError};

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
        let err = s.ack(1..50).unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err:?}");
        assert!(err.to_string().contains("injected"), "{err}");
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
