//! Actuators driven by `controlActuator`: sysfs LEDs, power switches (GPIO
//! line or value file) and programs.

pub mod exec;
pub mod led;
pub mod switch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value as Json};
use tokio::task::JoinHandle;

use crate::config::{ActuatorConfig, ActuatorDriver, OnShutdown};
use crate::thingplus::rpc::{millis_param, RpcError};

pub use led::Led;
use switch::{GpioLine, Output, ValueFile};

/// Default blink half-period when `options.interval` is absent.
const DEFAULT_BLINK_MS: u64 = 500;

enum Device {
    Led(Led),
    Switch(Arc<dyn Output>),
    Exec {
        command: Vec<String>,
        timeout: Duration,
    },
    /// Configured but unusable (a GPIO line that could not be requested): why.
    Broken(String),
}

struct Entry {
    device: Device,
    /// The running timed part of the last command (back to off, software
    /// blinking, a running program); a newer command cancels it.
    task: Option<JoinHandle<()>>,
    state: Arc<Mutex<String>>,
    on_shutdown: OnShutdown,
}

/// The answer to a command: now, or when a program finishes.
pub enum Reply {
    Now(Result<Json, RpcError>),
    Later(JoinHandle<Result<Json, RpcError>>),
}

/// Shared, live states of the actuators.
#[derive(Clone, Default)]
pub struct ActuatorStates(Vec<(String, Arc<Mutex<String>>)>);

impl ActuatorStates {
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(id, s)| (id.clone(), lock(s).clone()))
            .collect()
    }
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every configured actuator, by id.
pub struct Actuators {
    entries: HashMap<String, Entry>,
}

impl Actuators {
    pub fn new(configs: &[ActuatorConfig]) -> Self {
        let mut entries = HashMap::new();
        for c in configs {
            let device = match &c.driver {
                ActuatorDriver::Led { path } => {
                    let led = Led::new(path);
                    if let Err(e) = led.check() {
                        tracing::warn!(actuator_id = %c.id, error = %e, "actuator may not work");
                    }
                    Device::Led(led)
                }
                ActuatorDriver::ValueFile { path, active_low } => {
                    Device::Switch(Arc::new(ValueFile::new(path, *active_low)))
                }
                ActuatorDriver::GpioLine {
                    chip,
                    line,
                    active_low,
                } => match GpioLine::open(chip, *line, *active_low) {
                    Ok(g) => Device::Switch(Arc::new(g)),
                    Err(e) => {
                        tracing::error!(actuator_id = %c.id, error = %e, "actuator unusable");
                        Device::Broken(e)
                    }
                },
                ActuatorDriver::Exec { command, timeout } => Device::Exec {
                    command: command.clone(),
                    timeout: *timeout,
                },
            };
            entries.insert(
                c.id.clone(),
                Entry {
                    device,
                    task: None,
                    state: Arc::new(Mutex::new("unknown".into())),
                    on_shutdown: c.on_shutdown,
                },
            );
        }
        Actuators { entries }
    }

