//! The buffer thread: carries out the handles' commands on its store, in
//! the order they were sent, and commits and syncs as `[buffer] fsync` says.
//!
//! When appends are committed and synced:
//! - "always": after every burst of commands, each commit reaching the
//!   disk (the store is opened with synchronous=FULL);
//! - a period: once per period (or every [`COMMIT_READINGS`] readings), each
//!   periodic commit followed by a sync, so the period is the loss window
//!   for a crash and for a power cut alike;
//! - "never": every [`NEVER_COMMIT_INTERVAL`], never synced.
//!
//! Acknowledgements are committed after every burst in all modes (without
//! an fsync except in "always"), so that after a crash only messages that
//! were in flight are sent again; a period's sync covers them too.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    single_message_len, BufferOptions, BufferStats, Packed, Store, StoreResult, Stored,
    COMMIT_READINGS, NEVER_COMMIT_INTERVAL,
};
use crate::config::Fsync;
use crate::reading::{Reading, Value};
use crate::thingplus::Compression;

/// How long the buffer thread, woken by the first append of a burst, lets
/// the rest of the burst gather before taking it (any other command cuts
/// it short). Appends reach the store that much later; reads, acks and
/// stats never wait for it.
const STAGING_LINGER: Duration = Duration::from_millis(1);

pub(super) enum Command {
    /// One append (the thread's own view of a staged one).
    Append(Vec<Reading>),
    /// Sent by [`super::Buffer::append`] when the staging area was empty:
    /// take what is staged, if it is still of this generation.
    Staged(u64),
    /// Staged appends handed over whole, ahead of another command.
    Appends(Vec<Vec<Reading>>),
    Read {
        from: u64,
        max: usize,
        reply: oneshot::Sender<StoreResult<Vec<Stored>>>,
    },
    ReadPacked {
        from: u64,
        max_bytes: usize,
        max_messages: usize,
        compress: Compression,
        reply: oneshot::Sender<StoreResult<Vec<Packed>>>,
    },
    Ack(Range<u64>),
    Stats(oneshot::Sender<StoreResult<BufferStats>>),
    /// Commit now; answered once everything appended before is committed.
    Commit(oneshot::Sender<StoreResult<()>>),
    Close(oneshot::Sender<StoreResult<()>>),
}

/// Appends on their way to the thread, each kept whole so that the thread
/// carries them out one by one, exactly as if each had been sent alone.
#[derive(Default)]
pub(super) struct Staging {
    pub(super) appends: Vec<Vec<Reading>>,
    /// Bumped each time the appends are taken: a `Staged` message of an
    /// older generation finds nothing of its own left to take.
    pub(super) generation: u64,
}

impl Staging {
    pub(super) fn take(&mut self) -> Vec<Vec<Reading>> {
        self.generation += 1;
        std::mem::take(&mut self.appends)
    }
}

