//! What this program is and where it runs: for `--version`, `swInfo` and
//! `thingplus-gw status`.

use serde_json::{json, Value as Json};

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The build id embedded by build.rs: `THINGPLUS_GW_BUILD_ID` at build time,
/// else the git commit of HEAD (uncommitted changes are not flagged), else
/// `unknown`.
pub const BUILD: &str = env!("THINGPLUS_GW_BUILD");

/// `0.1.0 (build a1b2c3d)`, as `--version` prints it.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (build ",
    env!("THINGPLUS_GW_BUILD"),
    ")"
);

/// The distribution's name from os-release (`PRETTY_NAME`), else "Linux".
pub fn os_name() -> String {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| pretty_name(&text))
        .unwrap_or_else(|| "Linux".to_string())
}

fn pretty_name(os_release: &str) -> Option<String> {
    let mut name = None;
    for line in os_release.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
        match k.trim() {
            "PRETTY_NAME" if !v.is_empty() => return Some(v),
            "NAME" if !v.is_empty() => name = Some(v),
            _ => {}
        }
    }
    name
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> Option<String> {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given; its fields are NUL-terminated.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

/// The `swInfo` answer.
pub fn sw_info() -> Json {
    json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": VERSION,
        "build": BUILD,
        "os": os_name(),
        "kernel": kernel_release().unwrap_or_default(),
        "arch": std::env::consts::ARCH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_names() {
        assert_eq!(
            pretty_name(
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
            )
            .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("NAME=Alpine\n").as_deref(), Some("Alpine"));
        assert_eq!(pretty_name("# nothing\n"), None);
    }

    #[test]
    fn build_id_is_embedded() {
        assert!(!BUILD.is_empty());
        assert!(LONG_VERSION.contains(BUILD));
        let info = sw_info();
        assert_eq!(info["build"], BUILD);
        assert!(!info["os"].as_str().unwrap().is_empty());
        assert!(!info["kernel"].as_str().unwrap().is_empty());
    }
}
