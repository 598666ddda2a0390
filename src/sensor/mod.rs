//! Sensors: where readings come from, and the task that samples each one.

pub mod convert;
pub mod device;
pub mod file;
pub mod modbus;
pub mod serial;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::config::{SensorConfig, SensorSource};
use crate::reading::Value;
use crate::status_board::StatusBoard;

/// What every sensor task shares with the rest of the daemon.
#[derive(Clone)]
pub struct SensorRuntime {
    pub buffer: Buffer,
    pub clock: Arc<Clock>,
    pub board: Arc<StatusBoard>,
    /// Woken when an event reading should go out before the next report.
    pub flush: Arc<Notify>,
    pub report_interval: watch::Receiver<Duration>,
}

/// Starts the sampling task of one file sensor (serial and Modbus sensors
/// are served by their port's or bus's task: `serial::spawn_port`,
/// `modbus::spawn_bus`).
pub fn spawn(cfg: SensorConfig, rt: SensorRuntime) -> JoinHandle<()> {
    tokio::spawn(sample_loop(cfg, rt))
}

fn read_once(cfg: &SensorConfig) -> Result<Value, String> {
    match &cfg.source {
        SensorSource::File { path, regex } => file::read(path, regex.as_ref(), cfg),
        SensorSource::Serial { port, .. } => Err(format!(
            "serial port \"{port}\" is read by its port task, not sampled on its own"
        )),
        SensorSource::Modbus(p) => Err(format!(
            "Modbus bus \"{}\" is read by its bus task, not sampled on its own",
            p.bus
        )),
    }
}

async fn sample_loop(cfg: SensorConfig, mut rt: SensorRuntime) {
    let sensor_id: Arc<str> = cfg.id.as_str().into();
    let mut sampler = Sampler::new(sensor_id, cfg.event);
    loop {
        let period = cfg
            .interval
            .unwrap_or(*rt.report_interval.borrow_and_update());
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let result = read_once(&cfg);
                    sampler.take(result, &rt);
                }
                changed = rt.report_interval.changed(), if cfg.interval.is_none() => {
                    if changed.is_err() {
                        return;
                    }
                    break; // new period: start a new ticker
                }
            }
        }
    }
}

/// Turns sample results into readings: change detection for event
/// sensors, times from the clock (strictly increasing per sensor, held
/// while the time is untrusted), and error logging once per change of state.
pub struct Sampler {
    sensor_id: Arc<str>,
    event: bool,
    last_event_value: Option<Value>,
    last_error: Option<String>,
}

impl Sampler {
    pub fn new(sensor_id: Arc<str>, event: bool) -> Self {
        Sampler {
            sensor_id,
            event,
            last_event_value: None,
            last_error: None,
        }
    }

    pub fn take(&mut self, result: Result<Value, String>, rt: &SensorRuntime) {
        let id = &*self.sensor_id;
        match result {
            Ok(value) => {
                if let Some(e) = self.last_error.take() {
                    tracing::info!(sensor_id = id, previous_error = %e, "sensor recovered: {id} reads again (it failed with: {e})");
                }
                if self.event {
                    if self.last_event_value.as_ref() == Some(&value) {
                        rt.board.record_value(id, rt.clock.now_ms(), &value);
                        return;
                    }
                    self.last_event_value = Some(value.clone());
                }
                let crate::clock::Stamped { readings, release } =
                    rt.clock.stamp(&self.sensor_id, value.clone());
                let t = readings
                    .last()
                    .map_or_else(|| rt.clock.now_ms(), |r| r.time_ms);
                rt.board.record_value(id, t, &value);
                if readings.is_empty() {
                    return; // held until the time is known
                }
                rt.buffer.append(readings);
                if let Some(release) = release {
                    // Held readings were released: the held readings file
                    // drops them only once the buffer has committed them (a
                    // crash in between sends them twice rather than never).
                    let commit = rt.buffer.commit();
                    let clock = rt.clock.clone();
                    tokio::spawn(async move {
                        match commit.await {
                            Ok(()) => clock.release_committed(release),
                            Err(e) => {
                                tracing::warn!(error = %e, "the buffer could not commit the released held readings ({e}): they stay in the held readings file and may be sent again after a restart")
                            }
                        }
                    });
                }
                if self.event {
                    rt.flush.notify_one();
                }
            }
            Err(e) => {
                rt.board.record_error(id, &e);
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(sensor_id = id, error = %e, "sensor read failed: {id}: {e}; its status is err until it recovers");
                    self.last_error = Some(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{SqliteOptions, SqliteStore};
    use crate::clock::{TimeSource, HELD_FILE};
    use crate::config::Fsync;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A box at 1970 (realtime 10 s, boot 10 s), never NTP-synchronised.
    struct At1970(AtomicI64);

    impl TimeSource for At1970 {
        fn realtime_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
        fn boottime_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
        fn synchronized(&self) -> bool {
            false
        }
    }

    fn committed_readings(dir: &std::path::Path) -> i64 {
        // Another connection sees only what the buffer has committed.
        let db = rusqlite::Connection::open(dir.join(crate::buffer::sqlite::DB_FILE)).unwrap();
        db.query_row("SELECT COALESCE(SUM(n), 0) FROM chunks", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn released_held_readings_leave_their_file_only_once_the_buffer_committed_them() {
        let dir = tempfile::tempdir().unwrap();
        let held_file = dir.path().join(HELD_FILE);
        let buf_dir = dir.path().join("buffer");
        // A period no test waits for: only an explicit commit commits.
        let fsync = Fsync::Period(Duration::from_secs(3600));
        let store = SqliteStore::open(&buf_dir, SqliteOptions::unbounded(fsync)).unwrap();
        let clock = Arc::new(Clock::with_source(Box::new(At1970(AtomicI64::new(10_000)))));
        clock.persist_held(&held_file, "boot-1", &|_| true);
        let (_tx, report_interval) = watch::channel(Duration::from_secs(60));
        let rt = SensorRuntime {
            buffer: Buffer::start(store, fsync),
            clock: clock.clone(),
            board: Arc::new(StatusBoard::new(["t".to_string()])),
            flush: Arc::new(Notify::new()),
            report_interval,
        };
        let mut sampler = Sampler::new("t".into(), false);
        for v in 0..3 {
            sampler.take(Ok(Value::Number(v as f64)), &rt);
        }
        assert_eq!(clock.held(), 3);
        clock.sync_to(1_800_000_000_000);
        sampler.take(Ok(Value::Number(3.0)), &rt);
        // Released and appended, not yet committed: the file still has them.
        assert_eq!(clock.held(), 0);
        assert_eq!(
            std::fs::read_to_string(&held_file).unwrap().lines().count(),
            4
        );
        // The file goes once the buffer's commit is confirmed...
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while held_file.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "held file never removed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...and by then the released readings are committed, long before
        // the fsync period would have committed them.
        assert_eq!(committed_readings(&buf_dir), 4);
        rt.buffer.close().await.unwrap();
    }
}
