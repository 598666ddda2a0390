//! What this box can measure and drive, found in sysfs: hwmon sensors,
//! thermal zones, IIO devices, 1-Wire thermometers, power supplies, LEDs,
//! GPIO chips, and serial devices under /dev/serial/by-id.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A sensor found on the box, ready to become a `[[sensor]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundSensor {
    /// Thing+ type.
    pub sensor_type: String,
    pub path: PathBuf,
    pub scale: f64,
    pub offset: f64,
    pub regex: Option<String>,
    /// Where it came from, for people ("hwmon coretemp Package id 0").
    pub label: String,
    /// The value read once, already scaled; `None` when the read failed.
    pub value: Option<f64>,
    pub unit: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoundLed {
    pub name: String,
    pub path: PathBuf,
    pub brightness: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Discovery {
    pub sensors: Vec<FoundSensor>,
    pub leds: Vec<FoundLed>,
    /// GPIO chips (`gpiochipN`, label, lines) for people; not configured yet.
    pub gpio_chips: Vec<String>,
    /// Serial devices by id.
    pub serial: Vec<PathBuf>,
}

impl Discovery {
    /// Found under `root`, shown as the `/sys/...` paths a configuration with
    /// `sysfs_root = root` uses (the daemon maps them back under the root).
    pub fn as_sys_paths(&mut self, root: &Path) {
        let sys = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix(root) {
                *p = Path::new(crate::config::DEFAULT_SYSFS_ROOT).join(rest);
            }
        };
        self.sensors.iter_mut().for_each(|s| sys(&mut s.path));
        self.leds.iter_mut().for_each(|l| sys(&mut l.path));
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_f64(p: &Path) -> Option<f64> {
    read_trim(p)?.parse().ok()
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort_by_key(|p| natural_key(p));
    v
}

/// Sorts `temp10` after `temp2`.
fn natural_key(p: &Path) -> (String, u64, String) {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let start = name
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(name.len());
    let end = name[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(name.len(), |e| start + e);
    let num = name[start..end].parse().unwrap_or(0);
    (name[..start].to_string(), num, name[end..].to_string())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Walks `sysfs` (normally `/sys`) and `dev` (normally `/dev`).
pub fn discover(sysfs: &Path, dev: &Path) -> Discovery {
    let mut d = Discovery::default();
    hwmon(sysfs, &mut d);
    thermal(sysfs, &mut d);
    iio(sysfs, &mut d);
    w1(sysfs, &mut d);
    power_supply(sysfs, &mut d);
    for led in sorted_entries(&sysfs.join("class/leds")) {
        if led.join("brightness").exists() {
            d.leds.push(FoundLed {
                name: file_name(&led),
                brightness: read_trim(&led.join("brightness")),
                path: led,
            });
        }
    }
    for chip in sorted_entries(&sysfs.join("bus/gpio/devices")) {
        let name = file_name(&chip);
        if name.starts_with("gpiochip") {
            let label = read_trim(&chip.join("label")).unwrap_or_default();
            let ngpio = read_trim(&chip.join("ngpio")).unwrap_or_default();
            d.gpio_chips
                .push(format!("{name} {label} {ngpio}").trim().to_string());
        }
    }
    d.serial = sorted_entries(&dev.join("serial/by-id"));
    d
}

fn push(
    d: &mut Discovery,
    ty: &str,
    path: PathBuf,
    scale: f64,
    offset: f64,
    label: String,
    unit: &'static str,
) {
    let value = read_f64(&path).map(|raw| raw * scale + offset);
    d.sensors.push(FoundSensor {
        sensor_type: ty.to_string(),
        path,
        scale,
        offset,
        regex: None,
        label,
        value,
        unit,
    });
}

fn hwmon(sysfs: &Path, d: &mut Discovery) {
    for h in sorted_entries(&sysfs.join("class/hwmon")) {
        let chip = read_trim(&h.join("name")).unwrap_or_else(|| file_name(&h));
        for f in sorted_entries(&h) {
            let name = file_name(&f);
            let Some(base) = name.strip_suffix("_input") else {
                continue;
            };
            let label =
                read_trim(&h.join(format!("{base}_label"))).unwrap_or_else(|| base.to_string());
            let label = format!("hwmon {chip} {label}");
            // hwmon units: millidegrees, millivolts, milliamps, microwatts, RPM.
            if base.starts_with("temp") {
                push(d, "temperature", f, 0.001, 0.0, label, "°C");
            } else if base.starts_with("fan") {
                push(d, "number", f, 1.0, 0.0, label, "RPM");
            } else if base.starts_with("in") {
                push(d, "voltage", f, 0.001, 0.0, label, "V");
            } else if base.starts_with("curr") {
                push(d, "current", f, 0.001, 0.0, label, "A");
            } else if base.starts_with("power") {
                push(d, "power", f, 0.000_001, 0.0, label, "W");
            } else if base.starts_with("humidity") {
                push(d, "humidity", f, 0.001, 0.0, label, "%");
            }
        }
    }
}

fn thermal(sysfs: &Path, d: &mut Discovery) {
    for z in sorted_entries(&sysfs.join("class/thermal")) {
        if !file_name(&z).starts_with("thermal_zone") {
            continue;
        }
        let kind = read_trim(&z.join("type")).unwrap_or_default();
        let label = format!("thermal {} {kind}", file_name(&z));
        push(d, "temperature", z.join("temp"), 0.001, 0.0, label, "°C");
    }
}

fn iio(sysfs: &Path, d: &mut Discovery) {
    for dev in sorted_entries(&sysfs.join("bus/iio/devices")) {
        let devname = read_trim(&dev.join("name")).unwrap_or_else(|| file_name(&dev));
        for f in sorted_entries(&dev) {
            let name = file_name(&f);
            let Some(chan) = name.strip_suffix("_raw") else {
                continue;
            };
            // IIO: value = (raw + offset) * scale, per channel or shared by type.
            let shared = chan.split('_').take(2).collect::<Vec<_>>().join("_");
            let attr = |suffix: &str| {
                read_f64(&dev.join(format!("{chan}_{suffix}")))
                    .or_else(|| read_f64(&dev.join(format!("{shared}_{suffix}"))))
            };
            let scale = attr("scale").unwrap_or(1.0);
            let iio_offset = attr("offset").unwrap_or(0.0);
            let (ty, unit, unit_scale) = if chan.starts_with("in_temp") {
                ("temperature", "°C", 0.001) // millidegrees
            } else if chan.starts_with("in_humidityrelative") {
                ("humidity", "%", 0.001)
            } else if chan.starts_with("in_pressure") {
                ("pressure", "kPa", 1.0)
            } else if chan.starts_with("in_illuminance") {
                ("light", "lux", 1.0)
            } else if chan.starts_with("in_voltage") {
                ("voltage", "V", 0.001) // millivolts
            } else {
                ("number", "", 1.0)
            };
            let s = scale * unit_scale;
            push(
                d,
                ty,
                f,
                s,
                iio_offset * s,
                format!("iio {devname} {chan}"),
                unit,
            );
        }
    }
}

fn w1(sysfs: &Path, d: &mut Discovery) {
    let re = regex::Regex::new(r"t=(-?\d+)").expect("static regex");
    for dev in sorted_entries(&sysfs.join("bus/w1/devices")) {
        let name = file_name(&dev);
        // Family 28 (DS18B20), 10 (DS18S20), 22 (DS1822), 3b (MAX31850).
        if !["28-", "10-", "22-", "3b-"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let slave = dev.join("w1_slave");
        let value = std::fs::read_to_string(&slave)
            .ok()
            .and_then(|t| re.captures(&t).and_then(|c| c[1].parse::<f64>().ok()))
            .map(|raw| raw * 0.001);
        d.sensors.push(FoundSensor {
            sensor_type: "temperature".into(),
            path: slave,
            scale: 0.001,
            offset: 0.0,
            regex: Some(r"t=(-?\d+)".into()),
            label: format!("1-Wire {name}"),
            value,
            unit: "°C",
        });
    }
}

fn power_supply(sysfs: &Path, d: &mut Discovery) {
    for ps in sorted_entries(&sysfs.join("class/power_supply")) {
        let name = file_name(&ps);
        for (attr, ty, scale, unit) in [
            ("capacity", "battery", 1.0, "%"),
            ("voltage_now", "voltage", 0.000_001, "V"),
            ("current_now", "current", 0.000_001, "A"),
            ("temp", "temperature", 0.1, "°C"),
        ] {
            let p = ps.join(attr);
            if p.exists() {
                push(
                    d,
                    ty,
                    p,
                    scale,
                    0.0,
                    format!("power supply {name} {attr}"),
                    unit,
                );
            }
        }
    }
}

/// A table for people, as TOML comments, then ready-to-paste TOML.
pub fn render(d: &Discovery) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# thingplus-gw discover: {} sensor(s), {} LED(s)",
        d.sensors.len(),
        d.leds.len()
    );
    let _ = writeln!(o, "#");
    let _ = writeln!(o, "# {:<28} {:<12} {:>12}  path", "id", "type", "value");
    let ids = suggested_ids(d);
    for (s, id) in d.sensors.iter().zip(&ids) {
        let v = s.value.map_or("unreadable".to_string(), |v| {
            format!("{} {}", fmt_num(v), s.unit)
        });
        let _ = writeln!(
            o,
            "# {:<28} {:<12} {:>12}  {}  ({})",
            id,
            s.sensor_type,
            v,
            s.path.display(),
            s.label
        );
    }
    for l in &d.leds {
        let _ = writeln!(
            o,
            "# LED {:<24} brightness {:<6} {}",
            l.name,
            l.brightness.as_deref().unwrap_or("?"),
            l.path.display()
        );
    }
    for g in &d.gpio_chips {
        let _ = writeln!(o, "# GPIO chip {g}");
    }
    for s in &d.serial {
        let _ = writeln!(o, "# serial device {}", s.display());
    }
    let _ = writeln!(o);
    for (s, id) in d.sensors.iter().zip(&ids) {
        let _ = writeln!(o, "# {}", s.label);
        if s.value.is_none() {
            let _ = writeln!(o, "# (could not be read just now)");
        }
        let _ = writeln!(o, "[[sensor]]");
        let _ = writeln!(o, "id = \"{id}\"");
        let _ = writeln!(o, "type = \"{}\"", s.sensor_type);
        let _ = writeln!(o, "path = \"{}\"", toml_escape(&s.path.to_string_lossy()));
        if let Some(r) = &s.regex {
            let _ = writeln!(o, "regex = '{r}'");
        }
        // Display gives the shortest exact form, never an exponent.
        if s.scale != 1.0 {
            let _ = writeln!(o, "scale = {}", s.scale);
        }
        if s.offset != 0.0 {
            let _ = writeln!(o, "offset = {}", s.offset);
        }
        let _ = writeln!(o);
    }
    for (i, l) in d.leds.iter().enumerate() {
        let _ = writeln!(o, "[[actuator]]");
        let _ = writeln!(o, "id = \"{{gateway_id}}-led-{i}\"");
        let _ = writeln!(o, "type = \"led\"");
        let _ = writeln!(o, "path = \"{}\"", toml_escape(&l.path.to_string_lossy()));
        let _ = writeln!(o);
    }
    o
}

/// `{gateway_id}-{type}-{n}`, numbered per type.
pub fn suggested_ids(d: &Discovery) -> Vec<String> {
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    d.sensors
        .iter()
        .map(|s| {
            let n = counts.entry(s.sensor_type.as_str()).or_default();
            let id = format!("{{gateway_id}}-{}-{n}", s.sensor_type);
            *n += 1;
            id
        })
        .collect()
}

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = [
            PathBuf::from("temp10_input"),
            PathBuf::from("temp2_input"),
            PathBuf::from("temp1_input"),
        ];
        v.sort_by_key(|p| natural_key(p));
        assert_eq!(v[0], PathBuf::from("temp1_input"));
        assert_eq!(v[2], PathBuf::from("temp10_input"));
    }

    #[test]
    fn numbers_print_short() {
        assert_eq!(fmt_num(0.001), "0.001");
        assert_eq!(fmt_num(45.3), "45.3");
        assert_eq!(fmt_num(2.0), "2");
        assert_eq!(fmt_num(0.0), "0");
    }
}
