//! Wiring: configuration to running tasks, signals, reload, shutdown.
//!
//! [`run`] goes through named steps: install the signal handlers, start
//! every task ([`Daemon::start`]), tell systemd, serve signals and
//! requests ([`Daemon::serve`]), then stop in order ([`Daemon::stop`]):
//! sampling first, the session's goodbye next, the actuators last.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::actuator::Actuators;
use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::config::{Config, GatewayConfig};
use crate::control_socket;
use crate::rpc::{Dispatcher, SystemAction};
use crate::sensor::SensorRuntime;
use crate::session::{CommandLink, LinkState, Session, SessionSettings, SessionShared};
use crate::state::StateFile;
use crate::status_board::StatusBoard;
use crate::systemd::{status_line, Health, Notifier};
use crate::units::format_duration;

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Stopped on a signal or request: exit 0.
    Stopped,
    /// The server asked for a restart: exit non-zero so systemd starts us again.
    Restart,
}

/// A failure that stops the daemon before it runs.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (exit 78, EX_CONFIG: systemd does not restart on it).
    #[error("{0}")]
    Config(String),
    /// A signal handler cannot be installed.
    #[error("{0}")]
    Signals(#[source] std::io::Error),
    /// The buffer cannot be opened.
    #[error("{0}")]
    Buffer(String),
}

/// Handles that let a caller (the demo, tests) stop the daemon.
#[derive(Clone)]
pub struct Control {
    stop: Arc<Notify>,
}

impl Control {
    pub fn new() -> Self {
        Control {
            stop: Arc::new(Notify::new()),
        }
    }
    /// Asks for the same clean shutdown as SIGTERM.
    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

/// Set to "1" to let SIGUSR2 wedge the main loop (a blocking call on the
/// runtime thread, as a deadlock would): the notify tests check that the
/// watchdog beats stop. Inert unless set.
pub const TEST_HOOKS_ENV: &str = "THINGPLUS_GW_TEST_HOOKS";

/// Longest reason of a refused reload shown in the STATUS= line.
const RELOAD_NOTE_CHARS: usize = 200;

/// What the MQTT session is built from; a reload rebuilds it only when this changes.
pub(crate) fn session_settings(config: &Config) -> Result<SessionSettings, StartError> {
    let tls = if config.mqtt.tls {
        Some(crate::tls::client_config(&config.mqtt).map_err(StartError::Config)?)
    } else {
        None
    };
    Ok(SessionSettings {
        gateway_id: config.gateway.id.clone(),
        apikey: config.gateway.apikey.clone(),
        mqtt: config.mqtt.clone(),
        tls,
        status_validity: config.gateway.status_validity,
    })
}

/// Runs the daemon until SIGTERM/SIGINT (or `control.stop()`).
pub async fn run(config: Config, control: Control) -> Result<Exit, StartError> {
    let mut notifier = Notifier::from_env();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // First, so that a SIGTERM during start-up is a clean stop, not a kill.
    let mut signals = Signals::install()?;
    let mut daemon = Daemon::start(config, &notifier).await?;
    daemon.announce_ready(&mut notifier).await;
    let exit = daemon.serve(&mut notifier, &mut signals, &control).await;
    daemon.stop(&mut notifier).await;
    Ok(exit)
}

/// The signals the daemon answers.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    /// SIGUSR2 under [`TEST_HOOKS_ENV`].
    wedge: Option<Signal>,
}

impl Signals {
    fn install() -> Result<Self, StartError> {
        let on = |kind| signal(kind).map_err(StartError::Signals);
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
            wedge: match std::env::var(TEST_HOOKS_ENV).as_deref() {
                Ok("1") => Some(on(SignalKind::user_defined2())?),
                _ => None,
            },
        })
    }
}

/// The report interval to start with: the one the server set (persisted
/// in the state directory) wins over the configured one.
fn report_interval_at_start(gw: &GatewayConfig, saved_ms: Option<u64>) -> Duration {
    match saved_ms {
        Some(ms) if ms > 0 => {
            let d = Duration::from_millis(ms);
            if d != gw.report_interval {
                tracing::info!(
                    report_interval = %format_duration(d),
                    configured = %format_duration(gw.report_interval),
                    "using the report interval set by the server"
                );
            }
            d
        }
        _ => gw.report_interval,
    }
}

