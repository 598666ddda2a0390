//! End-to-end benchmarks of the packaged daemon, each figure next
//! to a baseline measured in the same run.
//!
//! Run it through `scripts/bench.sh`, which builds the packaged binary
//! (`cargo build --release --no-default-features`) first, runs this and the
//! buffer benchmarks, and writes `target/bench/report.md`. By hand:
//!
//! ```text
//! cargo build --release --no-default-features
//! cp target/release/thingplus-gw target/bench/   # `cargo bench` overwrites target/release/thingplus-gw
//! cargo bench --no-default-features --bench gateway [size|small|throughput|latency|ready|syscalls]
//! ```
//!
//! Environment: `THINGPLUS_GW_BIN` (the binary measured; default
//! `target/bench/thingplus-gw`), `BENCH_SECS` (length of the steady-state
//! windows, default 60), `BENCH_OUT` (also write the Markdown there),
//! `MOSQUITTO`, `MOSQUITTO_SUB`. Needs Mosquitto and mosquitto-clients.
//!
//! Everything talks to a Mosquitto started here on a free loopback port.
//! CPU time is read through `clock_getcpuclockid(3)` (every thread of the
//! process, exited ones too, in ns); memory from `/proc/PID/status`.
//! Baseline processes (a plain rumqttc publisher) are this same executable
//! re-run with a `plain-publisher` argument, so that their CPU time is
//! measured exactly as the daemon's.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use thingplus_gw::reading::{Reading, Value};
use thingplus_gw::thingplus::{pack_values, parse_values};

const GW: &str = "gwbench";
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------- small helpers

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_bin(env: &str, candidates: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    for c in candidates {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!("{} not found (set {env})", candidates[0]);
}

/// CPU time (user + system) of every thread of `pid`, exited ones included, in ns.
fn cpu_ns(pid: u32) -> u64 {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls write into values we own; results are checked.
    unsafe {
        assert_eq!(
            libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock),
            0,
            "clock_getcpuclockid({pid})"
        );
        assert_eq!(libc::clock_gettime(clock, &mut ts), 0, "clock_gettime");
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A field of `/proc/PID/status` in KiB (VmRSS, VmHWM, RssAnon, RssFile).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------- broker and clients

struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest none\nmax_queued_messages 100000\n"
            ),
        )
        .unwrap();
        let child = Command::new(find_bin(
            "MOSQUITTO",
            &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"],
        ))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Mosquitto { child, port }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message seen by the recording subscriber.
#[derive(Clone)]
struct Seen {
    at: Instant,
    at_ms: i64,
    topic: String,
    payload: Vec<u8>,
}

/// A subscriber to everything the gateway publishes.
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(port: u16) -> Recorder {
        let mut o = MqttOptions::new(format!("recorder-{}", free_port()), "127.0.0.1", port);
        o.set_max_packet_size(16 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = rumqttc::Client::new(o, 64);
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for ev in conn.iter() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(format!("v/a/g/{GW}"), QoS::AtLeastOnce);
                        let _ = client.try_subscribe(format!("v/a/g/{GW}/#"), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Seen {
                            at: Instant::now(),
                            at_ms: now_ms(),
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        };
                        s.lock().unwrap().push(m);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("recorder subscribed");
        Recorder { seen, stop }
    }

    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A pseudo-terminal whose slave the daemon opens as a serial device.
struct Pty {
    master: File,
    _slave: OwnedFd,
    path: PathBuf,
}

impl Pty {
    fn open() -> Pty {
        // SAFETY: plain libc calls on fds this function owns; results are checked.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0, "posix_openpt");
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
            assert!(s >= 0, "open pty slave");
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

    /// Writes a 5-field CSV line every `period` until `stop`, draining what
    /// the daemon might write back.
    fn feed(&self, period: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let mut w = self.master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let line = format!(
                    "{},{},{},{},{}\r\n",
                    200 + i % 50,
                    400 + i % 30,
                    1000 + i % 7,
                    i % 2,
                    50 + i % 11
                );
                if w.write_all(line.as_bytes()).is_err() {
                    return;
                }
                i += 1;
                std::thread::sleep(period);
            }
        })
    }
}

// ---------------------------------------------------------------- the daemon

struct Daemon {
    child: Child,
    socket: PathBuf,
}

fn daemon_config(dir: &Path, port: u16, report_interval: &str, body: &str) -> String {
    format!(
        "[gateway]\nid = \"{GW}\"\napikey = \"bench-key\"\nreport_interval = \"{report_interval}\"\n\
         state_dir = \"{state}\"\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = false\nreconnect_min = \"1s\"\nreconnect_max = \"2s\"\n\n\
         [buffer]\ndir = \"{buffer}\"\n\n{body}",
        state = dir.join("state").display(),
        buffer = dir.join("buffer").display(),
    )
}

