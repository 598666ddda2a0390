//! The store-and-forward buffer between sensors and the MQTT session.
//!
//! Every reading is appended here, online or not, and removed only after the
//! broker acknowledged the message that carried it. A [`Store`] does the
//! keeping; [`Buffer`] runs one on its own thread so that neither disk I/O
//! nor locking ever happens on the async runtime.

pub mod codec;
pub mod memory;
#[cfg(test)]
mod proptests;
pub mod sqlite;

use std::ops::Range;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::{BufferConfig, Fsync};
use crate::sensor::value::{number_json, NumberBuffer};
use crate::sensor::{Reading, Value};
use crate::thingplus::Packer;

pub use memory::MemoryStore;
pub use sqlite::{OpenError, SqliteOptions, SqliteStore};

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

/// A values message ready to publish, and the readings it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    /// The `v/a/g/{gw}` payload; larger than the bound asked only when it
    /// holds a single reading.
    pub payload: Vec<u8>,
    /// From the first reading's seq to just past the last one's: the range
    /// to acknowledge.
    pub seqs: Range<u64>,
    pub count: usize,
}

/// Packs readings, in queue order, into messages within a size bound.
pub struct MessageBuilder<'a> {
    max_bytes: usize,
    max_messages: usize,
    out: Vec<Packed>,
    packer: Packer<'a>,
    first: u64,
    last: u64,
}

impl<'a> MessageBuilder<'a> {
    pub fn new(max_bytes: usize, max_messages: usize) -> Self {
        MessageBuilder {
            max_bytes,
            max_messages,
            out: Vec::new(),
            packer: Packer::new(max_bytes),
            first: 0,
            last: 0,
        }
    }

    /// Adds a reading whose value is JSON text. Returns false, without taking
    /// it, once `max_messages` messages are complete.
    pub fn add(&mut self, seq: u64, sensor_id: &'a str, time_ms: i64, value_json: &[u8]) -> bool {
        if self.out.len() >= self.max_messages {
            return false;
        }
        if !self.packer.push(sensor_id, time_ms, value_json) {
            // Full: this reading opens the next message.
            let done = std::mem::replace(&mut self.packer, Packer::new(self.max_bytes));
            self.out.push(Packed {
                count: done.len(),
                payload: done.finish(),
                seqs: self.first..self.last + 1,
            });
            if self.out.len() >= self.max_messages {
                return false;
            }
            self.packer.push(sensor_id, time_ms, value_json);
        }
        if self.packer.len() == 1 {
            self.first = seq;
        }
        self.last = seq;
        true
    }

    /// The messages. The last, not full, one is left out when `more`
    /// readings may follow it, unless it is the only one.
    pub fn finish(mut self, more: bool) -> Vec<Packed> {
        if !self.packer.is_empty()
            && self.out.len() < self.max_messages
            && (!more || self.out.is_empty())
        {
            self.out.push(Packed {
                count: self.packer.len(),
                payload: self.packer.finish(),
                seqs: self.first..self.last + 1,
            });
        }
        self.out
    }
}

