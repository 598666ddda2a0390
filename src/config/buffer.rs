//! `[buffer]`: where the disk buffer is, how large it may grow, how often it syncs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::units::ByteSize;

use super::error::Ctx;
use super::ConfigError;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuffer {
    dir: Option<PathBuf>,
    max_size: Option<ByteSize>,
    fsync: Option<Spanned<String>>,
    min_free: Option<Spanned<String>>,
}

/// How often appended readings are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Period(Duration),
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BufferConfig {
    pub dir: PathBuf,
    pub max_size: u64,
    pub fsync: Fsync,
    /// Free space kept on the buffer's filesystem, in percent.
    pub min_free_percent: f64,
}

pub(super) fn buffer_from_raw(
    b: RawBuffer,
    state_dir: &Path,
    ctx: &Ctx,
) -> Result<BufferConfig, ConfigError> {
    let fsync = match &b.fsync {
        None => Fsync::Period(Duration::from_secs(1)),
        Some(s) => match s.get_ref().as_str() {
            "always" => Fsync::Always,
            "never" => Fsync::Never,
            other => match crate::units::parse_duration(other) {
                Ok(d) if !d.is_zero() => Fsync::Period(d),
                _ => {
                    return Err(ctx.err_at(
                        s.span(),
                        format!("invalid fsync \"{other}\": expected \"always\", \"never\" or a period such as \"1s\""),
                    ))
                }
            },
        },
    };
    let min_free_percent = match &b.min_free {
        None => 5.0,
        Some(s) => {
            let t = s.get_ref().trim();
            match t
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
            {
                Some(p) if (0.0..100.0).contains(&p) => p,
                _ => {
                    return Err(ctx.err_at(
                        s.span(),
                        format!("invalid min_free \"{t}\": expected a percentage such as \"5%\""),
                    ))
                }
            }
        }
    };
    Ok(BufferConfig {
        dir: b.dir.unwrap_or_else(|| state_dir.join("buffer")),
        max_size: b.max_size.map_or(256 << 20, |s| s.0),
        fsync,
        min_free_percent,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn fsync_min_free_and_dir() {
        let c = parse(&format!(
            "{MIN}[buffer]\nfsync = \"250ms\"\nmin_free = \" 2.5 %\"\nmax_size = \"1MiB\"\n"
        ))
        .unwrap();
        assert_eq!(c.buffer.fsync, Fsync::Period(Duration::from_millis(250)));
        assert_eq!(c.buffer.min_free_percent, 2.5);
        assert_eq!(c.buffer.max_size, 1 << 20);
        assert_eq!(c.buffer.dir, Path::new("/var/lib/thingplus-gw/buffer"));
        for (word, fsync) in [("always", Fsync::Always), ("never", Fsync::Never)] {
            let c = parse(&format!("{MIN}[buffer]\nfsync = \"{word}\"\n")).unwrap();
            assert_eq!(c.buffer.fsync, fsync);
        }
        let c = parse(&format!("{MIN}[buffer]\ndir = \"/data/q\"\n")).unwrap();
        assert_eq!(c.buffer.dir, Path::new("/data/q"));
        assert_eq!(c.buffer.min_free_percent, 5.0);
    }

    #[test]
    fn bad_fsync_and_min_free_are_named_at_their_place() {
        for (keys, message) in [
            (
                "fsync = \"0s\"",
                "invalid fsync \"0s\": expected \"always\", \"never\" or a period such as \"1s\"",
            ),
            ("fsync = \"sometimes\"", "invalid fsync \"sometimes\""),
            (
                "min_free = \"5\"",
                "invalid min_free \"5\": expected a percentage such as \"5%\"",
            ),
            ("min_free = \"100%\"", "invalid min_free \"100%\""),
        ] {
            let e = parse(&format!("{MIN}[buffer]\n{keys}\n")).unwrap_err();
            assert!(e.message.starts_with(message), "{e}");
            assert_eq!(e.position.map(|p| p.0), Some(5), "{e}");
        }
    }
}
