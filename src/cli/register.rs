//! `thingplus-gw register`: create the configured devices, sensors and
//! actuators in Thing+ over its REST API.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::register::{api_url, apply, describe, plan, UreqHttp};

use super::EXIT_CONFIG;

pub fn run(config_path: &Path, dry_run: bool) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let base = match api_url(&config) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let gw = config.gateway.id.clone();
    let mut http = UreqHttp::new(&base, &gw, config.gateway.apikey.expose());
    let (planned, skipped) = match plan(&config, &mut http) {
        Ok(p) => (p.items, p.skipped),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", describe(&planned, &skipped));
    if dry_run {
        println!(
            "dry run: nothing was created ({} to create at {base})",
            planned.len()
        );
        return ExitCode::SUCCESS;
    }
    match apply(&planned, &mut http, &gw) {
        Ok(o) => {
            println!(
                "registered at {base}: {} created, {} already there, {} skipped",
                o.created.len(),
                o.existing.len(),
                skipped.len()
            );
            if skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
