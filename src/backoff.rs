//! The one retry policy of the daemon: the MQTT session between connection
//! attempts, serial ports and Modbus buses between opens.
//!
//! Delays double from `min` up to `max`, with jitter so that boxes (or ports)
//! that failed together do not retry in lockstep, and never go under `min`:
//! Thing+ asks gateways never to reconnect faster than every 10 s.

use std::time::Duration;

/// Delay before attempt number `failures + 1`: `min * 2^failures` capped at
/// `max`, scaled by a jitter between 0.5 and 1 (`rand01` in 0..=1), never
/// under `min`. Pure, so it is tested without a clock or a random source.
pub fn delay(failures: u32, min: Duration, max: Duration, rand01: f64) -> Duration {
    let base = min.saturating_mul(1u32 << failures.min(20)).min(max);
    base.mul_f64(0.5 + 0.5 * rand01.clamp(0.0, 1.0)).max(min)
}

/// The failure count of one retrying thing, turned into [`delay`]s.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            failures: 0,
        }
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.failures, self.min, self.max, fastrand::f64());
        self.failures = self.failures.saturating_add(1);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_under_min_and_capped_at_max() {
        let min = Duration::from_secs(10);
        let max = Duration::from_secs(300);
        for f in 0..40 {
            for r in [0.0, 0.5, 1.0] {
                let d = delay(f, min, max, r);
                assert!(d >= min, "{f} {r} {d:?}");
                assert!(d <= max, "{f} {r} {d:?}");
            }
        }
        assert_eq!(delay(0, min, max, 1.0), min);
        assert_eq!(delay(3, min, max, 1.0), Duration::from_secs(80));
        assert_eq!(delay(3, min, max, 0.0), Duration::from_secs(40));
        assert_eq!(delay(10, min, max, 1.0), max);
        assert_eq!(delay(u32::MAX, min, max, 0.0), max / 2);
    }

    #[test]
    fn backoff_grows_then_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert_eq!(first, min);
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?}");
        }
        // Ten failures in, the base is capped at max: the jitter keeps it in max/2..=max.
        assert!(b.next_delay() >= max / 2);
        b.reset();
        assert_eq!(b.next_delay(), min);
    }
}
