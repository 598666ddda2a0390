//! `thingplus-gw check`: validate a configuration and show what it resolves to.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{ActuatorDriver, Config, Fsync, SensorSource, WordOrder};
use crate::thingplus::Compression;
use crate::units::format_duration;

use super::EXIT_CONFIG;

pub fn run(config_path: &Path) -> ExitCode {
    match Config::load(config_path) {
        Ok(c) => {
            if c.mqtt.tls {
                if let Err(e) = crate::tls::client_config(&c.mqtt) {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            print!("{}", describe(&c));
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            let things = c
                .sensors
                .iter()
                .map(|s| ("sensor", &s.id, &s.sensor_type))
                .chain(
                    c.actuators
                        .iter()
                        .map(|a| ("actuator", &a.id, &a.thingplus_type)),
                );
            for (kind, id, ty) in things {
                if let Some(w) = crate::register::id_convention_warning(kind, id, &c.gateway.id, ty)
                {
                    eprintln!("warning: {w}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// A human summary of a configuration. Never shows the APIKEY.
pub fn describe(c: &Config) -> String {
    let mut o = String::new();
    describe_gateway(&mut o, c);
    describe_transport(&mut o, c);
    describe_sensors(&mut o, c);
    describe_ports(&mut o, c);
    describe_actuators(&mut o, c);
    o
}

fn describe_gateway(o: &mut String, c: &Config) {
    let g = &c.gateway;
    let _ = writeln!(o, "{}: OK", c.path.display());
    let _ = writeln!(o, "gateway id       {} ({})", g.id, g.id_source);
    let _ = writeln!(
        o,
        "apikey           set ({} characters)",
        g.apikey.expose().len()
    );
    let _ = writeln!(o, "report interval  {}", format_duration(g.report_interval));
    let _ = writeln!(o, "state dir        {}", g.state_dir.display());
    let moved = g.sysfs_root != std::path::Path::new(crate::config::DEFAULT_SYSFS_ROOT);
    let _ = writeln!(
        o,
        "sysfs root       {}{}",
        g.sysfs_root.display(),
        if moved {
            " (paths under /sys/ are read and written there)"
        } else {
            ""
        }
    );
}

/// The broker, the messages and the buffer.
fn describe_transport(o: &mut String, c: &Config) {
    let m = &c.mqtt;
    let _ = writeln!(
        o,
        "broker           {}:{} ({})",
        m.host,
        m.port,
        if m.tls {
            match &m.ca_file {
                Some(ca) => format!("TLS, CA {}", ca.display()),
                None => "TLS, system trust store".to_string(),
            }
        } else {
            "plain TCP".to_string()
        }
    );
    let _ = writeln!(
        o,
        "keep-alive       {}; reconnect {} .. {}",
        format_duration(m.keep_alive_for(c.gateway.report_interval)),
        format_duration(m.reconnect_min),
        format_duration(m.reconnect_max)
    );
    let _ = writeln!(
        o,
        "messages         at most {} bytes of JSON, {} in flight; {}",
        m.max_message_size,
        m.max_inflight,
        match m.compress {
            Compression::Off => "not compressed".to_string(),
            Compression::Gzip { min_bytes } => format!("gzip above {min_bytes} bytes"),
        }
    );
    let fsync = match c.buffer.fsync {
        Fsync::Always => "always".to_string(),
        Fsync::Never => "never".to_string(),
        Fsync::Period(p) => format!("every {}", format_duration(p)),
    };
    let _ = writeln!(
        o,
        "buffer           {} (max {} MiB, fsync {fsync})",
        c.buffer.dir.display(),
        c.buffer.max_size >> 20
    );
}

fn describe_sensors(o: &mut String, c: &Config) {
    let _ = writeln!(o, "sensors          {}", c.sensors.len());
    for s in &c.sensors {
        let source = match &s.source {
            SensorSource::File { path, .. } => path.display().to_string(),
            SensorSource::Serial { port, field } => format!("serial {port} field {field}"),
            SensorSource::Modbus(p) => format!(
                "modbus {} unit {} {} {} {}{}",
                p.bus,
                p.unit,
                p.function.name(),
                p.address,
                p.data_type.name(),
                if p.data_type.width() > 1 && p.word_order == WordOrder::Little {
                    " (low word first)"
                } else {
                    ""
                }
            ),
        };
        let polled_port = match &s.source {
            SensorSource::Serial { port, .. } => c
                .serial
                .iter()
                .find(|p| &p.name == port)
                .filter(|p| p.request.is_some())
                .map(|p| p.interval),
            _ => None,
        };
        let when = match polled_port {
            Some(i) => format!(
                "at each reply (request every {})",
                i.map_or("report interval".to_string(), format_duration)
            ),
            None => format!(
                "every {}",
                s.interval
                    .map_or("report interval".to_string(), format_duration)
            ),
        };
        let _ = writeln!(
            o,
            "  {:<36} {:<12} {} {}{}",
            s.id,
            s.sensor_type,
            source,
            when,
            if s.event { ", sent on change" } else { "" }
        );
    }
}

/// Serial ports and Modbus buses, when there are any.
fn describe_ports(o: &mut String, c: &Config) {
    if !c.serial.is_empty() {
        let _ = writeln!(o, "serial ports     {}", c.serial.len());
        for p in &c.serial {
            let _ = writeln!(
                o,
                "  {:<36} {} {} format {}{}",
                p.name,
                p.device.display(),
                p.line,
                p.format.name(),
                match &p.request {
                    Some(r) => format!(
                        ", request {:?} every {} (reply within {})",
                        String::from_utf8_lossy(r),
                        p.interval
                            .map_or("report interval".to_string(), format_duration),
                        format_duration(p.reply_timeout)
                    ),
                    None => String::new(),
                }
            );
        }
    }
    if !c.modbus.is_empty() {
        let _ = writeln!(o, "modbus buses     {}", c.modbus.len());
        for b in &c.modbus {
            let _ = writeln!(
                o,
                "  {:<36} {} {} timeout {}{}",
                b.name,
                b.device.display(),
                b.line,
                format_duration(b.timeout),
                if b.batch {
                    format!(", batched reads (max gap {})", b.max_gap)
                } else {
                    ", one read per sensor".to_string()
                }
            );
        }
    }
}

fn describe_actuators(o: &mut String, c: &Config) {
    let _ = writeln!(o, "actuators        {}", c.actuators.len());
    for a in &c.actuators {
        let how = match &a.driver {
            ActuatorDriver::Led { path } => format!("LED {}", path.display()),
            ActuatorDriver::ValueFile { path, active_low } => {
                format!(
                    "value file {}{}",
                    path.display(),
                    if *active_low { ", active low" } else { "" }
                )
            }
            ActuatorDriver::GpioLine {
                chip,
                line,
                active_low,
            } => format!(
                "{} line {line}{}",
                chip.display(),
                if *active_low { ", active low" } else { "" }
            ),
            ActuatorDriver::Exec { command, timeout } => {
                format!(
                    "runs {} (timeout {})",
                    command.join(" "),
                    format_duration(*timeout)
                )
            }
        };
        let _ = writeln!(o, "  {:<36} {:<12} {how}", a.id, a.thingplus_type);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FakeHost;

    #[test]
    fn describe_shows_each_section_and_never_the_apikey() {
        let text = "[gateway]\nid = \"gw1\"\napikey = \"Xk9-SeCrEt\"\n\
                    [mqtt]\nhost = \"127.0.0.1\"\ntls = false\ncompress = \"gzip\"\n\
                    [[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"/t\"\n\
                    [[actuator]]\nid = \"r\"\ntype = \"powerSwitch\"\ngpio_chip = \"/dev/gpiochip0\"\nline = 3\nactive_low = true\n";
        let c = Config::parse_with(text, Path::new("/c.toml"), &FakeHost::default()).unwrap();
        let d = describe(&c);
        assert!(!d.contains("Xk9-SeCrEt"), "{d}");
        let lines: Vec<&str> = d.lines().collect();
        assert_eq!(lines[0], "/c.toml: OK");
        assert_eq!(lines[1], "gateway id       gw1 (config)");
        assert_eq!(lines[2], "apikey           set (10 characters)");
        assert!(
            d.contains("broker           127.0.0.1:1883 (plain TCP)\n"),
            "{d}"
        );
        assert!(d.contains("; gzip above 1024 bytes\n"), "{d}");
        assert!(d.contains("fsync every 1s)\nsensors          1\n"), "{d}");
        assert!(d.contains("every report interval\n"), "{d}");
        assert!(!d.contains("serial ports"), "{d}");
        assert!(d.ends_with("/dev/gpiochip0 line 3, active low\n"), "{d}");
    }
}
