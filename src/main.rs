use std::process::ExitCode;

use thingplus_gw::cli;
use thingplus_gw::cli::args::{Args, Command};

fn main() -> ExitCode {
    let (args, config_named) = Args::parse_with_source();
    match args.command {
        Command::Run => cli::run::run(&args.config),
        Command::Check => cli::check::run(&args.config),
        Command::Buffer { command } => cli::buffer::run(&args.config, command),
        Command::Id { interface } => cli::id::run(&args.config, interface.as_deref()),
        Command::Status { json, socket } => cli::status::run(
            &socket.unwrap_or_else(thingplus_gw::control_socket::default_path),
            json,
        ),
        Command::Register { dry_run } => cli::register::run(&args.config, dry_run),
        Command::Discover {
            sysfs_root,
            dev_root,
        } => cli::discover::run(
            sysfs_root.as_deref(),
            config_named.then_some(args.config.as_path()),
            &dev_root,
        ),
        #[cfg(feature = "demo")]
        Command::Demo { duration } => cli::demo::run(duration),
    }
}
