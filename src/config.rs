//! The configuration file: TOML schema, defaults and validation.
//!
//! Loading happens in two steps: serde reads the text into `Raw*` structs
//! (unknown keys and wrong types are errors with a position), then
//! [`Config::from_raw`] checks what serde cannot and resolves defaults.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::gateway_id;
use crate::thingplus::Compression;
use crate::units::{format_duration, ByteSize, HumanDuration};

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

/// A configuration error, with the place in the file when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The APIKEY: never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

// ---------------------------------------------------------------- raw schema

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    buffer: RawBuffer,
    #[serde(default, rename = "sensor")]
    sensors: Vec<RawSensor>,
    #[serde(default, rename = "actuator")]
    actuators: Vec<RawActuator>,
    #[serde(default)]
    rpc: RawRpc,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    serial: BTreeMap<String, RawSerialPort>,
    #[serde(default)]
    modbus: BTreeMap<String, RawModbusBus>,
    #[serde(default)]
    api: RawApi,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    url: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Option<Spanned<String>>,
    interface: Option<String>,
    apikey: Option<String>,
    apikey_file: Option<Spanned<PathBuf>>,
    report_interval: Option<Spanned<HumanDuration>>,
    status_validity: Option<Spanned<HumanDuration>>,
    state_dir: Option<PathBuf>,
    sysfs_root: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    host: Option<String>,
    service: Option<Spanned<String>>,
    port: Option<u16>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    keep_alive: Option<Spanned<HumanDuration>>,
    reconnect_min: Option<Spanned<HumanDuration>>,
    reconnect_max: Option<Spanned<HumanDuration>>,
    connect_timeout: Option<HumanDuration>,
    ack_timeout: Option<HumanDuration>,
    max_message_size: Option<Spanned<ByteSize>>,
    max_inflight: Option<Spanned<u16>>,
    shutdown_timeout: Option<HumanDuration>,
    compress: Option<Spanned<String>>,
    compress_min_bytes: Option<Spanned<ByteSize>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    dir: Option<PathBuf>,
    max_size: Option<ByteSize>,
    fsync: Option<Spanned<String>>,
    min_free: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSensor {
    id: Spanned<String>,
    #[serde(rename = "type")]
    sensor_type: String,
    path: Option<Spanned<PathBuf>>,
    regex: Option<Spanned<String>>,
    scale: Option<f64>,
    offset: Option<f64>,
    interval: Option<Spanned<HumanDuration>>,
    event: Option<bool>,
    value_type: Option<Spanned<String>>,
    // Serial sensors.
    serial: Option<Spanned<String>>,
    field: Option<Spanned<String>>,
    // Modbus sensors.
    modbus: Option<Spanned<String>>,
    unit: Option<Spanned<u8>>,
    function: Option<Spanned<String>>,
    address: Option<Spanned<u16>>,
    data_type: Option<Spanned<String>>,
    word_order: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSerialPort {
    device: PathBuf,
    baud: Option<Spanned<u32>>,
    data_bits: Option<Spanned<u8>>,
    parity: Option<Spanned<String>>,
    stop_bits: Option<Spanned<u8>>,
    flow_control: Option<Spanned<String>>,
    format: Spanned<String>,
    columns: Option<Spanned<Vec<String>>>,
    delimiter: Option<Spanned<String>>,
    regex: Option<Spanned<String>>,
    request: Option<Spanned<String>>,
    interval: Option<Spanned<HumanDuration>>,
    reply_timeout: Option<Spanned<HumanDuration>>,
    max_line: Option<Spanned<ByteSize>>,
    reopen_min: Option<Spanned<HumanDuration>>,
    reopen_max: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawModbusBus {
    device: PathBuf,
    baud: Option<Spanned<u32>>,
    data_bits: Option<Spanned<u8>>,
    parity: Option<Spanned<String>>,
    stop_bits: Option<Spanned<u8>>,
    flow_control: Option<Spanned<String>>,
    timeout: Option<Spanned<HumanDuration>>,
    batch: Option<bool>,
    max_gap: Option<Spanned<u16>>,
    reopen_min: Option<Spanned<HumanDuration>>,
    reopen_max: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawActuator {
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

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawRpc {
    allow_reboot: Option<bool>,
    allow_poweroff: Option<bool>,
    allow_restart: Option<bool>,
    sw_update_command: Option<Vec<String>>,
    reboot_command: Option<Vec<String>>,
    poweroff_command: Option<Vec<String>>,
    set_system_clock: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
}

// ---------------------------------------------------------------- resolved

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

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub id: String,
    /// Where the id came from, for `check` and logs ("config", "MAC of eth0").
    pub id_source: String,
    pub apikey: Secret,
    pub report_interval: Duration,
    /// Status valid duration; `None`: 2 x the current report interval.
    pub status_validity: Option<Duration>,
    pub state_dir: PathBuf,
    /// Where sysfs is: file sensors and LED/value-file actuators whose paths
    /// start with `/sys/` are read and written under this directory instead
    /// (tests, containers with a bind-mounted host /sys). Default `/sys`.
    pub sysfs_root: PathBuf,
}

impl GatewayConfig {
    /// `path` as the daemon opens it: under `sysfs_root` when it is a `/sys/...` path.
    pub fn resolve_sysfs(&self, path: &Path) -> PathBuf {
        under_sysfs_root(&self.sysfs_root, path)
    }
}

/// Where sysfs is by default.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";

/// `path` with a leading `/sys` replaced by `root`; other paths unchanged.
pub fn under_sysfs_root(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix(DEFAULT_SYSFS_ROOT) {
        Ok(rest) if root != Path::new(DEFAULT_SYSFS_ROOT) => {
            if rest.as_os_str().is_empty() {
                root.to_path_buf()
            } else {
                root.join(rest)
            }
        }
        _ => path.to_path_buf(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `None`: 2 x report interval, within 60..600 s.
    pub keep_alive: Option<Duration>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    /// A publish not acknowledged within this time means the link is dead.
    pub ack_timeout: Duration,
    pub max_message_size: usize,
    /// Value messages in flight at once (kept well under rumqttc's own limit).
    pub max_inflight: u16,
    /// How long shutdown may spend delivering what is pending.
    pub shutdown_timeout: Duration,
    /// gzip of large values and status payloads (`max_message_size`
    /// bounds them before compression).
    pub compress: Compression,
}

impl MqttConfig {
    /// Keep-alive: configured, or 2 x report interval clamped to 60..600 s.
    pub fn keep_alive_for(&self, report_interval: Duration) -> Duration {
        self.keep_alive.unwrap_or_else(|| {
            (report_interval * 2).clamp(Duration::from_secs(60), Duration::from_secs(600))
        })
    }
}

/// How often appended readings are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Period(Duration),
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    pub dir: PathBuf,
    pub max_size: u64,
    pub fsync: Fsync,
    /// Free space kept on the buffer's filesystem, in percent.
    pub min_free_percent: f64,
}

/// How a raw reading becomes a Thing+ value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// A number, `raw * scale + offset`.
    Number,
    /// A number rounded to an integer.
    Integer,
    /// The text as read (trimmed).
    Text,
}

#[derive(Debug, Clone)]
pub enum SensorSource {
    /// A text file (sysfs or any): read whole, optional regex whose first group is the raw value.
    File { path: PathBuf, regex: Option<Regex> },
    /// A field of the records a named serial port (`[serial.NAME]`) produces.
    Serial { port: String, field: String },
    /// A point read from a device on a named Modbus RTU bus (`[modbus.NAME]`).
    Modbus(ModbusPoint),
}

/// Serial line settings shared by line ports and Modbus buses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud: u32,
    /// 5..=8
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

impl fmt::Display for LineSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(f, "{} {}{}{}", self.baud, self.data_bits, p, self.stop_bits)?;
        match self.flow_control {
            FlowControl::None => Ok(()),
            FlowControl::Software => f.write_str(" xon/xoff"),
            FlowControl::Hardware => f.write_str(" rts/cts"),
        }
    }
}

/// How the lines of a serial port turn into fields.
#[derive(Debug, Clone)]
pub enum SerialFormat {
    /// NMEA 0183 GGA and RMC sentences.
    Nmea,
    /// Delimited values, one record per line; `columns` name the cells.
    Csv {
        columns: Vec<String>,
        delimiter: char,
    },
    /// One JSON object per line; fields by key or dotted path.
    Json,
    /// A regex with named groups; each group is a field.
    Regex(Regex),
}

impl PartialEq for SerialFormat {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SerialFormat::Nmea, SerialFormat::Nmea) | (SerialFormat::Json, SerialFormat::Json) => {
                true
            }
            (
                SerialFormat::Csv {
                    columns: a,
                    delimiter: da,
                },
                SerialFormat::Csv {
                    columns: b,
                    delimiter: db,
                },
            ) => a == b && da == db,
            (SerialFormat::Regex(a), SerialFormat::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl SerialFormat {
    pub fn name(&self) -> &'static str {
        match self {
            SerialFormat::Nmea => "nmea",
            SerialFormat::Csv { .. } => "csv",
            SerialFormat::Json => "json",
            SerialFormat::Regex(_) => "regex",
        }
    }
}

/// The fields an NMEA port produces.
pub const NMEA_FIELDS: &[&str] = &[
    "location",
    "altitude",
    "speed",
    "course",
    "satellites",
    "fix",
    "fix_quality",
    "hdop",
];

/// A named serial port that prints lines (`[serial.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SerialPortConfig {
    pub name: String,
    pub device: PathBuf,
    pub line: LineSettings,
    pub format: SerialFormat,
    /// Written every `interval` for instruments that answer only when asked.
    pub request: Option<Vec<u8>>,
    /// Request period; `None`: the report interval. Only with `request`.
    pub interval: Option<Duration>,
    pub reply_timeout: Duration,
    /// Longest line kept; longer lines are dropped whole.
    pub max_line: usize,
    pub reopen_min: Duration,
    pub reopen_max: Duration,
}

