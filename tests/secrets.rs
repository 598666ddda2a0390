//! The APIKEY never appears in logs (at trace level), `check`, `status`,
//! `register` errors or configuration errors.

mod common;

use common::*;

#[test]
fn the_apikey_stays_secret_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let mut seen = String::new();
    let run = dir.path().join("run");
    let temp = dir.path().join("t");
    std::fs::write(&temp, "1").unwrap();
    let sensor = format!(
        "[[sensor]]\nid = \"t\"\ntype = \"number\"\npath = \"{}\"\n",
        temp.display()
    );

    // A session that logs in, at the most verbose level.
    let cfg = config_text(dir.path(), broker.port, "", &sensor);
    let mut d = Daemon::spawn_with(
        dir.path(),
        &cfg,
        &[
            ("RUST_LOG", "trace"),
            ("RUNTIME_DIRECTORY", run.to_str().unwrap()),
        ],
    );
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));
    let r = cloud.request("1", serde_json::json!({"method":"swInfo"}));
    assert!(r["result"].is_object());
    let socket = run.join("control.sock");
    let (_, out, err) = run_cli(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(out.contains(GW), "{out}{err}");
    seen += &out;
    seen += &err;
    let (_, out, err) = run_cli(&["status", "--socket", socket.to_str().unwrap()]);
    seen += &out;
    seen += &err;
    assert_eq!(d.terminate().code(), Some(0));
    seen += &d.log_lines().join("\n");

    // A refused login (the broker knows another key), logged at trace level.
    let wrong = cfg.replace(APIKEY, "Another-SeCrEt-9");
    let d = Daemon::spawn_with(dir.path(), &wrong, &[("RUST_LOG", "trace")]);
    d.wait_log("refused the login");
    let lines = d.log_lines().join("\n");
    assert!(!lines.contains("Another-SeCrEt-9"), "{lines}");
    drop(d);

    // check, id and a config error next to the key.
    let cfg_path = dir.path().join("config.toml");
    for args in [vec!["check"], vec!["id"], vec!["register", "--dry-run"]] {
        let mut a = args.clone();
        a.extend(["--config", cfg_path.to_str().unwrap()]);
        let (_, out, err) = run_cli(&a);
        seen += &out;
        seen += &err;
    }
    let broken = cfg.replace("report_interval = \"1s\"", "report_interval = 5");
    std::fs::write(&cfg_path, &broken).unwrap();
    let (st, out, err) = run_cli(&["check", "--config", cfg_path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(78));
    seen += &out;
    seen += &err;

    assert!(seen.contains("gw-test"), "the outputs were captured");
    assert!(!seen.contains(APIKEY), "the APIKEY leaked:\n{seen}");
}