/// The clock, with the readings held for the time restored: they survive
/// a restart within this boot.
fn start_clock(config: &Config) -> Arc<Clock> {
    let clock = Arc::new(Clock::with_source(crate::clock::source_from_env()));
    match crate::clock::boot_id() {
        Some(boot) => {
            let configured: std::collections::HashSet<&str> =
                config.sensors.iter().map(|s| s.id.as_str()).collect();
            clock.persist_held(
                &config.gateway.state_dir.join(crate::clock::HELD_FILE),
                &boot,
                &|id| configured.contains(id),
            );
        }
        None => tracing::warn!(
            "cannot read the boot id (/proc/sys/kernel/random/boot_id): readings held for the time are kept in memory only"
        ),
    }
    clock
}

/// A reload's refusal, short enough for the STATUS= line.
fn reload_note(error: &str) -> String {
    let mut short: String = error.chars().take(RELOAD_NOTE_CHARS).collect();
    if short.len() < error.len() {
        short.push('…');
    }
    short
}

/// The new configuration as it runs: restart-only settings keep their
/// running values.
fn keep_restart_only(running: &Config, mut new: Config) -> Config {
    new.buffer = running.buffer.clone();
    new.gateway.state_dir = running.gateway.state_dir.clone();
    new.rpc = running.rpc.clone();
    new
}

fn broker_of(config: &Config) -> String {
    format!("{}:{}", config.mqtt.host, config.mqtt.port)
}

/// Everything the daemon runs, started.
struct Daemon {
    config: Config,
    buffer: Buffer,
    board: Arc<StatusBoard>,
    sensors: SensorRuntime,
    /// One task per file sensor, serial port and Modbus bus, by key, so
    /// that a reload can restart only what changed.
    sensor_tasks: Vec<(String, JoinHandle<()>)>,
    actuators: Actuators,
    report_interval: watch::Sender<Duration>,
    session_shared: SessionShared,
    shutdown: watch::Sender<bool>,
    session_task: JoinHandle<()>,
    session_done: bool,
    commands_task: JoinHandle<()>,
    control_task: JoinHandle<()>,
    actions: mpsc::UnboundedReceiver<SystemAction>,
    link: watch::Receiver<LinkState>,
    broker: String,
    health: Health,
    reload_error: Option<String>,
}

