//! Fault tests of the disk buffer on real files: damaged databases, a lost
//! WAL, the size bounds, two users of one directory, and the operator's
//! `buffer check` / `buffer export`.

mod common;

use common::with_logs;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thingplus_gw::buffer::sqlite::{
    self, wal_path, OpenError, SqliteOptions, SqliteStore, DB_FILE,
};
use thingplus_gw::buffer::{Buffer, BufferOptions, Store};
use thingplus_gw::config::Fsync;
use thingplus_gw::reading::{Reading, Value};

const BIN: &str = env!("CARGO_BIN_EXE_thingplus-gw");

fn opts() -> SqliteOptions {
    SqliteOptions::unbounded(Fsync::Period(Duration::from_secs(1)))
}

fn reading(i: u64) -> Reading {
    let sensor = ["gw-temp-0", "gw-hum-0", "gw-loc-0"][(i % 3) as usize];
    let value = match i % 3 {
        0 => Value::Number(20.0 + (i % 100) as f64 * 0.25),
        1 => Value::Number((i % 100) as f64),
        _ => Value::Json(serde_json::json!({"lat": 37.5, "lng": 127.0 + (i % 10) as f64})),
    };
    Reading::new(sensor, 1_700_000_000_000 + i as i64, value)
}

fn fill(store: &mut SqliteStore, range: std::ops::Range<u64>) {
    let all: Vec<Reading> = range.map(reading).collect();
    for chunk in all.chunks(1000) {
        store.append(chunk.to_vec()).unwrap();
    }
    store.commit().unwrap();
}

fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.contains(".corrupt-") && !name.ends_with("-wal")
        })
        .collect();
    v.sort();
    v
}

fn pending(store: &mut SqliteStore) -> u64 {
    store.stats().unwrap().pending
}

/// After a recovery the store must work normally.
fn assert_usable(store: &mut SqliteStore) {
    let before = pending(store);
    store.append(vec![reading(9_999_999)]).unwrap();
    store.commit().unwrap();
    assert_eq!(pending(store), before + 1);
    let all = store.read(0, usize::MAX).unwrap();
    assert_eq!(all.last().unwrap().reading, reading(9_999_999));
}

#[test]
fn garbage_database_is_moved_aside_and_a_new_one_started() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(tmp.path().join(DB_FILE), &garbage).unwrap();
    let (store, logs) = with_logs(|| SqliteStore::open(tmp.path(), opts()));
    let mut store = store.expect("a corrupt database must not stop the store");
    let moved = corrupt_files(tmp.path());
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        fs::read(&moved[0]).unwrap(),
        garbage,
        "the old file is kept as it was"
    );
    let rec = &store.recoveries()[0];
    assert_eq!(rec.moved_to, moved[0]);
    assert!(logs.contains("unreadable"), "{logs}");
    assert!(logs.contains(&moved[0].display().to_string()), "{logs}");
    assert!(logs.contains("buffer export --db"), "{logs}");
    assert_eq!(pending(&mut store), 0);
    assert_usable(&mut store);
}

#[test]
fn truncated_database_is_moved_aside_and_export_rescues_the_readable_part() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    fill(&mut store, 0..60_000);
    drop(store); // a clean close checkpoints everything into buffer.db
    assert!(!wal_path(&tmp.path().join(DB_FILE)).exists());
    let db = tmp.path().join(DB_FILE);
    let len = fs::metadata(&db).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let (store, logs) = with_logs(|| SqliteStore::open(tmp.path(), opts()));
    let mut store = store.expect("a truncated database must not stop the store");
    let moved = corrupt_files(tmp.path());
    assert_eq!(moved.len(), 1, "{moved:?}\n{logs}");
    assert!(logs.contains("unreadable"), "{logs}");
    assert_usable(&mut store);

    // The operator rescues what can be read.
    let out = Command::new(BIN)
        .args(["buffer", "export", "--db"])
        .arg(&moved[0])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty(), "nothing rescued: {stderr}");
    assert!(lines.len() < 60_000, "{stderr}");
    assert!(stderr.contains("could not be read"), "{stderr}");
    assert!(
        !out.status.success(),
        "a partial export says so in its exit status"
    );
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    for l in &lines {
        let i = l["seq"].as_u64().unwrap() - 1;
        assert_eq!(l["time"].as_i64().unwrap(), reading(i).time_ms);
        assert_eq!(l["sensor"].as_str().unwrap(), &*reading(i).sensor_id);
    }
}

