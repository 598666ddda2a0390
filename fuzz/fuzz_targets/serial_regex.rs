//! Lines matched by an operator's regex with named groups, through the line
//! splitter, the parser and the sensors' value conversion. The input's
//! first byte picks one of several regexes.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use thingplus_gw::config::{SensorConfig, SerialFormat};

#[path = "common/serial.rs"]
mod serial;

static PORTS: LazyLock<Vec<(SerialFormat, Vec<SensorConfig>)>> = LazyLock::new(|| {
    vec![
        serial::port_config(
            "format = \"regex\"\nregex = 'T=(?<temp>-?[0-9.]+)(?: H=(?<hum>[0-9]+))?'",
            &["temp", "hum"],
        ),
        serial::port_config(
            "format = \"regex\"\nregex = 'P=(?<power>[0-9.]+)|E=(?<energy>[0-9]+)'",
            &["power", "energy"],
        ),
        serial::port_config(
            "format = \"regex\"\nregex = '^(?<id>\\w+)\\s*[:=]\\s*(?<value>.*)$'",
            &["id", "value"],
        ),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (format, sensors) = &PORTS[usize::from(pick) % PORTS.len()];
    if let (Ok(text), SerialFormat::Regex(re)) = (std::str::from_utf8(rest), format) {
        let _ = thingplus_gw::sensor::serial::regex::parse(text, re);
    }
    serial::feed(format, sensors, rest);
});