/// `n` file sensors on files in `dir`, sampled every `interval`.
fn file_sensors(dir: &Path, n: usize, interval: &str) -> String {
    let values = dir.join("values");
    std::fs::create_dir_all(&values).unwrap();
    let mut out = String::new();
    for i in 0..n {
        let path = values.join(format!("temp{i}"));
        std::fs::write(&path, format!("{}\n", 20_000 + i * 37)).unwrap();
        let _ = write!(
            out,
            "[[sensor]]\nid = \"{GW}-temperature-{i}\"\ntype = \"temperature\"\npath = \"{}\"\nscale = 0.001\ninterval = \"{interval}\"\n\n",
            path.display()
        );
    }
    out
}

/// A CSV serial port on `device` with five sensors, one per field.
fn serial_sensors(device: &Path) -> String {
    let mut out = format!(
        "[serial.station]\ndevice = \"{}\"\nformat = \"csv\"\ncolumns = [\"temp\", \"hum\", \"press\", \"door\", \"noise\"]\n\n",
        device.display()
    );
    for (i, (field, ty, scale)) in [
        ("temp", "temperature", "0.1"),
        ("hum", "humidity", "0.1"),
        ("press", "pressure", "1"),
        ("door", "number", "1"),
        ("noise", "noise", "1"),
    ]
    .iter()
    .enumerate()
    {
        let _ = write!(
            out,
            "[[sensor]]\nid = \"{GW}-{ty}-s{i}\"\ntype = \"{ty}\"\nserial = \"station\"\nfield = \"{field}\"\nscale = {scale}\ninterval = \"1s\"\n\n"
        );
    }
    out
}

impl Daemon {
    fn spawn(bin: &Path, dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).unwrap();
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let log = File::create(dir.join("daemon.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUNTIME_DIRECTORY", &run)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn daemon");
        Daemon {
            child,
            socket: run.join(thingplus_gw::control_socket::SOCKET_NAME),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status(&self) -> Option<thingplus_gw::control_socket::StatusReport> {
        thingplus_gw::control_socket::query(&self.socket, Duration::from_secs(10)).ok()
    }

    fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.status().is_some_and(|s| s.connected) {
                return;
            }
            assert!(Instant::now() < deadline, "the daemon did not connect");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (SIGKILL after 30 s).
    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- the baseline publisher

/// The baseline: a plain rumqttc publisher in a process of its own. It
/// prints `start` once connected and `done MSGS READINGS SECS` when
/// finished, then waits for its stdin to close. The caller reads its CPU
/// time between the two lines.
struct Plain {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
}

struct PlainResult {
    cpu: Duration,
    msgs: u64,
    readings: u64,
    secs: f64,
}

impl Plain {
    fn spawn(args: &[String]) -> Plain {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("plain-publisher")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the plain publisher");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        Plain { child, stdin, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the plain publisher ended early");
        l.trim().to_string()
    }

    fn run(mut self) -> PlainResult {
        assert_eq!(self.line(), "start");
        let pid = self.child.id();
        let cpu0 = cpu_ns(pid);
        let done = self.line();
        let cpu1 = cpu_ns(pid);
        drop(self.stdin.take());
        let _ = self.child.wait();
        let f: Vec<&str> = done.split_whitespace().collect();
        assert_eq!(f[0], "done", "{done}");
        PlainResult {
            cpu: Duration::from_nanos(cpu1 - cpu0),
            msgs: f[1].parse().unwrap(),
            readings: f[2].parse().unwrap(),
            secs: f[3].parse().unwrap(),
        }
    }
}

/// Entry point of the baseline process: `plain-publisher MODE PORT ARGS...`.
///
/// - `replay PORT FILE`: publishes the messages of FILE (lines
///   `OFFSET_MS<TAB>TOPIC<TAB>PAYLOAD`) at their offsets.
/// - `flood PORT FILE SECS WINDOW`: publishes the messages of FILE round
///   robin, as fast as the broker acknowledges, at most WINDOW in flight.
/// - `paced PORT N SECS`: every second, N readings stamped now in one message.
fn plain_publisher(args: &[String]) {
    let mode = args[0].as_str();
    let port: u16 = args[1].parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut o = MqttOptions::new(format!("plain-{}", std::process::id()), "127.0.0.1", port);
        o.set_credentials(GW, "bench-key");
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(100);
        let (client, mut ev) = AsyncClient::new(o, 128);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = ev.poll().await.expect("connect") {
                break;
            }
        }
        println!("start");
        let started = Instant::now();
        let mut acked = Acked::default();
        let link = (&client, &mut ev);
        match mode {
            "replay" => replay(link, &load_plan(&args[2]), started, &mut acked).await,
            "flood" => {
                let plan = load_plan(&args[2]);
                let end = started + Duration::from_secs(args[3].parse().unwrap());
                flood(link, &plan, end, args[4].parse().unwrap(), &mut acked).await;
            }
            "sample-flood" => sample_flood(link, &args[2..], started, &mut acked).await,
            "paced" => {
                let n: usize = args[2].parse().unwrap();
                let end = started + Duration::from_secs(args[3].parse().unwrap());
                paced(link, n, end, &mut acked).await;
            }
            other => panic!("unknown mode {other}"),
        }
        println!(
            "done {} {} {:.3}",
            acked.msgs,
            acked.readings,
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    });
}