impl Daemon {
    async fn start(config: Config, notifier: &Notifier) -> Result<Self, StartError> {
        let gw = &config.gateway;
        let settings = session_settings(&config)?;
        if let Err(e) = std::fs::create_dir_all(&gw.state_dir) {
            tracing::error!(path = %gw.state_dir.display(), error = %e, "cannot create the state directory {}: {e}; settings from the server will not survive a restart", gw.state_dir.display());
        }
        let state_file = StateFile::new(&gw.state_dir);
        let report_interval = report_interval_at_start(gw, state_file.load().report_interval_ms);
        let buffer = Buffer::open(&config.buffer, config.mqtt.max_message_size)
            .map_err(|e| StartError::Buffer(e.to_string()))?;
        let clock = start_clock(&config);
        let board = Arc::new(StatusBoard::new(
            config.sensors.iter().map(|s| s.id.clone()),
        ));
        let flush = Arc::new(Notify::new());
        let (ri_tx, ri_rx) = watch::channel(report_interval);
        let (link_tx, link_rx) = watch::channel(LinkState::default());
        let sensors = SensorRuntime {
            buffer: buffer.clone(),
            clock: clock.clone(),
            board: board.clone(),
            flush: flush.clone(),
            report_interval: ri_rx.clone(),
        };
        let sensor_tasks = crate::reload::task_specs(&config)
            .into_iter()
            .map(|t| (t.key(), t.spawn(sensors.clone())))
            .collect();

        let actuators = Actuators::new(&config.actuators);
        let (actions_tx, actions) = mpsc::unbounded_channel();
        // The last update, as an earlier run recorded it (often the update
        // that restarted the service).
        let dispatcher = Dispatcher::new(
            clock.clone(),
            actuators.clone(),
            state_file,
            ri_tx.clone(),
            config.rpc.clone(),
            actions_tx,
            crate::rpc::load_sw_update(&gw.state_dir),
        );
        let control_sources = control_socket::Sources {
            gateway_id: gw.id.clone(),
            broker: broker_of(&config),
            link: link_rx.clone(),
            buffer: buffer.clone(),
            board: board.clone(),
            actuators: actuators.state_view(),
            last_command: dispatcher.last_command(),
            sw_update: dispatcher.sw_update(),
            clock,
            report_interval: ri_rx.clone(),
        };
        let control_task = tokio::spawn(control_socket::serve(
            control_socket::default_path(),
            control_sources,
        ));
        let (commands, requests, answers) = CommandLink::new();
        let commands_task = tokio::spawn(dispatcher.serve(requests, answers));
        let session_shared = SessionShared {
            buffer: buffer.clone(),
            board: board.clone(),
            report_interval: ri_rx,
            flush,
            link: link_tx,
            commands: Arc::new(tokio::sync::Mutex::new(commands)),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let session_task = tokio::spawn(Session::new(settings, &session_shared, shutdown_rx).run());

        tracing::info!(
            gateway_id = %gw.id,
            broker = %broker_of(&config),
            tls = config.mqtt.tls,
            sensors = config.sensors.len(),
            actuators = config.actuators.len(),
            report_interval = %format_duration(report_interval),
            build = crate::version::BUILD,
            "thingplus-gw {} started", crate::version::VERSION
        );
        Ok(Daemon {
            broker: broker_of(&config),
            health: Health::new(notifier.tick_period()),
            config,
            buffer,
            board,
            sensors,
            sensor_tasks,
            actuators,
            report_interval: ri_tx,
            session_shared,
            shutdown,
            session_task,
            session_done: false,
            commands_task,
            control_task,
            actions,
            link: link_rx,
            reload_error: None,
        })
    }

    /// The STATUS= line now.
    fn status(&self) -> String {
        status_now(
            &self.health,
            &self.link.borrow(),
            &self.broker,
            &self.reload_error,
        )
    }

    /// Ready: configuration loaded, buffer open, sensors sampling. The
    /// cloud is not waited for: the daemon is useful offline.
    async fn announce_ready(&mut self, notifier: &mut Notifier) {
        let no_tasks = std::iter::empty::<(&str, &JoinHandle<()>)>();
        self.health.check(&self.buffer, no_tasks).await;
        notifier.ready(&self.status());
        if let Some(w) = notifier.watchdog_timeout() {
            tracing::debug!(
                timeout_ms = w.as_millis() as u64,
                "systemd watchdog enabled"
            );
        }
    }

    /// Serves signals, the watchdog, reloads and the server's system
    /// actions until the daemon is to stop.
    async fn serve(
        &mut self,
        notifier: &mut Notifier,
        signals: &mut Signals,
        control: &Control,
    ) -> Exit {
        let mut tick = tokio::time::interval(notifier.tick_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = signals.term.recv() => { tracing::info!("SIGTERM: shutting down"); return Exit::Stopped; }
                _ = signals.int.recv() => { tracing::info!("SIGINT: shutting down"); return Exit::Stopped; }
                _ = control.stop.notified() => { tracing::info!("stop requested: shutting down"); return Exit::Stopped; }
                _ = tick.tick() => self.beat(notifier).await,
                changed = self.link.changed() => {
                    if changed.is_ok() {
                        self.link.borrow_and_update();
                        notifier.status(&self.status());
                    }
                }
                Some(()) = async { signals.wedge.as_mut()?.recv().await } => {
                    tracing::warn!("test hook: wedging the main loop");
                    std::thread::sleep(Duration::MAX);
                }
                _ = signals.hup.recv() => {
                    notifier.reloading();
                    self.reload().await;
                    let no_tasks = std::iter::empty::<(&str, &JoinHandle<()>)>();
                    self.health.check(&self.buffer, no_tasks).await;
                    notifier.ready(&self.status());
                }
                action = self.actions.recv() => {
                    if let Some(exit) = self.carry_out(action).await {
                        return exit;
                    }
                }
                _ = &mut self.session_task => {
                    tracing::error!("the MQTT session stopped unexpectedly");
                    self.session_done = true;
                    return Exit::Stopped;
                }
            }
        }
    }

