//! The command line, as clap sees it. It lives in the library (not in
//! `main.rs`) so that the man page and the shell completions are generated
//! from this very definition (`cargo run --example gen-docs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_PATH;

/// Thing+ gateway: sensors on this box to the Thing+ cloud over MQTT.
#[derive(Parser, Debug)]
#[command(
    name = "thingplus-gw",
    version = crate::version::LONG_VERSION,
    about,
    long_about = "Thing+ gateway daemon: reads sensors from sysfs files and serial ports, \
keeps every reading in a crash-safe buffer on disk and delivers it over MQTT to the \
Thing+ cloud. It answers the platform's commands (time sync, report interval, actuators, \
device management). Under systemd, `thingplus-gw run` is started by thingplus-gw.service; \
`systemctl reload thingplus-gw` (SIGHUP) re-reads the configuration."
)]
pub struct Args {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = DEFAULT_PATH, env = "THINGPLUS_GW_CONFIG")]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (what systemd starts).
    Run,
    /// Validate the configuration and print what it resolves to.
    Check,
    /// Inspect the on-disk buffer, or export its readings to rescue them.
    Buffer {
        #[command(subcommand)]
        command: crate::cli::buffer::BufferCommand,
    },
    /// Print the gateway id (works before an APIKEY is configured).
    Id {
        /// Take the MAC of this network interface.
        #[arg(long)]
        interface: Option<String>,
    },
    /// Ask the running daemon how it is (exit 0 healthy, 1 unhealthy, 2 unreachable).
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket; default $RUNTIME_DIRECTORY/control.sock
        /// or /run/thingplus-gw/control.sock.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Create this gateway's devices, sensors and actuators in Thing+ over
    /// its REST API (idempotent).
    Register {
        /// Show what would be created, create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the sensors and LEDs this box exposes in sysfs, with current
    /// values, as ready-to-paste TOML.
    Discover {
        /// Where sysfs is (another tree for tests and containers). Default:
        /// `[gateway] sysfs_root` of the configuration when --config (or
        /// THINGPLUS_GW_CONFIG) is given, else /sys.
        #[arg(long)]
        sysfs_root: Option<PathBuf>,
        /// Where /dev is (for /dev/serial/by-id).
        #[arg(long, default_value = "/dev")]
        dev_root: PathBuf,
    },
    /// Run the whole pipeline on this box against an embedded broker and a
    /// simulated Thing+ cloud: no account, no network.
    #[cfg(feature = "demo")]
    Demo {
        /// Stop after this long (such as "30s"); default: until Ctrl-C.
        #[arg(long, value_parser = crate::units::parse_duration)]
        duration: Option<std::time::Duration>,
    },
}

impl Args {
    /// The clap command, for generating the man page and completions.
    pub fn command() -> clap::Command {
        <Args as clap::CommandFactory>::command()
    }

    /// Parses the process arguments; also says whether the configuration
    /// was named (--config or THINGPLUS_GW_CONFIG) rather than defaulted.
    pub fn parse_with_source() -> (Args, bool) {
        use clap::FromArgMatches;
        let matches = Self::command().get_matches();
        let named = matches
            .value_source("config")
            .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue);
        match Args::from_arg_matches(&matches) {
            Ok(a) => (a, named),
            Err(e) => e.exit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
