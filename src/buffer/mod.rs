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
mod worker;

use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::{BufferConfig, Fsync};
use crate::reading::{number_json, NumberBuffer};
use crate::reading::{Reading, Value};
use crate::thingplus::{Compression, Packer};

pub use memory::MemoryStore;
pub use sqlite::{OpenError, SqliteOptions, SqliteStore};
use worker::{lock, run, Command, Staging};

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
    /// The `v/a/g/{gw}` payload (gzip-compressed when asked, see
    /// [`Buffer::request_packed`]); larger than the bound asked only when
    /// it holds a single reading, and then never compressed.
    pub payload: Vec<u8>,
    /// From the first reading's seq to just past the last one's: the range
    /// to acknowledge.
    pub seqs: Range<u64>,
    pub count: usize,
}

/// What [`MessageBuilder::add_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFit {
    Taken,
    /// `max_messages` messages are complete; the chunk was not taken.
    Full,
    /// Larger than an empty message: add it reading by reading.
    TooLarge,
}

/// Packs readings, in queue order, into messages within a size bound.
pub struct MessageBuilder<'a> {
    max_messages: usize,
    out: Vec<Packed>,
    packer: Packer<'a>,
    first: u64,
    last: u64,
}

impl<'a> MessageBuilder<'a> {
    pub fn new(max_bytes: usize, max_messages: usize) -> Self {
        MessageBuilder {
            max_messages,
            out: Vec::new(),
            packer: Packer::new(max_bytes),
            first: 0,
            last: 0,
        }
    }

