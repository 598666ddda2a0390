//! Settings the cloud changes that must survive a restart, kept as JSON
//! under the state directory and replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest saved state read: it is a few dozen bytes.
pub const MAX_STATE_FILE_SIZE: u64 = 64 << 10;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Set by `setProperty reportInterval`; overrides the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_interval_ms: Option<u64>,
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Self {
        StateFile {
            path: state_dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the saved state; a missing file is the default, a broken one is
    /// reported and ignored (the daemon must start).
    pub fn load(&self) -> PersistedState {
        match crate::small_file::read(&self.path, MAX_STATE_FILE_SIZE) {
            Ok((bytes, _)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring unreadable saved state");
                PersistedState::default()
            }),
            Err(e) if e.is_not_found() => PersistedState::default(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read saved state {}: {e}", self.path.display());
                PersistedState::default()
            }
        }
    }

    /// Writes to a temporary file, syncs it, then renames it over the old one.
    pub fn save(&self, state: &PersistedState) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).expect("state serializes"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        assert_eq!(f.load(), PersistedState::default());
        let s = PersistedState {
            report_interval_ms: Some(120_000),
        };
        f.save(&s).unwrap();
        assert_eq!(f.load(), s);
        std::fs::write(f.path(), b"garbage").unwrap();
        assert_eq!(f.load(), PersistedState::default());
    }
}