#[test]
fn a_deleted_wal_after_a_crash_loses_only_what_was_not_checkpointed() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let crashed = tmp.path().join("crashed");
    let mut store = SqliteStore::open(&live, opts()).unwrap();
    fill(&mut store, 0..1000);
    store.sync().unwrap(); // checkpoint: these are in buffer.db
    fill(&mut store, 1000..1500); // committed, in the WAL only
    assert!(wal_path(&live.join(DB_FILE)).exists());
    // The process dies; then someone deletes the WAL (and leaves the -shm).
    fs::create_dir_all(&crashed).unwrap();
    for name in [DB_FILE, "buffer.db-shm"] {
        fs::copy(live.join(name), crashed.join(name)).unwrap();
    }
    drop(store);

    let mut store = SqliteStore::open(&crashed, opts()).expect("opens without its WAL");
    assert!(store.recoveries().is_empty());
    assert_eq!(pending(&mut store), 1000);
    let all = store.read(0, usize::MAX).unwrap();
    assert_eq!(all.last().unwrap().reading, reading(999));
    assert_usable(&mut store);
}

#[test]
fn a_wal_deleted_under_a_running_store_breaks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    fill(&mut store, 0..1000);
    fs::remove_file(wal_path(&tmp.path().join(DB_FILE))).unwrap();
    fill(&mut store, 1000..2000);
    store.sync().unwrap();
    assert_eq!(pending(&mut store), 2000);
    drop(store);
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    // SQLite kept writing to the deleted file and checkpointed it at close.
    assert_eq!(pending(&mut store), 2000);
    assert_usable(&mut store);
}

