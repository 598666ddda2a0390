//! The configuration loader: any text gives a configuration or an error
//! with a position, never a panic. (`id = "auto"` reads this machine's
//! NICs, as it would in the daemon.)
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use thingplus_gw::config::{Config, MAX_CONFIG_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_CONFIG_SIZE {
        return; // Config::load refuses these before parsing
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return; // Config::load refuses these before parsing
    };
    // A directory that does not exist: relative apikey_file paths find nothing.
    match Config::parse(
        text,
        Path::new("/nonexistent/thingplus-gw-fuzz/config.toml"),
    ) {
        Ok(c) => {
            // What `check` prints must not panic either.
            let described = thingplus_gw::cli::check::describe(&c);
            assert!(!c.gateway.apikey.expose().is_empty());
            let _ = described;
        }
        Err(e) => {
            if let Some((line, col)) = e.position {
                assert!(line >= 1 && col >= 1, "{e}");
            }
            let _ = e.to_string();
        }
    }
});
