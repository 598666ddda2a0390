//! The one long-lived MQTT session to Thing+: connect with backoff, replay
//! the buffer after every CONNACK, publish statuses, answer requests, and
//! acknowledge readings in the buffer only after the broker's PUBACK.
//!
//! rumqttc is driven with a fresh client and event loop per connection:
//! with a clean session it would silently drop (or, worse, replay on the new
//! connection) whatever was queued for the old one, so the buffer alone
//! decides what is sent. The event loop runs in its own task and is never
//! blocked by our publishes (`try_publish` only).
//!
//! Requests are acknowledged by hand, once their response is handed to
//! rumqttc: the broker sends no more than its in-flight window of
//! unacknowledged requests, so a flood of requests waits at the broker, not
//! in our memory, and no response is ever dropped. What rumqttc's request
//! channel cannot take at once waits in order in [`Conn::outbox`] and goes
//! when the event loop reports progress.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ClientError, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill,
    MqttOptions, Outgoing, Packet, QoS, Request, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{interval_at, MissedTickBehavior};

use crate::buffer::{Buffer, Packed, Reply};
use crate::clock::system_now_ms;
use crate::config::{MqttConfig, Secret};
use crate::rpc::{Dispatcher, Response};
use crate::status_board::StatusBoard;
use crate::thingplus::{encode_status, Status, Topics};

/// Messages asked of the buffer at once.
const PACK_BATCH: usize = 4;
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(60);
/// Largest packet read from the broker. Requests above
/// `rpc::MAX_REQUEST_BYTES` still get a JSON-RPC error; only packets above
/// this drop the connection (rumqttc cannot skip them).
pub const MAX_INCOMING_PACKET: usize = 1024 * 1024;

/// The state of the link, for status reports and sd-notify.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkState {
    pub connected: bool,
    /// Since when the link is in its current state (ms).
    pub since_ms: i64,
    pub broker: String,
    /// The last failure, as logged.
    pub last_error: Option<String>,
    /// When the next attempt is due (ms), while offline.
    pub retry_at_ms: Option<i64>,
    /// Readings the broker acknowledged since start.
    pub delivered: u64,
    /// Time of the last acknowledged values message (ms).
    pub last_delivery_ms: Option<i64>,
}

/// Everything the session needs to know, fixed for its lifetime.
pub struct SessionSettings {
    pub gateway_id: String,
    pub apikey: Secret,
    pub mqtt: MqttConfig,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub status_validity: Option<Duration>,
}

pub struct Session {
    pub settings: SessionSettings,
    pub topics: Topics,
    pub buffer: Buffer,
    pub board: Arc<StatusBoard>,
    pub dispatcher: Dispatcher,
    pub report_interval: watch::Receiver<Duration>,
    pub flush: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
    pub link: watch::Sender<LinkState>,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    LoginRefused,
    Tls,
    Unreachable,
    Lost,
    DeadLink,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

enum Outcome {
    Shutdown(Goodbye),
    Lost {
        connected_for: Option<Duration>,
        failure: Failure,
        goodbye: Goodbye,
    },
}

/// What became of the retained `off` status a stopping session owes the
/// broker (without it, Thing+ keeps the last status: `err` from the will
/// when the connection broke, else `on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goodbye {
    NotSent,
    Unacknowledged,
    Acknowledged,
}

#[derive(Debug, Clone)]
enum Tag {
    Values { seqs: Range<u64>, count: usize },
    Off,
    Other,
}

/// Requests taken from the broker and not answered yet: at most this many
/// (or [`MAX_TAKEN_REQUEST_BYTES`]) are acknowledged at once; beyond, the
/// acknowledgements wait until requests are answered, so the broker holds
/// the rest (within its in-flight window of unacknowledged ones).
pub const MAX_TAKEN_REQUESTS: usize = 16_384;
/// The bytes of taken requests above which acknowledgements wait.
pub const MAX_TAKEN_REQUEST_BYTES: usize = 8 << 20;
/// Requests answered in one turn of the session loop before it looks at
/// the broker again.
const ANSWER_BATCH: usize = 16;

