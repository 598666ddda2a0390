//! `thingplus-gw status`: ask the running daemon how it is. Exit 0 when
//! healthy, 1 when running but unhealthy (offline, or a sensor failing),
//! 2 when the daemon cannot be reached: usable as a health check.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::control_socket::{query, StatusReport};

pub const EXIT_UNHEALTHY: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 2;
/// Lines of the last software update's output in the human report (`--json` has its tail).
const SW_UPDATE_LINES: usize = 10;

pub fn run(socket: &Path, json: bool) -> ExitCode {
    let report = match query(socket, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "cannot reach the daemon at {}: {e} (is thingplus-gw running? `systemctl status thingplus-gw`; are you root or in the thingplus-gw group?)",
                socket.display()
            );
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report));
    }
    if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    }
}

fn ago(now: i64, t: i64) -> String {
    let s = (now - t).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h {} min ago", s / 3600, s / 60 % 60),
    }
}

/// The human form of a report.
pub fn render(r: &StatusReport) -> String {
    let mut o = String::new();
    let now = r.now_ms;
    let _ = writeln!(
        o,
        "thingplus-gw {} (build {}) gateway {}",
        r.version,
        if r.build.is_empty() { "?" } else { &r.build },
        r.gateway_id
    );
    connection(&mut o, r);
    let last = r
        .last_delivery_ms
        .map_or("never".to_string(), |t| ago(now, t));
    let _ = writeln!(o, "delivered    {} readings, last {last}", r.delivered);
    backlog(&mut o, r);
    let _ = writeln!(o, "report every {} s", r.report_interval_ms as f64 / 1000.0);
    let mut clock = r.clock.clone();
    if r.clock_offset_ms != 0 {
        clock += &format!(", offset {} ms", r.clock_offset_ms);
    }
    if r.clock_held > 0 {
        clock += &format!(", {} readings held until the time is known", r.clock_held);
    }
    let _ = writeln!(o, "clock        {clock}");
    if let Some(c) = &r.last_command {
        let err = c["error"]
            .as_str()
            .map_or("ok".to_string(), |e| format!("refused: {e}"));
        let at = c["at_ms"].as_i64().map_or(String::new(), |t| ago(now, t));
        // "what" names the actuator and command; an older daemon gives the method only.
        let what = c["what"].as_str().or(c["method"].as_str()).unwrap_or("?");
        let _ = writeln!(o, "last command {what} ({}) {at}: {err}", c["id"]);
    }
    sw_update(&mut o, r);
    let _ = writeln!(
        o,
        "\n{:<36} {:<6} {:>14}  {:<12} error",
        "sensor", "status", "value", "updated"
    );
    for s in &r.sensors {
        let value = s.value.as_ref().map_or("-".to_string(), |v| v.to_string());
        let when = s.time_ms.map_or("-".to_string(), |t| ago(now, t));
        let status = s.status.split(':').next().unwrap_or("");
        let _ = writeln!(
            o,
            "{:<36} {:<6} {:>14}  {:<12} {}",
            s.id,
            status,
            value,
            when,
            s.error.as_deref().unwrap_or("")
        );
    }
    if !r.actuators.is_empty() {
        let _ = writeln!(o, "\n{:<36} state", "actuator");
        for (id, state) in &r.actuators {
            let _ = writeln!(o, "{id:<36} {state}");
        }
    }
    o
}

/// The connection lines: connected since when, or offline with the next
/// attempt and the last error.
fn connection(o: &mut String, r: &StatusReport) {
    let now = r.now_ms;
    if r.connected {
        let _ = writeln!(
            o,
            "connection   connected to {} since {}",
            r.broker,
            ago(now, r.since_ms)
        );
    } else {
        let since = if r.since_ms > 0 {
            format!(" since {}", ago(now, r.since_ms))
        } else {
            String::new()
        };
        let retry = r
            .retry_at_ms
            .map(|t| format!(", next attempt in {} s", ((t - now).max(0) + 999) / 1000))
            .unwrap_or_default();
        let _ = writeln!(o, "connection   OFFLINE{since}{retry} ({})", r.broker);
        if let Some(e) = &r.last_error {
            let _ = writeln!(o, "last error   {e}");
        }
    }
}