/// The plain publisher's client and its event loop.
type Link<'a> = (&'a AsyncClient, &'a mut EventLoop);

/// A planned message: (offset in ms, topic, payload, readings in it).
type PlannedMessage = (i64, String, Vec<u8>, u64);

/// Messages and readings acknowledged so far, and the readings of each
/// message in flight, in order (Mosquitto acknowledges in order).
#[derive(Default)]
struct Acked {
    msgs: u64,
    readings: u64,
    flight: VecDeque<u64>,
}

impl Acked {
    fn sent(&mut self, readings: u64) {
        self.flight.push_back(readings);
    }

    fn on_event(&mut self, event: Event) {
        if let Event::Incoming(Packet::PubAck(_)) = event {
            self.readings += self.flight.pop_front().unwrap_or(0);
            self.msgs += 1;
        }
    }
}

/// The messages of a plan file (lines `OFFSET_MS<TAB>TOPIC<TAB>PAYLOAD`).
fn load_plan(file: &str) -> Vec<PlannedMessage> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let at: i64 = f.next().unwrap().parse().unwrap();
            let topic = f.next().unwrap().to_string();
            let payload = f.next().unwrap().as_bytes().to_vec();
            let n = if topic == format!("v/a/g/{GW}") {
                parse_values(&payload).map_or(0, |r| r.len() as u64)
            } else {
                0
            };
            (at, topic, payload, n)
        })
        .collect()
}

/// Publishes each message of `plan` at its offset from `started`.
async fn replay(link: Link<'_>, plan: &[PlannedMessage], started: Instant, acked: &mut Acked) {
    let (client, ev) = link;
    let mut next = 0;
    while next < plan.len() || !acked.flight.is_empty() {
        let due = plan
            .get(next)
            .map(|p| started + Duration::from_millis(p.0.max(0) as u64));
        tokio::select! {
            _ = async { tokio::time::sleep_until(due.unwrap().into()).await }, if due.is_some() => {
                let (_, topic, payload, n) = &plan[next];
                client.try_publish(topic, QoS::AtLeastOnce, false, payload.clone()).unwrap();
                acked.sent(*n);
                next += 1;
            }
            e = ev.poll() => acked.on_event(e.expect("replay")),
        }
    }
}

/// Publishes the messages of `plan` round robin until `end`, as fast as the
/// broker acknowledges, at most `window` in flight.
async fn flood(
    link: Link<'_>,
    plan: &[PlannedMessage],
    end: Instant,
    window: usize,
    acked: &mut Acked,
) {
    let (client, ev) = link;
    let mut i = 0;
    loop {
        let open = Instant::now() < end;
        while open && acked.flight.len() < window {
            let (_, topic, payload, n) = &plan[i % plan.len()];
            client
                .try_publish(topic, QoS::AtLeastOnce, false, payload.clone())
                .unwrap();
            acked.sent(*n);
            i += 1;
        }
        if !open && acked.flight.is_empty() {
            break;
        }
        acked.on_event(ev.poll().await.expect("flood"));
    }
}

