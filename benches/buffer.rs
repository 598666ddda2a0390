//! Buffer benchmarks, each against a baseline measured in the same run.
//!
//! Run: `cargo bench --no-default-features --bench buffer`
//! (about a minute; needs /usr/sbin/mosquitto, or MOSQUITTO=/path/to/it).
//! `BENCH_READINGS` changes the number of readings (default 1000000).
//!
//! 1. Appends per second through the `Buffer` handle over the SQLite store,
//!    at fsync "1s" and "always", against plain SQLite inserts of the same
//!    readings, one transaction per batch of 1000 (WAL, synchronous NORMAL and
//!    FULL). For the record, also a layout with compact batch rows (1000
//!    readings per BLOB row), which the store does not use.
//! 2. Drain of a backlog of BENCH_READINGS readings by the daemon binary
//!    through a local Mosquitto, against a plain rumqttc publisher sending the
//!    same messages; rates are measured by the same subscriber.
//! 3. The daemon's RSS with an empty buffer and with the backlog pending.

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
use thingplus_gw::sensor::{Reading, Value};
use thingplus_gw::thingplus::{pack_values, parse_values};

const BIN: &str = env!("CARGO_BIN_EXE_thingplus-gw");
const GW: &str = "gwbench";
const MAX_MESSAGE: usize = 64 << 10;

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

fn batch_rows(rs: &[Reading]) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let c = Connection::open(tmp.path().join("batch.db")).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE b(first_seq INTEGER PRIMARY KEY, n INTEGER NOT NULL, data BLOB NOT NULL);",
    )
    .unwrap();
    let start = Instant::now();
    let mut seq = 0i64;
    for chunk in rs.chunks(1000) {
        let tx = c.unchecked_transaction().unwrap();
        let (data, n) = pack_values(chunk, usize::MAX);
        tx.execute(
            "INSERT INTO b(first_seq, n, data) VALUES (?1, ?2, ?3)",
            params![seq + 1, n as i64, data.as_bytes()],
        )
        .unwrap();
        seq += n as i64;
        tx.commit().unwrap();
    }
    start.elapsed()
}

fn ours(rs: &[Reading], fsync: Fsync, per_append: usize) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        max_size: 256 << 20,
        min_free_percent: 5.0,
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
            min_free_percent: 5.0,
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
    fresh: Vec<(i64, bool)>,
}

/// Subscribes to the values and status topics; returns once subscribed, with
/// a receiver of the result when `target` backlog readings have arrived.
fn subscriber(port: u16, target: usize) -> mpsc::Receiver<Seen> {
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
                match el.poll().await {
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
                        for r in parse_values(&p.payload).unwrap() {
                            if r.sensor_id.contains("-fresh-") {
                                seen.fresh.push((r.time_ms, seen.done.is_some()));
                            } else {
                                seen.backlog += 1;
                                if seen.backlog == target {
                                    seen.done = Some(now);
                                }
                            }
                        }
                        if seen.done.is_some() {
                            let _ = done_tx.send(seen);
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("subscriber: {e}"),
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscriber ready");
    done_rx
}

fn plain_publisher(port: u16, messages: Vec<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut o = MqttOptions::new("plain-publisher", "127.0.0.1", port);
        o.set_max_packet_size(4 << 20, 4 << 20);
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
            "[gateway]\nid = \"{GW}\"\napikey = \"k\"\nstate_dir = \"{state}\"\nreport_interval = \"1s\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = false\n\
             [buffer]\ndir = \"{buffer}\"\n\
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
    println!("# thingplus-gw buffer benchmarks ({n} readings)\n");

    println!("## Appends\n");
    println!("| what | readings/s | vs plain SQLite |");
    println!("|---|---:|---:|");
    let plain_normal = rate(n, plain_sqlite(&rs, "NORMAL"));
    let plain_full = rate(n, plain_sqlite(&rs, "FULL"));
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
        let r = rate(n, ours(&rs, fsync, per));
        println!("| {label} | {r:.0} | {:.2} |", r / base);
    }
    let batch = rate(n, batch_rows(&rs));
    println!(
        "| (layout not used) 1000 readings per BLOB row, synchronous=NORMAL | {batch:.0} | {:.2} |",
        batch / plain_normal
    );

    println!("\n## Drain of a {n}-reading backlog through Mosquitto\n");
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let buffer_dir = tmp.path().join("buffer");
    prefill(&buffer_dir, &rs);
    let empty_dir = tmp.path().join("empty");

    // RSS first, with the broker unreachable so that nothing drains.
    let offline = TcpListener::bind("127.0.0.1:0").unwrap();
    let offline_port = offline.local_addr().unwrap().port();
    drop(offline);
    let d = Daemon::start(&daemon_config(tmp.path(), &empty_dir, offline_port));
    let rss_empty = d.rss_over(Duration::from_secs(2));
    d.stop();
    let d = Daemon::start(&daemon_config(tmp.path(), &buffer_dir, offline_port));
    let rss_full = d.rss_over(Duration::from_secs(2));
    d.stop();

    // The daemon drains.
    let done = subscriber(broker.port, n);
    let d = Daemon::start(&daemon_config(tmp.path(), &buffer_dir, broker.port));
    let seen = done
        .recv_timeout(Duration::from_secs(300))
        .expect("drained");
    let hwm_drain = d.status("VmHWM:");
    let after = Instant::now();
    // Fresh readings sampled during the drain follow it.
    while Instant::now() - after < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    d.stop();
    let daemon_time = seen.done.unwrap() - seen.first.unwrap();

    // The same messages from a plain publisher.
    let mut messages = Vec::new();
    let mut rest: &[Reading] = &rs;
    while !rest.is_empty() {
        let (m, k) = pack_values(rest, MAX_MESSAGE);
        messages.push(m);
        rest = &rest[k..];
    }
    let count = messages.len();
    let done = subscriber(broker.port, n);
    plain_publisher(broker.port, messages);
    let plain = done
        .recv_timeout(Duration::from_secs(300))
        .expect("plain publisher delivered");
    let plain_time = plain.done.unwrap() - plain.first.unwrap();

    println!("| what | readings/s | messages | vs plain publisher |");
    println!("|---|---:|---:|---:|");
    let pr = rate(n, plain_time);
    println!("| plain rumqttc publisher (QoS 1, inflight 100) | {pr:.0} | {count} | 1.00 |");
    let dr = rate(n, daemon_time);
    println!(
        "| thingplus-gw draining its buffer (QoS 1, max_inflight 8) | {dr:.0} | {} | {:.2} |",
        seen.messages,
        dr / pr
    );
    println!(
        "\nDuring the drain ({:.1} s): {} status messages arrived; the fresh sensor (10 ms) went on sampling.",
        daemon_time.as_secs_f64(),
        seen.statuses_during
    );

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
