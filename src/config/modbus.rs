//! `[modbus.NAME]`: Modbus RTU buses, and the points their sensors read.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::units::HumanDuration;

use super::error::Ctx;
use super::sensor::RawSensor;
use super::serial::{line_settings, or_one_of, reopen_backoff, LineSettings, Parity};
use super::ConfigError;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbusBus {
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

pub(super) fn modbus_from_raw(
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
        Parity::Even,
        ctx,
    )?;
    let timeout = ctx.positive(&b.timeout, "timeout", Duration::from_secs(1))?;
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

/// The point a sensor with `modbus = "BUS"` reads.
pub(super) fn modbus_point(
    s: &RawSensor,
    bus: &Spanned<String>,
    sid: &str,
    modbus: &[ModbusBusConfig],
    ctx: &Ctx,
) -> Result<ModbusPoint, ConfigError> {
    let name = bus.get_ref();
    if !modbus.iter().any(|b| &b.name == name) {
        let known: Vec<&str> = modbus.iter().map(|b| b.name.as_str()).collect();
        return Err(ctx.err_at(
            bus.span(),
            format!(
                "no Modbus bus \"{name}\" is defined: add a [modbus.{name}] table{}",
                or_one_of(&known)
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
    let function = ctx.choose_or(
        &s.function,
        ModbusFunction::Holding,
        &[
            ("holding", ModbusFunction::Holding),
            ("input", ModbusFunction::Input),
            ("coil", ModbusFunction::Coil),
            ("discrete", ModbusFunction::Discrete),
        ],
        "invalid function",
        "expected \"holding\", \"input\", \"coil\" or \"discrete\"",
    )?;
    let Some(address) = &s.address else {
        return Err(ctx.err_at(
            bus.span(),
            format!("Modbus sensor \"{sid}\" needs address = N (the register or coil number, 0-based as on the wire)"),
        ));
    };
    let data_type = data_type_of(s.data_type.as_ref(), function, ctx)?;
    let word_order = ctx.choose_or(
        &s.word_order,
        WordOrder::Big,
        &[("big", WordOrder::Big), ("little", WordOrder::Little)],
        "invalid word_order",
        "expected \"big\" (high word first) or \"little\" (low word first)",
    )?;
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
    Ok(ModbusPoint {
        bus: name.clone(),
        unit,
        function,
        address: *address.get_ref(),
        data_type,
        word_order,
    })
}

/// `data_type`, which must suit the function: `bool` for bits, a number for registers.
fn data_type_of(
    d: Option<&Spanned<String>>,
    function: ModbusFunction,
    ctx: &Ctx,
) -> Result<ModbusDataType, ConfigError> {
    let Some(d) = d else {
        return Ok(if function.is_bits() {
            ModbusDataType::Bool
        } else {
            ModbusDataType::U16
        });
    };
    let t = ctx.choose(
        d,
        &[
            ("bool", ModbusDataType::Bool),
            ("u16", ModbusDataType::U16),
            ("i16", ModbusDataType::I16),
            ("u32", ModbusDataType::U32),
            ("i32", ModbusDataType::I32),
            ("f32", ModbusDataType::F32),
        ],
        "invalid data_type",
        "expected \"u16\", \"i16\", \"u32\", \"i32\", \"f32\" (registers) or \"bool\" (coils)",
    )?;
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
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::*;

    fn bus(keys: &str) -> Result<Config, ConfigError> {
        parse(&format!("{MIN}[modbus.b]\ndevice = \"/dev/ttyS1\"\n{keys}"))
    }

    #[test]
    fn bus_defaults_follow_the_modbus_serial_line_specification() {
        let c = bus("").unwrap();
        let b = &c.modbus[0];
        assert_eq!(b.line.to_string(), "9600 8E1");
        assert_eq!(b.timeout, Duration::from_secs(1));
        assert!(b.batch);
        assert_eq!(
            (b.max_gap, b.reopen_min, b.reopen_max),
            (0, Duration::from_secs(1), Duration::from_secs(30))
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w == "[modbus.b] has no sensor: it is not opened"),
            "{:?}",
            c.warnings
        );
        let c =
            bus("parity = \"none\"\nflow_control = \"hardware\"\nbatch = false\nmax_gap = 100\n")
                .unwrap();
        assert_eq!(c.modbus[0].line.to_string(), "9600 8N1 rts/cts");
        assert!(!c.modbus[0].batch);
    }

    #[test]
    fn bus_and_point_errors() {
        for (keys, message) in [
            ("max_gap = 101\n", "max_gap must be between 0 and 100"),
            ("timeout = \"0s\"\n", "timeout must be greater than zero"),
            ("flow_control = \"rts\"\n", "invalid flow_control \"rts\": expected \"none\", \"software\" (XON/XOFF) or \"hardware\" (RTS/CTS)"),
            ("baud = 0\n", "baud must be greater than zero, such as 9600"),
        ] {
            let e = bus(keys).unwrap_err();
            assert_eq!(e.message, message, "{e}");
            assert_eq!(e.position.map(|p| p.0), Some(6), "{e}");
        }
        let point = |keys: &str| {
            bus(&format!(
                "[[sensor]]\nid = \"p\"\ntype = \"number\"\nmodbus = \"b\"\naddress = 7\n{keys}"
            ))
        };
        let e = point("function = \"write\"\n").unwrap_err();
        assert_eq!(
            e.message,
            "invalid function \"write\": expected \"holding\", \"input\", \"coil\" or \"discrete\""
        );
        let e = point("data_type = \"u64\"\n").unwrap_err();
        assert!(
            e.message
                .starts_with("invalid data_type \"u64\": expected \"u16\""),
            "{e}"
        );
        let c = point("function = \"input\"\ndata_type = \"i32\"\n").unwrap();
        let SensorSource::Modbus(p) = &c.sensors[0].source else {
            panic!("{:?}", c.sensors[0].source)
        };
        assert_eq!(
            (p.function, p.data_type, p.word_order),
            (ModbusFunction::Input, ModbusDataType::I32, WordOrder::Big)
        );
        assert_eq!((p.unit, p.address), (1, 7));
    }
}
