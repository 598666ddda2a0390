//! The one long-lived MQTT session to Thing+: connect with backoff, replay
//! the buffer after every CONNACK, publish statuses, forward requests to
//! the commands task and publish its answers, and acknowledge readings in
//! the buffer only after the broker's PUBACK.
//!
//! What to send and when lives in a pure core ([`core::Core`] with its
//! [`window::DeliveryWindow`] and [`phase::Phase`]), tested without a
//! broker; this module is the I/O shell around it: the rumqttc event
//! loop, the timers, the buffer reads and the channels, each event fed to
//! the core.
//!
//! rumqttc is driven with a fresh client and event loop per connection:
//! with a clean session it would silently drop (or, worse, replay on the new
//! connection) whatever was queued for the old one, so the buffer alone
//! decides what is sent. The event loop runs in its own task and is never
//! blocked by our publishes (`try_publish` only).

mod client;
mod core;
mod failure;
mod outbox;
mod phase;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{interval_at, Interval, MissedTickBehavior};

pub use self::client::{MqttClient, Refused};
use self::core::{Core, Sent, ANSWER_BATCH};
pub use self::failure::{classify, Failure, FailureKind};
use self::outbox::Requests;
pub use self::outbox::{MAX_TAKEN_REQUESTS, MAX_TAKEN_REQUEST_BYTES};
use self::phase::Goodbye;
use crate::buffer::{Buffer, Packed, Reply};
use crate::clock::system_now_ms;
use crate::config::{MqttConfig, Secret};
use crate::rpc::Answer;
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

/// The session's end of the commands task: requests go out on one
/// channel, answers come back on one. It outlives a session (a reload
/// hands it to the next one), with the requests taken and not answered.
pub struct CommandLink {
    requests: mpsc::Sender<Vec<u8>>,
    answers: mpsc::UnboundedReceiver<Answer>,
    taken: Requests,
}

impl CommandLink {
    /// The link, and the commands task's ends (for `Dispatcher::serve`).
    pub fn new() -> (Self, mpsc::Receiver<Vec<u8>>, mpsc::UnboundedSender<Answer>) {
        let (requests, requests_rx) = mpsc::channel(ANSWER_BATCH);
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let link = CommandLink {
            requests,
            answers,
            taken: Requests::default(),
        };
        (link, requests_rx, answers_tx)
    }
}

/// What every session of the daemon shares: a reload replaces the
/// session, not these.
#[derive(Clone)]
pub struct SessionShared {
    pub buffer: Buffer,
    pub board: Arc<StatusBoard>,
    pub report_interval: watch::Receiver<Duration>,
    /// Notified when readings were appended.
    pub flush: Arc<Notify>,
    pub link: watch::Sender<LinkState>,
    /// Held by the running session; the next one waits for it.
    pub commands: Arc<tokio::sync::Mutex<CommandLink>>,
}

pub struct Session {
    settings: SessionSettings,
    topics: Topics,
    shared: SessionShared,
    shutdown: watch::Receiver<bool>,
}