/// The least a gateway must do: read each file, make a reading, encode,
/// publish; no tasks, buffer, clock or status board. `args`: DIR N SECS
/// WINDOW.
async fn sample_flood(link: Link<'_>, args: &[String], started: Instant, acked: &mut Acked) {
    let (client, ev) = link;
    let dir = PathBuf::from(&args[0]);
    let n: usize = args[1].parse().unwrap();
    let secs: u64 = args[2].parse().unwrap();
    let window: usize = args[3].parse().unwrap();
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("temp{i}"))).collect();
    let ids: Vec<Arc<str>> = (0..n)
        .map(|i| Arc::from(format!("{GW}-temperature-{i}")))
        .collect();
    let topic = format!("v/a/g/{GW}");
    let end = started + Duration::from_secs(secs);
    let mut batch: Vec<Reading> = Vec::new();
    let mut k = 0;
    loop {
        let open = Instant::now() < end;
        while open && acked.flight.len() < window {
            while batch.len() < 4096 {
                let raw = std::fs::read_to_string(&paths[k % n]).unwrap();
                let v: f64 = raw.trim().parse().unwrap();
                batch.push(Reading {
                    sensor_id: ids[k % n].clone(),
                    time_ms: now_ms(),
                    value: Value::Number(v * 0.001),
                });
                k += 1;
            }
            let (msg, used) = pack_values(&batch, 64 * 1024);
            batch.drain(..used);
            client
                .try_publish(&topic, QoS::AtLeastOnce, false, msg.into_bytes())
                .unwrap();
            acked.sent(used as u64);
        }
        if !open && acked.flight.is_empty() {
            break;
        }
        acked.on_event(ev.poll().await.expect("sample-flood"));
    }
}

/// Every second until `end`, `n` readings stamped now in one message.
async fn paced(link: Link<'_>, n: usize, end: Instant, acked: &mut Acked) {
    let (client, ev) = link;
    let ids: Vec<Arc<str>> = (0..n)
        .map(|i| Arc::from(format!("{GW}-plain-{i}")))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut k = 0u64;
    while Instant::now() < end || !acked.flight.is_empty() {
        tokio::select! {
            _ = tick.tick(), if Instant::now() < end => {
                let t = now_ms();
                let batch: Vec<Reading> = ids
                    .iter()
                    .map(|id| Reading { sensor_id: id.clone(), time_ms: t, value: Value::Number(k as f64 * 0.01) })
                    .collect();
                k += 1;
                let (msg, _) = pack_values(&batch, usize::MAX);
                client.try_publish(format!("v/a/g/{GW}"), QoS::AtLeastOnce, false, msg.into_bytes()).unwrap();
                acked.sent(n as u64);
            }
            e = ev.poll() => acked.on_event(e.expect("paced")),
        }
    }
}

/// Writes a plan of messages shaped like the daemon's in the throughput run:
/// 1,000 sensors, up to 64 KiB each.
fn write_thousand_sensor_plan(path: &Path) {
    let ids: Vec<Arc<str>> = (0..1000)
        .map(|i| Arc::from(format!("{GW}-temperature-{i}")))
        .collect();
    let t = now_ms();
    let readings: Vec<Reading> = (0..20_000)
        .map(|i| Reading {
            sensor_id: ids[i % 1000].clone(),
            time_ms: t + (i / 1000) as i64 * 10,
            value: Value::Number(20.0 + (i % 1000) as f64 * 0.037),
        })
        .collect();
    let mut msgs = Vec::new();
    let mut rest = &readings[..];
    while !rest.is_empty() {
        let (m, n) = pack_values(rest, 64 * 1024);
        msgs.push(m);
        rest = &rest[n..];
    }
    let topic = format!("v/a/g/{GW}");
    let plan: Vec<(i64, &str, &[u8])> = msgs
        .iter()
        .map(|m| (0, topic.as_str(), m.as_bytes()))
        .collect();
    write_plan(path, &plan);
}

/// The messages a subscriber saw, at the same pace (from `start`), sent
/// again by a plain rumqttc publisher.
fn replay_plainly(dir: &Path, port: u16, seen: &[Seen], start: Instant) -> PlainResult {
    let plan_path = dir.join("replay.tsv");
    let first = seen.first().map_or(start, |m| m.at);
    let plan: Vec<(i64, &str, &[u8])> = seen
        .iter()
        .map(|m| {
            (
                (m.at - first).as_millis() as i64,
                m.topic.as_str(),
                &m.payload[..],
            )
        })
        .collect();
    write_plan(&plan_path, &plan);
    Plain::spawn(&[
        "replay".into(),
        port.to_string(),
        plan_path.display().to_string(),
    ])
    .run()
}

fn write_plan(path: &Path, msgs: &[(i64, &str, &[u8])]) {
    let mut f = std::io::BufWriter::new(File::create(path).unwrap());
    for (at, topic, payload) in msgs {
        assert!(!payload.contains(&b'\n') && !payload.contains(&b'\t'));
        f.write_all(format!("{at}\t{topic}\t").as_bytes()).unwrap();
        f.write_all(payload).unwrap();
        f.write_all(b"\n").unwrap();
    }
}

fn readings_in(seen: &[Seen]) -> usize {
    let topic = format!("v/a/g/{GW}");
    seen.iter()
        .filter(|m| m.topic == topic)
        .map(|m| parse_values(&m.payload).map_or(0, |r| r.len()))
        .sum()
}

