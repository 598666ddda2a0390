//! `thingplus-gw demo` runs the whole pipeline with its embedded broker.
#![cfg(feature = "demo")]

use std::process::Command;

#[test]
fn demo_runs_end_to_end_without_a_broker_installed() {
    let out = Command::new(env!("CARGO_BIN_EXE_thingplus-gw"))
        .args(["demo", "--duration", "14s"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "[cloud] connection status: on",
        "[cloud] status: on,",
        "[cloud] values: demo-gateway-",
        "[cloud] <- response {\"id\":\"1\",\"result\":\"\"}",
        "[cloud] <- response {\"id\":\"2\",\"result\":\"\"}",
        "[cloud] <- response {\"id\":\"3\",\"result\":\"\"}",
        "[box]   LED is now blinking (250 ms on / 250 ms off)",
        "[cloud] connection status: off",
    ] {
        assert!(
            stdout.contains(needle),
            "missing {needle:?} in:\n{stdout}\n{stderr}"
        );
    }
    // The new report interval (3 s) shows in the statuses' validity (6 s).
    assert!(stdout.contains("[cloud] status: on,6,"), "{stdout}");
}
