//! The daemon's control socket: `thingplus-gw status` connects to it in the
//! runtime directory and reads one JSON report. Mode 0660: root and the
//! service group only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::actuator::ActuatorStates;
use crate::buffer::Buffer;
use crate::clock::{system_now_ms, Clock};
use crate::rpc::{LastCommand, SwUpdateCell, SwUpdateReport};
use crate::session::LinkState;
use crate::status_board::StatusBoard;

pub const SOCKET_NAME: &str = "control.sock";
const DEFAULT_RUNTIME_DIR: &str = "/run/thingplus-gw";

/// Where the socket lives: `$RUNTIME_DIRECTORY` (systemd's RuntimeDirectory=)
/// or /run/thingplus-gw.
pub fn default_path() -> PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .map(|s| {
            let s = s.to_string_lossy().into_owned();
            PathBuf::from(s.split(':').next().unwrap_or_default())
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
    dir.join(SOCKET_NAME)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SensorReport {
    pub id: String,
    pub status: String,
    pub value: Option<serde_json::Value>,
    pub time_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BacklogReport {
    /// Readings not yet acknowledged by the broker.
    pub pending: u64,
    /// Size of the buffer's store: its SQLite database and WAL files on
    /// disk, free pages included, so not the size of the pending readings
    /// (the in-memory store's bytes when the disk buffer is unusable).
    /// Named `bytes` before; an older daemon's report still reads.
    #[serde(alias = "bytes")]
    pub store_bytes: u64,
    pub oldest_ms: Option<i64>,
    pub dropped: u64,
    /// Set when the disk buffer cannot be used: why (readings are then kept
    /// in memory only and lost at the next restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_only: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub gateway_id: String,
    pub version: String,
    /// The build id (git commit or packager's id), see `version::BUILD`.
    #[serde(default)]
    pub build: String,
    pub now_ms: i64,
    pub broker: String,
    pub connected: bool,
    pub since_ms: i64,
    pub last_error: Option<String>,
    pub retry_at_ms: Option<i64>,
    pub delivered: u64,
    pub last_delivery_ms: Option<i64>,
    pub report_interval_ms: u64,
    pub backlog: Option<BacklogReport>,
    pub sensors: Vec<SensorReport>,
    pub actuators: Vec<(String, String)>,
    pub last_command: Option<serde_json::Value>,
    pub clock_offset_ms: i64,
    /// How far the time is trusted (see `clock::ClockState`).
    pub clock: String,
    pub clock_trusted: bool,
    /// Readings held until the time is known.
    pub clock_held: usize,
    /// The last software update (`swUpdate`) since the daemon started.
    #[serde(default)]
    pub sw_update: Option<SwUpdateReport>,
}

impl StatusReport {
    /// Healthy: connected, the time trusted, and every sensor reading.
    pub fn healthy(&self) -> bool {
        self.connected && self.clock_trusted && self.sensors.iter().all(|s| s.error.is_none())
    }
}

/// Everything the report is made from.
#[derive(Clone)]
pub struct Sources {
    pub gateway_id: String,
    pub broker: String,
    pub link: watch::Receiver<LinkState>,
    pub buffer: Buffer,
    pub board: Arc<StatusBoard>,
    pub actuators: ActuatorStates,
    pub last_command: Arc<Mutex<Option<LastCommand>>>,
    pub sw_update: SwUpdateCell,
    pub clock: Arc<Clock>,
    pub report_interval: watch::Receiver<Duration>,
}

impl Sources {
    pub async fn report(&self) -> StatusReport {
        let link = self.link.borrow().clone();
        let backlog = self.buffer.stats().await.ok().map(|s| BacklogReport {
            pending: s.pending,
            store_bytes: s.bytes,
            oldest_ms: s.oldest_ms,
            dropped: s.dropped,
            memory_only: s.memory_only,
        });
        StatusReport {
            gateway_id: self.gateway_id.clone(),
            version: crate::version::VERSION.to_string(),
            build: crate::version::BUILD.to_string(),
            now_ms: system_now_ms(),
            broker: self.broker.clone(),
            connected: link.connected,
            since_ms: link.since_ms,
            last_error: link.last_error,
            retry_at_ms: link.retry_at_ms,
            delivered: link.delivered,
            last_delivery_ms: link.last_delivery_ms,
            report_interval_ms: self.report_interval.borrow().as_millis() as u64,
            backlog,
            sensors: self
                .board
                .snapshot()
                .into_iter()
                .map(|s| SensorReport {
                    id: s.id,
                    status: s.status.to_string(),
                    value: s.last_value.map(|v| v.to_json()),
                    time_ms: s.last_time_ms,
                    error: s.error,
                })
                .collect(),
            actuators: self.actuators.snapshot(),
            last_command: self
                .last_command
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .and_then(|c| serde_json::to_value(c).ok()),
            clock_offset_ms: self.clock.offset_ms(),
            clock: self.clock.describe(),
            clock_trusted: self.clock.state() != crate::clock::ClockState::Untrusted,
            clock_held: self.clock.held(),
            sw_update: self
                .sw_update
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Binds the socket (replacing a stale one) and answers each connection
/// with a report. Errors are logged: the daemon runs without it.
pub async fn serve(path: PathBuf, sources: Sources) {
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "control socket unavailable: `thingplus-gw status` will not reach this daemon");
            return;
        }
    };
    tracing::debug!(path = %path.display(), "control socket listening");
    // Removed when this task ends (it is aborted at shutdown), and only by
    // the daemon that bound it.
    let _unlink = Unlink(path.clone());
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let report = sources.report().await;
            let mut bytes = serde_json::to_vec(&report).unwrap_or_default();
            bytes.push(b'\n');
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&bytes)).await;
        });
    }
}

struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a daemon that died; a live one would answer.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

/// Asks a running daemon for its report (blocking; used by the CLI).
pub fn query(path: &Path, timeout: Duration) -> std::io::Result<StatusReport> {
    use std::io::Read;
    let s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = Vec::new();
    s.take(16 << 20).read_to_end(&mut buf)?;
    serde_json::from_slice(&buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
