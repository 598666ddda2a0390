//! Wiring: configuration to running tasks, signals, shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Notify};

use crate::actuator::Actuators;
use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::config::Config;
use crate::control_socket;
use crate::rpc::{Dispatcher, SystemAction};
use crate::sensor::SensorRuntime;
use crate::session::{LinkState, Session, SessionSettings};
use crate::state::StateFile;
use crate::status_board::StatusBoard;
use crate::systemd::{status_line, Health, Notifier};
use crate::thingplus::Topics;
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
    #[error("{0}")]
    Other(String),
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
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| StartError::Other(e.to_string()))?;
    let gw = &config.gateway;

    let settings = session_settings(&config)?;

    if let Err(e) = std::fs::create_dir_all(&gw.state_dir) {
        tracing::error!(path = %gw.state_dir.display(), error = %e, "cannot create the state directory {}: {e}; settings from the server will not survive a restart", gw.state_dir.display());
    }
    let state_file = StateFile::new(&gw.state_dir);
    let saved = state_file.load();
    let report_interval = match saved.report_interval_ms {
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
    };

    let buffer = Buffer::open(&config.buffer, config.mqtt.max_message_size)
        .map_err(|e| StartError::Other(e.to_string()))?;
    let clock = Arc::new(Clock::with_source(crate::clock::source_from_env()));
    // Readings held for the time survive a restart within this boot.
    match crate::clock::boot_id() {
        Some(boot) => {
            let configured: std::collections::HashSet<&str> =
                config.sensors.iter().map(|s| s.id.as_str()).collect();
            clock.persist_held(
                &gw.state_dir.join(crate::clock::HELD_FILE),
                &boot,
                &|id| configured.contains(id),
            );
        }
        None => tracing::warn!(
            "cannot read the boot id (/proc/sys/kernel/random/boot_id): readings held for the time are kept in memory only"
        ),
    }
    let board = Arc::new(StatusBoard::new(
        config.sensors.iter().map(|s| s.id.clone()),
    ));
    let flush = Arc::new(Notify::new());
    let (ri_tx, ri_rx) = watch::channel(report_interval);
    let (mut shutdown_tx, shutdown_rx) = watch::channel(false);
    let (actions_tx, mut actions_rx) = mpsc::unbounded_channel();
    let (link_tx, link_rx) = watch::channel(LinkState::default());
    let mut link_watch = link_tx.subscribe();
    let ri_tx_reload = ri_tx.clone();

    let rt = SensorRuntime {
        buffer: buffer.clone(),
        clock: clock.clone(),
        board: board.clone(),
        flush: flush.clone(),
        report_interval: ri_rx.clone(),
    };
    // One task per file sensor, serial port and Modbus bus, by key, so that
    // a reload can restart only what changed.
    let mut sensor_tasks: Vec<(String, tokio::task::JoinHandle<()>)> =
        crate::reload::task_specs(&config)
            .into_iter()
            .map(|t| (t.key(), t.spawn(rt.clone())))
            .collect();

    let actuators = Actuators::new(&config.actuators);
    let actuator_states = actuators.state_view();
    let mut dispatcher = Dispatcher::new(
        clock.clone(),
        actuators.clone(),
        state_file,
        ri_tx,
        config.rpc.clone(),
        actions_tx.clone(),
    );
    // The last update, as an earlier run recorded it (often the update that
    // restarted the service).
    dispatcher.sw_update = crate::rpc::load_sw_update(&gw.state_dir);
    let last_command = dispatcher.last_command.clone();
    let sw_update = dispatcher.sw_update.clone();
    let control_sources = control_socket::Sources {
        gateway_id: gw.id.clone(),
        broker: format!("{}:{}", config.mqtt.host, config.mqtt.port),
        link: link_rx,
        buffer: buffer.clone(),
        board: board.clone(),
        actuators: actuator_states,
        last_command: dispatcher.last_command.clone(),
        sw_update: dispatcher.sw_update.clone(),
        clock: clock.clone(),
        report_interval: ri_rx.clone(),
    };
    let control_task = tokio::spawn(control_socket::serve(
        control_socket::default_path(),
        control_sources,
    ));
    let session = Session {
        settings,
        topics: Topics::new(&gw.id),
        buffer: buffer.clone(),
        board: board.clone(),
        dispatcher,
        report_interval: ri_rx.clone(),
        flush: flush.clone(),
        shutdown: shutdown_rx,
        link: link_tx.clone(),
    };
    let mut session_task = tokio::spawn(session.run());

    tracing::info!(
        gateway_id = %gw.id,
        broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
        tls = config.mqtt.tls,
        sensors = config.sensors.len(),
        actuators = config.actuators.len(),
        report_interval = %format_duration(report_interval),
        build = crate::version::BUILD,
        "thingplus-gw {} started", crate::version::VERSION
    );

    let mut sighup = signal(SignalKind::hangup()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut wedge = match std::env::var(TEST_HOOKS_ENV).as_deref() {
        Ok("1") => Some(
            signal(SignalKind::user_defined2()).map_err(|e| StartError::Other(e.to_string()))?,
        ),
        _ => None,
    };

    // Ready: configuration loaded, buffer open, sensors sampling. The cloud
    // is not waited for: the daemon is useful offline.
    let mut broker = format!("{}:{}", config.mqtt.host, config.mqtt.port);
    let mut health = Health::new(notifier.tick_period());
    let mut reload_error: Option<String> = None;
    let no_tasks = || std::iter::empty::<(&str, &tokio::task::JoinHandle<()>)>();
    health.check(&buffer, no_tasks()).await;
    notifier.ready(&status_now(
        &health,
        &link_watch.borrow(),
        &broker,
        &reload_error,
    ));
    if let Some(w) = notifier.watchdog_timeout() {
        tracing::debug!(
            timeout_ms = w.as_millis() as u64,
            "systemd watchdog enabled"
        );
    }
    let mut tick = tokio::time::interval(notifier.tick_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut config = config;
    let mut exit = Exit::Stopped;
    let mut session_done = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = control.stop.notified() => { tracing::info!("stop requested: shutting down"); break; }
            _ = tick.tick() => {
                let tasks = sensor_tasks
                    .iter()
                    .map(|(id, t)| (id.as_str(), t))
                    .chain(std::iter::once(("mqtt-session", &session_task)));
                if health.check(&buffer, tasks).await {
                    notifier.watchdog();
                }
                notifier.status(&status_now(&health, &link_watch.borrow(), &broker, &reload_error));
            }
            changed = link_watch.changed() => {
                if changed.is_ok() {
                    let link = link_watch.borrow_and_update().clone();
                    notifier.status(&status_now(&health, &link, &broker, &reload_error));
                }
            }
            Some(()) = async { wedge.as_mut()?.recv().await } => {
                tracing::warn!("test hook: wedging the main loop");
                std::thread::sleep(Duration::MAX);
            }
            _ = sighup.recv() => {
                notifier.reloading();
                tracing::info!(path = %config.path.display(), "SIGHUP: reloading the configuration from {}", config.path.display());
                let loaded = Config::load(&config.path)
                    .map_err(|e| e.to_string())
                    .and_then(|new| Ok((session_settings(&new).map_err(|e| e.to_string())?, new)));
                match loaded {
                    Err(e) => {
                        tracing::error!(error = %e, "configuration reload refused: the running configuration stays. {e}");
                        let mut short: String = e.chars().take(200).collect();
                        if short.len() < e.len() {
                            short.push('…');
                        }
                        reload_error = Some(short);
                    }
                    Ok((settings, new)) => {
                        reload_error = None;
                        for w in &new.warnings {
                            tracing::warn!("{w}");
                        }
                        let plan = crate::reload::plan(&config, &new);
                        for what in &plan.need_restart {
                            tracing::warn!(setting = what, "{what} changed: it takes effect at the next restart (systemctl restart thingplus-gw)");
                        }
                        // Stopped tasks lose nothing: every reading they took
                        // is already in the buffer. They are awaited so that
                        // a serial port or bus is closed before it is reopened.
                        let mut stopped = Vec::new();
                        sensor_tasks.retain_mut(|(key, t)| {
                            let stop = plan.stop.contains(key);
                            if stop {
                                t.abort();
                                stopped.push(std::mem::replace(t, tokio::spawn(async {})));
                            }
                            !stop
                        });
                        for t in stopped {
                            let _ = t.await;
                        }
                        board.set_sensors(new.sensors.iter().map(|s| s.id.clone()));
                        for t in &plan.start {
                            sensor_tasks.push((t.key(), t.spawn(rt.clone())));
                        }
                        if plan.actuators_changed {
                            actuators.reconfigure(&new.actuators);
                        }
                        if let Some(ri) = plan.report_interval {
                            let saved = StateFile::new(&config.gateway.state_dir).load();
                            if saved.report_interval_ms.is_some_and(|ms| ms > 0) {
                                tracing::info!(configured = %format_duration(ri), "report_interval changed in the file, but the one set by the server stays in force");
                            } else {
                                ri_tx_reload.send_replace(ri);
                            }
                        }
                        if plan.log_level_changed {
                            crate::logging::set_level(new.log_level.as_deref());
                        }
                        if plan.reconnect {
                            // The old session says goodbye (what it has in
                            // flight is acknowledged or stays buffered), then
                            // the new one connects and replays the buffer.
                            let (tx, rx) = watch::channel(false);
                            let _ = std::mem::replace(&mut shutdown_tx, tx).send(true);
                            let mut dispatcher = Dispatcher::new(
                                clock.clone(),
                                actuators.clone(),
                                StateFile::new(&config.gateway.state_dir),
                                ri_tx_reload.clone(),
                                config.rpc.clone(),
                                actions_tx.clone(),
                            );
                            dispatcher.last_command = last_command.clone();
                            dispatcher.sw_update = sw_update.clone();
                            let session = Session {
                                settings,
                                topics: Topics::new(&new.gateway.id),
                                buffer: buffer.clone(),
                                board: board.clone(),
                                dispatcher,
                                report_interval: ri_rx.clone(),
                                flush: flush.clone(),
                                shutdown: rx,
                                link: link_tx.clone(),
                            };
                            let old = std::mem::replace(&mut session_task, tokio::spawn(async {}));
                            session_task = tokio::spawn(async move {
                                let _ = old.await;
                                session.run().await;
                            });
                            broker = format!("{}:{}", new.mqtt.host, new.mqtt.port);
                        }
                        tracing::info!(
                            sensors = new.sensors.len(),
                            actuators = new.actuators.len(),
                            "configuration reloaded: {}", plan.summary()
                        );
                        // Restart-only settings keep their running values.
                        let mut new = new;
                        new.buffer = config.buffer.clone();
                        new.gateway.state_dir = config.gateway.state_dir.clone();
                        new.rpc = config.rpc.clone();
                        config = new;
                    }
                }
                health.check(&buffer, no_tasks()).await;
                notifier.ready(&status_now(&health, &link_watch.borrow(), &broker, &reload_error));
            }
            action = actions_rx.recv() => match action {
                Some(SystemAction::Restart) => {
                    tracing::info!("restart requested by the server: shutting down to be restarted");
                    exit = Exit::Restart;
                    break;
                }
                Some(a @ (SystemAction::Reboot | SystemAction::Poweroff)) => {
                    let cmd = if a == SystemAction::Reboot { &config.rpc.reboot_command } else { &config.rpc.poweroff_command };
                    tracing::warn!(command = ?cmd, "{a:?} requested by the server");
                    // systemd then stops this service cleanly, which delivers the answer.
                    match tokio::process::Command::new(&cmd[0]).args(&cmd[1..]).status().await {
                        Ok(s) if s.success() => {}
                        Ok(s) => tracing::error!(status = %s, command = ?cmd, "{a:?} command failed"),
                        Err(e) => tracing::error!(error = %e, command = ?cmd, "cannot run the {a:?} command"),
                    }
                }
                None => {}
            },
            _ = &mut session_task => {
                tracing::error!("the MQTT session stopped unexpectedly");
                session_done = true;
                break;
            }
        }
    }

    control_task.abort();
    notifier.stopping();
    // Stop sampling first, so what is delivered below is everything there is.
    for (_, t) in &sensor_tasks {
        t.abort();
    }
    let _ = shutdown_tx.send(true);
    if !session_done {
        let _ = session_task.await;
    }
    // What stays buffered for the next start.
    let backlog = buffer.stats().await.map(|st| st.pending).ok();
    if let Err(e) = buffer.close().await {
        tracing::error!(error = %e, "cannot close the buffer cleanly: {e}");
    }
    match backlog {
        Some(n) => tracing::info!(
            backlog = n,
            "stopped: {n} readings stay in the buffer for the next start"
        ),
        None => tracing::info!("stopped"),
    }
    Ok(exit)
}

/// The STATUS= line: the link, the backlog, and a refused reload if any.
fn status_now(health: &Health, link: &LinkState, broker: &str, note: &Option<String>) -> String {
    let mut s = status_line(link, broker, health.pending, crate::clock::system_now_ms());
    if let Some(e) = note {
        s.push_str(&format!("; last reload refused: {e}"));
    }
    s
}
