//! sysfs LEDs (`/sys/class/leds/NAME`): `brightness`, `max_brightness`,
//! `trigger`, and `delay_on`/`delay_off` once the `timer` trigger is set.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Led {
    dir: PathBuf,
}

impl Led {
    pub fn new(dir: &Path) -> Self {
        Led {
            dir: dir.to_path_buf(),
        }
    }

    fn write(&self, attr: &str, value: &str) -> io::Result<()> {
        let p = self.dir.join(attr);
        std::fs::write(&p, value)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", p.display())))
    }

    fn max_brightness(&self) -> String {
        std::fs::read_to_string(self.dir.join("max_brightness"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s != "0")
            .unwrap_or_else(|| "1".to_string())
    }

    pub fn on(&self) -> io::Result<()> {
        self.write("trigger", "none")?;
        self.write("brightness", &self.max_brightness())
    }

    pub fn off(&self) -> io::Result<()> {
        self.write("trigger", "none")?;
        self.write("brightness", "0")
    }

    /// Blinks in hardware with the kernel `timer` trigger: on for
    /// `interval_ms`, off for `interval_ms`.
    pub fn blink(&self, interval_ms: u64) -> io::Result<()> {
        self.write("trigger", "timer")?;
        self.write("delay_on", &interval_ms.to_string())?;
        self.write("delay_off", &interval_ms.to_string())
    }

    /// Checks that the directory looks like an LED, for start-up warnings.
    pub fn check(&self) -> Result<(), String> {
        if self.dir.join("brightness").exists() {
            Ok(())
        } else {
            Err(format!(
                "{} has no brightness file: is it an LED directory under /sys/class/leds?",
                self.dir.display()
            ))
        }
    }
}
