//! Actuators and remote commands through the real daemon and broker:
//! power switches on value files, exec actuators with a real script, the
//! state left at shutdown, restart/reboot/swUpdate enabled and disabled.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::{json, Value};

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn control(cloud: &mut Cloud, id: &str, act: &str, cmd: &str, options: Value) -> Value {
    cloud.request(
        id,
        json!({"method":"controlActuator","params":{"id": act, "cmd": cmd, "options": options}}),
    )
}

#[test]
fn power_switch_on_a_value_file() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let value = dir.path().join("value");
    let inverted = dir.path().join("inverted");
    std::fs::write(&value, "0").unwrap();
    std::fs::write(&inverted, "1").unwrap();
    let extra = format!(
        "[[actuator]]\nid = \"relay\"\ntype = \"powerSwitch\"\npath = \"{}\"\non_shutdown = \"off\"\n\n[[actuator]]\nid = \"inv\"\ntype = \"powerSwitch\"\npath = \"{}\"\nactive_low = true\n",
        value.display(),
        inverted.display()
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &config_text(dir.path(), broker.port, "", &extra),
    );
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();

    assert_eq!(
        control(&mut cloud, "1", "relay", "on", json!({}))["result"],
        json!("")
    );
    assert_eq!(read(&value), "1");
    // The log names the actuator and the command.
    d.wait_log("request carried out: controlActuator relay on");
    assert_eq!(
        control(&mut cloud, "2", "inv", "on", json!({}))["result"],
        json!("")
    );
    assert_eq!(read(&inverted), "0", "active low: on drives the line low");

    // A timed "on" that a newer command replaces never fires: only the
    // newer one's end is logged, although the first was due much earlier.
    control(&mut cloud, "3", "relay", "on", json!({"duration": 300}));
    control(&mut cloud, "4", "relay", "on", json!({}));
    control(&mut cloud, "5", "relay", "on", json!({"duration": 1500}));
    d.wait_log("timed command ended: off: actuator relay is off again after its duration");
    assert_eq!(d.count_log("timed command ended: off"), 1);
    assert_eq!(read(&value), "0");
    d.wait_log(r#"request carried out: controlActuator relay on {"duration":1500}"#);

    // Software blinking toggles the output, then ends off.
    control(
        &mut cloud,
        "6",
        "relay",
        "blink",
        json!({"interval": 100, "duration": 1000}),
    );
    d.wait_log_n("timed command ended: off", 2);
    assert_eq!(read(&value), "0");

    let r = control(&mut cloud, "7", "relay", "dim", json!({}));
    assert_eq!(r["error"]["code"], json!(-32602));
    d.wait_log(
        r#"request refused: controlActuator relay dim: unknown command "dim" for actuator "relay""#,
    );
    let r = control(&mut cloud, "8", "relay", "on", json!({"duration": "soon"}));
    assert_eq!(r["error"]["code"], json!(-32602));

    // on_shutdown = "off" for the relay; the inverted one is left as it is.
    control(&mut cloud, "9", "relay", "on", json!({}));
    assert_eq!(read(&value), "1");
    assert_eq!(d.terminate().code(), Some(0));
    assert_eq!(read(&value), "0");
    assert_eq!(read(&inverted), "0");
    d.wait_log("actuator turned off at shutdown: relay");
}

#[test]
fn exec_actuator_runs_a_program_with_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let log = dir.path().join("calls");
    let prog = script(
        dir.path(),
        "fan",
        &format!(
            "echo \"$@\" >> {log}\ncase \"$3\" in\n  fail) echo 'relay stuck' >&2; exit 3;;\n  slow) exec sleep 30;;\nesac\necho done",
            log = log.display()
        ),
    );
    let extra = format!(
        "[[actuator]]\nid = \"fan\"\ntype = \"exec\"\ncommand = [\"{}\", \"--unit\", \"2\"]\ntimeout = \"1s\"\n",
        prog.display()
    );
    let d = Daemon::spawn(
        dir.path(),
        &config_text(dir.path(), broker.port, "", &extra),
    );
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));

    let r = control(&mut cloud, "1", "fan", "on", json!({"speed": 3}));
    assert_eq!(r, json!({"id":"1","result":""}));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "--unit 2 on {\"speed\":3}\n"
    );
    d.wait_log(&format!(
        "actuator program succeeded: {} on for actuator fan",
        prog.display()
    ));
    d.wait_log(r#"request carried out: controlActuator fan on {"speed":3}"#);

    let r = control(&mut cloud, "2", "fan", "fail", json!({}));
    assert_eq!(r["error"]["code"], json!(-32000));
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("exit status: 3") && msg.contains("relay stuck"),
        "{msg}"
    );
    d.wait_log(&format!(
        "actuator program failed: fail for actuator fan: {} exited with exit status: 3: relay stuck",
        prog.display()
    ));
    d.wait_log("request refused: controlActuator fan fail: ");

    let r = control(&mut cloud, "3", "fan", "slow", json!({}));
    assert_eq!(r["error"]["code"], json!(-32000));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1 s"),
        "{r}"
    );
}

