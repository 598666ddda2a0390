//! The daemon against a real Mosquitto: login, will, statuses, values,
//! events, sensor failures, commands, broker restarts and TLS.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn topic(suffix: &str) -> String {
    if suffix.is_empty() {
        format!("v/a/g/{GW}")
    } else {
        format!("v/a/g/{GW}/{suffix}")
    }
}

fn file_sensor(id: &str, ty: &str, path: &std::path::Path, extra: &str) -> String {
    format!(
        "[[sensor]]\nid = \"{id}\"\ntype = \"{ty}\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

#[test]
fn login_status_values_and_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let temp = dir.path().join("temp");
    std::fs::write(&temp, "23500\n").unwrap();
    let hum = dir.path().join("hum");
    std::fs::write(&hum, "41.6\n").unwrap();
    let sensors = file_sensor(
        "{gateway_id}-temperature-0",
        "temperature",
        &temp,
        "scale = 0.001\ninterval = \"200ms\"",
    ) + &file_sensor(
        "{gateway_id}-humidity-0",
        "humidity",
        &hum,
        "interval = \"200ms\"",
    );
    let mut d = Daemon::spawn(
        dir.path(),
        &config_text(dir.path(), broker.port, "", &sensors),
    );

    // Retained "on" after CONNACK.
    let on = cloud.next_on(&topic("mqtt/status"));
    assert_eq!(on.text(), "on");
    // Retained: a subscriber arriving later still learns it.
    let mut late = Cloud::connect(broker.port);
    let on = late.next_on(&topic("mqtt/status"));
    assert_eq!((on.text().as_str(), on.retain), ("on", true));

    // A status listing every sensor, valid for 2 x report interval (1 s).
    let status = cloud.next("a status with both sensors on", |m| {
        m.topic == topic("status") && m.text().matches(",on,").count() == 2
    });
    assert_eq!(
        status.text(),
        format!("on,2,{GW}-temperature-0,on,2,{GW}-humidity-0,on,2")
    );

    // Values: raw x scale, integer types rounded, strictly increasing times.
    let t_id = format!("{GW}-temperature-0");
    cloud.wait_values(&t_id, "5 temperature values", |v| v.len() >= 5);
    let temps = cloud.values_of(&t_id);
    assert!(temps.iter().all(|(_, v)| *v == json!(23.5)), "{temps:?}");
    assert!(temps.windows(2).all(|w| w[0].0 < w[1].0), "{temps:?}");
    let now = thingplus_gw::clock::system_now_ms();
    assert!(
        temps.iter().all(|(t, _)| (now - t).abs() < 600_000),
        "times are Unix ms"
    );
    let hums = cloud.values_of(&format!("{GW}-humidity-0"));
    assert!(
        !hums.is_empty() && hums.iter().all(|(_, v)| *v == json!(42)),
        "{hums:?}"
    );

    // Values messages are never retained; statuses other than mqtt/status neither.
    assert!(cloud
        .all()
        .iter()
        .filter(|m| m.topic != topic("mqtt/status"))
        .all(|m| !m.retain));

    // SIGTERM: retained "off", exit 0.
    let st = d.terminate();
    assert_eq!(st.code(), Some(0), "{}", d.log_lines().join("\n"));
    let off = cloud.next_on(&topic("mqtt/status"));
    assert_eq!(off.text(), "off");
    d.wait_log(&format!(
        "MQTT session stopped: the retained \"off\" status was delivered to 127.0.0.1:{}",
        broker.port
    ));
    let mut late = Cloud::connect(broker.port);
    let off = late.next_on(&topic("mqtt/status"));
    assert_eq!((off.text().as_str(), off.retain), ("off", true));
    // The APIKEY never reaches the log, even at debug level.
    assert_eq!(d.count_log(APIKEY), 0);
}

#[test]
fn will_is_err_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let mut d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", ""));
    assert_eq!(cloud.next_on(&topic("mqtt/status")).text(), "on");
    d.kill9();
    let will = cloud.next_on(&topic("mqtt/status"));
    assert_eq!(will.text(), "err");
    let mut late = Cloud::connect(broker.port);
    let will = late.next_on(&topic("mqtt/status"));
    assert_eq!(
        (will.text().as_str(), will.retain),
        ("err", true),
        "the will is retained"
    );
}

