//! File sensors: a sysfs attribute or any text file holding a value.

use std::path::Path;

use regex::Regex;

use crate::config::{SensorConfig, ValueType};
use crate::reading::Value;

/// Files larger than this are not sensor values; reading stops there.
const MAX_FILE_READ: u64 = 64 * 1024;

pub fn read(path: &Path, regex: Option<&Regex>, cfg: &SensorConfig) -> Result<Value, String> {
    let mut small = [0u8; SMALL_FILE];
    let mut big = Vec::new();
    let text = read_file(path, &mut small, &mut big)
        .and_then(|bytes| {
            std::str::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            })
        })
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(text, regex, cfg.value_type, cfg.scale, cfg.offset)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Files up to this size (every sysfs attribute holding a value) are read
/// into a buffer on the stack: sampling them does not touch the heap.
const SMALL_FILE: usize = 512;

/// The first `MAX_FILE_READ` bytes of the file at `path`, in `small` when
/// they fit, else in `big`. Reads until end of file, as `read_to_end` does.
fn read_file<'a>(
    path: &Path,
    small: &'a mut [u8; SMALL_FILE],
    big: &'a mut Vec<u8>,
) -> std::io::Result<&'a [u8]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < SMALL_FILE {
        match f.read(&mut small[n..]) {
            Ok(0) => return Ok(&small[..n]),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    big.extend_from_slice(&small[..]);
    f.take(MAX_FILE_READ - SMALL_FILE as u64).read_to_end(big)?;
    Ok(&big[..])
}

/// Turns file contents into a value: the regex's first group (or the whole
/// text), trimmed; numbers become `raw * scale + offset`, rounded for integer types.
pub fn parse(
    text: &str,
    regex: Option<&Regex>,
    value_type: ValueType,
    scale: f64,
    offset: f64,
) -> Result<Value, String> {
    let raw = match regex {
        Some(re) => re
            .captures(text)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str())
            .ok_or_else(|| format!("the regex {} does not match {}", re.as_str(), excerpt(text)))?,
        None => text,
    }
    .trim();
    match value_type {
        ValueType::Text => Ok(Value::Text(raw.to_string())),
        ValueType::Number | ValueType::Integer => {
            let n: f64 = raw
                .parse()
                .map_err(|_| format!("not a number: {}", excerpt(raw)))?;
            number_value(n, value_type, scale, offset)
                .map_err(|_| format!("not a finite number: {}", excerpt(raw)))
        }
    }
}

/// A raw number as a value: `raw * scale + offset`, rounded for integer
/// types, as text for text types. Shared by every source that reads numbers.
pub fn number_value(
    raw: f64,
    value_type: ValueType,
    scale: f64,
    offset: f64,
) -> Result<Value, String> {
    let v = raw * scale + offset;
    if !v.is_finite() {
        return Err(format!("not a finite number: {raw}"));
    }
    Ok(match value_type {
        ValueType::Integer => Value::Number(v.round()),
        // Drop binary noise such as 45.300000000000004 from raw * 0.001.
        ValueType::Number => Value::Number(round_sig(v)),
        ValueType::Text => Value::Text(Value::Number(round_sig(v)).to_json_string()),
    })
}