#[test]
fn corruption_found_while_running_is_recovered_and_seqs_keep_growing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    fill(&mut store, 0..100_000);
    drop(store);
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    let next = store.next_seq();
    // Damage leaf pages at the start of the queue, long out of the page cache.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join(DB_FILE))
        .unwrap();
    f.seek(SeekFrom::Start(8 * 4096)).unwrap();
    f.write_all(&vec![0xA5; 40 * 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let (got, logs) = with_logs(|| store.read(0, usize::MAX));
    let got = got.expect("the read is answered from a new database");
    assert_eq!(store.recoveries().len(), 1, "{logs}");
    let rec = store.recoveries()[0].clone();
    // Rebuilt from what could be read: the readable chunks are kept, as
    // they were, in order; what was lost is counted and said.
    assert!(rec.kept_readings > 50_000, "{rec:?}\n{logs}");
    assert_eq!(got.len() as u64, rec.kept_readings);
    assert_eq!(rec.lost_readings, Some(100_000 - rec.kept_readings));
    assert!(
        logs.contains(&format!(
            "{} readings kept. Lost: {} pending readings",
            rec.kept_readings,
            100_000 - rec.kept_readings
        )),
        "{logs}"
    );
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    for s in &got {
        assert_eq!(s.reading, reading(s.seq - 1));
    }
    assert_eq!(got.last().unwrap().seq, 100_000, "the newest survive");
    assert_eq!(corrupt_files(tmp.path()).len(), 1);
    assert_eq!(store.stats().unwrap().dropped, 100_000 - rec.kept_readings);
    store.append(vec![reading(5)]).unwrap();
    assert!(store.read(0, usize::MAX).unwrap().last().unwrap().seq >= next);
    assert_usable(&mut store);
}

#[test]
fn size_bound_drops_the_oldest_counts_them_logs_once_and_reuses_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let options = SqliteOptions {
        max_size: max,
        ..opts()
    };
    let n = 200_000u64;
    let (mut store, logs) = with_logs(|| {
        let mut store = SqliteStore::open(tmp.path(), options.clone()).unwrap();
        for start in (0..n).step_by(5000) {
            fill(&mut store, start..start + 5000);
            store.sync().unwrap();
        }
        store
    });
    let db = tmp.path().join(DB_FILE);
    let size = fs::metadata(&db).unwrap().len();
    assert!(size <= max + max / 8, "the file grew to {size} bytes");
    let stats = store.stats().unwrap();
    assert!(stats.dropped > 0);
    assert_eq!(stats.pending + stats.dropped, n);
    let all = store.read(0, usize::MAX).unwrap();
    assert_eq!(all.len() as u64, stats.pending);
    // The oldest went first: what is left is the newest, without holes.
    assert_eq!(all[0].seq, stats.dropped + 1);
    assert_eq!(all.last().unwrap().seq, n);
    assert_eq!(logs.matches("buffer full").count(), 1, "{logs}");
    assert!(logs.contains("max_size 1 MiB reached"), "{logs}");

    // The uplink comes back: everything is delivered, the episode ends with its count.
    let ((), logs) = with_logs(|| {
        store.ack(0..u64::MAX).unwrap();
        fill(&mut store, n..n + 10);
        store.commit().unwrap();
    });
    assert!(
        logs.contains(&format!(
            "{} of the oldest readings were dropped",
            stats.dropped
        )),
        "{logs}"
    );
    drop(store);
    let report = sqlite::inspect(&db, false).unwrap();
    assert_eq!(
        report.dropped,
        Some(stats.dropped),
        "the count survives a restart"
    );
    assert!(report.free_pages > 0, "freed pages are kept for reuse");
}

#[test]
fn below_the_free_space_floor_the_file_stops_growing_and_sampling_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    // Whatever this filesystem has free, it is below a 99.999 % floor.
    let options = SqliteOptions {
        min_free_percent: 99.999,
        ..opts()
    };
    let (mut store, logs) = with_logs(|| {
        let mut store = SqliteStore::open(tmp.path(), options).unwrap();
        for start in (0..100_000u64).step_by(2000) {
            fill(&mut store, start..start + 2000);
        }
        store.sync().unwrap();
        store
    });
    let size = fs::metadata(tmp.path().join(DB_FILE)).unwrap().len();
    assert!(size <= 96 * 4096, "the file grew to {size} bytes");
    let stats = store.stats().unwrap();
    assert!(stats.dropped > 50_000, "{stats:?}");
    assert_eq!(stats.pending + stats.dropped, 100_000);
    let all = store.read(0, usize::MAX).unwrap();
    assert_eq!(all.last().unwrap().reading, reading(99_999));
    assert!(logs.contains("free on the filesystem"), "{logs}");
    assert_eq!(logs.matches("buffer full").count(), 1, "{logs}");
}

#[test]
fn a_second_store_on_the_same_directory_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = SqliteStore::open(tmp.path(), opts()).unwrap();
    let err = SqliteStore::open(tmp.path(), opts())
        .err()
        .expect("must be refused");
    assert!(
        matches!(err, OpenError::Locked { pid: Some(p), .. } if p == std::process::id()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&tmp.path().display().to_string()), "{text}");
    assert!(
        text.contains("in use by another thingplus-gw process"),
        "{text}"
    );
}

