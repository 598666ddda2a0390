//! Limits on what comes in, through the real binary and broker: the
//! configuration file size, request size/nesting/element count, and MQTT
//! packets over the session's limit. Each is answered with a clear error or
//! log line, and the daemon goes on.

mod common;

use common::*;
use serde_json::{json, Value};

fn topic(suffix: &str) -> String {
    format!("v/a/g/{GW}/{suffix}")
}

#[test]
fn a_config_file_over_1_mib_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let base = config_text(dir.path(), 1883, "", "");
    let limit = thingplus_gw::config::MAX_CONFIG_SIZE as usize;
    // Valid TOML padded with comments to exactly the limit: accepted.
    let pad = |total: usize| {
        let mut t = base.clone();
        while t.len() < total {
            let n = (total - t.len()).min(100);
            t.push('#');
            t.push_str(&"x".repeat(n.saturating_sub(2)));
            if n >= 2 {
                t.push('\n');
            }
        }
        t
    };
    let at_limit = pad(limit);
    assert_eq!(at_limit.len(), limit);
    std::fs::write(&cfg, &at_limit).unwrap();
    let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    // One byte more: refused with the limit named, by check and by run.
    std::fs::write(&cfg, pad(limit + 1)).unwrap();
    for cmd in ["check", "run"] {
        let (st, _, err) = run_cli(&[cmd, "--config", cfg.to_str().unwrap()]);
        assert_eq!(st.code(), Some(78), "{cmd}: {err}");
        assert!(
            err.contains("a configuration is limited to 1048576 bytes"),
            "{cmd}: {err}"
        );
        assert!(err.contains(cfg.to_str().unwrap()), "{cmd}: {err}");
    }
}

/// The next response on `.../res` whose error code is `code`.
fn error_response(cloud: &mut Cloud, code: i64) -> Value {
    let t = topic("res");
    let m = cloud.next(&format!("an error {code}"), move |m| {
        m.topic == t
            && serde_json::from_slice::<Value>(&m.payload)
                .map(|v| v["error"]["code"] == json!(code))
                .unwrap_or(false)
    });
    m.json()
}

#[test]
fn oversized_deep_and_crowded_requests_get_json_rpc_errors() {
    use thingplus_gw::thingplus::rpc::{
        MAX_REQUEST_BYTES, MAX_REQUEST_DEPTH, MAX_REQUEST_ELEMENTS,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", ""));
    cloud.next_on(&topic("mqtt/status"));

    // One byte over the size limit.
    let head = r#"{"id":"big","method":"swInfo","params":{"s":""#;
    let tail = r#""}}"#;
    let filler = "a".repeat(MAX_REQUEST_BYTES + 1 - head.len() - tail.len());
    let big = format!("{head}{filler}{tail}");
    assert_eq!(big.len(), MAX_REQUEST_BYTES + 1);
    cloud.request_raw(big.as_bytes());
    let r = error_response(&mut cloud, -32600);
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exceeds the limit of 65536 bytes"), "{r}");
    // The id could be read: the answer carries it.
    assert_eq!(r["id"], json!("big"), "{r}");

    // Nesting one level deeper than allowed.
    let deep = format!(
        r#"{{"id":"deep","method":"swInfo","params":{}{}}}"#,
        "[".repeat(MAX_REQUEST_DEPTH),
        "]".repeat(MAX_REQUEST_DEPTH)
    );
    cloud.request_raw(deep.as_bytes());
    let r = error_response(&mut cloud, -32600);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nests deeper than 32 levels"),
        "{r}"
    );
    assert_eq!(r["id"], json!("deep"), "{r}");

    // More values than allowed.
    let crowded = format!(
        r#"{{"id":"many","method":"swInfo","params":[{}]}}"#,
        vec!["0"; MAX_REQUEST_ELEMENTS + 1].join(",")
    );
    cloud.request_raw(crowded.as_bytes());
    let r = error_response(&mut cloud, -32600);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 1024 values"),
        "{r}"
    );
    assert_eq!(r["id"], json!("many"), "{r}");

    // Unparsable after a readable id (a number here): answered with it.
    cloud.request_raw(br#"{"id":42,"method":"swInfo","params":{"a":tru"#);
    let r = error_response(&mut cloud, -32700);
    assert_eq!(r["id"], json!(42), "{r}");

    // Just within every limit: answered normally.
    let ok = format!(
        r#"{{"id":"fine","method":"swInfo","params":{{"x":{}{}}}}}"#,
        "[".repeat(MAX_REQUEST_DEPTH - 2),
        "]".repeat(MAX_REQUEST_DEPTH - 2)
    );
    cloud.request_raw(ok.as_bytes());
    assert!(cloud.response("fine")["result"].is_object());
    drop(d);
}

