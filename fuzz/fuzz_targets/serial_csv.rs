//! Delimited lines (CSV) with named columns, through the line splitter,
//! the parser and the sensors' value conversion. The input's first byte
//! picks one of several port configurations (delimiters, column counts).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use thingplus_gw::config::{SensorConfig, SerialFormat};

#[path = "common/serial.rs"]
mod serial;

static PORTS: LazyLock<Vec<(SerialFormat, Vec<SensorConfig>)>> = LazyLock::new(|| {
    vec![
        serial::port_config(
            "format = \"csv\"\ncolumns = [\"time\", \"temp\", \"_\", \"hum\"]",
            &["time", "temp", "hum"],
        ),
        serial::port_config(
            "format = \"csv\"\ncolumns = [\"a\", \"b\", \"c\"]\ndelimiter = \";\"",
            &["a", "b", "c"],
        ),
        serial::port_config(
            "format = \"csv\"\ncolumns = [\"a\", \"\", \"b\"]\ndelimiter = \"\\t\"",
            &["a", "b"],
        ),
        serial::port_config(
            "format = \"csv\"\ncolumns = [\"v\"]\ndelimiter = \" \"",
            &["v"],
        ),
        serial::port_config(
            "format = \"csv\"\ncolumns = [\"x\", \"y\", \"z\", \"w\", \"u\", \"t\"]\ndelimiter = \"|\"",
            &["x", "w", "t"],
        ),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (format, sensors) = &PORTS[usize::from(pick) % PORTS.len()];
    if let (Ok(text), SerialFormat::Csv { columns, delimiter }) =
        (std::str::from_utf8(rest), format)
    {
        let _ = thingplus_gw::sensor::serial::csv::parse(text, columns, *delimiter);
    }
    serial::feed(format, sensors, rest);
});