    /// The watchdog beat, when every part is alive, and the STATUS= line.
    async fn beat(&mut self, notifier: &mut Notifier) {
        let tasks = self
            .sensor_tasks
            .iter()
            .map(|(id, t)| (id.as_str(), t))
            .chain(std::iter::once(("mqtt-session", &self.session_task)));
        if self.health.check(&self.buffer, tasks).await {
            notifier.watchdog();
        }
        notifier.status(&self.status());
    }

    /// A system action the server asked for: `Some` when the daemon is to
    /// exit for it.
    async fn carry_out(&mut self, action: Option<SystemAction>) -> Option<Exit> {
        match action {
            Some(SystemAction::Restart) => {
                tracing::info!("restart requested by the server: shutting down to be restarted");
                Some(Exit::Restart)
            }
            Some(a @ (SystemAction::Reboot | SystemAction::Poweroff)) => {
                let rpc = &self.config.rpc;
                let cmd = if a == SystemAction::Reboot {
                    &rpc.reboot_command
                } else {
                    &rpc.poweroff_command
                };
                tracing::warn!(command = ?cmd, "{a:?} requested by the server");
                // systemd then stops this service cleanly, which delivers the answer.
                match tokio::process::Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .status()
                    .await
                {
                    Ok(s) if s.success() => {}
                    Ok(s) => tracing::error!(status = %s, command = ?cmd, "{a:?} command failed"),
                    Err(e) => {
                        tracing::error!(error = %e, command = ?cmd, "cannot run the {a:?} command")
                    }
                }
                None
            }
            None => None,
        }
    }

    /// SIGHUP: loads the configuration again and applies what changed; a
    /// bad one is refused and the running one stays.
    async fn reload(&mut self) {
        let path = self.config.path.clone();
        tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration from {}", path.display());
        let loaded = Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|new| Ok((session_settings(&new).map_err(|e| e.to_string())?, new)));
        match loaded {
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused: the running configuration stays. {e}");
                self.reload_error = Some(reload_note(&e));
            }
            Ok((settings, new)) => {
                self.reload_error = None;
                self.apply(settings, new).await;
            }
        }
    }

    /// Applies a loaded configuration: restarts the sensor tasks that
    /// changed, reconfigures actuators, the report interval and the log
    /// level, and replaces the session when the connection changed.
    async fn apply(&mut self, settings: SessionSettings, new: Config) {
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let plan = crate::reload::plan(&self.config, &new);
        for what in &plan.need_restart {
            tracing::warn!(setting = what, "{what} changed: it takes effect at the next restart (systemctl restart thingplus-gw)");
        }
        // Stopped tasks lose nothing: every reading they took is already in
        // the buffer. They are awaited so that a serial port or bus is
        // closed before it is reopened.
        let (stopped, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sensor_tasks)
            .into_iter()
            .partition(|(key, _)| plan.stop.contains(key));
        self.sensor_tasks = kept;
        for (_, t) in &stopped {
            t.abort();
        }
        for (_, t) in stopped {
            let _ = t.await;
        }
        self.board
            .set_sensors(new.sensors.iter().map(|s| s.id.clone()));
        for t in &plan.start {
            self.sensor_tasks
                .push((t.key(), t.spawn(self.sensors.clone())));
        }
        if plan.actuators_changed {
            self.actuators.reconfigure(&new.actuators);
        }
        if let Some(ri) = plan.report_interval {
            let saved = StateFile::new(&self.config.gateway.state_dir).load();
            if saved.report_interval_ms.is_some_and(|ms| ms > 0) {
                tracing::info!(configured = %format_duration(ri), "report_interval changed in the file, but the one set by the server stays in force");
            } else {
                self.report_interval.send_replace(ri);
            }
        }
        if plan.log_level_changed {
            crate::logging::set_level(new.log_level.as_deref());
        }
        if plan.reconnect {
            self.replace_session(settings);
            self.broker = broker_of(&new);
        }
        tracing::info!(
            sensors = new.sensors.len(),
            actuators = new.actuators.len(),
            "configuration reloaded: {}",
            plan.summary()
        );
        self.config = keep_restart_only(&self.config, new);
    }

    /// The old session says goodbye (what it has in flight is acknowledged
    /// or stays buffered), then the new one connects and replays the buffer.
    fn replace_session(&mut self, settings: SessionSettings) {
        let (tx, rx) = watch::channel(false);
        let _ = std::mem::replace(&mut self.shutdown, tx).send(true);
        let session = Session::new(settings, &self.session_shared, rx);
        let old = std::mem::replace(&mut self.session_task, tokio::spawn(async {}));
        self.session_task = tokio::spawn(async move {
            let _ = old.await;
            session.run().await;
        });
    }

    /// Stops in order: sampling first, so that what the session delivers is
    /// everything there is; then the session's goodbye; then the actuators
    /// are left as configured and the buffer is closed.
    async fn stop(mut self, notifier: &mut Notifier) {
        self.control_task.abort();
        notifier.stopping();
        for (_, t) in &self.sensor_tasks {
            t.abort();
        }
        let _ = self.shutdown.send(true);
        if !self.session_done {
            let _ = (&mut self.session_task).await;
        }
        self.commands_task.abort();
        self.actuators.shutdown();
        // What stays buffered for the next start.
        let backlog = self.buffer.stats().await.map(|st| st.pending).ok();
        if let Err(e) = self.buffer.close().await {
            tracing::error!(error = %e, "cannot close the buffer cleanly: {e}");
        }
        match backlog {
            Some(n) => tracing::info!(
                backlog = n,
                "stopped: {n} readings stay in the buffer for the next start"
            ),
            None => tracing::info!("stopped"),
        }
    }
}

