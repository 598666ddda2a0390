//! `[[actuator]]`: LEDs, power switches (a GPIO line or a value file) and
//! programs the platform can drive.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::gateway_id;
use crate::units::HumanDuration;

use super::error::Ctx;
use super::gateway::{no_dotdot_in_sys, GatewayConfig};
use super::sensor::SensorConfig;
use super::ConfigError;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawActuator {
    id: Spanned<String>,
    #[serde(rename = "type")]
    actuator_type: Spanned<String>,
    path: Option<Spanned<PathBuf>>,
    gpio_chip: Option<PathBuf>,
    line: Option<u32>,
    active_low: Option<bool>,
    command: Option<Spanned<Vec<String>>>,
    timeout: Option<HumanDuration>,
    on_shutdown: Option<Spanned<String>>,
    thingplus_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActuatorType {
    /// A sysfs LED directory (`brightness`, `trigger`, `max_brightness`).
    Led,
    /// An on/off output: a GPIO line or a value file.
    PowerSwitch,
    /// A program run with the command and options as arguments.
    Exec,
}

/// How an actuator is driven.
#[derive(Debug, Clone, PartialEq)]
pub enum ActuatorDriver {
    Led {
        path: PathBuf,
    },
    /// A file taking "1"/"0" (a sysfs GPIO `value`, a relay driver's attribute).
    ValueFile {
        path: PathBuf,
        active_low: bool,
    },
    /// A line of a GPIO character device (`/dev/gpiochipN`).
    GpioLine {
        chip: PathBuf,
        line: u32,
        active_low: bool,
    },
    /// `command... <cmd> <options as JSON>`, no shell, killed after `timeout`.
    Exec {
        command: Vec<String>,
        timeout: Duration,
    },
}

/// The state an actuator is left in when the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    Leave,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActuatorConfig {
    pub id: String,
    pub actuator_type: ActuatorType,
    pub driver: ActuatorDriver,
    pub on_shutdown: OnShutdown,
    /// The Thing+ type used by `register` ("led", "powerSwitch", ...).
    pub thingplus_type: String,
}

/// The actuators; their ids must differ from each other and from every sensor's.
pub(super) fn actuators_from_raw(
    raw: Vec<RawActuator>,
    gateway: &GatewayConfig,
    sensors: &[SensorConfig],
    ctx: &Ctx,
) -> Result<Vec<ActuatorConfig>, ConfigError> {
    let mut actuators = Vec::new();
    let mut seen = HashSet::new();
    for a in raw {
        let aid = a.id.get_ref().replace("{gateway_id}", &gateway.id);
        if !gateway_id::is_valid_id(&aid) {
            return Err(ctx.err_at(
                a.id.span(),
                format!("invalid actuator id \"{aid}\": use only letters, digits and - _ . ~ (and {{gateway_id}})"),
            ));
        }
        if !seen.insert(aid.clone()) || sensors.iter().any(|s| s.id == aid) {
            return Err(ctx.err_at(a.id.span(), format!("duplicate id \"{aid}\"")));
        }
        let (actuator_type, driver) = driver_of(&a, &aid, gateway, ctx)?;
        let on_shutdown = ctx.choose_or(
            &a.on_shutdown,
            OnShutdown::Leave,
            &[("leave", OnShutdown::Leave), ("off", OnShutdown::Off)],
            "invalid on_shutdown",
            "expected \"leave\" or \"off\"",
        )?;
        let thingplus_type = a.thingplus_type.clone().unwrap_or_else(|| {
            match actuator_type {
                ActuatorType::Led => "led",
                ActuatorType::PowerSwitch | ActuatorType::Exec => "powerSwitch",
            }
            .to_string()
        });
        actuators.push(ActuatorConfig {
            id: aid,
            actuator_type,
            driver,
            on_shutdown,
            thingplus_type,
        });
    }
    Ok(actuators)
}

