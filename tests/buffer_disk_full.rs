//! The disk buffer on a small, real filesystem: a 4 MiB tmpfs mounted in a
//! private mount namespace of the test's own thread (we run as root, CI
//! too). A fast fill must keep `min_free`; a disk filled by another program
//! must cost only counted readings, never stop acknowledgements, and heal
//! by itself once space is freed; a restart must not resend what was
//! acknowledged.

mod common;

use common::with_logs;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thingplus_gw::buffer::sqlite::{SqliteOptions, SqliteStore, RESERVE_FILE};
use thingplus_gw::buffer::Store;
use thingplus_gw::config::Fsync;
use thingplus_gw::reading::{Reading, Value};

/// A tmpfs mounted on `dir` in a mount namespace private to this thread
/// (and the threads it starts); unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let c = |s: &[u8]| CString::new(s).unwrap();
        let (root, target, tmpfs, opts) = (
            c(b"/"),
            c(dir.as_os_str().as_bytes()),
            c(b"tmpfs"),
            c(format!("size={size}").as_bytes()),
        );
        let check = |what: &str, r: libc::c_int| {
            assert_eq!(
                r,
                0,
                "{what}: {} (these tests need root, as CI runs them)",
                std::io::Error::last_os_error()
            )
        };
        unsafe {
            check("unshare(CLONE_NEWNS)", libc::unshare(libc::CLONE_NEWNS));
            check(
                "making / private",
                libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
            );
            check(
                "mounting a tmpfs",
                libc::mount(
                    tmpfs.as_ptr(),
                    target.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                ),
            );
        }
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Free and total bytes of the filesystem of `dir`.
fn space(dir: &Path) -> (u64, u64) {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (
        s.f_bavail as u64 * s.f_frsize as u64,
        s.f_blocks as u64 * s.f_frsize as u64,
    )
}

/// 10 counters and 20 text sensors, as in the field report.
fn reading(i: u64) -> Reading {
    let k = i % 30;
    let value = if k < 10 {
        Value::Number((i / 30) as f64)
    } else {
        Value::Text(format!("state-{}", i % 7))
    };
    Reading::new(
        format!("gw-sensor-{k}").as_str(),
        1_700_000_000_000 + i as i64,
        value,
    )
}

/// The test's account of every reading: appended = delivered + pending +
/// dropped, always.
struct Ledger {
    appended: u64,
    delivered: u64,
}

impl Ledger {
    /// Appends a tick of 30 readings, as the buffer thread does.
    fn tick(&mut self, store: &mut SqliteStore) {
        let batch: Vec<Reading> = (self.appended..self.appended + 30).map(reading).collect();
        self.appended += 30;
        // An append never fails: the readings wait in memory for a commit.
        store.append(batch).unwrap();
    }

    /// Delivers up to `messages` messages, as the session does after PUBACKs.
    fn deliver(&mut self, store: &mut SqliteStore, messages: usize) {
        let msgs = store.read_packed(0, 16 << 10, messages).unwrap();
        for m in &msgs {
            store.ack(m.seqs.clone()).unwrap();
            self.delivered += m.count as u64;
        }
        store
            .commit_acks()
            .expect("acknowledgements commit on a full disk");
    }

    fn check(&self, store: &mut SqliteStore, when: &str) {
        let stats = store.stats().unwrap();
        assert_eq!(
            self.delivered + stats.pending + stats.dropped,
            self.appended,
            "{when}: delivered {} + pending {} + dropped {} != appended {}",
            self.delivered,
            stats.pending,
            stats.dropped,
            self.appended
        );
        // What is pending is exactly the newest undelivered readings, in
        // order and unchanged: the dropped ones were the oldest.
        let all = store.read(0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, stats.pending, "{when}");
        assert!(
            all.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
            "{when}: a hole"
        );
        if let Some(last) = all.last() {
            assert_eq!(last.seq, self.appended, "{when}: the newest are kept");
        }
        for s in all.iter().step_by(97) {
            assert_eq!(s.reading, reading(s.seq - 1), "{when}");
        }
    }
}

