//! The configuration loader: any text gives a configuration or an error
//! with a position, never a panic. It parses for a made-up machine
//! ([`FakeHost`]): `id = "auto"` picks among its NICs, `apikey_file` finds
//! its one key file, and nothing of the machine running the fuzzer is read.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use thingplus_gw::config::{Config, FakeHost, Group, KeyFileAccess, MAX_CONFIG_SIZE};

/// The configuration's path: relative paths resolve under its directory.
const CONFIG_PATH: &str = "/etc/thingplus-gw/config.toml";

fn host() -> &'static FakeHost {
    static HOST: OnceLock<FakeHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let group = |gid, name: &str| Group {
            gid,
            name: Some(name.to_string()),
        };
        let mut host = FakeHost {
            nics: vec![
                ("lo".to_string(), [0; 6]),
                ("docker0".to_string(), [0x02, 0x42, 1, 2, 3, 4]),
                ("eth0".to_string(), [0xb8, 0x27, 0xeb, 0, 0, 1]),
            ],
            ..FakeHost::default()
        };
        host.secrets.insert(
            PathBuf::from("/etc/thingplus-gw/apikey"),
            (
                "fuzz-apikey\n".to_string(),
                KeyFileAccess {
                    mode: 0o640,
                    file_group: group(4, "adm"),
                    service_group: Some(group(997, "thingplus-gw")),
                    caller_group: group(0, "root"),
                    caller_is_root: true,
                },
            ),
        );
        host.env
            .insert("STATE_DIRECTORY".into(), "/var/lib/thingplus-gw:/x".into());
        host.dirs.insert(PathBuf::from("/sys"));
        host.dirs.insert(PathBuf::from("/etc/thingplus-gw/sys"));
        host
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_CONFIG_SIZE {
        return; // Config::load refuses these before parsing
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return; // Config::load refuses these before parsing
    };
    match Config::parse_with(text, Path::new(CONFIG_PATH), host()) {
        Ok(c) => {
            // What `check` prints must not panic either.
            let described = thingplus_gw::cli::check::describe(&c);
            assert!(!c.gateway.apikey.expose().is_empty());
            assert!(!described.contains("fuzz-apikey"), "{described}");
        }
        Err(e) => {
            if let Some((line, col)) = e.position {
                assert!(line >= 1 && col >= 1, "{e}");
            }
            let _ = e.to_string();
        }
    }
});
