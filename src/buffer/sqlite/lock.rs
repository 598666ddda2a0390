//! The directory lock: one daemon per buffer directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use super::{OpenError, LOCK_FILE};

/// An exclusive `flock` on `buffer.lock`, released when the process ends
/// however it ends.
pub(super) struct DirLock {
    pub(super) _file: File,
}

impl DirLock {
    pub(super) fn acquire(dir: &Path) -> Result<DirLock, OpenError> {
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
