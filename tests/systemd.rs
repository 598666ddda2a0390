//! The service-manager side against a real `NOTIFY_SOCKET`: a Unix datagram
//! socket bound by the test, handed to the real daemon binary. Readiness,
//! status, watchdog (and its stop when the main loop is wedged), reload on
//! SIGHUP (sensors added and removed, interval changed, a broken file
//! refused, nothing buffered lost) and stop.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The test's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every datagram received so far.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    /// The next datagram within `timeout`, or None.
    fn recv(&mut self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 8192];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                Some(msg)
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut
                    // A signal to the test process (a child exiting) is not
                    // a failure: the caller's wait loop asks again.
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// Waits (bounded by WAIT) for a datagram satisfying `pred`.
    fn wait(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; received:\n{}",
                self.seen.join("\n--\n")
            );
            if let Some(m) = self.recv(left) {
                if pred(&m) {
                    return m;
                }
            }
        }
    }

    /// Discards what is queued now.
    fn drain(&mut self) {
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).unwrap();
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// The backlog in a status line such as "offline since 12:03, 5 231 pending, ...".
fn pending_of(status: &str) -> Option<u64> {
    let head = &status[..status.find(" pending")?];
    let num = head.rsplit(", ").next()?;
    num.replace(' ', "").parse().ok()
}

fn file_sensor(id: &str, path: &Path, extra: &str) -> String {
    format!(
        "[[sensor]]\nid = \"{id}\"\ntype = \"temperature\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// A port nobody listens on: the daemon stays offline and keeps retrying.
fn closed_port() -> u16 {
    free_port()
}

#[test]
fn notify_ready_status_watchdog_reload_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let value = dir.path().join("temp");
    std::fs::write(&value, "21500\n").unwrap();
    let mut ns = NotifySocket::bind(dir.path());
    let config = config_text(
        dir.path(),
        closed_port(),
        "",
        &file_sensor("t0", &value, "scale = 0.001\ninterval = \"200ms\""),
    );
    // WatchdogSec=2s: the daemon must beat at least every 2 s (it aims for 1 s).
    let watchdog = Duration::from_secs(2);
    let mut d = Daemon::spawn_with(
        dir.path(),
        &config,
        &[
            ns.env(),
            ("WATCHDOG_USEC", &watchdog.as_micros().to_string()),
        ],
    );

    let ready = ns.wait("READY=1", |m| has_line(m, "READY=1"));
    let status = status_of(&ready).expect("READY comes with a STATUS");
    assert!(status.contains("pending"), "{status}");

    // Offline: the status says since when, the backlog and the next attempt.
    let offline = ns.wait("an offline STATUS", |m| {
        status_of(m).is_some_and(|s| s.starts_with("offline since ") && s.contains("retry in"))
    });
    assert!(
        pending_of(status_of(&offline).unwrap()).is_some(),
        "{offline}"
    );

    // Watchdog: beats keep coming, never further apart than WatchdogSec.
    ns.wait("a first WATCHDOG=1", |m| has_line(m, "WATCHDOG=1"));
    for i in 0..3 {
        let deadline = Instant::now() + watchdog;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = ns.recv(left).unwrap_or_else(|| {
                panic!(
                    "beat {i}: no WATCHDOG=1 within WatchdogSec; got:\n{}",
                    ns.seen.join("\n--\n")
                )
            });
            if has_line(&m, "WATCHDOG=1") {
                break;
            }
        }
    }

    // Reload: RELOADING=1 with MONOTONIC_USEC in the same message, then READY=1.
    d.signal(libc::SIGHUP);
    let reloading = ns.wait("RELOADING=1", |m| has_line(m, "RELOADING=1"));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("RELOADING=1 carries MONOTONIC_USEC");
    assert!(usec.parse::<u64>().unwrap() > 0);
    ns.wait("READY=1 after the reload", |m| has_line(m, "READY=1"));
    d.wait_log("configuration reloaded: nothing changed");

    // Stop.
    d.signal(libc::SIGTERM);
    ns.wait("STOPPING=1", |m| has_line(m, "STOPPING=1"));
    assert!(d.wait_exit().success());
}