#[test]
fn unusable_gpio_line_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let extra = "[[actuator]]\nid = \"pump\"\ntype = \"powerSwitch\"\ngpio_chip = \"/dev/gpiochip-missing\"\nline = 4\n";
    let d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", extra));
    d.wait_log("actuator unusable: pump: ");
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));
    let r = control(&mut cloud, "1", "pump", "on", json!({}));
    assert_eq!(r["error"]["code"], json!(-32000));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/dev/gpiochip-missing"),
        "{r}"
    );
}

#[test]
fn restart_answers_then_exits_for_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let mut d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", ""));
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));
    let r = cloud.request("r", json!({"method":"restart"}));
    assert_eq!(r, json!({"id":"r","result":""}));
    // 75 (EX_TEMPFAIL): the unit's Restart= starts it again.
    assert_eq!(d.wait_exit().code(), Some(75));
    assert_eq!(
        cloud.next_on(&format!("v/a/g/{GW}/mqtt/status")).text(),
        "off"
    );

    // Disabled: refused with the reason, and the daemon stays.
    let cfg = config_text(
        dir.path(),
        broker.port,
        "",
        "[rpc]\nallow_restart = false\n",
    );
    let mut d = Daemon::spawn(dir.path(), &cfg);
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));
    let r = cloud.request("r2", json!({"method":"restart"}));
    assert_eq!(r["error"]["code"], json!(-32601));
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allow_restart"));
    assert!(d.child.try_wait().unwrap().is_none());
}

