//! Buffer benchmarks, each against a baseline measured in the same run.
//!
//! Run: `cargo bench --no-default-features --bench buffer`
//! (under a minute once built; needs /usr/sbin/mosquitto, or
//! MOSQUITTO=/path/to/it). The first build of the bench profile takes several
//! minutes. Numbers on a shared machine vary from run to run: each drain is
//! run 5 times, interleaved, and the median and best are shown.
//! `BENCH_READINGS` changes the number of readings (default 1000000);
//! `BENCH_PHASES_ONLY=1` only measures the buffer thread's phases of a drain
//! in process (no broker); `BENCH_PREFILL_ONLY=<dir>` only writes a buffer directory holding them (to
//! profile the daemon by hand).
//!
//! 1. Appends per second through the `Buffer` handle over the SQLite store,
//!    at fsync "1s" and "always", against plain SQLite inserts of the same
//!    readings, one transaction per batch of 1000 (WAL, synchronous NORMAL and
//!    FULL). Then the database side of a drain (read 4096, delete, commit)
//!    for one row per reading in plain SQLite against the store's batch rows:
//!    the measurement behind the choice of batch rows.
//!    Then the buffer thread's side of a drain in process, phase by phase
//!    (read and pack 64 KiB messages, acknowledge, commit), in ns per reading.
//! 2. Drain of a backlog of BENCH_READINGS readings by the daemon binary
//!    through a local Mosquitto, against a plain rumqttc publisher sending the
//!    same messages (pre-encoded), with rumqttc's default window (100) and
//!    with the daemon's (8). Rates are taken at a subscriber, from its first
//!    to its last message, with two observers: one that only counts readings
//!    (the transport's ceiling) and one that decodes every message as the
//!    cloud does. The daemon also samples a sensor every 10 ms and reports
//!    a status every 100 ms during the drain.
//! 3. Bytes of the backlog's messages with and without `compress = "gzip"`,
//!    and what gzip costs per reading.
//! 4. The daemon's RSS with an empty buffer and with the backlog pending.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rusqlite::{params, Connection};
use thingplus_gw::buffer::sqlite::{SqliteOptions, SqliteStore};
use thingplus_gw::buffer::{Buffer, BufferOptions, Store};
use thingplus_gw::config::Fsync;
use thingplus_gw::reading::{Reading, Value};
use thingplus_gw::thingplus::{pack_values, parse_values, Compression};

const BIN: &str = env!("CARGO_BIN_EXE_thingplus-gw");
const GW: &str = "gwbench";
const MAX_MESSAGE: usize = 64 << 10;
const RUNS: usize = 5;

