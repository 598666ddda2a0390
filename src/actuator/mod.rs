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
    /// What it was built from: a reload keeps it when unchanged.
    config: ActuatorConfig,
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
pub struct ActuatorStates(Arc<Mutex<Vec<StateCell>>>);

/// One actuator's id and its live state.
type StateCell = (String, Arc<Mutex<String>>);

impl ActuatorStates {
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, s)| (id.clone(), lock(s).clone()))
            .collect()
    }
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every configured actuator, by id. A cheap handle: clones share the same
/// actuators, so a configuration reload can change them under the running
/// request dispatcher ([`Actuators::reconfigure`]).
#[derive(Clone)]
pub struct Actuators {
    inner: Arc<Mutex<Set>>,
}

struct Set {
    entries: HashMap<String, Entry>,
    /// The live view handed out by `state_view`, kept in step with `entries`.
    states: ActuatorStates,
}

impl Set {
    fn refresh_states(&self) {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|(id, e)| (id.clone(), e.state.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        *self.states.0.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

impl Actuators {
    pub fn new(configs: &[ActuatorConfig]) -> Self {
        let mut entries = HashMap::new();
        for c in configs {
            let device = match &c.driver {
                ActuatorDriver::Led { path } => {
                    let led = Led::new(path);
                    if let Err(e) = led.check() {
                        tracing::warn!(actuator_id = %c.id, error = %e, "actuator may not work: {}: {e}", c.id);
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
                        tracing::error!(actuator_id = %c.id, error = %e, "actuator unusable: {}: {e}", c.id);
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
                    config: c.clone(),
                    device,
                    task: None,
                    state: Arc::new(Mutex::new("unknown".into())),
                    on_shutdown: c.on_shutdown,
                },
            );
        }
        let set = Set {
            entries,
            states: ActuatorStates::default(),
        };
        set.refresh_states();
        Actuators {
            inner: Arc::new(Mutex::new(set)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Set> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new list of actuators (configuration reload): unchanged ones
    /// keep their state and any running timed command; removed or changed
    /// ones stop theirs, and new or changed ones are set up afresh.
    pub fn reconfigure(&self, configs: &[ActuatorConfig]) {
        // Old entries go first: a changed GPIO line must be released before
        // it can be requested again.
        self.lock().entries.retain(|id, e| {
            let keep = configs.iter().any(|c| &c.id == id && *c == e.config);
            if !keep {
                if let Some(t) = e.task.take() {
                    t.abort();
                }
            }
            keep
        });
        let fresh: Vec<ActuatorConfig> = {
            let set = self.lock();
            configs
                .iter()
                .filter(|c| !set.entries.contains_key(&c.id))
                .cloned()
                .collect()
        };
        let built = std::mem::take(&mut Actuators::new(&fresh).lock().entries);
        let mut set = self.lock();
        set.entries.extend(built);
        set.refresh_states();
    }

    /// A view of each actuator's state ("on", "off", "blink", "unknown",
    /// "running cmd") that stays current: for the status report.
    pub fn state_view(&self) -> ActuatorStates {
        self.lock().states.clone()
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
        let mut set = self.lock();
        let Some(entry) = set.entries.get_mut(id) else {
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
                                tracing::warn!(actuator_id = %id_owned, error = %e, "blinking stopped: {id_owned}: {e}");
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
        for (id, e) in &mut self.lock().entries {
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
                    tracing::info!(actuator_id = %id, "actuator turned off at shutdown: {id}");
                }
                Err(err) => {
                    tracing::warn!(actuator_id = %id, error = %err, "cannot turn actuator off at shutdown: {id}: {err}")
                }
            }
        }
    }
}

fn back_to_off(id: &str, r: std::io::Result<()>, state: &Mutex<String>) {
    match r {
        Ok(()) => {
            *lock(state) = "off".into();
            tracing::info!(actuator_id = %id, "timed command ended: off ({id})");
        }
        Err(e) => {
            tracing::warn!(actuator_id = %id, error = %e, "cannot turn actuator off after its duration: {id}: {e}")
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

#[cfg(test)]
mod reconfigure_tests {
    use super::*;
    use crate::config::ActuatorType;

    fn switch(id: &str, path: &std::path::Path) -> ActuatorConfig {
        ActuatorConfig {
            id: id.into(),
            actuator_type: ActuatorType::PowerSwitch,
            driver: ActuatorDriver::ValueFile {
                path: path.to_path_buf(),
                active_low: false,
            },
            on_shutdown: OnShutdown::Leave,
            thingplus_type: "powerSwitch".into(),
        }
    }

    #[tokio::test]
    async fn reconfigure_keeps_unchanged_adds_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb, pc) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        for p in [&pa, &pb, &pc] {
            std::fs::write(p, "0").unwrap();
        }
        let mut acts = Actuators::new(&[switch("a", &pa), switch("b", &pb)]);
        let view = acts.state_view();
        let Reply::Now(r) = acts.control("a", "on", &Map::new()) else {
            panic!("a switch answers at once")
        };
        r.unwrap();
        assert_eq!(std::fs::read_to_string(&pa).unwrap(), "1");

        // The dispatcher's clone sees the change: a kept (state "on"), b gone, c new.
        let handle = acts.clone();
        handle.reconfigure(&[switch("a", &pa), switch("c", &pc)]);
        assert_eq!(
            view.snapshot(),
            vec![("a".into(), "on".into()), ("c".into(), "unknown".into())]
        );
        let Reply::Now(r) = acts.control("b", "on", &Map::new()) else {
            panic!()
        };
        assert!(r.is_err(), "b was removed");
        let Reply::Now(r) = acts.control("c", "on", &Map::new()) else {
            panic!()
        };
        r.unwrap();
        assert_eq!(std::fs::read_to_string(&pc).unwrap(), "1");

        // A changed actuator is set up afresh.
        handle.reconfigure(&[switch("a", &pb), switch("c", &pc)]);
        assert_eq!(view.snapshot()[0], ("a".into(), "unknown".into()));
    }
}