/// Rounds to 12 significant digits.
fn round_sig(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let digits = 12 - v.abs().log10().ceil() as i32;
    if !(0..=300).contains(&digits) {
        return v;
    }
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn excerpt(s: &str) -> String {
    let mut e: String = s.trim().chars().take(40).collect();
    if s.trim().chars().count() > 40 {
        e.push('…');
    }
    format!("{e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_millidegrees() {
        let v = parse("45300\n", None, ValueType::Number, 0.001, 0.0).unwrap();
        assert_eq!(v, Value::Number(45.3));
    }

    #[test]
    fn regex_first_group_w1_style() {
        let re = Regex::new(r"t=(-?\d+)").unwrap();
        let text = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        let v = parse(text, Some(&re), ValueType::Number, 0.001, 0.0).unwrap();
        assert_eq!(v, Value::Number(23.125));
        let e = parse("crc=00 NO", Some(&re), ValueType::Number, 1.0, 0.0).unwrap_err();
        assert!(e.contains("does not match"));
    }

    #[test]
    fn integers_are_rounded_and_offset_applies() {
        let v = parse("41.6", None, ValueType::Integer, 1.0, 0.0).unwrap();
        assert_eq!(v, Value::Number(42.0));
        let v = parse("10", None, ValueType::Number, 2.0, -1.5).unwrap();
        assert_eq!(v, Value::Number(18.5));
    }

    #[test]
    fn text_is_kept() {
        let v = parse("  Charging\n", None, ValueType::Text, 1.0, 0.0).unwrap();
        assert_eq!(v, Value::Text("Charging".into()));
    }

    fn text_sensor(path: &Path) -> SensorConfig {
        SensorConfig {
            id: "t".into(),
            sensor_type: "string".into(),
            source: crate::config::SensorSource::File {
                path: path.to_path_buf(),
                regex: None,
            },
            value_type: ValueType::Text,
            scale: 1.0,
            offset: 0.0,
            interval: None,
            event: false,
        }
    }

    #[test]
    fn reads_stop_at_64_kib() {
        // A file that never ends: one bounded read, not an endless one.
        let cfg = text_sensor(Path::new("/dev/zero"));
        let Value::Text(t) = read(Path::new("/dev/zero"), None, &cfg).unwrap() else {
            panic!("a text sensor gives text");
        };
        assert_eq!(t.len() as u64, MAX_FILE_READ);
        // A larger file: its first 64 KiB only.
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(1 << 20)).unwrap();
        let Value::Text(t) = read(&big, None, &text_sensor(&big)).unwrap() else {
            panic!("a text sensor gives text");
        };
        assert_eq!(t.len() as u64, MAX_FILE_READ);
    }

    #[test]
    fn files_small_large_and_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut small, mut big) = ([0u8; SMALL_FILE], Vec::new());
        for len in [0, 1, SMALL_FILE - 1, SMALL_FILE, SMALL_FILE + 1, 10_000] {
            let p = dir.path().join(format!("f{len}"));
            let content: Vec<u8> = (0..len).map(|i| b'0' + (i % 10) as u8).collect();
            std::fs::write(&p, &content).unwrap();
            big.clear();
            assert_eq!(read_file(&p, &mut small, &mut big).unwrap(), &content[..]);
        }
        let p = dir.path().join("huge");
        std::fs::write(&p, vec![b'7'; MAX_FILE_READ as usize + 100]).unwrap();
        big.clear();
        let got = read_file(&p, &mut small, &mut big).unwrap();
        assert_eq!(got.len(), MAX_FILE_READ as usize);
        let e = read_file(&dir.path().join("missing"), &mut small, &mut big).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        // Not text: the same words as `read_to_string` used to give.
        let p = dir.path().join("binary");
        std::fs::write(&p, [0xff, 0xfe, b'1']).unwrap();
        let std_error = std::fs::read_to_string(&p).unwrap_err();
        let cfg = crate::config::Config::parse(
            &format!(
                "[gateway]\nid = \"gw\"\napikey = \"k\"\n[[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"{}\"\n",
                p.display()
            ),
            Path::new("/t.toml"),
        )
        .unwrap();
        let e = read(&p, None, &cfg.sensors[0]).unwrap_err();
        assert_eq!(e, format!("cannot read {}: {std_error}", p.display()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("abc", None, ValueType::Number, 1.0, 0.0)
            .unwrap_err()
            .contains("not a number"));
        assert!(parse("", None, ValueType::Number, 1.0, 0.0).is_err());
        assert!(parse("inf", None, ValueType::Number, 1.0, 0.0).is_err());
    }
}