/// A named Modbus RTU bus (`[modbus.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusBusConfig {
    pub name: String,
    pub device: PathBuf,
    pub line: LineSettings,
    /// Longest wait for one reply.
    pub timeout: Duration,
    /// Read neighbouring points of one device in one request.
    pub batch: bool,
    /// Unused registers (or coils) a batched read may span between two points.
    pub max_gap: u16,
    pub reopen_min: Duration,
    pub reopen_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModbusFunction {
    /// Read coils (0x01).
    Coil,
    /// Read discrete inputs (0x02).
    Discrete,
    /// Read holding registers (0x03).
    Holding,
    /// Read input registers (0x04).
    Input,
}

impl ModbusFunction {
    pub fn name(self) -> &'static str {
        match self {
            ModbusFunction::Coil => "coil",
            ModbusFunction::Discrete => "discrete",
            ModbusFunction::Holding => "holding",
            ModbusFunction::Input => "input",
        }
    }
    /// Whether the function reads bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, ModbusFunction::Coil | ModbusFunction::Discrete)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModbusDataType {
    /// A coil or discrete input: 0 or 1.
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl ModbusDataType {
    pub fn name(self) -> &'static str {
        match self {
            ModbusDataType::Bool => "bool",
            ModbusDataType::U16 => "u16",
            ModbusDataType::I16 => "i16",
            ModbusDataType::U32 => "u32",
            ModbusDataType::I32 => "i32",
            ModbusDataType::F32 => "f32",
        }
    }
    /// Registers (or bits) the type occupies.
    pub fn width(self) -> u16 {
        match self {
            ModbusDataType::Bool | ModbusDataType::U16 | ModbusDataType::I16 => 1,
            ModbusDataType::U32 | ModbusDataType::I32 | ModbusDataType::F32 => 2,
        }
    }
}

/// Order of the two registers of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    /// High word first (at the lower address): "ABCD".
    Big,
    /// Low word first: "CDAB".
    Little,
}

/// One value read from a Modbus device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusPoint {
    /// The `[modbus.NAME]` bus.
    pub bus: String,
    pub unit: u8,
    pub function: ModbusFunction,
    pub address: u16,
    pub data_type: ModbusDataType,
    pub word_order: WordOrder,
}

impl SensorSource {
    /// The serial port or Modbus bus a sensor reads from, if any.
    pub fn port_name(&self) -> Option<&str> {
        match self {
            SensorSource::File { .. } => None,
            SensorSource::Serial { port, .. } => Some(port),
            SensorSource::Modbus(p) => Some(&p.bus),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SensorConfig {
    pub id: String,
    pub sensor_type: String,
    pub source: SensorSource,
    pub value_type: ValueType,
    pub scale: f64,
    pub offset: f64,
    /// Sampling interval; `None`: follow the report interval.
    pub interval: Option<Duration>,
    /// Sent as soon as the value changes instead of each report.
    pub event: bool,
}

impl PartialEq for SensorConfig {
    fn eq(&self, other: &Self) -> bool {
        let src_eq = match (&self.source, &other.source) {
            (
                SensorSource::File { path: a, regex: ra },
                SensorSource::File { path: b, regex: rb },
            ) => a == b && ra.as_ref().map(Regex::as_str) == rb.as_ref().map(Regex::as_str),
            (
                SensorSource::Serial { port: a, field: fa },
                SensorSource::Serial { port: b, field: fb },
            ) => a == b && fa == fb,
            (SensorSource::Modbus(a), SensorSource::Modbus(b)) => a == b,
            _ => false,
        };
        src_eq
            && self.id == other.id
            && self.sensor_type == other.sensor_type
            && self.value_type == other.value_type
            && self.scale == other.scale
            && self.offset == other.offset
            && self.interval == other.interval
            && self.event == other.event
    }
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

#[derive(Debug, Clone, PartialEq)]
pub struct RpcConfig {
    pub allow_reboot: bool,
    pub allow_poweroff: bool,
    pub allow_restart: bool,
    pub sw_update_command: Option<Vec<String>>,
    /// What `reboot` runs once answered; default `systemctl reboot`.
    pub reboot_command: Vec<String>,
    /// What `poweroff` runs once answered; default `systemctl poweroff`.
    pub poweroff_command: Vec<String>,
    pub set_system_clock: bool,
}

/// Types whose values are sent on change rather than each report.
pub fn is_event_type(sensor_type: &str) -> bool {
    matches!(
        sensor_type,
        "onoff" | "motion" | "door" | "button" | "switch" | "vibration" | "fire" | "leak"
    )
}

fn default_value_type(sensor_type: &str) -> ValueType {
    match sensor_type {
        "string" | "text" => ValueType::Text,
        "humidity" | "light" | "onoff" | "motion" | "door" | "button" | "switch" | "count"
        | "vibration" | "fire" | "leak" => ValueType::Integer,
        _ => ValueType::Number,
    }
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            message: message.into(),
        }
    }
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            position: None,
            message: message.into(),
        }
    }
}

/// A `/sys/...` path, checked: with `..` in it, it would mean something
/// else under another `sysfs_root` (`/sys/../etc/x` is `/etc/x`, but
/// `<root>/../etc/x` is next to the root), so it is refused.
fn no_dotdot_in_sys(p: &Spanned<PathBuf>, ctx: &Ctx) -> Result<PathBuf, ConfigError> {
    let path = p.get_ref();
    if path.starts_with(DEFAULT_SYSFS_ROOT)
        && path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(ctx.err_at(
            p.span(),
            format!(
                "{}: a /sys/ path must not contain \"..\" (write the path it leads to)",
                path.display()
            ),
        ));
    }
    Ok(path.clone())
}

/// `p` if it is a directory, else why it cannot be the sysfs root.
fn check_sysfs_root(p: PathBuf) -> Result<PathBuf, String> {
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(format!("sysfs_root {} is not a directory: it must be a sysfs tree (such as /sys, or a copy of one)", p.display())),
        Err(e) => Err(format!("sysfs_root {}: {e} (it must be an existing sysfs tree, such as /sys)", p.display())),
    }
}

