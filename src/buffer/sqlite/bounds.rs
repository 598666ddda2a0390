//! The size bounds: `max_size` and the free-space floor (`min_free`), kept
//! by dropping the oldest chunks, counted and logged once per episode.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rusqlite::{params, Connection};

use super::{
    format_size, to_i64, wal_path, SqliteStore, COMMIT_PAGES, MIN_PAGES, WAL_CHECKPOINT_PAGES,
};

/// An episode of dropping the oldest readings because a bound was hit.
pub(super) struct Episode {
    pub(super) reason: String,
    pub(super) dropped: u64,
}

impl SqliteStore {
    pub(super) fn enforce_bounds_now(&mut self) {
        self.since_check = 1;
        let r = self.begin().and_then(|()| self.finish_tx());
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot apply the buffer bounds");
            self.after_error(&e);
        }
    }

    /// Drops the oldest readings while the data pages exceed `max_size`, or
    /// while the filesystem is under its free-space floor and the file would
    /// have to grow. Freed pages are reused by later appends.
    pub(super) fn enforce_bounds(&mut self) -> rusqlite::Result<()> {
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
    pub(super) fn note_drops(&mut self, dropped: u64, reason: String) {
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
    pub(super) fn drop_oldest_pages(&mut self, pages: u64) -> rusqlite::Result<u64> {
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
}

/// Free and total bytes of the filesystem holding `dir` (free: for
/// unprivileged use).
pub(super) struct Space {
    pub(super) free: u64,
    pub(super) total: u64,
}

pub(super) fn space(dir: &Path) -> Option<Space> {
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
    pub(super) fn floor(&self, min_free_percent: f64) -> u64 {
        (self.total as f64 * min_free_percent / 100.0) as u64
    }
}

/// WAL pages between automatic checkpoints on the filesystem of `dir`:
/// [`WAL_CHECKPOINT_PAGES`], or 1/32 of a small filesystem, so that the
/// WAL cannot fill it.
pub(super) fn wal_pages(dir: &Path) -> u64 {
    space(dir).map_or(WAL_CHECKPOINT_PAGES as u64, |s| {
        (s.total / 4096 / 32).clamp(64, WAL_CHECKPOINT_PAGES as u64)
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