/// Requests taken from the broker, oldest first, waiting to be answered.
/// They outlive a connection: a request taken is answered, on the next
/// connection if this one is lost.
#[derive(Default)]
struct TakenRequests {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl TakenRequests {
    fn full(&self) -> bool {
        self.queue.len() >= MAX_TAKEN_REQUESTS || self.bytes >= MAX_TAKEN_REQUEST_BYTES
    }

    fn push(&mut self, payload: Vec<u8>) {
        self.bytes += payload.len();
        self.queue.push_back(payload);
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        let p = self.queue.pop_front()?;
        self.bytes -= p.len();
        Some(p)
    }
}

/// Something for rumqttc's request channel that did not fit in it yet.
enum Pending {
    Publish {
        topic: String,
        retain: bool,
        payload: Vec<u8>,
        tag: Tag,
    },
    /// The acknowledgement of a request from the broker (its QoS and packet id).
    Ack { qos: QoS, pkid: u16 },
}

/// Turns a rumqttc error into a line an operator can act on.
pub fn classify(e: &ConnectionError, gateway_id: &str, broker: &str) -> Failure {
    use FailureKind::*;
    let (kind, message) = match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    format!("the broker {broker} refused the login of gateway {gateway_id} ({code:?}): check [gateway] id and the APIKEY issued for it in the Thing+ portal")
                }
                other => format!("the broker {broker} refused the connection ({other:?})"),
            };
            (LoginRefused, why)
        }
        ConnectionError::Tls(t) => (
            Tls,
            format!("TLS with {broker} failed: {t}: check [mqtt] ca_file, the host name and the system clock"),
        ),
        ConnectionError::Io(io) => (
            Unreachable,
            format!("cannot reach the broker {broker}: {io}: check the network, DNS and [mqtt] host and port"),
        ),
        ConnectionError::NetworkTimeout => (
            Unreachable,
            format!("cannot reach the broker {broker}: no answer in time: check the network and [mqtt] host and port"),
        ),
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => (
            Lost,
            format!("connection to {broker} dropped: it sent a packet of {n} bytes, over the limit of {MAX_INCOMING_PACKET} bytes; reconnecting"),
        ),
        other => match tls_alert(other) {
            // TLS 1.3 reports a refused client certificate after the handshake.
            Some(alert) => (
                Tls,
                format!("TLS with {broker} failed: {alert}: check [mqtt] client_cert and client_key, ca_file, the host name and the system clock"),
            ),
            None => (Lost, format!("connection to {broker} lost: {other}")),
        },
    };
    Failure { kind, message }
}

/// A rustls error somewhere in the error's chain.
fn tls_alert(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(t.to_string());
            }
        }
        cur = err.source();
    }
    None
}

/// The per-connection bookkeeping.
struct Conn {
    client: AsyncClient,
    connected_at: Option<Instant>,
    /// Publishes handed to rumqttc, waiting for their packet id.
    queued: VecDeque<(Tag, Instant)>,
    /// Publishes on the wire, by packet id.
    inflight: HashMap<u16, (Tag, Instant)>,
    values_outstanding: usize,
    /// Messages packed by the buffer thread, not yet published.
    ready: VecDeque<Packed>,
    /// The seq to read from next.
    cursor: u64,
    /// Messages already asked of the buffer thread (from `cursor`).
    read_ahead: Option<Reply<Vec<Packed>>>,
    want_drain: bool,
    shutdown_deadline: Option<Instant>,
    off_sent: bool,
    off_acked: bool,
    disconnect_sent: bool,
    /// Where responses computed later (exec actuators) are sent.
    deferred: mpsc::UnboundedSender<Vec<u8>>,
    /// Responses, statuses and request acknowledgements waiting, in order,
    /// for room in rumqttc's request channel. Requests are answered only
    /// while it is empty: it holds at most one turn's answers and acks.
    outbox: VecDeque<Pending>,
    /// Acknowledgements of requests taken while [`TakenRequests`] was full:
    /// sent as answering makes room.
    withheld_acks: VecDeque<Pending>,
}