/// Packs stored readings into at most `max_messages` messages; `more`: other
/// readings may follow these.
pub fn pack_messages(
    readings: &[Stored],
    max_bytes: usize,
    max_messages: usize,
    more: bool,
) -> Vec<Packed> {
    let mut b = MessageBuilder::new(max_bytes, max_messages);
    let mut numbers = NumberBuffer::default();
    let mut text = String::new();
    for s in readings {
        let r = &s.reading;
        let v: &str = match &r.value {
            Value::Number(n) => number_json(*n, &mut numbers),
            other => {
                text.clear();
                other.write_json(&mut text);
                &text
            }
        };
        if !b.add(s.seq, &r.sensor_id, r.time_ms, v.as_bytes()) {
            return b.finish(true);
        }
    }
    b.finish(more)
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
    /// Makes every change so far (appends and acks) survive a crash of the
    /// process (SIGKILL, panic, OOM kill).
    fn commit(&mut self) -> StoreResult<()>;
    /// Makes every committed change survive a power cut as well. The buffer
    /// calls it once per `fsync` period; a store whose `commit` already
    /// reaches the disk has nothing to do.
    fn sync(&mut self) -> StoreResult<()> {
        Ok(())
    }
    /// Makes the acknowledgements so far survive a crash, so that only
    /// messages in flight are sent again after one. Appends may wait for the
    /// next `commit`. Called after every burst of commands holding an ack.
    fn commit_acks(&mut self) -> StoreResult<()> {
        self.commit()
    }
    /// Up to `max` readings with `seq >= from`, oldest first.
    fn read(&mut self, from: u64, max: usize) -> StoreResult<Vec<Stored>>;
    /// Removes the readings whose seq is in `range` (acknowledged by the broker).
    fn ack(&mut self, range: Range<u64>) -> StoreResult<()>;
    fn stats(&mut self) -> StoreResult<BufferStats>;
    /// Up to `max_messages` values messages of at most `max_bytes` each
    /// (a single reading may exceed it), packed from the readings with
    /// `seq >= from`, oldest first; each but the last is full. The default
    /// reads and packs; a store may pack straight from what it keeps.
    fn read_packed(
        &mut self,
        from: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> StoreResult<Vec<Packed>> {
        let want = 4096usize.saturating_mul(max_messages.max(1));
        let readings = self.read(from, want)?;
        let more = readings.len() == want;
        Ok(pack_messages(&readings, max_bytes, max_messages, more))
    }
}

/// With `fsync = "never"`, appends are committed this often.
pub const NEVER_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Appends are also committed as soon as this many readings wait.
pub const COMMIT_READINGS: usize = 8192;

/// How the buffer thread runs its store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BufferOptions {
    pub fsync: Fsync,
    /// Readings whose message alone would be larger than this are rejected at
    /// append (logged): they could never be sent and would block the queue.
    pub max_reading_bytes: Option<usize>,
}

impl BufferOptions {
    pub fn new(fsync: Fsync) -> Self {
        BufferOptions {
            fsync,
            max_reading_bytes: None,
        }
    }
}

enum Command {
    Append(Vec<Reading>),
    Read {
        from: u64,
        max: usize,
        reply: oneshot::Sender<StoreResult<Vec<Stored>>>,
    },
    ReadPacked {
        from: u64,
        max_bytes: usize,
        max_messages: usize,
        reply: oneshot::Sender<StoreResult<Vec<Packed>>>,
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
        Buffer::start_with(store, BufferOptions::new(fsync))
    }

    /// Starts the buffer thread over `store`.
    pub fn start_with(store: impl Store, options: BufferOptions) -> Buffer {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("buffer".into())
            .spawn(move || run(store, options, rx))
            .expect("spawn buffer thread");
        Buffer { tx }
    }

    /// The daemon's buffer: the SQLite store in `config.dir`.
    ///
    /// A corrupt database is moved aside and replaced (see
    /// [`SqliteStore::open`]). Another process holding the directory is an
    /// error. Any other failure (an unwritable directory, a database from a
    /// newer version) is logged and the readings are kept in memory only, so
    /// that sampling and delivery go on.
    pub fn open(config: &BufferConfig, max_message_size: usize) -> Result<Buffer, OpenError> {
        let options = BufferOptions {
            fsync: config.fsync,
            max_reading_bytes: Some(max_message_size),
        };
        match SqliteStore::open(&config.dir, SqliteOptions::from_config(config)) {
            Ok(store) => Ok(Buffer::start_with(store, options)),
            Err(e @ OpenError::Locked { .. }) => Err(e),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "the disk buffer cannot be used: readings are kept in memory only and will not survive a restart"
                );
                Ok(Buffer::start_with(
                    MemoryStore::new(config.max_size),
                    options,
                ))
            }
        }
    }

    /// Queues readings for appending; never waits for the disk.
    pub fn append(&self, readings: Vec<Reading>) {
        if !readings.is_empty() {
            let _ = self.tx.send(Command::Append(readings));
        }
    }

    pub async fn read(&self, from: u64, max: usize) -> StoreResult<Vec<Stored>> {
        self.request_read(from, max).await
    }

    /// Asks for a read at once and returns its answer to await later: the
    /// buffer thread reads the next batch while the caller packs this one.
    pub fn request_read(&self, from: u64, max: usize) -> Reply<Vec<Stored>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::Read { from, max, reply });
        Reply(sent.map(|()| rx))
    }

    /// Asks for up to `max_messages` values messages packed from `from` on
    /// (see [`Store::read_packed`]), to await later.
    pub fn request_packed(
        &self,
        from: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> Reply<Vec<Packed>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::ReadPacked {
            from,
            max_bytes,
            max_messages,
            reply,
        });
        Reply(sent.map(|()| rx))
    }

    pub fn ack(&self, range: Range<u64>) {
        let _ = self.tx.send(Command::Ack(range));
    }

    pub async fn stats(&self) -> StoreResult<BufferStats> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats(reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Commits and syncs what is pending and stops the thread.
    pub async fn close(&self) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close(reply))?;
        rx.await.map_err(|_| gone())?
    }

    fn send(&self, c: Command) -> StoreResult<()> {
        self.tx.send(c).map_err(|_| gone())
    }
}

