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
