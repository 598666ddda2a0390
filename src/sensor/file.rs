//! File sensors: a sysfs attribute or any text file holding a value.

use std::path::Path;

use regex::Regex;

use crate::config::SensorConfig;
use crate::reading::Value;
// The conversions, also found here (the benchmarks use `file::number_value`).
pub use crate::sensor::convert::{number_value, parse};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValueType;

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
        // Not text: the same words as `read_to_string` gives.
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
}
