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
    led: Led,
    /// The pending "back to off" of a timed command; a newer command cancels it.
    timer: Option<JoinHandle<()>>,
    state: Arc<Mutex<String>>,
}

/// Shared, live states of the actuators.
#[derive(Clone, Default)]
pub struct ActuatorStates(Vec<(String, Arc<Mutex<String>>)>);

impl ActuatorStates {
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect()
    }
}

/// Every configured actuator, by id.
pub struct Actuators {
    entries: HashMap<String, Entry>,
}

impl Actuators {
    pub fn new(configs: &[ActuatorConfig]) -> Self {
        let mut entries = HashMap::new();
        for c in configs {
            match c.actuator_type {
                ActuatorType::Led => {
                    let led = Led::new(&c.path);
                    if let Err(e) = led.check() {
                        tracing::warn!(actuator_id = %c.id, error = %e, "actuator may not work");
                    }
                    entries.insert(
                        c.id.clone(),
                        Entry {
                            led,
                            timer: None,
                            state: Arc::new(Mutex::new("unknown".into())),
                        },
                    );
                }
            }
        }
        Actuators { entries }
    }

    /// A view of each actuator's state ("on", "off", "blink", "unknown")
    /// that stays current: for the status report.
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
    /// (timed commands spawn their "back to off").
    pub fn control(
        &mut self,
        id: &str,
        cmd: &str,
        options: &Map<String, Json>,
    ) -> Result<Json, RpcError> {
        let Some(entry) = self.entries.get_mut(id) else {
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
