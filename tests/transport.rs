//! Transport rules against the test broker: TLS verifies the broker's
//! certificate and host name, no configuration key turns that off, TLS is the
//! default, and plain TCP to a host that is not loopback warns at every start.
//! No traffic leaves this machine.

mod common;

use common::*;

fn topic(suffix: &str) -> String {
    format!("v/a/g/{GW}/{suffix}")
}

/// Waits for the gateway's next `on` (a login).
fn next_on_status(cloud: &mut Cloud) {
    let t = topic("mqtt/status");
    cloud.next("the gateway's \"on\"", move |m| {
        m.topic == t && m.text() == "on"
    });
}

fn tls_config(dir: &std::path::Path, port: u16, host: &str, ca: &std::path::Path) -> String {
    config_text(dir, port, &format!("ca_file = \"{}\"", ca.display()), "")
        .replace("tls = false", "tls = true")
        .replace("host = \"127.0.0.1\"", &format!("host = \"{host}\""))
}

#[test]
fn a_certificate_for_another_host_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's certificate, from a CA the gateway trusts, names another host.
    let broker = Mosquitto::start_with_names(dir.path(), &["broker.example.com"]);
    let ca = broker.pki.ca_cert.clone();
    for host in ["localhost", "127.0.0.1"] {
        let d_dir = dir.path().join(host);
        std::fs::create_dir_all(&d_dir).unwrap();
        let d = Daemon::spawn(&d_dir, &tls_config(&d_dir, broker.tls_port, host, &ca));
        d.wait_log(&format!("TLS with {host}:{}", broker.tls_port));
        let log = d.log_lines().join("\n");
        assert!(
            log.contains(&format!("certificate not valid for name \"{host}\"")),
            "the refusal names the reason:\n{log}"
        );
        assert_eq!(d.count_log("connected to Thing+ broker"), 0, "{log}");
        drop(d);
    }
    // The broker never saw the gateway log in.
    assert!(
        !broker.log().contains(&format!("as {GW}")),
        "{}",
        broker.log()
    );
}

#[test]
fn tls_verifies_and_writes_no_session_keys() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    // SSLKEYLOGFILE would make some TLS stacks write the session secrets to a
    // file: the daemon must not.
    let keylog = dir.path().join("keys.log");
    let cfg = tls_config(
        dir.path(),
        broker.tls_port,
        "localhost",
        &broker.pki.ca_cert,
    );
    let mut d = Daemon::spawn_with(
        dir.path(),
        &cfg,
        &[("SSLKEYLOGFILE", keylog.to_str().unwrap())],
    );
    assert_eq!(cloud.next_on(&topic("mqtt/status")).text(), "on");
    assert_eq!(d.terminate().code(), Some(0));
    assert!(!keylog.exists(), "TLS session keys were written");
}

#[test]
fn no_configuration_key_turns_verification_off() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let base = config_text(dir.path(), 8883, "", "").replace("tls = false", "tls = true");
    for key in [
        "insecure = true",
        "verify = false",
        "tls_verify = false",
        "verify_certificate = false",
        "verify_hostname = false",
        "danger_accept_invalid_certs = true",
        "insecure_skip_verify = true",
        "accept_invalid_hostnames = true",
    ] {
        let text = base.replace("tls = true", &format!("tls = true\n{key}"));
        std::fs::write(&cfg, &text).unwrap();
        let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(st.code(), Some(78), "{key} was accepted: {err}");
        assert!(err.contains("unknown field"), "{key}: {err}");
        let name = key.split(' ').next().unwrap();
        assert!(err.contains(name), "{key}: {err}");
    }
    // Nor a [tls] table, nor tls given as text.
    for extra in ["[tls]\nverify = false\n", "[mqtt.tls]\nverify = false\n"] {
        std::fs::write(&cfg, format!("{base}\n{extra}")).unwrap();
        let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
        assert_eq!(st.code(), Some(78), "{extra} was accepted: {err}");
    }
    std::fs::write(&cfg, base.replace("tls = true", "tls = \"no-verify\"")).unwrap();
    let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(78), "{err}");
    // A CA file without certificates is an error, not "trust anything".
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    std::fs::write(
        &cfg,
        base.replace(
            "tls = true",
            &format!("tls = true\nca_file = \"{}\"", empty.display()),
        ),
    )
    .unwrap();
    let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(78), "{err}");
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

#[test]
fn tls_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[gateway]\nid = \"gw\"\napikey = \"k\"\n").unwrap();
    let (st, out, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    // The default needs the system trust store: scripts/test.sh installs
    // ca-certificates, so a machine without it fails here rather than
    // skipping the check.
    assert!(
        st.success(),
        "check of a TLS configuration failed (without CA certificates, install \
         ca-certificates as scripts/test.sh does): {err}"
    );
    assert!(
        out.contains("broker           mqtt.thingplus.net:8883 (TLS, system trust store)"),
        "{out}"
    );
    assert!(!err.contains("unencrypted"), "{err}");
}

#[test]
fn plain_tcp_to_a_host_that_is_not_loopback_warns_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    // `check` on a remote host name: nothing is contacted.
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config_text(dir.path(), 1883, "", "")
            .replace("host = \"127.0.0.1\"", "host = \"broker.example.com\""),
    )
    .unwrap();
    let (st, out, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(out.contains("broker.example.com:1883 (plain TCP)"), "{out}");
    assert!(
        err.contains(
            "warning: tls = false: the APIKEY and every reading go to broker.example.com unencrypted"
        ),
        "{err}"
    );

    // `run`, twice. 0.0.0.0 is not a loopback address to the configuration,
    // yet connecting to it reaches this machine (Linux), so the daemon runs
    // against the local test broker and no packet leaves the box.
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let remote = config_text(dir.path(), broker.port, "", "")
        .replace("host = \"127.0.0.1\"", "host = \"0.0.0.0\"");
    for _ in 0..2 {
        let mut d = Daemon::spawn(dir.path(), &remote);
        next_on_status(&mut cloud);
        assert_eq!(
            d.count_warnings("tls = false: the APIKEY and every reading go to 0.0.0.0 unencrypted"),
            1,
            "{}",
            d.log_lines().join("\n")
        );
        assert_eq!(d.terminate().code(), Some(0));
    }
    // A loopback broker over plain TCP is the normal local setup: no warning.
    let mut d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", ""));
    next_on_status(&mut cloud);
    assert_eq!(d.count_warnings("unencrypted"), 0);
    assert_eq!(d.terminate().code(), Some(0));
}