enum Outcome {
    Shutdown(Goodbye),
    Lost {
        connected_for: Option<Duration>,
        failure: Failure,
        goodbye: Goodbye,
    },
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
    // Requests are acknowledged once taken: the broker's back-pressure.
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

/// One connection as the shell sees it: the core, the buffer read under
/// way, the status ticker.
struct Conn {
    core: Core<AsyncClient>,
    /// The next messages, already asked of the buffer thread (from the
    /// window's cursor).
    read_ahead: Option<Reply<Vec<Packed>>>,
    status_tick: Interval,
}

fn ticker(period: Duration) -> Interval {
    let mut tick = interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

impl Session {
    pub fn new(
        settings: SessionSettings,
        shared: &SessionShared,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Session {
            topics: Topics::new(&settings.gateway_id),
            settings,
            shared: shared.clone(),
            shutdown,
        }
    }

    fn broker(&self) -> String {
        format!("{}:{}", self.settings.mqtt.host, self.settings.mqtt.port)
    }

    fn options(&self) -> MqttOptions {
        mqtt_options(
            &self.settings,
            &self.topics.mqtt_status,
            self.settings
                .mqtt
                .keep_alive_for(*self.shared.report_interval.borrow()),
        )
    }

    /// Runs until shutdown is requested and the session has said goodbye.
    pub async fn run(mut self) {
        let commands = self.shared.commands.clone();
        let mut commands = commands.lock_owned().await;
        let goodbye = self.run_connections(&mut commands).await;
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
    }

    async fn run_connections(&mut self, commands: &mut CommandLink) -> Goodbye {
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
            if !first && self.wait_to_retry(failures).await {
                return goodbye;
            }
            first = false;
            tracing::debug!(broker = %broker, "connecting");
            match self.connection(commands).await {
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
                    self.shared.link.send_modify(|l| {
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

    /// Waits out the backoff after `failures` failed attempts; `true` when
    /// shutdown was asked meanwhile.
    async fn wait_to_retry(&mut self, failures: u32) -> bool {
        let s = &self.settings.mqtt;
        let delay =
            crate::backoff::delay(failures, s.reconnect_min, s.reconnect_max, fastrand::f64());
        self.shared
            .link
            .send_modify(|l| l.retry_at_ms = Some(system_now_ms() + delay.as_millis() as i64));
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "next connection attempt scheduled"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = self.shutdown.changed() => true,
        }
    }

    /// The status report, encoded (and compressed as configured).
    fn status_payload(&self) -> Vec<u8> {
        let ri = *self.shared.report_interval.borrow();
        let valid = crate::status_board::status_valid_secs(self.settings.status_validity, ri);
        let sensors = self.shared.board.snapshot();
        let payload = encode_status(
            &Status::On,
            valid,
            sensors.iter().map(|s| (s.id.as_str(), &s.status)),
        );
        // Once per report interval: cheap enough on the runtime even gzipped.
        self.settings.mqtt.compress.apply(payload.into_bytes())
    }

    /// A client and its event loop, polled in a task of its own that
    /// forwards every event.
    fn connect(
        &self,
    ) -> (
        AsyncClient,
        mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
        PumpGuard,
    ) {
        let (client, eventloop) = AsyncClient::new(self.options(), 128);
        let mut eventloop: EventLoop = eventloop;
        let mut net = eventloop.network_options();
        net.set_connection_timeout(self.settings.mqtt.connect_timeout.as_secs().max(1));
        // A request's acknowledgement is a 4-byte write right after its
        // response: Nagle would hold it for the broker's delayed ACK (up to
        // 40 ms), and the broker sends no more requests meanwhile.
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let pump = PumpGuard(tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let end = ev.is_err();
                if ev_tx.send(ev).await.is_err() || end {
                    return;
                }
            }
        }));
        (client, ev_rx, pump)
    }

    /// One connection, from connect to loss or goodbye.
    async fn connection(&mut self, commands: &mut CommandLink) -> Outcome {
        let (client, mut ev_rx, _pump) = self.connect();
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let mut conn = Conn {
            core: Core::new(
                client,
                self.topics.clone(),
                self.settings.mqtt.max_inflight as usize,
            ),
            read_ahead: None,
            status_tick: interval_at(far, Duration::from_secs(86_400)),
        };
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let lost = |conn: &Conn, failure: Failure| Outcome::Lost {
            connected_for: conn.core.connected_for(Instant::now()),
            failure,
            goodbye: conn.core.goodbye(),
        };

        loop {
            let online = conn.core.phase().online();
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(Ok(event)) => self.on_event(event, &mut conn, commands),
                    Some(Err(e)) => {
                        if let Some(g) = conn.core.on_event_loop_end() {
                            return Outcome::Shutdown(g);
                        }
                        let f = classify(&e, &self.settings.gateway_id, &self.broker());
                        return lost(&conn, f);
                    }
                    None => return lost(&conn, Failure { kind: FailureKind::Lost, message: "MQTT event loop stopped".into() }),
                },
                _ = conn.status_tick.tick(), if conn.core.sends_statuses() => {
                    conn.core.publish_status(self.status_payload(), Instant::now());
                    conn.core.window_mut().want();
                }
                _ = self.shared.flush.notified(), if online => conn.core.window_mut().want(),
                // Requests left from the last turn: handed on below.
                _ = std::future::ready(()), if conn.core.has_request_to_forward(&commands.taken) => {}
                Some(answer) = commands.answers.recv(), if online => {
                    conn.core.on_answer(&mut commands.taken, answer, Instant::now());
                }
                changed = self.shared.report_interval.changed() => {
                    if changed.is_ok() && conn.core.sends_statuses() {
                        conn.status_tick = ticker(*self.shared.report_interval.borrow());
                        // Tell the server at once under the new validity.
                        conn.core.publish_status(self.status_payload(), Instant::now());
                    }
                }
                _ = self.shutdown.changed(), if !conn.core.phase().stopping() => {
                    let timeout = self.settings.mqtt.shutdown_timeout;
                    if let Some(g) = conn.core.begin_shutdown(Instant::now(), timeout) {
                        return Outcome::Shutdown(g);
                    }
                }
                // Only while something awaits its PUBACK: an idle link is not
                // woken four times a second for nothing.
                _ = housekeeping.tick(), if conn.core.window().awaits_acks() => {
                    let ack_timeout = self.settings.mqtt.ack_timeout;
                    if conn.core.dead_link(Instant::now(), ack_timeout) {
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
            conn.core.flush(Instant::now());
            // Taking requests comes first: they are handed on when no event
            // is pending, so the broker's queue for us stays short.
            if conn.core.phase().online() && ev_rx.is_empty() {
                forward_requests(&mut conn.core, commands);
            }
            if conn.core.sends_values() {
                self.fill_window(&mut conn).await;
            }
            if let Some(g) = conn.core.step(&commands.taken, Instant::now()) {
                return Outcome::Shutdown(g);
            }
        }
    }

    /// Feeds one event of the event loop to the core.
    fn on_event(&mut self, event: Event, conn: &mut Conn, commands: &mut CommandLink) {
        let now = Instant::now();
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                let broker = self.broker();
                tracing::info!(broker = %broker, gateway_id = %self.settings.gateway_id, "connected to Thing+ broker {} as gateway {}", broker, self.settings.gateway_id);
                self.shared.link.send_modify(|l| {
                    l.connected = true;
                    l.since_ms = system_now_ms();
                    l.broker = broker;
                    l.retry_at_ms = None;
                });
                conn.read_ahead = None;
                conn.core.on_connack(self.status_payload(), now);
                conn.status_tick = ticker(*self.shared.report_interval.borrow());
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
                conn.core.on_message(
                    &mut commands.taken,
                    &p.topic,
                    p.qos,
                    p.pkid,
                    p.payload.into(),
                    now,
                );
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => conn.core.on_wire(pkid),
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some((seqs, count)) = conn.core.on_puback(ack.pkid) {
                    self.shared.buffer.ack(seqs);
                    let now_ms = system_now_ms();
                    self.shared.link.send_modify(|l| {
                        l.delivered += count as u64;
                        l.last_delivery_ms = Some(now_ms);
                    });
                }
            }
            _ => {}
        }
    }

    /// Sends value messages from the buffer until the window is full or the
    /// buffer has nothing more. The buffer thread packs the messages (from
    /// the oldest unacknowledged reading on) and packs the next ones while
    /// these are sent.
    async fn fill_window(&mut self, conn: &mut Conn) {
        let max_size = self.settings.mqtt.max_message_size;
        let compress = self.settings.mqtt.compress;
        let buffer = &self.shared.buffer;
        while conn.core.window().has_room() {
            if conn.core.window().needs_read() {
                let cursor = conn.core.window().cursor();
                let request = conn.read_ahead.take().unwrap_or_else(|| {
                    buffer.request_packed(cursor, max_size, PACK_BATCH, compress)
                });
                match request.await {
                    Ok(batch) => {
                        let full = batch.len() == PACK_BATCH;
                        conn.core.window_mut().offer(batch);
                        // A long backlog: the next messages are packed while
                        // these are sent.
                        if full {
                            let cursor = conn.core.window().cursor();
                            conn.read_ahead =
                                Some(buffer.request_packed(cursor, max_size, PACK_BATCH, compress));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the buffer");
                        return;
                    }
                }
            }
            match conn.core.send_next_values(max_size, Instant::now()) {
                Sent::Published => {}
                Sent::TooLarge(msg) => {
                    tracing::warn!(
                        size = msg.payload.len(),
                        max_message_size = max_size,
                        "a single reading does not fit in max_message_size; dropped"
                    );
                    buffer.ack(msg.seqs);
                }
                Sent::Nothing | Sent::Blocked => return,
            }
        }
    }
}

/// Hands taken requests to the commands task, oldest first, as far as the
/// core lets it; then acknowledges withheld requests as far as there is
/// room again.
fn forward_requests(core: &mut Core<AsyncClient>, commands: &mut CommandLink) {
    while let Some(request) = core.next_request(&mut commands.taken) {
        match commands.requests.try_send(request) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(request)) => {
                commands.taken.give_back(request);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                commands.taken.lost();
                tracing::error!(
                    "the commands task has stopped: a request from Thing+ is not answered"
                );
            }
        }
    }
    core.release_withheld(&commands.taken, Instant::now());
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
}
