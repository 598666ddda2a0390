//! Real pseudo-terminals for serial tests: the test holds the master side
//! (the "instrument"), the daemon opens the slave path as its device.
#![allow(dead_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A pty whose slave is in raw mode from the start (so nothing is echoed or
/// translated before the daemon configures it). The test keeps a slave fd
/// open, so bytes written before the daemon opens the device wait for it.
pub struct Pty {
    master: File,
    _slave: OwnedFd,
    pub path: PathBuf,
}

impl Pty {
    pub fn open() -> Pty {
        // SAFETY: plain libc calls on fds this function owns; every result is checked.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
            let master = File::from_raw_fd(m);
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
            let path = PathBuf::from(CStr::from_ptr(name.as_ptr()).to_str().unwrap());
            let s = libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(
                s >= 0,
                "open {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            let slave = OwnedFd::from_raw_fd(s);
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(s, &mut t), 0);
            libc::cfmakeraw(&mut t);
            assert_eq!(libc::tcsetattr(s, libc::TCSANOW, &t), 0);
            Pty {
                master,
                _slave: slave,
                path,
            }
        }
    }

    /// Writes to the device's input (blocks while its buffer is full).
    pub fn write(&self, bytes: &[u8]) {
        (&self.master).write_all(bytes).unwrap();
    }

    pub fn writer(&self) -> File {
        self.master.try_clone().unwrap()
    }

    /// Reads what the daemon wrote, up to `n` bytes ending with `until`, or
    /// fails after `timeout`.
    pub fn read_until(&self, until: &[u8], timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(until) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "nothing ending with {until:?} within {timeout:?}; got {got:?}"
            );
            if wait_readable(&self.master, left) {
                let n = (&self.master).read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        }
        got
    }
}

fn wait_readable(f: &File, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0
}

/// Points `link` at `target`, replacing what was there (a "plug").
pub fn plug(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Removes `link` (an "unplug").
pub fn unplug(link: &Path) {
    std::fs::remove_file(link).unwrap();
}

/// NMEA sentence with its checksum.
pub fn nmea(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}\r\n")
}

// ---------------------------------------------------------------- in-process daemon pieces

use std::sync::Arc;

use thingplus_gw::buffer::{Buffer, MemoryStore};
use thingplus_gw::clock::Clock;
use thingplus_gw::config::{Config, Fsync};
use thingplus_gw::reading::{Reading, Value};
use thingplus_gw::sensor::SensorRuntime;
use thingplus_gw::status_board::{SensorState, StatusBoard};
use tokio::sync::{watch, Notify};

/// A generous bound for anything the tests wait for: the machine is shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// Parses a config made of a minimal gateway and `body`.
pub fn config(body: &str) -> Config {
    let text = format!("[gateway]\nid = \"gw\"\napikey = \"k\"\nreport_interval = \"60s\"\n{body}");
    Config::parse(&text, Path::new("/test/config.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// What sensor tasks need, with an in-memory buffer the test reads back.
pub struct Rt {
    pub rt: SensorRuntime,
    pub report_interval: watch::Sender<Duration>,
}

impl Rt {
    pub fn new(config: &Config) -> Rt {
        let (tx, rx) = watch::channel(config.gateway.report_interval);
        Rt {
            rt: SensorRuntime {
                buffer: Buffer::start(MemoryStore::new(64 << 20), Fsync::Never),
                clock: Arc::new(Clock::new()),
                board: Arc::new(StatusBoard::new(
                    config.sensors.iter().map(|s| s.id.clone()),
                )),
                flush: Arc::new(Notify::new()),
                report_interval: rx,
            },
            report_interval: tx,
        }
    }

    pub fn clone_rt(&self) -> SensorRuntime {
        self.rt.clone()
    }

    /// Every reading so far, in buffer order.
    pub async fn readings(&self) -> Vec<Reading> {
        self.rt
            .buffer
            .read(0, usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.reading)
            .collect()
    }

    pub async fn values(&self, id: &str) -> Vec<Value> {
        self.readings()
            .await
            .into_iter()
            .filter(|r| &*r.sensor_id == id)
            .map(|r| r.value)
            .collect()
    }

    pub fn state(&self, id: &str) -> SensorState {
        self.rt
            .board
            .snapshot()
            .into_iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no sensor {id}"))
    }

    /// Waits until sensor `id` has a reading equal to `v`.
    pub async fn wait_value(&self, id: &str, v: Value) {
        let what = format!("{id} = {v:?}");
        eventually(&what, async || {
            self.values(id).await.contains(&v).then_some(())
        })
        .await
    }

    /// Waits until sensor `id` is `err` with an error containing every needle.
    pub async fn wait_error(&self, id: &str, needles: &[&str]) -> String {
        let what = format!("{id} err with {needles:?}");
        eventually(&what, async || {
            let e = self.state(id).error?;
            needles.iter().all(|n| e.contains(n)).then_some(e)
        })
        .await
    }
}

/// Polls `f` until it gives something, or panics after [`WAIT`] with the last state.
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn num(n: f64) -> Value {
    Value::Number(n)
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}
