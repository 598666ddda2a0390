//! The store-and-forward buffer between sensors and the MQTT session.
//!
//! Every reading is appended here, online or not, and removed only after the
//! broker acknowledged the message that carried it. A [`Store`] does the
//! keeping; [`Buffer`] runs one on its own thread so that neither disk I/O
//! nor locking ever happens on the async runtime.

pub mod memory;

use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::Fsync;
use crate::sensor::Reading;

pub use memory::MemoryStore;

/// A reading with its place in the queue. Sequence numbers only grow.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub seq: u64,
    pub reading: Reading,
}

impl std::borrow::Borrow<Reading> for Stored {
    fn borrow(&self) -> &Reading {
        &self.reading
    }
}

/// What the buffer holds, for status and logs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BufferStats {
    /// Readings appended and not yet acknowledged.
    pub pending: u64,
    /// Bytes the store uses (on disk or in memory).
    pub bytes: u64,
    /// Time of the oldest pending reading, ms.
    pub oldest_ms: Option<i64>,
    /// Readings dropped since start because a bound was hit.
    pub dropped: u64,
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Failed(String),
}

/// A durable (or not) ordered queue of readings.
pub trait Store: Send + 'static {
    /// Adds readings at the end, in order. They are visible to `read` at once;
    /// durable after the next `commit`.
    fn append(&mut self, readings: Vec<Reading>) -> StoreResult<()>;
    /// Makes every append so far durable.
    fn commit(&mut self) -> StoreResult<()>;
    /// Up to `max` readings with `seq >= from`, oldest first.
    fn read(&mut self, from: u64, max: usize) -> StoreResult<Vec<Stored>>;
    /// Removes the readings whose seq is in `range` (acknowledged by the broker).
    fn ack(&mut self, range: Range<u64>) -> StoreResult<()>;
    fn stats(&mut self) -> StoreResult<BufferStats>;
}

enum Command {
    Append(Vec<Reading>),
    Read {
        from: u64,
        max: usize,
        reply: oneshot::Sender<StoreResult<Vec<Stored>>>,
    },
    Ack(Range<u64>),
    Stats(oneshot::Sender<StoreResult<BufferStats>>),
    Close(oneshot::Sender<StoreResult<()>>),
}

/// A handle to the buffer thread. Cheap to clone; every clone talks to the
/// same store, and commands are carried out in the order they are sent.
#[derive(Clone)]
pub struct Buffer {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Command>,
    /// Readings appended on the async runtime and not yet handed to the
    /// thread (see [`Buffer::append`]). Any other command hands them over first.
    staged: Mutex<Vec<Reading>>,
}

impl Shared {
    fn staged(&self) -> MutexGuard<'_, Vec<Reading>> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `c` after whatever is staged. The lock is held across both
    /// sends, so nothing staged later can overtake the command.
    fn send(&self, c: Option<Command>) -> Result<(), mpsc::SendError<Command>> {
        let mut staged = self.staged();
        if !staged.is_empty() {
            self.tx
                .send(Command::Append(std::mem::take(&mut *staged)))?;
        }
        match c {
            Some(c) => self.tx.send(c),
            None => Ok(()),
        }
    }
}

/// Hands the staged readings to the thread when dropped.
struct Handover(Arc<Shared>);

impl Drop for Handover {
    fn drop(&mut self) {
        let _ = self.0.send(None);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: what is staged still goes to the store.
        let _ = self.send(None);
    }
}

impl Buffer {
    /// Starts the buffer thread over `store`, committing as `fsync` says.
    pub fn start(store: impl Store, fsync: Fsync) -> Buffer {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("buffer".into())
            .spawn(move || run(store, fsync, rx))
            .expect("spawn buffer thread");
        Buffer {
            shared: Arc::new(Shared {
                tx,
                staged: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Queues readings for appending; never waits for the disk.
    ///
    /// On the async runtime, the readings appended during one turn of it
    /// (every sensor woken by the same timer tick) are handed to the thread
    /// together, by a task that runs after them: one wake-up of the thread
    /// per burst instead of one per reading. Elsewhere they are sent at once.
    pub fn append(&self, readings: Vec<Reading>) {
        if readings.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let _ = self.shared.send(Some(Command::Append(readings)));
            return;
        };
        let mut staged = self.shared.staged();
        if !staged.is_empty() {
            staged.extend(readings);
            return;
        }
        *staged = readings;
        drop(staged);
        // Hands them over when the task runs, or when it is dropped unrun
        // (the runtime shutting down): never left behind.
        let handover = Handover(self.shared.clone());
        runtime.spawn(async move { drop(handover) });
    }

    pub async fn read(&self, from: u64, max: usize) -> StoreResult<Vec<Stored>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Read { from, max, reply })?;
        rx.await.map_err(|_| gone())?
    }

    pub fn ack(&self, range: Range<u64>) {
        let _ = self.shared.send(Some(Command::Ack(range)));
    }

    pub async fn stats(&self) -> StoreResult<BufferStats> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats(reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Commits what is pending and stops the thread.
    pub async fn close(&self) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close(reply))?;
        rx.await.map_err(|_| gone())?
    }

