//! The configuration file: TOML schema, defaults and validation, one
//! module per section.
//!
//! Loading happens in two steps: serde reads the text into each section's
//! `Raw*` struct (unknown keys and wrong types are errors with a position),
//! then each section checks what serde cannot and resolves its defaults.
//! Both steps are pure: what they need to know about the machine (NIC
//! MACs, key files, `STATE_DIRECTORY`, directories) comes through
//! [`Host`].

mod actuator;
mod buffer;
mod error;
mod gateway;
mod host;
mod log;
mod modbus;
mod mqtt;
mod rpc;
mod sensor;
mod serial;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::small_file::{self, SmallFileError};

pub use actuator::{ActuatorConfig, ActuatorDriver, ActuatorType, OnShutdown};
pub use buffer::{BufferConfig, Fsync};
pub use error::ConfigError;
pub use gateway::{read_sysfs_root, under_sysfs_root, GatewayConfig, Secret, DEFAULT_SYSFS_ROOT};
pub use host::{
    group_by_id, group_by_name, read_secret_file, secret_file_warning, secret_mode_warning,
    FakeHost, Group, Host, KeyFileAccess, SystemHost, SERVICE_GROUP,
};
pub use modbus::{ModbusBusConfig, ModbusDataType, ModbusFunction, ModbusPoint, WordOrder};
pub use mqtt::{is_loopback_host, MqttConfig};
pub use rpc::RpcConfig;
pub use sensor::{is_event_type, SensorConfig, SensorSource, ValueType};
pub use serial::{FlowControl, LineSettings, Parity, SerialFormat, SerialPortConfig, NMEA_FIELDS};

use error::{line_col, Ctx};

pub const DEFAULT_PATH: &str = "/etc/thingplus-gw/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/thingplus-gw";
/// Thing+ itself rejects report intervals under a minute.
pub const SERVICE_MIN_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// The protocol's floor between a lost connection and the next attempt.
pub const PROTOCOL_MIN_RECONNECT: Duration = Duration::from_secs(10);
/// Largest configuration file read: a config is a few KiB; anything larger is a mistake.
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;
/// Largest `apikey_file` read: an APIKEY is a few dozen bytes.
pub const MAX_SECRET_FILE_SIZE: u64 = 64 << 10;
/// Largest PEM file read (`ca_file`, `client_cert`, `client_key`): a CA
/// bundle of the whole system trust store is about 200 KiB.
pub const MAX_PEM_FILE_SIZE: u64 = 4 << 20;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: gateway::RawGateway,
    #[serde(default)]
    mqtt: mqtt::RawMqtt,
    #[serde(default)]
    buffer: buffer::RawBuffer,
    #[serde(default, rename = "sensor")]
    sensors: Vec<sensor::RawSensor>,
    #[serde(default, rename = "actuator")]
    actuators: Vec<actuator::RawActuator>,
    #[serde(default)]
    rpc: rpc::RawRpc,
    #[serde(default)]
    log: log::RawLog,
    #[serde(default)]
    serial: BTreeMap<String, serial::RawSerialPort>,
    #[serde(default)]
    modbus: BTreeMap<String, modbus::RawModbusBus>,
    #[serde(default)]
    api: RawApi,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    url: Option<Spanned<String>>,
}

/// A validated configuration with every default resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    pub mqtt: MqttConfig,
    pub buffer: BufferConfig,
    pub sensors: Vec<SensorConfig>,
    pub actuators: Vec<ActuatorConfig>,
    pub rpc: RpcConfig,
    /// Named serial ports (`[serial.NAME]`), by name.
    pub serial: Vec<SerialPortConfig>,
    /// Named Modbus RTU buses (`[modbus.NAME]`), by name.
    pub modbus: Vec<ModbusBusConfig>,
    pub log_level: Option<String>,
    /// `[api] url`: the Thing+ REST API, for `register`; default from the broker host.
    pub api_url: Option<String>,
    /// Things worth telling the operator that do not stop the daemon.
    pub warnings: Vec<String>,
}

/// The configuration file's text: a regular file of at most
/// [`MAX_CONFIG_SIZE`] bytes, read without blocking and without reading
/// more than that (a FIFO or a device given by mistake is refused at once).
pub fn read_config_text(path: &Path) -> Result<(String, std::fs::Metadata), ConfigError> {
    small_file::read_text(path, MAX_CONFIG_SIZE).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message: match e {
            SmallFileError::Io(e) => format!("cannot read the configuration: {e}"),
            SmallFileError::NotRegular(kind) => {
                format!("cannot read the configuration: it is {kind}, not a regular file")
            }
            SmallFileError::TooLarge { size, .. } => format!(
                "the file is {size} bytes; a configuration is limited to {MAX_CONFIG_SIZE} bytes"
            ),
        },
    })
}

