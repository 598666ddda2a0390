//! Writes the man page `thingplus-gw.8` and the shell completions
//! (bash, zsh, fish) into the directory given as the only argument, from the
//! same clap definition the binary parses. Run by `scripts/package.sh` with
//! `--no-default-features` so the pages match the packaged binary (no `demo`).

use std::io::Write;
use std::path::PathBuf;

use clap_complete::Shell;
use thingplus_gw::cli::args::Args;

/// Sections clap cannot know about, in roff.
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Stopped cleanly (SIGTERM, SIGINT).
.TP
\fB75\fR
The Thing+ cloud asked for a restart (\fBrestart\fR request); systemd starts the service again.
.TP
\fB78\fR
Configuration error (EX_CONFIG): the message names the file, line and column. The unit does not restart on it (\fBRestartPreventExitStatus=78\fR); fix the file, then \fBsystemctl restart thingplus-gw\fR.
.TP
\fB1\fR
Any other failure; systemd restarts the service after 10 seconds.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Re-read the configuration (\fBsystemctl reload thingplus-gw\fR). Sensor, actuator and report interval changes apply at once without losing or re-sending buffered readings; the MQTT connection is re-established only when the [mqtt] or gateway identity settings changed. An invalid file is refused with a log line and a STATUS, and the running configuration stays.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop: sampling stops, pending readings are delivered for up to [mqtt] shutdown_timeout, what is left stays in the buffer for the next start.
.SH ENVIRONMENT
.TP
\fBTHINGPLUS_GW_CONFIG\fR
Configuration file, instead of /etc/thingplus-gw/config.toml.
.TP
\fBRUST_LOG\fR
Log filter (such as \fBdebug\fR or \fBthingplus_gw=debug\fR); overrides [log] level.
.TP
\fBNOTIFY_SOCKET\fR, \fBWATCHDOG_USEC\fR, \fBJOURNAL_STREAM\fR, \fBSTATE_DIRECTORY\fR
Set by systemd: readiness, status and watchdog notifications; native journal logging; the default state directory.
.SH FILES
.TP
\fI/etc/thingplus-gw/config.toml\fR
The configuration (owner root, group thingplus-gw, mode 0640: it holds the APIKEY).
.TP
\fI/var/lib/thingplus-gw/\fR
State: the reading buffer and settings set by the server.
.TP
\fI/usr/lib/systemd/system/thingplus-gw.service\fR
The systemd unit; local changes go in a drop-in (\fBsystemctl edit thingplus-gw\fR).
.SH LOGS
Under systemd the daemon logs to the journal with structured fields, for example:
.PP
.nf
journalctl -u thingplus-gw -f
journalctl -u thingplus-gw SENSOR_ID=0123456789ab-temperature-0
journalctl -u thingplus-gw -p warning
.fi
.PP
\fBsystemctl status thingplus-gw\fR shows a one-line status (connection, pending readings, next retry).
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.service\fR(5)
"#;

/// Escapes text for roff.
fn roff(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// The commands and their own options, in this one page (clap_mangen would
/// point to a page per command, which we do not ship).
fn commands_section(cmd: &clap::Command) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.push_str(&format!(
            ".TP\n\\fBthingplus\\-gw {}\\fR\n{}\n",
            roff(sub.get_name()),
            roff(&sub.get_about().map(|a| a.to_string()).unwrap_or_default())
        ));
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set())
        {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" {
                continue;
            }
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| format!(" \\fI{}\\fR", roff(v)))
                .unwrap_or_default();
            let default = match arg.get_default_values() {
                [] => String::new(),
                d => format!(" (default: {})", roff(&d[0].to_string_lossy())),
            };
            out.push_str(&format!(
                ".RS\n.TP\n\\fB\\-\\-{}\\fR{value}\n{}{default}\n.RE\n",
                roff(long),
                roff(&arg.get_help().map(|h| h.to_string()).unwrap_or_default()),
            ));
        }
    }
    out
}

fn main() -> std::io::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/docs"));
    std::fs::create_dir_all(out.join("completions"))?;

    let cmd = Args::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("thingplus-gw {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.write_all(commands_section(&cmd).as_bytes())?;
    page.write_all(EXTRA.as_bytes())?;
    man.render_version_section(&mut page)?;
    std::fs::write(out.join("thingplus-gw.8"), page)?;

    for (shell, name) in [
        (Shell::Bash, "thingplus-gw"),
        (Shell::Zsh, "_thingplus-gw"),
        (Shell::Fish, "thingplus-gw.fish"),
    ] {
        let mut cmd = Args::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, "thingplus-gw", &mut buf);
        std::fs::write(out.join("completions").join(name), buf)?;
    }
    println!("{}", out.display());
    Ok(())
}
