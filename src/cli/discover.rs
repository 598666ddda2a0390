//! `thingplus-gw discover`: what this box exposes, as ready-to-paste TOML.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, DEFAULT_SYSFS_ROOT};

use super::EXIT_CONFIG;

/// `sysfs_root`: given on the command line; else the named configuration's
/// `[gateway] sysfs_root`; else /sys.
pub fn run(sysfs_root: Option<&Path>, config: Option<&Path>, dev_root: &Path) -> ExitCode {
    let sysfs_root = match (sysfs_root, config) {
        (Some(r), _) => r.to_path_buf(),
        (None, Some(c)) => match Config::load(c) {
            Ok(c) => c.gateway.sysfs_root,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => DEFAULT_SYSFS_ROOT.into(),
    };
    // Absolute paths, so the TOML works from any directory.
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let found = crate::discover::discover(&abs(&sysfs_root), &abs(dev_root));
    print!("{}", crate::discover::render(&found));
    if found.sensors.is_empty() && found.leds.is_empty() {
        eprintln!(
            "nothing found under {} (is it a sysfs tree?)",
            sysfs_root.display()
        );
    }
    ExitCode::SUCCESS
}
