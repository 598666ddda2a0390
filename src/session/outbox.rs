//! Requests taken from the broker and what waits for room in the client's
//! request channel.
//!
//! Requests are acknowledged by hand, once taken: the broker sends no more
//! than its in-flight window of unacknowledged requests, so a flood of
//! requests waits at the broker, not in our memory. Beyond
//! [`MAX_TAKEN_REQUESTS`] (or [`MAX_TAKEN_REQUEST_BYTES`]) waiting for an
//! answer, acknowledgements are withheld until answering makes room.

use std::collections::VecDeque;
use std::time::Instant;

use rumqttc::QoS;

use super::client::{MqttClient, Refused};
use super::window::{DeliveryWindow, Tag};

/// Requests taken from the broker and not answered yet: at most this many
/// (or [`MAX_TAKEN_REQUEST_BYTES`]) are acknowledged at once; beyond, the
/// acknowledgements wait until requests are answered, so the broker holds
/// the rest (within its in-flight window of unacknowledged ones).
pub const MAX_TAKEN_REQUESTS: usize = 16_384;
/// The bytes of taken requests above which acknowledgements wait.
pub const MAX_TAKEN_REQUEST_BYTES: usize = 8 << 20;

/// Requests taken from the broker, oldest first, waiting to be handed to
/// the commands task, and how many it has not answered yet. They outlive
/// a connection: a request taken is answered, on the next connection if
/// this one is lost.
#[derive(Default)]
pub struct Requests {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Handed to the commands task, its first answer not come back yet.
    pub(super) awaiting: usize,
}

impl Requests {
    pub fn full(&self) -> bool {
        self.queue.len() >= MAX_TAKEN_REQUESTS || self.bytes >= MAX_TAKEN_REQUEST_BYTES
    }

    pub fn push(&mut self, payload: Vec<u8>) {
        self.bytes += payload.len();
        self.queue.push_back(payload);
    }

    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let p = self.queue.pop_front()?;
        self.bytes -= p.len();
        Some(p)
    }

    /// A request the commands task could not take yet: first again.
    pub fn give_back(&mut self, payload: Vec<u8>) {
        self.awaiting = self.awaiting.saturating_sub(1);
        self.bytes += payload.len();
        self.queue.push_front(payload);
    }

    /// A request that cannot be answered (the commands task is gone).
    pub fn lost(&mut self) {
        self.awaiting = self.awaiting.saturating_sub(1);
    }

    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    pub fn waiting_bytes(&self) -> usize {
        self.bytes
    }

    /// Nothing taken is left unanswered (answers started by a program
    /// are not waited for).
    pub fn settled(&self) -> bool {
        self.queue.is_empty() && self.awaiting == 0
    }
}

/// Something for the client's request channel that did not fit in it yet.
#[derive(Debug)]
pub enum Pending {
    Publish {
        topic: String,
        retain: bool,
        payload: Vec<u8>,
        tag: Tag,
    },
    /// The acknowledgement of a request from the broker (its QoS and packet id).
    Ack { qos: QoS, pkid: u16 },
}

/// Responses, statuses and request acknowledgements waiting, in order,
/// for room in the client's request channel; and acknowledgements
/// withheld while too many requests wait for an answer.
#[derive(Default)]
pub struct Outbox {
    items: VecDeque<Pending>,
    withheld: VecDeque<Pending>,
}

impl Outbox {
    pub fn push(&mut self, item: Pending) {
        self.items.push_back(item);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes a request off the broker: acknowledged now, or withheld while
    /// `requests` is full.
    pub fn take_request(&mut self, requests: &mut Requests, qos: QoS, pkid: u16, payload: Vec<u8>) {
        let ack = Pending::Ack { qos, pkid };
        if requests.full() {
            if self.withheld.is_empty() {
                tracing::warn!(
                    waiting = requests.waiting(),
                    waiting_bytes = requests.waiting_bytes(),
                    "{} requests wait for an answer: further requests are acknowledged only as these are answered, so the broker holds them",
                    requests.waiting()
                );
            }
            self.withheld.push_back(ack);
        } else {
            self.items.push_back(ack);
        }
        requests.push(payload);
    }

    /// Acknowledges withheld requests as far as `requests` has room again.
    pub fn release_withheld(&mut self, requests: &Requests) {
        let had_withheld = !self.withheld.is_empty();
        while !requests.full() {
            let Some(ack) = self.withheld.pop_front() else {
                break;
            };
            self.items.push_back(ack);
        }
        if had_withheld && self.withheld.is_empty() {
            tracing::info!(
                waiting = requests.waiting(),
                "requests are acknowledged as they come again"
            );
        }
    }

    /// Hands what waits to the client, in order, until its channel is full
    /// (the rest goes after the event loop's next progress) or all is gone.
    pub fn flush(
        &mut self,
        client: &mut impl MqttClient,
        window: &mut DeliveryWindow,
        now: Instant,
    ) {
        while let Some(item) = self.items.pop_front() {
            let kept = match item {
                Pending::Publish {
                    topic,
                    retain,
                    payload,
                    tag,
                } => match client.try_publish(&topic, retain, payload) {
                    Ok(()) => {
                        window.handed(tag, now);
                        None
                    }
                    Err(Refused::Full(payload)) => Some(Pending::Publish {
                        topic,
                        retain,
                        payload,
                        tag,
                    }),
                    Err(Refused::Gone(e)) => {
                        tracing::debug!(error = %e, "the event loop is gone: publish not sent");
                        None
                    }
                },
                Pending::Ack { qos, pkid } => match client.try_ack(qos, pkid) {
                    Ok(()) => None,
                    Err(Refused::Full(())) => Some(Pending::Ack { qos, pkid }),
                    Err(Refused::Gone(e)) => {
                        tracing::debug!(error = %e, "the event loop is gone: request not acknowledged");
                        None
                    }
                },
            };
            if let Some(item) = kept {
                self.items.push_front(item);
                return;
            }
        }
    }
}