fn daemon_config(dir: &Path, buffer_dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("config.toml");
    fs::write(
        &path,
        format!(
            "[gateway]\nid = \"gwtest\"\napikey = \"k\"\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = false\n\
             [buffer]\ndir = \"{}\"\n",
            dir.join("state").display(),
            buffer_dir.display()
        ),
    )
    .unwrap();
    path
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `count()` reaches `target`; fails when it has not grown for
/// `stall`, saying where it stopped.
fn wait_for_progress(what: &str, target: u64, stall: Duration, mut count: impl FnMut() -> u64) {
    let mut seen = count();
    let mut since = Instant::now();
    while seen < target {
        assert!(
            since.elapsed() < stall,
            "timed out waiting for {what}: stuck at {seen} for {stall:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
        let now = count();
        if now > seen {
            seen = now;
            since = Instant::now();
        }
    }
}

#[test]
fn a_second_daemon_on_the_same_directory_exits_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let buffer_dir = tmp.path().join("buffer");
    // Port 1: nothing listens; the daemons run offline.
    let config = daemon_config(tmp.path(), &buffer_dir, 1);
    let mut first = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    wait_for(
        "the first daemon to lock the buffer",
        Duration::from_secs(20),
        || sqlite::lock_holder(&buffer_dir) == Some(Some(pid)),
    );
    let second = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains(&format!(
            "in use by another thingplus-gw process (pid {pid})"
        )),
        "{stderr}"
    );
    assert!(
        status.success(),
        "the first daemon stops cleanly: {status:?}"
    );
}

#[test]
fn check_and_export_describe_and_rescue_the_buffer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    fill(&mut store, 0..3000);
    store.ack(1..101).unwrap(); // the first 100 were delivered
    store.commit().unwrap();

    // While the store is open, as under a running daemon.
    let out = Command::new(BIN)
        .args(["buffer", "check", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("rows             "), "{text}");
    assert!(text.contains("pending readings 2900"), "{text}");
    assert!(text.contains("integrity_check  ok"), "{text}");
    assert!(
        text.contains(&format!(
            "daemon           running (pid {})",
            std::process::id()
        )),
        "{text}"
    );
    assert!(text.contains("sensor gw-loc-0: 967 pending"), "{text}");
    assert!(text.contains("oldest           "), "{text}");
    drop(store);

    let file = tmp.path().join("export.jsonl");
    let out = Command::new(BIN)
        .args(["buffer", "export", "--dir"])
        .arg(tmp.path())
        .arg("--output")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2900);
    for (k, l) in lines.iter().enumerate() {
        let i = 100 + k as u64;
        let r = reading(i);
        assert_eq!(l["seq"].as_u64(), Some(i + 1));
        assert_eq!(l["sensor"].as_str(), Some(&*r.sensor_id));
        assert_eq!(l["time"].as_i64(), Some(r.time_ms));
        assert_eq!(Value::from_json(l["value"].clone()), r.value);
    }

    let out = Command::new(BIN)
        .args(["buffer", "check", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("daemon           not running"), "{text}");
}

#[test]
fn check_reports_a_damaged_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    fill(&mut store, 0..30_000);
    drop(store);
    let db = tmp.path().join(DB_FILE);
    let mut f = fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(SeekFrom::Start(20 * 4096)).unwrap();
    f.write_all(&vec![0x5A; 3 * 4096]).unwrap();
    drop(f);
    let out = Command::new(BIN)
        .args(["buffer", "check", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("integrity_check"), "{text}");
    assert!(!text.contains("integrity_check  ok"), "{text}");
}

