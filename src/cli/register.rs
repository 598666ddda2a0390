//! `thingplus-gw register`: create the configured devices, sensors and
//! actuators in Thing+ over its REST API, those it does not have yet.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::register::{api_url, apply, describe, describe_step, plan, UreqHttp};

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
    let plan = match plan(&config, &mut http) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let missing = plan.to_create().count();
    if dry_run {
        print!("{}", describe(&plan));
        println!(
            "dry run: nothing was created ({missing} to create, {} existing, {} cannot be registered, at {base})",
            plan.items.len() - missing,
            plan.failed.len()
        );
        if let Some(r) = plan.refusal.as_ref().filter(|_| missing > 0) {
            eprintln!("warning: {r}: a real run would create nothing");
        }
        return ExitCode::SUCCESS;
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
    if let Some(r) = plan.refusal.as_ref().filter(|_| missing > 0) {
        for p in plan.items.iter().filter(|p| p.exists) {
            println!("existed {:<8} {}", p.what, p.id);
        }
        for (id, why) in &plan.failed {
            println!("FAILED  {id}: {why}");
        }
        eprintln!("error: {r} ({missing} to create)");
        return ExitCode::FAILURE;
    }
    for (id, why) in &plan.failed {
        println!("FAILED  {id}: {why}");
    }
    let outcome = apply(&plan.items, &mut http, &gw, &mut |p, step| {
        println!("{}", describe_step(p, step))
    });
    match outcome {
        Ok(o) => {
            let failed = o.failed.len() + plan.failed.len();
            println!(
                "registered at {base}: {} created, {} existed, {failed} failed",
                o.created.len(),
                o.existed.len(),
            );
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e} (what was created before is listed above)");
            ExitCode::FAILURE
        }
    }
}
