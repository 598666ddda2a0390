//! The cloud's requests under pressure, through the real binary and a real
//! Mosquitto: a flood gets exactly one response per request while readings
//! keep flowing, warnings about bad requests are rate-limited with a count,
//! and `timeSync` is checked before it is trusted.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn topic(suffix: &str) -> String {
    if suffix.is_empty() {
        format!("v/a/g/{GW}")
    } else {
        format!("v/a/g/{GW}/{suffix}")
    }
}

fn file_sensor(id: &str, path: &std::path::Path, interval: &str) -> String {
    format!(
        "[[sensor]]\nid = \"{id}\"\ntype = \"number\"\npath = \"{}\"\ninterval = \"{interval}\"\n",
        path.display()
    )
}

#[derive(Default)]
struct Seen {
    /// Responses by id: how many each.
    responses: HashMap<Value, usize>,
    response_total: usize,
    /// Error codes of the responses.
    codes: HashMap<i64, usize>,
    /// When each values message arrived.
    values_at: Vec<Instant>,
    /// Errors of the tally's own connection (a reconnect loses messages).
    errors: Vec<String>,
    /// Responses to probes (see `wait_until_subscribed`), not counted above.
    probes: usize,
}

/// A lean subscriber of the gateway's responses and values that only
/// counts, so that it keeps up with a flood (Mosquitto drops what a slow
/// subscriber's queue cannot hold).
struct Tally {
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Tally {
    fn connect(port: u16) -> Tally {
        let mut o = rumqttc::MqttOptions::new(format!("tally-{}", free_port()), "127.0.0.1", port);
        o.set_credentials(CLOUD_USER, CLOUD_PASS);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = rumqttc::Client::new(o, 64);
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let s = seen.clone();
        let subscribed = Arc::new((Mutex::new(false), Condvar::new()));
        let sub = subscribed.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        for t in [topic("res"), topic("")] {
                            let _ = client.try_subscribe(t, rumqttc::QoS::AtLeastOnce);
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        *sub.0.lock().unwrap() = true;
                        sub.1.notify_all();
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let (m, cv) = &*s;
                        let mut g = m.lock().unwrap();
                        if p.topic == topic("res") {
                            let v: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                            if v["id"] == json!("probe") {
                                g.probes += 1;
                                cv.notify_all();
                                continue;
                            }
                            *g.responses.entry(v["id"].clone()).or_default() += 1;
                            g.response_total += 1;
                            if let Some(code) = v["error"]["code"].as_i64() {
                                *g.codes.entry(code).or_default() += 1;
                            }
                        } else {
                            g.values_at.push(Instant::now());
                        }
                        cv.notify_all();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        s.0.lock().unwrap().errors.push(e.to_string());
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        let (m, cv) = &*subscribed;
        let g = cv
            .wait_timeout_while(m.lock().unwrap(), WAIT, |ok| !*ok)
            .unwrap()
            .0;
        assert!(*g, "the tally did not subscribe");
        drop(g);
        Tally { seen }
    }

    /// Waits (up to `limit`) until `pred` holds.
    fn wait(&self, limit: Duration, what: &str, pred: impl Fn(&Seen) -> bool) {
        let (m, cv) = &*self.seen;
        let deadline = Instant::now() + limit;
        let mut g = m.lock().unwrap();
        while !pred(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}: {} responses to {} ids (errors of the tally's connection: {:?})",
                g.response_total,
                g.responses.len(),
                g.errors
            );
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits up to `limit` for `pred`; whether it holds.
    fn wait_for(&self, limit: Duration, pred: impl Fn(&Seen) -> bool) -> bool {
        let (m, cv) = &*self.seen;
        let deadline = Instant::now() + limit;
        let mut g = m.lock().unwrap();
        while !pred(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = cv.wait_timeout(g, left).unwrap().0;
        }
        true
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.0.lock().unwrap())
    }
}

/// Waits until the daemon answers requests: "connected" comes before its
/// subscription is in place, and a request sent before that reaches no
/// one. The probes' responses (id "probe") are left out of the counts.
fn wait_until_subscribed(client: &rumqttc::Client, tally: &Tally) {
    let deadline = Instant::now() + WAIT;
    loop {
        let req = json!({"id": "probe", "method": "swInfo"}).to_string();
        client
            .publish(topic("req"), rumqttc::QoS::AtLeastOnce, false, req)
            .unwrap();
        if tally.wait_for(Duration::from_secs(1), |s| s.probes > 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never answered a probe"
        );
    }
}

/// A publisher of requests, as the cloud would send them (QoS 1).
fn requester(port: u16) -> rumqttc::Client {
    let mut o = rumqttc::MqttOptions::new(format!("req-{}", free_port()), "127.0.0.1", port);
    o.set_credentials(CLOUD_USER, CLOUD_PASS);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = rumqttc::Client::new(o, 256);
    std::thread::spawn(move || {
        for ev in conn.iter() {
            if ev.is_err() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    client
}

/// The daemon's resident set: current and peak (kB).
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// 10,000 `swInfo` requests sent in about 2 s: each gets exactly one
/// response, readings of a 100 ms sensor keep arriving during the flood,
/// and the daemon's memory stays bounded.
#[test]
fn a_flood_of_requests_gets_exactly_one_response_each_while_readings_flow() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    // The daemon takes requests no faster than it can (it is one process
    // among many on a shared test machine): the broker must be allowed to
    // queue the flood for it. Mosquitto's default (1000 per client beyond
    // its in-flight window) would drop what comes faster, before the
    // daemon ever sees it.
    let broker = Mosquitto::start_with_settings(dir.path(), "max_queued_messages 20000");
    let value = dir.path().join("value");
    std::fs::write(&value, "1\n").unwrap();
    let tally = Tally::connect(broker.port);
    let mut d = Daemon::spawn(
        dir.path(),
        &config_text(
            dir.path(),
            broker.port,
            "",
            &file_sensor("n", &value, "100ms"),
        ),
    );
    d.wait_connected();
    tally.wait(WAIT, "the first values", |s| !s.values_at.is_empty());
    let (rss_before, _) = rss_kb(d.child.id());

    let client = requester(broker.port);
    wait_until_subscribed(&client, &tally);
    let flood_start = Instant::now();
    // 10 batches of 1,000, one every 200 ms: about 2 s in all.
    for batch in 0..10 {
        let due = flood_start + Duration::from_millis(200 * batch as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for i in 0..N / 10 {
            let id = format!("f{}", batch * (N / 10) + i);
            let req = json!({"id": id, "method": "swInfo"}).to_string();
            client
                .publish(topic("req"), rumqttc::QoS::AtLeastOnce, false, req)
                .unwrap();
        }
    }
    tally.wait(
        Duration::from_secs(120),
        "a response to every request",
        |s| s.responses.len() >= N,
    );
    let answered_at = Instant::now();
    let (_, peak) = rss_kb(d.child.id());
    // Shut down cleanly: whatever was still on its way has gone out.
    assert_eq!(d.terminate().code(), Some(0));
    let (total, distinct, more_than_once) = tally.with(|s| {
        let twice: Vec<_> = s.responses.iter().filter(|(_, n)| **n > 1).collect();
        (s.response_total, s.responses.len(), format!("{twice:?}"))
    });
    assert_eq!(
        (total, distinct),
        (N, N),
        "responses sent more than once: {more_than_once}"
    );
    for i in [0, N / 2, N - 1] {
        let id = json!(format!("f{i}"));
        assert_eq!(tally.with(|s| s.responses.get(&id).copied()), Some(1));
    }
    let log = d.log_lines().join("\n");
    assert!(!log.contains("publish not queued"), "{log}");
    // Readings kept flowing while the requests were answered.
    let during = tally.with(|s| {
        s.values_at
            .iter()
            .filter(|t| **t > flood_start && **t < answered_at)
            .count()
    });
    assert!(
        during >= 1,
        "no values message during the flood ({:?} long)",
        answered_at - flood_start
    );
    // Bounded: the peak resident set is less than 16 MiB above what it
    // was before the flood. (Requests wait at the broker: the daemon holds
    // at most the broker's in-flight window of them.)
    assert!(
        peak < rss_before + 16 * 1024,
        "the daemon grew from {rss_before} kB to a peak of {peak} kB"
    );
    let broker_log = broker.log();
    assert!(
        !broker_log.contains("dropped"),
        "the broker dropped messages: {}",
        broker_log
            .lines()
            .filter(|l| l.contains("dropped"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The number after `key` in a log line (`suppressed 1995 warnings`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    line.split(key)
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// 2,000 unparsable requests: 2,000 error responses, but only a handful of
/// warnings, and one line that counts the rest.
#[test]
fn warnings_about_a_flood_of_bad_requests_are_rate_limited_and_counted() {
    use thingplus_gw::rpc::BAD_REQUEST_WARNING_BURST as BURST;
    const N: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    // Queue the flood at the broker rather than drop it (see the test above).
    let broker = Mosquitto::start_with_settings(dir.path(), "max_queued_messages 20000");
    let tally = Tally::connect(broker.port);
    let d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", ""));
    d.wait_connected();
    let client = requester(broker.port);
    wait_until_subscribed(&client, &tally);
    for i in 0..N {
        client
            .publish(
                topic("req"),
                rumqttc::QoS::AtLeastOnce,
                false,
                format!("{{not json {i}"),
            )
            .unwrap();
    }
    // Every warning is either logged or counted in a summary line (one per
    // period of the limiter; a slow machine may spread the flood over two).
    // (The summary quotes the last one: not counted as logged.)
    let logged = || {
        d.log_lines()
            .iter()
            .filter(|l| {
                l.contains(" WARN ")
                    && l.contains("rejected a malformed request")
                    && !l.contains("warnings about bad requests in the last")
            })
            .count()
    };
    let suppressed = || -> u64 {
        d.log_lines()
            .iter()
            .filter(|l| {
                l.contains(" WARN ") && l.contains("warnings about bad requests in the last")
            })
            .filter_map(|l| number_after(l, "suppressed "))
            .sum()
    };
    let deadline = Instant::now() + WAIT;
    while logged() as u64 + suppressed() < N as u64 {
        assert!(
            Instant::now() < deadline,
            "{} logged + {} counted of {N}:\n{}",
            logged(),
            suppressed(),
            d.log_lines().join("\n")
        );
        d.wait_log_n("warnings about bad requests in the last", 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(logged() as u64 + suppressed(), N as u64);
    tally.wait(WAIT, "an error response to every request", |s| {
        s.response_total >= N
    });
    assert_eq!(tally.with(|s| s.codes.get(&-32700).copied()), Some(N));
    // At most a burst per period, and the flood lasted far less than 3 periods.
    assert!(
        logged() <= 3 * BURST as usize,
        "{} warnings logged",
        logged()
    );
    let all_warnings = d
        .log_lines()
        .iter()
        .filter(|l| l.contains(" WARN "))
        .count();
    assert!(
        all_warnings <= 6 * BURST as usize,
        "{all_warnings} WARN lines"
    );
    d.wait_log("further warnings about them are suppressed");
    // The logged ones name the reason in their text, not only in fields.
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("rejected a malformed request (id null): unparsable JSON")),
        "{}",
        d.log_lines().join("\n")
    );
}

/// `timeSync` with what is not a time is -32602; with an implausible time
/// it is refused (-32000) and logged, and readings keep their times. After
/// a wrong time (accepted: an hour ahead on a clock NTP has not
/// synchronised) is corrected, the clock stamps readings by the clock again.
#[test]
fn time_sync_is_checked_before_it_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let mut cloud = Cloud::connect(broker.port);
    let value = dir.path().join("value");
    std::fs::write(&value, "1\n").unwrap();
    // A clock NTP has not synchronised, whatever this machine's is.
    let d = Daemon::spawn_with(
        dir.path(),
        &config_text(
            dir.path(),
            broker.port,
            "",
            &file_sensor("n", &value, "100ms"),
        ),
        &[(thingplus_gw::clock::TEST_CLOCK_ENV, "0")],
    );
    cloud.next_on(&topic("mqtt/status"));
    let now = thingplus_gw::clock::system_now_ms;

    for (i, bad) in ["1e300", "9223372036854775807", "1.5", "\"x\"", "null"]
        .iter()
        .enumerate()
    {
        let id = format!("bad{i}");
        cloud.request_raw(
            format!(r#"{{"id":"{id}","method":"timeSync","params":{{"time":{bad}}}}}"#).as_bytes(),
        );
        let r = cloud.response(&id);
        assert_eq!(r["error"]["code"], json!(-32602), "{bad}: {r}");
    }
    let year_2200 = 7_258_118_400_000i64;
    let r = cloud.request(
        "y2200",
        json!({"method":"timeSync","params":{"time": year_2200}}),
    );
    assert_eq!(r["error"]["code"], json!(-32000), "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("outside the plausible window"), "{msg}");
    d.wait_log("timeSync refused: 2200-01-01T00:00:00.000Z is outside the plausible window");
    let refused_at = now();
    cloud.wait_values("n", "a reading after the refusal", |v| {
        v.iter().any(|(t, _)| *t > refused_at)
    });
    assert!(
        cloud
            .values_of("n")
            .iter()
            .all(|(t, _)| *t < now() + 60_000),
        "a reading stamped in the future after refused timeSyncs"
    );

    // A wrong time that passes the checks: an hour ahead.
    let ahead = now() + 3_600_000;
    let r = cloud.request(
        "ahead",
        json!({"method":"timeSync","params":{"time": ahead}}),
    );
    assert_eq!(r["result"], json!(""), "{r}");
    cloud.wait_values("n", "a reading an hour ahead", |v| {
        v.iter().any(|(t, _)| *t >= ahead)
    });
    // Corrected: the next readings carry the clock's time again.
    let right = now();
    let r = cloud.request(
        "right",
        json!({"method":"timeSync","params":{"time": right}}),
    );
    assert_eq!(r["result"], json!(""), "{r}");
    d.wait_log("timeSync set the time back by");
    // The clock stamps the next readings by the corrected time, not after
    // the wrong ones (the clock's unit tests check the times themselves).
    // The on-disk buffer keeps each sensor's newest time too and still moves
    // an older reading after it: the times that reach the cloud follow the
    // clock once the buffer applies the same rule (src/buffer, issue 18).
    d.wait_log("readings are stamped by the clock again");
}

/// 200 requests of 60 KiB sent at once (12 MB, more than the 8 MiB of
/// requests the daemon takes at once if it is slower than they come):
/// each gets exactly one response.
#[test]
fn a_burst_of_large_requests_gets_exactly_one_response_each() {
    const N: usize = 200;
    const SIZE: usize = 60 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let tally = Tally::connect(broker.port);
    let mut d = Daemon::spawn(dir.path(), &config_text(dir.path(), broker.port, "", ""));
    d.wait_connected();
    let client = requester(broker.port);
    wait_until_subscribed(&client, &tally);
    let filler = "x".repeat(SIZE - 100);
    for i in 0..N {
        // setProperty: each answer saves the state file.
        let req = json!({
            "id": format!("big{i}"),
            "method": "setProperty",
            "params": {"reportInterval": 60_000},
            "pad": filler,
        });
        client
            .publish(
                topic("req"),
                rumqttc::QoS::AtLeastOnce,
                false,
                req.to_string(),
            )
            .unwrap();
    }
    tally.wait(WAIT, "a response to every request", |s| {
        s.responses.len() >= N
    });
    assert_eq!(d.terminate().code(), Some(0));
    let (total, distinct) = tally.with(|s| (s.response_total, s.responses.len()));
    assert_eq!((total, distinct), (N, N));
    assert_eq!(tally.with(|s| s.codes.len()), 0, "all carried out");
}
