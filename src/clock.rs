//! Time for readings. A box without a real-time clock may boot at 1970 and
//! sample long before NTP or the server's `timeSync` says what time it is.
//! Readings taken while the time is not trustworthy are held with
//! boot-relative stamps (CLOCK_BOOTTIME, which counts suspend too) and get
//! their wall-clock times once a good source arrives. Every reading of a
//! sensor is stamped strictly later than the one before, whatever the
//! system clock does.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fasthash::FxHashMap;
use crate::sensor::{Reading, Value};

/// A system clock reading before this (2026-01-01T00:00:00Z) is certainly
/// wrong: the box has no RTC or a dead one.
pub const PLAUSIBLE_AFTER_MS: i64 = 1_767_225_600_000;
/// Readings held while waiting for the time; the oldest go first beyond it.
pub const MAX_HELD_READINGS: usize = 100_000;

/// Where time comes from; tests inject their own.
pub trait TimeSource: Send + Sync {
    /// CLOCK_REALTIME in ms since the Unix epoch.
    fn realtime_ms(&self) -> i64;
    /// CLOCK_BOOTTIME in ms: monotonic, counts suspend.
    fn boottime_ms(&self) -> i64;
    /// Whether NTP (the kernel's sync status or systemd-timesyncd) says the
    /// system clock is synchronised.
    fn synchronized(&self) -> bool;
}

pub fn system_now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The real clocks of this machine.
pub struct SystemSource;

impl TimeSource for SystemSource {
    fn realtime_ms(&self) -> i64 {
        system_now_ms()
    }

    fn boottime_ms(&self) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }

    fn synchronized(&self) -> bool {
        if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
            return true;
        }
        // SAFETY: adjtimex with modes = 0 only reads into the struct we own.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
    }
}

/// Why the time is trusted, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    /// The server's timeSync gave the offset (or set the clock).
    ServerSynced,
    /// NTP has synchronised the system clock.
    SystemSynced,
    /// Not synchronised, but after PLAUSIBLE_AFTER_MS: taken as right.
    Plausible,
    /// Certainly wrong: readings are held.
    Untrusted,
}

impl std::fmt::Display for ClockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClockState::ServerSynced => "synchronised by the server (timeSync)",
            ClockState::SystemSynced => "synchronised by NTP",
            ClockState::Plausible => "system clock, not synchronised",
            ClockState::Untrusted => {
                "UNTRUSTED: the system clock is before 2026 and nothing has set it"
            }
        })
    }
}

#[derive(Default)]
struct Stamps {
    /// Readings waiting for the time: (sensor, boot ms, value).
    held: VecDeque<(Arc<str>, i64, Value)>,
    dropped_while_held: u64,
    warned: bool,
    /// The last time given to each sensor.
    last: FxHashMap<Arc<str>, i64>,
}

impl Stamps {
    fn next_time(&mut self, id: &Arc<str>, t: i64) -> i64 {
        // Looked up before inserting: no reference count traffic per reading.
        match self.last.get_mut(id) {
            Some(last) => {
                let t = t.max(last.saturating_add(1));
                *last = t;
                t
            }
            None => {
                let t = t.max(i64::MIN.saturating_add(1));
                self.last.insert(id.clone(), t);
                t
            }
        }
    }
}

