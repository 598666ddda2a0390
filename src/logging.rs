//! Log output. Under systemd (stderr is the journal stream named by
//! `JOURNAL_STREAM`) events go to journald natively, with their fields as
//! journal fields (`sensor_id` becomes `SENSOR_ID`, so
//! `journalctl -u thingplus-gw SENSOR_ID=...` works); otherwise readable lines
//! on stderr. The level comes from `RUST_LOG` when set, else from the config's
//! `[log] level`, else `info`; a reload can change the latter.
//!
//! Nothing here ever sees the APIKEY: it is a [`crate::config::Secret`],
//! whose `Debug` is redacted, and no event logs it.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Journald,
    Stderr,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty())
}

fn filter_for(level: Option<&str>) -> EnvFilter {
    match rust_log() {
        Some(s) => EnvFilter::new(s),
        None => EnvFilter::new(level.unwrap_or("info")),
    }
}

/// Installs the global subscriber. `level` is the config's `[log] level`;
/// `RUST_LOG` wins when set. Returns where the logs go.
pub fn init(level: Option<&str>) -> Output {
    let (filter, handle) = reload::Layer::new(filter_for(level));
    let journald = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(l) => Some(
                l.with_field_prefix(None)
                    .with_syslog_identifier("thingplus-gw".into()),
            ),
            Err(e) => {
                eprintln!("thingplus-gw: cannot log to journald ({e}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    let output = match journald {
        Some(layer) => {
            let _ = registry.with(layer).try_init();
            Output::Journald
        }
        None => {
            // SAFETY: isatty only inspects the descriptor number.
            let ansi = unsafe { libc::isatty(2) == 1 };
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_target(false);
            let _ = registry.with(fmt).try_init();
            Output::Stderr
        }
    };
    let _ = FILTER.set(handle);
    output
}

/// Applies a new `[log] level` (after a reload). `RUST_LOG`, when set, still wins.
pub fn set_level(level: Option<&str>) {
    if let Some(h) = FILTER.get() {
        if let Err(e) = h.reload(filter_for(level)) {
            tracing::warn!(error = %e, "cannot change the log level");
        }
    }
}

/// True when stderr is the journal stream systemd connected us to: the
/// `JOURNAL_STREAM` variable ("device:inode") names stderr's own file. A
/// child that inherited the variable but whose stderr was redirected (a
/// terminal, a file, a pipe) logs plain lines instead.
pub fn stderr_is_journal() -> bool {
    match std::env::var("JOURNAL_STREAM") {
        Ok(v) => journal_stream_matches(&v, 2),
        Err(_) => false,
    }
}

fn journal_stream_matches(value: &str, fd: libc::c_int) -> bool {
    let Some((dev, ino)) = value.trim().split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: a zeroed `stat` is a valid out-parameter (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes; a bad `fd` only makes fstat fail.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn journal_stream_is_compared_with_the_fd() {
        let f = tempfile::tempfile().unwrap();
        let m = f.metadata().unwrap();
        let fd = f.as_raw_fd();
        assert!(journal_stream_matches(
            &format!("{}:{}", m.dev(), m.ino()),
            fd
        ));
        assert!(!journal_stream_matches(
            &format!("{}:{}", m.dev(), m.ino() + 1),
            fd
        ));
        assert!(!journal_stream_matches("garbage", fd));
        assert!(!journal_stream_matches("1:", fd));
    }
}