// ---------------------------------------------------------------- the scenarios

struct Row {
    what: String,
    ours: String,
    baseline: String,
    budget: String,
    verdict: String,
}

fn row(what: &str, ours: String, baseline: String, budget: &str, verdict: Option<bool>) -> Row {
    Row {
        what: what.into(),
        ours,
        baseline,
        budget: budget.into(),
        verdict: match verdict {
            None => String::new(),
            Some(true) => "met".into(),
            Some(false) => "**missed**".into(),
        },
    }
}

struct Bench {
    bin: PathBuf,
    secs: Duration,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Bench {
    fn binary_size(&mut self) {
        let size = std::fs::metadata(&self.bin).unwrap().len();
        // The release profile strips; strip a copy anyway in case it did not.
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("stripped");
        let stripped = Command::new("strip")
            .arg("-o")
            .arg(&copy)
            .arg(&self.bin)
            .status()
            .ok()
            .filter(|s| s.success())
            .and_then(|_| std::fs::metadata(&copy).ok())
            .map_or(size, |m| m.len());
        let budget = 6 * 1024 * 1024;
        self.rows.push(row(
            "Release binary, stripped (`--no-default-features`)",
            format!("{:.2} MiB ({} bytes)", stripped as f64 / MIB, stripped),
            "none".into(),
            "≤ 6 MiB",
            Some(stripped <= budget),
        ));
    }

    /// 50 file sensors at 1 s and 5 serial fields, connected: RSS and CPU
    /// over a steady window, against mosquitto_sub's RSS and a plain
    /// publisher replaying the same messages.
    fn small_box(&mut self) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let broker = Mosquitto::start(dir);
        let sub = Command::new(find_bin(
            "MOSQUITTO_SUB",
            &["/usr/bin/mosquitto_sub", "/usr/local/bin/mosquitto_sub"],
        ))
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", "bench/idle", "-q", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
        let mut sub = scopeguard(sub);
        let recorder = Recorder::start(broker.port);
        let pty = Pty::open();
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = pty.feed(Duration::from_millis(200), stop.clone());
        let config = daemon_config(
            dir,
            broker.port,
            "1s",
            &format!(
                "{}{}",
                file_sensors(dir, 50, "1s"),
                serial_sensors(&pty.path)
            ),
        );
        let d = Daemon::spawn(&self.bin, dir, &config, &[]);
        d.wait_connected();
        std::thread::sleep(Duration::from_secs(5)); // warm-up
        let pid = d.pid();
        let s0 = d.status().unwrap();
        let (c0, t0) = (cpu_ns(pid), Instant::now());
        recorder.take();
        std::thread::sleep(self.secs);
        let (c1, t1) = (cpu_ns(pid), Instant::now());
        let s1 = d.status().unwrap();
        let seen = recorder.take();
        let (rss, hwm, anon, file) = (
            status_kib(pid, "VmRSS"),
            status_kib(pid, "VmHWM"),
            status_kib(pid, "RssAnon"),
            status_kib(pid, "RssFile"),
        );
        let sub_rss = status_kib(sub.0.id(), "VmRSS");
        d.stop();
        stop.store(true, Ordering::Relaxed);
        let _ = sub.0.kill();
        let _ = sub.0.wait();
        drop(pty);
        let _ = feeder.join();

        let window = t1 - t0;
        let cpu = Duration::from_nanos(c1 - c0);
        let delivered = s1.delivered - s0.delivered;
        let sampled_per_s = delivered as f64 / window.as_secs_f64();
        let errors: Vec<String> = s1
            .sensors
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.id)))
            .collect();
        if !errors.is_empty() {
            self.notes.push(format!(
                "small box: {} sensors in error at the end: {}",
                errors.len(),
                errors[0]
            ));
        }

        let plain = replay_plainly(dir, broker.port, &seen, t0);
        let seen_readings = readings_in(&seen);

        let pct = |cpu: Duration, wall: f64| 100.0 * cpu.as_secs_f64() / wall;
        let ours_pct = pct(cpu, window.as_secs_f64());
        let plain_pct = pct(plain.cpu, plain.secs);
        let per_k = |cpu: Duration, n: u64| cpu.as_secs_f64() * 1000.0 * 1000.0 / n.max(1) as f64;
        self.rows.push(row(
            "RSS after 60 s: 50 file sensors at 1 s + 5 serial fields, connected to Mosquitto",
            format!(
                "{} (peak {}; anon {}, file {})",
                mib(rss),
                mib(hwm),
                mib(anon),
                mib(file)
            ),
            format!("`mosquitto_sub` idle: {}", mib(sub_rss)),
            "≤ 8 MiB",
            Some(rss <= 8 * 1024),
        ));
        self.rows.push(row(
            &format!(
                "CPU, same run ({:.0} readings/s delivered, report interval 1 s)",
                sampled_per_s
            ),
            format!("{ours_pct:.3} % of one core"),
            format!(
                "plain rumqttc replaying the same {} messages: {plain_pct:.3} %",
                plain.msgs
            ),
            "< 0.5 %",
            Some(ours_pct < 0.5),
        ));
        self.rows.push(row(
            "CPU time per 1,000 readings delivered, same run",
            format!("{:.1} ms ({delivered} readings)", per_k(cpu, delivered)),
            format!(
                "plain rumqttc, same messages: {:.1} ms ({} readings)",
                per_k(plain.cpu, plain.readings),
                plain.readings
            ),
            "",
            None,
        ));
        self.notes.push(format!(
            "small box: window {:.1} s after 5 s of warm-up; {} readings delivered (PUBACK, from `thingplus-gw status`), {} seen by a subscriber; {} messages replayed by the baseline.",
            window.as_secs_f64(),
            delivered,
            seen_readings,
            plain.msgs
        ));
    }

    /// 1,000 file sensors sampled as fast as the daemon can (1 ms interval):
    /// delivered readings/s and CPU per reading, against a plain loop doing
    /// the least a gateway must (read, encode, publish) and against rumqttc
    /// alone flooding pre-encoded messages of the same shape.
    fn throughput(&mut self) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let broker = Mosquitto::start(dir);
        let config = daemon_config(
            dir,
            broker.port,
            "1s",
            &file_sensors(
                dir,
                1000,
                &std::env::var("BENCH_TP_INTERVAL").unwrap_or("1ms".into()),
            ),
        );
        let d = Daemon::spawn(&self.bin, dir, &config, &[]);
        d.wait_connected();
        std::thread::sleep(Duration::from_secs(5));
        let pid = d.pid();
        let s0 = d.status().unwrap();
        let (c0, t0) = (cpu_ns(pid), Instant::now());
        std::thread::sleep(self.secs);
        let (c1, t1) = (cpu_ns(pid), Instant::now());
        let s1 = d.status().unwrap();
        let rss = status_kib(pid, "VmRSS");
        d.stop();
        let window = (t1 - t0).as_secs_f64();
        let delivered = s1.delivered - s0.delivered;
        let pending = |s: &thingplus_gw::control_socket::StatusReport| {
            s.backlog.as_ref().map_or(0, |b| b.pending)
        };
        let (p0, p1) = (pending(&s0), pending(&s1));
        let sampled = delivered as i64 + p1 as i64 - p0 as i64;
        let cpu = Duration::from_nanos(c1 - c0);

        let plan_path = dir.join("flood.tsv");
        write_thousand_sensor_plan(&plan_path);
        let flood_secs = (self.secs.as_secs() / 3).max(5);
        let plain = Plain::spawn(&[
            "flood".into(),
            broker.port.to_string(),
            plan_path.display().to_string(),
            flood_secs.to_string(),
            "8".into(),
        ])
        .run();
        let plain_rate = plain.readings as f64 / plain.secs;
        let naive = Plain::spawn(&[
            "sample-flood".into(),
            broker.port.to_string(),
            dir.join("values").display().to_string(),
            "1000".into(),
            flood_secs.to_string(),
            "8".into(),
        ])
        .run();
        let naive_rate = naive.readings as f64 / naive.secs;
        let per_k = |cpu: Duration, n: u64| cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
        self.rows.push(row(
            &format!(
                "End-to-end, 1,000 file sensors at 1 ms (as fast as they are read), {} s: readings/s sensor → PUBACK",
                self.secs.as_secs()
            ),
            format!(
                "{}/s delivered (sampled {}/s; backlog {} → {})",
                thousands(delivered as f64 / window),
                thousands(sampled as f64 / window),
                thousands(p0 as f64),
                thousands(p1 as f64)
            ),
            format!(
                "a plain loop reading the same files, encoding, publishing with rumqttc: {}/s; rumqttc alone, pre-encoded 64 KiB messages: {}/s ({flood_secs} s each, 8 in flight)",
                thousands(naive_rate),
                thousands(plain_rate)
            ),
            "",
            None,
        ));
        self.rows.push(row(
            "CPU time per 1,000 readings delivered, same run",
            format!(
                "{:.2} ms ({:.0} % of one core; RSS {})",
                per_k(cpu, delivered),
                100.0 * cpu.as_secs_f64() / window,
                mib(rss)
            ),
            format!(
                "plain loop: {:.2} ms; rumqttc alone: {:.3} ms",
                per_k(naive.cpu, naive.readings),
                per_k(plain.cpu, plain.readings)
            ),
            "",
            None,
        ));
    }

    /// 100 event sensors at 1 s (their value changes every sample, so each
    /// reading is sent at once): sampling time to arrival at a subscriber.
    fn latency(&mut self) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let broker = Mosquitto::start(dir);
        let recorder = Recorder::start(broker.port);
        let mut body = String::new();
        for i in 0..100 {
            let _ = write!(
                body,
                "[[sensor]]\nid = \"{GW}-uptime-{i}\"\ntype = \"number\"\npath = \"/proc/uptime\"\nregex = '^(\\S+)'\nevent = true\ninterval = \"1s\"\n\n"
            );
        }
        let config = daemon_config(dir, broker.port, "60s", &body);
        let d = Daemon::spawn(&self.bin, dir, &config, &[]);
        d.wait_connected();
        std::thread::sleep(Duration::from_secs(3));
        recorder.take();
        let secs = (self.secs / 2).max(Duration::from_secs(5));
        std::thread::sleep(secs);
        let seen = recorder.take();
        d.stop();
        let ours = latencies(&seen);
        let plain = Plain::spawn(&[
            "paced".into(),
            broker.port.to_string(),
            "100".into(),
            secs.as_secs().to_string(),
        ]);
        recorder.take();
        let _ = plain.run();
        let base = latencies(&recorder.take());
        let fmt = |l: &[f64]| {
            format!(
                "p99 {:.0} ms (p50 {:.0}, max {:.0}; {} readings)",
                percentile(l, 99.0),
                percentile(l, 50.0),
                l.last().copied().unwrap_or(f64::NAN),
                l.len()
            )
        };
        self.rows.push(row(
            &format!(
                "Latency sampling → PUBACK at 100 readings/s ({} s, 100 event sensors at 1 s)",
                secs.as_secs()
            ),
            fmt(&ours),
            format!("plain rumqttc, 100 readings/s: {}", fmt(&base)),
            "",
            None,
        ));
    }

    /// System calls per reading under `strace -f -c`, 50 file sensors at 1 s.
    fn syscalls(&mut self) {
        if Command::new("strace").arg("-V").output().is_err() {
            self.notes
                .push("strace is not installed: no system call counts.".into());
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let broker = Mosquitto::start(dir);
        let config = daemon_config(dir, broker.port, "1s", &file_sensors(dir, 50, "1s"));
        let d = Daemon::spawn(&self.bin, dir, &config, &[]);
        d.wait_connected();
        std::thread::sleep(Duration::from_secs(2));
        let out = dir.join("strace.txt");
        let mut strace = Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(&out)
            .args(["-p", &d.pid().to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1)); // attached
        let s0 = d.status().unwrap();
        std::thread::sleep((self.secs / 4).max(Duration::from_secs(10)));
        let s1 = d.status().unwrap();
        // SAFETY: signalling our own child; SIGINT makes strace detach and write its table.
        unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
        let _ = strace.wait();
        d.stop();
        let readings = (s1.delivered - s0.delivered).max(1) as f64;
        let table = std::fs::read_to_string(&out).unwrap_or_default();
        // "% time seconds usecs/call calls [errors] syscall"
        let mut calls: Vec<(String, u64)> = table
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < 5 || f[0].parse::<f64>().is_err() || f.last() == Some(&"total") {
                    return None;
                }
                Some((f.last()?.to_string(), f[3].parse().ok()?))
            })
            .collect();
        calls.sort_by_key(|c| std::cmp::Reverse(c.1));
        let total: u64 = calls.iter().map(|c| c.1).sum();
        let top: Vec<String> = calls
            .iter()
            .take(8)
            .map(|(name, n)| format!("{name} {:.2}", *n as f64 / readings))
            .collect();
        self.rows.push(row(
            "System calls per reading (strace, 50 file sensors at 1 s, report interval 1 s)",
            format!("{:.1}: {}", total as f64 / readings, top.join(", ")),
            "reading a file: 4 (openat, read, read at EOF, close)".into(),
            "",
            None,
        ));
    }

    /// Spawn to `READY=1`, against spawn to exit of /bin/true.
    fn ready(&mut self) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let broker = Mosquitto::start(dir);
        let pty = Pty::open();
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = pty.feed(Duration::from_millis(200), stop.clone());
        let plain = daemon_config(
            dir,
            broker.port,
            "1s",
            &format!(
                "{}{}",
                file_sensors(dir, 50, "1s"),
                serial_sensors(&pty.path)
            ),
        );
        // The packaged default: TLS with the system trust store (not reached:
        // READY does not wait for the cloud).
        let tls = plain
            .replace(
                &format!("port = {}\n", broker.port),
                &format!("port = {}\n", free_port()),
            )
            .replace("tls = false\n", "tls = true\n");
        let runs = 20;
        let sock_path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let measure = |config: &str| {
            let mut times = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                let d = Daemon::spawn(
                    &self.bin,
                    dir,
                    config,
                    &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
                );
                let mut buf = [0u8; 4096];
                loop {
                    let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1")
                    {
                        break;
                    }
                }
                times.push(start.elapsed());
                d.stop();
                // Anything sent while stopping.
                sock.set_nonblocking(true).unwrap();
                while sock.recv(&mut buf).is_ok() {}
                sock.set_nonblocking(false).unwrap();
            }
            times.sort();
            times
        };
        let t_plain = measure(&plain);
        let t_tls = measure(&tls);
        let mut t_true = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            Command::new("/bin/true").status().unwrap();
            t_true.push(start.elapsed());
        }
        t_true.sort();
        stop.store(true, Ordering::Relaxed);
        drop(pty);
        let _ = feeder.join();
        let med = |t: &[Duration]| t[t.len() / 2];
        let max = |t: &[Duration]| *t.last().unwrap();
        self.rows.push(row(
            &format!("Start to `READY=1`, 55 sensors, plain MQTT (median of {runs}; max)"),
            format!("{} (max {})", ms(med(&t_plain)), ms(max(&t_plain))),
            format!(
                "spawn to exit of `/bin/true`: {} (max {})",
                ms(med(&t_true)),
                ms(max(&t_true))
            ),
            "≤ 50 ms",
            Some(med(&t_plain) <= Duration::from_millis(50)),
        ));
        self.rows.push(row(
            &format!(
                "Start to `READY=1`, same with TLS and the system trust store (median of {runs}; max)"
            ),
            format!("{} (max {})", ms(med(&t_tls)), ms(max(&t_tls))),
            "same".into(),
            "≤ 50 ms",
            Some(med(&t_tls) <= Duration::from_millis(50)),
        ));
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| Measure | thingplus-gw | Baseline (same run) | Budget | |\n");
        out.push_str("|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.what, r.ours, r.baseline, r.budget, r.verdict
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// Latencies (ms, sorted) of every reading in `seen`: arrival minus sampling time.
fn latencies(seen: &[Seen]) -> Vec<f64> {
    let topic = format!("v/a/g/{GW}");
    let mut l: Vec<f64> = seen
        .iter()
        .filter(|m| m.topic == topic)
        .flat_map(|m| {
            parse_values(&m.payload)
                .unwrap_or_default()
                .into_iter()
                .map(move |r| (m.at_ms - r.time_ms) as f64)
        })
        .collect();
    l.sort_by(f64::total_cmp);
    l
}

/// Kills a child when dropped.
struct Guard(Child);
fn scopeguard(c: Child) -> Guard {
    Guard(c)
}
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("plain-publisher") {
        plain_publisher(&args[1..]);
        return;
    }
    let only: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if only.is_empty() && !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs benches without `--bench`: minutes of
        // measurements are not a test.
        eprintln!("gateway benchmarks: run them with `cargo bench` or scripts/bench.sh");
        return;
    }
    let want = |name: &str| only.is_empty() || only.iter().any(|a| a.as_str() == name);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("THINGPLUS_GW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/bench/thingplus-gw"));
    assert!(
        bin.exists(),
        "{} does not exist: run scripts/bench.sh, or build with `cargo build --release --no-default-features` and set THINGPLUS_GW_BIN",
        bin.display()
    );
    let mut b = Bench {
        bin,
        secs: env_secs("BENCH_SECS", 60),
        rows: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!(
        "gateway benchmarks on {} (windows of {} s)",
        b.bin.display(),
        b.secs.as_secs()
    );
    type Step = (&'static str, fn(&mut Bench));
    let steps: [Step; 6] = [
        ("size", Bench::binary_size),
        ("small", Bench::small_box),
        ("throughput", Bench::throughput),
        ("latency", Bench::latency),
        ("ready", Bench::ready),
        ("syscalls", Bench::syscalls),
    ];
    for (name, f) in steps {
        if want(name) {
            eprintln!("== {name}");
            let t = Instant::now();
            f(&mut b);
            eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
        }
    }
    let md = b.markdown();
    print!("{md}");
    if let Some(out) = std::env::var_os("BENCH_OUT") {
        std::fs::write(out, &md).unwrap();
    }
}
