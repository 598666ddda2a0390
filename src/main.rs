use std::process::ExitCode;

use clap::Parser;
use thingplus_gw::cli;
use thingplus_gw::cli::args::{Args, Command};

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Run => cli::run::run(&args.config),
        Command::Check => cli::check::run(&args.config),
        Command::Id { interface } => cli::id::run(&args.config, interface.as_deref()),
        Command::Discover {
            sysfs_root,
            dev_root,
        } => cli::discover::run(&sysfs_root, &dev_root),
        #[cfg(feature = "demo")]
        Command::Demo { duration } => cli::demo::run(duration),
    }
}
