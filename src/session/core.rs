//! The delivery core of one connection: it is told what happened (CONNACK,
//! a request, a packet id on the wire, a PUBACK, an answer, shutdown, the
//! time) and drives the client and the delivery window accordingly. No
//! I/O of its own and no timers: the shell in `mod.rs` owns those, and the
//! unit tests below drive the core with a recording client and a clock
//! they set.

use std::ops::Range;
use std::time::{Duration, Instant};

use rumqttc::QoS;

use super::client::{MqttClient, Refused};
use super::outbox::{Outbox, Pending, Requests};
use super::phase::{Goodbye, Phase, GOODBYE_GRACE};
use super::window::{DeliveryWindow, Tag};
use crate::buffer::Packed;
use crate::rpc::Answer;
use crate::thingplus::Topics;

/// Requests handed to the commands task and not answered yet, at most:
/// the rest waits in [`Requests`] so that the broker's queue for us stays
/// short and answers go out as they come.
pub const ANSWER_BATCH: usize = 16;

/// What became of the next values message.
#[derive(Debug, PartialEq)]
pub enum Sent {
    /// Handed to the client.
    Published,
    /// Nothing is ready: the buffer is to be read, or has nothing more.
    Nothing,
    /// A single reading larger than `max_message_size`: never sendable.
    TooLarge(Packed),
    /// The client's channel is full, or its event loop is gone.
    Blocked,
}

pub struct Core<C> {
    client: C,
    topics: Topics,
    phase: Phase,
    window: DeliveryWindow,
    outbox: Outbox,
    connected_at: Option<Instant>,
}

