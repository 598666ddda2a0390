//! What the daemon knows about its sensors right now: each one's status,
//! last value and error. Sensors write it; the status report and the
//! operator tools read it.

use std::sync::Mutex;
use std::time::Duration;

use crate::fasthash::FxHashMap;
use crate::reading::Value;
use crate::thingplus::Status;

/// How long a status report stays valid, in whole seconds (its `valid`
/// field): the configured `status_validity`, else twice the report interval
/// (a report may be late by up to one interval before the cloud marks the
/// gateway and its sensors stale), rounded up.
pub fn status_valid_secs(configured: Option<Duration>, report_interval: Duration) -> i64 {
    let valid = configured.unwrap_or(report_interval.saturating_mul(2));
    let secs = valid
        .as_secs()
        .saturating_add(u64::from(valid.subsec_nanos() > 0));
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[derive(Clone, Debug)]
pub struct SensorState {
    pub id: String,
    pub status: Status,
    pub last_value: Option<Value>,
    pub last_time_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct StatusBoard {
    sensors: Mutex<Board>,
}

/// The sensors in order, and where each id is: every reading records its
/// value here, so finding a sensor must not cost a scan of all of them.
#[derive(Debug, Default)]
struct Board {
    list: Vec<SensorState>,
    index: FxHashMap<String, usize>,
}

impl Board {
    fn new(list: Vec<SensorState>) -> Self {
        let mut index = FxHashMap::default();
        index.reserve(list.len());
        for (i, s) in list.iter().enumerate() {
            // The first of duplicate ids wins, as a scan would find it.
            index.entry(s.id.clone()).or_insert(i);
        }
        Board { list, index }
    }
}

fn off(id: String) -> SensorState {
    SensorState {
        id,
        status: Status::Off,
        last_value: None,
        last_time_ms: None,
        error: None,
    }
}

impl StatusBoard {
    /// A board listing `ids` in order, all `off` until their first sample.
    pub fn new<I: IntoIterator<Item = String>>(ids: I) -> Self {
        StatusBoard {
            sensors: Mutex::new(Board::new(ids.into_iter().map(off).collect())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.sensors.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<R>(&self, id: &str, f: impl FnOnce(&mut SensorState) -> R) -> Option<R> {
        let mut b = self.lock();
        let i = *b.index.get(id)?;
        b.list.get_mut(i).map(f)
    }

    pub fn record_value(&self, id: &str, time_ms: i64, value: &Value) {
        self.with(id, |s| {
            s.status = Status::On;
            match (&mut s.last_value, value) {
                // A number (nearly every reading) replaces a number in place.
                (Some(Value::Number(n)), Value::Number(v)) => *n = *v,
                (last, v) => *last = Some(v.clone()),
            }
            s.last_time_ms = Some(time_ms);
            s.error = None;
        });
    }

    pub fn record_error(&self, id: &str, error: &str) {
        self.with(id, |s| {
            s.status = Status::Err(Some(error.to_string()));
            s.error = Some(error.to_string());
        });
    }

    /// Replaces the list of sensors (after a reload), in the new order;
    /// sensors that stay keep their state, new ones start `off`.
    pub fn set_sensors<I: IntoIterator<Item = String>>(&self, ids: I) {
        let mut b = self.lock();
        let old = std::mem::take(&mut *b);
        let list = ids
            .into_iter()
            .map(|id| match old.index.get(&id) {
                Some(&i) => old.list[i].clone(),
                None => off(id),
            })
            .collect();
        *b = Board::new(list);
    }

    pub fn snapshot(&self) -> Vec<SensorState> {
        self.lock().list.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_valid_for_twice_the_report_interval_unless_configured() {
        let s = Duration::from_secs;
        assert_eq!(status_valid_secs(None, s(60)), 120);
        assert_eq!(status_valid_secs(None, Duration::from_millis(500)), 1);
        assert_eq!(status_valid_secs(None, Duration::from_millis(750)), 2);
        assert_eq!(status_valid_secs(Some(s(300)), s(60)), 300);
        assert_eq!(status_valid_secs(Some(Duration::from_millis(1)), s(60)), 1);
        assert_eq!(status_valid_secs(None, Duration::MAX), i64::MAX);
    }

    #[test]
    fn records_values_and_errors() {
        let b = StatusBoard::new(["a".to_string(), "b".to_string()]);
        b.record_value("a", 5, &Value::Number(1.0));
        b.record_error("b", "gone");
        let s = b.snapshot();
        assert_eq!(s[0].status, Status::On);
        assert_eq!(s[0].last_time_ms, Some(5));
        assert_eq!(s[1].status, Status::Err(Some("gone".into())));
        b.set_sensors(["c".to_string(), "a".to_string()]);
        let s = b.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].id.as_str(), &s[0].status), ("c", &Status::Off));
        assert_eq!((s[1].id.as_str(), s[1].last_time_ms), ("a", Some(5)));
    }
}