pub(super) fn lock(staged: &Mutex<Staging>) -> MutexGuard<'_, Staging> {
    staged.lock().unwrap_or_else(|p| p.into_inner())
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
    fn record<T>(&mut self, what: &str, result: &StoreResult<T>) {
        match result {
            Ok(_) => {
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
                    tracing::error!(error = %msg, "buffer {what} failed: {msg}");
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
    rejecting: HashSet<Arc<str>>,
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

/// The buffer thread's state between commands.
struct Worker<'a, S> {
    store: S,
    options: BufferOptions,
    rx: mpsc::Receiver<Command>,
    staged: &'a Mutex<Staging>,
    /// How long appends may stay uncommitted, and how long commits unsynced.
    commit_after: Duration,
    sync_every: Option<Duration>,
    dirty_since: Option<Instant>,
    unsynced_since: Option<Instant>,
    uncommitted: usize,
    /// Acknowledgements since the last commit.
    acked: bool,
    oversize: Oversize,
    append_log: ErrorLog,
    ack_log: ErrorLog,
    commit_log: ErrorLog,
    sync_log: ErrorLog,
    disconnected: bool,
    closing: Option<oneshot::Sender<StoreResult<()>>>,
    /// Appends taken from the staging area, carried out before anything
    /// else, then a command that came while waiting for them.
    taken: VecDeque<Vec<Reading>>,
    early: Option<Command>,
}

pub(super) fn run(
    store: impl Store,
    options: BufferOptions,
    rx: mpsc::Receiver<Command>,
    staged: &Mutex<Staging>,
) {
    let (commit_after, sync_every) = match options.fsync {
        Fsync::Always => (Duration::ZERO, None),
        Fsync::Period(p) => (p, Some(p)),
        Fsync::Never => (NEVER_COMMIT_INTERVAL, None),
    };
    let mut w = Worker {
        store,
        options,
        rx,
        staged,
        commit_after,
        sync_every,
        dirty_since: None,
        unsynced_since: None,
        uncommitted: 0,
        acked: false,
        oversize: Oversize::default(),
        append_log: ErrorLog::default(),
        ack_log: ErrorLog::default(),
        commit_log: ErrorLog::default(),
        sync_log: ErrorLog::default(),
        disconnected: false,
        closing: None,
        taken: VecDeque::new(),
        early: None,
    };
    while (!w.disconnected || !w.taken.is_empty()) && w.closing.is_none() {
        let mut next = w.next_queued();
        if next.is_none() {
            next = w.wait();
        }
        // Carry out a burst of commands, then commit once for all of them.
        while let Some(cmd) = next.take() {
            if !w.carry_out(cmd) || w.uncommitted >= COMMIT_READINGS {
                break;
            }
            next = w.next_queued().or_else(|| w.try_next());
        }
        w.commit_due();
    }
    w.finish();
}

impl<S: Store> Worker<'_, S> {
    /// What was taken or came early, before anything from the channel.
    fn next_queued(&mut self) -> Option<Command> {
        self.taken
            .pop_front()
            .map(Command::Append)
            .or_else(|| self.early.take())
    }

    /// Waits for a command until the next commit or sync is due.
    fn wait(&mut self) -> Option<Command> {
        let deadline = [
            self.dirty_since.map(|t| t + self.commit_after),
            self.unsynced_since.zip(self.sync_every).map(|(t, p)| t + p),
        ]
        .into_iter()
        .flatten()
        .min();
        match deadline {
            Some(d) => match self
                .rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
            {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.disconnected = true;
                    None
                }
            },
            None => match self.rx.recv() {
                Ok(c) => Some(c),
                Err(_) => {
                    self.disconnected = true;
                    None
                }
            },
        }
    }

    /// The next command of a burst, if one is there already.
    fn try_next(&mut self) -> Option<Command> {
        match self.rx.try_recv() {
            Ok(c) => Some(c),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.disconnected = true;
                None
            }
        }
    }

    /// Carries out one command; false for `Close`, which ends the burst.
    fn carry_out(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Staged(generation) => self.take_staged(generation),
            Command::Appends(appends) => self.taken.extend(appends),
            Command::Append(readings) => self.append(readings),
            Command::Read { from, max, reply } => {
                let _ = reply.send(self.store.read(from, max));
            }
            Command::ReadPacked {
                from,
                max_bytes,
                max_messages,
                compress,
                reply,
            } => {
                let _ = reply.send(self.read_packed(from, max_bytes, max_messages, compress));
            }
            Command::Ack(range) => {
                let result = self.store.ack(range);
                self.ack_log.record("ack", &result);
                self.acked = true;
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.store.stats());
            }
            Command::Commit(reply) => {
                let result = self.store.commit();
                self.commit_log.record("commit", &result);
                if let Some(since) = self.dirty_since.take() {
                    self.unsynced_since.get_or_insert(since);
                } else if self.acked {
                    self.unsynced_since.get_or_insert_with(Instant::now);
                }
                self.uncommitted = 0;
                self.acked = false;
                let _ = reply.send(result);
            }
            Command::Close(reply) => {
                self.closing = Some(reply);
                return false;
            }
        }
        true
    }

    /// The first append of a burst: lets the rest of it (the other sensors
    /// of the same tick) gather for a moment, unless another command asks
    /// for the thread first, then takes what is staged.
    fn take_staged(&mut self, generation: u64) {
        if self.early.is_none() && lock(self.staged).generation == generation {
            match self.rx.recv_timeout(STAGING_LINGER) {
                Ok(c) => self.early = Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => self.disconnected = true,
            }
        }
        let mut s = lock(self.staged);
        if s.generation == generation {
            self.taken.extend(s.take());
        }
    }

    fn append(&mut self, mut readings: Vec<Reading>) {
        if let Some(max) = self.options.max_reading_bytes {
            self.oversize.filter(&mut readings, max);
        }
        if !readings.is_empty() {
            self.uncommitted += readings.len();
            let result = self.store.append(readings);
            self.append_log.record("append", &result);
            self.dirty_since.get_or_insert_with(Instant::now);
        }
    }

    fn read_packed(
        &mut self,
        from: u64,
        max_bytes: usize,
        max_messages: usize,
        compress: Compression,
    ) -> StoreResult<Vec<Packed>> {
        let mut packed = self.store.read_packed(from, max_bytes, max_messages);
        if let (Ok(msgs), Compression::Gzip { .. }) = (&mut packed, compress) {
            for m in msgs {
                // An oversized single reading stays as it is: the session
                // drops it by its JSON size.
                if m.payload.len() <= max_bytes {
                    m.payload = compress.apply(std::mem::take(&mut m.payload));
                }
            }
        }
        packed
    }

    /// After a burst: commits the appends when due, the acknowledgements
    /// always, and syncs when the period is up.
    fn commit_due(&mut self) {
        let now = Instant::now();
        let finishing = self.disconnected || self.closing.is_some();
        if let Some(since) = self.dirty_since {
            if finishing || self.uncommitted >= COMMIT_READINGS || now >= since + self.commit_after
            {
                let result = self.store.commit();
                self.commit_log.record("commit", &result);
                self.dirty_since = None;
                self.uncommitted = 0;
                self.acked = false;
                // Synced one period after the first change it holds: at once
                // for the periodic commit.
                self.unsynced_since.get_or_insert(since);
            }
        }
        if self.acked {
            let result = self.store.commit_acks();
            self.commit_log.record("commit", &result);
            self.acked = false;
            self.unsynced_since.get_or_insert(now);
        }
        if let (Some(since), Some(period)) = (self.unsynced_since, self.sync_every) {
            if finishing || now >= since + period {
                let result = self.store.sync();
                self.sync_log.record("fsync", &result);
                self.unsynced_since = None;
            }
        }
    }

    /// Commits and syncs what is left, closes the store and answers `Close`.
    fn finish(self) {
        let Worker {
            mut store, closing, ..
        } = self;
        let result = store.commit().and_then(|()| store.sync());
        // Closed (and its directory unlocked) before the caller hears about it.
        drop(store);
        if let Some(reply) = closing {
            let _ = reply.send(result);
        } else if let Err(e) = result {
            tracing::error!(error = %e, "cannot commit the buffer at exit");
        }
    }
}
