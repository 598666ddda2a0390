//! Log output: readable lines on stderr, level from `RUST_LOG` or the config.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is the config's `[log] level`;
/// `RUST_LOG` wins when set.
pub fn init(level: Option<&str>) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::new(s),
        _ => EnvFilter::new(level.unwrap_or("info")),
    };
    let ansi = unsafe { libc::isatty(2) == 1 };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}