    fn send(&self, c: Command) -> StoreResult<()> {
        self.shared.send(Some(c)).map_err(|_| gone())
    }
}

fn gone() -> StoreError {
    StoreError::Failed("the buffer thread has stopped".into())
}

fn run(mut store: impl Store, fsync: Fsync, rx: mpsc::Receiver<Command>) {
    let period = match fsync {
        Fsync::Period(p) => Some(p),
        // "never" still commits now and then so the WAL does not grow without bound;
        // only the fsync is skipped (the store decides that).
        Fsync::Never => Some(Duration::from_secs(5)),
        Fsync::Always => None,
    };
    let mut dirty_since: Option<Instant> = None;
    loop {
        let cmd = match (dirty_since, period) {
            (Some(since), Some(p)) => {
                let left = p.saturating_sub(since.elapsed());
                match rx.recv_timeout(left) {
                    Ok(c) => Some(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            _ => match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            },
        };
        match cmd {
            None => {}
            Some(Command::Append(r)) => {
                if let Err(e) = store.append(r) {
                    tracing::error!(error = %e, "buffer append failed");
                }
                dirty_since.get_or_insert_with(Instant::now);
            }
            Some(Command::Read { from, max, reply }) => {
                let _ = reply.send(store.read(from, max));
            }
            Some(Command::Ack(range)) => {
                if let Err(e) = store.ack(range) {
                    tracing::error!(error = %e, "buffer ack failed");
                }
                dirty_since.get_or_insert_with(Instant::now);
            }
            Some(Command::Stats(reply)) => {
                let _ = reply.send(store.stats());
            }
            Some(Command::Close(reply)) => {
                let _ = reply.send(store.commit());
                return;
            }
        }
        let due = match (dirty_since, period) {
            (Some(_), None) => true,
            (Some(since), Some(p)) => since.elapsed() >= p,
            (None, _) => false,
        };
        if due {
            if let Err(e) = store.commit() {
                tracing::error!(error = %e, "buffer commit failed");
            }
            dirty_since = None;
        }
    }
    let _ = store.commit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::Value;

    /// A store that records the size of each append it gets.
    struct Recording(MemoryStore, Arc<Mutex<Vec<usize>>>);

    impl Store for Recording {
        fn append(&mut self, readings: Vec<Reading>) -> StoreResult<()> {
            self.1.lock().unwrap().push(readings.len());
            self.0.append(readings)
        }
        fn commit(&mut self) -> StoreResult<()> {
            self.0.commit()
        }
        fn read(&mut self, from: u64, max: usize) -> StoreResult<Vec<Stored>> {
            self.0.read(from, max)
        }
        fn ack(&mut self, range: Range<u64>) -> StoreResult<()> {
            self.0.ack(range)
        }
        fn stats(&mut self) -> StoreResult<BufferStats> {
            self.0.stats()
        }
    }

    fn recording() -> (Buffer, Arc<Mutex<Vec<usize>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = Recording(MemoryStore::new(u64::MAX), seen.clone());
        (Buffer::start(store, Fsync::Never), seen)
    }

    fn r(t: i64) -> Reading {
        Reading::new("s", t, Value::Number(t as f64))
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn appends_of_one_runtime_turn_reach_the_thread_together_and_in_order() {
        let (b, seen) = recording();
        current_thread().block_on(async {
            for t in 1..=5 {
                b.append(vec![r(t)]);
            }
            tokio::task::yield_now().await; // the hand-over task runs
            b.append(vec![r(6)]);
            // Any command hands over what is staged before it.
            let got = b.read(0, 100).await.unwrap();
            let times: Vec<i64> = got.iter().map(|s| s.reading.time_ms).collect();
            assert_eq!(times, vec![1, 2, 3, 4, 5, 6]);
            b.close().await.unwrap();
        });
        assert_eq!(*seen.lock().unwrap(), vec![5, 1]);
    }

    #[test]
    fn staged_readings_survive_a_runtime_that_stops_and_dropped_handles() {
        let (b, seen) = recording();
        let rt = current_thread();
        rt.block_on(async { b.append(vec![r(1), r(2)]) });
        drop(rt); // the hand-over task never ran: dropping it hands over
        wait_for(&seen, 2);
        // Outside a runtime, appends go at once.
        b.append(vec![r(3)]);
        let rt = current_thread();
        let stats = rt.block_on(b.stats()).unwrap();
        assert_eq!(stats.pending, 3);
        rt.block_on(async { b.append(vec![r(4)]) });
        // The runtime still exists (its hand-over task is queued) but every
        // handle goes: the readings still reach the store.
        drop(b);
        drop(rt);
        wait_for(&seen, 4);
    }

    /// Waits until the store got `n` readings in all.
    fn wait_for(seen: &Mutex<Vec<usize>>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().iter().sum::<usize>() < n {
            assert!(Instant::now() < deadline, "{:?}", seen.lock().unwrap());
            thread::sleep(Duration::from_millis(5));
        }
    }
}
