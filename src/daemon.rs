//! Wiring: configuration to running tasks, signals, shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Notify};

use crate::actuator::Actuators;
use crate::buffer::Buffer;
use crate::clock::Clock;
use crate::config::Config;
use crate::rpc::{Dispatcher, SystemAction};
use crate::sensor::{self, SensorRuntime};
use crate::session::{LinkState, Session, SessionSettings};
use crate::state::StateFile;
use crate::status_board::StatusBoard;
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

/// Runs the daemon until SIGTERM/SIGINT (or `control.stop()`).
pub async fn run(config: Config, control: Control) -> Result<Exit, StartError> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // First, so that a SIGTERM during start-up is a clean stop, not a kill.
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| StartError::Other(e.to_string()))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| StartError::Other(e.to_string()))?;
    let gw = &config.gateway;

    let tls = if config.mqtt.tls {
        Some(crate::tls::client_config(&config.mqtt).map_err(StartError::Config)?)
    } else {
        None
    };

    if let Err(e) = std::fs::create_dir_all(&gw.state_dir) {
        tracing::error!(path = %gw.state_dir.display(), error = %e, "cannot create the state directory: settings from the server will not survive a restart");
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
    let clock = Arc::new(Clock::new());
    let board = Arc::new(StatusBoard::new(
        config.sensors.iter().map(|s| s.id.clone()),
    ));
    let flush = Arc::new(Notify::new());
    let (ri_tx, ri_rx) = watch::channel(report_interval);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (actions_tx, mut actions_rx) = mpsc::unbounded_channel();
    let (link_tx, _link_rx) = watch::channel(LinkState::default());

    let rt = SensorRuntime {
        buffer: buffer.clone(),
        clock: clock.clone(),
        board: board.clone(),
        flush: flush.clone(),
        report_interval: ri_rx.clone(),
    };
    let sensor_tasks: Vec<_> = config
        .sensors
        .iter()
        .map(|s| sensor::spawn(s.clone(), rt.clone()))
        .collect();

    let dispatcher = Dispatcher::new(
        clock.clone(),
        Actuators::new(&config.actuators),
        state_file,
        ri_tx,
        config.rpc.clone(),
        actions_tx,
    );
    let session = Session {
        settings: SessionSettings {
            gateway_id: gw.id.clone(),
            apikey: gw.apikey.clone(),
            mqtt: config.mqtt.clone(),
            tls,
            status_validity: gw.status_validity,
        },
        topics: Topics::new(&gw.id),
        buffer: buffer.clone(),
        board,
        dispatcher,
        report_interval: ri_rx,
        flush,
        shutdown: shutdown_rx,
        link: link_tx,
    };
    let mut session_task = tokio::spawn(session.run());

    tracing::info!(
        gateway_id = %gw.id,
        broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
        tls = config.mqtt.tls,
        sensors = config.sensors.len(),
        actuators = config.actuators.len(),
        report_interval = %format_duration(report_interval),
        "thingplus-gw {} started", env!("CARGO_PKG_VERSION")
    );

    let mut exit = Exit::Stopped;
    let mut session_done = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = control.stop.notified() => { tracing::info!("stop requested: shutting down"); break; }
            action = actions_rx.recv() => match action {
                Some(SystemAction::Restart) => {
                    tracing::info!("restart requested by the server: shutting down to be restarted");
                    exit = Exit::Restart;
                    break;
                }
                Some(a @ (SystemAction::Reboot | SystemAction::Poweroff)) => {
                    let verb = if a == SystemAction::Reboot { "reboot" } else { "poweroff" };
                    tracing::warn!("{verb} requested by the server");
                    // systemd stops this service cleanly as part of it.
                    match tokio::process::Command::new("systemctl").arg(verb).status().await {
                        Ok(s) if s.success() => {}
                        Ok(s) => tracing::error!(status = %s, "systemctl {verb} failed"),
                        Err(e) => tracing::error!(error = %e, "cannot run systemctl {verb}"),
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

    // Stop sampling first, so what is delivered below is everything there is.
    for t in &sensor_tasks {
        t.abort();
    }
    let _ = shutdown_tx.send(true);
    if !session_done {
        let _ = session_task.await;
    }
    if let Err(e) = buffer.close().await {
        tracing::error!(error = %e, "cannot close the buffer cleanly");
    }
    tracing::info!("stopped");
    Ok(exit)
}