fn readings(n: usize) -> Vec<Reading> {
    let sensors: Vec<Arc<str>> = (0..4)
        .map(|i| Arc::from(format!("{GW}-temperature-{i}")))
        .collect();
    (0..n)
        .map(|i| Reading {
            sensor_id: sensors[i % 4].clone(),
            time_ms: 1_700_000_000_000 + (i / 4) as i64 * 10,
            value: Value::Number(20.0 + (i % 1000) as f64 * 0.01),
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn plain_sqlite(rs: &[Reading], synchronous: &str) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let c = Connection::open(tmp.path().join("plain.db")).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous};
         CREATE TABLE r(seq INTEGER PRIMARY KEY, sensor INTEGER NOT NULL, t INTEGER NOT NULL, v);"
    ))
    .unwrap();
    let mut ids: HashMap<Arc<str>, i64> = HashMap::new();
    let start = Instant::now();
    let mut seq = 0i64;
    for chunk in rs.chunks(1000) {
        let tx = c.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO r(seq, sensor, t, v) VALUES (?1, ?2, ?3, ?4)")
                .unwrap();
            for r in chunk {
                let n = ids.len() as i64;
                let id = *ids.entry(r.sensor_id.clone()).or_insert(n);
                let Value::Number(v) = r.value else {
                    unreachable!()
                };
                seq += 1;
                st.execute(params![seq, id, r.time_ms, v]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    start.elapsed()
}

/// A backlog kept one row per reading in plain SQLite, drained the way the
/// session drains: read 4096 in seq order, delete them, commit.
fn plain_rows_drain(rs: &[Reading]) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let c = Connection::open(tmp.path().join("rows.db")).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-1024;
         CREATE TABLE r(seq INTEGER PRIMARY KEY, sensor INTEGER NOT NULL, t INTEGER NOT NULL, v);",
    )
    .unwrap();
    let mut names: Vec<Arc<str>> = Vec::new();
    {
        let tx = c.unchecked_transaction().unwrap();
        let mut st = tx
            .prepare("INSERT INTO r(seq, sensor, t, v) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for (i, r) in rs.iter().enumerate() {
            let id = match names.iter().position(|n| *n == r.sensor_id) {
                Some(p) => p,
                None => {
                    names.push(r.sensor_id.clone());
                    names.len() - 1
                }
            };
            let Value::Number(v) = r.value else {
                unreachable!()
            };
            st.execute(params![i as i64 + 1, id as i64, r.time_ms, v])
                .unwrap();
        }
        drop(st);
        tx.commit().unwrap();
    }
    let start = Instant::now();
    let mut from = 0i64;
    loop {
        let tx = c.unchecked_transaction().unwrap();
        let batch: Vec<(i64, Reading)> = tx
            .prepare_cached(
                "SELECT seq, sensor, t, v FROM r WHERE seq >= ?1 ORDER BY seq LIMIT 4096",
            )
            .unwrap()
            .query_map([from], |row| {
                Ok((
                    row.get(0)?,
                    Reading {
                        sensor_id: names[row.get::<_, i64>(1)? as usize].clone(),
                        time_ms: row.get(2)?,
                        value: Value::Number(row.get(3)?),
                    },
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let Some((last, _)) = batch.last() else { break };
        from = last + 1;
        tx.execute("DELETE FROM r WHERE seq < ?1", [from]).unwrap();
        tx.commit().unwrap();
    }
    start.elapsed()
}

/// The same through the store: read 4096, acknowledge them, commit.
fn store_drain(rs: &[Reading]) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    prefill(tmp.path(), rs);
    let mut store = SqliteStore::open(
        tmp.path(),
        SqliteOptions::unbounded(Fsync::Period(Duration::from_secs(1))),
    )
    .unwrap();
    let start = Instant::now();
    let mut from = 0;
    loop {
        let batch = store.read(from, 4096).unwrap();
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        store.ack(batch[0].seq..from).unwrap();
        store.commit().unwrap();
    }
    start.elapsed()
}

/// The buffer thread's side of a drain, as the session asks for it, in
/// process (no broker): pack 4 messages of 64 KiB, acknowledge each, commit
/// after each. Returns the time spent in each phase (read and pack, ack,
/// commit).
fn store_drain_phases(rs: &[Reading]) -> [Duration; 3] {
    let tmp = tempfile::tempdir().unwrap();
    prefill(tmp.path(), rs);
    let mut store = SqliteStore::open(
        tmp.path(),
        SqliteOptions::unbounded(Fsync::Period(Duration::from_secs(1))),
    )
    .unwrap();
    let phases = drain_phases(&mut store);
    assert_eq!(phases.1, rs.len());
    phases.0
}

/// The drain loop alone (a function of its own, for
/// `valgrind --tool=callgrind --toggle-collect='*drain_phases*'`).
#[inline(never)]
fn drain_phases(store: &mut SqliteStore) -> ([Duration; 3], usize) {
    let mut phases = [Duration::ZERO; 3];
    let mut from = 0;
    let mut seen = 0;
    loop {
        let t0 = Instant::now();
        let msgs = store.read_packed(from, MAX_MESSAGE, 4).unwrap();
        phases[0] += t0.elapsed();
        let Some(last) = msgs.last() else { break };
        from = last.seqs.end;
        for m in msgs {
            seen += m.count;
            let t1 = Instant::now();
            store.ack(m.seqs).unwrap();
            let t2 = Instant::now();
            store.commit_acks().unwrap();
            phases[1] += t2 - t1;
            phases[2] += t2.elapsed();
        }
    }
    (phases, seen)
}

fn ours(rs: &[Reading], fsync: Fsync, per_append: usize) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        max_size: 256 << 20,
        // The free-space floor is off: a shared machine's disk may be under it.
        min_free_percent: 0.0,
        fsync,
    };
    let store = SqliteStore::open(tmp.path(), options).unwrap();
    let buffer = Buffer::start_with(
        store,
        BufferOptions {
            fsync,
            max_reading_bytes: Some(MAX_MESSAGE),
        },
    );
    let batches: Vec<Vec<Reading>> = rs.chunks(per_append).map(|c| c.to_vec()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let start = Instant::now();
    for b in batches {
        buffer.append(b);
    }
    // Everything committed and synced.
    rt.block_on(buffer.close()).unwrap();
    start.elapsed()
}

fn prefill(dir: &Path, rs: &[Reading]) {
    let mut store = SqliteStore::open(
        dir,
        SqliteOptions {
            max_size: 256 << 20,
            min_free_percent: 0.0,
            fsync: Fsync::Never,
        },
    )
    .unwrap();
    for c in rs.chunks(10_000) {
        store.append(c.to_vec()).unwrap();
        store.commit().unwrap();
    }
    store.sync().unwrap();
}

// ------------------------------------------------------------------ broker

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let bin = std::env::var("MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nmax_queued_bytes 0\nlog_type error\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (set MOSQUITTO=/path/to/mosquitto)");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the subscriber saw.
#[derive(Default, Debug)]
struct Seen {
    first: Option<Instant>,
    /// When the `target`-th backlog reading arrived.
    done: Option<Instant>,
    backlog: usize,
    messages: usize,
    statuses_during: usize,
    /// Readings of the fresh sensor that arrived before the end of the backlog (wrong order) and after it.
    fresh_before: usize,
    fresh_after: usize,
}

/// Subscribes to the values and status topics; returns once subscribed, with
/// a receiver of the result once `target` backlog readings have arrived (and,
/// with `wait_fresh`, a reading of the fresh sensor after them). With `parse`
/// it decodes every message as the cloud would, else it only counts commas
/// (near-free, so that it never slows a publisher down).
fn subscriber(port: u16, target: usize, wait_fresh: bool, parse: bool) -> mpsc::Receiver<Seen> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut o = MqttOptions::new(format!("sub-{}", fastrand::u32(..)), "127.0.0.1", port);
            o.set_max_packet_size(4 << 20, 4 << 20);
            o.set_keep_alive(Duration::from_secs(60));
            let (client, mut el) = AsyncClient::new(o, 64);
            client
                .subscribe(format!("v/a/g/{GW}"), QoS::AtLeastOnce)
                .await
                .unwrap();
            client
                .subscribe(format!("v/a/g/{GW}/status"), QoS::AtLeastOnce)
                .await
                .unwrap();
            let mut seen = Seen::default();
            let mut subacks = 0;
            let mut ready = Some(ready_tx);
            loop {
                let ev = match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                    Ok(ev) => ev,
                    Err(_) if seen.done.is_some() => break, // no fresh reading came
                    Err(_) => continue,
                };
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks == 2 {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic.ends_with("/status") {
                            if seen.first.is_some() && seen.done.is_none() {
                                seen.statuses_during += 1;
                            }
                            continue;
                        }
                        let now = Instant::now();
                        seen.first.get_or_insert(now);
                        seen.messages += 1;
                        // A fresh reading may share the backlog's last message;
                        // in an earlier one it would be out of order.
                        let (total, fresh) = if parse {
                            // As the cloud would: every message decoded.
                            count_readings(&p.payload, true)
                        } else {
                            count_readings(&p.payload, seen.backlog + 20_000 >= target)
                        };
                        seen.backlog += total - fresh;
                        if seen.done.is_none() && seen.backlog >= target {
                            seen.done = Some(now);
                        }
                        if seen.done.is_some() {
                            seen.fresh_after += fresh;
                        } else {
                            seen.fresh_before += fresh;
                        }
                        if seen.done.is_some() && (!wait_fresh || seen.fresh_after > 0) {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("subscriber: {e}"),
                }
            }
            let _ = done_tx.send(seen);
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscriber ready");
    done_rx
}

/// Readings in a values message, and (when `classify`, near the end of the
/// backlog) how many of them are the fresh sensor's. Cheap, so that the
/// subscriber leaves the CPU to the publishers: with numbers only, a message
/// `{"a":[t,v,t,v],"b":[t,v]}` holds (commas + 1) / 2 readings. (The order
/// of delivery is checked by tests/buffer_e2e.rs.)
fn count_readings(payload: &[u8], classify: bool) -> (usize, usize) {
    if classify {
        let readings = parse_values(payload).unwrap();
        let fresh = readings
            .iter()
            .filter(|r| r.sensor_id.contains("-fresh-"))
            .count();
        return (readings.len(), fresh);
    }
    let commas = payload.iter().filter(|b| **b == b',').count();
    (commas.div_ceil(2), 0)
}

fn plain_publisher(port: u16, messages: Vec<String>, inflight: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut o = MqttOptions::new("plain-publisher", "127.0.0.1", port);
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_inflight(inflight);
        let (client, mut el) = AsyncClient::new(o, 128);
        let total = messages.len();
        let pump = tokio::spawn(async move {
            let mut acked = 0;
            while acked < total {
                if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.unwrap() {
                    acked += 1;
                }
            }
        });
        for m in messages {
            client
                .publish(format!("v/a/g/{GW}"), QoS::AtLeastOnce, false, m)
                .await
                .unwrap();
        }
        pump.await.unwrap();
    });
}

