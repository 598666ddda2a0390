//! Reading a whole file that must be small (configuration, key, CA, state):
//! at most the limit plus one byte whatever the file is, and only a regular
//! file. A FIFO or a device named by mistake neither hangs the daemon (the
//! file is opened without blocking, then checked) nor fills its memory.

use std::fmt;
use std::fs::Metadata;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a small file could not be read.
#[derive(Debug)]
pub enum SmallFileError {
    /// Opening or reading failed.
    Io(std::io::Error),
    /// Not a regular file: what it is instead ("a FIFO (named pipe)", ...).
    NotRegular(&'static str),
    /// Larger than the limit: its size when known (a regular file growing
    /// while read may have more than its size said).
    TooLarge { limit: u64, size: u64 },
}

impl SmallFileError {
    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SmallFileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

impl fmt::Display for SmallFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmallFileError::Io(e) => write!(f, "cannot read it: {e}"),
            SmallFileError::NotRegular(kind) => {
                write!(f, "it is {kind}, not a regular file")
            }
            SmallFileError::TooLarge { limit, size } => {
                write!(f, "the file is {size} bytes; the limit is {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SmallFileError {}

/// What a file that is not a regular file is, in words.
fn kind_of(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// Reads the regular file at `path` if it has at most `limit` bytes,
/// reading no more than `limit + 1` whatever it is. Symbolic links are
/// followed; what they lead to is checked.
pub fn read(path: &Path, limit: u64) -> Result<(Vec<u8>, Metadata), SmallFileError> {
    // O_NONBLOCK: opening a FIFO with no writer returns at once (then it is
    // refused as a FIFO); it changes nothing for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(SmallFileError::Io)?;
    let meta = file.metadata().map_err(SmallFileError::Io)?;
    if let Some(kind) = kind_of(&meta) {
        return Err(SmallFileError::NotRegular(kind));
    }
    if meta.len() > limit {
        return Err(SmallFileError::TooLarge {
            limit,
            size: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(SmallFileError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(SmallFileError::TooLarge {
            limit,
            size: bytes.len() as u64,
        });
    }
    Ok((bytes, meta))
}

/// [`read`] as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> Result<(String, Metadata), SmallFileError> {
    let (bytes, meta) = read(path, limit)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        SmallFileError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    Ok((text, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_up_to_the_limit_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read(&p, 5).unwrap().0, b"12345");
        let e = read(&p, 4).unwrap_err();
        assert!(
            matches!(e, SmallFileError::TooLarge { limit: 4, size: 5 }),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "the file is 5 bytes; the limit is 4 bytes");
        let e = read(dir.path(), 100).unwrap_err();
        assert_eq!(e.to_string(), "it is a directory, not a regular file");
        let e = read(&dir.path().join("none"), 100).unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        std::fs::write(&p, b"\xff\xfe").unwrap();
        let e = read_text(&p, 100).unwrap_err();
        assert!(e.to_string().contains("valid UTF-8"), "{e}");
    }

    #[test]
    fn devices_and_fifos_are_refused_without_reading_or_blocking() {
        let e = read(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a character device, not a regular file"
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: a blocking open would never return.
        let e = read(&fifo, 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is a FIFO (named pipe), not a regular file"
        );
    }
}