/// The gateway's notion of "now", and the readings waiting for it.
pub struct Clock {
    source: Box<dyn TimeSource>,
    offset_ms: AtomicI64,
    server_synced: AtomicBool,
    stamps: Mutex<Stamps>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Self::with_source(Box::new(SystemSource))
    }

    pub fn with_source(source: Box<dyn TimeSource>) -> Self {
        Clock {
            source,
            offset_ms: AtomicI64::new(0),
            server_synced: AtomicBool::new(false),
            stamps: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stamps> {
        self.stamps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unix time in ms, corrected by the server's offset.
    pub fn now_ms(&self) -> i64 {
        self.source.realtime_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> ClockState {
        if self.server_synced.load(Ordering::Relaxed) {
            ClockState::ServerSynced
        } else if self.source.synchronized() {
            ClockState::SystemSynced
        } else if self.now_ms() >= PLAUSIBLE_AFTER_MS {
            ClockState::Plausible
        } else {
            ClockState::Untrusted
        }
    }

    /// Whether the server's time has been received since start.
    pub fn synced(&self) -> bool {
        self.server_synced.load(Ordering::Relaxed)
    }

    /// Readings waiting for a trustworthy time.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Learns the offset from the server's current time; returns it.
    pub fn sync_to(&self, server_ms: i64) -> i64 {
        let offset = server_ms - self.source.realtime_ms();
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.server_synced.store(true, Ordering::Relaxed);
        offset
    }

    /// The system clock was set to the server's time: no offset any more.
    pub fn clear_offset(&self) {
        self.offset_ms.store(0, Ordering::Relaxed);
        self.server_synced.store(true, Ordering::Relaxed);
    }

    /// Stamps one sample of `sensor_id`. Returns the readings ready for the
    /// buffer, oldest first: none while the time is untrusted (the sample is
    /// held), else any held readings with their corrected times, then this one.
    pub fn stamp(&self, sensor_id: &Arc<str>, value: Value) -> Vec<Reading> {
        // `state() == Untrusted`, with the checks in the order that spares
        // the two system calls of `synchronized()` whenever the clock is
        // plausible or the server gave the time: nearly every reading.
        let untrusted = !self.server_synced.load(Ordering::Relaxed)
            && self.now_ms() < PLAUSIBLE_AFTER_MS
            && !self.source.synchronized();
        let mut s = self.lock();
        if untrusted {
            if !s.warned {
                tracing::warn!(
                    system_time_ms = self.now_ms(),
                    "the system clock is before 2026 and no time source has set it: readings are held with boot-relative times until timeSync or NTP gives the time"
                );
                s.warned = true;
            }
            s.held
                .push_back((sensor_id.clone(), self.source.boottime_ms(), value));
            if s.held.len() > MAX_HELD_READINGS {
                s.held.pop_front();
                s.dropped_while_held += 1;
                if s.dropped_while_held == 1 {
                    tracing::warn!(
                        max = MAX_HELD_READINGS,
                        "still no trustworthy time: dropping the oldest held readings"
                    );
                }
            }
            return Vec::new();
        }
        let mut out = Vec::with_capacity(1 + s.held.len());
        if !s.held.is_empty() {
            let state = self.state();
            let (now, boot_now) = (self.now_ms(), self.source.boottime_ms());
            let held: Vec<_> = s.held.drain(..).collect();
            let n = held.len();
            for (id, boot, v) in held {
                let t = s.next_time(&id, now - (boot_now - boot));
                out.push(Reading::new(id, t, v));
            }
            tracing::info!(released = n, dropped = s.dropped_while_held, clock = %state, "time is known: held readings released with corrected times");
            s.dropped_while_held = 0;
        }
        s.warned = false;
        let t = s.next_time(sensor_id, self.now_ms());
        out.push(Reading::new(sensor_id.clone(), t, value));
        out
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

    /// A settable clock: the box's RTC-less realtime, boot time, NTP flag.
    #[derive(Clone, Default)]
    struct Fake(Arc<(AtomicI64, AtomicI64, AtomicBool)>);

    impl Fake {
        fn at(realtime: i64, boot: i64) -> Self {
            let f = Fake::default();
            f.0 .0.store(realtime, Ordering::SeqCst);
            f.0 .1.store(boot, Ordering::SeqCst);
            f
        }
        fn advance(&self, ms: i64) {
            self.0 .0.fetch_add(ms, Ordering::SeqCst);
            self.0 .1.fetch_add(ms, Ordering::SeqCst);
        }
        fn step_realtime(&self, ms: i64) {
            self.0 .0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl TimeSource for Fake {
        fn realtime_ms(&self) -> i64 {
            self.0 .0.load(Ordering::SeqCst)
        }
        fn boottime_ms(&self) -> i64 {
            self.0 .1.load(Ordering::SeqCst)
        }
        fn synchronized(&self) -> bool {
            self.0 .2.load(Ordering::SeqCst)
        }
    }

    const SERVER: i64 = 1_800_000_000_000;

    #[test]
    fn a_box_starting_at_1970_gets_right_times_after_time_sync() {
        let fake = Fake::at(5_000, 1_000); // 5 s after the epoch, 1 s after boot
        let clock = Clock::with_source(Box::new(fake.clone()));
        let t: Arc<str> = "t".into();
        let h: Arc<str> = "h".into();
        assert_eq!(clock.state(), ClockState::Untrusted);
        assert!(clock.stamp(&t, Value::Number(1.0)).is_empty());
        fake.advance(500);
        assert!(clock.stamp(&h, Value::Number(2.0)).is_empty());
        fake.advance(500);
        assert!(clock.stamp(&t, Value::Number(3.0)).is_empty());
        assert_eq!(clock.held(), 3);
        // Nothing went out with a 1970 time.
        fake.advance(1_000);
        clock.sync_to(SERVER); // the server's "now" is at boot + 3000 ms
        assert_eq!(clock.state(), ClockState::ServerSynced);
        let out = clock.stamp(&h, Value::Number(4.0));
        let got: Vec<(&str, i64)> = out.iter().map(|r| (&*r.sensor_id, r.time_ms)).collect();
        assert_eq!(
            got,
            vec![
                ("t", SERVER - 2_000),
                ("h", SERVER - 1_500),
                ("t", SERVER - 1_000),
                ("h", SERVER)
            ]
        );
        assert_eq!(clock.held(), 0);
    }

    #[test]
    fn ntp_sync_also_releases_held_readings() {
        let fake = Fake::at(10_000, 10_000);
        let clock = Clock::with_source(Box::new(fake.clone()));
        let t: Arc<str> = "t".into();
        assert!(clock.stamp(&t, Value::Number(1.0)).is_empty());
        // NTP steps the clock to the right time and reports sync.
        fake.step_realtime(SERVER);
        fake.advance(100);
        fake.0 .2.store(true, Ordering::SeqCst);
        let out = clock.stamp(&t, Value::Number(2.0));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].time_ms - out[0].time_ms, 100);
        assert_eq!(clock.state(), ClockState::SystemSynced);
    }

    #[test]
    fn a_backwards_jump_keeps_each_sensor_in_order() {
        let fake = Fake::at(SERVER, 1_000);
        let clock = Clock::with_source(Box::new(fake.clone()));
        assert_eq!(clock.state(), ClockState::Plausible);
        let t: Arc<str> = "t".into();
        let mut times = Vec::new();
        for step in [1_000, 1_000, -60_000, 1_000, 1_000, 100_000] {
            fake.step_realtime(step);
            times.extend(
                clock
                    .stamp(&t, Value::Number(0.0))
                    .iter()
                    .map(|r| r.time_ms),
            );
        }
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        // Another sensor is not held back by the first one's stamps.
        let other: Arc<str> = "o".into();
        let o = clock.stamp(&other, Value::Number(0.0));
        assert_eq!(o[0].time_ms, clock.now_ms());
    }

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
