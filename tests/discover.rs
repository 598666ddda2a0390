//! `discover` against a fixture sysfs tree built like the real one: its TOML
//! loads with `check` and runs, values arriving at the broker.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

#[test]
fn discovered_config_checks_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = dir.path().join("sys");
    copy_tree(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sysfs")),
        &sysfs,
    );
    let dev = dir.path().join("dev");
    std::fs::create_dir_all(dev.join("serial/by-id")).unwrap();
    std::os::unix::fs::symlink(
        "../../ttyUSB0",
        dev.join("serial/by-id/usb-FTDI_FT232R_A12345-if00-port0"),
    )
    .unwrap();

    let (st, toml_out, err) = run_cli(&[
        "discover",
        "--sysfs-root",
        sysfs.to_str().unwrap(),
        "--dev-root",
        dev.to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    // The table for people.
    for needle in [
        "hwmon coretemp Package id 0",
        "45 °C",
        "thermal thermal_zone1 acpitz",
        "iio bme280 in_pressure",
        "95 kPa",
        "1-Wire 28-0316a2795aff",
        "23.125 °C",
        "LED led0",
        "GPIO chip gpiochip0 INT34C5:00 32",
        "serial device",
        "usb-FTDI_FT232R_A12345-if00-port0",
    ] {
        assert!(toml_out.contains(needle), "missing {needle:?}:\n{toml_out}");
    }

    // Pasted under a [gateway] section, it is a valid configuration.
    let broker = Mosquitto::start(dir.path());
    let cfg = config_text(dir.path(), broker.port, "", &toml_out);
    let cfg_path = dir.path().join("discovered.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let (st, out, err) = run_cli(&["check", "--config", cfg_path.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(out.contains("sensors          12"), "{out}");
    assert!(out.contains("actuators        2"), "{out}");

    // And it runs: every discovered sensor reports, with the right scaling.
    let mut cloud = Cloud::connect(broker.port);
    let _d = Daemon::spawn(dir.path(), &cfg);
    let status = cloud.next("a status with all 12 sensors on", |m| {
        m.topic == format!("v/a/g/{GW}/status") && m.text().matches(",on,").count() == 12
    });
    assert!(status.text().starts_with("on,"));
    for (id, want) in [
        ("temperature-0", json!(45)),
        ("temperature-3", json!(27.8)),
        ("temperature-5", json!(23.125)),
        ("pressure-0", json!(95)),
        ("voltage-1", json!(12.4)),
        ("battery-0", json!(87)),
    ] {
        let id = format!("{GW}-{id}");
        cloud.wait_values(&id, &id, |v| !v.is_empty());
        assert_eq!(cloud.values_of(&id)[0].1, want, "{id}");
    }
    // The discovered LED is driven.
    let r = cloud.request(
        "1",
        json!({"method":"controlActuator","params":{"id": format!("{GW}-led-1"), "cmd":"on"}}),
    );
    assert_eq!(r["result"], json!(""), "{r}");
    assert_eq!(
        std::fs::read_to_string(sysfs.join("class/leds/led1/brightness")).unwrap(),
        "1"
    );
}

#[test]
fn discover_on_an_empty_tree_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (st, out, err) = run_cli(&["discover", "--sysfs-root", dir.path().to_str().unwrap()]);
    assert!(st.success());
    assert!(out.contains("0 sensor(s)"), "{out}");
    assert!(err.contains("nothing found"), "{err}");
}

/// `[gateway] sysfs_root`: the daemon reads `/sys/...` sensor paths and
/// drives `/sys/...` LEDs and value files under another tree; `check`
/// shows it; `discover --config` walks it.
#[test]
fn daemon_uses_sysfs_root_for_sys_paths() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    copy_tree(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sysfs")),
        &tree,
    );
    // Values only this copy has, so they cannot come from the host's /sys.
    std::fs::write(tree.join("class/hwmon/hwmon0/temp1_input"), "61250\n").unwrap();
    std::fs::create_dir_all(tree.join("class/gpio/gpio17")).unwrap();
    std::fs::write(tree.join("class/gpio/gpio17/value"), "0\n").unwrap();
    let broker = Mosquitto::start(dir.path());
    let extra = r#"
[[sensor]]
id = "{gateway_id}-temperature-0"
type = "temperature"
path = "/sys/class/hwmon/hwmon0/temp1_input"
scale = 0.001

[[sensor]]
id = "{gateway_id}-temperature-1"
type = "temperature"
path = "/sys/bus/w1/devices/28-0316a2795aff/w1_slave"
regex = 't=(-?\d+)'
scale = 0.001

[[actuator]]
id = "{gateway_id}-led-0"
type = "led"
path = "/sys/class/leds/led0"

[[actuator]]
id = "{gateway_id}-powerSwitch-0"
type = "powerSwitch"
path = "/sys/class/gpio/gpio17/value"
"#;
    let cfg = config_text(dir.path(), broker.port, "", extra).replace(
        "[mqtt]",
        &format!("sysfs_root = \"{}\"\n\n[mqtt]", tree.display()),
    );
    let cfg_path = dir.path().join("config.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();

    let (st, out, err) = run_cli(&["check", "--config", cfg_path.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(
        out.contains(&format!("sysfs root       {}", tree.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}",
            tree.join("class/hwmon/hwmon0/temp1_input").display()
        )),
        "check shows the resolved path:\n{out}"
    );

    // discover --config walks the configured tree.
    let (st, found, err) = run_cli(&["discover", "--config", cfg_path.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(found.contains("61.25 °C"), "{found}");
    assert!(found.contains("LED led0"), "{found}");
    // As this configuration wants them: /sys/... paths, which the daemon
    // reads under its sysfs_root.
    assert!(
        found.contains("path = \"/sys/class/hwmon/hwmon0/temp1_input\""),
        "{found}"
    );
    assert!(found.contains("path = \"/sys/class/leds/led0\""), "{found}");
    assert!(!found.contains(&tree.display().to_string()), "{found}");

    let mut cloud = Cloud::connect(broker.port);
    let _d = Daemon::spawn(dir.path(), &cfg);
    for (id, want) in [
        ("temperature-0", json!(61.25)),
        ("temperature-1", json!(23.125)),
    ] {
        let id = format!("{GW}-{id}");
        cloud.wait_values(&id, &id, |v| !v.is_empty());
        assert_eq!(cloud.values_of(&id)[0].1, want, "{id}");
    }
    let r = cloud.request(
        "1",
        json!({"method":"controlActuator","params":{"id": format!("{GW}-led-0"), "cmd":"on"}}),
    );
    assert_eq!(r["result"], json!(""), "{r}");
    assert_eq!(
        std::fs::read_to_string(tree.join("class/leds/led0/brightness")).unwrap(),
        "1"
    );
    let r = cloud.request(
        "2",
        json!({"method":"controlActuator","params":{"id": format!("{GW}-powerSwitch-0"), "cmd":"on"}}),
    );
    assert_eq!(r["result"], json!(""), "{r}");
    assert_eq!(
        std::fs::read_to_string(tree.join("class/gpio/gpio17/value")).unwrap(),
        "1"
    );
}

/// A sysfs_root that does not exist stops `check`, `discover --config` and
/// the daemon with the place in the file.
#[test]
fn missing_sysfs_root_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-tree");
    let cfg = config_text(dir.path(), 1, "", "").replace(
        "[mqtt]",
        &format!("sysfs_root = \"{}\"\n\n[mqtt]", missing.display()),
    );
    let cfg_path = dir.path().join("config.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let want = format!(
        "{}:7:14: sysfs_root {}",
        cfg_path.display(),
        missing.display()
    );
    for args in [
        &["check", "--config", cfg_path.to_str().unwrap()][..],
        &["discover", "--config", cfg_path.to_str().unwrap()][..],
        &["run", "--config", cfg_path.to_str().unwrap()][..],
    ] {
        let (st, _out, err) = run_cli(args);
        assert_eq!(st.code(), Some(78), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: want {want:?} in:\n{err}");
    }
}

/// `discover --config` reads only `[gateway] sysfs_root`: it works on a
/// configuration still being written (its apikey file not there yet, the
/// rest not valid TOML), where `check` rightly fails.
#[test]
fn discover_reads_only_sysfs_root_of_an_unfinished_config() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sysfs")),
        &dir.path().join("tree"),
    );
    let cfg_path = dir.path().join("config.toml");
    std::fs::write(
        &cfg_path,
        "[gateway]\nid = \"gw\"\napikey_file = \"/nonexistent/apikey\"\n\
         sysfs_root = \"tree\" # relative to this file\n\n[mqtt]\nhost = \n[[sensor]\n",
    )
    .unwrap();
    let (st, _, err) = run_cli(&["check", "--config", cfg_path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(78), "{err}");
    let (st, found, err) = run_cli(&["discover", "--config", cfg_path.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(found.contains("45 °C"), "{found}");
    assert!(
        found.contains("path = \"/sys/class/hwmon/hwmon0/temp1_input\""),
        "{found}"
    );
    // A sysfs_root outside [gateway] is not the root: /sys is walked.
    std::fs::write(
        &cfg_path,
        "[gateway]\nid = \"gw\"\n[other]\nsysfs_root = \"tree\"\n",
    )
    .unwrap();
    let (st, found, err) = run_cli(&["discover", "--config", cfg_path.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(
        !found.contains(&dir.path().display().to_string()),
        "{found}"
    );
}
