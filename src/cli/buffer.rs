//! `thingplus-gw buffer check|export`: look into the on-disk buffer, or rescue
//! its readings by hand. Both only read the database, so they can run while
//! the daemon does.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::buffer::sqlite::{self, format_size, Inspection, DB_FILE};
use crate::clock::system_now_ms;
use crate::config::Config;

use super::EXIT_CONFIG;

#[derive(Subcommand, Debug)]
pub enum BufferCommand {
    /// Report rows, pending readings, oldest age, size and integrity_check.
    Check {
        #[command(flatten)]
        target: Target,
        /// Skip `PRAGMA integrity_check` (it reads the whole file).
        #[arg(long)]
        no_integrity: bool,
    },
    /// Write the pending readings as JSON lines, oldest first:
    /// {"seq":..,"sensor":"..","time":..,"value":..} (time in ms). Nothing is removed.
    Export {
        #[command(flatten)]
        target: Target,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Which database: by default `[buffer] dir` of the configuration.
#[derive(Args, Debug)]
pub struct Target {
    /// A buffer directory (instead of the configuration's `[buffer] dir`).
    #[arg(long, conflicts_with = "db")]
    dir: Option<PathBuf>,
    /// A database file, such as one moved aside as `buffer.db.corrupt-*`.
    #[arg(long)]
    db: Option<PathBuf>,
}

impl Target {
    /// The database file, and the buffer directory when known.
    fn resolve(&self, config_path: &Path) -> Result<(PathBuf, Option<PathBuf>), String> {
        if let Some(db) = &self.db {
            return Ok((db.clone(), None));
        }
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => Config::load(config_path)
                .map_err(|e| format!("{e} (or name the buffer with --dir or --db)"))?
                .buffer
                .dir
                .clone(),
        };
        Ok((dir.join(DB_FILE), Some(dir)))
    }
}

pub fn run(config_path: &Path, command: BufferCommand) -> ExitCode {
    match command {
        BufferCommand::Check {
            target,
            no_integrity,
        } => check(config_path, &target, !no_integrity),
        BufferCommand::Export { target, output } => export(config_path, &target, output.as_deref()),
    }
}

fn check(config_path: &Path, target: &Target, integrity: bool) -> ExitCode {
    let (db, dir) = match target.resolve(config_path) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match sqlite::inspect(&db, integrity) {
        Ok(report) => {
            print!(
                "{}",
                describe(&db, dir.as_deref(), &report, system_now_ms())
            );
            let sound =
                report.errors.is_empty() && (!integrity || report.integrity == ["ok".to_string()]);
            if sound {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The report printed by `buffer check`.
pub fn describe(db: &Path, dir: Option<&Path>, r: &Inspection, now_ms: i64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "database         {}", db.display());
    if let Some(dir) = dir {
        let daemon = match sqlite::lock_holder(dir) {
            Some(Some(pid)) => format!("running (pid {pid})"),
            Some(None) => "running".to_string(),
            None => "not running".to_string(),
        };
        let _ = writeln!(o, "daemon           {daemon}");
    }
    let unused = r.free_pages * r.page_size;
    let _ = writeln!(
        o,
        "size             {} (database {}, of which {} free for reuse; WAL {})",
        format_size(r.db_bytes + r.wal_bytes),
        format_size(r.db_bytes),
        format_size(unused),
        format_size(r.wal_bytes)
    );
    let opt = |v: Option<u64>| v.map_or("unreadable".to_string(), |n| n.to_string());
    let _ = writeln!(o, "rows             {} (batches of readings)", opt(r.rows));
    let _ = writeln!(o, "pending readings {}", opt(r.pending));
    let age = |t: i64| {
        let secs = (now_ms - t).max(0) as u64 / 1000;
        format!(
            "{} ago ({t} ms)",
            humantime::format_duration(std::time::Duration::from_secs(secs))
        )
    };
    let _ = writeln!(
        o,
        "oldest           {}",
        r.oldest_ms.map_or("-".to_string(), age)
    );
    let _ = writeln!(
        o,
        "newest           {}",
        r.newest_ms.map_or("-".to_string(), age)
    );
    let _ = writeln!(o, "next seq         {}", opt(r.next_seq));
    let _ = writeln!(
        o,
        "dropped          {} (bounds, full disk, damaged chunks)",
        opt(r.dropped)
    );
    for s in &r.sensors {
        let _ = writeln!(
            o,
            "  sensor {}: {} pending{}",
            s.name,
            s.pending,
            s.newest_ms
                .map(|t| format!(", newest {}", age(t)))
                .unwrap_or_default()
        );
    }
    if !r.integrity.is_empty() {
        let _ = writeln!(o, "integrity_check  {}", r.integrity.join("; "));
    }
    // "what: message" lines, one per distinct message.
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for e in &r.errors {
        let (what, msg) = e.split_once(": ").unwrap_or(("", e));
        match grouped.iter_mut().find(|(m, _)| m == msg) {
            Some((_, whats)) => whats.push(what.to_string()),
            None => grouped.push((msg.to_string(), vec![what.to_string()])),
        }
    }
    for (msg, whats) in &grouped {
        let _ = writeln!(o, "error            {msg} (reading {})", whats.join(", "));
    }
    if !r.errors.is_empty() || r.integrity.iter().any(|l| l != "ok") {
        let _ = writeln!(
            o,
            "the file is damaged: `thingplus-gw buffer export --db {}` writes out what can still be read",
            db.display()
        );
    }
    o
}

fn export(config_path: &Path, target: &Target, output: Option<&Path>) -> ExitCode {
    let (db, _) = match target.resolve(config_path) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match output {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => {
                let mut w = std::io::BufWriter::new(f);
                let r = sqlite::export(&db, &mut w);
                let r = r.and_then(|s| {
                    w.into_inner()
                        .map_err(|e| e.to_string())
                        .and_then(|f| f.sync_all().map_err(|e| e.to_string()))
                        .map(|()| s)
                });
                r.map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) => Err(format!("cannot create {}: {e}", path.display())),
        },
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let r = sqlite::export(&db, &mut w);
            let _ = w.flush();
            r
        }
    };
    match result {
        Ok(summary) => {
            eprintln!(
                "exported {} readings from {}",
                summary.readings,
                db.display()
            );
            for r in &summary.skipped {
                eprintln!(
                    "warning: seqs {}..{} could not be read (damaged) and were skipped",
                    r.start, r.end
                );
            }
            if summary.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
