//! The delivery window of one connection: values messages read from the
//! buffer and not yet published, publishes handed to the client and
//! waiting for their packet id, and those on the wire waiting for their
//! PUBACK. Pure bookkeeping: no I/O, the caller says what happened and
//! when.
//!
//! The buffer is the source of truth: a connection starts reading it from
//! the oldest unacknowledged reading (cursor 0), so whatever was in flight
//! when the last one broke is sent again, in order.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::Instant;

use crate::buffer::Packed;

/// What a publish was, for when its PUBACK comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// Values messages: the readings to acknowledge in the buffer.
    Values { seqs: Range<u64>, count: usize },
    /// The retained `off` said at shutdown.
    Off,
    /// Statuses, responses, the retained `on`.
    Other,
}

pub struct DeliveryWindow {
    /// Values messages in flight at most (`[mqtt] max_inflight`).
    limit: usize,
    /// Messages packed by the buffer, not yet published.
    ready: VecDeque<Packed>,
    /// The seq to read the buffer from next.
    cursor: u64,
    /// The buffer may hold more to send (new readings, a connection, a
    /// report tick): reading stops when it returns nothing.
    wanted: bool,
    /// Publishes handed to the client, waiting for their packet id (the
    /// client numbers them in the order it takes them).
    queued: VecDeque<(Tag, Instant)>,
    /// Publishes on the wire, by packet id.
    inflight: HashMap<u16, (Tag, Instant)>,
    /// Values messages handed to the client and not acknowledged yet.
    outstanding: usize,
}

impl DeliveryWindow {
    pub fn new(limit: usize) -> Self {
        DeliveryWindow {
            limit,
            ready: VecDeque::new(),
            cursor: 0,
            wanted: false,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            outstanding: 0,
        }
    }

    /// After CONNACK: read again from the oldest unacknowledged reading.
    pub fn replay(&mut self) {
        self.cursor = 0;
        self.ready.clear();
        self.wanted = true;
    }

    /// The buffer may hold more: read it when there is room.
    pub fn want(&mut self) {
        self.wanted = true;
    }

    pub fn wanted(&self) -> bool {
        self.wanted
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Room for one more values message in flight.
    pub fn has_room(&self) -> bool {
        self.outstanding < self.limit
    }

    /// Nothing read is waiting to be published: the buffer is to be read
    /// from [`Self::cursor`].
    pub fn needs_read(&self) -> bool {
        self.ready.is_empty()
    }

    /// Messages the buffer packed from the cursor on.
    pub fn offer(&mut self, batch: Vec<Packed>) {
        if let Some(last) = batch.last() {
            self.cursor = last.seqs.end;
        }
        self.ready.extend(batch);
    }

    /// The next message to publish; none left ends the want for more.
    pub fn next_message(&mut self) -> Option<Packed> {
        let next = self.ready.pop_front();
        if next.is_none() {
            self.wanted = false;
        }
        next
    }

    /// A message the client could not take yet: it goes first next time.
    pub fn put_back(&mut self, msg: Packed) {
        self.ready.push_front(msg);
    }

    /// A publish the client took.
    pub fn handed(&mut self, tag: Tag, now: Instant) {
        if matches!(tag, Tag::Values { .. }) {
            self.outstanding += 1;
        }
        self.queued.push_back((tag, now));
    }

    /// The event loop wrote the oldest queued publish with this packet id.
    pub fn on_wire(&mut self, pkid: u16) {
        if let Some(entry) = self.queued.pop_front() {
            self.inflight.insert(pkid, entry);
        }
    }

    /// The broker acknowledged `pkid`: what it was, if it was ours. The
    /// broker may acknowledge in any order.
    pub fn acknowledged(&mut self, pkid: u16) -> Option<Tag> {
        let (tag, _) = self.inflight.remove(&pkid)?;
        if matches!(tag, Tag::Values { .. }) {
            self.outstanding -= 1;
        }
        Some(tag)
    }

    /// Values messages handed to the client and not acknowledged.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Something waits for its PUBACK.
    pub fn awaits_acks(&self) -> bool {
        !self.inflight.is_empty() || !self.queued.is_empty()
    }

    /// Whether the oldest publish waiting for its PUBACK was handed over
    /// more than `timeout` before `now`.
    pub fn ack_overdue(&self, now: Instant, timeout: std::time::Duration) -> bool {
        self.inflight
            .values()
            .map(|(_, t)| *t)
            .chain(self.queued.iter().map(|(_, t)| *t))
            .min()
            .is_some_and(|t| now.saturating_duration_since(t) > timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn packed(seqs: Range<u64>) -> Packed {
        Packed {
            payload: format!("{seqs:?}").into_bytes(),
            count: (seqs.end - seqs.start) as usize,
            seqs,
        }
    }

    #[test]
    fn pubacks_out_of_order_free_the_window_and_name_each_message() {
        let now = Instant::now();
        let mut w = DeliveryWindow::new(3);
        w.replay();
        w.offer(vec![packed(0..2), packed(2..5), packed(5..6)]);
        assert_eq!(w.cursor(), 6);
        for pkid in 1..=3 {
            let m = w.next_message().unwrap();
            w.handed(
                Tag::Values {
                    seqs: m.seqs,
                    count: m.count,
                },
                now,
            );
            w.on_wire(pkid);
        }
        assert!(!w.has_room());
        assert_eq!(
            w.acknowledged(3),
            Some(Tag::Values {
                seqs: 5..6,
                count: 1
            })
        );
        assert!(w.has_room());
        assert_eq!(
            w.acknowledged(1),
            Some(Tag::Values {
                seqs: 0..2,
                count: 2
            })
        );
        assert_eq!(w.acknowledged(1), None, "a duplicate PUBACK is ignored");
        assert_eq!(w.acknowledged(9), None, "an unknown packet id is ignored");
        assert_eq!(w.outstanding(), 1);
        assert_eq!(
            w.acknowledged(2),
            Some(Tag::Values {
                seqs: 2..5,
                count: 3
            })
        );
        assert!(!w.awaits_acks());
    }

    #[test]
    fn the_ack_timeout_counts_from_the_oldest_unacknowledged_publish() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let mut w = DeliveryWindow::new(4);
        assert!(!w.ack_overdue(t0 + Duration::from_secs(3600), timeout));
        w.handed(Tag::Other, t0);
        w.on_wire(1);
        w.handed(Tag::Other, t0 + Duration::from_secs(20));
        assert!(!w.ack_overdue(t0 + timeout, timeout));
        assert!(w.ack_overdue(t0 + Duration::from_secs(31), timeout));
        w.acknowledged(1);
        // The one still queued (no packet id yet) counts as well.
        assert!(!w.ack_overdue(t0 + Duration::from_secs(31), timeout));
        assert!(w.ack_overdue(t0 + Duration::from_secs(51), timeout));
    }

    #[test]
    fn replay_reads_again_from_the_oldest_reading() {
        let mut w = DeliveryWindow::new(2);
        w.offer(vec![packed(4..8), packed(8..9)]);
        assert_eq!(w.cursor(), 9);
        w.replay();
        assert_eq!(w.cursor(), 0);
        assert!(w.needs_read());
        assert!(w.wanted());
        assert!(w.next_message().is_none());
        assert!(!w.wanted(), "an empty buffer ends the want");
    }
}
