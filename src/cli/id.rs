//! `thingplus-gw id`: print the gateway id. Works before an APIKEY exists,
//! since the id is what the portal asks for to issue one.

use std::path::Path;
use std::process::ExitCode;

use crate::gateway_id;
use crate::small_file::SmallFileError;

use super::EXIT_CONFIG;

pub fn run(config_path: &Path, interface: Option<&str>) -> ExitCode {
    // Only [gateway] id and interface matter here; the rest may be incomplete.
    let read = crate::small_file::read_text(config_path, crate::config::MAX_CONFIG_SIZE);
    let (id, cfg_interface) = match read {
        Ok((text, _)) => match text.parse::<toml::Table>() {
            Ok(t) => {
                let g = t.get("gateway").and_then(|g| g.as_table());
                let get = |k: &str| {
                    g.and_then(|g| g.get(k))
                        .and_then(|v| v.as_str())
                        .map(String::from)
                };
                (get("id"), get("interface"))
            }
            Err(e) => {
                eprintln!("error: {}: {}", config_path.display(), e.message());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        // No configuration (yet, or not readable by this user): the id
        // comes from the interface.
        Err(SmallFileError::Io(_)) => (None, None),
        Err(e) => {
            eprintln!("error: {}: {e}", config_path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let interface = interface.map(String::from).or(cfg_interface);
    match id.filter(|i| i != "auto") {
        Some(id) if gateway_id::is_valid_id(&id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Some(id) => {
            eprintln!(
                "error: invalid gateway id \"{id}\" in {}: use only letters, digits and - _ . ~",
                config_path.display()
            );
            ExitCode::from(EXIT_CONFIG)
        }
        None => match gateway_id::auto_id(interface.as_deref()) {
            Ok(id) => {
                println!("{id}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}
