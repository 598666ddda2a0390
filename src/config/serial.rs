//! `[serial.NAME]`: serial ports that print lines, their line settings and
//! line formats, and the fields their sensors pick.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::units::{ByteSize, HumanDuration};

use super::error::Ctx;
use super::sensor::SensorSource;
use super::ConfigError;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSerialPort {
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

    /// The fields a record of this format has; `None`: any key (JSON).
    fn fields(&self) -> Option<Vec<&str>> {
        match self {
            SerialFormat::Nmea => Some(NMEA_FIELDS.to_vec()),
            SerialFormat::Csv { columns, .. } => Some(columns.iter().map(String::as_str).collect()),
            SerialFormat::Regex(re) => Some(re.capture_names().flatten().collect()),
            SerialFormat::Json => None,
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

/// Line settings from a port's or bus's keys; 9600 baud unless set.
pub(super) fn line_settings(
    baud: &Option<Spanned<u32>>,
    data_bits: &Option<Spanned<u8>>,
    parity: &Option<Spanned<String>>,
    stop_bits: &Option<Spanned<u8>>,
    flow_control: &Option<Spanned<String>>,
    default_parity: Parity,
    ctx: &Ctx,
) -> Result<LineSettings, ConfigError> {
    let baud = match baud {
        Some(b) if *b.get_ref() == 0 => {
            return Err(ctx.err_at(b.span(), "baud must be greater than zero, such as 9600"))
        }
        Some(b) => *b.get_ref(),
        None => 9600,
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
    let parity = ctx.choose_or(
        parity,
        default_parity,
        &[
            ("none", Parity::None),
            ("even", Parity::Even),
            ("odd", Parity::Odd),
        ],
        "invalid parity",
        "expected \"none\", \"even\" or \"odd\"",
    )?;
    let flow_control = ctx.choose_or(
        flow_control,
        FlowControl::None,
        &[
            ("none", FlowControl::None),
            ("software", FlowControl::Software),
            ("hardware", FlowControl::Hardware),
        ],
        "invalid flow_control",
        "expected \"none\", \"software\" (XON/XOFF) or \"hardware\" (RTS/CTS)",
    )?;
    Ok(LineSettings {
        baud,
        data_bits,
        parity,
        stop_bits,
        flow_control,
    })
}

/// The backoff between attempts to reopen a port or bus.
pub(super) fn reopen_backoff(
    min: &Option<Spanned<HumanDuration>>,
    max: &Option<Spanned<HumanDuration>>,
    ctx: &Ctx,
) -> Result<(Duration, Duration), ConfigError> {
    let lo = ctx.positive(min, "reopen_min", Duration::from_secs(1))?;
    let hi = ctx.positive(max, "reopen_max", Duration::from_secs(30).max(lo))?;
    if hi < lo {
        let span = max.as_ref().map_or(0..0, |s| s.span());
        return Err(ctx.err_at(span, "reopen_max must not be smaller than reopen_min"));
    }
    Ok((lo, hi))
}

pub(super) fn serial_from_raw(
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
        Parity::None,
        ctx,
    )?;
    let format = serial_format(&p, ctx)?;
    if p.request.is_none() {
        ctx.only_with(
            &p.interval,
            "interval",
            "ports with a request (each sensor of a streaming port has its own interval)",
        )?;
        ctx.only_with(&p.reply_timeout, "reply_timeout", "ports with a request")?;
    }
    let request = match &p.request {
        Some(r) if r.get_ref().is_empty() => {
            return Err(ctx.err_at(r.span(), "request must not be empty"))
        }
        Some(r) => Some(r.get_ref().as_bytes().to_vec()),
        None => None,
    };
    let interval = ctx.positive_opt(&p.interval, "interval")?;
    let reply_timeout = ctx.positive(&p.reply_timeout, "reply_timeout", Duration::from_secs(1))?;
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

fn serial_format(p: &RawSerialPort, ctx: &Ctx) -> Result<SerialFormat, ConfigError> {
    let fmt = p.format.get_ref().as_str();
    if fmt != "csv" {
        ctx.only_with(&p.columns, "columns", "format = \"csv\"")?;
        ctx.only_with(&p.delimiter, "delimiter", "format = \"csv\"")?;
    }
    if fmt != "regex" {
        ctx.only_with(&p.regex, "regex", "format = \"regex\"")?;
    }
    match fmt {
        "nmea" => Ok(SerialFormat::Nmea),
        "json" => Ok(SerialFormat::Json),
        "csv" => csv_format(p, ctx),
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
            Ok(SerialFormat::Regex(re))
        }
        other => Err(ctx.err_at(
            p.format.span(),
            format!(
                "invalid format \"{other}\": expected \"nmea\", \"csv\", \"json\" or \"regex\""
            ),
        )),
    }
}

fn csv_format(p: &RawSerialPort, ctx: &Ctx) -> Result<SerialFormat, ConfigError> {
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
    let delimiter = match &p.delimiter {
        None => ',',
        Some(d) => {
            let mut chars = d.get_ref().chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if c != '"' && c != '\n' && c != '\r' => c,
                _ => {
                    return Err(ctx.err_at(
                        d.span(),
                        "delimiter must be one character, such as \",\", \";\" or \"\\t\"",
                    ))
                }
            }
        }
    };
    Ok(SerialFormat::Csv {
        columns: columns.get_ref().clone(),
        delimiter,
    })
}

/// The source of a sensor with `serial = "PORT"` and `field = "..."`.
pub(super) fn serial_source(
    port: &Spanned<String>,
    field: Option<&Spanned<String>>,
    sid: &str,
    serial: &[SerialPortConfig],
    ctx: &Ctx,
) -> Result<SensorSource, ConfigError> {
    let name = port.get_ref();
    let Some(p) = serial.iter().find(|p| &p.name == name) else {
        let known: Vec<&str> = serial.iter().map(|p| p.name.as_str()).collect();
        return Err(ctx.err_at(
            port.span(),
            format!(
                "no serial port \"{name}\" is defined: add a [serial.{name}] table{}",
                or_one_of(&known)
            ),
        ));
    };
    let Some(field) = field else {
        return Err(ctx.err_at(
            port.span(),
            format!("sensor \"{sid}\" reads serial port \"{name}\": set field = \"...\" to pick what it reports"),
        ));
    };
    let f = field.get_ref();
    let known = p.format.fields();
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
    Ok(SensorSource::Serial {
        port: name.clone(),
        field: f.clone(),
    })
}

/// " or use one of: a, b" after a name not found; nothing when none is defined.
pub(super) fn or_one_of(known: &[&str]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" or use one of: {}", known.join(", "))
    }
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::*;

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
}