#[test]
fn refused_login_is_reported_once_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let cfg = config_text(dir.path(), broker.port, "", "").replace(APIKEY, "wrong-key");
    let d = Daemon::spawn(dir.path(), &cfg);
    d.wait_log("refused the login of gateway gw-test");
    // Three more attempts happen, and the warning is not repeated.
    let before = d.count_log("connecting");
    d.wait_log_n("connecting", before + 3);
    assert_eq!(
        d.count_warnings("refused the login"),
        1,
        "{}",
        d.log_lines().join("\n")
    );
    assert!(!d.log_lines().iter().any(|l| l.contains("wrong-key")));
}

#[test]
fn event_sensor_beats_the_report_tick() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let door = dir.path().join("door");
    std::fs::write(&door, "0\n").unwrap();
    let sensors = file_sensor(
        "{gateway_id}-onoff-0",
        "onoff",
        &door,
        "interval = \"100ms\"",
    );
    let cfg = config_text(dir.path(), broker.port, "", &sensors)
        .replace("report_interval = \"1s\"", "report_interval = \"30s\"");
    let _d = Daemon::spawn(dir.path(), &cfg);
    let id = format!("{GW}-onoff-0");
    cloud.next("the first status", |m| m.topic == topic("status"));
    cloud.wait_values(&id, "the initial door value", |v| {
        v.iter().any(|(_, x)| *x == json!(0))
    });
    std::fs::write(&door, "1\n").unwrap();
    cloud.wait_values(&id, "the door change", |v| {
        v.iter().any(|(_, x)| *x == json!(1))
    });
    // Both went out before the second report: only one status so far.
    let statuses = cloud
        .all()
        .iter()
        .filter(|m| m.topic == topic("status"))
        .count();
    assert_eq!(statuses, 1, "the change waited for a report tick");
    // Unchanged values are not repeated.
    let vals = cloud.values_of(&id);
    assert_eq!(vals.len(), 2, "{vals:?}");
}

#[test]
fn failing_sensor_is_err_alone_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let good = dir.path().join("good");
    std::fs::write(&good, "1\n").unwrap();
    let missing = dir.path().join("missing");
    let sensors = file_sensor("good", "number", &good, "interval = \"200ms\"")
        + &file_sensor("flaky", "number", &missing, "interval = \"200ms\"");
    let d = Daemon::spawn(
        dir.path(),
        &config_text(dir.path(), broker.port, "", &sensors),
    );
    let st = cloud.next("a status with flaky in err", |m| {
        m.topic == topic("status") && m.text().contains(",flaky,err")
    });
    let text = st.text();
    assert!(text.starts_with("on,2,good,on,2,flaky,err:"), "{text}");
    assert!(text.contains("No such file"), "{text}");
    // The good sensor goes on.
    cloud.wait_values("good", "values of the good sensor", |v| v.len() >= 3);
    // Logged once, not at every tick.
    d.wait_log("sensor read failed");
    let ticks = cloud
        .all()
        .iter()
        .filter(|m| m.topic == topic("status"))
        .count();
    cloud.next("two more statuses", |m| m.topic == topic("status"));
    cloud.next("two more statuses", |m| m.topic == topic("status"));
    assert!(ticks >= 1);
    assert_eq!(d.count_log("sensor read failed"), 1);
    // Recovery once the file is back.
    std::fs::write(&missing, "7\n").unwrap();
    cloud.next("flaky back on", |m| {
        m.topic == topic("status") && m.text().contains(",flaky,on,")
    });
    cloud.wait_values("flaky", "flaky values", |v| {
        v.iter().any(|(_, x)| *x == json!(7))
    });
    d.wait_log("sensor recovered");
}