#[tokio::test]
async fn an_oversized_value_is_rejected_at_append_and_never_blocks_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(tmp.path(), opts()).unwrap();
    let buffer = Buffer::start_with(
        store,
        BufferOptions {
            fsync: Fsync::Period(Duration::from_secs(1)),
            max_reading_bytes: Some(1024),
        },
    );
    let big = Reading::new("gw-text-0", 2, Value::Text("x".repeat(2000)));
    buffer.append(vec![reading(0), big, reading(1)]);
    let got = buffer.read(0, 10).await.unwrap();
    assert_eq!(
        got.iter().map(|s| s.reading.clone()).collect::<Vec<_>>(),
        vec![reading(0), reading(1)]
    );
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn appends_are_committed_by_the_policy_of_each_mode() {
    // (mode, readings appended, readings that must get committed without a close)
    for (fsync, n, committed) in [
        (Fsync::Always, 500, 500),
        (Fsync::Period(Duration::from_millis(200)), 500, 500),
        (Fsync::Never, 500, 500),
        // A long period: the count of waiting readings triggers commits.
        (Fsync::Period(Duration::from_secs(3600)), 20_000, 16_384),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path(), SqliteOptions::unbounded(fsync)).unwrap();
        let buffer = Buffer::start(store, fsync);
        for c in (0..n).collect::<Vec<u64>>().chunks(100) {
            buffer.append(c.iter().map(|i| reading(*i)).collect());
        }
        let db = tmp.path().join(DB_FILE);
        // Another connection sees only committed rows. The limit is on a
        // stall, not on the whole wait: under emulation (qemu-user) the
        // 20 000 appends take longer than 10 s while still committing.
        wait_for_progress(
            &format!("{committed} committed readings ({fsync:?})"),
            committed,
            Duration::from_secs(10),
            || sqlite::inspect(&db, false).unwrap().pending.unwrap_or(0),
        );
        buffer.close().await.unwrap();
        // Closed means committed and unlocked: the directory opens again at once.
        let mut again = SqliteStore::open(tmp.path(), opts()).unwrap();
        assert_eq!(pending(&mut again), n, "{fsync:?}");
    }
}

