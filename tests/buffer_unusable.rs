//! A buffer path the daemon cannot use: `buffer.db` replaced by a
//! directory, made unreadable (mode 000), or on a filesystem where not even
//! a new file can be made. The first two are moved aside and a new store is
//! started; the last is named in a clear error and `status` shows the
//! buffer as memory-only.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use thingplus_gw::buffer::sqlite::{SqliteOptions, SqliteStore, DB_FILE};
use thingplus_gw::buffer::Store;
use thingplus_gw::config::Fsync;
use thingplus_gw::reading::{Reading, Value};

fn opts() -> SqliteOptions {
    SqliteOptions::unbounded(Fsync::Period(Duration::from_secs(1)))
}

fn moved_aside(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".unusable-"))
        .collect();
    v.sort();
    v
}

fn assert_works(store: &mut SqliteStore) {
    let r = Reading::new("gw-t-0", 1_700_000_000_000, Value::Number(1.5));
    store.append(vec![r.clone()]).unwrap();
    store.commit().unwrap();
    assert_eq!(store.read(0, 10).unwrap()[0].reading, r);
}

#[test]
fn a_directory_in_place_of_the_database_is_moved_aside_and_a_new_store_started() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join(DB_FILE)).unwrap();
    fs::write(tmp.path().join(DB_FILE).join("something"), "kept").unwrap();
    let mut store = SqliteStore::open(tmp.path(), opts()).expect("a new store");
    let moved = moved_aside(tmp.path());
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        fs::read_to_string(moved[0].join("something")).unwrap(),
        "kept"
    );
    assert_eq!(store.recoveries()[0].moved_to, moved[0]);
    assert!(tmp.path().join(DB_FILE).is_file());
    assert_works(&mut store);
}

/// Linux capabilities of the calling thread (capget/capset, version 3).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// Runs `f` on this thread without the capabilities that let root ignore
/// file modes, as the daemon runs under a service user.
fn without_root_file_access<T>(f: impl FnOnce() -> T) -> T {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) },
        0
    );
    let saved = d;
    d[0].effective &= !((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH));
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) },
        0,
        "capset: {}",
        std::io::Error::last_os_error()
    );
    let out = f();
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capset, &mut h, saved.as_ptr()) },
        0
    );
    out
}

#[test]
fn an_unreadable_database_is_moved_aside_and_a_new_store_started() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut s = SqliteStore::open(tmp.path(), opts()).unwrap();
        assert_works(&mut s);
    }
    let db = tmp.path().join(DB_FILE);
    fs::set_permissions(&db, fs::Permissions::from_mode(0o000)).unwrap();
    without_root_file_access(|| {
        assert!(
            fs::File::open(&db).is_err(),
            "mode 000 holds for this thread"
        );
        let mut store = SqliteStore::open(tmp.path(), opts()).expect("a new store");
        let moved = moved_aside(tmp.path());
        assert_eq!(moved.len(), 1, "{moved:?}");
        assert_eq!(store.stats().unwrap().pending, 0);
        assert_works(&mut store);
    });
}

#[test]
fn a_buffer_that_cannot_even_be_moved_aside_is_named_and_status_shows_memory_only() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let buffer = dir.path().join("buffer");
    fs::create_dir(&buffer).unwrap();
    let config = dir.path().join("config.toml");
    fs::write(&config, config_text(dir.path(), broker.port, "", "")).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    // The buffer directory is a read-only filesystem: nothing can be made
    // or renamed in it, not even by root.
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o ro,size=1m tmpfs '{}' && exec '{}' run --config '{}'",
            buffer.display(),
            bin(),
            config.display()
        ))
        .env("RUNTIME_DIRECTORY", dir.path().join("run"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let v = wait_status_json(dir.path(), "the buffer shown as memory-only", |v| {
        v["backlog"]["memory_only"].is_string()
    });
    let why = v["backlog"]["memory_only"].as_str().unwrap().to_string();
    assert!(why.contains(&buffer.display().to_string()), "{why}");
    assert!(why.contains("Read-only file system"), "{why}");
    let socket = dir.path().join("run/control.sock");
    let (_, human, _) = run_cli(&["status", "--socket", socket.to_str().unwrap()]);
    assert!(human.contains("MEMORY ONLY"), "{human}");
    assert!(human.contains(&buffer.display().to_string()), "{human}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child.wait().unwrap();
    assert!(
        log.contains("the disk buffer cannot be used")
            && log.contains(&buffer.display().to_string()),
        "{log}"
    );
}