impl Config {
    /// Reads and validates a configuration file for this machine.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, meta) = read_config_text(path)?;
        let mut config = Config::parse(&text, path)?;
        if meta.permissions().mode() & 0o004 != 0 && gateway::text_has_apikey(&text) {
            config.warnings.push(format!(
                "{} holds the APIKEY and is readable by every user: chmod 640 it (owner root, group thingplus-gw)",
                path.display()
            ));
        }
        Ok(config)
    }

    /// Parses configuration text for this machine; `path` is only used in
    /// messages and to resolve relative paths such as `apikey_file`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, &SystemHost)
    }

    /// [`Config::parse`] for the machine `host` describes.
    pub fn parse_with(text: &str, path: &Path, host: &dyn Host) -> Result<Config, ConfigError> {
        let ctx = Ctx { path, text, host };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let position = e.span().map(|s| line_col(text, s.start));
            // An error on the APIKEY's own line may quote the value (an
            // unquoted key that looks like a number): never show it.
            let on_apikey_line = position
                .and_then(|(line, _)| text.lines().nth(line - 1))
                .is_some_and(gateway::text_has_apikey);
            ConfigError {
                path: path.to_path_buf(),
                position,
                message: if on_apikey_line {
                    "[gateway] apikey must be text in quotes: apikey = \"...\" (the value is not shown: it is the secret)".to_string()
                } else {
                    e.message().trim_end().to_string()
                },
            }
        })?;
        Config::from_raw(raw, &ctx)
    }

    fn from_raw(raw: RawConfig, ctx: &Ctx) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let gateway = gateway::gateway_from_raw(raw.gateway, ctx, &mut warnings)?;
        let mqtt = mqtt::mqtt_from_raw(raw.mqtt, ctx, &mut warnings)?;
        let buffer = buffer::buffer_from_raw(raw.buffer, &gateway.state_dir, ctx)?;
        // Serial ports and Modbus buses, before the sensors that name them.
        let serial = raw
            .serial
            .into_iter()
            .map(|(name, p)| serial::serial_from_raw(name, p, ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let modbus = raw
            .modbus
            .into_iter()
            .map(|(name, b)| modbus::modbus_from_raw(name, b, ctx))
            .collect::<Result<Vec<_>, _>>()?;
        one_owner_per_device(&serial, &modbus, ctx)?;
        let sensors = sensor::sensors_from_raw(raw.sensors, &gateway, &serial, &modbus, ctx)?;
        warnings.extend(ports_without_sensors(&serial, &modbus, &sensors));
        let actuators = actuator::actuators_from_raw(raw.actuators, &gateway, &sensors, ctx)?;
        let api_url = match raw.api.url {
            Some(u)
                if !(u.get_ref().starts_with("https://") || u.get_ref().starts_with("http://")) =>
            {
                return Err(ctx.err_at(
                    u.span(),
                    "[api] url must start with https:// (or http:// for a local test server)",
                ))
            }
            Some(u) => Some(u.into_inner()),
            None => None,
        };
        Ok(Config {
            path: ctx.path.to_path_buf(),
            gateway,
            mqtt,
            buffer,
            sensors,
            actuators,
            rpc: raw.rpc.into(),
            serial,
            modbus,
            log_level: raw.log.level,
            api_url,
            warnings,
        })
    }
}

/// A device is opened exclusively by one port or bus.
fn one_owner_per_device(
    serial: &[SerialPortConfig],
    modbus: &[ModbusBusConfig],
    ctx: &Ctx,
) -> Result<(), ConfigError> {
    let mut devices: Vec<(&Path, String)> = Vec::new();
    let tables = serial
        .iter()
        .map(|p| (p.device.as_path(), format!("[serial.{}]", p.name)))
        .chain(
            modbus
                .iter()
                .map(|b| (b.device.as_path(), format!("[modbus.{}]", b.name))),
        );
    for (dev, table) in tables {
        if let Some((_, first)) = devices.iter().find(|(d, _)| *d == dev) {
            return Err(ctx.err(format!(
                "{table} and {first} both use the device {}: a device is opened by one port or bus only (put every Modbus device of one line on one bus)",
                dev.display()
            )));
        }
        devices.push((dev, table));
    }
    Ok(())
}

/// Warnings for the ports and buses no sensor reads: they are not opened.
fn ports_without_sensors(
    serial: &[SerialPortConfig],
    modbus: &[ModbusBusConfig],
    sensors: &[SensorConfig],
) -> Vec<String> {
    let used = |name: &str, serial_port: bool| {
        sensors.iter().any(|s| {
            s.source.port_name() == Some(name)
                && matches!(s.source, SensorSource::Serial { .. }) == serial_port
        })
    };
    let serial = serial
        .iter()
        .filter(|p| !used(&p.name, true))
        .map(|p| format!("[serial.{}] has no sensor: it is not opened", p.name));
    let modbus = modbus
        .iter()
        .filter(|b| !used(&b.name, false))
        .map(|b| format!("[modbus.{}] has no sensor: it is not opened", b.name));
    serial.chain(modbus).collect()
}

