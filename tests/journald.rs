//! Native journald logging, against a datagram socket the test binds and
//! mounts over `/run/systemd/journal/socket` inside a private mount namespace
//! of the daemon (tests run as root), with stderr being the stream named by
//! `JOURNAL_STREAM`, as systemd sets it up.

mod common;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// Parses one native journal datagram into (field, value) pairs.
fn parse_entry(buf: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                line[eq + 1..].to_vec(),
            ));
            rest = &rest[(nl + 1).min(rest.len())..];
        } else {
            // NAME\n<u64 LE length><data>\n
            let name = String::from_utf8_lossy(line).into_owned();
            let body = &rest[nl + 1..];
            let len = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
            out.push((name, body[8..8 + len].to_vec()));
            rest = &body[(8 + len + 1).min(body.len())..];
        }
    }
    out
}

fn field(e: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    e.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn cstr(p: &std::path::Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Spawns `cmd` in a private mount namespace where
/// `/run/systemd/journal/socket` is `socket` (bind-mounted over a tmpfs
/// `/run/systemd`), so the daemon's journald output comes to the test.
/// Needs root, and fails saying so without it.
fn spawn_with_journal_socket(mut cmd: Command, socket: &std::path::Path) -> std::process::Child {
    let src = cstr(socket);
    let run_systemd = CString::new("/run/systemd").unwrap();
    let journal_dir = CString::new("/run/systemd/journal").unwrap();
    let target = CString::new("/run/systemd/journal/socket").unwrap();
    let tmpfs = CString::new("tmpfs").unwrap();
    let root = CString::new("/").unwrap();
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            libc::mkdir(run_systemd.as_ptr(), 0o755);
            check(libc::mount(
                tmpfs.as_ptr(),
                run_systemd.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            check(libc::mkdir(journal_dir.as_ptr(), 0o755))?;
            let fd = libc::open(target.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            check(libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            panic!("this test needs root (CAP_SYS_ADMIN) for a private mount namespace, as CI has: {e}")
        }
        Err(e) => panic!("spawn: {e}"),
    };
    child
}

#[test]
fn logs_natively_to_journald_with_structured_fields_and_no_apikey() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&sock_path).unwrap();
    let config = config_text(
        dir.path(),
        free_port(),
        "",
        &format!(
            "[[sensor]]\nid = \"broken-0\"\ntype = \"temperature\"\npath = \"{}\"\n",
            dir.path().join("missing").display()
        ),
    );
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();

    // stderr: a pipe whose identity goes into JOURNAL_STREAM, as systemd does.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fds[1], &mut st) }, 0);
    let journal_stream = format!("{}:{}", st.st_dev, st.st_ino);

    let mut cmd = Command::new(bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "debug")
        .env("JOURNAL_STREAM", &journal_stream)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end));
    let mut child = spawn_with_journal_socket(cmd, &sock_path);
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(read_end).read_to_string(&mut s);
        s
    });

    // Wait for the failing sensor's warning, with its SENSOR_ID field.
    let mut entries = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no journal entry with SENSOR_ID=broken-0; got {} entries",
            entries.len()
        );
        journal.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = journal.recv(&mut buf) else {
            continue;
        };
        let e = parse_entry(&buf[..n]);
        let found = field(&e, "SENSOR_ID").as_deref() == Some("broken-0");
        entries.push(e);
        if found {
            break;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    journal.set_nonblocking(true).unwrap();
    while let Ok(n) = journal.recv(&mut buf) {
        entries.push(parse_entry(&buf[..n]));
    }

    let warning = entries
        .iter()
        .find(|e| field(e, "SENSOR_ID").as_deref() == Some("broken-0"))
        .unwrap();
    assert_eq!(field(warning, "PRIORITY").as_deref(), Some("4"));
    assert_eq!(
        field(warning, "SYSLOG_IDENTIFIER").as_deref(),
        Some("thingplus-gw")
    );
    assert!(field(warning, "MESSAGE")
        .unwrap()
        .contains("sensor read failed"));
    assert!(field(warning, "ERROR").is_some());
    let started = entries
        .iter()
        .find(|e| field(e, "MESSAGE").is_some_and(|m| m.contains("started")))
        .expect("a start entry");
    assert_eq!(field(started, "GATEWAY_ID").as_deref(), Some(GW));
    let stopped = entries
        .iter()
        .find(|e| field(e, "MESSAGE").is_some_and(|m| m.starts_with("stopped")))
        .expect("a stop entry");
    assert_eq!(
        field(stopped, "MESSAGE").as_deref(),
        Some("stopped: 0 readings stay in the buffer for the next start")
    );
    // The only sensor is broken: nothing was buffered.
    assert_eq!(field(stopped, "BACKLOG").as_deref(), Some("0"));
    // The APIKEY never reaches the journal, at debug level included.
    for e in &entries {
        for (k, v) in e {
            assert!(
                !String::from_utf8_lossy(v).contains(APIKEY),
                "APIKEY in journal field {k}"
            );
        }
    }
    // Everything went to the journal, nothing to the stream.
    let stderr = stderr_reader.join().unwrap();
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
}
