use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use thingplus_gw::cli;
use thingplus_gw::config::DEFAULT_PATH;

/// Thing+ gateway: sensors on this box to the Thing+ cloud over MQTT.
#[derive(Parser)]
#[command(name = "thingplus-gw", version, about)]
struct Args {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = DEFAULT_PATH, env = "THINGPLUS_GW_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (what systemd starts).
    Run,
    /// Validate the configuration and print what it resolves to.
    Check,
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
        /// Where sysfs is (another tree for tests and containers).
        #[arg(long, default_value = "/sys")]
        sysfs_root: PathBuf,
        /// Where /dev is (for /dev/serial/by-id).
        #[arg(long, default_value = "/dev")]
        dev_root: PathBuf,
    },
    /// Run the whole pipeline on this box against an embedded broker and a
    /// simulated Thing+ cloud: no account, no network.
    #[cfg(feature = "demo")]
    Demo {
        /// Stop after this long (such as "30s"); default: until Ctrl-C.
        #[arg(long, value_parser = thingplus_gw::units::parse_duration)]
        duration: Option<std::time::Duration>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Run => cli::run::run(&args.config),
        Command::Check => cli::check::run(&args.config),
        Command::Id { interface } => cli::id::run(&args.config, interface.as_deref()),
        Command::Status { json, socket } => cli::status::run(
            &socket.unwrap_or_else(thingplus_gw::control_socket::default_path),
            json,
        ),
        Command::Register { dry_run } => cli::register::run(&args.config, dry_run),
        Command::Discover {
            sysfs_root,
            dev_root,
        } => cli::discover::run(&sysfs_root, &dev_root),
        #[cfg(feature = "demo")]
        Command::Demo { duration } => cli::demo::run(duration),
    }
}