/// A child spawned by another thread holds a copy of the lock's descriptor
/// until its exec; reopening the store in that moment must wait it out, not
/// report the directory as taken by "another" process.
#[test]
fn a_lock_held_for_a_moment_by_this_process_is_waited_for() {
    use std::os::unix::io::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(tmp.path(), opts()).unwrap());
    // Stand-in for the inherited copy: this process locks the file itself
    // (it names this pid, as the store wrote it) and lets go from a thread.
    let lock = fs::File::open(tmp.path().join("buffer.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    // The store reads the lock file only after its flock failed (to learn
    // who holds it): inotify's IN_ACCESS on that read is the event that the
    // open has met the held lock, and only then is it let go.
    let lock_path = std::ffi::CString::new(
        tmp.path()
            .join("buffer.lock")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: plain inotify calls on a descriptor this test owns.
    let watch = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    assert!(
        watch >= 0,
        "inotify_init1: {}",
        std::io::Error::last_os_error()
    );
    assert!(
        unsafe { libc::inotify_add_watch(watch, lock_path.as_ptr(), libc::IN_ACCESS) } >= 0,
        "inotify_add_watch: {}",
        std::io::Error::last_os_error()
    );
    let releaser = std::thread::spawn(move || {
        let mut event = [0u8; 256];
        let mut ready = libc::pollfd {
            fd: watch,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll and read on the inotify descriptor into a local buffer.
        let polled = unsafe { libc::poll(&mut ready, 1, 30_000) };
        let read = (polled == 1)
            .then(|| unsafe { libc::read(watch, event.as_mut_ptr().cast(), event.len()) });
        drop(lock);
        unsafe { libc::close(watch) };
        read.is_some_and(|n| n > 0)
    });
    let store = SqliteStore::open(tmp.path(), opts());
    let open_met_the_lock = releaser.join().unwrap();
    assert!(
        open_met_the_lock,
        "the open never read the lock file, so it never found the lock held"
    );
    assert!(store.is_ok(), "{:?}", store.err());
    let pid = fs::read_to_string(tmp.path().join("buffer.lock")).unwrap();
    assert_eq!(pid, format!("{}\n", std::process::id()));
}

/// A chunk as the first release wrote it (codec version 1), by hand.
fn chunk_v1(records: &[(u64, i64, i64, &str)]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let zigzag = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
    let (seq0, _, t0, _) = records[0];
    let mut out = vec![1];
    varint(&mut out, seq0);
    varint(&mut out, zigzag(t0));
    for &(seq, sensor, t, value) in records {
        varint(&mut out, seq - seq0);
        varint(&mut out, sensor as u64);
        varint(&mut out, zigzag(t - t0));
        varint(&mut out, value.len() as u64);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

#[test]
fn a_buffer_of_the_first_schema_is_upgraded_in_place_and_drains_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000i64;
    {
        let c = rusqlite::Connection::open(tmp.path().join(DB_FILE)).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE chunks(last_seq INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);
             CREATE TABLE sensors(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_t INTEGER NOT NULL);
             CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             PRAGMA application_id=1414547287;
             PRAGMA user_version=1;",
        )
        .unwrap();
        c.execute(
            "INSERT INTO sensors VALUES (1, 'gw-temp-0', ?1), (2, 'gw-loc-0', ?2)",
            rusqlite::params![t0 + 2, t0 + 3],
        )
        .unwrap();
        let a = chunk_v1(&[(1, 1, t0, "20.5"), (2, 2, t0 + 1, r#"{"lat":1}"#)]);
        let b = chunk_v1(&[(3, 1, t0 + 2, "21"), (4, 2, t0 + 3, r#""a,b""#)]);
        c.execute(
            "INSERT INTO chunks VALUES (2, 1, 2, ?1), (4, 3, 2, ?2)",
            rusqlite::params![a, b],
        )
        .unwrap();
        c.execute("INSERT INTO meta VALUES ('next_seq', 5)", [])
            .unwrap();
    }
    let old = |i: usize| {
        let values = [
            Value::Number(20.5),
            Value::Json(serde_json::json!({"lat": 1})),
            Value::Number(21.0),
            Value::Text("a,b".into()),
        ];
        let sensor = ["gw-temp-0", "gw-loc-0"][i % 2];
        Reading::new(sensor, t0 + i as i64, values[i].clone())
    };
    let (store, logs) = with_logs(|| SqliteStore::open(tmp.path(), opts()));
    let mut store = store.unwrap();
    assert!(
        logs.contains("upgraded from schema 1 to schema 3"),
        "{logs}"
    );
    let got: Vec<_> = store.read(0, 100).unwrap();
    assert_eq!(
        got.iter()
            .map(|s| (s.seq, s.reading.clone()))
            .collect::<Vec<_>>(),
        (0..4).map(|i| (i as u64 + 1, old(i))).collect::<Vec<_>>()
    );
    // Old chunks and new ones in one drain, in order.
    let fresh = Reading::new("gw-temp-0", t0 + 10, Value::Number(22.0));
    store.append(vec![fresh.clone()]).unwrap();
    store.commit().unwrap();
    let packed = store.read_packed(0, 65536, 4).unwrap();
    let mut all: Vec<Reading> = (0..4).map(old).collect();
    all.push(fresh.clone());
    assert_eq!(packed.len(), 1);
    assert_eq!(
        packed[0].payload,
        thingplus_gw::thingplus::pack_values(&all, usize::MAX)
            .0
            .as_bytes()
    );
    assert_eq!(packed[0].seqs, 1..6);
    store.ack(1..4).unwrap();
    store.commit().unwrap();
    drop(store);
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    let left: Vec<_> = store.read(0, 100).unwrap();
    assert_eq!(
        left.iter()
            .map(|s| (s.seq, s.reading.clone()))
            .collect::<Vec<_>>(),
        vec![(4, old(3)), (5, fresh)]
    );
    drop(store);
    let c = rusqlite::Connection::open(tmp.path().join(DB_FILE)).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 3);
}

#[test]
fn a_buffer_of_a_newer_schema_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join(DB_FILE);
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE chunks(last_seq INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL);
             PRAGMA application_id=1414547287;
             PRAGMA user_version=4;",
        )
        .unwrap();
    }
    let err = SqliteStore::open(tmp.path(), opts())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, OpenError::Db { .. }), "{text}");
    assert!(text.contains("newer thingplus-gw (schema 4"), "{text}");
    assert!(text.contains("left untouched"), "{text}");
    assert!(corrupt_files(tmp.path()).is_empty(), "not moved aside");
    let c = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 4, "not downgraded");
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Drains a store whole as the session does (read packed, acknowledge),
/// returning every reading delivered, decoded from the messages as the
/// cloud decodes them: (sensor, time, value JSON).
fn drain_all(store: &mut SqliteStore) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    loop {
        let msgs = store.read_packed(0, 64 << 10, 4).unwrap();
        if msgs.is_empty() {
            return out;
        }
        for m in &msgs {
            let text = std::str::from_utf8(&m.payload).expect("a message is UTF-8");
            assert!(!text.contains('\0'), "a NUL byte went out: {text}");
            let v: serde_json::Value = serde_json::from_str(text).expect("a message is JSON");
            let mut n = 0;
            for (sensor, series) in v.as_object().unwrap() {
                for pair in series.as_array().unwrap().chunks(2) {
                    out.push((
                        sensor.clone(),
                        pair[0].as_i64().unwrap(),
                        pair[1].to_string(),
                    ));
                    n += 1;
                }
            }
            assert_eq!(n, m.count);
            store.ack(m.seqs.clone()).unwrap();
        }
        store.commit_acks().unwrap();
    }
}

/// What `reading(i)` looks like once delivered.
fn delivered_form(i: u64) -> (String, i64, String) {
    let r = reading(i);
    (r.sensor_id.to_string(), r.time_ms, r.value.to_json_string())
}

/// Every delivered reading is one of the `n` appended, unchanged.
fn assert_each_as_appended(n: u64, delivered: &[(String, i64, String)], changed: &str) {
    let expected: std::collections::HashMap<(String, i64), String> = (0..n)
        .map(delivered_form)
        .map(|(s, t, v)| ((s, t), v))
        .collect();
    for (s, t, v) in delivered {
        assert_eq!(expected.get(&(s.clone(), *t)), Some(v), "{changed}");
    }
}

#[test]
fn bytes_flipped_inside_chunk_data_are_detected_counted_and_never_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 30_000u64;
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    fill(&mut store, 0..n);
    drop(store); // checkpointed into buffer.db
    let db = tmp.path().join(DB_FILE);
    let mut bytes = fs::read(&db).unwrap();
    // 20 bytes inside the text of the readings around seq 10,001, as a
    // rotting SD card returns them: not in any SQLite structure.
    let at = find(&bytes, reading(10_000).time_ms.to_string().as_bytes()).unwrap();
    for b in &mut bytes[at..at + 20] {
        *b ^= 0x5a;
    }
    fs::write(&db, &bytes).unwrap();

    let (got, logs) = with_logs(|| {
        let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
        assert!(store.recoveries().is_empty(), "SQLite sees nothing wrong");
        let got = drain_all(&mut store);
        (got, store.stats().unwrap())
    });
    let (delivered, stats) = got;
    // Every reading delivered is the one appended, unchanged; the rest is
    // counted as dropped, and one line says which.
    assert_each_as_appended(n, &delivered, "a changed reading went out");
    assert!(stats.dropped > 0 && stats.dropped < 600, "{stats:?}");
    assert_eq!(delivered.len() as u64 + stats.dropped, n, "{logs}");
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("damaged buffered readings were dropped, not sent"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let line = lines[0];
    assert!(
        line.contains(&format!("{} readings", stats.dropped)),
        "{line}"
    );
    assert!(line.contains("checksum mismatch"), "{line}");
    assert!(
        line.contains("gw-temp-0") && line.contains("gw-loc-0"),
        "{line}"
    );
    // The seq range named holds seq 10,001.
    let range = line
        .split("seqs ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let (a, b) = range.split_once("..=").unwrap();
    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(a <= 10_001 && 10_001 <= b, "{line}");
    assert_eq!(b - a + 1, stats.dropped, "{line}");
    // The drop is kept: a restart neither resends nor recounts.
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    assert_eq!(store.stats().unwrap().pending, 0);
    let report = sqlite::inspect(&db, false).unwrap();
    assert_eq!(report.dropped, Some(stats.dropped));
    assert_usable(&mut store);
}

#[test]
fn a_file_cut_short_sends_no_damaged_text_and_counts_what_is_missing() {
    for cut in [1000u64, 6000, 20_000] {
        let tmp = tempfile::tempdir().unwrap();
        let n = 30_000u64;
        let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
        fill(&mut store, 0..n);
        drop(store);
        let db = tmp.path().join(DB_FILE);
        let len = fs::metadata(&db).unwrap().len();
        let f = fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.set_len(len - cut).unwrap();
        drop(f);
        let ((delivered, stats, recoveries), logs) = with_logs(|| {
            let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
            // Moved aside and rebuilt, or damage found chunk by chunk.
            let delivered = drain_all(&mut store);
            (
                delivered,
                store.stats().unwrap(),
                store.recoveries().to_vec(),
            )
        });
        assert_each_as_appended(n, &delivered, &format!("cut {cut}: changed"));
        let mut seen = std::collections::HashSet::new();
        for (s, t, _) in &delivered {
            assert!(seen.insert((s.clone(), *t)), "cut {cut}: sent twice");
        }
        assert!(delivered.len() as u64 <= n);
        // What is missing is counted as dropped (found damaged, or lost in
        // a rebuild), or, where SQLite cannot read how many readings a
        // damaged page held, named by its seqs.
        if recoveries.iter().all(|r| r.lost_readings.is_some()) {
            assert_eq!(
                delivered.len() as u64 + stats.dropped,
                n,
                "cut {cut}: {stats:?} {recoveries:?}\n{logs}"
            );
        } else {
            assert!(delivered.len() as u64 + stats.dropped < n);
            assert!(
                logs.contains("the readings of seqs") && logs.contains("cannot be read"),
                "cut {cut}: {logs}"
            );
        }
        assert!(
            !delivered.is_empty(),
            "cut {cut}: the readable part is delivered"
        );
    }
}

#[test]
fn a_buffer_of_the_second_schema_is_read_and_new_chunks_carry_a_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join(DB_FILE);
    let mut store = SqliteStore::open(tmp.path(), opts()).unwrap();
    fill(&mut store, 0..3000);
    drop(store);
    // As version 2 of the daemon left it: chunks without checksum, schema 2.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let rows: Vec<(i64, Vec<u8>)> = c
            .prepare("SELECT last_seq, data FROM chunks")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (last, data) in rows {
            assert_eq!(data[0], 3);
            let v2 = [&[2u8][..], &data[5..]].concat();
            c.execute(
                "UPDATE chunks SET data = ?1 WHERE last_seq = ?2",
                rusqlite::params![v2, last],
            )
            .unwrap();
        }
        c.execute_batch("DELETE FROM meta WHERE key = 'checked_from'; PRAGMA user_version=2;")
            .unwrap();
    }
    let (store, logs) = with_logs(|| SqliteStore::open(tmp.path(), opts()));
    let mut store = store.unwrap();
    assert!(
        logs.contains("upgraded from schema 2 to schema 3"),
        "{logs}"
    );
    fill(&mut store, 3000..3100);
    let all = store.read(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 3100);
    for s in &all {
        assert_eq!(s.reading, reading(s.seq - 1));
    }
    let packed = store.read_packed(0, 1 << 20, 4).unwrap();
    assert_eq!(packed.iter().map(|m| m.count).sum::<usize>(), 3100);
    drop(store);
    let c = rusqlite::Connection::open(&db).unwrap();
    let checked_from: i64 = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'checked_from'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(checked_from, 3001, "chunks from the upgrade on are checked");
    let versions: Vec<(i64, u8)> = c
        .prepare("SELECT first_seq, substr(data, 1, 1) FROM chunks ORDER BY last_seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, Vec<u8>>(1)?[0])))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (first, v) in versions {
        assert_eq!(v, if first >= 3001 { 3 } else { 2 }, "chunk from {first}");
    }
}