/// Only `[gateway] sysfs_root` of the configuration file at `path`
/// (`None` when not set), read line by line: the rest of the file may be
/// unfinished or invalid, and nothing else it names (such as `apikey_file`)
/// is read. For `discover --config`, which runs while the configuration is
/// being written. A set root must be an existing directory, as for `load`.
pub fn read_sysfs_root(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
    let err = |position, message: String| ConfigError {
        path: path.to_path_buf(),
        position,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(None, format!("cannot read the configuration: {e}")))?;
    let mut in_gateway = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let t = line.trim();
        if t.starts_with('[') {
            // `[gateway]`, possibly followed by a comment.
            in_gateway = t
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .is_some_and(|(name, rest)| {
                    name.trim() == "gateway"
                        && matches!(rest.trim().chars().next(), None | Some('#'))
                });
            continue;
        }
        if !in_gateway {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "sysfs_root" {
            continue;
        }
        let value_at = start + key.len() + 1 + (value.len() - value.trim_start().len());
        let position = Some(line_col(&text, value_at));
        let root = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| match t.remove("v") {
                Some(toml::Value::String(s)) => Some(s),
                _ => None,
            })
            .ok_or_else(|| err(position, "sysfs_root must be a string (a directory)".into()))?;
        return check_sysfs_root(resolve_relative(path, Path::new(&root)))
            .map(Some)
            .map_err(|m| err(position, m));
    }
    Ok(None)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let io_err = |what: &str, e: std::io::Error| ConfigError {
            path: path.to_path_buf(),
            position: None,
            message: format!("cannot {what}: {e}"),
        };
        let meta = std::fs::metadata(path).map_err(|e| io_err("read the configuration", e))?;
        if meta.len() > MAX_CONFIG_SIZE {
            return Err(ConfigError {
                path: path.to_path_buf(),
                position: None,
                message: format!(
                    "the file is {} bytes; a configuration is limited to {} bytes",
                    meta.len(),
                    MAX_CONFIG_SIZE
                ),
            });
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| io_err("read the configuration", e))?;
        let mut config = Config::parse(&text, path)?;
        if meta.permissions().mode() & 0o004 != 0 && text_has_apikey(&text) {
            config.warnings.push(format!(
                "{} holds the APIKEY and is readable by every user: chmod 640 it (owner root, group thingplus-gw)",
                path.display()
            ));
        }
        Ok(config)
    }

    /// Parses configuration text; `path` is only used in messages and to
    /// resolve `apikey_file`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let position = e.span().map(|s| line_col(text, s.start));
            // An error on the APIKEY's own line may quote the value (an
            // unquoted key that looks like a number): never show it.
            let on_apikey_line = position
                .and_then(|(line, _)| text.lines().nth(line - 1))
                .is_some_and(text_has_apikey);
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
        let g = raw.gateway;

        // Gateway id.
        let (id, id_source) = match &g.id {
            Some(id) if id.get_ref() != "auto" => {
                if !gateway_id::is_valid_id(id.get_ref()) {
                    return Err(ctx.err_at(
                        id.span(),
                        format!(
                            "invalid gateway id \"{}\": use only letters, digits and - _ . ~",
                            id.get_ref()
                        ),
                    ));
                }
                (id.get_ref().clone(), "config".to_string())
            }
            _ => {
                let id = gateway_id::auto_id(g.interface.as_deref()).map_err(|m| match &g.id {
                    Some(s) => ctx.err_at(s.span(), format!("id = \"auto\": {m}")),
                    None => ctx.err(format!("[gateway] id is not set, so it is \"auto\": {m}")),
                })?;
                let src = match &g.interface {
                    Some(i) => format!("MAC of {i}"),
                    None => "MAC of the first hardware NIC".to_string(),
                };
                (id, src)
            }
        };

        // APIKEY, inline or from a file.
        let apikey = match (g.apikey, &g.apikey_file) {
            (Some(_), Some(f)) => {
                return Err(ctx.err_at(
                    f.span(),
                    "set either apikey or apikey_file in [gateway], not both",
                ))
            }
            (Some(k), None) => k,
            (None, Some(f)) => {
                let p = resolve_relative(ctx.path, f.get_ref());
                let key = read_secret_file(&p)
                    .map_err(|e| ctx.err_at(f.span(), format!("apikey_file {}: {e}", p.display())))?;
                warnings.extend(secret_file_warning(&p, "apikey_file"));
                key.trim().to_string()
            }
            (None, None) => {
                return Err(ctx.err(
                    "[gateway] needs the APIKEY the Thing+ portal issued for this gateway: set apikey = \"...\" or apikey_file = \"/etc/thingplus-gw/apikey\"",
                ))
            }
        };
        if apikey.is_empty() {
            return Err(ctx.err("[gateway] the APIKEY is empty"));
        }

        let report_interval = match &g.report_interval {
            Some(ri) => {
                let d = ri.get_ref().0;
                if d.is_zero() {
                    return Err(ctx.err_at(
                        ri.span(),
                        "report_interval must be greater than zero, such as \"60s\"",
                    ));
                }
                d
            }
            None => SERVICE_MIN_REPORT_INTERVAL,
        };
        if report_interval < SERVICE_MIN_REPORT_INTERVAL {
            warnings.push(format!(
                "report_interval is {}: the Thing+ service requires at least 60s (fine for local brokers and tests)",
                format_duration(report_interval)
            ));
        }
        let status_validity = match &g.status_validity {
            Some(v) if v.get_ref().0.is_zero() => {
                return Err(ctx.err_at(v.span(), "status_validity must be greater than zero"))
            }
            Some(v) => Some(v.get_ref().0),
            None => None,
        };
        let state_dir = g
            .state_dir
            .or_else(|| {
                std::env::var_os("STATE_DIRECTORY").map(|s| {
                    // systemd may pass several colon-separated directories; the first is ours.
                    let s = s.to_string_lossy().into_owned();
                    PathBuf::from(s.split(':').next().unwrap_or_default())
                })
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));

        let sysfs_root = match &g.sysfs_root {
            None => PathBuf::from(DEFAULT_SYSFS_ROOT),
            Some(r) => check_sysfs_root(resolve_relative(ctx.path, r.get_ref()))
                .map_err(|m| ctx.err_at(r.span(), m))?,
        };

        let gateway = GatewayConfig {
            id: id.clone(),
            id_source,
            apikey: Secret::new(apikey),
            report_interval,
            status_validity,
            state_dir: state_dir.clone(),
            sysfs_root,
        };

        let mqtt = mqtt_from_raw(raw.mqtt, ctx, &mut warnings)?;
        let buffer = buffer_from_raw(raw.buffer, &state_dir, ctx)?;

        // Serial ports and Modbus buses, before the sensors that name them.
        let mut serial = Vec::new();
        for (name, p) in raw.serial {
            serial.push(serial_from_raw(name, p, ctx)?);
        }
        let mut modbus = Vec::new();
        for (name, b) in raw.modbus {
            modbus.push(modbus_from_raw(name, b, ctx)?);
        }
        // A device is opened exclusively by one port or bus.
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

        // Sensors.
        let mut seen = HashSet::new();
        let mut sensors = Vec::new();
        for s in raw.sensors {
            let sid = s.id.get_ref().replace("{gateway_id}", &id);
            if !gateway_id::is_valid_id(&sid) {
                return Err(ctx.err_at(
                    s.id.span(),
                    format!("invalid sensor id \"{sid}\": use only letters, digits and - _ . ~ (and {{gateway_id}})"),
                ));
            }
            if !seen.insert(sid.clone()) {
                return Err(ctx.err_at(s.id.span(), format!("duplicate sensor id \"{sid}\"")));
            }
            let source = match sensor_source(&s, &sid, &serial, &modbus, ctx)? {
                SensorSource::File { path, regex } => SensorSource::File {
                    path: gateway.resolve_sysfs(&path),
                    regex,
                },
                other => other,
            };
            let value_type = match &s.value_type {
                None => default_value_type(&s.sensor_type),
                Some(v) => match v.get_ref().as_str() {
                    "number" => ValueType::Number,
                    "integer" => ValueType::Integer,
                    "string" => ValueType::Text,
                    other => {
                        return Err(ctx.err_at(
                            v.span(),
                            format!("invalid value_type \"{other}\": expected \"number\", \"integer\" or \"string\""),
                        ))
                    }
                },
            };
            let interval = match &s.interval {
                Some(i) if i.get_ref().0.is_zero() => {
                    return Err(ctx.err_at(i.span(), "interval must be greater than zero"))
                }
                Some(i) => Some(i.get_ref().0),
                None => None,
            };
            if let (Some(i), SensorSource::Serial { port, .. }) = (&s.interval, &source) {
                if serial
                    .iter()
                    .any(|p| &p.name == port && p.request.is_some())
                {
                    return Err(ctx.err_at(
                        i.span(),
                        format!("serial port \"{port}\" is polled with a request: its sensors are read at each reply; set interval in [serial.{port}] instead"),
                    ));
                }
            }
            let event = s.event.unwrap_or_else(|| is_event_type(&s.sensor_type));
            // Event sensors must notice a change quickly even with a long report interval.
            // Serial lines push their changes as they come, so only polled sources need this.
            let polled_event = event && !matches!(source, SensorSource::Serial { .. });
            sensors.push(SensorConfig {
                id: sid,
                sensor_type: s.sensor_type,
                source,
                value_type,
                scale: s.scale.unwrap_or(1.0),
                offset: s.offset.unwrap_or(0.0),
                interval: interval.or(if polled_event {
                    Some(Duration::from_secs(1))
                } else {
                    None
                }),
                event,
            });
        }
        for p in &serial {
            if !sensors.iter().any(|s| {
                s.source.port_name() == Some(&p.name)
                    && matches!(s.source, SensorSource::Serial { .. })
            }) {
                warnings.push(format!(
                    "[serial.{}] has no sensor: it is not opened",
                    p.name
                ));
            }
        }
        for b in &modbus {
            if !sensors.iter().any(|s| {
                s.source.port_name() == Some(&b.name) && matches!(s.source, SensorSource::Modbus(_))
            }) {
                warnings.push(format!(
                    "[modbus.{}] has no sensor: it is not opened",
                    b.name
                ));
            }
        }

        let mut actuators = Vec::new();
        let mut seen_act = HashSet::new();
        for a in raw.actuators {
            let aid = a.id.get_ref().replace("{gateway_id}", &id);
            if !gateway_id::is_valid_id(&aid) {
                return Err(ctx.err_at(
                    a.id.span(),
                    format!("invalid actuator id \"{aid}\": use only letters, digits and - _ . ~"),
                ));
            }
            if !seen_act.insert(aid.clone()) || seen.contains(&aid) {
                return Err(ctx.err_at(a.id.span(), format!("duplicate id \"{aid}\"")));
            }
            let need_path = |what: &str| {
                a.path
                    .as_ref()
                    .map(|p| no_dotdot_in_sys(p, ctx))
                    .transpose()?
                    .ok_or_else(|| {
                        ctx.err_at(
                            a.id.span(),
                            format!("actuator \"{aid}\" needs path = \"...\" ({what})"),
                        )
                    })
            };
            let active_low = a.active_low.unwrap_or(false);
            let (actuator_type, driver) = match a.actuator_type.get_ref().as_str() {
                "led" => (
                    ActuatorType::Led,
                    ActuatorDriver::Led {
                        path: gateway.resolve_sysfs(&need_path(
                            "a sysfs LED directory such as /sys/class/leds/led0",
                        )?),
                    },
                ),
                "powerSwitch" => match (&a.gpio_chip, a.line, a.path.as_ref().map(|p| no_dotdot_in_sys(p, ctx)).transpose()?) {
                    (Some(chip), Some(line), None) => (
                        ActuatorType::PowerSwitch,
                        ActuatorDriver::GpioLine { chip: chip.clone(), line, active_low },
                    ),
                    (None, None, Some(path)) => (
                        ActuatorType::PowerSwitch,
                        ActuatorDriver::ValueFile { path: gateway.resolve_sysfs(&path), active_low },
                    ),
                    _ => {
                        return Err(ctx.err_at(
                            a.id.span(),
                            format!("powerSwitch \"{aid}\" needs either gpio_chip = \"/dev/gpiochip0\" with line = N, or path = \"...\" (a value file), not both"),
                        ))
                    }
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
                    (
                        ActuatorType::Exec,
                        ActuatorDriver::Exec {
                            command: command.get_ref().clone(),
                            timeout: a.timeout.map_or(Duration::from_secs(30), |t| t.0),
                        },
                    )
                }
                other => {
                    return Err(ctx.err_at(
                        a.actuator_type.span(),
                        format!("unknown actuator type \"{other}\": expected \"led\", \"powerSwitch\" or \"exec\""),
                    ))
                }
            };
            let on_shutdown = match &a.on_shutdown {
                None => OnShutdown::Leave,
                Some(s) => match s.get_ref().as_str() {
                    "leave" => OnShutdown::Leave,
                    "off" => OnShutdown::Off,
                    other => {
                        return Err(ctx.err_at(
                            s.span(),
                            format!(
                                "invalid on_shutdown \"{other}\": expected \"leave\" or \"off\""
                            ),
                        ))
                    }
                },
            };
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
        let rpc = RpcConfig {
            allow_reboot: raw.rpc.allow_reboot.unwrap_or(false),
            allow_poweroff: raw.rpc.allow_poweroff.unwrap_or(false),
            allow_restart: raw.rpc.allow_restart.unwrap_or(true),
            sw_update_command: raw.rpc.sw_update_command,
            reboot_command: raw
                .rpc
                .reboot_command
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]),
            poweroff_command: raw
                .rpc
                .poweroff_command
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| vec!["systemctl".into(), "poweroff".into()]),
            set_system_clock: raw.rpc.set_system_clock.unwrap_or(false),
        };

        Ok(Config {
            path: ctx.path.to_path_buf(),
            gateway,
            mqtt,
            buffer,
            sensors,
            actuators,
            rpc,
            serial,
            modbus,
            log_level: raw.log.level,
            api_url,
            warnings,
        })
    }

    /// The status valid duration in seconds for a report interval.
    pub fn status_validity_secs(&self, report_interval: Duration) -> i64 {
        let d = self.gateway.status_validity.unwrap_or(report_interval * 2);
        d.as_secs_f64().ceil() as i64
    }
}

