//! Instructions per reading on the hot paths, counted by callgrind (exact
//! and repeatable on a shared machine, unlike wall-clock time).
//!
//! ```text
//! cargo bench --no-default-features --bench hotpath -- --report target/bench/hotpath.md
//! cargo bench --no-default-features --bench hotpath -- KERNEL N   # run one kernel N times
//! ```
//!
//! Each kernel runs twice under `valgrind --tool=callgrind` with N and 2N
//! iterations; the difference divided by N readings removes set-up costs.
//! Every thread is counted (the buffer thread's share of an append too).
//! Kernels:
//!
//! - `sample`: 100 file sensors on small files, read, parsed, stamped,
//!   recorded on the status board and appended to the buffer (in-memory
//!   store) exactly as the sampling task does, one runtime turn per round;
//! - `encode`: Thing+ values messages of at most 64 KiB packed from a
//!   backlog of 1,000 sensors, as the session does;
//! - `baseline`: the floor for `sample`: the same files read with
//!   `std::fs::read_to_string` and parsed with `str::parse::<f64>`, nothing else.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use thingplus_gw::buffer::{Buffer, MemoryStore, Stored};
use thingplus_gw::clock::Clock;
use thingplus_gw::config::{Config, Fsync, SensorSource, ValueType};
use thingplus_gw::reading::Reading;
use thingplus_gw::sensor::{file, Sampler, SensorRuntime};
use thingplus_gw::status_board::StatusBoard;
use thingplus_gw::thingplus::pack_values;

const SENSORS: usize = 100;

fn sensors_config(dir: &std::path::Path) -> Config {
    let mut text = String::from(
        "[gateway]\nid = \"gw\"\napikey = \"k\"\nreport_interval = \"60s\"\n[buffer]\nmax_size = \"1GiB\"\n",
    );
    for i in 0..SENSORS {
        let path = dir.join(format!("temp{i}"));
        std::fs::write(&path, format!("{}\n", 20_000 + i * 37)).unwrap();
        let _ = write!(
            text,
            "[[sensor]]\nid = \"gw-temperature-{i}\"\ntype = \"temperature\"\npath = \"{}\"\nscale = 0.001\ninterval = \"1s\"\n",
            path.display()
        );
    }
    Config::parse(&text, &dir.join("config.toml")).unwrap()
}

fn kernel(name: &str, rounds: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match name {
        "sample" => {
            let config = sensors_config(tmp.path());
            rt.block_on(async {
                let (_tx, rx) = tokio::sync::watch::channel(Duration::from_secs(60));
                let srt = SensorRuntime {
                    buffer: Buffer::start(MemoryStore::new(1 << 30), Fsync::Never),
                    clock: Arc::new(Clock::new()),
                    board: Arc::new(StatusBoard::new(
                        config.sensors.iter().map(|s| s.id.clone()),
                    )),
                    flush: Arc::new(tokio::sync::Notify::new()),
                    report_interval: rx,
                };
                let mut samplers: Vec<Sampler> = config
                    .sensors
                    .iter()
                    .map(|s| Sampler::new(s.id.as_str().into(), s.event))
                    .collect();
                for _ in 0..rounds {
                    for (cfg, sampler) in config.sensors.iter().zip(&mut samplers) {
                        let SensorSource::File { path, regex } = &cfg.source else {
                            unreachable!()
                        };
                        let v = file::read(path, regex.as_ref(), cfg);
                        sampler.take(v, &srt);
                    }
                    // The end of a runtime turn, as after a timer tick.
                    tokio::task::yield_now().await;
                }
                let st = srt.buffer.stats().await.unwrap();
                assert_eq!(st.pending as usize, rounds * SENSORS);
                srt.buffer.close().await.unwrap();
            });
        }
        "baseline" => {
            let config = sensors_config(tmp.path());
            let mut sum = 0.0;
            for _ in 0..rounds {
                for cfg in &config.sensors {
                    let SensorSource::File { path, .. } = &cfg.source else {
                        unreachable!()
                    };
                    let text = std::fs::read_to_string(path).unwrap();
                    sum += text.trim().parse::<f64>().unwrap() * cfg.scale;
                }
            }
            assert!(sum > 0.0);
        }
        "encode" => {
            let ids: Vec<Arc<str>> = (0..1000)
                .map(|i| Arc::from(format!("b827eb1dcccc-temperature-{i}")))
                .collect();
            let backlog: Vec<Stored> = (0..4096)
                .map(|i| Stored {
                    seq: i as u64 + 1,
                    reading: Reading::new(
                        ids[i % 1000].clone(),
                        1_780_000_000_000 + (i / 1000) as i64 * 1000,
                        // A temperature as a sysfs sensor gives it: millidegrees x 0.001.
                        file::number_value(
                            (20_000 + (i % 977) * 13) as f64,
                            ValueType::Number,
                            0.001,
                            0.0,
                        )
                        .unwrap(),
                    ),
                })
                .collect();
            let mut done = 0;
            let mut bytes = 0;
            while done < rounds * SENSORS {
                let mut rest = &backlog[..];
                while !rest.is_empty() && done < rounds * SENSORS {
                    let (msg, n) = pack_values(rest, 64 * 1024);
                    bytes += msg.len();
                    let n = n.min(rounds * SENSORS - done);
                    done += n;
                    rest = &rest[n..];
                }
            }
            assert!(bytes > 0);
        }
        other => panic!("unknown kernel {other}"),
    }
}

