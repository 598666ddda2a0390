//! `thingplus-gw status` against a running daemon: online, a failing sensor,
//! offline with a backlog, and no daemon at all.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

fn status(socket: &std::path::Path) -> (Option<i32>, Value, String) {
    let (st, out, err) = run_cli(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    let v = serde_json::from_str(&out).unwrap_or(Value::Null);
    let (_, human, _) = run_cli(&["status", "--socket", socket.to_str().unwrap()]);
    (st.code(), v, format!("{human}{err}"))
}

/// Polls `status` until `pred` holds (the daemon changes state on its own time).
fn wait_status(
    socket: &std::path::Path,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> (Option<i32>, Value, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(socket);
        if pred(&s.1) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status: {}",
            s.1
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn status_online_failing_sensor_and_offline_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let temp = dir.path().join("temp");
    std::fs::write(&temp, "21500\n").unwrap();
    let led = dir.path().join("led");
    std::fs::create_dir_all(&led).unwrap();
    for f in ["brightness", "max_brightness", "trigger"] {
        std::fs::write(led.join(f), "1").unwrap();
    }
    let extra = format!(
        "[[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"{}\"\nscale = 0.001\ninterval = \"200ms\"\n\n[[actuator]]\nid = \"led\"\ntype = \"led\"\npath = \"{}\"\n",
        temp.display(),
        led.display()
    );
    let run = dir.path().join("run");
    let cfg = config_text(dir.path(), broker.port, "", &extra);
    let _d = Daemon::spawn_with(
        dir.path(),
        &cfg,
        &[("RUNTIME_DIRECTORY", run.to_str().unwrap())],
    );
    let socket = run.join("control.sock");

    // Online.
    cloud.wait_values("t", "a delivered value", |v| !v.is_empty());
    let r = cloud.request(
        "c1",
        json!({"method":"controlActuator","params":{"id":"led","cmd":"off"}}),
    );
    assert_eq!(r["result"], json!(""));
    let (code, v, human) = wait_status(&socket, "connected with a delivery", |v| {
        v["connected"] == json!(true) && v["delivered"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(code, Some(0), "{human}");
    assert_eq!(v["gateway_id"], json!(GW));
    // Version and build, the same `--version` prints.
    let (_, version, _) = run_cli(&["--version"]);
    let build = v["build"].as_str().unwrap().to_string();
    assert!(!build.is_empty(), "{v}");
    assert!(version.contains(&format!("(build {build})")), "{version}");
    assert!(
        human.starts_with(&format!(
            "thingplus-gw {} (build {build}) gateway {GW}",
            env!("CARGO_PKG_VERSION")
        )),
        "{human}"
    );
    assert_eq!(v["sensors"][0]["id"], json!("t"));
    assert_eq!(v["sensors"][0]["value"], json!(21.5));
    assert_eq!(v["actuators"][0], json!(["led", "off"]));
    assert_eq!(v["last_command"]["method"], json!("controlActuator"));
    assert_eq!(v["last_command"]["what"], json!("controlActuator led off"));
    assert!(
        human.contains("last command controlActuator led off (\"c1\")"),
        "{human}"
    );
    assert!(human.contains("connected to 127.0.0.1"), "{human}");
    assert!(human.contains("21.5"), "{human}");
    // Only root and the service group may talk to the daemon.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);

    // A failing sensor makes it unhealthy, with the reason.
    std::fs::remove_file(&temp).unwrap();
    let (code, v, human) = wait_status(&socket, "the sensor error", |v| {
        !v["sensors"][0]["error"].is_null()
    });
    assert_eq!(code, Some(1), "{human}");
    assert!(v["sensors"][0]["error"]
        .as_str()
        .unwrap()
        .contains("No such file"));
    std::fs::write(&temp, "22000\n").unwrap();
    wait_status(&socket, "the sensor back", |v| {
        v["sensors"][0]["error"].is_null()
    });

    // Offline with a backlog.
    broker.kill();
    let (code, v, human) = wait_status(&socket, "offline with a backlog", |v| {
        v["connected"] == json!(false) && v["backlog"]["pending"].as_u64().unwrap_or(0) >= 3
    });
    assert_eq!(code, Some(1), "{human}");
    assert!(v["last_error"].is_string(), "{v}");
    assert!(human.contains("OFFLINE"), "{human}");
    assert!(human.contains("backlog"), "{human}");
    // The store's size is labelled as what it is, not as pending data.
    assert!(v["backlog"]["store_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["backlog"].get("bytes").is_none(), "{v}");
    assert!(
        human.contains("readings pending")
            && human.contains("on disk (database and WAL files, not the size of what is pending)"),
        "{human}"
    );
}

#[test]
fn status_without_a_daemon_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (st, _, err) = run_cli(&[
        "status",
        "--socket",
        dir.path().join("none.sock").to_str().unwrap(),
    ]);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("cannot reach the daemon"), "{err}");
}
