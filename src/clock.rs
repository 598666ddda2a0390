//! Time for readings. A box without a real-time clock may boot at 1970 and
//! sample long before NTP or the server's `timeSync` says what time it is.
//! Readings taken while the time is not trustworthy are held with
//! boot-relative stamps (CLOCK_BOOTTIME, which counts suspend too) and get
//! their wall-clock times once a good source arrives. Every reading of a
//! sensor is stamped strictly later than the one before, whatever the
//! system clock does.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fasthash::FxHashMap;
use crate::reading::{Reading, Value};

/// A system clock reading before this (2026-01-01T00:00:00Z) is certainly
/// wrong: the box has no RTC or a dead one.
pub const PLAUSIBLE_AFTER_MS: i64 = 1_767_225_600_000;
/// A time from the server at or after this (2100-01-01T00:00:00Z) is
/// certainly wrong: `timeSync` refuses it.
pub const PLAUSIBLE_BEFORE_MS: i64 = 4_102_444_800_000;
/// Largest difference accepted between the server's time and a system
/// clock that NTP has synchronised: beyond it one of them is wrong, and
/// NTP (many servers, checked against each other) is believed.
pub const MAX_SERVER_SKEW_FROM_NTP_MS: i64 = 300_000;
/// A sensor's stamps stay strictly increasing through a step back of the
/// clock up to this; after a larger one they follow the clock again (see
/// `Stamps::next_time`).
pub const MAX_STAMP_LEAD_MS: i64 = 60_000;
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
    /// The shift of a test clock ([`TEST_CLOCK_ENV`]); `None` for a real one.
    fn test_offset_ms(&self) -> Option<i64> {
        None
    }
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

    #[allow(clippy::unnecessary_cast)] // not unnecessary where time_t is i32
    fn boottime_ms(&self) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        // time_t and c_long are 32 bits on armhf: widen before multiplying
        // (in 32 bits the milliseconds overflow after 24 days of uptime).
        ts.tv_sec as i64 * 1000 + ts.tv_nsec as i64 / 1_000_000
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

/// The environment variable that makes the daemon's clock a test clock:
/// the system clock shifted by this many ms and never synchronised (a box
/// without RTC or NTP). For integration tests only; logged as a warning.
pub const TEST_CLOCK_ENV: &str = "THINGPLUS_GW_TEST_CLOCK_OFFSET_MS";

/// The system clock shifted by a fixed offset, never synchronised.
struct ShiftedSource(i64);

impl TimeSource for ShiftedSource {
    fn realtime_ms(&self) -> i64 {
        system_now_ms() + self.0
    }
    fn boottime_ms(&self) -> i64 {
        SystemSource.boottime_ms()
    }
    fn synchronized(&self) -> bool {
        false
    }
    fn test_offset_ms(&self) -> Option<i64> {
        Some(self.0)
    }
}

