//! The store-and-forward buffer between sensors and the MQTT session.
//!
//! Every reading is appended here, online or not, and removed only after the
//! broker acknowledged the message that carried it. A [`Store`] does the
//! keeping; [`Buffer`] runs one on its own thread so that neither disk I/O
//! nor locking ever happens on the async runtime.

pub mod memory;

use std::ops::Range;
use std::sync::mpsc;
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
    tx: mpsc::Sender<Command>,
}

impl Buffer {
    /// Starts the buffer thread over `store`, committing as `fsync` says.
    pub fn start(store: impl Store, fsync: Fsync) -> Buffer {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("buffer".into())
            .spawn(move || run(store, fsync, rx))
            .expect("spawn buffer thread");
        Buffer { tx }
    }

    /// Queues readings for appending; never waits for the disk.
    pub fn append(&self, readings: Vec<Reading>) {
        if !readings.is_empty() {
            let _ = self.tx.send(Command::Append(readings));
        }
    }

    pub async fn read(&self, from: u64, max: usize) -> StoreResult<Vec<Stored>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Read { from, max, reply })?;
        rx.await.map_err(|_| gone())?
    }

    pub fn ack(&self, range: Range<u64>) {
        let _ = self.tx.send(Command::Ack(range));
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
        self.tx.send(c).map_err(|_| gone())
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
