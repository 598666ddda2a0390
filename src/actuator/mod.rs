//! Actuators driven by `controlActuator`.

pub mod led;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value as Json};
use tokio::task::JoinHandle;

use crate::config::{ActuatorConfig, ActuatorType};
use crate::thingplus::rpc::{millis_param, RpcError};

pub use led::Led;

/// Default blink half-period when `options.interval` is absent.
const DEFAULT_BLINK_MS: u64 = 500;

struct Entry {
    config: ActuatorConfig,
    led: Led,
    /// The pending "back to off" of a timed command; a newer command cancels it.
    timer: Option<JoinHandle<()>>,
    state: Arc<Mutex<String>>,
}

/// Every configured actuator, by id. A cheap handle: clones share the same
/// actuators, so a configuration reload can change them under the running
/// request dispatcher.
#[derive(Clone)]
pub struct Actuators {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

fn new_entry(c: &ActuatorConfig) -> Entry {
    match c.actuator_type {
        ActuatorType::Led => {
            let led = Led::new(&c.path);
            if let Err(e) = led.check() {
                tracing::warn!(actuator_id = %c.id, error = %e, "actuator may not work");
            }
            Entry {
                config: c.clone(),
                led,
                timer: None,
                state: Arc::new(Mutex::new("unknown".into())),
            }
        }
    }
}

impl Actuators {
    pub fn new(configs: &[ActuatorConfig]) -> Self {
        let entries = configs
            .iter()
            .map(|c| (c.id.clone(), new_entry(c)))
            .collect();
        Actuators {
            entries: Arc::new(Mutex::new(entries)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new list of actuators: unchanged ones keep their state and
    /// any running timed command; removed ones stop their timer.
    pub fn reconfigure(&self, configs: &[ActuatorConfig]) {
        let mut entries = self.lock();
        entries.retain(|id, e| {
            let keep = configs.iter().any(|c| &c.id == id && *c == e.config);
            if !keep {
                if let Some(t) = e.timer.take() {
                    t.abort();
                }
            }
            keep
        });
        for c in configs {
            if !entries.contains_key(&c.id) {
                entries.insert(c.id.clone(), new_entry(c));
            }
        }
    }

    /// Current state of each actuator ("on", "off", "blink", "unknown").
    pub fn states(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.state.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Carries out `cmd` on actuator `id`. Must run inside a tokio runtime
    /// (timed commands spawn their "back to off").
    pub fn control(
        &self,
        id: &str,
        cmd: &str,
        options: &Map<String, Json>,
    ) -> Result<Json, RpcError> {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else {
            return Err(RpcError::invalid_params(format!(
                "unknown actuator id \"{id}\""
            )));
        };
        let duration = match options.get("duration") {
            None | Some(Json::Null) => None,
            v => Some(positive_ms(v, "options.duration")?),
        };
        let led = entry.led.clone();
        let result = match cmd {
            "on" => led.on().map(|_| "on"),
            "off" => led.off().map(|_| "off"),
            "blink" => {
                let interval = match options.get("interval") {
                    None | Some(Json::Null) => DEFAULT_BLINK_MS,
                    v => positive_ms(v, "options.interval")?,
                };
                led.blink(interval).map(|_| "blink")
            }
            other => {
                return Err(RpcError::invalid_params(format!(
                    "unknown command \"{other}\" for LED \"{id}\": expected on, off or blink"
                )))
            }
        };
        let state = result.map_err(|e| RpcError::server(e.to_string()))?;
        // A newer command replaces a running timed one.
        if let Some(t) = entry.timer.take() {
            t.abort();
        }
        *entry.state.lock().unwrap_or_else(|p| p.into_inner()) = state.to_string();
        if let (Some(ms), true) = (duration, cmd != "off") {
            let state = entry.state.clone();
            let id = id.to_string();
            entry.timer = Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                match led.off() {
                    Ok(()) => {
                        *state.lock().unwrap_or_else(|p| p.into_inner()) = "off".into();
                        tracing::info!(actuator_id = %id, "timed command ended: off");
                    }
                    Err(e) => {
                        tracing::warn!(actuator_id = %id, error = %e, "cannot turn actuator off after its duration")
                    }
                }
            }));
        }
        Ok(Json::String(String::new()))
    }
}

fn positive_ms(v: Option<&Json>, name: &str) -> Result<u64, RpcError> {
    let n = millis_param(v, name)?;
    if n <= 0.0 || n > 7.0 * 86_400_000.0 {
        return Err(RpcError::invalid_params(format!(
            "\"{name}\" must be a positive number of milliseconds (at most 7 days)"
        )));
    }
    Ok(n as u64)
}