#[test]
fn watchdog_stops_when_the_main_loop_is_wedged() {
    let dir = tempfile::tempdir().unwrap();
    let mut ns = NotifySocket::bind(dir.path());
    let config = config_text(dir.path(), closed_port(), "", "");
    let watchdog = Duration::from_secs(1);
    let mut d = Daemon::spawn_with(
        dir.path(),
        &config,
        &[
            ns.env(),
            ("WATCHDOG_USEC", &watchdog.as_micros().to_string()),
            ("THINGPLUS_GW_TEST_HOOKS", "1"),
        ],
    );
    ns.wait("READY=1", |m| has_line(m, "READY=1"));
    ns.wait("WATCHDOG=1", |m| has_line(m, "WATCHDOG=1"));
    ns.wait("another WATCHDOG=1", |m| has_line(m, "WATCHDOG=1"));

    // Wedge the main loop (a blocking call on the runtime thread). Beats sent
    // before the wedge are already queued when its log line appears.
    d.signal(libc::SIGUSR2);
    d.wait_log("test hook: wedging the main loop");
    ns.drain();
    // systemd would kill the service after one WatchdogSec without a beat;
    // three of them without any beat shows the beats really stopped.
    let quiet_until = Instant::now() + watchdog * 3;
    loop {
        let left = quiet_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(m) = ns.recv(left) {
            assert!(
                !has_line(&m, "WATCHDOG=1"),
                "a WATCHDOG=1 arrived while the main loop was wedged"
            );
        }
    }
    d.kill9();
}

#[test]
fn reload_adds_and_removes_sensors_changes_interval_refuses_broken_config_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    // Frozen broker: the daemon cannot log in, so everything stays buffered
    // until it is resumed, and the buffer's count is every reading taken.
    broker.pause();

    let a_path = dir.path().join("a");
    let b_path = dir.path().join("b");
    std::fs::write(&a_path, "1\n").unwrap();
    std::fs::write(&b_path, "2\n").unwrap();
    let a = file_sensor("sensor-a", &a_path, "interval = \"100ms\"");
    let b = file_sensor("sensor-b", &b_path, "interval = \"100ms\"");
    let mut ns = NotifySocket::bind(dir.path());
    let d = Daemon::spawn_with(
        dir.path(),
        &config_text(dir.path(), broker.port, "", &a),
        &[ns.env()],
    );
    let write_config = |text: &str| std::fs::write(&d.config, text).unwrap();
    ns.wait("READY=1", |m| has_line(m, "READY=1"));
    ns.wait("a backlog of sensor-a", |m| {
        status_of(m).and_then(pending_of).is_some_and(|n| n >= 5)
    });

    // 1. Remove sensor-a and change the report interval. Once READY=1 is
    // back, sensor-a is stopped and the backlog is all it ever read.
    let ri2 = config_text(dir.path(), broker.port, "", "")
        .replace("report_interval = \"1s\"", "report_interval = \"2s\"");
    assert!(ri2.contains("\"2s\""));
    write_config(&ri2);
    d.signal(libc::SIGHUP);
    ns.wait("RELOADING=1", |m| has_line(m, "RELOADING=1"));
    let ready = ns.wait("READY=1", |m| has_line(m, "READY=1"));
    let taken_by_a = pending_of(status_of(&ready).unwrap()).unwrap();
    d.wait_log("configuration reloaded: sensors +0 -1 ~0, report interval");

    // 2. Add sensor-b.
    write_config(&format!("{ri2}\n{b}"));
    d.signal(libc::SIGHUP);
    ns.wait("RELOADING=1", |m| has_line(m, "RELOADING=1"));
    ns.wait("READY=1", |m| has_line(m, "READY=1"));
    d.wait_log("configuration reloaded: sensors +1 -0 ~0");
    ns.wait("sensor-b adding to the backlog", |m| {
        status_of(m)
            .and_then(pending_of)
            .is_some_and(|n| n > taken_by_a)
    });

    // 3. A broken file is refused, said in the log and the STATUS, and the
    // running configuration stays.
    write_config(&format!("{ri2}\n{b}\n[gateway2]\nwhat = 1\n"));
    d.signal(libc::SIGHUP);
    ns.wait("RELOADING=1", |m| has_line(m, "RELOADING=1"));
    let refused = ns.wait("READY=1", |m| has_line(m, "READY=1"));
    let status = status_of(&refused).unwrap();
    assert!(status.contains("last reload refused"), "{status}");
    assert!(status.contains("config.toml"), "{status}");
    d.wait_log("configuration reload refused");

    // Back online: every reading of sensor-a arrives, each once, and
    // sensor-b's too; statuses follow the new interval (valid 2 x 2 s) and
    // list sensor-b only.
    broker.resume();
    cloud.wait_values("sensor-a", "all of sensor-a's readings", |v| {
        v.len() as u64 >= taken_by_a
    });
    cloud.wait_values("sensor-b", "sensor-b's readings", |v| !v.is_empty());
    let a_values = cloud.values_of("sensor-a");
    let distinct = strictly_increasing_dedup(&a_values).unwrap();
    // Distinct readings (a reconnect may re-send: delivery is at-least-once).
    assert_eq!(
        distinct.len() as u64,
        taken_by_a,
        "sensor-a readings lost or invented"
    );
    let status = cloud.next("a gateway status", |m| {
        m.topic == format!("v/a/g/{GW}/status")
    });
    assert_eq!(status.text(), "on,4,sensor-b,on,4");
    drop(d);
}