/// The group the packaged service runs as.
const SERVICE_GROUP: &str = "thingplus-gw";

/// The id of a group, if it exists.
fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid C string, a zeroed struct and a buffer with its length.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// A warning when a file holding a secret can be read by others than its
/// owner and the daemon's group: its own, or `thingplus-gw`'s when run by
/// root (`thingplus-gw check` checks the files the service will read).
pub fn secret_file_warning(path: &Path, what: &str) -> Option<String> {
    secret_file_warning_for(path, what, group_id(SERVICE_GROUP))
}

fn secret_file_warning_for(path: &Path, what: &str, service_group: Option<u32>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode();
    // SAFETY: getegid has no preconditions.
    let our_group = unsafe { libc::getegid() };
    let allowed_group = |gid: u32| gid == our_group || Some(gid) == service_group;
    if mode & 0o004 != 0 {
        Some(format!(
            "{what} {} is readable by every user: chmod 640 it (owner root, group thingplus-gw)",
            path.display()
        ))
    } else if mode & 0o040 != 0 && !allowed_group(meta.gid()) {
        Some(format!(
            "{what} {} is readable by group {} which is not the service's group: chgrp thingplus-gw it, or chmod 600",
            path.display(),
            meta.gid()
        ))
    } else {
        None
    }
}

/// Reads a small file holding a secret: a regular file of at most
/// [`MAX_SECRET_FILE_SIZE`] bytes. Opened without blocking, so a FIFO or a
/// device named by mistake neither hangs the daemon nor fills its memory.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_SECRET_FILE_SIZE {
        return Err(format!(
            "larger than the limit of {MAX_SECRET_FILE_SIZE} bytes for a key file"
        ));
    }
    Ok(text)
}

fn text_has_apikey(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with("apikey") && !l.trim_start().starts_with("apikey_file"))
}

fn resolve_relative(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn mqtt_from_raw(
    m: RawMqtt,
    ctx: &Ctx,
    warnings: &mut Vec<String>,
) -> Result<MqttConfig, ConfigError> {
    let host = match (&m.host, &m.service) {
        (Some(_), Some(s)) => {
            return Err(ctx.err_at(s.span(), "set either host or service in [mqtt], not both"))
        }
        (Some(h), None) => h.clone(),
        (None, Some(s)) => match s.get_ref().as_str() {
            "commercial" => "mqtt.thingplus.net".to_string(),
            "sandbox" => "mqtt.sandbox.thingplus.net".to_string(),
            other => {
                return Err(ctx.err_at(
                    s.span(),
                    format!("unknown service \"{other}\": expected \"commercial\" or \"sandbox\" (or set host)"),
                ))
            }
        },
        (None, None) => "mqtt.thingplus.net".to_string(),
    };
    let tls = m.tls.unwrap_or(true);
    let port = m.port.unwrap_or(if tls { 8883 } else { 1883 });
    if !tls && !is_loopback_host(&host) {
        warnings.push(format!(
            "tls = false: the APIKEY and every reading go to {host} unencrypted; use TLS for anything but a local broker"
        ));
    }
    if m.client_cert.is_some() != m.client_key.is_some() {
        return Err(ctx.err("[mqtt] client_cert and client_key go together: set both or neither"));
    }
    if let Some(key) = &m.client_key {
        warnings.extend(secret_file_warning(key, "[mqtt] client_key"));
    }
    let reconnect_min = m
        .reconnect_min
        .as_ref()
        .map_or(PROTOCOL_MIN_RECONNECT, |d| d.get_ref().0);
    let reconnect_max = m
        .reconnect_max
        .as_ref()
        .map_or(Duration::from_secs(300), |d| d.get_ref().0);
    if let Some(d) = &m.reconnect_min {
        if d.get_ref().0.is_zero() {
            return Err(ctx.err_at(d.span(), "reconnect_min must be greater than zero"));
        }
    }
    if reconnect_min < PROTOCOL_MIN_RECONNECT {
        warnings.push(format!(
            "reconnect_min is {}: Thing+ requires at least 10s between attempts (fine for local brokers and tests)",
            format_duration(reconnect_min)
        ));
    }
    if reconnect_max < reconnect_min {
        let span = m.reconnect_max.as_ref().map(|s| s.span()).unwrap_or(0..0);
        return Err(ctx.err_at(span, "reconnect_max must not be smaller than reconnect_min"));
    }
    if let Some(k) = &m.keep_alive {
        let secs = k.get_ref().0.as_secs();
        if !(5..=65535).contains(&secs) {
            return Err(ctx.err_at(k.span(), "keep_alive must be between 5s and 65535s"));
        }
    }
    let max_message_size = match &m.max_message_size {
        Some(s) if s.get_ref().0 < 1024 => {
            return Err(ctx.err_at(s.span(), "max_message_size must be at least 1KiB"))
        }
        Some(s) => s.get_ref().0 as usize,
        None => 64 << 10,
    };
    let max_inflight = match &m.max_inflight {
        Some(n) if !(1..=50).contains(n.get_ref()) => {
            return Err(ctx.err_at(n.span(), "max_inflight must be between 1 and 50"))
        }
        Some(n) => *n.get_ref(),
        None => 8,
    };
    let min_bytes = match &m.compress_min_bytes {
        Some(s) => usize::try_from(s.get_ref().0).unwrap_or(usize::MAX),
        None => crate::thingplus::compress::DEFAULT_MIN_BYTES,
    };
    let compress = match &m.compress {
        None => Compression::Off,
        Some(c) => match c.get_ref().as_str() {
            "off" => Compression::Off,
            "gzip" => Compression::Gzip { min_bytes },
            other => {
                return Err(ctx.err_at(
                    c.span(),
                    format!("invalid compress \"{other}\": expected \"gzip\" or \"off\""),
                ))
            }
        },
    };
    if compress == Compression::Off && m.compress_min_bytes.is_some() {
        warnings.push(
            "compress_min_bytes is set but compress is not \"gzip\": nothing is compressed".into(),
        );
    }
    Ok(MqttConfig {
        host,
        port,
        tls,
        ca_file: m.ca_file,
        client_cert: m.client_cert,
        client_key: m.client_key,
        keep_alive: m.keep_alive.map(|k| k.get_ref().0),
        reconnect_min,
        reconnect_max,
        connect_timeout: m.connect_timeout.map_or(Duration::from_secs(10), |d| d.0),
        ack_timeout: m.ack_timeout.map_or(Duration::from_secs(60), |d| d.0),
        max_message_size,
        max_inflight,
        shutdown_timeout: m.shutdown_timeout.map_or(Duration::from_secs(5), |d| d.0),
        compress,
    })
}

pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Rejects a key that belongs to another kind of sensor source.
fn only_with<T>(
    v: &Option<Spanned<T>>,
    key: &str,
    needs: &str,
    ctx: &Ctx,
) -> Result<(), ConfigError> {
    match v {
        Some(v) => Err(ctx.err_at(v.span(), format!("{key} applies only to {needs}"))),
        None => Ok(()),
    }
}

fn sensor_source(
    s: &RawSensor,
    sid: &str,
    serial: &[SerialPortConfig],
    modbus: &[ModbusBusConfig],
    ctx: &Ctx,
) -> Result<SensorSource, ConfigError> {
    let n = usize::from(s.path.is_some())
        + usize::from(s.serial.is_some())
        + usize::from(s.modbus.is_some());
    if n == 0 {
        return Err(ctx.err_at(
            s.id.span(),
            format!("sensor \"{sid}\" has no source: set path = \"/sys/...\", serial = \"PORT\" or modbus = \"BUS\""),
        ));
    }
    if n > 1 {
        let span = s
            .modbus
            .as_ref()
            .or(s.serial.as_ref())
            .map_or(s.id.span(), |x| x.span());
        return Err(ctx.err_at(
            span,
            format!("sensor \"{sid}\" has more than one source: set only one of path, serial and modbus"),
        ));
    }
    if s.path.is_none() {
        only_with(
            &s.regex,
            "regex",
            "file sensors (path = ...); a serial port's regex goes in its [serial.NAME] table",
            ctx,
        )?;
    }
    if s.serial.is_none() {
        only_with(&s.field, "field", "serial sensors (serial = \"PORT\")", ctx)?;
    }
    if s.modbus.is_none() {
        let needs = "Modbus sensors (modbus = \"BUS\")";
        only_with(&s.unit, "unit", needs, ctx)?;
        only_with(&s.function, "function", needs, ctx)?;
        only_with(&s.address, "address", needs, ctx)?;
        only_with(&s.data_type, "data_type", needs, ctx)?;
        only_with(&s.word_order, "word_order", needs, ctx)?;
    }

    if let Some(path) = &s.path {
        let regex = match &s.regex {
            Some(r) => {
                let re = Regex::new(r.get_ref())
                    .map_err(|e| ctx.err_at(r.span(), format!("invalid regex: {e}")))?;
                if re.captures_len() < 2 {
                    return Err(ctx.err_at(
                        r.span(),
                        "the regex needs a capture group: its first group is the raw value, as in 't=(-?\\d+)'",
                    ));
                }
                Some(re)
            }
            None => None,
        };
        return Ok(SensorSource::File {
            path: no_dotdot_in_sys(path, ctx)?,
            regex,
        });
    }

    if let Some(port) = &s.serial {
        let name = port.get_ref();
        let Some(p) = serial.iter().find(|p| &p.name == name) else {
            let known: Vec<&str> = serial.iter().map(|p| p.name.as_str()).collect();
            return Err(ctx.err_at(
                port.span(),
                format!(
                    "no serial port \"{name}\" is defined: add a [serial.{name}] table{}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" or use one of: {}", known.join(", "))
                    }
                ),
            ));
        };
        let Some(field) = &s.field else {
            return Err(ctx.err_at(
                port.span(),
                format!("sensor \"{sid}\" reads serial port \"{name}\": set field = \"...\" to pick what it reports"),
            ));
        };
        let f = field.get_ref();
        let known: Option<Vec<&str>> = match &p.format {
            SerialFormat::Nmea => Some(NMEA_FIELDS.to_vec()),
            SerialFormat::Csv { columns, .. } => Some(columns.iter().map(String::as_str).collect()),
            SerialFormat::Regex(re) => Some(re.capture_names().flatten().collect()),
            SerialFormat::Json => None,
        };
        if f.is_empty() || known.as_ref().is_some_and(|k| !k.contains(&f.as_str())) {
            return Err(ctx.err_at(
                field.span(),
                format!(
                    "serial port \"{name}\" (format {}) has no field \"{f}\"{}",
                    p.format.name(),
                    match known {
                        Some(k) => format!(": expected one of {}", k.join(", ")),
                        None => ": give a key or a dotted path such as \"wind.speed\"".into(),
                    }
                ),
            ));
        }
        return Ok(SensorSource::Serial {
            port: name.clone(),
            field: f.clone(),
        });
    }

    let Some(bus) = &s.modbus else {
        unreachable!("exactly one source is set");
    };
    let name = bus.get_ref();
    if !modbus.iter().any(|b| &b.name == name) {
        let known: Vec<&str> = modbus.iter().map(|b| b.name.as_str()).collect();
        return Err(ctx.err_at(
            bus.span(),
            format!(
                "no Modbus bus \"{name}\" is defined: add a [modbus.{name}] table{}",
                if known.is_empty() {
                    String::new()
                } else {
                    format!(" or use one of: {}", known.join(", "))
                }
            ),
        ));
    }
    let unit = match &s.unit {
        Some(u) if !(1..=247).contains(u.get_ref()) => {
            return Err(ctx.err_at(u.span(), "unit must be a device address between 1 and 247"))
        }
        Some(u) => *u.get_ref(),
        None => 1,
    };
    let function = match &s.function {
        None => ModbusFunction::Holding,
        Some(f) => match f.get_ref().as_str() {
            "holding" => ModbusFunction::Holding,
            "input" => ModbusFunction::Input,
            "coil" => ModbusFunction::Coil,
            "discrete" => ModbusFunction::Discrete,
            other => {
                return Err(ctx.err_at(
                    f.span(),
                    format!("invalid function \"{other}\": expected \"holding\", \"input\", \"coil\" or \"discrete\""),
                ))
            }
        },
    };
    let Some(address) = &s.address else {
        return Err(ctx.err_at(
            bus.span(),
            format!("Modbus sensor \"{sid}\" needs address = N (the register or coil number, 0-based as on the wire)"),
        ));
    };
    let data_type = match &s.data_type {
        None if function.is_bits() => ModbusDataType::Bool,
        None => ModbusDataType::U16,
        Some(d) => {
            let t = match d.get_ref().as_str() {
                "bool" => ModbusDataType::Bool,
                "u16" => ModbusDataType::U16,
                "i16" => ModbusDataType::I16,
                "u32" => ModbusDataType::U32,
                "i32" => ModbusDataType::I32,
                "f32" => ModbusDataType::F32,
                other => {
                    return Err(ctx.err_at(
                        d.span(),
                        format!("invalid data_type \"{other}\": expected \"u16\", \"i16\", \"u32\", \"i32\", \"f32\" (registers) or \"bool\" (coils)"),
                    ))
                }
            };
            if function.is_bits() != (t == ModbusDataType::Bool) {
                return Err(ctx.err_at(
                    d.span(),
                    if function.is_bits() {
                        format!("function \"{}\" reads single bits: data_type must be \"bool\" (or left out)", function.name())
                    } else {
                        format!("function \"{}\" reads registers: data_type \"bool\" needs function \"coil\" or \"discrete\"", function.name())
                    },
                ));
            }
            t
        }
    };
    let word_order = match &s.word_order {
        None => WordOrder::Big,
        Some(w) => match w.get_ref().as_str() {
            "big" => WordOrder::Big,
            "little" => WordOrder::Little,
            other => {
                return Err(ctx.err_at(
                    w.span(),
                    format!("invalid word_order \"{other}\": expected \"big\" (high word first) or \"little\" (low word first)"),
                ))
            }
        },
    };
    if u32::from(*address.get_ref()) + u32::from(data_type.width()) > 65536 {
        return Err(ctx.err_at(
            address.span(),
            format!(
                "a {} at address {} runs past register 65535",
                data_type.name(),
                address.get_ref()
            ),
        ));
    }
    Ok(SensorSource::Modbus(ModbusPoint {
        bus: name.clone(),
        unit,
        function,
        address: *address.get_ref(),
        data_type,
        word_order,
    }))
}