/// A `swInfo` answer names this program, its version, the build id
/// `--version` prints (this checkout's commit unless a packager set one),
/// and the OS, kernel and architecture it runs on.
fn assert_sw_info(r: &serde_json::Value) {
    assert_eq!(r["result"]["version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(r["result"]["name"], json!("thingplus-gw"));
    // The build id embedded at compile time, the same `--version` prints.
    let build = r["result"]["build"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!build.is_empty(), "{r}");
    // No id given by a packager: the commit of this checkout, by build.rs's
    // rule (only when the crate directory is a git top level, so that a
    // tarball unpacked inside another repository says `unknown`).
    if option_env!("THINGPLUS_GW_BUILD_ID").is_none_or(|v| v.trim().is_empty()) {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(manifest)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let toplevel = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
            std::path::Path::new(&top).canonicalize().ok() == manifest.canonicalize().ok()
        });
        if build != "unknown" || toplevel {
            let head = git(&["rev-parse", "HEAD"]).unwrap_or_default();
            assert!(
                build.len() >= 7 && head.starts_with(&build),
                "build {build} vs HEAD {head:?} (git top level here: {toplevel})"
            );
        }
    }
    let (st, version, _) = run_cli(&["--version"]);
    assert!(st.success());
    assert_eq!(
        version.trim(),
        format!("thingplus-gw {} (build {build})", env!("CARGO_PKG_VERSION"))
    );
    // The OS this runs on, as os-release and uname name it.
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let os = r["result"]["os"].as_str().unwrap_or_default();
    assert!(
        !os.is_empty() && (os_release.contains(os) || os == "Linux"),
        "{r}"
    );
    let (_, uname_r, _) = {
        let o = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap();
        (
            o.status,
            String::from_utf8_lossy(&o.stdout).into_owned(),
            (),
        )
    };
    assert_eq!(r["result"]["kernel"], json!(uname_r.trim()), "{r}");
    assert_eq!(r["result"]["arch"], json!(std::env::consts::ARCH), "{r}");
}

