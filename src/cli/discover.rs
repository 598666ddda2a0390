//! `thingplus-gw discover`: what this box exposes, as ready-to-paste TOML.

use std::path::Path;
use std::process::ExitCode;

use crate::config::DEFAULT_SYSFS_ROOT;

use super::EXIT_CONFIG;

/// `sysfs_root`: given on the command line; else the named configuration's
/// `[gateway] sysfs_root` (only that line is read: the rest of the file
/// may still be unfinished); else /sys.
///
/// With a root from the configuration, the paths printed are `/sys/...`
/// paths, as that configuration wants them (the daemon reads them under its
/// root); with `--sysfs-root` they are the paths in that tree.
pub fn run(sysfs_root: Option<&Path>, config: Option<&Path>, dev_root: &Path) -> ExitCode {
    let (sysfs_root, as_sys) = match (sysfs_root, config) {
        (Some(r), _) => (r.to_path_buf(), false),
        (None, Some(c)) => match crate::config::read_sysfs_root(c) {
            Ok(Some(r)) => (r, true),
            Ok(None) => (DEFAULT_SYSFS_ROOT.into(), false),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => (DEFAULT_SYSFS_ROOT.into(), false),
    };
    // Absolute paths, so the TOML works from any directory.
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let root = abs(&sysfs_root);
    let mut found = crate::discover::discover(&root, &abs(dev_root));
    if as_sys {
        found.as_sys_paths(&root);
    }
    print!("{}", crate::discover::render(&found));
    if found.sensors.is_empty() && found.leds.is_empty() {
        eprintln!(
            "nothing found under {} (is it a sysfs tree?)",
            sysfs_root.display()
        );
    }
    ExitCode::SUCCESS
}
