//! `[[sensor]]`: what is read, from where (a file, a serial port's field,
//! a Modbus point), how often, and how the raw reading becomes a value.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::gateway_id;
use crate::units::HumanDuration;

use super::error::Ctx;
use super::gateway::{no_dotdot_in_sys, GatewayConfig};
use super::modbus::{modbus_point, ModbusBusConfig, ModbusPoint};
use super::serial::{serial_source, SerialPortConfig};
use super::ConfigError;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSensor {
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
    pub(super) unit: Option<Spanned<u8>>,
    pub(super) function: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<u16>>,
    pub(super) data_type: Option<Spanned<String>>,
    pub(super) word_order: Option<Spanned<String>>,
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

/// The sensors, with their ids resolved; `serial` and `modbus` are the
/// ports and buses they may name.
pub(super) fn sensors_from_raw(
    raw: Vec<RawSensor>,
    gateway: &GatewayConfig,
    serial: &[SerialPortConfig],
    modbus: &[ModbusBusConfig],
    ctx: &Ctx,
) -> Result<Vec<SensorConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut sensors = Vec::new();
    for s in raw {
        let sid = s.id.get_ref().replace("{gateway_id}", &gateway.id);
        if !gateway_id::is_valid_id(&sid) {
            return Err(ctx.err_at(
                s.id.span(),
                format!("invalid sensor id \"{sid}\": use only letters, digits and - _ . ~ (and {{gateway_id}})"),
            ));
        }
        if !seen.insert(sid.clone()) {
            return Err(ctx.err_at(s.id.span(), format!("duplicate sensor id \"{sid}\"")));
        }
        let source = match sensor_source(&s, &sid, serial, modbus, ctx)? {
            SensorSource::File { path, regex } => SensorSource::File {
                path: gateway.resolve_sysfs(&path),
                regex,
            },
            other => other,
        };
        sensors.push(sensor_from_raw(s, sid, source, serial, ctx)?);
    }
    Ok(sensors)
}

fn sensor_from_raw(
    s: RawSensor,
    sid: String,
    source: SensorSource,
    serial: &[SerialPortConfig],
    ctx: &Ctx,
) -> Result<SensorConfig, ConfigError> {
    let value_type = match &s.value_type {
        None => default_value_type(&s.sensor_type),
        Some(v) => ctx.choose(
            v,
            &[
                ("number", ValueType::Number),
                ("integer", ValueType::Integer),
                ("string", ValueType::Text),
            ],
            "invalid value_type",
            "expected \"number\", \"integer\" or \"string\"",
        )?,
    };
    let interval = ctx.positive_opt(&s.interval, "interval")?;
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
    Ok(SensorConfig {
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
    })
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
    keys_of_other_sources(s, ctx)?;
    if let Some(path) = &s.path {
        return file_source(path, s.regex.as_ref(), ctx);
    }
    if let Some(port) = &s.serial {
        return serial_source(port, s.field.as_ref(), sid, serial, ctx);
    }
    let Some(bus) = &s.modbus else {
        unreachable!("exactly one source is set");
    };
    modbus_point(s, bus, sid, modbus, ctx).map(SensorSource::Modbus)
}

/// Refuses keys that belong to a source the sensor does not have.
fn keys_of_other_sources(s: &RawSensor, ctx: &Ctx) -> Result<(), ConfigError> {
    if s.path.is_none() {
        ctx.only_with(
            &s.regex,
            "regex",
            "file sensors (path = ...); a serial port's regex goes in its [serial.NAME] table",
        )?;
    }
    if s.serial.is_none() {
        ctx.only_with(&s.field, "field", "serial sensors (serial = \"PORT\")")?;
    }
    if s.modbus.is_none() {
        let needs = "Modbus sensors (modbus = \"BUS\")";
        ctx.only_with(&s.unit, "unit", needs)?;
        ctx.only_with(&s.function, "function", needs)?;
        ctx.only_with(&s.address, "address", needs)?;
        ctx.only_with(&s.data_type, "data_type", needs)?;
        ctx.only_with(&s.word_order, "word_order", needs)?;
    }
    Ok(())
}

fn file_source(
    path: &Spanned<PathBuf>,
    regex: Option<&Spanned<String>>,
    ctx: &Ctx,
) -> Result<SensorSource, ConfigError> {
    let regex = match regex {
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
    Ok(SensorSource::File {
        path: no_dotdot_in_sys(path, ctx)?,
        regex,
    })
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::*;

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
}