#[allow(clippy::too_many_arguments)]
fn line_settings(
    baud: &Option<Spanned<u32>>,
    data_bits: &Option<Spanned<u8>>,
    parity: &Option<Spanned<String>>,
    stop_bits: &Option<Spanned<u8>>,
    flow_control: &Option<Spanned<String>>,
    default_baud: u32,
    default_parity: Parity,
    ctx: &Ctx,
) -> Result<LineSettings, ConfigError> {
    let baud = match baud {
        Some(b) if *b.get_ref() == 0 => {
            return Err(ctx.err_at(b.span(), "baud must be greater than zero, such as 9600"))
        }
        Some(b) => *b.get_ref(),
        None => default_baud,
    };
    let data_bits = match data_bits {
        Some(d) if !(5..=8).contains(d.get_ref()) => {
            return Err(ctx.err_at(d.span(), "data_bits must be 5, 6, 7 or 8"))
        }
        Some(d) => *d.get_ref(),
        None => 8,
    };
    let stop_bits = match stop_bits {
        Some(d) if !(1..=2).contains(d.get_ref()) => {
            return Err(ctx.err_at(d.span(), "stop_bits must be 1 or 2"))
        }
        Some(d) => *d.get_ref(),
        None => 1,
    };
    let parity = match parity {
        None => default_parity,
        Some(p) => match p.get_ref().as_str() {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            other => {
                return Err(ctx.err_at(
                    p.span(),
                    format!("invalid parity \"{other}\": expected \"none\", \"even\" or \"odd\""),
                ))
            }
        },
    };
    let flow_control = match flow_control {
        None => FlowControl::None,
        Some(p) => match p.get_ref().as_str() {
            "none" => FlowControl::None,
            "software" => FlowControl::Software,
            "hardware" => FlowControl::Hardware,
            other => {
                return Err(ctx.err_at(
                    p.span(),
                    format!("invalid flow_control \"{other}\": expected \"none\", \"software\" (XON/XOFF) or \"hardware\" (RTS/CTS)"),
                ))
            }
        },
    };
    Ok(LineSettings {
        baud,
        data_bits,
        parity,
        stop_bits,
        flow_control,
    })
}

/// A positive duration, or the default.
fn positive(
    d: &Option<Spanned<HumanDuration>>,
    key: &str,
    default: Duration,
    ctx: &Ctx,
) -> Result<Duration, ConfigError> {
    match d {
        Some(d) if d.get_ref().0.is_zero() => {
            Err(ctx.err_at(d.span(), format!("{key} must be greater than zero")))
        }
        Some(d) => Ok(d.get_ref().0),
        None => Ok(default),
    }
}

fn reopen_backoff(
    min: &Option<Spanned<HumanDuration>>,
    max: &Option<Spanned<HumanDuration>>,
    ctx: &Ctx,
) -> Result<(Duration, Duration), ConfigError> {
    let lo = positive(min, "reopen_min", Duration::from_secs(1), ctx)?;
    let hi = positive(max, "reopen_max", Duration::from_secs(30).max(lo), ctx)?;
    if hi < lo {
        let span = max.as_ref().map_or(0..0, |s| s.span());
        return Err(ctx.err_at(span, "reopen_max must not be smaller than reopen_min"));
    }
    Ok((lo, hi))
}

