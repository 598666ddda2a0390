//! An in-memory store: the reference model for tests, and the fallback
//! when no disk store is available. Nothing survives a restart.

use std::collections::VecDeque;
use std::ops::Range;

use super::{BufferStats, Store, StoreResult, Stored};
use crate::reading::{Reading, Value};

/// A bounded in-memory queue.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    queue: VecDeque<Stored>,
    next_seq: u64,
    bytes: u64,
    max_bytes: u64,
    dropped: u64,
    /// Why the daemon runs on this store instead of its disk buffer.
    fallback_reason: Option<String>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> Self {
        MemoryStore {
            queue: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            max_bytes,
            dropped: 0,
            fallback_reason: None,
        }
    }

    /// The store of a daemon whose disk buffer cannot be used, saying why
    /// in its stats (`thingplus-gw status` shows it as memory-only).
    pub fn fallback(max_bytes: u64, reason: String) -> Self {
        MemoryStore {
            fallback_reason: Some(reason),
            ..MemoryStore::new(max_bytes)
        }
    }
}

#[cfg(test)]
impl MemoryStore {
    /// A model holding exactly `queue`, whose next append gets `next_seq` (tests).
    pub(crate) fn from_parts(queue: Vec<Stored>, next_seq: u64) -> Self {
        let bytes = queue.iter().map(|s| reading_size(&s.reading)).sum();
        MemoryStore {
            queue: queue.into(),
            next_seq,
            bytes,
            max_bytes: u64::MAX,
            dropped: 0,
            fallback_reason: None,
        }
    }
}

/// Approximate memory held by one reading.
fn reading_size(r: &Reading) -> u64 {
    let v = match &r.value {
        Value::Number(_) => 8,
        Value::Text(s) => s.len(),
        Value::Json(j) => j.to_string().len(),
    };
    (r.sensor_id.len() + v + 48) as u64
}

impl Store for MemoryStore {
    fn append(&mut self, readings: Vec<Reading>) -> StoreResult<()> {
        for reading in readings {
            self.bytes += reading_size(&reading);
            self.queue.push_back(Stored {
                seq: self.next_seq,
                reading,
            });
            self.next_seq += 1;
        }
        let mut dropped_now = 0;
        while self.bytes > self.max_bytes {
            match self.queue.pop_front() {
                Some(old) => {
                    self.bytes -= reading_size(&old.reading);
                    dropped_now += 1;
                }
                None => break,
            }
        }
        if dropped_now > 0 {
            self.dropped += dropped_now;
            tracing::warn!(
                dropped = dropped_now,
                total_dropped = self.dropped,
                "buffer full: dropped the oldest readings"
            );
        }
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        Ok(())
    }

    fn read(&mut self, from: u64, max: usize) -> StoreResult<Vec<Stored>> {
        let start = self.queue.partition_point(|s| s.seq < from);
        Ok(self.queue.range(start..).take(max).cloned().collect())
    }

    fn ack(&mut self, range: Range<u64>) -> StoreResult<()> {
        // Acks normally come oldest first, so the common case pops the front.
        while let Some(front) = self.queue.front() {
            if range.contains(&front.seq) {
                let s = self.queue.pop_front().expect("front exists");
                self.bytes -= reading_size(&s.reading);
            } else {
                break;
            }
        }
        if self.queue.iter().any(|s| range.contains(&s.seq)) {
            let mut freed = 0;
            self.queue.retain(|s| {
                let keep = !range.contains(&s.seq);
                if !keep {
                    freed += reading_size(&s.reading);
                }
                keep
            });
            self.bytes -= freed;
        }
        Ok(())
    }

    fn stats(&mut self) -> StoreResult<BufferStats> {
        Ok(BufferStats {
            pending: self.queue.len() as u64,
            bytes: self.bytes,
            oldest_ms: self.queue.front().map(|s| s.reading.time_ms),
            dropped: self.dropped,
            memory_only: self.fallback_reason.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: i64) -> Reading {
        Reading::new("s", t, Value::Number(t as f64))
    }

    #[test]
    fn read_from_cursor_and_ack_ranges() {
        let mut s = MemoryStore::new(u64::MAX);
        s.append((1..=10).map(r).collect()).unwrap();
        let first = s.read(0, 4).unwrap();
        assert_eq!(
            first.iter().map(|x| x.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        let next = s.read(5, 100).unwrap();
        assert_eq!(next.len(), 6);
        s.ack(3..5).unwrap(); // out of order ack
        s.ack(1..3).unwrap();
        let left = s.read(0, 100).unwrap();
        assert_eq!(left.first().unwrap().seq, 5);
        assert_eq!(s.stats().unwrap().pending, 6);
    }

    #[test]
    fn bound_drops_oldest_and_counts() {
        let mut s = MemoryStore::new(reading_size(&r(0)) * 3);
        s.append((1..=5).map(r).collect()).unwrap();
        let st = s.stats().unwrap();
        assert_eq!(st.pending, 3);
        assert_eq!(st.dropped, 2);
        assert_eq!(s.read(0, 10).unwrap()[0].reading.time_ms, 3);
    }

    #[test]
    fn packed_messages_are_full_and_cover_the_queue() {
        let mut s = MemoryStore::new(u64::MAX);
        s.append((1..=10_000).map(r).collect()).unwrap();
        let mut from = 0;
        let mut seen = 0;
        loop {
            let msgs = s.read_packed(from, 1024, 3).unwrap();
            if msgs.is_empty() {
                break;
            }
            for m in &msgs {
                assert!(m.payload.len() <= 1024);
                let back = crate::thingplus::parse_values(&m.payload).unwrap();
                assert_eq!(back.len(), m.count);
                assert_eq!(back[0].time_ms as u64, m.seqs.start);
                assert_eq!(m.seqs.end - m.seqs.start, m.count as u64);
                seen += m.count;
            }
            from = msgs.last().unwrap().seqs.end;
        }
        assert_eq!(seen, 10_000);
    }

    #[tokio::test]
    async fn handle_runs_commands_in_order() {
        let b =
            super::super::Buffer::start(MemoryStore::new(u64::MAX), crate::config::Fsync::Always);
        b.append(vec![r(1), r(2)]);
        let got = b.read(0, 10).await.unwrap();
        assert_eq!(got.len(), 2);
        b.ack(got[0].seq..got[1].seq + 1);
        assert_eq!(b.stats().await.unwrap().pending, 0);
        b.close().await.unwrap();
    }
}
