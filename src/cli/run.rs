//! `thingplus-gw run`: the daemon.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::daemon::{self, Control, Exit, StartError};

use super::{EXIT_CONFIG, EXIT_RESTART};

pub fn run(config_path: &Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::init(None);
            tracing::error!("configuration error: {e}");
            // Shown by `systemctl status` next to the exit code 78.
            let status = format!("configuration error: {e}");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init(config.log_level.as_deref());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(config, Control::new())) {
        Ok(Exit::Stopped) => ExitCode::SUCCESS,
        Ok(Exit::Restart) => ExitCode::from(EXIT_RESTART),
        Err(StartError::Config(e)) => {
            tracing::error!("configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
