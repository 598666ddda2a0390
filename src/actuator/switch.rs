//! On/off outputs for `powerSwitch`: a GPIO line through the kernel's
//! character device, or a file that takes "1"/"0".

use std::io;
use std::path::{Path, PathBuf};

use gpiocdev::line::Value;

/// Something that can be switched on and off.
pub trait Output: Send + Sync {
    fn set(&self, on: bool) -> io::Result<()>;
    fn describe(&self) -> String;
}

/// A value file: a sysfs GPIO `value`, a relay driver attribute, any file.
pub struct ValueFile {
    path: PathBuf,
    active_low: bool,
}

impl ValueFile {
    pub fn new(path: &Path, active_low: bool) -> Self {
        ValueFile {
            path: path.to_path_buf(),
            active_low,
        }
    }
}

impl Output for ValueFile {
    fn set(&self, on: bool) -> io::Result<()> {
        let level = if on != self.active_low { "1" } else { "0" };
        std::fs::write(&self.path, level).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write {}: {e}", self.path.display()),
            )
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A GPIO line held as an output for as long as the daemon runs.
pub struct GpioLine {
    request: gpiocdev::Request,
    line: u32,
    chip: PathBuf,
}

impl GpioLine {
    /// Requests the line as an output, initially inactive (off).
    pub fn open(chip: &Path, line: u32, active_low: bool) -> Result<Self, String> {
        let mut b = gpiocdev::Request::builder();
        b.on_chip(chip)
            .with_consumer("thingplus-gw")
            .with_line(line)
            .as_output(Value::Inactive);
        if active_low {
            b.as_active_low();
        }
        let request = b.request().map_err(|e| {
            format!(
                "cannot request line {line} of {} as an output: {e}",
                chip.display()
            )
        })?;
        Ok(GpioLine {
            request,
            line,
            chip: chip.to_path_buf(),
        })
    }
}

impl Output for GpioLine {
    fn set(&self, on: bool) -> io::Result<()> {
        let v = if on { Value::Active } else { Value::Inactive };
        self.request.set_value(self.line, v).map_err(|e| {
            io::Error::other(format!(
                "cannot set line {} of {}: {e}",
                self.line,
                self.chip.display()
            ))
        })
    }

    fn describe(&self) -> String {
        format!("{} line {}", self.chip.display(), self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_file_and_active_low() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("value");
        let f = ValueFile::new(&p, false);
        f.set(true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1");
        f.set(false).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "0");
        let inv = ValueFile::new(&p, true);
        inv.set(true).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "0");
    }

    #[test]
    fn missing_gpio_chip_is_a_clear_error() {
        let e = GpioLine::open(Path::new("/dev/gpiochip-none"), 3, false)
            .err()
            .unwrap();
        assert!(e.contains("/dev/gpiochip-none"), "{e}");
    }
}