    /// Adds a reading whose value is JSON text. Returns false, without taking
    /// it, once `max_messages` messages are complete.
    #[inline]
    pub fn add(&mut self, seq: u64, sensor_id: &'a str, time_ms: i64, value_json: &[u8]) -> bool {
        if self.out.len() >= self.max_messages {
            return false;
        }
        if !self.packer.push(sensor_id, time_ms, value_json) {
            // Full: this reading opens the next message.
            self.close_message();
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

    fn close_message(&mut self) {
        self.out.push(Packed {
            count: self.packer.len(),
            payload: self.packer.message(),
            seqs: self.first..self.last + 1,
        });
        self.packer.clear();
    }

    /// Adds a whole chunk: `n` readings, seqs `first..=last`, all pending,
    /// given as each sensor's run of `t,v` text. The chunk goes whole into
    /// one message (a message must hold every pending reading of its seq
    /// range): when it does not fit in the current message, that message is
    /// closed and the chunk opens the next one.
    pub fn add_chunk(
        &mut self,
        first: u64,
        last: u64,
        n: usize,
        runs: &[(&'a str, &[u8])],
    ) -> ChunkFit {
        if self.out.len() >= self.max_messages {
            return ChunkFit::Full;
        }
        let cost = |p: &Packer| runs.iter().map(|(id, t)| p.run_cost(id, t)).sum::<usize>();
        if cost(&self.packer) > self.packer.room() {
            if self.packer.is_empty() {
                return ChunkFit::TooLarge;
            }
            self.close_message();
            if self.out.len() >= self.max_messages {
                return ChunkFit::Full;
            }
            // In a new message every sensor is new.
            if cost(&self.packer) > self.packer.room() {
                return ChunkFit::TooLarge;
            }
        }
        if self.packer.is_empty() {
            self.first = first;
        }
        for (id, text) in runs {
            self.packer.push_run(id, text);
        }
        self.packer.add_readings(n);
        self.last = last;
        ChunkFit::Taken
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
    /// Readings dropped since start: because a bound was hit, the disk was
    /// full, or they were found damaged.
    pub dropped: u64,
    /// Set when the disk buffer could not be used: why. Readings are then
    /// kept in memory only and lost at the next restart.
    pub memory_only: Option<String>,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed, by what a caller may do about it. The
/// text is the underlying error's, as logged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is damaged, and moving it aside did not help.
    #[error("{0}")]
    Corrupt(String),
    /// The filesystem is full, and dropping the oldest readings did not
    /// make room: what was not committed waits in memory (bounded).
    #[error("{0}")]
    Full(String),
    /// Any other failure to read or write the store (I/O, permissions, a
    /// statement SQLite refused): the operation can be tried again.
    #[error("{0}")]
    Io(String),
    /// The buffer thread has stopped (closed, or gone with its store).
    #[error("the buffer thread has stopped")]
    ThreadGone,
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

/// A handle to the buffer thread. Cheap to clone; every clone talks to the
/// same store, and commands are carried out in the order they are sent.
#[derive(Clone)]
pub struct Buffer {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Command>,
    /// Appends the thread has not taken yet (see [`Buffer::append`]).
    staged: Arc<Mutex<Staging>>,
}

impl Shared {
    /// Sends `c` after whatever is staged. The lock is held across both
    /// sends, so the order of appends and commands is the order of calls.
    fn send(&self, c: Command) -> Result<(), mpsc::SendError<Command>> {
        let mut staged = lock(&self.staged);
        if !staged.appends.is_empty() {
            self.tx.send(Command::Appends(staged.take()))?;
        }
        self.tx.send(c)
    }
}

impl Buffer {
    /// Starts the buffer thread over `store`, committing as `fsync` says.
    pub fn start(store: impl Store, fsync: Fsync) -> Buffer {
        Buffer::start_with(store, BufferOptions::new(fsync))
    }

    /// Starts the buffer thread over `store`.
    pub fn start_with(store: impl Store, options: BufferOptions) -> Buffer {
        let (tx, rx) = mpsc::channel();
        let staged = Arc::new(Mutex::new(Staging::default()));
        let taken = staged.clone();
        thread::Builder::new()
            .name("buffer".into())
            .spawn(move || run(store, options, rx, &taken))
            .expect("spawn buffer thread");
        Buffer {
            shared: Arc::new(Shared { tx, staged }),
        }
    }
    /// The daemon's buffer: the SQLite store in `config.dir`.
    ///
    /// A corrupt or unusable database is moved aside and replaced (see
    /// [`SqliteStore::open`]). Another process holding the directory is an
    /// error. Any other failure (an unwritable directory, a database from a
    /// newer version, a database that cannot even be moved aside) is logged
    /// and the readings are kept in memory only, so that sampling and
    /// delivery go on; `status` shows the buffer as memory-only.
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
                    "the disk buffer cannot be used: readings are kept in memory only and will not survive a restart ({e})"
                );
                Ok(Buffer::start_with(
                    MemoryStore::fallback(config.max_size, e.to_string()),
                    options,
                ))
            }
        }
    }

    /// Queues readings for appending; never waits for the disk.
    ///
    /// The thread is woken only when everything appended before was taken:
    /// appends made while it has not got round to them yet (the other
    /// sensors of the same timer tick) wait in a staging area that it takes
    /// whole. One wake-up per burst instead of one per reading; the thread
    /// still carries out each append on its own, in order.
    pub fn append(&self, readings: Vec<Reading>) {
        if readings.is_empty() {
            return;
        }
        let mut staged = lock(&self.shared.staged);
        staged.appends.push(readings);
        if staged.appends.len() == 1 {
            let _ = self.shared.tx.send(Command::Staged(staged.generation));
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
    /// Payloads are compressed as `compress` says (on the buffer thread,
    /// not on the async runtime); the size bound applies to the JSON before
    /// compression, so splitting does not depend on it.
    pub fn request_packed(
        &self,
        from: u64,
        max_bytes: usize,
        max_messages: usize,
        compress: Compression,
    ) -> Reply<Vec<Packed>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::ReadPacked {
            from,
            max_bytes,
            max_messages,
            compress,
            reply,
        });
        Reply(sent.map(|()| rx))
    }

    pub fn ack(&self, range: Range<u64>) {
        let _ = self.shared.send(Command::Ack(range));
    }

    pub async fn stats(&self) -> StoreResult<BufferStats> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats(reply))?;
        rx.await.map_err(|_| gone())?
    }

    /// Commits everything appended before this call, without waiting for
    /// the `fsync` period, and answers once it is committed (durable against
    /// a crash of the process; synced at the period as usual). For the rare
    /// appends whose source must not be discarded before they are safe.
    pub fn commit(&self) -> Reply<()> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(Command::Commit(reply));
        Reply(sent.map(|()| rx))
    }

    /// Commits and syncs what is pending and stops the thread.
    pub async fn close(&self) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Close(reply))?;
        rx.await.map_err(|_| gone())?
    }

    fn send(&self, c: Command) -> StoreResult<()> {
        self.shared.send(c).map_err(|_| gone())
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
            Err(_) => std::task::Poll::Ready(Err(gone())),
        }
    }
}

fn gone() -> StoreError {
    StoreError::ThreadGone
}