fn options() -> SqliteOptions {
    SqliteOptions {
        max_size: 256 << 20,
        min_free_percent: 5.0,
        fsync: Fsync::Period(Duration::from_secs(1)),
    }
}

#[test]
fn a_fast_fill_keeps_min_free_and_a_full_disk_costs_only_counted_readings() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("fs");
    fs::create_dir(&mnt).unwrap();
    let fs_guard = Tmpfs::mount(&mnt, "4m");
    let dir = mnt.join("buffer");
    let (_, total) = space(&mnt);
    let floor = total / 20;

    let ((), logs) = with_logs(|| {
        let mut store = SqliteStore::open(&dir, options()).unwrap();
        assert!(dir.join(RESERVE_FILE).exists(), "the reserve is set aside");
        let mut ledger = Ledger {
            appended: 0,
            delivered: 0,
        };

        // 1. The broker is down and the sensors fill the disk fast: 300,000
        //    readings (about three times what 4 MiB hold), committed and
        //    synced as the buffer thread does, much faster than real time.
        let mut lowest = u64::MAX;
        for tick in 0..10_000u64 {
            ledger.tick(&mut store);
            if tick % 10 == 9 {
                store
                    .commit()
                    .expect("no commit fails while min_free is kept");
                lowest = lowest.min(space(&mnt).0);
            }
            if tick % 100 == 99 {
                store.sync().unwrap();
                lowest = lowest.min(space(&mnt).0);
            }
        }
        store.sync().unwrap();
        assert!(
            lowest >= floor,
            "min_free 5 % ({floor} bytes) not kept: {lowest} bytes free at the lowest"
        );
        assert!(store.stats().unwrap().dropped > 100_000);
        ledger.check(&mut store, "after the fast fill");

        // 2. Another program fills what is left of the filesystem.
        let hog_path = mnt.join("hog");
        let mut hog = fs::File::create(&hog_path).unwrap();
        let block = vec![0x11u8; 16 << 10];
        while hog.write_all(&block).is_ok() {}
        while hog.write_all(&block[..512]).is_ok() {}
        drop(hog);
        assert!(space(&mnt).0 < 16 << 10, "the disk is full");
        // Sampling and delivering go on: every commit and acknowledgement
        // goes through (the reserve gives SQLite room to drop and delete).
        // First commits of 9,000 readings (a burst after a stall): more
        // than the WAL ever held, so that it must grow into the full
        // filesystem; then the usual small ones.
        for round in 0..40u64 {
            let ticks = if round < 5 { 300 } else { 10 };
            for _ in 0..ticks {
                ledger.tick(&mut store);
            }
            store.commit().expect("a commit on a full disk");
            ledger.deliver(&mut store, 2);
            store.sync().expect("a sync on a full disk");
        }
        assert!(ledger.delivered > 0);
        ledger.check(&mut store, "on the full disk");

        // 3. The space comes back: the store heals without a restart.
        fs::remove_file(&hog_path).unwrap();
        for _ in 0..20 {
            ledger.tick(&mut store);
        }
        store.commit().unwrap();
        store.sync().unwrap();
        assert!(
            dir.join(RESERVE_FILE).exists(),
            "the reserve is set aside again"
        );
        ledger.deliver(&mut store, 4);
        store.commit().unwrap();
        ledger.check(&mut store, "after the space came back");
        let (free, _) = space(&mnt);
        assert!(free >= floor, "{free} bytes free");
        let pending = store.read(0, usize::MAX).unwrap();
        drop(store);

        // 4. A clean restart sends nothing that was acknowledged.
        let mut store = SqliteStore::open(&dir, options()).unwrap();
        let again = store.read(0, usize::MAX).unwrap();
        assert_eq!(
            again, pending,
            "exactly the undelivered readings, after a restart"
        );
    });
    drop(fs_guard);
    // Each episode is said once, with its count.
    assert_eq!(
        logs.matches("the filesystem of the buffer").count(),
        1,
        "{logs}"
    );
    assert!(
        logs.contains("kept in memory and written with the next commit"),
        "{logs}"
    );
    assert!(logs.contains("can write to"), "{logs}");
    assert!(
        !logs.contains("are lost"),
        "no reading is lost silently: {logs}"
    );
}