/// The answer to a request already sent to the buffer thread. Dropping it
/// discards the answer.
pub struct Reply<T>(StoreResult<oneshot::Receiver<StoreResult<T>>>);

impl<T> std::future::Future for Reply<T> {
    type Output = StoreResult<T>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            Ok(rx) => std::pin::Pin::new(rx)
                .poll(cx)
                .map(|r| r.map_err(|_| gone())?),
            Err(e) => std::task::Poll::Ready(Err(StoreError::Failed(e.to_string()))),
        }
    }
}

fn gone() -> StoreError {
    StoreError::Failed("the buffer thread has stopped".into())
}

/// Size of the values message that would carry `r` alone.
pub fn single_message_len(r: &Reading) -> usize {
    crate::thingplus::pack_values(std::slice::from_ref(r), usize::MAX)
        .0
        .len()
}

/// Whether `r` fits in a message of `max` bytes, cheaply for numbers.
fn fits(r: &Reading, max: usize) -> bool {
    // {"<id, escaped at most 6x>":[<time, 20>,<number, 24>]}
    if matches!(r.value, Value::Number(_)) && r.sensor_id.len() * 6 + 56 <= max {
        return true;
    }
    single_message_len(r) <= max
}

/// Logs a failing operation once per change of error, not once per call.
#[derive(Default)]
struct ErrorLog {
    last: Option<String>,
    repeats: u64,
}