/// Size of the values message that would carry `r` alone.
pub fn single_message_len(r: &Reading) -> usize {
    crate::thingplus::pack_values(std::slice::from_ref(r), usize::MAX)
        .0
        .len()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::reading::Value;

    /// A store that records the size of each append it gets, and can hold
    /// its first append until told to go on.
    struct Recording {
        inner: MemoryStore,
        seen: Arc<Mutex<Vec<usize>>>,
        hold_first: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    }

    impl Store for Recording {
        fn append(&mut self, readings: Vec<Reading>) -> StoreResult<()> {
            self.seen.lock().unwrap().push(readings.len());
            if let Some((entered, go)) = self.hold_first.take() {
                entered.send(()).unwrap();
                go.recv().unwrap();
            }
            self.inner.append(readings)
        }
        fn commit(&mut self) -> StoreResult<()> {
            self.inner.commit()
        }
        fn read(&mut self, from: u64, max: usize) -> StoreResult<Vec<Stored>> {
            self.inner.read(from, max)
        }
        fn ack(&mut self, range: Range<u64>) -> StoreResult<()> {
            self.inner.ack(range)
        }
        fn stats(&mut self) -> StoreResult<BufferStats> {
            self.inner.stats()
        }
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
    fn appends_made_while_the_thread_is_busy_reach_it_as_one_batch() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let store = Recording {
            inner: MemoryStore::new(u64::MAX),
            seen: seen.clone(),
            hold_first: Some((entered_tx, go_rx)),
        };
        let b = Buffer::start(store, Fsync::Never);
        b.append(vec![r(1)]);
        entered.recv().unwrap(); // the thread is appending 1 and waits
        for t in 2..=4 {
            b.append(vec![r(t)]);
        }
        // Three appends, and the thread was woken once for them: after the
        // first append's message, only the read's.
        go.send(()).unwrap();
        let rt = current_thread();
        let got = rt.block_on(b.read(0, 100)).unwrap();
        let times: Vec<i64> = got.iter().map(|s| s.reading.time_ms).collect();
        assert_eq!(times, vec![1, 2, 3, 4]);
        // Each append still reaches the store on its own, as before.
        assert_eq!(*seen.lock().unwrap(), vec![1, 1, 1, 1]);
        rt.block_on(b.close()).unwrap();
    }

    #[test]
    fn commands_and_appends_keep_the_order_of_calls() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let store = Recording {
            inner: MemoryStore::new(u64::MAX),
            seen: seen.clone(),
            hold_first: Some((entered_tx, go_rx)),
        };
        let b = Buffer::start(store, Fsync::Never);
        let rt = current_thread();
        b.append(vec![r(1)]);
        entered.recv().unwrap(); // busy with 1
        b.append(vec![r(2)]); // staged, the thread told
        let early = b.request_read(0, 100); // hands 2 over ahead of itself
        b.append(vec![r(3)]); // staged anew, after the read
        go.send(()).unwrap();
        let got = rt.block_on(early).unwrap();
        let times: Vec<i64> = got.iter().map(|s| s.reading.time_ms).collect();
        assert_eq!(times, vec![1, 2]);
        let got = rt.block_on(b.read(0, 100)).unwrap();
        let times: Vec<i64> = got.iter().map(|s| s.reading.time_ms).collect();
        assert_eq!(times, vec![1, 2, 3]);
    }

    #[test]
    fn a_closed_buffer_answers_that_its_thread_has_stopped() {
        let b = Buffer::start(MemoryStore::new(u64::MAX), Fsync::Never);
        let rt = current_thread();
        rt.block_on(b.close()).unwrap();
        let err = rt.block_on(b.stats()).unwrap_err();
        assert!(matches!(err, StoreError::ThreadGone), "{err:?}");
        assert_eq!(err.to_string(), "the buffer thread has stopped");
        let err = rt.block_on(b.request_packed(0, 1024, 1, Compression::Off));
        assert!(matches!(err, Err(StoreError::ThreadGone)));
        assert!(matches!(
            rt.block_on(b.commit()),
            Err(StoreError::ThreadGone)
        ));
    }

    #[test]
    fn appends_reach_the_store_without_help_from_the_caller() {
        // Appended from a runtime that then blocks: nothing waits for it.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = Recording {
            inner: MemoryStore::new(u64::MAX),
            seen: seen.clone(),
            hold_first: None,
        };
        let b = Buffer::start(store, Fsync::Never);
        current_thread().block_on(async {
            for t in 0..100 {
                b.append(vec![r(t)]);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.lock().unwrap().iter().sum::<usize>() < 100 {
                assert!(Instant::now() < deadline, "{:?}", seen.lock().unwrap());
                thread::sleep(Duration::from_millis(5));
            }
        });
        // Commands keep their order with appends still staged.
        let rt = current_thread();
        for t in 100..110 {
            b.append(vec![r(t)]);
            let last = rt.block_on(b.read(0, usize::MAX)).unwrap();
            assert_eq!(last.last().unwrap().reading.time_ms, t);
        }
        assert_eq!(rt.block_on(b.stats()).unwrap().pending, 110);
    }
}