#[test]
fn commands_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let led = dir.path().join("led");
    std::fs::create_dir_all(&led).unwrap();
    for (f, v) in [
        ("brightness", "0"),
        ("max_brightness", "255"),
        ("trigger", "none"),
        ("delay_on", "0"),
        ("delay_off", "0"),
    ] {
        std::fs::write(led.join(f), v).unwrap();
    }
    let temp = dir.path().join("temp");
    std::fs::write(&temp, "20\n").unwrap();
    let extra = format!(
        "{}[[actuator]]\nid = \"{{gateway_id}}-led-0\"\ntype = \"led\"\npath = \"{}\"\n",
        file_sensor("t", "temperature", &temp, "interval = \"200ms\""),
        led.display()
    );
    // A clock that NTP has not synchronised (whatever this machine's is):
    // a server time a day away is then believed.
    let mut d = Daemon::spawn_with(
        dir.path(),
        &config_text(dir.path(), broker.port, "", &extra),
        &[(thingplus_gw::clock::TEST_CLOCK_ENV, "0")],
    );
    cloud.next_on(&topic("mqtt/status"));
    let led_id = format!("{GW}-led-0");
    let read = |f: &str| std::fs::read_to_string(led.join(f)).unwrap();

    // timeSync: readings after it carry the server's time (a day ahead here).
    let server = thingplus_gw::clock::system_now_ms() + 86_400_000;
    let r = cloud.request("ts", json!({"method":"timeSync","params":{"time": server}}));
    assert_eq!(r, json!({"id":"ts","result":""}));
    cloud.wait_values("t", "a value stamped with the server's time", |v| {
        v.iter().any(|(t, _)| *t >= server)
    });

    // swInfo
    let r = cloud.request("sw", json!({"method":"swInfo"}));
    assert_sw_info(&r);

    // LED on / blink / off / timed on, and errors.
    let r = cloud.request(
        "l1",
        json!({"method":"controlActuator","params":{"id": led_id, "cmd":"on"}}),
    );
    assert_eq!(r["result"], json!(""), "{r}");
    assert_eq!(read("brightness"), "255");
    let r = cloud.request("l2", json!({"method":"controlActuator","params":{"id": led_id, "cmd":"blink","options":{"interval":100,"duration":300000}}}));
    assert_eq!(r["result"], json!(""), "{r}");
    assert_eq!(read("trigger"), "timer");
    assert_eq!(read("delay_on"), "100");
    // A newer command cancels the timed blink: "on" must stay on past the blink's duration.
    let r = cloud.request("l3", json!({"method":"controlActuator","params":{"id": led_id, "cmd":"on","options":{"duration":200}}}));
    assert_eq!(r["result"], json!(""));
    d.wait_log("timed command ended: off");
    assert_eq!(read("brightness"), "0");
    assert_eq!(read("trigger"), "none");
    let r = cloud.request(
        "l4",
        json!({"method":"controlActuator","params":{"id":"nope","cmd":"on"}}),
    );
    assert_eq!(r["error"]["code"], json!(-32602));
    let r = cloud.request(
        "l5",
        json!({"method":"controlActuator","params":{"id": led_id, "cmd":"explode"}}),
    );
    assert_eq!(r["error"]["code"], json!(-32602));

    // Unknown and disabled methods.
    let r = cloud.request("u", json!({"method":"teleport"}));
    assert_eq!(r["error"]["code"], json!(-32601));
    let r = cloud.request("rb", json!({"method":"reboot"}));
    assert_eq!(r["error"]["code"], json!(-32601));
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allow_reboot"));

    // Garbage gets -32700 and the daemon goes on answering.
    cloud.request_raw(b"{this is not json");
    let garbage = cloud.next("the parse error", |m| {
        m.topic == topic("res") && m.text().contains("-32700")
    });
    assert_eq!(garbage.json()["id"], serde_json::Value::Null);

    // setProperty: bad values refused, a good one applied at once and persisted.
    for (i, bad) in [json!("abc"), json!(-1), json!(0), json!({"x":1})]
        .iter()
        .enumerate()
    {
        let r = cloud.request(
            &format!("bad{i}"),
            json!({"method":"setProperty","params":{"reportInterval": bad}}),
        );
        assert_eq!(r["error"]["code"], json!(-32602), "{bad}: {r}");
    }
    let r = cloud.request(
        "sp",
        json!({"method":"setProperty","params":{"reportInterval":"3000"}}),
    );
    assert_eq!(r, json!({"id":"sp","result":""}));
    cloud.next("a status valid for 6 s", |m| {
        m.topic == topic("status") && m.text().starts_with("on,6,")
    });

    // Every request was answered exactly once.
    let responses = cloud
        .all()
        .into_iter()
        .filter(|m| m.topic == topic("res"))
        .count();
    assert_eq!(responses, 15);

    // The interval survives a restart.
    assert_eq!(d.terminate().code(), Some(0));
    let mut cloud2 = Cloud::connect(broker.port);
    let _d2 = Daemon::spawn(
        dir.path(),
        &std::fs::read_to_string(dir.path().join("config.toml")).unwrap(),
    );
    cloud2.next("a status valid for 6 s after restart", |m| {
        m.topic == topic("status") && m.text().starts_with("on,6,")
    });
}