/// Instructions callgrind counted for `kernel N`.
fn instructions(exe: &PathBuf, name: &str, rounds: usize) -> Option<u64> {
    let out = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            "--trace-children=no",
        ])
        .arg(exe)
        .args([name, &rounds.to_string()])
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{err}");
        return None;
    }
    err.lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
}

fn report(path: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut md = String::new();
    if Command::new("valgrind").arg("--version").output().is_err() {
        md.push_str("valgrind is not installed: no instruction counts.\n");
        std::fs::write(path, &md).unwrap();
        print!("{md}");
        return;
    }
    let rounds = 200; // x 100 readings
    let per = |name: &str| -> Option<f64> {
        let a = instructions(&exe, name, rounds)?;
        let b = instructions(&exe, name, rounds * 2)?;
        Some(b.saturating_sub(a) as f64 / (rounds * SENSORS) as f64)
    };
    let sample = per("sample");
    let base = per("baseline");
    let encode = per("encode");
    let f = |x: Option<f64>| x.map_or("failed".to_string(), |v| format!("{v:.0}"));
    md.push_str("Instructions per reading (callgrind, every thread; set-up excluded).\n\n");
    md.push_str("| Path | thingplus-gw | Baseline (same run) |\n|---|---:|---|\n");
    let _ = writeln!(
        md,
        "| Sampling a file sensor: open, read, parse, stamp, status board, buffer append | {} | `read_to_string` + `parse::<f64>` of the same file: {} |",
        f(sample),
        f(base)
    );
    let _ = writeln!(
        md,
        "| Encoding: 64 KiB Thing+ messages from a 1,000-sensor backlog | {} | none |",
        f(encode)
    );
    std::fs::write(path, &md).unwrap();
    print!("{md}");
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.is_empty() {
        // `cargo test --all-targets` runs benches without `--bench`.
        eprintln!("hot path benchmarks: run them with `cargo bench` or scripts/bench.sh");
        return;
    }
    let args: Vec<String> = all.into_iter().filter(|a| a != "--bench").collect();
    match args.first().map(String::as_str) {
        Some("--report") => report(
            args.get(1)
                .map(String::as_str)
                .unwrap_or("target/bench/hotpath.md"),
        ),
        Some(name) => kernel(
            name,
            args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100),
        ),
        None => report("target/bench/hotpath.md"),
    }
}
