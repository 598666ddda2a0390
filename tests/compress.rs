//! `[mqtt] compress = "gzip"` end to end with the real broker: a backlog
//! goes out gzip-compressed and the cloud, gunzipping by the magic as
//! Thing+ does, gets every reading in order; messages under the threshold
//! (and the small statuses) stay plain JSON; a bad value is refused by
//! `check` with its position.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use thingplus_gw::buffer::sqlite::{SqliteOptions, SqliteStore};
use thingplus_gw::buffer::Store;
use thingplus_gw::config::Fsync;
use thingplus_gw::reading::{Reading, Value};

const BACKLOG: usize = 20_000;
const SENSORS: usize = 4;
const THRESHOLD: usize = 1024;

fn backlog_id(i: usize) -> String {
    format!("{GW}-backlog-{i}")
}

/// A backlog left by an earlier run, committed to the buffer directory.
fn seed_backlog(dir: &Path) {
    let mut store = SqliteStore::open(
        &dir.join("buffer"),
        SqliteOptions::unbounded(Fsync::Period(Duration::from_secs(1))),
    )
    .unwrap();
    let all: Vec<Reading> = (0..BACKLOG)
        .map(|i| {
            Reading::new(
                backlog_id(i % SENSORS),
                1_700_000_000_000 + i as i64 * 10,
                Value::Number(20.0 + (i % 40) as f64 * 0.25),
            )
        })
        .collect();
    for chunk in all.chunks(1000) {
        store.append(chunk.to_vec()).unwrap();
    }
    store.commit().unwrap();
}

#[test]
fn a_gzipped_backlog_arrives_whole_and_in_order_and_small_messages_stay_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    seed_backlog(dir);
    let broker = Mosquitto::start(dir);
    let cloud = Cloud::connect(broker.port);
    // One event sensor: after the drain, a change of its file makes one
    // small values message.
    let door = dir.join("door");
    std::fs::write(&door, "0\n").unwrap();
    let sensors = format!(
        "[[sensor]]\nid = \"{GW}-onoff-0\"\ntype = \"onoff\"\npath = \"{}\"\ninterval = \"20ms\"\n",
        door.display()
    );
    let cfg = config_text(
        dir,
        broker.port,
        &format!(
            "max_message_size = \"16KiB\"\ncompress = \"gzip\"\ncompress_min_bytes = {THRESHOLD}"
        ),
        &sensors,
    )
    .replace("[buffer]\n", "[buffer]\nmin_free = \"0%\"\n");
    let mut daemon = Daemon::spawn(dir, &cfg);
    daemon.wait_connected();

    for s in 0..SENSORS {
        cloud.wait_values(&backlog_id(s), "the whole backlog", |v| {
            v.len() >= BACKLOG / SENSORS
        });
    }
    // The drain is over: a change now goes out alone, in a small message.
    let door_id = format!("{GW}-onoff-0");
    let before = cloud.values_of(&door_id).len();
    std::fs::write(&door, "1\n").unwrap();
    cloud.wait_values(&door_id, "the door change", |v| {
        v.len() > before && v.last().unwrap().1 == serde_json::json!(1)
    });
    daemon.terminate();

    // Every backlog reading once, in time order (no disruption: no duplicates).
    for s in 0..SENSORS {
        let times: Vec<i64> = cloud
            .values_of(&backlog_id(s))
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let want: Vec<i64> = (0..BACKLOG)
            .filter(|i| i % SENSORS == s)
            .map(|i| 1_700_000_000_000 + i as i64 * 10)
            .collect();
        assert_eq!(times, want, "sensor {s}");
    }

    // Compressed exactly when the JSON is over the threshold; then smaller.
    let values_topic = format!("v/a/g/{GW}");
    let status_topic = format!("v/a/g/{GW}/status");
    let mut gzipped = 0;
    let mut plain = 0;
    let (mut json_bytes, mut wire_bytes) = (0, 0);
    for m in cloud.all() {
        if m.topic != values_topic && m.topic != status_topic {
            assert!(!m.gzip, "{} must never be compressed", m.topic);
            continue;
        }
        assert_eq!(
            m.gzip,
            m.payload.len() > THRESHOLD,
            "{}: {} bytes of JSON",
            m.topic,
            m.payload.len()
        );
        if m.gzip {
            assert!(m.wire_len < m.payload.len());
            gzipped += 1;
        } else {
            assert_eq!(m.wire_len, m.payload.len());
            plain += 1;
        }
        if m.topic == values_topic {
            json_bytes += m.payload.len();
            wire_bytes += m.wire_len;
            // Splitting is by the JSON size, compressed or not.
            assert!(m.payload.len() <= 16 * 1024);
        }
    }
    assert!(gzipped >= BACKLOG * 20 / (16 * 1024), "{gzipped} gzipped");
    assert!(plain >= 2, "the door change and the statuses go plain");
    let door_msg = cloud
        .all()
        .into_iter()
        .rev()
        .find(|m| m.topic == values_topic)
        .unwrap();
    assert!(!door_msg.gzip && door_msg.json().get(&door_id).is_some());
    eprintln!("values: {json_bytes} bytes of JSON sent as {wire_bytes} bytes");
}

#[test]
fn a_large_status_is_gzipped_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let broker = Mosquitto::start(dir);
    let mut cloud = Cloud::connect(broker.port);
    // 40 sensors: the status line lists each, well over 1 KiB.
    let file = dir.join("v");
    std::fs::write(&file, "1\n").unwrap();
    let sensors: String = (0..40)
        .map(|i| {
            format!(
                "[[sensor]]\nid = \"{GW}-number-with-a-long-name-{i}\"\ntype = \"number\"\npath = \"{}\"\ninterval = \"1h\"\n\n",
                file.display()
            )
        })
        .collect();
    let cfg = config_text(dir, broker.port, "compress = \"gzip\"", &sensors);
    let mut daemon = Daemon::spawn(dir, &cfg);
    let status = cloud.next_on(&format!("v/a/g/{GW}/status"));
    daemon.terminate();
    assert!(status.gzip, "{} bytes", status.payload.len());
    let (gw, _, sensors) = thingplus_gw::thingplus::parse_status(&status.text()).unwrap();
    assert_eq!(gw, thingplus_gw::thingplus::Status::On);
    assert_eq!(sensors.len(), 40);
}

#[test]
fn check_refuses_an_unknown_compression_with_its_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = config_text(dir, 1883, "compress = \"zip\"", "");
    let path = dir.join("bad.toml");
    std::fs::write(&path, &cfg).unwrap();
    let (status, out, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(78), "{out}{err}");
    let line = cfg.lines().position(|l| l.starts_with("compress")).unwrap() + 1;
    assert!(
        err.contains(&format!("bad.toml:{line}:"))
            && err.contains("invalid compress \"zip\": expected \"gzip\" or \"off\""),
        "{err}"
    );

    // Off and gzip are accepted; `check` says what it resolved to.
    for (setting, says) in [
        ("compress = \"off\"", "not compressed"),
        (
            "compress = \"gzip\"\ncompress_min_bytes = \"4KiB\"",
            "gzip above 4096 bytes",
        ),
    ] {
        std::fs::write(&path, config_text(dir, 1883, setting, "")).unwrap();
        let (status, out, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
        assert!(status.success(), "{out}{err}");
        assert!(out.contains(says), "{out}");
    }
}
