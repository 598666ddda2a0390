//! Rate limits for warnings that someone else can trigger at will (bad
//! requests from the cloud): a few lines per period, then one line that
//! says how many were suppressed, so a flood cannot flood the journal.

use std::time::{Duration, Instant};

/// What to do with one more warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it.
    Log,
    /// Log it, and say that the next ones in this period are suppressed.
    LogLast,
    /// Count it only: the first of this period (the moment to arrange for
    /// the summary at [`WarnLimiter::summary_due`]).
    SuppressFirst,
    /// Count it only.
    Suppress,
}

impl Verdict {
    pub fn logs(self) -> bool {
        matches!(self, Verdict::Log | Verdict::LogLast)
    }
}

/// At most `burst` warnings per `period`; the rest are counted.
#[derive(Debug)]
pub struct WarnLimiter {
    burst: u32,
    period: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
    /// The last suppressed warning's text, for the summary.
    last: String,
}

/// The warnings suppressed in one period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u64,
    pub period: Duration,
    pub last: String,
}

impl WarnLimiter {
    pub const fn new(burst: u32, period: Duration) -> Self {
        WarnLimiter {
            burst,
            period,
            window_start: None,
            logged: 0,
            suppressed: 0,
            last: String::new(),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Decides about one warning at `now`; `text` is kept when suppressed.
    pub fn check(&mut self, now: Instant, text: impl FnOnce() -> String) -> Verdict {
        let start = *self.window_start.get_or_insert(now);
        // A new period starts only after the last one's count was taken.
        if now.duration_since(start) >= self.period && self.suppressed == 0 {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            if self.logged == self.burst {
                Verdict::LogLast
            } else {
                Verdict::Log
            }
        } else {
            self.suppressed += 1;
            self.last = text();
            if self.suppressed == 1 {
                Verdict::SuppressFirst
            } else {
                Verdict::Suppress
            }
        }
    }

    /// When the count of suppressed warnings is due, if any were suppressed.
    pub fn summary_due(&self) -> Option<Instant> {
        (self.suppressed > 0)
            .then(|| self.window_start.map(|s| s + self.period))
            .flatten()
    }

    /// The count of this period once it is over (and a new period).
    pub fn take_summary(&mut self, now: Instant) -> Option<Suppressed> {
        let due = self.summary_due()?;
        if now < due {
            return None;
        }
        let s = Suppressed {
            count: std::mem::take(&mut self.suppressed),
            period: self.period,
            last: std::mem::take(&mut self.last),
        };
        self.window_start = Some(now);
        self.logged = 0;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_count_then_a_new_period() {
        let t0 = Instant::now();
        let period = Duration::from_secs(10);
        let mut l = WarnLimiter::new(3, period);
        let v: Vec<_> = (0..10).map(|i| l.check(t0, || format!("w{i}"))).collect();
        assert_eq!(&v[..3], &[Verdict::Log, Verdict::Log, Verdict::LogLast]);
        assert_eq!(v[3], Verdict::SuppressFirst);
        assert!(v[4..].iter().all(|v| *v == Verdict::Suppress));
        assert_eq!(l.summary_due(), Some(t0 + period));
        assert_eq!(l.take_summary(t0 + period / 2), None);
        // Still suppressed after the period while the count is not taken.
        assert_eq!(l.check(t0 + period, || "w10".into()), Verdict::Suppress);
        let s = l.take_summary(t0 + period).unwrap();
        assert_eq!((s.count, s.last.as_str()), (8, "w10"));
        assert_eq!(l.summary_due(), None);
        assert_eq!(l.check(t0 + period, || "x".into()), Verdict::Log);
    }

    #[test]
    fn a_quiet_period_gives_a_new_burst_without_a_summary() {
        let t0 = Instant::now();
        let mut l = WarnLimiter::new(2, Duration::from_secs(1));
        assert_eq!(l.check(t0, String::new), Verdict::Log);
        assert_eq!(l.check(t0, String::new), Verdict::LogLast);
        assert_eq!(l.summary_due(), None);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(l.check(t1, String::new), Verdict::Log);
    }
}