/// The STATUS= line: the link, the backlog, and a refused reload if any.
fn status_now(health: &Health, link: &LinkState, broker: &str, note: &Option<String>) -> String {
    let mut s = status_line(link, broker, health.pending, crate::clock::system_now_ms());
    if let Some(e) = note {
        s.push_str(&format!("; last reload refused: {e}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[gateway]\nid = \"gw1\"\napikey = \"k\"\nreport_interval = \"60s\"\n{extra}\
             [mqtt]\nhost = \"127.0.0.1\"\ntls = false\n"
        );
        Config::parse(&text, std::path::Path::new("/etc/t.toml")).unwrap()
    }

    #[test]
    fn the_report_interval_set_by_the_server_wins_over_the_configured_one() {
        let c = config("");
        let gw = &c.gateway;
        assert_eq!(report_interval_at_start(gw, None), Duration::from_secs(60));
        assert_eq!(
            report_interval_at_start(gw, Some(0)),
            Duration::from_secs(60)
        );
        assert_eq!(
            report_interval_at_start(gw, Some(90_000)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn a_long_reload_refusal_is_cut_for_the_status_line() {
        assert_eq!(reload_note("bad key"), "bad key");
        let long = "é".repeat(300);
        let note = reload_note(&long);
        assert_eq!(note.chars().count(), RELOAD_NOTE_CHARS + 1);
        assert!(note.ends_with('…'));
    }

    #[test]
    fn a_reload_keeps_the_restart_only_settings() {
        let running = config("state_dir = \"/var/lib/a\"\n");
        let new = config("state_dir = \"/var/lib/b\"\n");
        let applied = keep_restart_only(&running, new);
        assert_eq!(applied.gateway.state_dir, running.gateway.state_dir);
        assert_eq!(applied.buffer.dir, running.buffer.dir);
    }

    #[test]
    fn start_errors_keep_their_message_and_kind() {
        let e = StartError::Signals(std::io::Error::other("no signals"));
        assert_eq!(e.to_string(), "no signals");
        assert!(std::error::Error::source(&e).is_some());
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let text = format!(
            "[gateway]\nid = \"gw1\"\napikey = \"k\"\n[mqtt]\nhost = \"h\"\nca_file = \"{}\"\n",
            ca.display()
        );
        let c = Config::parse(&text, std::path::Path::new("/etc/t.toml")).unwrap();
        let e = session_settings(&c)
            .err()
            .expect("a CA file without certificates is refused");
        assert!(matches!(e, StartError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
    }
}