#[test]
fn broker_restart_reconnects_no_sooner_than_reconnect_min_and_delivers_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    let cloud = Cloud::connect(broker.port);
    let temp = dir.path().join("temp");
    std::fs::write(&temp, "1\n").unwrap();
    let sensors = file_sensor("t", "number", &temp, "interval = \"100ms\"");
    let cfg = config_text(dir.path(), broker.port, "", &sensors)
        .replace("reconnect_min = \"1s\"", "reconnect_min = \"3s\"")
        .replace("reconnect_max = \"2s\"", "reconnect_max = \"6s\"");
    let d = Daemon::spawn(dir.path(), &cfg);
    d.wait_connected();
    cloud.wait_values("t", "values before the outage", |v| v.len() >= 5);
    let subs = cloud.subscriptions();

    let lost_at = Instant::now();
    broker.kill();
    broker.restart();
    cloud.wait_subscriptions(subs + 1);
    let reconnected_at = d.wait_log_n("connected to Thing+ broker", 2);
    assert!(
        reconnected_at - lost_at >= Duration::from_secs(3),
        "reconnected after {:?}",
        reconnected_at - lost_at
    );
    // Readings taken during the outage arrive, in order, without a gap.
    let first_after = thingplus_gw::clock::system_now_ms();
    cloud.wait_values("t", "values after the reconnect", |v| {
        v.iter().any(|(t, _)| *t > first_after + 500)
    });
    let times = strictly_increasing_dedup(&cloud.values_of("t")).unwrap();
    let biggest_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        biggest_gap < 2_000,
        "a gap of {biggest_gap} ms: readings were lost"
    );
}

#[test]
fn tls_with_the_right_ca_connects_and_a_wrong_ca_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let tls = |ca: &std::path::Path| format!("ca_file = \"{}\"", ca.display());
    let good_dir = dir.path().join("good");
    std::fs::create_dir_all(&good_dir).unwrap();
    let cfg = config_text(&good_dir, broker.tls_port, &tls(&broker.pki.ca_cert), "")
        .replace("tls = false", "tls = true")
        .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    let mut d = Daemon::spawn(&good_dir, &cfg);
    assert_eq!(cloud.next_on(&topic("mqtt/status")).text(), "on");
    assert_eq!(d.terminate().code(), Some(0));

    let bad_dir = dir.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let other = Pki::generate(&bad_dir, "other");
    let cfg = config_text(&bad_dir, broker.tls_port, &tls(&other.ca_cert), "")
        .replace("tls = false", "tls = true")
        .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    let d = Daemon::spawn(&bad_dir, &cfg);
    d.wait_log("TLS with localhost");
    assert_eq!(d.count_log("connected to Thing+ broker"), 0);
}

#[test]
fn client_certificate_login() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let pki = &broker.pki;
    let mqtt = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        pki.ca_cert.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let cfg = config_text(dir.path(), broker.cert_port, &mqtt, "")
        .replace("tls = false", "tls = true")
        .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    let d = Daemon::spawn(dir.path(), &cfg);
    assert_eq!(cloud.next_on(&topic("mqtt/status")).text(), "on");
    // The key never reaches the log.
    let key = std::fs::read_to_string(&pki.client_key).unwrap();
    let body: String = key.lines().nth(1).unwrap().to_string();
    assert!(!d.log_lines().join("\n").contains(&body));

    // Without the certificate, that listener refuses the TLS handshake.
    let dir2 = dir.path().join("nocert");
    std::fs::create_dir_all(&dir2).unwrap();
    let cfg = config_text(
        &dir2,
        broker.cert_port,
        &format!("ca_file = \"{}\"", pki.ca_cert.display()),
        "",
    )
    .replace("tls = false", "tls = true")
    .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    let d2 = Daemon::spawn(&dir2, &cfg);
    d2.wait_log("TLS with localhost");
    assert_eq!(d2.count_log("connected to Thing+ broker"), 0);
}