fn driver_of(
    a: &RawActuator,
    aid: &str,
    gateway: &GatewayConfig,
    ctx: &Ctx,
) -> Result<(ActuatorType, ActuatorDriver), ConfigError> {
    // Only LEDs and power switches have a path to check.
    let path = || {
        a.path
            .as_ref()
            .map(|p| no_dotdot_in_sys(p, ctx))
            .transpose()
    };
    let active_low = a.active_low.unwrap_or(false);
    match a.actuator_type.get_ref().as_str() {
        "led" => {
            let Some(path) = path()? else {
                return Err(ctx.err_at(
                    a.id.span(),
                    format!("actuator \"{aid}\" needs path = \"...\" (a sysfs LED directory such as /sys/class/leds/led0)"),
                ));
            };
            let path = gateway.resolve_sysfs(&path);
            Ok((ActuatorType::Led, ActuatorDriver::Led { path }))
        }
        "powerSwitch" => match (&a.gpio_chip, a.line, path()?) {
            (Some(chip), Some(line), None) => Ok((
                ActuatorType::PowerSwitch,
                ActuatorDriver::GpioLine {
                    chip: chip.clone(),
                    line,
                    active_low,
                },
            )),
            (None, None, Some(path)) => Ok((
                ActuatorType::PowerSwitch,
                ActuatorDriver::ValueFile {
                    path: gateway.resolve_sysfs(&path),
                    active_low,
                },
            )),
            _ => Err(ctx.err_at(
                a.id.span(),
                format!("powerSwitch \"{aid}\" needs either gpio_chip = \"/dev/gpiochip0\" with line = N, or path = \"...\" (a value file), not both"),
            )),
        },
        "exec" => {
            let Some(command) = &a.command else {
                return Err(ctx.err_at(
                    a.id.span(),
                    format!("exec actuator \"{aid}\" needs command = [\"/path/to/program\", \"arg\", ...]"),
                ));
            };
            if command.get_ref().is_empty() || !Path::new(&command.get_ref()[0]).is_absolute() {
                return Err(ctx.err_at(
                    command.span(),
                    "command must start with the absolute path of a program (it runs without a shell)",
                ));
            }
            Ok((
                ActuatorType::Exec,
                ActuatorDriver::Exec {
                    command: command.get_ref().clone(),
                    timeout: a.timeout.map_or(Duration::from_secs(30), |t| t.0),
                },
            ))
        }
        other => Err(ctx.err_at(
            a.actuator_type.span(),
            format!("unknown actuator type \"{other}\": expected \"led\", \"powerSwitch\" or \"exec\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::*;

    fn actuator(keys: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "{MIN}[[sensor]]\nid = \"s\"\ntype = \"number\"\npath = \"/s\"\n[[actuator]]\n{keys}"
        ))
    }

    #[test]
    fn drivers_types_and_defaults() {
        let c = actuator(
            "id = \"{gateway_id}-x\"\ntype = \"exec\"\ncommand = [\"/usr/bin/relay\", \"-v\"]\non_shutdown = \"off\"\n",
        )
        .unwrap();
        let a = &c.actuators[0];
        assert_eq!(a.id, "gw1-x");
        assert_eq!(a.actuator_type, ActuatorType::Exec);
        assert_eq!(
            a.driver,
            ActuatorDriver::Exec {
                command: vec!["/usr/bin/relay".into(), "-v".into()],
                timeout: Duration::from_secs(30)
            }
        );
        assert_eq!(a.on_shutdown, OnShutdown::Off);
        assert_eq!(a.thingplus_type, "powerSwitch");
        let c = actuator(
            "id = \"l\"\ntype = \"led\"\npath = \"/sys/class/leds/a\"\nthingplus_type = \"x\"\n",
        )
        .unwrap();
        assert_eq!(c.actuators[0].on_shutdown, OnShutdown::Leave);
        assert_eq!(c.actuators[0].thingplus_type, "x");
        assert_eq!(
            c.actuators[0].driver,
            ActuatorDriver::Led {
                path: PathBuf::from("/sys/class/leds/a")
            }
        );
    }

    #[test]
    fn actuator_errors_keep_their_wording_and_place() {
        let line = MIN.lines().count() + 6;
        for (keys, message, at) in [
            ("id = \"s\"\ntype = \"led\"\npath = \"/l\"\n", "duplicate id \"s\"", (line, 6)),
            ("id = \"a b\"\ntype = \"led\"\n", "invalid actuator id \"a b\"", (line, 6)),
            ("id = \"a\"\ntype = \"lamp\"\n", "unknown actuator type \"lamp\": expected \"led\", \"powerSwitch\" or \"exec\"", (line + 1, 8)),
            ("id = \"a\"\ntype = \"led\"\n", "actuator \"a\" needs path = \"...\" (a sysfs LED directory such as /sys/class/leds/led0)", (line, 6)),
            ("id = \"a\"\ntype = \"powerSwitch\"\npath = \"/v\"\ngpio_chip = \"/dev/gpiochip0\"\nline = 1\n", "powerSwitch \"a\" needs either gpio_chip", (line, 6)),
            ("id = \"a\"\ntype = \"exec\"\n", "exec actuator \"a\" needs command", (line, 6)),
            ("id = \"a\"\ntype = \"exec\"\ncommand = [\"relay\"]\n", "command must start with the absolute path", (line + 2, 11)),
            ("id = \"a\"\ntype = \"led\"\npath = \"/l\"\non_shutdown = \"on\"\n", "invalid on_shutdown \"on\": expected \"leave\" or \"off\"", (line + 3, 15)),
        ] {
            let e = actuator(keys).unwrap_err();
            assert!(e.message.starts_with(message), "{keys}: {e}");
            assert_eq!(e.position, Some(at), "{keys}: {e}");
        }
    }
}