impl<C: MqttClient> Core<C> {
    /// A connection being made, with at most `max_inflight` values
    /// messages in flight.
    pub fn new(client: C, topics: Topics, max_inflight: usize) -> Self {
        Core {
            client,
            topics,
            phase: Phase::Connecting,
            window: DeliveryWindow::new(max_inflight),
            outbox: Outbox::default(),
            connected_at: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn window(&self) -> &DeliveryWindow {
        &self.window
    }

    pub fn window_mut(&mut self) -> &mut DeliveryWindow {
        &mut self.window
    }

    #[cfg(test)]
    pub fn client(&mut self) -> &mut C {
        &mut self.client
    }

    pub fn connected_for(&self, now: Instant) -> Option<Duration> {
        self.connected_at.map(|t| now.saturating_duration_since(t))
    }

    /// CONNACK: subscribe to requests, say `on` and the status, and replay
    /// the buffer from its oldest unacknowledged reading.
    pub fn on_connack(&mut self, status: Vec<u8>, now: Instant) {
        self.connected_at = Some(now);
        self.phase = Phase::Online;
        if let Err(e) = self.client.try_subscribe(&self.topics.request) {
            tracing::error!(error = %e, "cannot subscribe to requests");
        }
        let topic = self.topics.mqtt_status.clone();
        self.publish(topic, true, b"on".to_vec(), Tag::Other, now);
        self.publish_status(status, now);
        self.window.replay();
    }

    /// Publishes, now or as soon as the client's request channel has room
    /// (after what waits before it): never dropped while the connection lasts.
    fn publish(&mut self, topic: String, retain: bool, payload: Vec<u8>, tag: Tag, now: Instant) {
        self.outbox.push(Pending::Publish {
            topic,
            retain,
            payload,
            tag,
        });
        self.flush(now);
    }

    /// A status report; it also prompts a look at the buffer.
    pub fn publish_status(&mut self, payload: Vec<u8>, now: Instant) {
        let topic = self.topics.status.clone();
        self.publish(topic, false, payload, Tag::Other, now);
    }

    /// Whether status reports are sent (connected, `off` not said yet).
    pub fn sends_statuses(&self) -> bool {
        self.phase.sends()
    }

    /// Hands what waits in the outbox to the client, in order.
    pub fn flush(&mut self, now: Instant) {
        self.outbox.flush(&mut self.client, &mut self.window, now);
    }

    /// A message from the broker: a request is taken (and acknowledged,
    /// or its acknowledgement withheld); anything else is acknowledged.
    pub fn on_message(
        &mut self,
        requests: &mut Requests,
        topic: &str,
        qos: QoS,
        pkid: u16,
        payload: Vec<u8>,
        now: Instant,
    ) {
        if topic == self.topics.request {
            self.outbox.take_request(requests, qos, pkid, payload);
        } else {
            tracing::debug!(topic = %topic, "ignoring a message on an unexpected topic");
            self.outbox.push(Pending::Ack { qos, pkid });
        }
        self.flush(now);
    }

    /// The next request to hand to the commands task: only while the
    /// outbox is empty (answers go out as they come) and fewer than
    /// [`ANSWER_BATCH`] are being answered.
    pub fn next_request(&mut self, requests: &mut Requests) -> Option<Vec<u8>> {
        if !self.phase.online() || !self.outbox.is_empty() || requests.awaiting >= ANSWER_BATCH {
            return None;
        }
        let payload = requests.pop()?;
        requests.awaiting += 1;
        Some(payload)
    }

    /// Whether [`Self::next_request`] would give a request.
    pub fn has_request_to_forward(&self, requests: &Requests) -> bool {
        self.phase.online()
            && self.outbox.is_empty()
            && requests.awaiting < ANSWER_BATCH
            && requests.waiting() > 0
    }

    /// After requests were handed on: acknowledge withheld ones as far as
    /// there is room again.
    pub fn release_withheld(&mut self, requests: &Requests, now: Instant) {
        self.outbox.release_withheld(requests);
        self.flush(now);
    }

    /// What the commands task answered.
    pub fn on_answer(&mut self, requests: &mut Requests, answer: Answer, now: Instant) {
        let response = match answer {
            Answer::Now(r) => {
                requests.awaiting = requests.awaiting.saturating_sub(1);
                r
            }
            Answer::Started => {
                requests.awaiting = requests.awaiting.saturating_sub(1);
                return;
            }
            Answer::Later(r) => r,
        };
        let topic = self.topics.response.clone();
        self.publish(topic, false, response, Tag::Other, now);
    }

    /// Whether values are to be sent now: connected, the buffer may hold
    /// more, nothing older waits in the outbox, and the window has room.
    pub fn sends_values(&self) -> bool {
        self.phase.sends()
            && self.window.wanted()
            && self.outbox.is_empty()
            && self.window.has_room()
    }

    /// Publishes the next values message read from the buffer.
    pub fn send_next_values(&mut self, max_size: usize, now: Instant) -> Sent {
        let Some(msg) = self.window.next_message() else {
            return Sent::Nothing;
        };
        if msg.payload.len() > max_size {
            return Sent::TooLarge(msg);
        }
        let Packed {
            payload,
            seqs,
            count,
        } = msg;
        match self.client.try_publish(&self.topics.values, false, payload) {
            Ok(()) => {
                self.window.handed(Tag::Values { seqs, count }, now);
                Sent::Published
            }
            Err(Refused::Full(payload)) => {
                // Goes first when the event loop has made room.
                self.window.put_back(Packed {
                    payload,
                    seqs,
                    count,
                });
                Sent::Blocked
            }
            Err(Refused::Gone(e)) => {
                tracing::debug!(error = %e, "the event loop is gone: values not sent");
                Sent::Blocked
            }
        }
    }

    /// The event loop wrote a publish with this packet id.
    pub fn on_wire(&mut self, pkid: u16) {
        self.window.on_wire(pkid);
    }

    /// A PUBACK: the readings now delivered (to acknowledge in the buffer),
    /// if it was a values message.
    pub fn on_puback(&mut self, pkid: u16) -> Option<(Range<u64>, usize)> {
        match self.window.acknowledged(pkid)? {
            Tag::Values { seqs, count } => Some((seqs, count)),
            Tag::Off => {
                self.phase.off_acknowledged();
                None
            }
            Tag::Other => None,
        }
    }

    /// The oldest publish has waited longer than `timeout` for its PUBACK
    /// (while shutdown is not under way: it has its own deadline).
    pub fn dead_link(&self, now: Instant, timeout: Duration) -> bool {
        !self.phase.stopping() && self.window.ack_overdue(now, timeout)
    }

    /// Shutdown is asked: `Some` when the session stops at once (not
    /// connected), else the drain starts, to end by `now + timeout`.
    pub fn begin_shutdown(&mut self, now: Instant, timeout: Duration) -> Option<Goodbye> {
        match self.phase {
            Phase::Connecting => Some(Goodbye::NotSent),
            Phase::Online => {
                self.phase = Phase::Draining {
                    deadline: now + timeout,
                };
                self.window.want();
                None
            }
            _ => None,
        }
    }

    /// The event loop ended: `Some` when that is the goodbye's end rather
    /// than a lost connection.
    pub fn on_event_loop_end(&self) -> Option<Goodbye> {
        matches!(self.phase, Phase::Disconnecting { .. }).then(|| self.phase.goodbye())
    }

    pub fn goodbye(&self) -> Goodbye {
        self.phase.goodbye()
    }

    /// Moves the shutdown on: once drained (or at the deadline) say the
    /// retained `off`; once it is acknowledged (or after the grace)
    /// disconnect; `Some` when the session is done.
    pub fn step(&mut self, requests: &Requests, now: Instant) -> Option<Goodbye> {
        if let Phase::Draining { deadline } = self.phase {
            let drained = !self.window.wanted()
                && self.window.outstanding() == 0
                && requests.settled()
                && self.outbox.is_empty();
            if drained || now >= deadline {
                if !drained {
                    tracing::warn!(
                        in_flight = self.window.outstanding(),
                        "shutdown timeout reached before everything was delivered; the rest stays in the buffer"
                    );
                }
                self.phase = Phase::Goodbye {
                    deadline,
                    acked: false,
                };
                let topic = self.topics.mqtt_status.clone();
                self.publish(topic, true, b"off".to_vec(), Tag::Off, now);
            }
        }
        if let Phase::Goodbye { deadline, acked } = self.phase {
            if acked || now >= deadline + GOODBYE_GRACE {
                let _ = self.client.try_disconnect();
                self.phase = Phase::Disconnecting { deadline, acked };
            }
        }
        match self.phase {
            Phase::Disconnecting { deadline, .. } if now >= deadline + GOODBYE_GRACE => {
                Some(self.phase.goodbye())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::{Recorder, Sent as Wire};
    use super::super::outbox::{MAX_TAKEN_REQUESTS, MAX_TAKEN_REQUEST_BYTES};
    use super::*;
    use std::collections::BTreeSet;

    const MAX_SIZE: usize = 1000;

    /// The buffer as the core sees it: readings by seq, one per message,
    /// removed when acknowledged.
    struct FakeBuffer(BTreeSet<u64>);

    impl FakeBuffer {
        fn with(seqs: Range<u64>) -> Self {
            FakeBuffer(seqs.collect())
        }

        fn pack(&self, from: u64) -> Vec<Packed> {
            self.0
                .range(from..)
                .take(4)
                .map(|&s| Packed {
                    payload: s.to_string().into_bytes(),
                    seqs: s..s + 1,
                    count: 1,
                })
                .collect()
        }
    }

    /// Plays the shell: a connection's core, the requests that outlive
    /// it, the buffer, a clock set by hand and the packet ids the event
    /// loop gives the publishes it writes.
    struct Harness {
        core: Core<Recorder>,
        requests: Requests,
        buffer: FakeBuffer,
        now: Instant,
        /// Publishes already given a packet id, and their ids.
        wired: Vec<(u16, String, Vec<u8>)>,
        forwarded: Vec<Vec<u8>>,
    }

    impl Harness {
        fn new(buffer: FakeBuffer, max_inflight: usize) -> Self {
            Harness {
                core: Core::new(Recorder::default(), Topics::new("gw"), max_inflight),
                requests: Requests::default(),
                buffer,
                now: Instant::now(),
                wired: Vec::new(),
                forwarded: Vec::new(),
            }
        }

        /// The next connection: a fresh core and client; requests and
        /// the buffer stay.
        fn reconnect(&mut self, max_inflight: usize) {
            self.core = Core::new(Recorder::default(), Topics::new("gw"), max_inflight);
            self.wired.clear();
        }

        fn connack(&mut self) {
            self.core.on_connack(b"status".to_vec(), self.now);
            self.turn();
        }

        /// One turn of the shell's loop after an event; `Some` when the
        /// session is done.
        fn turn(&mut self) -> Option<Goodbye> {
            self.core.flush(self.now);
            while let Some(r) = self.core.next_request(&mut self.requests) {
                self.forwarded.push(r);
            }
            self.core.release_withheld(&self.requests, self.now);
            if self.core.sends_values() {
                while self.core.window().has_room() {
                    if self.core.window().needs_read() {
                        let batch = self.buffer.pack(self.core.window().cursor());
                        self.core.window_mut().offer(batch);
                    }
                    match self.core.send_next_values(MAX_SIZE, self.now) {
                        Sent::Published => {}
                        Sent::TooLarge(m) => {
                            self.buffer.0.remove(&m.seqs.start);
                        }
                        Sent::Nothing | Sent::Blocked => break,
                    }
                }
            }
            let done = self.core.step(&self.requests, self.now);
            self.wire();
            done
        }

        /// The event loop writes every publish the client took, in order.
        fn wire(&mut self) {
            let published: Vec<_> = self
                .core
                .client()
                .sent
                .iter()
                .filter_map(|s| match s {
                    Wire::Publish { topic, payload, .. } => Some((topic.clone(), payload.clone())),
                    _ => None,
                })
                .collect();
            for (topic, payload) in published.into_iter().skip(self.wired.len()) {
                let pkid = self.wired.len() as u16 + 1;
                self.core.on_wire(pkid);
                self.wired.push((pkid, topic, payload));
            }
        }

        fn pkid_of_values(&self, seq: u64) -> u16 {
            self.wired
                .iter()
                .find(|(_, t, p)| t == "v/a/g/gw" && *p == seq.to_string().into_bytes())
                .unwrap_or_else(|| panic!("values {seq} not on the wire"))
                .0
        }

        fn puback(&mut self, pkid: u16) -> Option<Goodbye> {
            if let Some((seqs, _)) = self.core.on_puback(pkid) {
                for s in seqs {
                    self.buffer.0.remove(&s);
                }
            }
            self.turn()
        }

        /// The values messages published on this connection, as their seqs.
        fn values_sent(&mut self) -> Vec<u64> {
            self.core
                .client()
                .published_on("v/a/g/gw")
                .iter()
                .map(|p| String::from_utf8_lossy(p).parse().unwrap())
                .collect()
        }

        fn acks_sent(&mut self) -> Vec<u16> {
            (self.core.client().sent.iter())
                .filter_map(|s| match s {
                    Wire::Ack(pkid) => Some(*pkid),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn connack_says_on_and_the_status_then_sends_values_oldest_first_within_the_window() {
        let mut h = Harness::new(FakeBuffer::with(0..6), 4);
        h.connack();
        let sent = h.core.client().sent.clone();
        assert_eq!(sent[0], Wire::Subscribe("v/a/g/gw/req".into()));
        assert_eq!(
            sent[1],
            Wire::Publish {
                topic: "v/a/g/gw/mqtt/status".into(),
                retain: true,
                payload: b"on".to_vec()
            }
        );
        assert_eq!(h.core.client().published_on("v/a/g/gw/status"), [b"status"]);
        assert_eq!(h.values_sent(), [0, 1, 2, 3], "the window holds 4");
    }

    #[test]
    fn connack_replays_what_was_in_flight_in_order_after_a_reconnect() {
        let mut h = Harness::new(FakeBuffer::with(0..6), 3);
        h.connack();
        assert_eq!(h.values_sent(), [0, 1, 2]);
        // Only the middle one is acknowledged before the connection breaks.
        let pkid = h.pkid_of_values(1);
        h.puback(pkid);
        assert_eq!(h.values_sent(), [0, 1, 2, 3], "the window refills");

        h.reconnect(3);
        assert!(h.values_sent().is_empty(), "nothing before CONNACK");
        h.connack();
        assert_eq!(
            h.values_sent(),
            [0, 2, 3],
            "what was in flight goes again, oldest first"
        );
        for seq in [0, 2, 3] {
            let pkid = h.pkid_of_values(seq);
            h.puback(pkid);
        }
        assert_eq!(h.values_sent(), [0, 2, 3, 4, 5]);
        for seq in [4, 5] {
            let pkid = h.pkid_of_values(seq);
            h.puback(pkid);
        }
        assert!(h.buffer.0.is_empty(), "every reading delivered");
    }

    #[test]
    fn pubacks_out_of_order_acknowledge_exactly_their_readings() {
        let mut h = Harness::new(FakeBuffer::with(0..4), 2);
        h.connack();
        assert_eq!(h.values_sent(), [0, 1]);
        let second = h.pkid_of_values(1);
        h.puback(second);
        assert_eq!(h.buffer.0, BTreeSet::from([0, 2, 3]));
        assert_eq!(h.values_sent(), [0, 1, 2]);
        let first = h.pkid_of_values(0);
        h.puback(first);
        h.puback(first);
        assert_eq!(
            h.buffer.0,
            BTreeSet::from([2, 3]),
            "a repeated PUBACK changes nothing"
        );
        assert_eq!(h.values_sent(), [0, 1, 2, 3]);
        assert_eq!(h.core.window().outstanding(), 2);
    }

    #[test]
    fn a_full_client_channel_keeps_everything_in_order() {
        let mut h = Harness::new(FakeBuffer::with(0..3), 4);
        h.core.client().room = Some(1);
        h.connack();
        assert_eq!(
            h.core.client().published_on("v/a/g/gw/mqtt/status").len(),
            1
        );
        assert!(h.core.client().published_on("v/a/g/gw/status").is_empty());
        assert!(h.values_sent().is_empty(), "values wait behind the status");
        h.core.client().room = Some(2);
        h.turn();
        assert_eq!(h.core.client().published_on("v/a/g/gw/status").len(), 1);
        assert_eq!(h.values_sent(), [0], "then values, as far as there is room");
        h.core.client().room = None;
        h.turn();
        assert_eq!(h.values_sent(), [0, 1, 2]);
    }

    #[test]
    fn a_full_request_queue_withholds_acknowledgements_until_requests_are_answered() {
        let mut h = Harness::new(FakeBuffer::with(0..0), 4);
        h.connack();
        // The broker delivers faster than requests are handed on.
        for i in 0..=MAX_TAKEN_REQUESTS {
            let pkid = (i % 60_000 + 1) as u16;
            h.core.on_message(
                &mut h.requests,
                "v/a/g/gw/req",
                QoS::AtLeastOnce,
                pkid,
                b"{}".to_vec(),
                h.now,
            );
        }
        assert_eq!(h.acks_sent().len(), MAX_TAKEN_REQUESTS);
        assert_eq!(
            h.requests.waiting(),
            MAX_TAKEN_REQUESTS + 1,
            "the withheld request is kept"
        );
        h.turn();
        assert_eq!(h.forwarded.len(), ANSWER_BATCH, "handed on in batches");
        assert_eq!(
            h.acks_sent().len(),
            MAX_TAKEN_REQUESTS + 1,
            "room again: the withheld acknowledgement goes"
        );
        h.turn();
        assert_eq!(
            h.forwarded.len(),
            ANSWER_BATCH,
            "no more until answers come"
        );
        h.core
            .on_answer(&mut h.requests, Answer::Now(b"r1".to_vec()), h.now);
        h.core.on_answer(&mut h.requests, Answer::Started, h.now);
        h.turn();
        assert_eq!(h.forwarded.len(), ANSWER_BATCH + 2);
        h.core
            .on_answer(&mut h.requests, Answer::Later(b"r2".to_vec()), h.now);
        assert_eq!(
            h.core.client().published_on("v/a/g/gw/res"),
            [b"r1".to_vec(), b"r2".to_vec()]
        );
    }

    #[test]
    fn large_requests_fill_the_queue_by_bytes() {
        let mut h = Harness::new(FakeBuffer::with(0..0), 4);
        h.connack();
        let big = vec![b' '; 1 << 20];
        let fit = MAX_TAKEN_REQUEST_BYTES / big.len();
        for pkid in 1..=fit as u16 + 1 {
            h.core.on_message(
                &mut h.requests,
                "v/a/g/gw/req",
                QoS::AtLeastOnce,
                pkid,
                big.clone(),
                h.now,
            );
        }
        assert_eq!(h.acks_sent().len(), fit);
        // Messages on other topics are acknowledged and dropped.
        h.core.on_message(
            &mut h.requests,
            "elsewhere",
            QoS::AtLeastOnce,
            999,
            big.clone(),
            h.now,
        );
        assert_eq!(h.acks_sent().last(), Some(&999));
        assert_eq!(h.requests.waiting(), fit + 1);
    }

    #[test]
    fn no_acknowledgement_within_the_ack_timeout_is_a_dead_link() {
        let timeout = Duration::from_secs(30);
        let mut h = Harness::new(FakeBuffer::with(0..1), 4);
        let t0 = h.now;
        h.connack();
        assert!(!h.core.dead_link(t0 + timeout, timeout));
        assert!(h.core.dead_link(t0 + Duration::from_secs(31), timeout));
        for (pkid, _, _) in h.wired.clone() {
            h.puback(pkid);
        }
        assert!(
            !h.core.dead_link(t0 + Duration::from_secs(3600), timeout),
            "all acknowledged"
        );
    }

    #[test]
    fn shutdown_drains_then_says_off_and_disconnects_once_it_is_acknowledged() {
        let mut h = Harness::new(FakeBuffer::with(0..2), 4);
        h.connack();
        assert_eq!(h.values_sent(), [0, 1]);
        h.core.on_message(
            &mut h.requests,
            "v/a/g/gw/req",
            QoS::AtLeastOnce,
            7,
            b"{}".to_vec(),
            h.now,
        );
        assert_eq!(h.core.begin_shutdown(h.now, Duration::from_secs(10)), None);
        assert!(matches!(h.core.phase(), Phase::Draining { .. }));
        assert_eq!(h.turn(), None);
        assert!(
            h.core.client().published_on("v/a/g/gw/mqtt/status").len() == 1,
            "no off yet"
        );
        for seq in [0, 1] {
            let pkid = h.pkid_of_values(seq);
            h.puback(pkid);
        }
        assert!(
            matches!(h.core.phase(), Phase::Draining { .. }),
            "a request waits for its answer"
        );
        h.core
            .on_answer(&mut h.requests, Answer::Now(b"r".to_vec()), h.now);
        assert_eq!(h.turn(), None);
        assert!(matches!(
            h.core.phase(),
            Phase::Goodbye { acked: false, .. }
        ));
        let off = h.wired.last().unwrap().clone();
        assert_eq!(
            (off.1.as_str(), off.2.as_slice()),
            ("v/a/g/gw/mqtt/status", &b"off"[..])
        );
        assert!(!h.core.client().sent.contains(&Wire::Disconnect));
        assert!(!h.core.sends_statuses(), "no status after off");
        assert_eq!(h.puback(off.0), None);
        assert!(matches!(
            h.core.phase(),
            Phase::Disconnecting { acked: true, .. }
        ));
        assert!(h.core.client().sent.contains(&Wire::Disconnect));
        assert_eq!(h.core.on_event_loop_end(), Some(Goodbye::Acknowledged));
        assert!(h.buffer.0.is_empty());
    }

    #[test]
    fn shutdown_gives_up_at_the_deadline_and_the_rest_stays_buffered() {
        let mut h = Harness::new(FakeBuffer::with(0..3), 4);
        h.connack();
        let deadline = h.now + Duration::from_secs(10);
        h.core.begin_shutdown(h.now, Duration::from_secs(10));
        h.now = deadline;
        assert_eq!(h.turn(), None);
        assert!(
            matches!(h.core.phase(), Phase::Goodbye { acked: false, .. }),
            "off said at the deadline"
        );
        h.now = deadline + GOODBYE_GRACE;
        assert_eq!(h.turn(), Some(Goodbye::Unacknowledged));
        assert!(h.core.client().sent.contains(&Wire::Disconnect));
        assert_eq!(
            h.buffer.0.len(),
            3,
            "unacknowledged readings stay in the buffer"
        );
    }

    #[test]
    fn shutdown_while_offline_ends_at_once_without_off() {
        let mut h = Harness::new(FakeBuffer::with(0..3), 4);
        assert_eq!(
            h.core.begin_shutdown(h.now, Duration::from_secs(10)),
            Some(Goodbye::NotSent)
        );
        assert!(h.core.client().sent.is_empty());
        // A connection lost while draining owes the off as well.
        h.connack();
        h.core.begin_shutdown(h.now, Duration::from_secs(10));
        assert_eq!(h.core.on_event_loop_end(), None, "a loss, not a goodbye");
        assert_eq!(h.core.goodbye(), Goodbye::NotSent);
    }
}