    /// A view of each actuator's state ("on", "off", "blink", "unknown",
    /// "running cmd") that stays current: for the status report.
    pub fn state_view(&self) -> ActuatorStates {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|(id, e)| (id.clone(), e.state.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        ActuatorStates(v)
    }

    /// Carries out `cmd` on actuator `id`. Must run inside a tokio runtime
    /// (timed commands and programs run as tasks).
    pub fn control(&mut self, id: &str, cmd: &str, options: &Map<String, Json>) -> Reply {
        match self.control_inner(id, cmd, options) {
            Ok(r) => r,
            Err(e) => Reply::Now(Err(e)),
        }
    }

    fn control_inner(
        &mut self,
        id: &str,
        cmd: &str,
        options: &Map<String, Json>,
    ) -> Result<Reply, RpcError> {
        let Some(entry) = self.entries.get_mut(id) else {
            return Err(RpcError::invalid_params(format!(
                "unknown actuator id \"{id}\""
            )));
        };
        let duration = opt_ms(options, "duration")?;
        let interval = opt_ms(options, "interval")?;
        let state = entry.state.clone();
        let id_owned = id.to_string();
        match &entry.device {
            Device::Broken(why) => Err(RpcError::server(format!(
                "actuator \"{id}\" is unusable: {why}"
            ))),
            Device::Exec { command, timeout } => {
                let (command, timeout) = (command.clone(), *timeout);
                let cmd = cmd.to_string();
                let options = options.clone();
                if let Some(t) = entry.task.take() {
                    t.abort(); // kill_on_drop ends a program still running
                }
                *lock(&state) = format!("running {cmd}");
                let (tx, rx) = tokio::sync::oneshot::channel();
                entry.task = Some(tokio::spawn(async move {
                    let r = exec::run(&id_owned, &command, timeout, &cmd, &options).await;
                    *lock(&state) = match &r {
                        Ok(_) => cmd.clone(),
                        Err(_) => format!("{cmd} failed"),
                    };
                    let _ = tx.send(r);
                }));
                Ok(Reply::Later(tokio::spawn(async move {
                    rx.await
                        .unwrap_or_else(|_| Err(RpcError::server("cancelled by a newer command")))
                })))
            }
            Device::Led(led) => {
                let led = led.clone();
                let new_state = match cmd {
                    "on" => led.on().map(|_| "on"),
                    "off" => led.off().map(|_| "off"),
                    "blink" => led
                        .blink(interval.unwrap_or(DEFAULT_BLINK_MS))
                        .map(|_| "blink"),
                    other => return Err(unknown_cmd(other, id, "on, off or blink")),
                }
                .map_err(|e| RpcError::server(e.to_string()))?;
                if let Some(t) = entry.task.take() {
                    t.abort();
                }
                *lock(&state) = new_state.to_string();
                if let (Some(ms), true) = (duration, cmd != "off") {
                    entry.task = Some(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        back_to_off(&id_owned, led.off(), &state);
                    }));
                }
                Ok(Reply::Now(Ok(Json::String(String::new()))))
            }
            Device::Switch(out) => {
                let out = out.clone();
                let first = match cmd {
                    "on" | "blink" => out.set(true),
                    "off" => out.set(false),
                    other => return Err(unknown_cmd(other, id, "on, off or blink")),
                };
                first.map_err(|e| RpcError::server(e.to_string()))?;
                if let Some(t) = entry.task.take() {
                    t.abort();
                }
                *lock(&state) = cmd.to_string();
                if cmd == "blink" {
                    // No hardware blinking on a plain output: toggle it here.
                    let period = Duration::from_millis(interval.unwrap_or(DEFAULT_BLINK_MS));
                    entry.task = Some(tokio::spawn(async move {
                        let end = duration
                            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
                        let mut level = true;
                        loop {
                            tokio::time::sleep(period).await;
                            if end.is_some_and(|e| tokio::time::Instant::now() >= e) {
                                break;
                            }
                            level = !level;
                            if let Err(e) = out.set(level) {
                                tracing::warn!(actuator_id = %id_owned, error = %e, "blinking stopped");
                                return;
                            }
                        }
                        back_to_off(&id_owned, out.set(false), &state);
                    }));
                } else if let (Some(ms), "on") = (duration, cmd) {
                    entry.task = Some(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        back_to_off(&id_owned, out.set(false), &state);
                    }));
                }
                Ok(Reply::Now(Ok(Json::String(String::new()))))
            }
        }
    }

    /// Leaves each actuator as `on_shutdown` says; stops timed commands.
    pub fn shutdown(&mut self) {
        for (id, e) in &mut self.entries {
            if let Some(t) = e.task.take() {
                t.abort();
            }
            if e.on_shutdown != OnShutdown::Off {
                continue;
            }
            let r = match &e.device {
                Device::Led(l) => l.off(),
                Device::Switch(o) => o.set(false),
                // A program is not run at shutdown: the service may be stopping with the system.
                Device::Exec { .. } | Device::Broken(_) => continue,
            };
            match r {
                Ok(()) => {
                    *lock(&e.state) = "off".into();
                    tracing::info!(actuator_id = %id, "actuator turned off at shutdown");
                }
                Err(err) => {
                    tracing::warn!(actuator_id = %id, error = %err, "cannot turn actuator off at shutdown")
                }
            }
        }
    }
}

fn back_to_off(id: &str, r: std::io::Result<()>, state: &Mutex<String>) {
    match r {
        Ok(()) => {
            *lock(state) = "off".into();
            tracing::info!(actuator_id = %id, "timed command ended: off");
        }
        Err(e) => {
            tracing::warn!(actuator_id = %id, error = %e, "cannot turn actuator off after its duration")
        }
    }
}

fn unknown_cmd(cmd: &str, id: &str, expected: &str) -> RpcError {
    RpcError::invalid_params(format!(
        "unknown command \"{cmd}\" for actuator \"{id}\": expected {expected}"
    ))
}

/// An optional positive number of milliseconds from `options`.
fn opt_ms(options: &Map<String, Json>, key: &str) -> Result<Option<u64>, RpcError> {
    match options.get(key) {
        None | Some(Json::Null) => Ok(None),
        v => {
            let n = millis_param(v, &format!("options.{key}"))?;
            if n <= 0.0 || n > 7.0 * 86_400_000.0 {
                return Err(RpcError::invalid_params(format!(
                    "\"options.{key}\" must be a positive number of milliseconds (at most 7 days)"
                )));
            }
            Ok(Some(n as u64))
        }
    }
}