/// The daemon's time source: the system's, or the test clock of [`TEST_CLOCK_ENV`].
pub fn source_from_env() -> Box<dyn TimeSource> {
    match std::env::var(TEST_CLOCK_ENV)
        .ok()
        .map(|v| v.trim().parse::<i64>())
    {
        Some(Ok(offset)) => {
            tracing::warn!(
                offset_ms = offset,
                "{TEST_CLOCK_ENV} is set: using a shifted, unsynchronised test clock"
            );
            Box::new(ShiftedSource(offset))
        }
        Some(Err(_)) => {
            tracing::warn!("{TEST_CLOCK_ENV} is not a number of ms: ignored");
            Box::new(SystemSource)
        }
        None => Box::new(SystemSource),
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
    /// When a step back of the clock was last logged (the clock's time).
    step_back_logged_at: Option<i64>,
    /// The held readings on disk too (see [`Clock::persist_held`]).
    log: Option<HeldLog>,
    /// Releases so far: the number of the last one.
    releases: u64,
}

impl Stamps {
    /// The time for a reading of `id` taken at clock time `t`: strictly
    /// after the sensor's last one, unless the clock is more than
    /// [`MAX_STAMP_LEAD_MS`] behind that: then the last time was wrong (a
    /// wrong time set, since corrected) and the stamps follow the clock
    /// again rather than stay in the future for as long as the error was.
    fn next_time(&mut self, id: &Arc<str>, t: i64) -> i64 {
        // Looked up before inserting: no reference count traffic per reading.
        match self.last.get_mut(id) {
            Some(last) if last.saturating_sub(t) > MAX_STAMP_LEAD_MS => {
                let lead = *last - t;
                *last = t;
                // One line per minute of clock time for all sensors: a step
                // back meets every sensor at once.
                if self
                    .step_back_logged_at
                    .is_none_or(|at| (t - at).abs() > 60_000)
                {
                    self.step_back_logged_at = Some(t);
                    tracing::warn!(
                        sensor_id = %id,
                        lead_ms = lead,
                        "the clock went back {} s behind the last time given to sensor {id} (a wrong time was set and corrected): readings are stamped by the clock again; Thing+ ignores values older than the newest it has, so those readings are not shown until the clock passes the wrong time",
                        lead / 1000
                    );
                }
                t
            }
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
    /// [`MAX_HELD_READINGS`], smaller in tests.
    max_held: usize,
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
            max_held: MAX_HELD_READINGS,
        }
    }

    /// Holds at most `max` readings instead of [`MAX_HELD_READINGS`].
    #[cfg(test)]
    fn with_max_held(mut self, max: usize) -> Self {
        self.max_held = max;
        self
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

    /// [`Clock::state`] in words, saying so when the time source is the
    /// test clock of [`TEST_CLOCK_ENV`] (never meant for production).
    pub fn describe(&self) -> String {
        let state = self.state().to_string();
        match self.source.test_offset_ms() {
            Some(ms) => format!("{state} (test clock offset {ms} ms: {TEST_CLOCK_ENV} is set)"),
            None => state,
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

    /// Whether `server_ms`, a time the server says it is now, can be
    /// believed: inside [`PLAUSIBLE_AFTER_MS`]..[`PLAUSIBLE_BEFORE_MS`],
    /// and within [`MAX_SERVER_SKEW_FROM_NTP_MS`] of the system clock when
    /// NTP has synchronised it. The error says why not.
    pub fn check_server_time(&self, server_ms: i64) -> Result<(), String> {
        if !(PLAUSIBLE_AFTER_MS..PLAUSIBLE_BEFORE_MS).contains(&server_ms) {
            return Err(format!(
                "{} is outside the plausible window {} to {}",
                format_ms(server_ms),
                format_ms(PLAUSIBLE_AFTER_MS),
                format_ms(PLAUSIBLE_BEFORE_MS)
            ));
        }
        if self.source.synchronized() {
            let system = self.source.realtime_ms();
            let skew = server_ms - system;
            if skew.abs() > MAX_SERVER_SKEW_FROM_NTP_MS {
                return Err(format!(
                    "{} is {} s away from the system clock ({}), which NTP has synchronised; at most {} s are accepted",
                    format_ms(server_ms),
                    skew / 1000,
                    format_ms(system),
                    MAX_SERVER_SKEW_FROM_NTP_MS / 1000
                ));
            }
        }
        Ok(())
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
    ///
    /// When held readings are released, [`Stamped::release`] is set: the
    /// held readings file still has them until the caller, once the buffer
    /// has committed them, hands it to [`Clock::release_committed`].
    pub fn stamp(&self, sensor_id: &Arc<str>, value: Value) -> Stamped {
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
            let boot = self.source.boottime_ms();
            s.held.push_back((sensor_id.clone(), boot, value));
            let Stamps { log, held, .. } = &mut *s;
            if let Some(log) = log.as_mut() {
                match held.back() {
                    // Open: one more line. Not open (nothing was held, or a
                    // write failed): everything held, so that the file never
                    // has less than memory.
                    Some((id, boot, v)) if log.file.is_some() => log.append(id, *boot, v),
                    _ => log.rewrite(held.iter()),
                }
            }
            // Not while released readings still wait for the buffer's commit:
            // they are in the file, not in `held`.
            if s.log
                .as_ref()
                .is_some_and(|l| l.unconfirmed.is_none() && l.lines > 2 * self.max_held)
            {
                let Stamps { log, held, .. } = &mut *s;
                if let Some(log) = log.as_mut() {
                    log.rewrite(held.iter().skip(held.len().saturating_sub(self.max_held)));
                }
            }
            if s.held.len() > self.max_held {
                s.held.pop_front();
                s.dropped_while_held += 1;
                if s.dropped_while_held == 1 {
                    tracing::warn!(
                        max = self.max_held,
                        "still no trustworthy time: dropping the oldest held readings"
                    );
                }
            }
            return Stamped::default();
        }
        let mut out = Vec::with_capacity(1 + s.held.len());
        let mut release = None;
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
            // The file keeps them until the buffer has committed them: a
            // crash in between must not lose them (it may send them twice).
            s.releases += 1;
            let n = s.releases;
            if let Some(log) = s.log.as_mut() {
                log.unconfirmed = Some(n);
                release = Some(Release(n));
            }
        }
        s.warned = false;
        let t = s.next_time(sensor_id, self.now_ms());
        out.push(Reading::new(sensor_id.clone(), t, value));
        Stamped {
            readings: out,
            release,
        }
    }

    /// The buffer has committed the readings of `release` (and so of every
    /// release before it): the held readings file drops them, keeping only
    /// what is held now.
    pub fn release_committed(&self, release: Release) {
        let mut s = self.lock();
        let Stamps { log, held, .. } = &mut *s;
        if let Some(log) = log.as_mut() {
            if log.unconfirmed.is_some_and(|n| n <= release.0) {
                log.unconfirmed = None;
                log.reset_to(held);
            }
        }
    }
}

/// What [`Clock::stamp`] gives back.
#[derive(Default, Debug)]
#[must_use]
pub struct Stamped {
    /// For the buffer, oldest first.
    pub readings: Vec<Reading>,
    /// Set when held readings (which are in the held readings file) were
    /// released: pass it to [`Clock::release_committed`] once the buffer
    /// has committed them.
    pub release: Option<Release>,
}

/// A release of held readings still in the held readings file.
#[derive(Debug)]
pub struct Release(u64);

impl Clock {
    /// Keeps the held readings in `path` as well, so that a restart of the
    /// daemon within the same boot (a crash, `systemctl restart`) keeps
    /// them: their boot-relative stamps stay valid until the machine
    /// reboots. Loads what an earlier run of this boot left there (in
    /// front of anything held since). A file from another boot cannot be
    /// re-timed: it is moved aside to `held-readings.previous-boot.jsonl`
    /// (next to `path`, replacing an older one) and its readings are
    /// counted in a warning; if it cannot be moved, the warning says so and
    /// the file is replaced. Returns the readings loaded.
    ///
    /// Released readings stay in the file until [`Clock::release_committed`]
    /// says the buffer has committed them: a crash before that loads them
    /// again, and a kill between the commit and the file's update sends
    /// them twice. Duplicates, never loss.
    ///
    /// Each held reading is one `write` (no fsync): a killed process loses
    /// nothing the kernel has, and after a power cut the machine reboots,
    /// which makes them unusable anyway.
    ///
    /// Loaded readings of sensors for which `configured` is false (removed
    /// from the configuration since) are dropped, counted in a warning.
    pub fn persist_held(
        &self,
        path: &Path,
        boot_id: &str,
        configured: &dyn Fn(&str) -> bool,
    ) -> usize {
        let mut loaded = VecDeque::new();
        let mut bad_lines = 0usize;
        let mut unconfigured: std::collections::BTreeMap<String, usize> = Default::default();
        let mut previous_boot = None;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut lines = text.lines();
                let header: Option<HeldHeader> =
                    lines.next().and_then(|l| serde_json::from_str(l).ok());
                match header {
                    Some(h) if h.boot_id == boot_id => {
                        for l in lines {
                            match serde_json::from_str::<(String, i64, serde_json::Value)>(l) {
                                Ok((id, boot, v)) if configured(&id) => {
                                    loaded.push_back((Arc::from(id), boot, Value::from_json(v)))
                                }
                                Ok((id, ..)) => *unconfigured.entry(id).or_default() += 1,
                                // A line cut short by a crash in the middle of a write.
                                Err(_) => bad_lines += 1,
                            }
                        }
                    }
                    other => {
                        let n = lines.filter(|l| !l.trim().is_empty()).count();
                        if n > 0 {
                            previous_boot = Some((other.map(|h| h.boot_id), n));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the readings held before a restart");
            }
        }
        if let Some((old_boot, n)) = previous_boot {
            let aside = path.with_extension("previous-boot.jsonl");
            let old_boot = old_boot.as_deref().unwrap_or("unknown");
            match std::fs::rename(path, &aside) {
                Ok(()) => tracing::warn!(
                    dropped = n,
                    previous_boot_id = old_boot,
                    kept_in = %aside.display(),
                    "{n} readings held for the time by a run before the last reboot are dropped: their boot-relative times cannot be converted after a reboot"
                ),
                Err(e) => tracing::warn!(
                    dropped = n,
                    previous_boot_id = old_boot,
                    path = %path.display(),
                    error = %e,
                    "{n} readings held for the time by a run before the last reboot are dropped: their boot-relative times cannot be converted after a reboot; the file cannot be moved aside to {} and is replaced",
                    aside.display()
                ),
            }
        }
        if !unconfigured.is_empty() {
            let n: usize = unconfigured.values().sum();
            let ids: Vec<&str> = unconfigured.keys().map(String::as_str).collect();
            tracing::warn!(
                dropped = n,
                sensors = %ids.join(", "),
                "{n} readings held before a restart are dropped: their sensors are no longer configured"
            );
        }
        if bad_lines > 0 {
            tracing::warn!(path = %path.display(), skipped = bad_lines, "skipped unreadable lines of the held readings file (a write cut short)");
        }
        let n = loaded.len();
        let mut s = self.lock();
        if n > 0 {
            tracing::info!(
                loaded = n,
                "readings held for the time before a restart (same boot) are held again"
            );
            let since = std::mem::take(&mut s.held);
            loaded.extend(since);
            while loaded.len() > self.max_held {
                loaded.pop_front();
                s.dropped_while_held += 1;
            }
            s.held = loaded;
        }
        let mut log = HeldLog {
            path: path.to_path_buf(),
            boot_id: boot_id.to_string(),
            file: None,
            lines: 0,
            failed: false,
            unconfirmed: None,
        };
        // What is held now, and only that, is in the file from here on.
        log.reset_to(&s.held);
        s.log = Some(log);
        n
    }
}

/// A Unix time in ms as RFC 3339 (UTC), for messages; the number itself
/// when it is out of the range a date can show.
pub fn format_ms(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .and_then(|ms| UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms)))
        .filter(|t| *t < UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799))
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The machine's boot id (`/proc/sys/kernel/random/boot_id`): changes at every boot.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The file in the state directory holding readings held for the time.
pub const HELD_FILE: &str = "held-readings.jsonl";

#[derive(serde::Serialize, serde::Deserialize)]
struct HeldHeader {
    boot_id: String,
}

/// The held readings as JSON lines: a header with the boot id, then one
/// `[sensor, boot ms, value]` per reading. Absent when nothing is held.
struct HeldLog {
    path: PathBuf,
    boot_id: String,
    file: Option<std::fs::File>,
    /// Readings written since the file was (re)created.
    lines: usize,
    /// A write failed: warned once; memory still holds the readings.
    failed: bool,
    /// The file still has the readings of this release (and earlier ones):
    /// released, but not yet committed by the buffer.
    unconfirmed: Option<u64>,
}

impl HeldLog {
    fn header(&self) -> String {
        let mut h = serde_json::to_string(&HeldHeader {
            boot_id: self.boot_id.clone(),
        })
        .unwrap_or_default();
        h.push('\n');
        h
    }

    fn line(id: &str, boot: i64, v: &Value) -> String {
        let mut l = serde_json::to_string(&(id, boot, v.to_json())).unwrap_or_default();
        l.push('\n');
        l
    }

    fn fail(&mut self, what: &str, e: std::io::Error) {
        self.file = None;
        if !self.failed {
            self.failed = true;
            tracing::warn!(path = %self.path.display(), error = %e, "cannot {what} the held readings file: they are held in memory only (a restart before the time is known loses them)");
        }
    }

    fn succeeded(&mut self) {
        if self.failed {
            self.failed = false;
            tracing::info!(path = %self.path.display(), "the held readings file is written again (with every reading held)");
        }
    }

    /// One more line to the open file (see [`HeldLog::rewrite`] when none is).
    fn append(&mut self, id: &str, boot: i64, v: &Value) {
        use std::io::Write;
        if let Some(f) = self.file.as_mut() {
            match f.write_all(Self::line(id, boot, v).as_bytes()) {
                Ok(()) => {
                    self.lines += 1;
                    self.succeeded();
                }
                Err(e) => self.fail("write", e),
            }
        }
    }

    /// The file holds exactly `held`: no file when nothing is held.
    fn reset_to(&mut self, held: &VecDeque<(Arc<str>, i64, Value)>) {
        if held.is_empty() {
            self.clear();
        } else {
            self.rewrite(held.iter());
        }
    }

    /// Nothing is held: no file.
    fn clear(&mut self) {
        self.file = None;
        self.lines = 0;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.fail("remove", e),
        }
    }

    /// Replaces the file with exactly `held` (atomically: a new file renamed over).
    fn rewrite<'a>(&mut self, held: impl Iterator<Item = &'a (Arc<str>, i64, Value)>) {
        use std::io::Write;
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut text = self.header();
        let mut n = 0;
        for (id, boot, v) in held {
            text.push_str(&Self::line(id, *boot, v));
            n += 1;
        }
        let done = std::fs::write(&tmp, &text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .and_then(|_| std::fs::OpenOptions::new().append(true).open(&self.path));
        match done {
            Ok(mut f) => {
                let _ = f.flush();
                self.file = Some(f);
                self.lines = n;
                self.succeeded();
            }
            Err(e) => self.fail("write", e),
        }
    }
}

/// Sets the system clock (needs CAP_SYS_TIME).
pub fn set_system_clock(ms: i64) -> std::io::Result<()> {
    let ts = timespec_of_ms(ms)?;
    // SAFETY: clock_settime reads a valid timespec we own.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Seconds since the epoch as a time_t, if they fit (32 bits on armhf).
#[allow(clippy::unnecessary_cast)] // not unnecessary where time_t is i32
pub fn time_t_of_secs(secs: i64) -> Option<libc::time_t> {
    let t = secs as libc::time_t;
    (t as i64 == secs).then_some(t)
}

/// `ms` since the epoch as a timespec. Where time_t is 32 bits (armhf with
/// Debian 12's glibc) a time from 2038-01-19T03:14:08Z on does not fit: an
/// error that says so, instead of a wrapped time the kernel would refuse
/// as merely "invalid".
fn timespec_of_ms(ms: i64) -> std::io::Result<libc::timespec> {
    let tv_sec = time_t_of_secs(ms.div_euclid(1000)).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} does not fit this system's {}-bit time_t (the 2038 limit of 32-bit systems)",
                format_ms(ms),
                8 * std::mem::size_of::<libc::time_t>()
            ),
        )
    })?;
    Ok(libc::timespec {
        tv_sec,
        // Below 1e9: fits c_long, 32 bits or 64.
        tv_nsec: (ms.rem_euclid(1000) * 1_000_000) as libc::c_long,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unnecessary_cast)] // not unnecessary where time_t is i32
    fn times_past_2038_are_refused_only_where_time_t_is_32_bits() {
        let ts = timespec_of_ms(PLAUSIBLE_AFTER_MS + 999).unwrap();
        assert_eq!(ts.tv_sec as i64, PLAUSIBLE_AFTER_MS / 1000);
        assert_eq!(ts.tv_nsec as i64, 999_000_000);
        let last_32 = i64::from(i32::MAX) * 1000 + 999; // 2038-01-19T03:14:07.999Z
        assert_eq!(
            timespec_of_ms(last_32).unwrap().tv_sec as i64,
            i64::from(i32::MAX)
        );
        let later = PLAUSIBLE_BEFORE_MS - 1; // 2099-12-31T23:59:59.999Z
        match timespec_of_ms(later) {
            Ok(ts) => {
                assert_eq!(std::mem::size_of::<libc::time_t>(), 8);
                assert_eq!(ts.tv_sec as i64, later / 1000);
            }
            Err(e) => {
                assert_eq!(std::mem::size_of::<libc::time_t>(), 4);
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
                let msg = e.to_string();
                assert!(
                    msg.contains("2099-12-31") && msg.contains("32-bit time_t"),
                    "{msg}"
                );
            }
        }
    }

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
        assert!(clock.stamp(&t, Value::Number(1.0)).readings.is_empty());
        fake.advance(500);
        assert!(clock.stamp(&h, Value::Number(2.0)).readings.is_empty());
        fake.advance(500);
        assert!(clock.stamp(&t, Value::Number(3.0)).readings.is_empty());
        assert_eq!(clock.held(), 3);
        // Nothing went out with a 1970 time.
        fake.advance(1_000);
        clock.sync_to(SERVER); // the server's "now" is at boot + 3000 ms
        assert_eq!(clock.state(), ClockState::ServerSynced);
        let out = clock.stamp(&h, Value::Number(4.0)).readings;
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
        assert!(clock.stamp(&t, Value::Number(1.0)).readings.is_empty());
        // NTP steps the clock to the right time and reports sync.
        fake.step_realtime(SERVER);
        fake.advance(100);
        fake.0 .2.store(true, Ordering::SeqCst);
        let out = clock.stamp(&t, Value::Number(2.0)).readings;
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
                    .readings
                    .iter()
                    .map(|r| r.time_ms),
            );
        }
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        // Another sensor is not held back by the first one's stamps.
        let other: Arc<str> = "o".into();
        let o = clock.stamp(&other, Value::Number(0.0)).readings;
        assert_eq!(o[0].time_ms, clock.now_ms());
    }

    #[test]
    fn after_a_wrong_step_forward_is_corrected_stamps_follow_the_clock_again() {
        let fake = Fake::at(SERVER, 1_000);
        let clock = Clock::with_source(Box::new(fake.clone()));
        let t: Arc<str> = "t".into();
        let stamp = |c: &Clock| c.stamp(&t, Value::Number(0.0)).readings[0].time_ms;
        assert_eq!(stamp(&clock), SERVER);
        // A wrong time, 10 years ahead, then the right one again.
        let ahead = 10 * 365 * 86_400_000;
        clock.sync_to(SERVER + ahead);
        assert_eq!(stamp(&clock), SERVER + ahead);
        fake.advance(1_000);
        clock.sync_to(SERVER + 1_000);
        assert_eq!(stamp(&clock), SERVER + 1_000, "not stamped in the future");
        fake.advance(1_000);
        assert_eq!(stamp(&clock), SERVER + 2_000);
        // A step back within MAX_STAMP_LEAD_MS keeps the order instead.
        fake.step_realtime(-MAX_STAMP_LEAD_MS);
        assert_eq!(stamp(&clock), SERVER + 2_001);
    }

    #[test]
    fn a_server_time_is_checked_before_it_is_believed() {
        let fake = Fake::at(SERVER, 1_000);
        let clock = Clock::with_source(Box::new(fake.clone()));
        // Not synchronised: anything inside the plausible window.
        assert_eq!(clock.check_server_time(SERVER + 86_400_000), Ok(()));
        assert_eq!(clock.check_server_time(PLAUSIBLE_AFTER_MS), Ok(()));
        let year_2200 = 7_258_118_400_000;
        let e = clock.check_server_time(year_2200).unwrap_err();
        assert!(
            e.starts_with("2200-01-01T00:00:00.000Z is outside the plausible window 2026-01-01"),
            "{e}"
        );
        assert!(clock.check_server_time(PLAUSIBLE_BEFORE_MS).is_err());
        assert!(clock.check_server_time(PLAUSIBLE_AFTER_MS - 1).is_err());
        // Synchronised by NTP: only close to the system clock.
        fake.0 .2.store(true, Ordering::SeqCst);
        assert_eq!(
            clock.check_server_time(SERVER + MAX_SERVER_SKEW_FROM_NTP_MS),
            Ok(())
        );
        let e = clock.check_server_time(SERVER - 3_600_000).unwrap_err();
        assert!(e.contains("is -3600 s away from the system clock"), "{e}");
        assert!(e.contains("NTP has synchronised"), "{e}");
        assert_eq!(format_ms(-5), "-5 ms");
        assert_eq!(format_ms(i64::MAX), format!("{} ms", i64::MAX));
    }

    #[test]
    fn held_readings_survive_a_restart_in_the_same_boot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_FILE);
        let fake = Fake::at(5_000, 1_000);
        let t: Arc<str> = "t".into();
        let h: Arc<str> = "h".into();
        {
            let first = Clock::with_source(Box::new(fake.clone()));
            assert_eq!(first.persist_held(&path, "boot-1", &|_| true), 0);
            assert!(first.stamp(&t, Value::Number(1.0)).readings.is_empty());
            fake.advance(100);
            assert!(first.stamp(&h, Value::Text("x".into())).readings.is_empty());
            fake.advance(100);
            // Killed here: nothing else is written.
        }
        // A write cut short by the kill.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"[\"t\",12")
            .unwrap();
        let second = Clock::with_source(Box::new(fake.clone()));
        assert!(second.stamp(&t, Value::Number(0.5)).readings.is_empty()); // before loading
        assert_eq!(second.persist_held(&path, "boot-1", &|_| true), 2);
        assert_eq!(second.held(), 3);
        fake.advance(100);
        assert!(second.stamp(&t, Value::Number(3.0)).readings.is_empty());
        fake.advance(100);
        second.sync_to(SERVER); // now = boot 1400
        let stamped = second.stamp(&h, Value::Number(4.0));
        let out = stamped.readings;
        let got: Vec<(&str, i64, serde_json::Value)> = out
            .iter()
            .map(|r| (&*r.sensor_id, r.time_ms, r.value.to_json()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("t", SERVER - 400, serde_json::json!(1)),
                ("h", SERVER - 300, serde_json::json!("x")),
                // Taken by the second run before it loaded the first's.
                ("t", SERVER - 200, serde_json::json!(0.5)),
                ("t", SERVER - 100, serde_json::json!(3)),
                ("h", SERVER, serde_json::json!(4)),
            ]
        );
        // Released, but the buffer has not committed them yet: still on disk.
        assert!(path.exists(), "kept until the buffer's commit");
        second.release_committed(stamped.release.expect("a release"));
        assert!(!path.exists(), "committed: nothing held on disk");
        // A third run finds nothing.
        let third = Clock::with_source(Box::new(fake.clone()));
        assert_eq!(third.persist_held(&path, "boot-1", &|_| true), 0);
    }

    #[test]
    fn a_kill_between_release_and_commit_sends_them_again_rather_than_losing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_FILE);
        let fake = Fake::at(5_000, 1_000);
        let t: Arc<str> = "t".into();
        let first = Clock::with_source(Box::new(fake.clone()));
        first.persist_held(&path, "boot-1", &|_| true);
        assert!(first.stamp(&t, Value::Number(1.0)).readings.is_empty());
        fake.advance(100);
        first.sync_to(SERVER);
        let stamped = first.stamp(&t, Value::Number(2.0));
        assert_eq!(stamped.readings.len(), 2);
        // Killed before the buffer's commit: the next run holds them again.
        let again = Clock::with_source(Box::new(fake.clone()));
        drop(first); // killed before the buffer's commit
        assert_eq!(
            again.persist_held(&path, "boot-1", &|_| true),
            1,
            "released, uncommitted: loaded again"
        );
        // Untrusted again before the commit (the offset gone): the new held
        // reading joins the released one in the file, and the commit's
        // confirmation keeps only it.
        let third = Clock::with_source(Box::new(fake.clone()));
        third.persist_held(&path, "boot-1", &|_| true);
        fake.advance(100);
        third.sync_to(SERVER);
        let r = third.stamp(&t, Value::Number(3.0));
        third.offset_ms.store(0, Ordering::SeqCst);
        third.server_synced.store(false, Ordering::SeqCst);
        assert!(third.stamp(&t, Value::Number(4.0)).readings.is_empty());
        third.release_committed(r.release.unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().nth(1).unwrap().contains(",4]"), "{text}");
    }

    #[test]
    fn after_a_failed_write_the_file_gets_every_held_reading_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_FILE);
        let fake = Fake::at(5_000, 1_000);
        let t: Arc<str> = "t".into();
        let clock = Clock::with_source(Box::new(fake.clone()));
        clock.persist_held(&path, "boot-1", &|_| true);
        let lines = || std::fs::read_to_string(&path).unwrap().lines().count();
        // A file handle that cannot write: the next write fails (as on a
        // full disk).
        let break_file = || {
            clock.lock().log.as_mut().unwrap().file = Some(std::fs::File::open(&path).unwrap());
        };
        let failed = || clock.lock().log.as_ref().unwrap().failed;
        for v in 0..2 {
            assert!(clock.stamp(&t, Value::Number(v as f64)).readings.is_empty());
        }
        assert_eq!(lines(), 3);
        break_file();
        assert!(clock.stamp(&t, Value::Number(2.0)).readings.is_empty());
        assert!(failed());
        assert_eq!(lines(), 3, "the failed write added nothing");
        // The next one reopens the file with everything held, not only itself.
        assert!(clock.stamp(&t, Value::Number(3.0)).readings.is_empty());
        assert_eq!(lines(), 5);
        assert!(!failed(), "written again: a later failure warns again");
        assert!(clock.stamp(&t, Value::Number(4.0)).readings.is_empty());
        assert_eq!(lines(), 6);
        break_file();
        assert!(clock.stamp(&t, Value::Number(5.0)).readings.is_empty());
        assert!(failed());
        // And a restart loads all of them.
        assert!(clock.stamp(&t, Value::Number(6.0)).readings.is_empty());
        drop(clock);
        let again = Clock::with_source(Box::new(fake.clone()));
        assert_eq!(again.persist_held(&path, "boot-1", &|_| true), 7);
    }

    /// The log lines written while `f` runs.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let w = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
        text
    }

    #[test]
    fn held_readings_of_sensors_no_longer_configured_are_dropped_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_FILE);
        let fake = Fake::at(5_000, 1_000);
        let first = Clock::with_source(Box::new(fake.clone()));
        first.persist_held(&path, "boot-1", &|_| true);
        for id in ["kept", "gone", "kept", "gone", "also-gone"] {
            assert!(first
                .stamp(&id.into(), Value::Number(1.0))
                .readings
                .is_empty());
        }
        drop(first);
        let second = Clock::with_source(Box::new(fake.clone()));
        let logs = logs_of(|| {
            assert_eq!(second.persist_held(&path, "boot-1", &|id| id == "kept"), 2);
        });
        assert!(
            logs.contains("3 readings held before a restart are dropped: their sensors are no longer configured")
                && logs.contains("also-gone, gone"),
            "{logs}"
        );
        assert_eq!(second.held(), 2);
        // The file has only what is held now.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[test]
    fn an_earlier_boots_file_that_cannot_be_moved_aside_is_not_said_to_be_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_FILE);
        std::fs::write(&path, "{\"boot_id\":\"boot-1\"}\n[\"t\",1,1]\n").unwrap();
        // The place aside is taken by a directory: the rename fails.
        let aside = dir.path().join("held-readings.previous-boot.jsonl");
        std::fs::create_dir(&aside).unwrap();
        std::fs::write(aside.join("x"), "").unwrap();
        let clock = Clock::with_source(Box::new(Fake::at(5_000, 10)));
        let logs = logs_of(|| assert_eq!(clock.persist_held(&path, "boot-2", &|_| true), 0));
        assert!(logs.contains("cannot be moved aside"), "{logs}");
        assert!(!logs.contains("kept_in"), "{logs}");
        assert!(!path.exists());
        // Moved aside when it can be, and the log says where.
        std::fs::write(&path, "{\"boot_id\":\"boot-1\"}\n[\"t\",1,1]\n").unwrap();
        std::fs::remove_dir_all(&aside).unwrap();
        let logs = logs_of(|| assert_eq!(clock.persist_held(&path, "boot-2", &|_| true), 0));
        assert!(
            logs.contains(&format!("kept_in={}", aside.display())),
            "{logs}"
        );
        assert!(aside.is_file());
    }

    #[test]
    fn held_readings_of_an_earlier_boot_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_FILE);
        let fake = Fake::at(5_000, 1_000);
        let t: Arc<str> = "t".into();
        let first = Clock::with_source(Box::new(fake.clone()));
        first.persist_held(&path, "boot-1", &|_| true);
        for _ in 0..3 {
            assert!(first.stamp(&t, Value::Number(1.0)).readings.is_empty());
        }
        drop(first);
        let after_reboot = Clock::with_source(Box::new(Fake::at(5_000, 10)));
        assert_eq!(after_reboot.persist_held(&path, "boot-2", &|_| true), 0);
        assert_eq!(after_reboot.held(), 0);
        assert!(!path.exists());
        let aside = dir.path().join("held-readings.previous-boot.jsonl");
        assert_eq!(std::fs::read_to_string(aside).unwrap().lines().count(), 4);
    }

    #[test]
    fn the_held_readings_file_is_compacted_beyond_twice_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HELD_FILE);
        let fake = Fake::at(5_000, 1_000);
        let t: Arc<str> = "t".into();
        let clock = Clock::with_source(Box::new(fake.clone())).with_max_held(3);
        clock.persist_held(&path, "boot-1", &|_| true);
        let lines = || {
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .skip(1)
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
        };
        for v in 0..6 {
            assert!(clock.stamp(&t, Value::Number(v as f64)).readings.is_empty());
            fake.advance(1);
        }
        // Appended: the file grows past the cap (memory keeps the newest 3)...
        assert_eq!(lines().len(), 6);
        assert_eq!(clock.held(), 3);
        // ...until it would hold more than twice the cap: then it is
        // rewritten with what is held, the newest `cap` readings.
        assert!(clock.stamp(&t, Value::Number(6.0)).readings.is_empty());
        assert_eq!(
            lines(),
            vec!["[\"t\",1004,4]", "[\"t\",1005,5]", "[\"t\",1006,6]"]
        );
        assert_eq!(clock.held(), 3);
        // Appending goes on from there, and a restart loads what memory has.
        assert!(clock.stamp(&t, Value::Number(7.0)).readings.is_empty());
        assert_eq!(lines().len(), 4);
        drop(clock);
        let again = Clock::with_source(Box::new(fake.clone())).with_max_held(3);
        assert_eq!(again.persist_held(&path, "boot-1", &|_| true), 4);
        assert_eq!(again.held(), 3, "the oldest beyond the cap dropped on load");
        assert_eq!(lines().len(), 3);
    }

    #[test]
    fn a_test_clock_says_so_in_its_state() {
        let c = Clock::with_source(Box::new(ShiftedSource(-86_400_000)));
        assert!(
            c.describe().ends_with(
                " (test clock offset -86400000 ms: THINGPLUS_GW_TEST_CLOCK_OFFSET_MS is set)"
            ),
            "{}",
            c.describe()
        );
        assert_eq!(Clock::new().describe(), Clock::new().state().to_string());
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