impl Conn {
    fn goodbye(&self) -> Goodbye {
        match (self.off_sent, self.off_acked) {
            (false, _) => Goodbye::NotSent,
            (true, false) => Goodbye::Unacknowledged,
            (true, true) => Goodbye::Acknowledged,
        }
    }
}

/// The rumqttc options of one connection. TLS goes through the rustls
/// `ClientConfig` built by `tls::client_config` (`TlsConfiguration::Rustls`),
/// never rumqttc's own PEM loading (`TlsConfiguration::Simple`, which parses
/// with the unmaintained rustls-pemfile): deny.toml's advisory exceptions
/// rest on this.
pub fn mqtt_options(s: &SessionSettings, will_topic: &str, keep_alive: Duration) -> MqttOptions {
    let mut o = MqttOptions::new(&s.gateway_id, &s.mqtt.host, s.mqtt.port);
    o.set_credentials(&s.gateway_id, s.apikey.expose());
    o.set_clean_session(true);
    o.set_keep_alive(keep_alive);
    o.set_last_will(LastWill::new(will_topic, "err", QoS::AtLeastOnce, true));
    o.set_max_packet_size(MAX_INCOMING_PACKET, s.mqtt.max_message_size + 1024);
    // Requests are acknowledged once answered: the broker's back-pressure.
    o.set_manual_acks(true);
    // Far above our own window, so rumqttc's packet ids cannot collide.
    o.set_inflight(100);
    if let Some(tls) = &s.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    o
}

/// Aborts the event-loop task when the connection is dropped.
struct PumpGuard(tokio::task::JoinHandle<()>);

impl Drop for PumpGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Session {
    fn broker(&self) -> String {
        format!("{}:{}", self.settings.mqtt.host, self.settings.mqtt.port)
    }

    fn options(&self) -> MqttOptions {
        mqtt_options(
            &self.settings,
            &self.topics.mqtt_status,
            self.settings
                .mqtt
                .keep_alive_for(*self.report_interval.borrow()),
        )
    }

    /// Runs until shutdown is requested and the session has said goodbye,
    /// then leaves the actuators as configured.
    pub async fn run(mut self) {
        let (deferred_tx, mut deferred_rx) = mpsc::unbounded_channel();
        let mut taken = TakenRequests::default();
        let goodbye = self
            .run_connections(deferred_tx, &mut deferred_rx, &mut taken)
            .await;
        let broker = self.broker();
        match goodbye {
            Goodbye::Acknowledged => {
                tracing::info!(broker = %broker, "MQTT session stopped: the retained \"off\" status was delivered to {broker}")
            }
            Goodbye::Unacknowledged => {
                tracing::warn!(broker = %broker, "MQTT session stopped: the retained \"off\" status was sent to {broker} but not acknowledged: Thing+ may keep showing the gateway's last status")
            }
            Goodbye::NotSent => {
                tracing::warn!(broker = %broker, "MQTT session stopped while offline: the retained \"off\" status could not be sent to {broker}: Thing+ keeps showing the gateway's last status (\"err\" from the will if the connection broke)")
            }
        }
        self.dispatcher.actuators.shutdown();
    }

