//! The service manager's side: sd_notify readiness, status, watchdog,
//! reload and stop notifications.
//!
//! Watchdog design: `WATCHDOG=1` is sent only from the daemon's main loop,
//! on the same single-threaded tokio runtime as the sensor tasks and the
//! MQTT session, and only after [`Health`] confirmed that
//! - the runtime is making progress (the main loop got to run its tick: a
//!   blocking call or deadlock in any task freezes the whole runtime, and the
//!   beats stop),
//! - no sensor task and not the session task has ended unexpectedly,
//! - the buffer thread answers a request within the beat period.
//!
//! There is no timer thread that could keep beating through a deadlock.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::buffer::Buffer;
use crate::session::LinkState;

/// What the daemon tells systemd through `$NOTIFY_SOCKET`. Every call is a
/// no-op when the variable is not set (started by hand).
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_status: String,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` / `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            last_status: String::new(),
        }
    }

    /// True when a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog timeout systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often the main loop checks health, beats and refreshes the
    /// status: half the watchdog timeout (as sd_watchdog_enabled(3)
    /// advises), at most every 5 s.
    pub fn tick_period(&self) -> Duration {
        let status_period = Duration::from_secs(5);
        match self.watchdog {
            Some(w) => (w / 2).clamp(Duration::from_millis(10), status_period),
            None => status_period,
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with a first status.
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=...`, sent only when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    /// `WATCHDOG=1`. Call only after [`Health::check`] said yes.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (required by systemd >= 253).
    pub fn reloading(&mut self) {
        let status = "reloading the configuration";
        self.last_status = status.into();
        match monotonic_usec_now() {
            Some(now) => self.send(&[
                NotifyState::Reloading,
                NotifyState::MonotonicUsec(now),
                NotifyState::Status(status),
            ]),
            None => self.send(&[NotifyState::Reloading, NotifyState::Status(status)]),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&mut self) {
        let status = "stopping: delivering what is pending";
        self.last_status = status.into();
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

/// CLOCK_MONOTONIC in microseconds, for `MONOTONIC_USEC`. Not sd-notify's
/// `monotonic_usec_now`: it multiplies in `time_t`, which is 32 bits on
/// armhf, so it overflows once the box has been up 36 minutes.
fn monotonic_usec_now() -> Option<i128> {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return None;
    }
    Some(usec_of(ts.tv_sec, ts.tv_nsec))
}

/// Microseconds of a `timespec`, widened before multiplying.
fn usec_of(sec: libc::time_t, nsec: libc::c_long) -> i128 {
    i128::from(sec) * 1_000_000 + i128::from(nsec) / 1_000
}

/// Decides whether the daemon deserves a watchdog beat.
pub struct Health {
    /// Answer time allowed to the buffer thread.
    buffer_timeout: Duration,
    /// What was wrong at the last check, to log each problem once.
    last_problem: Option<String>,
    /// Readings pending in the buffer at the last check.
    pub pending: Option<u64>,
}

impl Health {
    pub fn new(buffer_timeout: Duration) -> Self {
        Health {
            buffer_timeout,
            last_problem: None,
            pending: None,
        }
    }

    /// Checks the parts of the daemon; true when all are alive. `tasks`
    /// are the sensor tasks and the session task, with a name for the log.
    /// Runs on the main loop: that it runs at all shows the runtime is not
    /// blocked.
    pub async fn check<'a>(
        &mut self,
        buffer: &Buffer,
        tasks: impl IntoIterator<Item = (&'a str, &'a tokio::task::JoinHandle<()>)>,
    ) -> bool {
        let mut problem = None;
        for (name, t) in tasks {
            if t.is_finished() {
                problem = Some(format!("task {name} has stopped"));
                break;
            }
        }
        match tokio::time::timeout(self.buffer_timeout, buffer.stats()).await {
            Ok(Ok(stats)) => self.pending = Some(stats.pending),
            Ok(Err(e)) => {
                problem.get_or_insert_with(|| format!("the buffer does not work: {e}"));
            }
            Err(_) => {
                problem.get_or_insert_with(|| {
                    format!(
                        "the buffer did not answer within {} ms",
                        self.buffer_timeout.as_millis()
                    )
                });
            }
        }
        match problem {
            None => {
                if self.last_problem.take().is_some() {
                    tracing::info!("all parts alive again: watchdog beats resume");
                }
                true
            }
            Some(p) => {
                if self.last_problem.as_deref() != Some(p.as_str()) {
                    tracing::error!(problem = %p, "unhealthy: withholding the watchdog beat, systemd will restart the service if this lasts");
                    self.last_problem = Some(p);
                }
                false
            }
        }
    }
}

/// The one-line status `systemctl status` shows, such as
/// "connected to mqtt.thingplus.net, 0 pending" or
/// "offline since 12:03, 5 231 pending, retry in 40 s".
pub fn status_line(link: &LinkState, broker: &str, pending: Option<u64>, now_ms: i64) -> String {
    let pending = match pending {
        Some(n) => format!("{} pending", group_thousands(n)),
        None => "pending unknown".to_string(),
    };
    if link.connected {
        let host = if link.broker.is_empty() {
            broker
        } else {
            &link.broker
        };
        let host = host.strip_suffix(":8883").unwrap_or(host);
        return format!("connected to {host}, {pending}");
    }
    let mut s = if link.since_ms > 0 {
        format!("offline since {}, {pending}", local_hhmm(link.since_ms))
    } else {
        format!("connecting to {broker}, {pending}")
    };
    if let Some(at) = link.retry_at_ms {
        let secs = ((at - now_ms).max(0) + 999) / 1000;
        s.push_str(&format!(", retry in {secs} s"));
    }
    s
}

/// 5231 -> "5 231".
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Local wall-clock "HH:MM" of a time in ms since the epoch.
fn local_hhmm(ms: i64) -> String {
    // A 32-bit time_t (armhf) cannot hold a time past 2038: no wrapped hour.
    let Some(t) = crate::clock::time_t_of_secs(ms / 1000) else {
        return "?".into();
    };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return "?".into();
    }
    format!("{:02}:{:02}", tm.tm_hour, tm.tm_min)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box up 30 days: the microseconds do not fit 32 bits (armhf's
    /// `time_t`), and must not overflow or wrap.
    #[test]
    fn monotonic_usec_is_exact_past_32_bits() {
        let thirty_days = 30 * 86_400;
        assert_eq!(usec_of(thirty_days, 999_999_999), 2_592_000_999_999);
        assert!(monotonic_usec_now().is_some_and(|us| us > 0));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(5231), "5 231");
        assert_eq!(group_thousands(1234567), "1 234 567");
    }

    #[test]
    fn status_lines_read_well() {
        let mut l = LinkState {
            connected: true,
            broker: "mqtt.thingplus.net:8883".into(),
            ..Default::default()
        };
        assert_eq!(
            status_line(&l, "x", Some(0), 0),
            "connected to mqtt.thingplus.net, 0 pending"
        );
        l.connected = false;
        l.since_ms = 1_000_000;
        l.retry_at_ms = Some(1_040_000);
        let s = status_line(&l, "x", Some(5231), 1_000_000);
        assert!(s.starts_with("offline since "), "{s}");
        assert!(s.ends_with(", 5 231 pending, retry in 40 s"), "{s}");
        let fresh = LinkState::default();
        assert_eq!(
            status_line(&fresh, "h:1883", Some(3), 0),
            "connecting to h:1883, 3 pending"
        );
    }
}