// ------------------------------------------------------------------ daemon

struct Daemon {
    child: Child,
    _log: std::thread::JoinHandle<()>,
}

fn daemon_config(dir: &Path, buffer: &Path, port: u16) -> PathBuf {
    let fresh = dir.join("fresh");
    std::fs::write(&fresh, "21.5\n").unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"{GW}\"\napikey = \"k\"\nstate_dir = \"{state}\"\nreport_interval = \"100ms\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = false\n\
             [buffer]\ndir = \"{buffer}\"\nmin_free = \"0%\"\n\
             [[sensor]]\nid = \"{GW}-fresh-0\"\ntype = \"number\"\npath = \"{fresh}\"\ninterval = \"10ms\"\n",
            state = dir.join("state").display(),
            buffer = buffer.display(),
            fresh = fresh.display(),
        ),
    )
    .unwrap();
    path
}

impl Daemon {
    /// Starts the daemon and waits for its "started" line.
    fn start(config: &Path) -> Daemon {
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            // Its own control socket, away from /run/thingplus-gw.
            .env("RUNTIME_DIRECTORY", config.parent().unwrap().join("run"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" started") {
                    let _ = tx.send(());
                }
                if line.contains("ERROR") {
                    eprintln!("daemon: {line}");
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("daemon started");
        Daemon { child, _log: log }
    }

    fn status(&self, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Highest RSS seen over `d` (KiB).
    fn rss_over(&self, d: Duration) -> u64 {
        let start = Instant::now();
        let mut max = 0;
        while start.elapsed() < d {
            max = max.max(self.status("VmRSS:"));
            std::thread::sleep(Duration::from_millis(100));
        }
        max
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    /// A bench that fails part-way leaves no daemon behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let n: usize = std::env::var("BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rs = readings(n);
    if let Ok(dir) = std::env::var("BENCH_PREFILL_ONLY") {
        // For profiling by hand: a buffer directory with the backlog, then stop.
        prefill(Path::new(&dir), &rs);
        return;
    }
    println!("# thingplus-gw buffer benchmarks ({n} readings)\n");
    report_drain_phases(&rs);
    report_checksum(&rs);
    if std::env::var_os("BENCH_PHASES_ONLY").is_some() {
        return;
    }
    report_appends(&rs);
    report_database_drain(&rs);
    let messages = backlog_messages(&rs);
    let memory = report_mosquitto_drain(&rs, &messages);
    report_gzip(n, &messages);
    report_memory(n, memory);
}

/// The buffer thread's side of a drain, phase by phase, in process.
fn report_drain_phases(rs: &[Reading]) {
    let n = rs.len();
    println!("\n## The buffer thread's work in a drain, in process ({RUNS} runs, median)\n");
    let mut runs: Vec<[Duration; 3]> = (0..RUNS).map(|_| store_drain_phases(rs)).collect();
    let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!("| phase | ns per reading |");
    println!("|---|---:|");
    for (i, what) in [
        "read the chunks and pack 64 KiB messages",
        "acknowledge each message",
        "commit after each acknowledgement",
    ]
    .iter()
    .enumerate()
    {
        runs.sort_by_key(|r| r[i]);
        println!("| {what} | {:.1} |", ns(runs[RUNS / 2][i]));
    }
}

/// The checksum's share of the read: CRC32C over every chunk's bytes, as
/// `Chunk::parse` verifies them before a drain copies their text.
fn report_checksum(rs: &[Reading]) {
    let n = rs.len();
    let ns = |d: Duration| d.as_nanos() as f64 / n as f64;
    let tmp = tempfile::tempdir().unwrap();
    prefill(tmp.path(), rs);
    let c = Connection::open(tmp.path().join("buffer.db")).unwrap();
    let chunks: Vec<Vec<u8>> = c
        .prepare("SELECT data FROM chunks")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    let mut times: Vec<Duration> = (0..RUNS * 4)
        .map(|_| {
            let t = Instant::now();
            let mut x = 0u32;
            for d in &chunks {
                x ^= crc32c::crc32c(std::hint::black_box(d));
            }
            std::hint::black_box(x);
            t.elapsed()
        })
        .collect();
    times.sort();
    let t = times[times.len() / 2];
    println!(
        "| of the read: CRC32C over the chunks' bytes ({} chunks, {:.1} bytes a reading) | {:.2} |",
        chunks.len(),
        bytes as f64 / n as f64,
        ns(t)
    );
}

/// Appends through the `Buffer` handle against plain SQLite inserts.
fn report_appends(rs: &[Reading]) {
    let n = rs.len();
    println!("## Appends\n");
    println!("| what | readings/s | vs plain SQLite |");
    println!("|---|---:|---:|");
    let plain_normal = rate(n, plain_sqlite(rs, "NORMAL"));
    let plain_full = rate(n, plain_sqlite(rs, "FULL"));
    println!(
        "| plain SQLite, 1 transaction per 1000, synchronous=NORMAL | {plain_normal:.0} | 1.00 |"
    );
    println!("| plain SQLite, 1 transaction per 1000, synchronous=FULL | {plain_full:.0} | 1.00 |");
    let one_s = Fsync::Period(Duration::from_secs(1));
    for (label, fsync, per, base) in [
        (
            "buffer, fsync=\"1s\", 1 reading per append",
            one_s,
            1,
            plain_normal,
        ),
        (
            "buffer, fsync=\"1s\", 100 readings per append",
            one_s,
            100,
            plain_normal,
        ),
        (
            "buffer, fsync=\"always\", 1 reading per append",
            Fsync::Always,
            1,
            plain_full,
        ),
        (
            "buffer, fsync=\"always\", 100 readings per append",
            Fsync::Always,
            100,
            plain_full,
        ),
    ] {
        let r = rate(n, ours(rs, fsync, per));
        println!("| {label} | {r:.0} | {:.2} |", r / base);
    }
}

/// The database side of a drain: one row per reading against the store's chunks.
fn report_database_drain(rs: &[Reading]) {
    let n = rs.len();
    println!("\n## Reading and deleting a {n}-reading backlog (the database side of a drain)\n");
    println!("| what | readings/s | vs one row per reading |");
    println!("|---|---:|---:|");
    let rows = rate(n, plain_rows_drain(rs));
    let chunks = rate(n, store_drain(rs));
    println!(
        "| plain SQLite, one row per reading: SELECT 4096 + DELETE, commit | {rows:.0} | 1.00 |"
    );
    println!(
        "| the store (batch rows): read 4096 + ack, commit | {chunks:.0} | {:.2} |",
        chunks / rows
    );
}

/// The backlog as the values messages a plain publisher sends.
fn backlog_messages(rs: &[Reading]) -> Vec<String> {
    let mut messages = Vec::new();
    let mut rest: &[Reading] = rs;
    while !rest.is_empty() {
        let (m, k) = pack_values(rest, MAX_MESSAGE);
        messages.push(m);
        rest = &rest[k..];
    }
    messages
}

/// The daemon's RSS (empty buffer, backlog pending, peak while draining).
struct Memory {
    empty: u64,
    full: u64,
    peak_draining: u64,
}

/// The drain through Mosquitto: the daemon against a plain publisher.
fn report_mosquitto_drain(rs: &[Reading], messages: &[String]) -> Memory {
    let n = rs.len();
    println!(
        "\n## Drain of a {n}-reading backlog through Mosquitto ({RUNS} runs each, interleaved)\n"
    );
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    prefill(&template, rs);
    let buffer_dir = tmp.path().join("buffer");
    let empty_dir = tmp.path().join("empty");
    let fresh_copy = |to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to).unwrap();
        std::fs::copy(template.join("buffer.db"), to.join("buffer.db")).unwrap();
    };

    // RSS first, with the broker unreachable so that nothing drains.
    let offline = TcpListener::bind("127.0.0.1:0").unwrap();
    let offline_port = offline.local_addr().unwrap().port();
    drop(offline);
    let d = Daemon::start(&daemon_config(tmp.path(), &empty_dir, offline_port));
    let rss_empty = d.rss_over(Duration::from_secs(2));
    d.stop();
    fresh_copy(&buffer_dir);
    let d = Daemon::start(&daemon_config(tmp.path(), &buffer_dir, offline_port));
    let rss_full = d.rss_over(Duration::from_secs(2));
    d.stop();

    let count = messages.len();
    let backlog = Backlog {
        broker: &broker,
        dir: tmp.path(),
        buffer_dir: &buffer_dir,
        fresh_copy: &fresh_copy,
    };
    let (rates, hwm_drain, last) = drain_runs(&backlog, n, messages);
    print_drain_rates(&rates);
    println!(
        "\n{count} messages of at most 64 KiB; the daemon sent {}.",
        last.messages
    );
    for ((parse, name), v) in {
        let mut all: Vec<_> = rates.iter().collect();
        all.sort_by_key(|((p, n), _)| (*p, *n));
        all
    } {
        println!(
            "All runs, {} / {name}: {:?}",
            if *parse { "decoding" } else { "counting" },
            v.iter().map(|r| *r as u64).collect::<Vec<_>>()
        );
    }
    println!(
        "Last run: {} status messages (report interval 100 ms) arrived during the drain; \
         the fresh sensor (sampled every 10 ms) had {} readings delivered after the backlog and {} before it (must be 0).",
        last.statuses_during, last.fresh_after, last.fresh_before
    );
    Memory {
        empty: rss_empty,
        full: rss_full,
        peak_draining: hwm_drain,
    }
}

/// Where the drains run: the broker, and a fresh copy of the backlog each time.
struct Backlog<'a> {
    broker: &'a Mosquitto,
    dir: &'a Path,
    buffer_dir: &'a Path,
    fresh_copy: &'a dyn Fn(&Path),
}

type Rates = HashMap<(bool, &'static str), Vec<f64>>;

/// Interleaved runs of each publisher, with each observer; returns the
/// rates, the daemon's peak RSS and what the last run saw.
fn drain_runs(backlog: &Backlog, n: usize, messages: &[String]) -> (Rates, u64, Seen) {
    let broker = backlog.broker;
    // Interleaved runs, with two observers: one that only counts (the
    // transport's ceiling), one that decodes every message as the cloud does.
    // Publishers: plain rumqttc with its default window (100) and with the
    // daemon's (8), and the daemon (max_inflight 8, its default).
    let mut rates: Rates = HashMap::new();
    let mut hwm_drain = 0;
    let mut last = Seen::default();
    for _ in 0..RUNS {
        for parse in [false, true] {
            for (name, inflight) in [("plain/100", 100), ("plain/8", 8)] {
                let done = subscriber(broker.port, n, false, parse);
                plain_publisher(broker.port, messages.to_vec(), inflight);
                let plain = done
                    .recv_timeout(Duration::from_secs(300))
                    .expect("plain publisher delivered");
                rates
                    .entry((parse, name))
                    .or_default()
                    .push(rate(n, plain.done.unwrap() - plain.first.unwrap()));
            }
            (backlog.fresh_copy)(backlog.buffer_dir);
            let done = subscriber(broker.port, n, true, parse);
            let d = Daemon::start(&daemon_config(backlog.dir, backlog.buffer_dir, broker.port));
            let seen = done
                .recv_timeout(Duration::from_secs(300))
                .expect("drained");
            hwm_drain = hwm_drain.max(d.status("VmHWM:"));
            d.stop();
            rates
                .entry((parse, "daemon"))
                .or_default()
                .push(rate(n, seen.done.unwrap() - seen.first.unwrap()));
            last = seen;
        }
    }
    (rates, hwm_drain, last)
}

/// The drain rates' medians and bests, against each plain publisher.
fn print_drain_rates(rates: &Rates) {
    // Median and best of the runs: the best is the least disturbed by other
    // work on the machine.
    let stats = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    println!("| observer | publisher | readings/s, median | best | vs plain, window 100 (median / best) | vs plain, window 8 (median / best) |");
    println!("|---|---|---:|---:|---:|---:|");
    for parse in [false, true] {
        let observer = if parse {
            "decodes every message"
        } else {
            "counts only"
        };
        let (p100, p100b) = stats(&rates[&(parse, "plain/100")]);
        let (p8, p8b) = stats(&rates[&(parse, "plain/8")]);
        for (name, label) in [
            (
                "plain/100",
                "plain rumqttc, QoS 1, window 100 (rumqttc default)",
            ),
            ("plain/8", "plain rumqttc, QoS 1, window 8"),
            (
                "daemon",
                "thingplus-gw draining its buffer, max_inflight 8 (default)",
            ),
        ] {
            let (m, b) = stats(&rates[&(parse, name)]);
            println!(
                "| {observer} | {label} | {m:.0} | {b:.0} | {:.2} / {:.2} | {:.2} / {:.2} |",
                m / p100,
                b / p100b,
                m / p8,
                b / p8b
            );
        }
    }
}

/// What `[mqtt] compress = "gzip"` does to the same backlog: every message
/// is over the 1 KiB threshold, so each goes gzipped (level 3).
fn report_gzip(n: usize, messages: &[String]) {
    let json_bytes: usize = messages.iter().map(String::len).sum();
    let start = Instant::now();
    let gzip_bytes: usize = messages
        .iter()
        .map(|m| {
            Compression::Gzip { min_bytes: 1024 }
                .apply(m.as_bytes().to_vec())
                .len()
        })
        .sum();
    let gzip_time = start.elapsed();
    println!("\n## Bytes on the wire for the backlog drain (payloads, MQTT framing aside)\n");
    println!("| compress | bytes | per reading | vs off |");
    println!("|---|---:|---:|---:|");
    println!(
        "| \"off\" | {json_bytes} | {:.1} | 1.00 |",
        json_bytes as f64 / n as f64
    );
    println!(
        "| \"gzip\" | {gzip_bytes} | {:.1} | {:.2} |",
        gzip_bytes as f64 / n as f64,
        gzip_bytes as f64 / json_bytes as f64
    );
    println!(
        "\ngzip of those messages on one core: {:.0} readings/s ({:.0} ns per reading).",
        rate(n, gzip_time),
        gzip_time.as_nanos() as f64 / n as f64
    );
}

fn report_memory(n: usize, memory: Memory) {
    let (rss_empty, rss_full, hwm_drain) = (memory.empty, memory.full, memory.peak_draining);
    println!("\n## Daemon memory\n");
    println!("| what | RSS MiB |");
    println!("|---|---:|");
    println!("| empty buffer, offline | {:.1} |", mib(rss_empty));
    println!("| {n} readings pending, offline | {:.1} |", mib(rss_full));
    println!(
        "| growth with the backlog | {:.1} |",
        mib(rss_full.saturating_sub(rss_empty))
    );
    println!("| peak (VmHWM) while draining it | {:.1} |", mib(hwm_drain));
}
