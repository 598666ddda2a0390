//! Wall-clock time for readings, corrected by the server's `timeSync`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The gateway's notion of "now": the system clock plus an offset learnt
/// from the server. Keeping an offset (rather than setting the clock) needs
/// no privilege.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
    /// A time source (timeSync) has been heard from.
    synced: AtomicBool,
}

pub fn system_now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock::default()
    }

    /// Unix time in ms, corrected.
    pub fn now_ms(&self) -> i64 {
        system_now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Learns the offset from the server's current time; returns it.
    pub fn sync_to(&self, server_ms: i64) -> i64 {
        let offset = server_ms - system_now_ms();
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
        offset
    }

    /// The system clock was set to the server's time: no offset any more.
    pub fn clear_offset(&self) {
        self.offset_ms.store(0, Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Whether the server's time has been received since start.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

/// Sets the system clock (needs CAP_SYS_TIME).
pub fn set_system_clock(ms: i64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: ms.div_euclid(1000) as libc::time_t,
        tv_nsec: (ms.rem_euclid(1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads a valid timespec we own.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_applies_to_now() {
        let c = Clock::new();
        let target = system_now_ms() + 86_400_000;
        let off = c.sync_to(target);
        assert!((off - 86_400_000).abs() < 1000);
        assert!((c.now_ms() - target).abs() < 1000);
        c.clear_offset();
        assert!((c.now_ms() - system_now_ms()).abs() < 1000);
    }
}
