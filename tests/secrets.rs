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

/// The lines of a PEM file between its BEGIN and END lines.
fn pem_body(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

fn assert_no_key_in(seen: &str, key_lines: &[String]) {
    for l in key_lines {
        assert!(
            !seen.contains(l.as_str()),
            "the client key leaked ({l}):\n{seen}"
        );
    }
}

#[test]
fn the_client_key_stays_secret_everywhere() {
    use rcgen::{CertificateParams, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let run = dir.path().join("run");

    // A client certificate and its private key, as an operator installs them.
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![GW.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_pem = key.serialize_pem();
    let key_lines = pem_body(&key_pem);
    assert!(!key_lines.is_empty());
    let key_path = dir.path().join("client.key");
    let cert_path = dir.path().join("client.pem");
    std::fs::write(&key_path, &key_pem).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let chmod = |mode: u32| {
        let mut p = std::fs::metadata(&key_path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, mode);
        std::fs::set_permissions(&key_path, p).unwrap();
    };
    chmod(0o600);

    let cfg = config_text(
        dir.path(),
        broker.tls_port,
        &format!(
            "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            broker.pki.ca_cert.display(),
            cert_path.display(),
            key_path.display()
        ),
        "",
    )
    .replace("tls = false", "tls = true")
    .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    let mut seen = String::new();

    // A TLS session with the client certificate, logged at the most verbose level.
    let mut d = Daemon::spawn_with(
        dir.path(),
        &cfg,
        &[
            ("RUST_LOG", "trace"),
            ("RUNTIME_DIRECTORY", run.to_str().unwrap()),
        ],
    );
    cloud.next_on(&format!("v/a/g/{GW}/mqtt/status"));
    let socket = run.join("control.sock");
    for args in [
        vec!["status", "--json", "--socket", socket.to_str().unwrap()],
        vec!["status", "--socket", socket.to_str().unwrap()],
    ] {
        let (_, out, err) = run_cli(&args);
        seen += &out;
        seen += &err;
    }
    assert_eq!(d.terminate().code(), Some(0));
    let log = d.log_lines().join("\n");
    assert!(log.contains("connected to Thing+ broker"), "{log}");
    seen += &log;

    // check and id, with the key readable by everybody (a warning names the
    // file, not its content).
    chmod(0o644);
    let cfg_path = dir.path().join("config.toml");
    for args in [vec!["check"], vec!["id"]] {
        let mut a = args.clone();
        a.extend(["--config", cfg_path.to_str().unwrap()]);
        let (_, out, err) = run_cli(&a);
        seen += &out;
        seen += &err;
        if args[0] == "check" {
            assert!(
                err.contains(&format!(
                    "[mqtt] client_key {} is readable by every user",
                    key_path.display()
                )),
                "{err}"
            );
        }
    }
    chmod(0o600);

    // A damaged key: check and run refuse it without quoting it.
    let mut damaged = key_pem.clone();
    let mid = key_pem.find('\n').unwrap() + 10;
    damaged.replace_range(mid..mid + 4, "!!!!");
    std::fs::write(&key_path, &damaged).unwrap();
    let damaged_lines = pem_body(&damaged);
    for cmd in ["check", "run"] {
        let (st, out, err) = run_cli(&[cmd, "--config", cfg_path.to_str().unwrap()]);
        assert_eq!(st.code(), Some(78), "{cmd}: {out}{err}");
        assert!(err.contains("client_key"), "{cmd}: {err}");
        seen += &out;
        seen += &err;
    }
    // A key that does not match the certificate.
    let other = KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(&key_path, &other).unwrap();
    let (st, out, err) = run_cli(&["check", "--config", cfg_path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(78), "{out}{err}");
    seen += &out;
    seen += &err;

    assert_no_key_in(&seen, &key_lines);
    assert_no_key_in(&seen, &damaged_lines);
    assert_no_key_in(&seen, &pem_body(&other));
}

/// Runs `thingplus-gw check --config cfg` in a private mount namespace whose
/// /etc/group is `group_file`: the system's groups as the test arranges them,
/// the machine's own left alone.
fn check_with_groups(group_file: &std::path::Path, cfg: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/group && exec "$2" check --config "$3""#)
        .arg("sh")
        .arg(group_file)
        .arg(bin())
        .arg(cfg)
        .output()
        .expect("unshare (util-linux) runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("unshare:") && !err.contains("mount:"),
        "a private mount namespace needs root: {err}"
    );
    (out.status.code().unwrap_or(-1), err)
}

/// README's install steps make the APIKEY file root:thingplus-gw 0640, and
/// `sudo thingplus-gw check` must not call that a problem: the file's group
/// is compared with the service's group (looked up by name), not with the
/// caller's (root's). Other groups are named in the warning.
#[test]
fn check_compares_the_key_files_group_with_the_services_group() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("apikey");
    std::fs::write(&key, APIKEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = dir.path().join("config.toml");
    let text = config_text(dir.path(), 1883, "", "").replace(
        &format!("apikey = \"{APIKEY}\""),
        &format!("apikey_file = \"{}\"", key.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The system's groups without any thingplus-gw, and with one at a gid
    // no group of this machine has.
    let system = std::fs::read_to_string("/etc/group").unwrap();
    let entries: Vec<(String, u32)> = system
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .filter(|(name, _)| name != "thingplus-gw")
        .collect();
    let without: String = system
        .lines()
        .filter(|l| !l.starts_with("thingplus-gw:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let service_gid = (60_000u32..)
        .find(|g| entries.iter().all(|e| e.1 != *g))
        .unwrap();
    let with = format!("{without}thingplus-gw:x:{service_gid}:\n");
    let (without_file, with_file) = (dir.path().join("group-"), dir.path().join("group+"));
    std::fs::write(&without_file, &without).unwrap();
    std::fs::write(&with_file, &with).unwrap();
    // Some other real group of this system, not root's.
    let (other, other_gid) = entries.iter().find(|e| e.1 != 0).cloned().unwrap();

    let set_group = |gid: u32| chown(&key, Some(0), Some(gid)).unwrap();
    let group_warning = |err: &str| {
        err.lines()
            .find(|l| l.contains("is readable by"))
            .map(str::to_string)
    };

    // README's way: no warning.
    set_group(service_gid);
    let (code, err) = check_with_groups(&with_file, &cfg);
    assert_eq!(code, 0, "{err}");
    assert_eq!(group_warning(&err), None, "{err}");

    // Another group, or root's own: named, with the service's group.
    for (name, gid) in [(other.as_str(), other_gid), ("root", 0)] {
        set_group(gid);
        let (code, err) = check_with_groups(&with_file, &cfg);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            group_warning(&err).as_deref(),
            Some(format!(
                "warning: apikey_file {} is readable by group {name} (gid {gid}) which is not the service's group thingplus-gw (gid {service_gid}): chgrp thingplus-gw it, or chmod 600",
                key.display()
            ).as_str()),
            "{err}"
        );
    }

    // A system without the group (the binary run without the package):
    // the caller's group is the one that may read.
    set_group(0);
    let (code, err) = check_with_groups(&without_file, &cfg);
    assert_eq!(code, 0, "{err}");
    assert_eq!(group_warning(&err), None, "{err}");
    set_group(other_gid);
    let (_, err) = check_with_groups(&without_file, &cfg);
    assert!(
        group_warning(&err).is_some_and(|w| w.contains(&format!(
            "is readable by group {other} (gid {other_gid}) which is not the service's group (this system has no group thingplus-gw"
        ))),
        "{err}"
    );
}