#[test]
fn reboot_poweroff_and_sw_update_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let marks = dir.path().join("marks");
    let reboot = script(
        dir.path(),
        "reboot",
        &format!("echo reboot >> {}", marks.display()),
    );
    let gate = dir.path().join("gate");
    let fail = dir.path().join("fail");
    let update = script(
        dir.path(),
        "update",
        &format!(
            "echo fetching\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n\
             if [ -e {fail} ]; then echo 'E: Unable to locate package' >&2; exit 3; fi\n\
             echo warning: old config kept >&2\necho updated",
            gate = gate.display(),
            fail = fail.display()
        ),
    );
    let extra = format!(
        "[rpc]\nallow_reboot = true\nreboot_command = [\"{}\"]\nsw_update_command = [\"{}\"]\n",
        reboot.display(),
        update.display()
    );
    let cfg = config_text(dir.path(), broker.port, "", &extra);
    let d = Daemon::spawn(dir.path(), &cfg);
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));

    assert_eq!(
        cloud.request("b", json!({"method":"reboot"}))["result"],
        json!("")
    );
    d.wait_log("Reboot requested by the server");
    d.wait_log("request carried out: reboot (the system reboots once this answer is sent)");
    let r = cloud.request("p", json!({"method":"poweroff"}));
    assert_eq!(r["error"]["code"], json!(-32601), "poweroff stays disabled");

    assert_eq!(
        cloud.request("u1", json!({"method":"swUpdate"}))["result"],
        json!("started")
    );
    let r = cloud.request("u2", json!({"method":"swUpdate"}));
    assert_eq!(r["error"]["code"], json!(-32000));
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already running"));
    // While it runs, status says so (with the output so far).
    let status =
        |what: &str, pred: &dyn Fn(&Value) -> bool| sw_update_status(dir.path(), what, pred);
    let (u, human) = status("the running update's first output", &|u| {
        u["running"] == json!(true) && u["output_tail"] == json!("fetching\n")
    });
    assert_eq!(u["command"], json!([update.to_str().unwrap()]), "{u}");
    assert!(u["success"].is_null() && u["finished_ms"].is_null(), "{u}");
    assert!(human.contains("sw update    RUNNING, started"), "{human}");
    assert!(human.contains("| fetching"), "{human}");

    d.wait_log("request carried out: swUpdate (the update runs in the background");
    std::fs::write(&gate, "").unwrap();
    d.wait_log(&format!(
        "software update finished: {}: exit status 0",
        update.display()
    ));
    let (u, human) = status("the finished update", &|u| u["running"] == json!(false));
    assert_eq!(u["success"], json!(true), "{u}");
    assert_eq!(u["exit_code"], json!(0), "{u}");
    assert_eq!(u["outcome"], json!("exit status 0"), "{u}");
    let tail = u["output_tail"].as_str().unwrap();
    for line in ["fetching", "warning: old config kept", "updated"] {
        assert!(tail.contains(line), "{u}");
    }
    assert!(human.contains("sw update    finished"), "{human}");
    assert!(human.contains("(exit status 0)"), "{human}");
    assert!(human.contains("| updated"), "{human}");

    // A failing update: its status and the end of its output.
    std::fs::write(&fail, "").unwrap();
    assert_eq!(
        cloud.request("u3", json!({"method":"swUpdate"}))["result"],
        json!("started")
    );
    d.wait_log("software update failed");
    let (u, human) = status("the failed update", &|u| u["success"] == json!(false));
    assert_eq!(u["running"], json!(false), "{u}");
    assert_eq!(u["exit_code"], json!(3), "{u}");
    assert_eq!(u["outcome"], json!("exit status 3"), "{u}");
    assert_eq!(
        u["output_tail"],
        json!("fetching\nE: Unable to locate package\n"),
        "{u}"
    );
    assert!(human.contains("sw update    FAILED"), "{human}");
    assert!(human.contains("(exit status 3)"), "{human}");
    assert!(human.contains("| E: Unable to locate package"), "{human}");
    // And the log says how it ended, with the output's last lines.
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("software update failed")
                && l.contains("exit status 3")
                && l.contains("E: Unable to locate package")),
        "{}",
        d.log_lines().join("\n")
    );
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "reboot\n");

    drop(d);
    the_last_update_survives_restarts(dir.path(), &cfg);
}

/// The update's part of `status --json` once `pred` holds, and the human
/// table.
fn sw_update_status(dir: &Path, what: &str, pred: &dyn Fn(&Value) -> bool) -> (Value, String) {
    let socket = dir.join("run/control.sock");
    let v = wait_status_json(dir, what, |v| pred(&v["sw_update"]));
    let (_, human, _) = run_cli(&["status", "--socket", socket.to_str().unwrap()]);
    (v["sw_update"].clone(), human)
}

/// After a restart of the daemon (which an update often causes), status
/// still shows the last update's outcome (a failed one here), and a record
/// left "running" by a run that ended shows as interrupted.
fn the_last_update_survives_restarts(dir: &Path, cfg: &str) {
    let status = |what: &str, pred: &dyn Fn(&Value) -> bool| sw_update_status(dir, what, pred);
    let d = Daemon::spawn(dir, cfg);
    let (u, _) = status("the failed update after a restart", &|u| {
        u["success"] == json!(false)
    });
    assert_eq!(u["outcome"], json!("exit status 3"), "{u}");
    assert_eq!(
        u["output_tail"],
        json!("fetching\nE: Unable to locate package\n")
    );
    // A run that ended while its update was still running: interrupted.
    drop(d);
    let record = dir.join("state/sw-update.json");
    let mut r: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    for (k, v) in [
        ("running", json!(true)),
        ("success", Value::Null),
        ("exit_code", Value::Null),
        ("finished_ms", Value::Null),
        ("outcome", Value::Null),
    ] {
        r[k] = v;
    }
    std::fs::write(&record, r.to_string()).unwrap();
    let _d = Daemon::spawn(dir, cfg);
    let (u, human) = status("the interrupted update", &|u| {
        u["outcome"] == json!("interrupted (daemon restarted)")
    });
    assert_eq!(
        (&u["running"], &u["success"]),
        (&json!(false), &json!(false)),
        "{u}"
    );
    assert!(
        human.contains("sw update    FAILED - (interrupted (daemon restarted))"),
        "{human}"
    );
}