fn serial_from_raw(
    name: String,
    p: RawSerialPort,
    ctx: &Ctx,
) -> Result<SerialPortConfig, ConfigError> {
    let line = line_settings(
        &p.baud,
        &p.data_bits,
        &p.parity,
        &p.stop_bits,
        &p.flow_control,
        9600,
        Parity::None,
        ctx,
    )?;
    let fmt = p.format.get_ref().as_str();
    if fmt != "csv" {
        only_with(&p.columns, "columns", "format = \"csv\"", ctx)?;
        only_with(&p.delimiter, "delimiter", "format = \"csv\"", ctx)?;
    }
    if fmt != "regex" {
        only_with(&p.regex, "regex", "format = \"regex\"", ctx)?;
    }
    let format = match fmt {
        "nmea" => SerialFormat::Nmea,
        "json" => SerialFormat::Json,
        "csv" => {
            let Some(columns) = &p.columns else {
                return Err(ctx.err_at(
                    p.format.span(),
                    "format = \"csv\" needs columns = [\"name\", ...], one name per value on a line (\"_\" skips a column)",
                ));
            };
            let named: Vec<&String> = columns
                .get_ref()
                .iter()
                .filter(|c| !c.is_empty() && *c != "_")
                .collect();
            if named.is_empty() {
                return Err(ctx.err_at(columns.span(), "columns must name at least one column"));
            }
            let mut uniq = HashSet::new();
            if let Some(d) = named.iter().find(|c| !uniq.insert(**c)) {
                return Err(ctx.err_at(columns.span(), format!("column \"{d}\" is named twice")));
            }
            let delimiter =
                match &p.delimiter {
                    None => ',',
                    Some(d) => {
                        let mut chars = d.get_ref().chars();
                        match (chars.next(), chars.next()) {
                            (Some(c), None) if c != '"' && c != '\n' && c != '\r' => c,
                            _ => return Err(ctx.err_at(
                                d.span(),
                                "delimiter must be one character, such as \",\", \";\" or \"\\t\"",
                            )),
                        }
                    }
                };
            SerialFormat::Csv {
                columns: columns.get_ref().clone(),
                delimiter,
            }
        }
        "regex" => {
            let Some(r) = &p.regex else {
                return Err(ctx.err_at(
                    p.format.span(),
                    "format = \"regex\" needs regex = '...' with named groups, such as 'T=(?<temp>-?[0-9.]+)'",
                ));
            };
            let re = Regex::new(r.get_ref())
                .map_err(|e| ctx.err_at(r.span(), format!("invalid regex: {e}")))?;
            if re.capture_names().flatten().next().is_none() {
                return Err(ctx.err_at(
                    r.span(),
                    "the regex needs named groups, one per field, such as 'T=(?<temp>-?[0-9.]+)'",
                ));
            }
            SerialFormat::Regex(re)
        }
        other => {
            return Err(ctx.err_at(
                p.format.span(),
                format!(
                    "invalid format \"{other}\": expected \"nmea\", \"csv\", \"json\" or \"regex\""
                ),
            ))
        }
    };
    if p.request.is_none() {
        only_with(
            &p.interval,
            "interval",
            "ports with a request (each sensor of a streaming port has its own interval)",
            ctx,
        )?;
        only_with(
            &p.reply_timeout,
            "reply_timeout",
            "ports with a request",
            ctx,
        )?;
    }
    let request = match &p.request {
        Some(r) if r.get_ref().is_empty() => {
            return Err(ctx.err_at(r.span(), "request must not be empty"))
        }
        Some(r) => Some(r.get_ref().as_bytes().to_vec()),
        None => None,
    };
    let interval = match &p.interval {
        Some(i) if i.get_ref().0.is_zero() => {
            return Err(ctx.err_at(i.span(), "interval must be greater than zero"))
        }
        Some(i) => Some(i.get_ref().0),
        None => None,
    };
    let reply_timeout = positive(
        &p.reply_timeout,
        "reply_timeout",
        Duration::from_secs(1),
        ctx,
    )?;
    let max_line = match &p.max_line {
        Some(m) if !(16..=(1 << 20)).contains(&m.get_ref().0) => {
            return Err(ctx.err_at(m.span(), "max_line must be between 16 and 1MiB"))
        }
        Some(m) => m.get_ref().0 as usize,
        None => 8 << 10,
    };
    let (reopen_min, reopen_max) = reopen_backoff(&p.reopen_min, &p.reopen_max, ctx)?;
    Ok(SerialPortConfig {
        name,
        device: p.device,
        line,
        format,
        request,
        interval,
        reply_timeout,
        max_line,
        reopen_min,
        reopen_max,
    })
}

fn modbus_from_raw(
    name: String,
    b: RawModbusBus,
    ctx: &Ctx,
) -> Result<ModbusBusConfig, ConfigError> {
    // The Modbus serial line specification makes even parity the default.
    let line = line_settings(
        &b.baud,
        &b.data_bits,
        &b.parity,
        &b.stop_bits,
        &b.flow_control,
        9600,
        Parity::Even,
        ctx,
    )?;
    let timeout = positive(&b.timeout, "timeout", Duration::from_secs(1), ctx)?;
    let max_gap = match &b.max_gap {
        Some(g) if *g.get_ref() > 100 => {
            return Err(ctx.err_at(g.span(), "max_gap must be between 0 and 100"))
        }
        Some(g) => *g.get_ref(),
        None => 0,
    };
    let (reopen_min, reopen_max) = reopen_backoff(&b.reopen_min, &b.reopen_max, ctx)?;
    Ok(ModbusBusConfig {
        name,
        device: b.device,
        line,
        timeout,
        batch: b.batch.unwrap_or(true),
        max_gap,
        reopen_min,
        reopen_max,
    })
}