    async fn run_connections(
        &mut self,
        deferred_tx: mpsc::UnboundedSender<Vec<u8>>,
        deferred_rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
        taken: &mut TakenRequests,
    ) -> Goodbye {
        let broker = self.broker();
        // The retained `off` of a connection lost while stopping.
        let mut goodbye = Goodbye::NotSent;
        let mut failures: u32 = 0;
        let mut last_kind: Option<FailureKind> = None;
        let mut first = true;
        loop {
            if *self.shutdown.borrow() {
                return goodbye;
            }
            if !first {
                let s = &self.settings.mqtt;
                let delay = crate::backoff::delay(
                    failures,
                    s.reconnect_min,
                    s.reconnect_max,
                    fastrand::f64(),
                );
                self.link.send_modify(|l| {
                    l.retry_at_ms = Some(system_now_ms() + delay.as_millis() as i64)
                });
                tracing::debug!(
                    delay_ms = delay.as_millis() as u64,
                    "next connection attempt scheduled"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.changed() => return goodbye,
                }
            }
            first = false;
            tracing::debug!(broker = %broker, "connecting");
            match self
                .connection(deferred_tx.clone(), deferred_rx, taken)
                .await
            {
                Outcome::Shutdown(g) => return g,
                Outcome::Lost {
                    connected_for,
                    failure,
                    goodbye: g,
                } => {
                    goodbye = g;
                    if connected_for.is_some_and(|d| d >= STABLE_CONNECTION) {
                        failures = 0;
                    } else {
                        failures = failures.saturating_add(1);
                    }
                    let was_connected = connected_for.is_some();
                    // One line per change of trouble, not one per attempt.
                    if was_connected || last_kind != Some(failure.kind) {
                        tracing::warn!(broker = %broker, kind = ?failure.kind, "{}", failure.message);
                    } else {
                        tracing::debug!(broker = %broker, kind = ?failure.kind, "{}", failure.message);
                    }
                    last_kind = Some(failure.kind);
                    self.link.send_modify(|l| {
                        if l.connected || l.since_ms == 0 {
                            l.since_ms = system_now_ms();
                        }
                        l.connected = false;
                        l.last_error = Some(failure.message.clone());
                    });
                }
            }
        }
    }

    /// Publishes, now or as soon as rumqttc's request channel has room
    /// (after what waits before it): never dropped while the connection lasts.
    fn publish(&self, conn: &mut Conn, topic: &str, retain: bool, payload: Vec<u8>, tag: Tag) {
        conn.outbox.push_back(Pending::Publish {
            topic: topic.to_string(),
            retain,
            payload,
            tag,
        });
        flush_outbox(conn);
    }

    fn publish_status(&self, conn: &mut Conn) {
        let ri = *self.report_interval.borrow();
        let valid = self
            .settings
            .status_validity
            .unwrap_or(ri * 2)
            .as_secs_f64()
            .ceil() as i64;
        let sensors = self.board.snapshot();
        let payload = encode_status(
            &Status::On,
            valid,
            sensors.iter().map(|s| (s.id.as_str(), &s.status)),
        );
        // Once per report interval: cheap enough on the runtime even gzipped.
        let payload = self.settings.mqtt.compress.apply(payload.into_bytes());
        let topic = self.topics.status.clone();
        self.publish(conn, &topic, false, payload, Tag::Other);
    }

