//! NMEA 0183 lines from a GPS receiver, through the line splitter, the
//! parser and the sensors' value conversion.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use thingplus_gw::config::{SensorConfig, SerialFormat};

#[path = "common/serial.rs"]
mod serial;

static PORT: LazyLock<(SerialFormat, Vec<SensorConfig>)> = LazyLock::new(|| {
    serial::port_config(
        "format = \"nmea\"",
        &[
            "location",
            "altitude",
            "speed",
            "course",
            "satellites",
            "fix",
            "fix_quality",
            "hdop",
        ],
    )
});

fuzz_target!(|data: &[u8]| {
    // The parser alone, on the input as one line.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = thingplus_gw::sensor::serial::nmea::parse(text);
    }
    serial::feed(&PORT.0, &PORT.1, data);
});
