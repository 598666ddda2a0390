//! A full filesystem: the reserve file given back, the oldest chunks
//! dropped, the tail bounded in memory until writes succeed again.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::bounds::space;
use super::{
    format_size, SqliteStore, MIN_PAGES, RESERVE_FILE, RESERVE_MAX, RESERVE_MIN, TAIL_MAX,
};

/// An episode of a full filesystem.
pub(super) struct DiskFull {
    /// Readings dropped from memory because nothing could be written.
    pub(super) dropped_unwritten: u64,
}

impl SqliteStore {
    /// The filesystem is full (a statement failed with SQLITE_FULL): roll
    /// back, release the reserve, drop the oldest chunks (counted) so that
    /// SQLite has free pages and WAL room again, and shrink the WAL. The
    /// failed operation is then tried once more.
    pub(super) fn on_disk_full(&mut self, e: &rusqlite::Error) {
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
    pub(super) fn bound_tail(&mut self) {
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
    pub(super) fn after_commit(&mut self) {
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
}

/// `buffer.reserve`: a file of allocated zeros that keeps space for the
/// store's own needs. When the filesystem is full anyway (another program
/// filled it, or it filled faster than the bounds are checked), it is
/// deleted, so that SQLite can delete the oldest chunks and commit
/// acknowledgements; it is set aside again once there is room.
pub(super) struct Reserve {
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    pub(super) present: bool,
}

impl Reserve {
    pub(super) fn new(dir: &Path, page_size: u64) -> Reserve {
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
    pub(super) fn fill_if_room(&mut self, dir: &Path, min_free_percent: f64) -> bool {
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
    pub(super) fn release(&mut self) -> bool {
        let was = self.present || self.path.exists();
        let _ = fs::remove_file(&self.path);
        self.present = false;
        was
    }
}
