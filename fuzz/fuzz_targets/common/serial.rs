//! What a serial port's task does with the bytes a device sends: split them
//! into bounded lines, parse each line in the port's format, and turn the
//! fields the sensors name into values. Shared by the serial fuzz targets.

use std::path::Path;

use thingplus_gw::config::{Config, FakeHost, SensorConfig, SensorSource, SerialFormat};
use thingplus_gw::sensor::serial::{field_value, parse_line, LineEvent, LineSplitter, Lookup};

/// The line limit used here: libFuzzer's inputs are 4 KiB by default, so
/// both short lines and lines over the limit occur.
pub const MAX_LINE: usize = 1024;

/// A configuration holding one port `p` and sensors of every value type
/// reading `fields` from it. `port` is the body of `[serial.p]` past `device`.
pub fn port_config(port: &str, fields: &[&str]) -> (SerialFormat, Vec<SensorConfig>) {
    let mut text = format!(
        "[gateway]\nid = \"fuzz\"\napikey = \"k\"\n[mqtt]\nhost = \"127.0.0.1\"\ntls = false\n\
         [serial.p]\ndevice = \"/nonexistent/tty\"\n{port}\n"
    );
    for (i, f) in fields.iter().enumerate() {
        for (j, (ty, extra)) in [
            ("number", "scale = 0.1\noffset = -40.0\n"),
            ("humidity", ""),
            ("string", ""),
            ("location", ""),
            ("onoff", ""),
        ]
        .iter()
        .enumerate()
        {
            text += &format!(
                "[[sensor]]\nid = \"s{i}-{j}\"\ntype = \"{ty}\"\nserial = \"p\"\nfield = \"{f}\"\n{extra}"
            );
        }
    }
    let c = Config::parse_with(
        &text,
        Path::new("/nonexistent/fuzz.toml"),
        &FakeHost::default(),
    )
    .unwrap_or_else(|e| panic!("fuzz config: {e}\n{text}"));
    let format = c.serial[0].format.clone();
    (format, c.sensors)
}

/// Feeds `data` to the port: its first byte picks the read size (1..=64
/// bytes at a time, as a UART delivers them), the rest is the stream.
pub fn feed(format: &SerialFormat, sensors: &[SensorConfig], data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut splitter = LineSplitter::new(MAX_LINE);
    for piece in stream.chunks(chunk) {
        for event in splitter.push(piece) {
            if let LineEvent::Line(line) = event {
                assert!(!line.is_empty() && line.len() <= MAX_LINE);
                assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
                line_to_values(format, sensors, &line);
            }
        }
        assert!(splitter.held() <= 2 * (MAX_LINE + 1), "{}", splitter.held());
    }
    // The whole stream as one line too (a device with max_line large enough).
    line_to_values(format, sensors, stream);
}

fn line_to_values(format: &SerialFormat, sensors: &[SensorConfig], line: &[u8]) {
    let Ok(Some(record)) = parse_line(format, line) else {
        return;
    };
    for s in sensors {
        let SensorSource::Serial { field, .. } = &s.source else {
            continue;
        };
        if let Lookup::Value(v) = record.get(field) {
            if let Ok(value) = field_value(v, s) {
                // What the encoder will write must be JSON.
                let json = value.to_json_string();
                serde_json::from_str::<serde_json::Value>(&json)
                    .unwrap_or_else(|e| panic!("{json}: {e}"));
            }
        }
    }
}