#[test]
fn a_packet_over_1_mib_drops_the_connection_not_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let mut d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", ""));
    cloud.next_on(&topic("mqtt/status"));
    // The cloud client itself refuses to send that much: mosquitto_pub does.
    let huge = dir.path().join("huge");
    std::fs::write(
        &huge,
        vec![b' '; thingplus_gw::session::MAX_INCOMING_PACKET + 1],
    )
    .unwrap();
    let st = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-u", CLOUD_USER, "-P", CLOUD_PASS, "-q", "1"])
        .args(["-t", &topic("req"), "-f", huge.to_str().unwrap()])
        .status()
        .expect("mosquitto_pub");
    assert!(st.success());
    // The session is dropped with a log line naming the cause, then comes back.
    d.wait_log(&format!(
        "connection to 127.0.0.1:{} dropped: it sent a packet of",
        broker.port
    ));
    assert_eq!(
        d.count_warnings("over the limit of 1048576 bytes; reconnecting"),
        1
    );
    let t = topic("mqtt/status");
    cloud.next("the gateway back online", move |m| {
        m.topic == t && m.text() == "on"
    });
    let r = cloud.request("after", json!({"method": "swInfo"}));
    assert!(r["result"].is_object(), "{r}");
    assert_eq!(d.terminate().code(), Some(0));
}

/// Runs the binary like `run_cli`, but fails the test instead of hanging
/// when it does not finish in time.
fn run_cli_bounded(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read as _;
    let mut child = std::process::Command::new(bin())
        .args(args)
        .env("RUNTIME_DIRECTORY", std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A device or a FIFO given as the configuration is refused at once, by
/// what it is, without reading it (a device has no size to check) and
/// without blocking (a FIFO with no writer).
#[test]
fn a_config_that_is_a_device_or_a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.fifo");
    mkfifo(&fifo);
    for (path, what) in [
        ("/dev/zero", "it is a character device, not a regular file"),
        (
            "/dev/urandom",
            "it is a character device, not a regular file",
        ),
        (
            fifo.to_str().unwrap(),
            "it is a FIFO (named pipe), not a regular file",
        ),
        (
            dir.path().to_str().unwrap(),
            "it is a directory, not a regular file",
        ),
    ] {
        for cmd in ["check", "run", "id"] {
            let (st, err) = run_cli_bounded(&[cmd, "--config", path]);
            assert_eq!(st.code(), Some(78), "{cmd} {path}: {err}");
            assert!(err.contains(what), "{cmd} {path}: {err}");
            assert!(err.contains(path), "{cmd} {path}: {err}");
        }
    }
}

/// The same for the files the configuration names: `apikey_file` and the
/// TLS files.
#[test]
fn key_and_certificate_files_that_are_fifos_or_devices_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("key.fifo");
    mkfifo(&fifo);
    let base = config_text(dir.path(), 8883, "", "");
    let cfg = dir.path().join("c.toml");
    for special in [fifo.to_str().unwrap(), "/dev/zero"] {
        let text = base.replace(
            &format!("apikey = \"{APIKEY}\""),
            &format!("apikey_file = \"{special}\""),
        );
        assert_ne!(text, base);
        std::fs::write(&cfg, text).unwrap();
        let (st, err) = run_cli_bounded(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(st.code(), Some(78), "{err}");
        assert!(err.contains("not a regular file"), "{err}");
        for key in ["ca_file", "client_cert", "client_key"] {
            let pki = Pki::generate(dir.path(), "p");
            let mut files = [
                ("ca_file", pki.ca_cert.to_str().unwrap().to_string()),
                ("client_cert", pki.client_cert.to_str().unwrap().to_string()),
                ("client_key", pki.client_key.to_str().unwrap().to_string()),
            ];
            for f in files.iter_mut() {
                if f.0 == key {
                    f.1 = special.to_string();
                }
            }
            let tls: String = files
                .iter()
                .map(|(k, v)| format!("{k} = \"{v}\"\n"))
                .collect();
            let text = base.replace("tls = false\n", &format!("tls = true\n{tls}"));
            assert_ne!(text, base);
            std::fs::write(&cfg, text).unwrap();
            let (st, err) = run_cli_bounded(&["check", "--config", cfg.to_str().unwrap()]);
            assert_eq!(st.code(), Some(78), "{key} {special}: {err}");
            assert!(
                err.contains(&format!("[mqtt] {key} {special}"))
                    && err.contains("not a regular file"),
                "{key} {special}: {err}"
            );
        }
    }
}
