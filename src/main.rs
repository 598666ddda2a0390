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
    /// Inspect the on-disk buffer, or export its readings to rescue them.
    Buffer {
        #[command(subcommand)]
        command: cli::buffer::BufferCommand,
    },
    /// Print the gateway id (works before an APIKEY is configured).
    Id {
        /// Take the MAC of this network interface.
        #[arg(long)]
        interface: Option<String>,
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
        Command::Buffer { command } => cli::buffer::run(&args.config, command),
        Command::Id { interface } => cli::id::run(&args.config, interface.as_deref()),
        #[cfg(feature = "demo")]
        Command::Demo { duration } => cli::demo::run(duration),
    }
}