impl ErrorLog {
    fn record(&mut self, what: &str, result: StoreResult<()>) {
        match result {
            Ok(()) => {
                if let Some(prev) = self.last.take() {
                    tracing::info!(
                        previous_error = %prev,
                        repeats = self.repeats,
                        "buffer {what} works again"
                    );
                    self.repeats = 0;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last.as_deref() == Some(msg.as_str()) {
                    self.repeats += 1;
                } else {
                    tracing::error!(error = %msg, "buffer {what} failed");
                    self.last = Some(msg);
                    self.repeats = 0;
                }
            }
        }
    }
}

/// Readings rejected at append, logged once per sensor until it sends a
/// reading that fits again.
#[derive(Default)]
struct Oversize {
    rejecting: std::collections::HashSet<std::sync::Arc<str>>,
}

impl Oversize {
    fn filter(&mut self, readings: &mut Vec<Reading>, max: usize) {
        readings.retain(|r| {
            if fits(r, max) {
                if !self.rejecting.is_empty() && self.rejecting.remove(&r.sensor_id) {
                    tracing::info!(sensor_id = %r.sensor_id, "sensor values fit in max_message_size again");
                }
                true
            } else {
                if self.rejecting.insert(r.sensor_id.clone()) {
                    tracing::warn!(
                        sensor_id = %r.sensor_id,
                        size = single_message_len(r),
                        max_message_size = max,
                        "a reading larger than [mqtt] max_message_size was rejected: it could never be sent (further ones from this sensor are rejected silently)"
                    );
                }
                false
            }
        });
    }
}

fn run(mut store: impl Store, options: BufferOptions, rx: mpsc::Receiver<Command>) {
    // When appends are committed and synced:
    // - "always": after every burst of commands, each commit reaching the
    //   disk (the store is opened with synchronous=FULL);
    // - a period: once per period (or every COMMIT_READINGS readings), each
    //   periodic commit followed by a sync, so the period is the loss window
    //   for a crash and for a power cut alike;
    // - "never": every NEVER_COMMIT_INTERVAL, never synced.
    // Acknowledgements are committed after every burst in all modes (without
    // an fsync except in "always"), so that after a crash only messages that
    // were in flight are sent again; a period's sync covers them too.
    let (commit_after, sync_every) = match options.fsync {
        Fsync::Always => (Duration::ZERO, None),
        Fsync::Period(p) => (p, Some(p)),
        Fsync::Never => (NEVER_COMMIT_INTERVAL, None),
    };
    let mut dirty_since: Option<Instant> = None;
    let mut unsynced_since: Option<Instant> = None;
    let mut uncommitted = 0usize;
    let mut oversize = Oversize::default();
    let (mut append_log, mut ack_log, mut commit_log, mut sync_log) = (
        ErrorLog::default(),
        ErrorLog::default(),
        ErrorLog::default(),
        ErrorLog::default(),
    );
    let mut disconnected = false;
    let mut closing = None;
    // Acknowledgements since the last commit.
    let mut acked = false;
    while !disconnected && closing.is_none() {
        let deadline = [
            dirty_since.map(|t| t + commit_after),
            unsynced_since.zip(sync_every).map(|(t, p)| t + p),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut next = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    None
                }
            },
            None => match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => {
                    disconnected = true;
                    None
                }
            },
        };
        // Carry out a burst of commands, then commit once for all of them.
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append(mut readings) => {
                    if let Some(max) = options.max_reading_bytes {
                        oversize.filter(&mut readings, max);
                    }
                    if !readings.is_empty() {
                        uncommitted += readings.len();
                        append_log.record("append", store.append(readings));
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                }
                Command::Read { from, max, reply } => {
                    let _ = reply.send(store.read(from, max));
                }
                Command::ReadPacked {
                    from,
                    max_bytes,
                    max_messages,
                    reply,
                } => {
                    let _ = reply.send(store.read_packed(from, max_bytes, max_messages));
                }
                Command::Ack(range) => {
                    ack_log.record("ack", store.ack(range));
                    acked = true;
                }
                Command::Stats(reply) => {
                    let _ = reply.send(store.stats());
                }
                Command::Close(reply) => {
                    closing = Some(reply);
                    break;
                }
            }
            if uncommitted >= COMMIT_READINGS {
                break;
            }
            match rx.try_recv() {
                Ok(c) => next = Some(c),
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => disconnected = true,
            }
        }
        let now = Instant::now();
        let finishing = disconnected || closing.is_some();
        if let Some(since) = dirty_since {
            if finishing || uncommitted >= COMMIT_READINGS || now >= since + commit_after {
                commit_log.record("commit", store.commit());
                dirty_since = None;
                uncommitted = 0;
                acked = false;
                // Synced one period after the first change it holds: at once
                // for the periodic commit.
                unsynced_since.get_or_insert(since);
            }
        }
        if acked {
            commit_log.record("commit", store.commit_acks());
            acked = false;
            unsynced_since.get_or_insert(now);
        }
        if let (Some(since), Some(period)) = (unsynced_since, sync_every) {
            if finishing || now >= since + period {
                sync_log.record("fsync", store.sync());
                unsynced_since = None;
            }
        }
    }
    let result = store.commit().and_then(|()| store.sync());
    // Closed (and its directory unlocked) before the caller hears about it.
    drop(store);
    if let Some(reply) = closing {
        let _ = reply.send(result);
    } else if let Err(e) = result {
        tracing::error!(error = %e, "cannot commit the buffer at exit");
    }
}