#[test]
fn config_errors_exit_78_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nid = \"gw\"\napikey = \"k\"\nreprot_interval = \"60s\"\n",
    )
    .unwrap();
    let (st, _, err) = run_cli(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(78), "{err}");
    assert!(err.contains(&format!("{}:4:1", cfg.display())), "{err}");
    assert!(err.contains("reprot_interval"), "{err}");
    let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(78));
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn check_and_id_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config_text(dir.path(), 1883, "", "")).unwrap();
    let (st, out, _) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(st.success());
    assert!(out.contains("gateway id       gw-test (config)"), "{out}");
    assert!(!out.contains(APIKEY), "check must not print the APIKEY");
    let (st, out, _) = run_cli(&["id", "--config", cfg.to_str().unwrap()]);
    assert!(st.success());
    assert_eq!(out.trim(), "gw-test");
    // id works without an APIKEY: it is what the portal asks for to issue one.
    std::fs::write(&cfg, "[gateway]\nid = \"box-200\"\n").unwrap();
    let (st, out, _) = run_cli(&["id", "--config", cfg.to_str().unwrap()]);
    assert!(st.success());
    assert_eq!(out.trim(), "box-200");
}

#[test]
fn unreachable_broker_is_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens there
    let mut d = Daemon::spawn(dir.path(), &config_text(dir.path(), port, "", ""));
    d.wait_log("cannot reach the broker");
    let before = d.count_log("connecting");
    d.wait_log_n("connecting", before + 2);
    assert_eq!(d.count_warnings("cannot reach the broker 127.0.0.1"), 1);
    // Stopped while offline: it says the retained "off" could not be sent.
    assert_eq!(d.terminate().code(), Some(0));
    d.wait_log(&format!(
        "MQTT session stopped while offline: the retained \"off\" status could not be sent to 127.0.0.1:{port}"
    ));
    assert_eq!(d.count_log("was delivered"), 0);
}

#[test]
fn frozen_broker_is_detected_by_the_ack_timeout_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let cloud = Cloud::connect(broker.port);
    let temp = dir.path().join("temp");
    std::fs::write(&temp, "5\n").unwrap();
    let sensors = file_sensor("t", "number", &temp, "interval = \"100ms\"");
    let cfg = config_text(dir.path(), broker.port, "ack_timeout = \"2s\"", &sensors);
    let d = Daemon::spawn(dir.path(), &cfg);
    d.wait_connected();
    cloud.wait_values("t", "values before the freeze", |v| v.len() >= 5);
    broker.pause();
    d.wait_log("the link is considered dead");
    broker.resume();
    d.wait_log_n("connected to Thing+ broker", 2);
    let resumed = thingplus_gw::clock::system_now_ms();
    cloud.wait_values("t", "values after the freeze", |v| {
        v.iter().any(|(t, _)| *t > resumed + 500)
    });
    let times = strictly_increasing_dedup(&cloud.values_of("t")).unwrap();
    let biggest_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        biggest_gap < 2_000,
        "a gap of {biggest_gap} ms: readings were lost"
    );
}