    /// One connection, from connect to loss or goodbye.
    async fn connection(
        &mut self,
        deferred: mpsc::UnboundedSender<Vec<u8>>,
        deferred_rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
        taken: &mut TakenRequests,
    ) -> Outcome {
        let (client, eventloop) = AsyncClient::new(self.options(), 128);
        let mut eventloop: EventLoop = eventloop;
        let mut net = eventloop.network_options();
        net.set_connection_timeout(self.settings.mqtt.connect_timeout.as_secs().max(1));
        // A request's acknowledgement is a 4-byte write right after its
        // response: Nagle would hold it for the broker's delayed ACK (up to
        // 40 ms), and the broker sends no more requests meanwhile.
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (ev_tx, mut ev_rx) = mpsc::channel(256);
        let _pump = PumpGuard(tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let end = ev.is_err();
                if ev_tx.send(ev).await.is_err() || end {
                    return;
                }
            }
        }));
        let mut conn = Conn {
            client,
            connected_at: None,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            values_outstanding: 0,
            ready: VecDeque::new(),
            cursor: 0,
            read_ahead: None,
            want_drain: false,
            shutdown_deadline: None,
            off_sent: false,
            off_acked: false,
            disconnect_sent: false,
            deferred,
            outbox: VecDeque::new(),
            withheld_acks: VecDeque::new(),
        };
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let mut status_tick = interval_at(far, Duration::from_secs(86_400));
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let lost = |conn: &Conn, failure: Failure| Outcome::Lost {
            connected_for: conn.connected_at.map(|t| t.elapsed()),
            failure,
            goodbye: conn.goodbye(),
        };

        loop {
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(Ok(event)) => {
                        if let Some(new_tick) = self.on_event(event, &mut conn, taken) {
                            status_tick = new_tick;
                        }
                    }
                    Some(Err(e)) => {
                        if conn.disconnect_sent {
                            return Outcome::Shutdown(conn.goodbye());
                        }
                        let f = classify(&e, &self.settings.gateway_id, &self.broker());
                        return lost(&conn, f);
                    }
                    None => return lost(&conn, Failure { kind: FailureKind::Lost, message: "MQTT event loop stopped".into() }),
                },
                _ = status_tick.tick(), if conn.connected_at.is_some() && !conn.off_sent => {
                    self.publish_status(&mut conn);
                    conn.want_drain = true;
                }
                _ = self.flush.notified(), if conn.connected_at.is_some() => conn.want_drain = true,
                // Requests left from the last turn: answered below.
                _ = std::future::ready(()), if conn.connected_at.is_some()
                    && !taken.queue.is_empty()
                    && conn.outbox.is_empty() => {}
                Some(response) = deferred_rx.recv(), if conn.connected_at.is_some() => {
                    let topic = self.topics.response.clone();
                    self.publish(&mut conn, &topic, false, response, Tag::Other);
                }
                changed = self.report_interval.changed() => {
                    if changed.is_ok() && conn.connected_at.is_some() {
                        let period = *self.report_interval.borrow();
                        status_tick = interval_at(tokio::time::Instant::now() + period, period);
                        status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        // Tell the server at once under the new validity.
                        self.publish_status(&mut conn);
                    }
                }
                _ = self.shutdown.changed(), if conn.shutdown_deadline.is_none() => {
                    if conn.connected_at.is_none() {
                        return Outcome::Shutdown(conn.goodbye());
                    }
                    conn.shutdown_deadline = Some(Instant::now() + self.settings.mqtt.shutdown_timeout);
                    conn.want_drain = true;
                }
                // Only while something awaits its PUBACK: an idle link is not
                // woken four times a second for nothing.
                _ = housekeeping.tick(), if !conn.inflight.is_empty() || !conn.queued.is_empty() => {
                    let ack_timeout = self.settings.mqtt.ack_timeout;
                    let oldest = conn.inflight.values().map(|(_, t)| *t)
                        .chain(conn.queued.iter().map(|(_, t)| *t))
                        .min();
                    if oldest.is_some_and(|t| t.elapsed() > ack_timeout) && conn.shutdown_deadline.is_none() {
                        return lost(&conn, Failure {
                            kind: FailureKind::DeadLink,
                            message: format!(
                                "no acknowledgement from {} for {} s: the link is considered dead, reconnecting",
                                self.broker(), ack_timeout.as_secs()
                            ),
                        });
                    }
                }
            }

            // Progress of the event loop makes room in its channel.
            flush_outbox(&mut conn);
            // Taking requests comes first: answering waits until no event
            // is pending, so the broker's queue for us stays short.
            if conn.connected_at.is_some() && ev_rx.is_empty() {
                self.answer_requests(&mut conn, taken);
            }
            if conn.connected_at.is_some()
                && conn.want_drain
                && !conn.off_sent
                && conn.outbox.is_empty()
            {
                self.fill_window(&mut conn).await;
            }

            if let Some(deadline) = conn.shutdown_deadline {
                let now = Instant::now();
                let drained = !conn.want_drain
                    && conn.values_outstanding == 0
                    && taken.queue.is_empty()
                    && conn.outbox.is_empty();
                if !conn.off_sent && (drained || now >= deadline) {
                    if !drained {
                        tracing::warn!(
                            in_flight = conn.values_outstanding,
                            "shutdown timeout reached before everything was delivered; the rest stays in the buffer"
                        );
                    }
                    let topic = self.topics.mqtt_status.clone();
                    self.publish(&mut conn, &topic, true, b"off".to_vec(), Tag::Off);
                    conn.off_sent = true;
                }
                let give_up = now >= deadline + Duration::from_secs(2);
                if conn.off_sent && (conn.off_acked || give_up) && !conn.disconnect_sent {
                    let _ = conn.client.try_disconnect();
                    conn.disconnect_sent = true;
                }
                if conn.disconnect_sent && give_up {
                    return Outcome::Shutdown(conn.goodbye());
                }
            }
        }
    }

    /// Handles one event; returns a new status ticker after CONNACK.
    fn on_event(
        &mut self,
        event: Event,
        conn: &mut Conn,
        taken: &mut TakenRequests,
    ) -> Option<tokio::time::Interval> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                conn.connected_at = Some(Instant::now());
                tracing::info!(broker = %self.broker(), gateway_id = %self.settings.gateway_id, "connected to Thing+ broker {} as gateway {}", self.broker(), self.settings.gateway_id);
                self.link.send_modify(|l| {
                    l.connected = true;
                    l.since_ms = system_now_ms();
                    l.broker = self.broker();
                    l.retry_at_ms = None;
                });
                if let Err(e) = conn
                    .client
                    .try_subscribe(&self.topics.request, QoS::AtLeastOnce)
                {
                    tracing::error!(error = %e, "cannot subscribe to requests");
                }
                let topic = self.topics.mqtt_status.clone();
                self.publish(conn, &topic, true, b"on".to_vec(), Tag::Other);
                self.publish_status(conn);
                // Replay from the oldest unacknowledged reading.
                conn.cursor = 0;
                conn.ready.clear();
                conn.read_ahead = None;
                conn.want_drain = true;
                let period = *self.report_interval.borrow();
                let mut tick = interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                return Some(tick);
            }
            Event::Incoming(Packet::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                tracing::error!(topic = %self.topics.request, "the broker refused the subscription to requests: commands from Thing+ will not arrive");
            }
            Event::Incoming(Packet::Publish(p)) => {
                let ack = Pending::Ack {
                    qos: p.qos,
                    pkid: p.pkid,
                };
                if p.topic == self.topics.request {
                    if taken.full() {
                        if conn.withheld_acks.is_empty() {
                            tracing::warn!(
                                waiting = taken.queue.len(),
                                waiting_bytes = taken.bytes,
                                "{} requests wait for an answer: further requests are acknowledged only as these are answered, so the broker holds them",
                                taken.queue.len()
                            );
                        }
                        conn.withheld_acks.push_back(ack);
                    } else {
                        conn.outbox.push_back(ack);
                    }
                    taken.push(p.payload.into());
                } else {
                    tracing::debug!(topic = %p.topic, "ignoring a message on an unexpected topic");
                    conn.outbox.push_back(ack);
                }
                flush_outbox(conn);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(entry) = conn.queued.pop_front() {
                    conn.inflight.insert(pkid, entry);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some((tag, _)) = conn.inflight.remove(&ack.pkid) {
                    match tag {
                        Tag::Values { seqs, count } => {
                            self.buffer.ack(seqs);
                            conn.values_outstanding -= 1;
                            let now = system_now_ms();
                            self.link.send_modify(|l| {
                                l.delivered += count as u64;
                                l.last_delivery_ms = Some(now);
                            });
                        }
                        Tag::Off => conn.off_acked = true,
                        Tag::Other => {}
                    }
                }
            }
            _ => {}
        }
        None
    }

    /// Answers taken requests, oldest first, while rumqttc takes what is
    /// published at once (the outbox stays empty), at most [`ANSWER_BATCH`]
    /// in this turn; then acknowledges withheld requests as far as there is
    /// room again.
    fn answer_requests(&mut self, conn: &mut Conn, taken: &mut TakenRequests) {
        let mut answered = 0;
        while conn.outbox.is_empty() && answered < ANSWER_BATCH {
            let Some(payload) = taken.pop() else { break };
            answered += 1;
            match self.dispatcher.handle(&payload) {
                Response::Now(response) => {
                    let topic = self.topics.response.clone();
                    self.publish(conn, &topic, false, response, Tag::Other);
                }
                Response::Later(task) => {
                    // Answered when the program finishes, on whatever connection is up then.
                    let tx = conn.deferred.clone();
                    tokio::spawn(async move {
                        if let Ok(response) = task.await {
                            let _ = tx.send(response);
                        }
                    });
                }
            }
        }
        let had_withheld = !conn.withheld_acks.is_empty();
        while !taken.full() {
            let Some(ack) = conn.withheld_acks.pop_front() else {
                break;
            };
            conn.outbox.push_back(ack);
        }
        if had_withheld && conn.withheld_acks.is_empty() {
            tracing::info!(
                waiting = taken.queue.len(),
                "requests are acknowledged as they come again"
            );
        }
        flush_outbox(conn);
    }

    /// Sends value messages from the buffer until the window is full or the
    /// buffer has nothing more. The buffer thread packs the messages (from
    /// the oldest unacknowledged reading on) and packs the next ones while
    /// these are sent.
    async fn fill_window(&mut self, conn: &mut Conn) {
        let max_size = self.settings.mqtt.max_message_size;
        let window = self.settings.mqtt.max_inflight as usize;
        let compress = self.settings.mqtt.compress;
        while conn.values_outstanding < window {
            if conn.ready.is_empty() {
                let request = match conn.read_ahead.take() {
                    Some(r) => r,
                    None => self
                        .buffer
                        .request_packed(conn.cursor, max_size, PACK_BATCH, compress),
                };
                match request.await {
                    Ok(batch) => {
                        let full = batch.len() == PACK_BATCH;
                        if let Some(last) = batch.last() {
                            conn.cursor = last.seqs.end;
                        }
                        conn.ready.extend(batch);
                        // A long backlog: the next messages are packed while
                        // these are sent.
                        if full {
                            conn.read_ahead = Some(self.buffer.request_packed(
                                conn.cursor,
                                max_size,
                                PACK_BATCH,
                                compress,
                            ));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the buffer");
                        return;
                    }
                }
            }
            let Some(msg) = conn.ready.pop_front() else {
                conn.want_drain = false;
                return;
            };
            if msg.payload.len() > max_size {
                tracing::warn!(
                    size = msg.payload.len(),
                    max_message_size = max_size,
                    "a single reading does not fit in max_message_size; dropped"
                );
                self.buffer.ack(msg.seqs);
                continue;
            }
            match conn.client.try_publish(
                self.topics.values.as_str(),
                QoS::AtLeastOnce,
                false,
                msg.payload,
            ) {
                Ok(()) => {
                    let tag = Tag::Values {
                        seqs: msg.seqs,
                        count: msg.count,
                    };
                    conn.queued.push_back((tag, Instant::now()));
                    conn.values_outstanding += 1;
                }
                Err(ClientError::TryRequest(Request::Publish(p))) => {
                    // rumqttc's channel is full: this one goes first when
                    // the event loop has made room (want_drain stays set).
                    conn.ready.push_front(Packed {
                        payload: p.payload.into(),
                        ..msg
                    });
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the event loop is gone: values not sent");
                    return;
                }
            }
        }
    }
}

