//! `thingplus-gw discover`: what this box exposes, as ready-to-paste TOML.

use std::path::Path;
use std::process::ExitCode;

pub fn run(sysfs_root: &Path, dev_root: &Path) -> ExitCode {
    // Absolute paths, so the TOML works from any directory.
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let found = crate::discover::discover(&abs(sysfs_root), &abs(dev_root));
    print!("{}", crate::discover::render(&found));
    if found.sensors.is_empty() && found.leds.is_empty() {
        eprintln!(
            "nothing found under {} (is it a sysfs tree?)",
            sysfs_root.display()
        );
    }
    ExitCode::SUCCESS
}