/// A box whose clock is wrong (before 2026, not synchronised) holds its
/// readings; the daemon is killed and started again (same boot), and after
/// `timeSync` every held reading of both runs arrives, in order, with times
/// between the test's start and the sync.
#[test]
fn held_readings_survive_a_restart_before_the_time_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let value = dir.path().join("value");
    std::fs::write(&value, "1\n").unwrap();
    let cfg = config_text(
        dir.path(),
        broker.port,
        "",
        &file_sensor("t", "temperature", &value, "interval = \"100ms\""),
    );
    let start = thingplus_gw::clock::system_now_ms();
    // The box believes it is 2001.
    let offset = (1_000_000_000_000 - start).to_string();
    let env = [(thingplus_gw::clock::TEST_CLOCK_ENV, offset.as_str())];

    let mut first = Daemon::spawn_with(dir.path(), &cfg, &env);
    first.wait_log("readings are held with boot-relative times");
    let v = wait_status_json(dir.path(), "three held readings", |v| {
        v["clock_held"].as_u64().unwrap_or(0) >= 3
    });
    assert_eq!(v["clock_trusted"], json!(false), "{v}");
    // The test clock is visible in the status, not only in the log.
    assert!(
        v["clock"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("test clock offset {offset} ms")),
        "{v}"
    );
    let (_, human, _) = run_cli(&[
        "status",
        "--socket",
        dir.path().join("run/control.sock").to_str().unwrap(),
    ]);
    assert!(
        human.contains(&format!("test clock offset {offset} ms")),
        "{human}"
    );
    assert_eq!(first.count_warnings(thingplus_gw::clock::TEST_CLOCK_ENV), 1);
    first.kill9();
    let killed_at = thingplus_gw::clock::system_now_ms();
    let held_file = dir.path().join("state/held-readings.jsonl");
    assert!(held_file.exists());

    std::fs::write(&value, "2\n").unwrap();
    let second = Daemon::spawn_with(dir.path(), &cfg, &env);
    second.wait_log("are held again");
    let line = second
        .log_lines()
        .into_iter()
        .find(|l| l.contains("are held again"))
        .unwrap();
    let loaded: u64 = line
        .split("loaded=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(loaded >= 3, "{line}");
    wait_status_json(dir.path(), "readings of both runs held", |v| {
        v["clock_held"].as_u64().unwrap_or(0) >= loaded + 3
    });
    assert!(
        cloud.values_of("t").is_empty(),
        "nothing left with a 2001 time"
    );

    let server = thingplus_gw::clock::system_now_ms();
    let r = cloud.request("ts", json!({"method":"timeSync","params":{"time": server}}));
    assert_eq!(r["result"], json!(""), "{r}");
    cloud.wait_values("t", "a reading taken after timeSync", |v| {
        v.iter().any(|(t, _)| *t >= server)
    });
    second.wait_log("held readings released with corrected times");
    // Removed once the buffer has committed them, just after the release.
    let deadline = Instant::now() + WAIT;
    while held_file.exists() {
        assert!(
            Instant::now() < deadline,
            "released, but still held on disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let values = cloud.values_of("t");
    let times = strictly_increasing_dedup(&values).unwrap();
    assert_eq!(times.len(), {
        let mut t: Vec<i64> = values.iter().map(|(t, _)| *t).collect();
        t.dedup();
        t.len()
    });
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<_> = values
        .into_iter()
        .filter(|(t, _)| seen.insert(*t))
        .collect();
    // Every reading of the first run, then the second's, in sampling order.
    let ones = distinct.iter().take_while(|(_, v)| *v == json!(1)).count();
    assert_eq!(ones as u64, loaded, "{distinct:?}");
    assert!(
        distinct[ones..].iter().all(|(_, v)| *v == json!(2)),
        "{distinct:?}"
    );
    // Re-timed into the real time they were taken: the first run's before
    // it was killed, all held ones after the test started.
    for (t, _) in &distinct[..ones] {
        assert!(
            (start..=killed_at).contains(t),
            "{t} not in {start}..={killed_at}"
        );
    }
    for (t, _) in distinct.iter().filter(|(t, _)| *t < server) {
        assert!(*t >= start, "{t} before the test started ({start})");
    }
}

/// Held readings of a run before a reboot cannot be re-timed: dropped,
/// counted in a warning, the file moved aside.
#[test]
fn held_readings_from_an_earlier_boot_are_dropped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("held-readings.jsonl"),
        "{\"boot_id\":\"00000000-0000-0000-0000-000000000000\"}\n[\"t\",1000,1]\n[\"t\",1100,2]\n",
    )
    .unwrap();
    let value = dir.path().join("value");
    std::fs::write(&value, "5\n").unwrap();
    let cfg = config_text(
        dir.path(),
        broker.port,
        "",
        &file_sensor("t", "temperature", &value, "interval = \"100ms\""),
    );
    let cloud = Cloud::connect(broker.port);
    let d = Daemon::spawn(dir.path(), &cfg);
    d.wait_log("2 readings held for the time by a run before the last reboot are dropped");
    assert_eq!(d.count_warnings("before the last reboot are dropped"), 1);
    assert!(state.join("held-readings.previous-boot.jsonl").exists());
    cloud.wait_values("t", "a fresh value", |v| !v.is_empty());
    assert!(cloud.values_of("t").iter().all(|(_, v)| *v == json!(5)));
}