fn buffer_from_raw(b: RawBuffer, state_dir: &Path, ctx: &Ctx) -> Result<BufferConfig, ConfigError> {
    let fsync = match &b.fsync {
        None => Fsync::Period(Duration::from_secs(1)),
        Some(s) => match s.get_ref().as_str() {
            "always" => Fsync::Always,
            "never" => Fsync::Never,
            other => match crate::units::parse_duration(other) {
                Ok(d) if !d.is_zero() => Fsync::Period(d),
                _ => {
                    return Err(ctx.err_at(
                        s.span(),
                        format!("invalid fsync \"{other}\": expected \"always\", \"never\" or a period such as \"1s\""),
                    ))
                }
            },
        },
    };
    let min_free_percent = match &b.min_free {
        None => 5.0,
        Some(s) => {
            let t = s.get_ref().trim();
            match t
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
            {
                Some(p) if (0.0..100.0).contains(&p) => p,
                _ => {
                    return Err(ctx.err_at(
                        s.span(),
                        format!("invalid min_free \"{t}\": expected a percentage such as \"5%\""),
                    ))
                }
            }
        }
    };
    Ok(BufferConfig {
        dir: b.dir.unwrap_or_else(|| state_dir.join("buffer")),
        max_size: b.max_size.map_or(256 << 20, |s| s.0),
        fsync,
        min_free_percent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[gateway]\nid = \"gw1\"\napikey = \"k\"\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/t.toml"))
    }

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
        assert_eq!(c.status_validity_secs(c.gateway.report_interval), 120);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn sysfs_root_moves_sys_paths_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let c = parse(&format!(
            "[gateway]\nid = \"gw1\"\napikey = \"k\"\nsysfs_root = \"{root}\"\n\
             [[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"/sys/class/thermal/thermal_zone0/temp\"\n\
             [[sensor]]\nid = \"f\"\ntype = \"temperature\"\npath = \"/var/lib/x/temp\"\n\
             [[actuator]]\nid = \"l\"\ntype = \"led\"\npath = \"/sys/class/leds/led0\"\n\
             [[actuator]]\nid = \"v\"\ntype = \"powerSwitch\"\npath = \"/sys/class/gpio/gpio17/value\"\n\
             [[actuator]]\nid = \"g\"\ntype = \"powerSwitch\"\ngpio_chip = \"/dev/gpiochip0\"\nline = 1\n"
        ))
        .unwrap();
        assert_eq!(c.gateway.sysfs_root, dir.path());
        let paths: Vec<_> = c
            .sensors
            .iter()
            .map(|s| match &s.source {
                SensorSource::File { path, .. } => path.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            paths,
            [
                dir.path().join("class/thermal/thermal_zone0/temp"),
                PathBuf::from("/var/lib/x/temp")
            ]
        );
        assert_eq!(
            c.actuators[0].driver,
            ActuatorDriver::Led {
                path: dir.path().join("class/leds/led0")
            }
        );
        assert_eq!(
            c.actuators[1].driver,
            ActuatorDriver::ValueFile {
                path: dir.path().join("class/gpio/gpio17/value"),
                active_low: false
            }
        );
        assert!(
            matches!(&c.actuators[2].driver, ActuatorDriver::GpioLine { chip, .. } if chip == Path::new("/dev/gpiochip0"))
        );
        // Not /sysfoo: only whole components.
        assert_eq!(
            under_sysfs_root(dir.path(), Path::new("/sysfoo/x")),
            PathBuf::from("/sysfoo/x")
        );
        // The default leaves everything as written.
        let c = parse(&format!(
            "{MIN}[[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"/sys/class/thermal/thermal_zone0/temp\"\n"
        ))
        .unwrap();
        assert_eq!(c.gateway.sysfs_root, Path::new("/sys"));
        assert!(
            matches!(&c.sensors[0].source, SensorSource::File { path, .. } if path == Path::new("/sys/class/thermal/thermal_zone0/temp"))
        );
    }

    #[test]
    fn sysfs_root_must_be_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = parse(&format!("{MIN}sysfs_root = \"{}\"\n", missing.display())).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
        assert!(
            e.message.contains("sysfs_root") && e.message.contains("No such file"),
            "{e}"
        );
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = parse(&format!("{MIN}sysfs_root = \"{}\"\n", file.display())).unwrap_err();
        assert!(e.message.contains("is not a directory"), "{e}");
        // Relative to the configuration file.
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        let c = Config::parse(
            &format!("{MIN}sysfs_root = \"tree\"\n"),
            &dir.path().join("c.toml"),
        )
        .unwrap();
        assert_eq!(c.gateway.sysfs_root, dir.path().join("tree"));
    }

    #[test]
    fn dotdot_in_a_sys_path_is_an_error_with_its_place() {
        for (section, line) in [
            ("[[sensor]]\nid = \"s\"\ntype = \"temperature\"\npath = ", 8),
            ("[[actuator]]\nid = \"l\"\ntype = \"led\"\npath = ", 8),
            (
                "[[actuator]]\nid = \"p\"\ntype = \"powerSwitch\"\npath = ",
                8,
            ),
        ] {
            let text = format!("{MIN}\n{section}\"/sys/class/../../etc/x\"\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.position, Some((line, 8)), "{e}");
            assert!(e.message.contains("must not contain \"..\""), "{e}");
            assert!(e.to_string().starts_with("/etc/t.toml:8:8: "), "{e}");
        }
        // Other paths, and names merely containing dots, are as before.
        let ok = format!(
            "{MIN}\n[[sensor]]\nid = \"s\"\ntype = \"temperature\"\npath = \"/sys/a..b/x\"\n\
             [[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"/tmp/../tmp/x\"\n"
        );
        assert_eq!(parse(&ok).unwrap().sensors.len(), 2);
    }

    #[test]
    fn compress_is_gzip_or_off_with_a_threshold() {
        let c = parse(&format!("{MIN}[mqtt]\ncompress = \"gzip\"\n")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Gzip { min_bytes: 1024 });
        let c = parse(&format!(
            "{MIN}[mqtt]\ncompress = \"gzip\"\ncompress_min_bytes = \"4KiB\"\n"
        ))
        .unwrap();
        assert_eq!(c.mqtt.compress, Compression::Gzip { min_bytes: 4096 });
        let c = parse(&format!("{MIN}[mqtt]\ncompress = \"off\"\n")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Off);
        let c = parse(&format!("{MIN}[mqtt]\ncompress_min_bytes = 100\n")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Off);
        assert!(
            c.warnings[0].contains("nothing is compressed"),
            "{:?}",
            c.warnings
        );
        let e = parse(&format!("{MIN}[mqtt]\ncompress = \"zip\"\n")).unwrap_err();
        assert_eq!(e.position, Some((5, 12)), "{e}");
        assert!(e.message.contains("expected \"gzip\" or \"off\""), "{e}");
    }

    /// The commented compression lines of the reference file are valid.
    #[test]
    fn reference_compress_lines_parse_when_uncommented() {
        let text = include_str!("../config/thingplus-gw.toml");
        let lines: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# compress"))
            .map(|l| format!("compress{}\n", l.split('#').next().unwrap()))
            .collect();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        let c = parse(&format!("{MIN}[mqtt]\n{lines}")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Off);
        let c = parse(&format!(
            "{MIN}[mqtt]\n{}",
            lines.replace("\"off\"", "\"gzip\"")
        ))
        .unwrap();
        assert_eq!(c.mqtt.compress, Compression::Gzip { min_bytes: 1024 });
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
    fn missing_apikey_is_explained() {
        let e = parse("[gateway]\nid = \"gw\"\n").unwrap_err();
        assert!(e.message.contains("apikey"), "{e}");
    }

    #[test]
    fn zero_report_interval_is_rejected() {
        let e = parse(&format!("{MIN}report_interval = \"0s\"\n")).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
        assert!(e.message.contains("greater than zero"));
    }

    #[test]
    fn duplicate_sensor_ids_after_substitution() {
        let text = format!(
            "{MIN}[[sensor]]\nid = \"gw1-t-0\"\ntype = \"temperature\"\npath = \"/a\"\n\n[[sensor]]\nid = \"{{gateway_id}}-t-0\"\ntype = \"temperature\"\npath = \"/b\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("duplicate sensor id \"gw1-t-0\""), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(10), "{e}");
    }

    #[test]
    fn sensor_defaults_by_type() {
        let text = format!(
            "{MIN}[[sensor]]\nid = \"{{gateway_id}}-temperature-0\"\ntype = \"temperature\"\npath = \"/t\"\nscale = 0.001\n\n[[sensor]]\nid = \"door\"\ntype = \"onoff\"\npath = \"/d\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.sensors[0].id, "gw1-temperature-0");
        assert_eq!(c.sensors[0].scale, 0.001);
        assert!(!c.sensors[0].event);
        assert_eq!(c.sensors[0].interval, None);
        assert!(c.sensors[1].event);
        assert_eq!(c.sensors[1].value_type, ValueType::Integer);
        assert_eq!(c.sensors[1].interval, Some(Duration::from_secs(1)));
    }

    #[test]
    fn regex_needs_a_group() {
        let text = format!(
            "{MIN}[[sensor]]\nid = \"a\"\ntype = \"number\"\npath = \"/a\"\nregex = 't=\\d+'\n"
        );
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("capture group"), "{e}");
    }

    #[test]
    fn bad_ids_are_rejected() {
        let e = parse("[gateway]\nid = \"gw/1\"\napikey = \"k\"\n").unwrap_err();
        assert!(e.message.contains("invalid gateway id"));
        let text = format!("{MIN}[[sensor]]\nid = \"a,b\"\ntype = \"number\"\npath = \"/a\"\n");
        assert!(parse(&text)
            .unwrap_err()
            .message
            .contains("invalid sensor id"));
    }

    #[test]
    fn service_names_pick_hosts() {
        let c = parse(&format!("{MIN}[mqtt]\nservice = \"sandbox\"\n")).unwrap();
        assert_eq!(c.mqtt.host, "mqtt.sandbox.thingplus.net");
        let e = parse(&format!("{MIN}[mqtt]\nservice = \"prod\"\n")).unwrap_err();
        assert!(e.message.contains("unknown service"));
    }

    #[test]
    fn warnings_for_short_intervals_and_plain_tcp() {
        let c = parse(&format!(
            "{MIN}report_interval = \"1s\"\n[mqtt]\nhost = \"example.com\"\ntls = false\nreconnect_min = \"1s\"\n"
        ))
        .unwrap();
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert_eq!(c.mqtt.port, 1883);
    }

    #[test]
    fn keep_alive_follows_report_interval() {
        let c = parse(MIN).unwrap();
        assert_eq!(
            c.mqtt.keep_alive_for(Duration::from_secs(60)),
            Duration::from_secs(120)
        );
        assert_eq!(
            c.mqtt.keep_alive_for(Duration::from_secs(1)),
            Duration::from_secs(60)
        );
        assert_eq!(
            c.mqtt.keep_alive_for(Duration::from_secs(3600)),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn apikey_file_is_read_and_secret_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("apikey");
        std::fs::write(&key, "s3cr3t\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "[gateway]\nid = \"gw\"\napikey_file = \"apikey\"\n").unwrap();
        let c = Config::load(&cfg).unwrap();
        assert_eq!(c.gateway.apikey.expose(), "s3cr3t");
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("readable by every user")));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn errors_on_the_apikey_line_do_not_quote_it() {
        for v in [
            "123456789012345",
            "1.5e300",
            "[\"Xk9-SeCrEt\"]",
            "\"Xk9-SeCrEt",
            "Xk9-SeCrEt",
            "{ k = \"Xk9-SeCrEt\" }",
        ] {
            let text = format!("[gateway]\nid = \"gw\"\n  apikey = {v}\n");
            let e = Config::parse(&text, Path::new("c.toml")).unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with("c.toml:3:"), "{shown}");
            assert!(shown.contains("apikey must be text in quotes"), "{shown}");
            for secret in ["123456789012345", "1.5e300", "Xk9-SeCrEt"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        // Other errors keep their message.
        let e =
            Config::parse("[gateway]\nid = 5\napikey = \"k\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn apikey_file_must_be_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let load = |key: &str| {
            std::fs::write(
                &cfg,
                format!("[gateway]\nid = \"gw\"\napikey_file = \"{key}\"\n"),
            )
            .unwrap();
            Config::load(&cfg)
        };
        // Too large: refused at the limit, not read whole.
        let big = dir.path().join("big");
        std::fs::write(&big, "k".repeat(MAX_SECRET_FILE_SIZE as usize + 1)).unwrap();
        let e = load(big.to_str().unwrap()).unwrap_err();
        assert!(e.message.contains("limit of 65536 bytes"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        // A device that never ends, a FIFO nobody writes to, a directory:
        // errors at once (no endless read, no hang).
        for (path, why) in [
            ("/dev/zero", "not a regular file"),
            (dir.path().to_str().unwrap(), "not a regular file"),
        ] {
            let e = load(path).unwrap_err();
            assert!(e.message.contains(why), "{path}: {e}");
        }
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = load(fifo.to_str().unwrap()).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        // At the limit is fine.
        std::fs::write(&big, "k".repeat(MAX_SECRET_FILE_SIZE as usize)).unwrap();
        assert!(load(big.to_str().unwrap()).is_ok());
    }

    #[test]
    fn key_readable_by_another_group_warns() {
        use std::os::unix::fs::chown;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        // Our own group may read it: that is how the service reads its keys.
        assert_eq!(secret_file_warning(&key, "k"), None);
        // Another group may not (the tests run as root, so chown works).
        if chown(&key, None, Some(12345)).is_ok() {
            assert!(secret_file_warning(&key, "k")
                .unwrap()
                .contains("group 12345"));
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(secret_file_warning(&key, "k"), None);
    }

    #[test]
    fn key_of_the_service_group_does_not_warn_root() {
        // `thingplus-gw check` run by root, as README says, on a key that is
        // root:thingplus-gw 0640: the service can read it, nobody else.
        use std::os::unix::fs::chown;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("apikey");
        std::fs::write(&key, "k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        chown(&key, None, Some(23456)).unwrap();
        assert_eq!(secret_file_warning_for(&key, "k", Some(23456)), None);
        assert!(secret_file_warning_for(&key, "k", Some(23457))
            .unwrap()
            .contains("group 23456"));
        assert!(secret_file_warning_for(&key, "k", None)
            .unwrap()
            .contains("group 23456"));
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

    const PORTS: &str = r#"
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

    #[test]
    fn serial_ports_modbus_buses_and_their_sensors() {
        let text = format!(
            "{MIN}{PORTS}\n[[sensor]]\nid = \"loc\"\ntype = \"location\"\nserial = \"gps\"\nfield = \"location\"\n\n[[sensor]]\nid = \"t\"\ntype = \"temperature\"\nserial = \"ws\"\nfield = \"temp\"\ninterval = \"10s\"\n\n[[sensor]]\nid = \"p\"\ntype = \"power\"\nserial = \"meter\"\nfield = \"power\"\n\n[[sensor]]\nid = \"e\"\ntype = \"energy\"\nmodbus = \"plc\"\nunit = 3\nfunction = \"input\"\naddress = 100\ndata_type = \"f32\"\nword_order = \"little\"\nscale = 0.1\n\n[[sensor]]\nid = \"door\"\ntype = \"onoff\"\nmodbus = \"plc\"\nfunction = \"coil\"\naddress = 0\n"
        );
        let c = parse(&text).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.serial.len(), 3);
        let gps = c.serial.iter().find(|p| p.name == "gps").unwrap();
        assert_eq!(gps.format, SerialFormat::Nmea);
        assert_eq!(gps.line.to_string(), "9600 8N1");
        assert_eq!(gps.max_line, 8192);
        assert_eq!(gps.reopen_min, Duration::from_secs(1));
        assert_eq!(gps.reopen_max, Duration::from_secs(30));
        let ws = c.serial.iter().find(|p| p.name == "ws").unwrap();
        assert_eq!(ws.line.to_string(), "19200 8E2");
        assert_eq!(
            ws.format,
            SerialFormat::Csv {
                columns: vec!["time".into(), "temp".into(), "_".into(), "hum".into()],
                delimiter: ';'
            }
        );
        let meter = c.serial.iter().find(|p| p.name == "meter").unwrap();
        assert_eq!(meter.request.as_deref(), Some(&b"READ\r\n"[..]));
        assert_eq!(meter.interval, Some(Duration::from_secs(5)));
        assert_eq!(meter.reply_timeout, Duration::from_millis(500));
        let plc = &c.modbus[0];
        assert_eq!(plc.line.to_string(), "19200 8E1");
        assert_eq!(plc.timeout, Duration::from_millis(200));
        assert!(plc.batch);
        assert_eq!(plc.max_gap, 0);

        assert!(
            matches!(&c.sensors[0].source, SensorSource::Serial { port, field } if port == "gps" && field == "location")
        );
        assert_eq!(c.sensors[1].interval, Some(Duration::from_secs(10)));
        assert!(
            matches!(&c.sensors[3].source, SensorSource::Modbus(p) if *p == ModbusPoint {
                bus: "plc".into(),
                unit: 3,
                function: ModbusFunction::Input,
                address: 100,
                data_type: ModbusDataType::F32,
                word_order: WordOrder::Little,
            })
        );
        let SensorSource::Modbus(door) = &c.sensors[4].source else {
            panic!()
        };
        assert_eq!((door.unit, door.data_type), (1, ModbusDataType::Bool));
        // A polled event sensor keeps its 1 s sampling; the description mentions every port.
        assert_eq!(c.sensors[4].interval, Some(Duration::from_secs(1)));
        let d = crate::cli::check::describe(&c);
        assert!(d.contains("serial gps field location"), "{d}");
        assert!(
            d.contains("modbus plc unit 3 input 100 f32 (low word first)"),
            "{d}"
        );
        assert!(d.contains("request \"READ\\r\\n\" every 5s"), "{d}");
    }

    fn sensor_err(port_keys: &str, sensor_keys: &str) -> ConfigError {
        let text = format!(
            "{MIN}{PORTS}{port_keys}\n[[sensor]]\nid = \"s\"\ntype = \"number\"\n{sensor_keys}"
        );
        parse(&text).unwrap_err()
    }

    #[test]
    fn serial_and_modbus_sensor_errors_point_at_the_line() {
        let sensor_line = MIN.lines().count() + PORTS.lines().count() + 5;
        let e = sensor_err("", "serial = \"gsp\"\nfield = \"fix\"\n");
        assert!(e.message.contains("no serial port \"gsp\""), "{e}");
        assert!(e.message.contains("gps, meter, ws"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(sensor_line), "{e}");
        let e = sensor_err("", "modbus = \"plc2\"\naddress = 1\n");
        assert!(e.message.contains("no Modbus bus \"plc2\""), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(sensor_line), "{e}");
        let e = sensor_err("", "serial = \"gps\"\nfield = \"heading\"\n");
        assert!(e.message.contains("expected one of location"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(sensor_line + 1), "{e}");
        let e = sensor_err("", "serial = \"ws\"\nfield = \"pressure\"\n");
        assert!(e.message.contains("no field \"pressure\""), "{e}");
        let e = sensor_err("", "serial = \"gps\"\n");
        assert!(e.message.contains("set field"), "{e}");
        let e = sensor_err("", "path = \"/a\"\nserial = \"gps\"\nfield = \"fix\"\n");
        assert!(e.message.contains("more than one source"), "{e}");
        let e = sensor_err("", "path = \"/a\"\nfield = \"fix\"\n");
        assert!(e.message.contains("field applies only to serial"), "{e}");
        let e = sensor_err("", "path = \"/a\"\naddress = 3\n");
        assert!(e.message.contains("address applies only to Modbus"), "{e}");
        let e = sensor_err(
            "",
            "serial = \"meter\"\nfield = \"power\"\ninterval = \"1s\"\n",
        );
        assert!(e.message.contains("polled with a request"), "{e}");
        let e = sensor_err("", "modbus = \"plc\"\n");
        assert!(e.message.contains("needs address"), "{e}");
        let e = sensor_err("", "modbus = \"plc\"\naddress = 1\nunit = 0\n");
        assert!(e.message.contains("between 1 and 247"), "{e}");
        let e = sensor_err("", "modbus = \"plc\"\naddress = 1\ndata_type = \"bool\"\n");
        assert!(e.message.contains("needs function \"coil\""), "{e}");
        let e = sensor_err(
            "",
            "modbus = \"plc\"\naddress = 1\nfunction = \"discrete\"\ndata_type = \"u16\"\n",
        );
        assert!(e.message.contains("must be \"bool\""), "{e}");
        let e = sensor_err(
            "",
            "modbus = \"plc\"\naddress = 65535\ndata_type = \"u32\"\n",
        );
        assert!(e.message.contains("runs past"), "{e}");
        let e = sensor_err(
            "",
            "modbus = \"plc\"\naddress = 1\nword_order = \"middle\"\n",
        );
        assert!(e.message.contains("invalid word_order"), "{e}");
    }

    #[test]
    fn serial_port_errors() {
        let port = |keys: &str| {
            parse(&format!("{MIN}[serial.x]\ndevice = \"/dev/x\"\n{keys}")).unwrap_err()
        };
        let e = port("format = \"xml\"\n");
        assert!(e.message.contains("invalid format"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(6), "{e}");
        assert!(port("format = \"csv\"\n").message.contains("needs columns"));
        assert!(port("format = \"csv\"\ncolumns = [\"a\", \"a\"]\n")
            .message
            .contains("named twice"));
        assert!(
            port("format = \"csv\"\ncolumns = [\"a\"]\ndelimiter = \";;\"\n")
                .message
                .contains("one character")
        );
        assert!(port("format = \"nmea\"\ncolumns = [\"a\"]\n")
            .message
            .contains("columns applies only to format"));
        assert!(port("format = \"regex\"\nregex = 'a(b)'\n")
            .message
            .contains("named groups"));
        assert!(port("format = \"nmea\"\ninterval = \"1s\"\n")
            .message
            .contains("ports with a request"));
        assert!(port("format = \"nmea\"\nparity = \"mark\"\n")
            .message
            .contains("invalid parity"));
        assert!(port("format = \"nmea\"\ndata_bits = 9\n")
            .message
            .contains("data_bits"));
        assert!(port("format = \"nmea\"\nstop_bits = 3\n")
            .message
            .contains("stop_bits"));
        assert!(port("format = \"nmea\"\nmax_line = \"2MiB\"\n")
            .message
            .contains("max_line"));
        assert!(
            port("format = \"nmea\"\nreopen_min = \"10s\"\nreopen_max = \"1s\"\n")
                .message
                .contains("reopen_max")
        );
        assert!(port("format = \"nmea\"\nbogus = 1\n")
            .message
            .contains("unknown field `bogus`"));
        assert!(port("baud = 9600\n")
            .message
            .contains("missing field `format`"));
        // One device, one owner.
        let e = parse(&format!(
            "{MIN}[serial.a]\ndevice = \"/dev/x\"\nformat = \"json\"\n[modbus.b]\ndevice = \"/dev/x\"\n"
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("[modbus.b] and [serial.a] both use the device /dev/x"),
            "{e}"
        );
        // A port nobody reads is only a warning.
        let c = parse(&format!(
            "{MIN}[serial.x]\ndevice = \"/dev/x\"\nformat = \"json\"\n"
        ))
        .unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("[serial.x] has no sensor")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn line_col_is_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped reference configuration stays loadable.
    #[test]
    fn reference_config_parses() {
        let text = include_str!("../config/thingplus-gw.toml")
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
        let text = include_str!("../config/thingplus-gw.toml");
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