/// The backlog and buffer store lines.
fn backlog(o: &mut String, r: &StatusReport) {
    let now = r.now_ms;
    match &r.backlog {
        Some(b) => {
            let oldest = b
                .oldest_ms
                .map_or(String::new(), |t| format!(", oldest {}", ago(now, t)));
            let _ = writeln!(
                o,
                "backlog      {} readings pending{oldest}; {} dropped",
                b.pending, b.dropped
            );
            let _ = writeln!(
                o,
                "buffer store {} on disk (database and WAL files, not the size of what is pending)",
                crate::buffer::sqlite::format_size(b.store_bytes)
            );
            if let Some(why) = &b.memory_only {
                let _ = writeln!(
                    o,
                    "buffer       MEMORY ONLY: the disk buffer cannot be used ({why}); readings are lost at the next restart"
                );
            }
        }
        None => {
            let _ = writeln!(o, "backlog      unknown (buffer not answering)");
        }
    }
}

/// The last software update and the end of its output.
fn sw_update(o: &mut String, r: &StatusReport) {
    let now = r.now_ms;
    if let Some(u) = &r.sw_update {
        let state = if u.running {
            format!("RUNNING, started {}", ago(now, u.started_ms))
        } else {
            format!(
                "{} {} ({}), started {}",
                if u.success == Some(true) {
                    "finished"
                } else {
                    "FAILED"
                },
                u.finished_ms.map_or("-".to_string(), |t| ago(now, t)),
                u.outcome.as_deref().unwrap_or("?"),
                ago(now, u.started_ms)
            )
        };
        let _ = writeln!(o, "sw update    {state}: {}", u.command.join(" "));
        let lines: Vec<&str> = u.output_tail.lines().collect();
        for l in &lines[lines.len().saturating_sub(SW_UPDATE_LINES)..] {
            let _ = writeln!(o, "             | {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_socket::BacklogReport;

    fn report() -> StatusReport {
        serde_json::from_value(serde_json::json!({
            "gateway_id": "gw", "version": "1", "now_ms": 100_000, "broker": "b:8883",
            "connected": true, "since_ms": 40_000, "last_error": null, "retry_at_ms": null,
            "delivered": 5, "last_delivery_ms": 90_000, "report_interval_ms": 60_000,
            "backlog": {"pending": 0, "store_bytes": 57592, "oldest_ms": null, "dropped": 0},
            "sensors": [], "actuators": [], "clock_offset_ms": 0,
            "last_command": {"method": "controlActuator", "what": "controlActuator relay on {\"duration\":1500}",
                             "id": "7", "at_ms": 97_000, "error": null},
            "clock": "synchronized", "clock_trusted": true, "clock_held": 0
        }))
        .unwrap()
    }

    #[test]
    fn the_store_size_is_not_called_backlog() {
        let text = render(&report());
        assert!(
            text.contains("backlog      0 readings pending; 0 dropped\n"),
            "{text}"
        );
        assert!(
            text.contains("buffer store 56.2 KiB on disk (database and WAL files, not the size of what is pending)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_last_command_names_what_it_asked() {
        let text = render(&report());
        assert!(
            text.contains(
                "last command controlActuator relay on {\"duration\":1500} (\"7\") 3 s ago: ok\n"
            ),
            "{text}"
        );
        // An older daemon's report has the method only.
        let mut r = report();
        r.last_command = Some(serde_json::json!({"method": "reboot", "id": 1, "at_ms": 99_000}));
        assert!(render(&r).contains("last command reboot (1) 1 s ago: ok\n"));
    }

    #[test]
    fn json_names_the_store_size_and_reads_the_old_name() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["backlog"]["store_bytes"], 57592);
        assert!(json["backlog"].get("bytes").is_none());
        let old: BacklogReport = serde_json::from_value(
            serde_json::json!({"pending": 1, "bytes": 4096, "oldest_ms": 5, "dropped": 0}),
        )
        .unwrap();
        assert_eq!(old.store_bytes, 4096);
    }
}
