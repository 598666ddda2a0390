//! JSON lines from an instrument, through the line splitter, the parser,
//! dotted-path lookups and the sensors' value conversion.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use thingplus_gw::config::{SensorConfig, SerialFormat};

#[path = "common/serial.rs"]
mod serial;

static PORT: LazyLock<(SerialFormat, Vec<SensorConfig>)> = LazyLock::new(|| {
    serial::port_config(
        "format = \"json\"",
        &["temp", "wind.speed", "values.0", "a.b", "loc", "x.1.y"],
    )
});

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = thingplus_gw::sensor::serial::json::parse(text);
    }
    serial::feed(&PORT.0, &PORT.1, data);
});