/// What the unit tests of every section share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::{Config, ConfigError, FakeHost};

    pub const MIN: &str = "[gateway]\nid = \"gw1\"\napikey = \"k\"\n";

    pub const PORTS: &str = r#"
[serial.gps]
device = "/dev/ttyACM0"
format = "nmea"

[serial.ws]
device = "/dev/ttyUSB0"
baud = 19200
parity = "even"
stop_bits = 2
format = "csv"
columns = ["time", "temp", "_", "hum"]
delimiter = ";"

[serial.meter]
device = "/dev/ttyUSB1"
format = "regex"
regex = 'P=(?<power>[0-9.]+)'
request = "READ\r\n"
interval = "5s"
reply_timeout = "500ms"

[modbus.plc]
device = "/dev/ttyUSB2"
baud = 19200
timeout = "200ms"
"#;

    /// Parses `text` for a made-up machine: no NICs, key files, environment or directories.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, Path::new("/etc/t.toml"), &FakeHost::default())
    }

    /// Parses `text` for this machine (tests that make real files).
    pub fn parse_here(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/t.toml"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::*;
    use crate::thingplus::Compression;

    #[test]
    fn minimal_config_has_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.gateway.id, "gw1");
        assert_eq!(c.gateway.report_interval, Duration::from_secs(60));
        assert_eq!(c.mqtt.host, "mqtt.thingplus.net");
        assert_eq!(c.mqtt.port, 8883);
        assert!(c.mqtt.tls);
        assert_eq!(c.mqtt.reconnect_min, Duration::from_secs(10));
        assert_eq!(c.mqtt.reconnect_max, Duration::from_secs(300));
        assert_eq!(c.buffer.fsync, Fsync::Period(Duration::from_secs(1)));
        assert_eq!(c.buffer.max_size, 256 << 20);
        assert_eq!(c.mqtt.compress, Compression::Off);
        assert_eq!(c.gateway.status_validity, None);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = parse(&format!("{MIN}reprot_interval = \"60s\"\n")).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
        assert!(e.message.contains("unknown field `reprot_interval`"), "{e}");
        assert!(e.to_string().starts_with("/etc/t.toml:4:"), "{e}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let e =
            parse("[gateway]\nid = \"gw\"\napikey = \"k\"\n[mqtt]\nport = \"x\"\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(5), "{e}");
        let e = parse(&format!("{MIN}report_interval = \"sixty\"\n")).unwrap_err();
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn world_readable_config_with_apikey_warns() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, MIN).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(&cfg).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("chmod 640")),
            "{:?}",
            c.warnings
        );
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(Config::load(&cfg).unwrap().warnings.is_empty());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped reference configuration stays loadable.
    #[test]
    fn reference_config_parses() {
        let text = include_str!("../../config/thingplus-gw.toml")
            .replace(
                "apikey_file = \"/etc/thingplus-gw/apikey\"",
                "apikey = \"k\"",
            )
            .replace("id = \"auto\"", "id = \"example\"")
            .replace("# sysfs_root = ", "sysfs_root = ");
        let c = Config::parse(&text, Path::new("config/thingplus-gw.toml")).unwrap();
        assert_eq!(c.gateway.sysfs_root, Path::new("/sys"));
        assert_eq!(c.gateway.report_interval, Duration::from_secs(60));
        assert!(c.rpc.allow_restart && !c.rpc.allow_reboot);
    }

    /// The commented serial/Modbus and actuator examples are valid once uncommented.
    #[test]
    fn reference_examples_parse_when_uncommented() {
        let text = include_str!("../../config/thingplus-gw.toml");
        let start = text.find("# ---- Serial line instruments").unwrap();
        let end = text.find("[rpc]").unwrap();
        let block: String = text[start..end]
            .lines()
            .map(|l| {
                let u = l
                    .strip_prefix("# ")
                    .or_else(|| l.strip_prefix('#'))
                    .unwrap_or(l);
                // Prose stays a comment: only tables and `key = value` lines are TOML.
                let is_toml = u.starts_with('[')
                    || u.starts_with('#')
                    || u.trim().is_empty()
                    || u.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                if is_toml {
                    u.to_string()
                } else {
                    format!("# {u}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        // The actuator examples share ids with nothing; the [api] table is already there.
        let block = block.replace("[api]", "[api_commented]");
        let block = &block[..block.find("[api_commented]").unwrap_or(block.len())];
        let cfg = format!("[gateway]\nid = \"gw\"\napikey = \"k\"\n{block}");
        let c = Config::parse(&cfg, Path::new("example")).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        assert_eq!(c.sensors.len(), 3);
        assert_eq!(c.actuators.len(), 4);
    }
}