/// Hands what waits in the outbox to rumqttc, in order, until its channel
/// is full (the rest goes after the event loop's next progress) or empty.
fn flush_outbox(conn: &mut Conn) {
    while let Some(item) = conn.outbox.pop_front() {
        let sent = match item {
            Pending::Publish {
                topic,
                retain,
                payload,
                tag,
            } => match conn
                .client
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            {
                Ok(()) => {
                    conn.queued.push_back((tag, Instant::now()));
                    Ok(())
                }
                Err(ClientError::TryRequest(Request::Publish(p))) => Err(Pending::Publish {
                    topic: p.topic,
                    retain,
                    payload: p.payload.into(),
                    tag,
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "the event loop is gone: publish not sent");
                    Ok(())
                }
            },
            Pending::Ack { qos, pkid } => {
                let mut request = rumqttc::Publish::new("", qos, Vec::new());
                request.pkid = pkid;
                match conn.client.try_ack(&request) {
                    Ok(()) => Ok(()),
                    Err(ClientError::TryRequest(_)) => Err(Pending::Ack { qos, pkid }),
                    Err(e) => {
                        tracing::debug!(error = %e, "the event loop is gone: request not acknowledged");
                        Ok(())
                    }
                }
            }
        };
        if let Err(item) = sent {
            conn.outbox.push_front(item);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a client certificate signed by it, as PEM files in `dir`.
    fn write_pki(
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let cli_key = KeyPair::generate().unwrap();
        let cli = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .signed_by(&cli_key, &ca, &ca_key)
            .unwrap();
        let paths = (
            dir.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client.key"),
        );
        std::fs::write(&paths.0, ca.pem()).unwrap();
        std::fs::write(&paths.1, cli.pem()).unwrap();
        std::fs::write(&paths.2, cli_key.serialize_pem()).unwrap();
        paths
    }

    /// The premise of the advisory exceptions in deny.toml and
    /// .cargo/audit.toml: from a configuration file to the options rumqttc
    /// connects with, TLS is our rustls `ClientConfig` (rustls 0.23 with
    /// rustls-webpki 0.103), never `TlsConfiguration::Simple`, the only path
    /// on which rumqttc parses PEM with rustls-pemfile.
    #[test]
    fn tls_transport_is_our_rustls_config_never_rumqttc_pem_loading() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = write_pki(dir.path());
        let text = format!(
            "[gateway]\nid = \"gw1\"\napikey = \"k\"\n\
             [mqtt]\nhost = \"broker.example\"\nca_file = \"{}\"\n\
             client_cert = \"{}\"\nclient_key = \"{}\"\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        let config =
            crate::config::Config::parse(&text, std::path::Path::new("/etc/t.toml")).unwrap();
        assert!(config.mqtt.tls, "TLS is the default");
        let settings = crate::daemon::session_settings(&config).unwrap();
        let ours = settings.tls.clone().expect("a TLS configuration is built");
        let opts = mqtt_options(&settings, "v/a/g/gw1/mqtt/status", Duration::from_secs(60));
        match opts.transport() {
            Transport::Tls(TlsConfiguration::Rustls(c)) => assert!(
                Arc::ptr_eq(&c, &ours),
                "rumqttc must connect with the ClientConfig built by tls::client_config"
            ),
            Transport::Tls(other) => {
                panic!("not our rustls ClientConfig (rumqttc would load PEM itself): {other:?}")
            }
            _ => panic!("TLS is configured, the transport is not TLS"),
        }

        let plain = crate::config::Config::parse(
            "[gateway]\nid = \"gw1\"\napikey = \"k\"\n[mqtt]\nhost = \"127.0.0.1\"\ntls = false\n",
            std::path::Path::new("/etc/t.toml"),
        )
        .unwrap();
        let settings = crate::daemon::session_settings(&plain).unwrap();
        assert!(settings.tls.is_none());
        let opts = mqtt_options(&settings, "v/a/g/gw1/mqtt/status", Duration::from_secs(60));
        assert!(matches!(opts.transport(), Transport::Tcp));
    }

    /// A weaker, source-level complement to the test above: no code in
    /// src/ names a constructor of rumqttc's PEM-loading TLS path.
    #[test]
    fn no_source_builds_rumqttc_pem_tls() {
        // Spelled in pieces so that this file does not match itself.
        let forbidden = [
            ["TlsConfiguration", "::Simple"].concat(),
            ["Transport", "::tls("].concat(),
            ["Transport", "::wss("].concat(),
        ];
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut files = 0;
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    files += 1;
                    let text = std::fs::read_to_string(&path).unwrap();
                    let code = (1..)
                        .zip(text.lines())
                        .filter(|(_, l)| !l.trim_start().starts_with("//"));
                    for (n, line) in code {
                        for f in &forbidden {
                            assert!(
                                !line.contains(f.as_str()),
                                "{}:{n} names {f}",
                                path.display()
                            );
                        }
                    }
                }
            }
        }
        assert!(files > 10, "read only {files} source files");
    }

    #[test]
    fn login_refusal_is_explained() {
        let f = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            "gw1",
            "h:1",
        );
        assert_eq!(f.kind, FailureKind::LoginRefused);
        assert!(f.message.contains("APIKEY"));
        let f = classify(
            &ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            "gw1",
            "h:1",
        );
        assert_eq!(f.kind, FailureKind::Unreachable);
    }
}
