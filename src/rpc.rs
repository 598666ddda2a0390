//! Dispatch of the server's requests (`v/a/g/{gw}/req`) to the parts of the
//! daemon that carry them out. Every request gets exactly one response.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{mpsc, watch};

use crate::actuator::{Actuators, Reply};
use crate::clock::{self, Clock};
use crate::config::{RpcConfig, SERVICE_MIN_REPORT_INTERVAL};
use crate::log_limit::{Verdict, WarnLimiter};
use crate::state::{PersistedState, StateFile};
use crate::thingplus::rpc::{
    encode_error, encode_result, integer_millis_param, millis_param, params_object, parse_request,
    Request, RpcError,
};

/// Something the daemon does after the answer has been sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemAction {
    /// Exit so that systemd starts the service again.
    Restart,
    Reboot,
    Poweroff,
}

/// Carries out the server's requests. One lives as long as the daemon,
/// in the commands task ([`Dispatcher::serve`]), whatever session is
/// connected.
pub struct Dispatcher {
    clock: Arc<Clock>,
    actuators: Actuators,
    state_file: StateFile,
    report_interval: watch::Sender<Duration>,
    rpc: RpcConfig,
    actions: mpsc::UnboundedSender<SystemAction>,
    /// The last request received, for `thingplus-gw status`.
    last_command: LastCommandCell,
    /// The last software update (running or finished), for `thingplus-gw
    /// status`.
    sw_update: SwUpdateCell,
}

/// The last request received, shared between the dispatcher and the status report.
pub type LastCommandCell = Arc<std::sync::Mutex<Option<LastCommand>>>;

/// What the commands task sends back to the session for each request, on
/// one channel, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The response, ready at once.
    Now(Vec<u8>),
    /// The request started a program: its response follows as
    /// [`Answer::Later`].
    Started,
    /// The response of a request answered [`Answer::Started`].
    Later(Vec<u8>),
}

/// The last software update, shared between the dispatcher and the status report.
pub type SwUpdateCell = Arc<std::sync::Mutex<Option<SwUpdateReport>>>;

/// Bytes of the update command's output kept (its end: where errors are).
pub const SW_UPDATE_TAIL_BYTES: usize = 4096;

/// How long output is still read after the update command has exited: a
/// process it left in the background may hold the pipe open for ever.
pub const SW_UPDATE_DRAIN: Duration = Duration::from_millis(500);

/// The last software update's record in the state directory, written when
/// it starts and when it ends: status still shows it after a restart of the
/// daemon (which an update often causes).
pub const SW_UPDATE_FILE: &str = "sw-update.json";

/// What a record still saying "running" means when the daemon starts.
pub const SW_UPDATE_INTERRUPTED: &str = "interrupted (daemon restarted)";

/// The last software update as recorded in `state_dir` by an earlier run
/// of the daemon, for the status. One recorded as running did not finish
/// in that run: it becomes [`SW_UPDATE_INTERRUPTED`] (and is saved so).
pub fn load_sw_update(state_dir: &Path) -> SwUpdateCell {
    let path = state_dir.join(SW_UPDATE_FILE);
    let report = match crate::small_file::read(&path, crate::state::MAX_STATE_FILE_SIZE) {
        Ok((bytes, _)) => match serde_json::from_slice::<SwUpdateReport>(&bytes) {
            Ok(mut r) => {
                if r.running {
                    r.running = false;
                    r.success = Some(false);
                    r.exit_code = None;
                    r.outcome = Some(SW_UPDATE_INTERRUPTED.into());
                    tracing::warn!(command = ?r.command, "the software update started by the previous run of the daemon did not finish in it: {SW_UPDATE_INTERRUPTED}");
                    save_sw_update(&path, &r);
                }
                Some(r)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable software update record");
                None
            }
        },
        Err(_) => None,
    };
    Arc::new(std::sync::Mutex::new(report))
}

/// Replaces the record at `path` (atomically); a failure is logged.
fn save_sw_update(path: &Path, r: &SwUpdateReport) {
    let tmp = path.with_extension("json.tmp");
    let done = serde_json::to_vec(r)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        tracing::warn!(path = %path.display(), error = %e, "cannot save the software update record: status will not show it after a restart");
    }
}

/// A software update (`swUpdate`): what runs, since when, how it ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SwUpdateReport {
    pub command: Vec<String>,
    pub started_ms: i64,
    pub running: bool,
    pub finished_ms: Option<i64>,
    /// `Some(true)` exit status 0; `Some(false)` any other end; `None` running.
    pub success: Option<bool>,
    /// The exit code, when it exited (not when killed by a signal or never started).
    pub exit_code: Option<i32>,
    /// How it ended, in words: "exit status 0", "killed by signal 9", "cannot run ...".
    pub outcome: Option<String>,
    /// The last [`SW_UPDATE_TAIL_BYTES`] of its stdout and stderr, as they came.
    pub output_tail: String,
}

impl SwUpdateReport {
    /// An update of `command` that has just started.
    pub fn started(command: Vec<String>, started_ms: i64) -> Self {
        SwUpdateReport {
            command,
            started_ms,
            running: true,
            finished_ms: None,
            success: None,
            exit_code: None,
            outcome: None,
            output_tail: String::new(),
        }
    }
}

/// The last request the server sent, and how it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastCommand {
    pub method: String,
    /// What it asked, in words (see [`request_summary`]).
    pub what: String,
    pub id: Json,
    pub at_ms: i64,
    /// `None` when carried out; the error message otherwise.
    pub error: Option<String>,
}

/// A response payload: ready now, or when a program finishes (exec actuators).
pub enum Response {
    Now(Vec<u8>),
    Later(tokio::task::JoinHandle<Vec<u8>>),
}

/// Longest report interval accepted from the server: one day.
const MAX_REPORT_INTERVAL_MS: f64 = 86_400_000.0;

impl Dispatcher {
    pub fn new(
        clock: Arc<Clock>,
        actuators: Actuators,
        state_file: StateFile,
        report_interval: watch::Sender<Duration>,
        rpc: RpcConfig,
        actions: mpsc::UnboundedSender<SystemAction>,
        sw_update: SwUpdateCell,
    ) -> Self {
        Dispatcher {
            clock,
            actuators,
            state_file,
            report_interval,
            rpc,
            actions,
            last_command: Default::default(),
            sw_update,
        }
    }

    /// The last request, as the status report shows it.
    pub fn last_command(&self) -> LastCommandCell {
        self.last_command.clone()
    }

    /// The last software update, as the status report shows it.
    pub fn sw_update(&self) -> SwUpdateCell {
        self.sw_update.clone()
    }

    /// The commands task: answers each request from `requests` on
    /// `answers`, in order, until either channel closes.
    pub async fn serve(
        mut self,
        mut requests: mpsc::Receiver<Vec<u8>>,
        answers: mpsc::UnboundedSender<Answer>,
    ) {
        while let Some(payload) = requests.recv().await {
            let sent = match self.handle(&payload) {
                Response::Now(response) => answers.send(Answer::Now(response)),
                Response::Later(task) => {
                    // Answered when the program finishes, on whatever
                    // connection is up then.
                    let later = answers.clone();
                    tokio::spawn(async move {
                        if let Ok(response) = task.await {
                            let _ = later.send(Answer::Later(response));
                        }
                    });
                    answers.send(Answer::Started)
                }
            };
            if sent.is_err() {
                return;
            }
        }
    }

    /// Handles one request payload and returns the response payload.
    pub fn handle(&mut self, payload: &[u8]) -> Response {
        let req = match parse_request(payload) {
            Ok(r) => r,
            Err(bad) => {
                let verdict = bad_request_verdict(|| {
                    format!(
                        "rejected a malformed request (id {}): {}",
                        bad.id, bad.error.message
                    )
                });
                if verdict.logs() {
                    tracing::warn!(code = bad.error.code, id = %bad.id, error = %bad.error.message, "rejected a malformed request (id {}): {}", bad.id, bad.error.message);
                }
                if verdict == Verdict::LogLast {
                    say_bad_request_warnings_are_suppressed();
                }
                return Response::Now(encode_error(&bad.id, &bad.error));
            }
        };
        match self.call(&req) {
            Reply::Now(result) => {
                self.record(&req, &result);
                Response::Now(finish(&req, result))
            }
            Reply::Later(task) => {
                self.record(&req, &Ok(Json::String("started".into())));
                Response::Later(tokio::spawn(async move {
                    let result = task
                        .await
                        .unwrap_or_else(|_| Err(RpcError::server("cancelled by a newer command")));
                    finish(&req, result)
                }))
            }
        }
    }

    fn record(&self, req: &Request, result: &Result<Json, RpcError>) {
        *self.last_command.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastCommand {
            method: req.method.clone(),
            what: request_summary(req),
            id: req.id.clone(),
            at_ms: clock::system_now_ms(),
            error: result.as_ref().err().map(|e| e.message.clone()),
        });
    }

    fn call(&mut self, req: &Request) -> Reply {
        if req.method == "controlActuator" {
            return match actuator_params(&req.params) {
                Ok((id, cmd, options)) => self.actuators.control(&id, &cmd, &options),
                Err(e) => Reply::Now(Err(e)),
            };
        }
        Reply::Now(match req.method.as_str() {
            "timeSync" => self.time_sync(req),
            "setProperty" => self.set_property(req),
            "swInfo" => Ok(crate::version::sw_info()),
            "restart" => self.system_action(
                self.rpc.allow_restart,
                "restart",
                "allow_restart",
                SystemAction::Restart,
            ),
            "reboot" => self.system_action(
                self.rpc.allow_reboot,
                "reboot",
                "allow_reboot",
                SystemAction::Reboot,
            ),
            "poweroff" => self.system_action(
                self.rpc.allow_poweroff,
                "poweroff",
                "allow_poweroff",
                SystemAction::Poweroff,
            ),
            "swUpdate" => self.start_sw_update(),
            other => Err(RpcError::method_not_found(format!(
                "unknown method \"{other}\""
            ))),
        })
    }

    fn time_sync(&mut self, req: &Request) -> Result<Json, RpcError> {
        let p = params_object(&req.params)?;
        let ms = integer_millis_param(p.get("time"), "params.time")?;
        if let Err(why) = self.clock.check_server_time(ms) {
            tracing::warn!(time_ms = ms, id = %req.id, "timeSync refused: {why}");
            return Err(RpcError::server(format!("timeSync refused: {why}")));
        }
        let before = self.clock.now_ms();
        if self.rpc.set_system_clock {
            clock::set_system_clock(ms).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (the service needs CAP_SYS_TIME)"
                } else {
                    ""
                };
                RpcError::server(format!("cannot set the system clock: {e}{hint}"))
            })?;
            self.clock.clear_offset();
            tracing::info!(time_ms = ms, "system clock set from timeSync");
        } else {
            let offset = self.clock.sync_to(ms);
            tracing::info!(offset_ms = offset, "clock offset learnt from timeSync");
        }
        let step = ms - before;
        if step < -clock::MAX_STAMP_LEAD_MS {
            tracing::warn!(
                step_ms = step,
                "timeSync set the time back by {} s: readings stamped before it may be up to that far in the future",
                -step / 1000
            );
        }
        Ok(Json::String(String::new()))
    }

    fn set_property(&mut self, req: &Request) -> Result<Json, RpcError> {
        let p = params_object(&req.params)?;
        if p.is_empty() {
            return Err(RpcError::invalid_params(
                "no property given: expected {\"reportInterval\": <ms>}",
            ));
        }
        if let Some(k) = p.keys().find(|k| *k != "reportInterval") {
            return Err(RpcError::invalid_params(format!(
                "unknown property \"{k}\": only reportInterval can be set"
            )));
        }
        let ms = millis_param(p.get("reportInterval"), "reportInterval")?;
        if !(1.0..=MAX_REPORT_INTERVAL_MS).contains(&ms) {
            return Err(RpcError::invalid_params(
                "\"reportInterval\" must be a positive number of milliseconds (at most one day)",
            ));
        }
        let ms = ms.round() as u64;
        let interval = Duration::from_millis(ms);
        self.state_file
            .save(&PersistedState {
                report_interval_ms: Some(ms),
            })
            .map_err(|e| {
                RpcError::server(format!(
                    "cannot save the report interval to {}: {e}",
                    self.state_file.path().display()
                ))
            })?;
        if interval < SERVICE_MIN_REPORT_INTERVAL {
            tracing::warn!(
                report_interval_ms = ms,
                "report interval under 60 s: the Thing+ service requires at least 60 s"
            );
        }
        self.report_interval.send_replace(interval);
        tracing::info!(
            report_interval_ms = ms,
            "report interval changed by the server to {}",
            crate::units::format_duration(interval)
        );
        Ok(Json::String(String::new()))
    }

    fn system_action(
        &mut self,
        allowed: bool,
        name: &str,
        key: &str,
        action: SystemAction,
    ) -> Result<Json, RpcError> {
        if !allowed {
            return Err(RpcError::method_not_found(format!(
                "{name} is disabled on this gateway: set [rpc] {key} = true to allow it"
            )));
        }
        let _ = self.actions.send(action);
        Ok(Json::String(String::new()))
    }

    fn sw_update_file(&self) -> PathBuf {
        let dir = self.state_file.path().parent().unwrap_or(Path::new("."));
        dir.join(SW_UPDATE_FILE)
    }

    fn start_sw_update(&mut self) -> Result<Json, RpcError> {
        let Some(cmd) = self.rpc.sw_update_command.clone().filter(|c| !c.is_empty()) else {
            return Err(RpcError::method_not_found(
                "swUpdate is disabled on this gateway: set [rpc] sw_update_command to enable it",
            ));
        };
        {
            let mut cell = self.sw_update.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(running) = cell.as_ref().filter(|u| u.running) {
                let secs = (clock::system_now_ms() - running.started_ms).max(0) / 1000;
                return Err(RpcError::server(format!(
                    "a software update is already running (started {secs} s ago)"
                )));
            }
            let report = SwUpdateReport::started(cmd.clone(), clock::system_now_ms());
            save_sw_update(&self.sw_update_file(), &report);
            *cell = Some(report);
        }
        tokio::spawn(run_sw_update(
            cmd,
            self.sw_update.clone(),
            Some(self.sw_update_file()),
        ));
        Ok(Json::String("started".into()))
    }
}

/// Runs the update command (no shell, no stdin), keeping the tail of its
/// output in `cell` as it comes, and records (in `cell` and the `record`
/// file) and logs how it ended. It ends when the command exits: output is
/// read for at most [`SW_UPDATE_DRAIN`] after that, so a process left in
/// the background holding the pipe does not keep it "running".
async fn run_sw_update(cmd: Vec<String>, cell: SwUpdateCell, record: Option<PathBuf>) {
    use std::process::Stdio;
    use tokio::io::AsyncReadExt;

    tracing::info!(command = ?cmd, "software update started: {}", cmd.join(" "));
    let update = |f: &mut dyn FnMut(&mut SwUpdateReport)| {
        if let Some(r) = cell.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f(r);
        }
    };
    // stdout and stderr into one pipe, so the tail keeps the order the
    // program wrote in (as `2>&1` would).
    let spawned = output_pipe().and_then(|(read, write)| {
        let write2 = write.try_clone()?;
        // The Command (holding our copies of the write end) is dropped at
        // the end of this block, so the read end sees EOF when the program ends.
        let child = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write2))
            .spawn()?;
        Ok((
            child,
            tokio::net::unix::pipe::Receiver::from_owned_fd(read)?,
        ))
    });
    let (mut child, mut output) = match spawned {
        Ok(c) => c,
        Err(e) => {
            let outcome = format!("cannot run {}: {e}", cmd[0]);
            tracing::error!(command = ?cmd, error = %e, "software update failed: cannot run the command {}: {e}", cmd[0]);
            update(&mut |r| {
                r.running = false;
                r.finished_ms = Some(clock::system_now_ms());
                r.success = Some(false);
                r.outcome = Some(outcome.clone());
                if let Some(p) = &record {
                    save_sw_update(p, r);
                }
            });
            return;
        }
    };
    // The output's end, bounded, published to the status as it comes.
    let mut tail = Vec::<u8>::new();
    let mut buf = [0u8; 1024];
    let mut status = None;
    // Until the command exits (or the pipe closes), then the rest of the
    // output already written, waiting at most SW_UPDATE_DRAIN for it.
    let mut drain_until = None;
    loop {
        let read = async {
            match drain_until {
                None => Some(output.read(&mut buf).await),
                Some(t) => tokio::time::timeout_at(t, output.read(&mut buf)).await.ok(),
            }
        };
        tokio::select! {
            r = read => match r {
                Some(Ok(0)) | Some(Err(_)) | None => break,
                Some(Ok(n)) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > SW_UPDATE_TAIL_BYTES {
                        let cut = tail.len() - SW_UPDATE_TAIL_BYTES;
                        tail.drain(..cut);
                    }
                    let text = tail_text(&tail);
                    update(&mut |r| r.output_tail = text.clone());
                }
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                drain_until = Some(tokio::time::Instant::now() + SW_UPDATE_DRAIN);
            }
        }
    }
    let status = match status {
        Some(st) => st,
        None => child.wait().await,
    };
    let output_tail = tail_text(&tail);
    let last_lines = last_lines(&output_tail, 5);
    let (success, exit_code, outcome) = match status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            let outcome = match (st.code(), st.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => st.to_string(),
            };
            (st.success(), st.code(), outcome)
        }
        Err(e) => (false, None, format!("cannot wait for the command: {e}")),
    };
    if success {
        tracing::info!(command = ?cmd, outcome = %outcome, output = %last_lines, "software update finished: {}: {outcome}", cmd.join(" "));
    } else {
        tracing::error!(command = ?cmd, outcome = %outcome, output = %last_lines, "software update failed: {}: {outcome}: {last_lines}", cmd.join(" "));
    }
    update(&mut |r| {
        r.running = false;
        r.finished_ms = Some(clock::system_now_ms());
        r.success = Some(success);
        r.exit_code = exit_code;
        r.outcome = Some(outcome.clone());
        r.output_tail = output_tail.clone();
        if let Some(p) = &record {
            save_sw_update(p, r);
        }
    });
}

/// A pipe (read end, write end), both close-on-exec (the child gets its
/// own copies as stdout and stderr).
fn output_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors on success; each is owned once.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// The kept bytes as text; a line cut at the front by the bound is dropped.
fn tail_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if bytes.len() >= SW_UPDATE_TAIL_BYTES {
        if let Some(nl) = text.find('\n') {
            return text[nl + 1..].to_string();
        }
    }
    text.into_owned()
}

/// The last `n` non-empty lines, joined with " | " (for one log line).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Logs the outcome and encodes the response.
fn finish(req: &Request, result: Result<Json, RpcError>) -> Vec<u8> {
    let what = request_summary(req);
    match result {
        Ok(result) => {
            tracing::info!(method = %req.method, id = %req.id, "request carried out: {what}{}", consequence(&req.method));
            encode_result(&req.id, result)
        }
        Err(e) => {
            let verdict = bad_request_verdict(|| {
                format!("request refused: {what}: {} (id {})", e.message, req.id)
            });
            if verdict.logs() {
                tracing::warn!(method = %req.method, id = %req.id, code = e.code, error = %e.message, "request refused: {what}: {} (id {})", e.message, req.id);
            }
            if verdict == Verdict::LogLast {
                say_bad_request_warnings_are_suppressed();
            }
            encode_error(&req.id, &e)
        }
    }
}

/// What a request asks, for the log: the actuator and the command with its
/// options, the property and its value, the time, or the method.
pub fn request_summary(req: &Request) -> String {
    let p = &req.params;
    let text = |v: &Json| match v {
        Json::String(s) => s.clone(),
        Json::Null => "?".to_string(),
        other => other.to_string(),
    };
    match req.method.as_str() {
        "controlActuator" => {
            let options = match p.get("options") {
                Some(Json::Object(o)) if !o.is_empty() => format!(" {}", Json::Object(o.clone())),
                _ => String::new(),
            };
            format!(
                "controlActuator {} {}{options}",
                text(&p["id"]),
                text(&p["cmd"])
            )
        }
        "setProperty" => match p.as_object() {
            Some(o) if !o.is_empty() => {
                let props: Vec<String> =
                    o.iter().map(|(k, v)| format!("{k} {}", text(v))).collect();
                format!("setProperty {}", props.join(", "))
            }
            _ => "setProperty".to_string(),
        },
        "timeSync" => format!("timeSync to {}", text(&p["time"])),
        other => other.to_string(),
    }
}

/// What follows from a request carried out, beyond what its name says.
fn consequence(method: &str) -> String {
    match method {
        "restart" => " (the service restarts once this answer is sent)".to_string(),
        "reboot" => " (the system reboots once this answer is sent)".to_string(),
        "poweroff" => " (the system powers off once this answer is sent)".to_string(),
        "swUpdate" => {
            " (the update runs in the background; `thingplus-gw status` shows its progress)"
                .to_string()
        }
        "swInfo" => format!(" (version {} reported)", crate::version::VERSION),
        _ => String::new(),
    }
}

/// Warnings about malformed or refused requests: the cloud can send any
/// number of them. One limiter for the process, so a reload keeps its count.
static BAD_REQUEST_WARNINGS: std::sync::Mutex<WarnLimiter> = std::sync::Mutex::new(
    WarnLimiter::new(BAD_REQUEST_WARNING_BURST, BAD_REQUEST_WARNING_PERIOD),
);

/// Warnings about bad requests logged per period before the rest are counted.
pub const BAD_REQUEST_WARNING_BURST: u32 = 5;
/// The period of [`BAD_REQUEST_WARNING_BURST`], and how often the count of
/// suppressed warnings is logged while a flood goes on.
pub const BAD_REQUEST_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// Whether to log a warning about a bad request now; `text` is what it
/// says, kept for the summary when it is suppressed. The first suppressed
/// one schedules the summary line at the end of the period.
fn bad_request_verdict(text: impl FnOnce() -> String) -> Verdict {
    let lock = || {
        BAD_REQUEST_WARNINGS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    let verdict = lock().check(std::time::Instant::now(), text);
    let due = lock().summary_due();
    if let (Verdict::SuppressFirst, Some(due), Ok(rt)) =
        (verdict, due, tokio::runtime::Handle::try_current())
    {
        rt.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let summary = lock().take_summary(std::time::Instant::now());
            if let Some(s) = summary {
                tracing::warn!(
                    suppressed = s.count,
                    period_s = s.period.as_secs(),
                    "suppressed {} warnings about bad requests in the last {} s (each got its error response); the last: {}",
                    s.count,
                    s.period.as_secs(),
                    s.last
                );
            }
        });
    }
    verdict
}

/// Logged after the last warning a period allows.
fn say_bad_request_warnings_are_suppressed() {
    tracing::warn!(
        period_s = BAD_REQUEST_WARNING_PERIOD.as_secs(),
        "bad requests keep coming: further warnings about them are suppressed for up to {} s and counted (each still gets its error response)",
        BAD_REQUEST_WARNING_PERIOD.as_secs()
    );
}

/// `{"id": actuator, "cmd": command, "options": {...}}`
fn actuator_params(
    params: &Json,
) -> Result<(String, String, serde_json::Map<String, Json>), RpcError> {
    let p = params_object(params)?;
    let id = p
        .get("id")
        .and_then(Json::as_str)
        .ok_or_else(|| RpcError::invalid_params("\"params.id\" (the actuator id) is required"))?;
    let cmd = p
        .get("cmd")
        .and_then(Json::as_str)
        .ok_or_else(|| RpcError::invalid_params("\"params.cmd\" is required"))?;
    let options = match p.get("options") {
        None | Some(Json::Null) => serde_json::Map::new(),
        Some(Json::Object(o)) => o.clone(),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "\"params.options\" must be an object",
            ))
        }
    };
    Ok((id.to_string(), cmd.to_string(), options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ActuatorConfig, ActuatorDriver, ActuatorType, OnShutdown};
    use serde_json::json;

    /// The system clock, never synchronised by NTP: `timeSync` is checked
    /// only against the plausible window, whatever this machine's state.
    struct Unsynchronised;

    impl clock::TimeSource for Unsynchronised {
        fn realtime_ms(&self) -> i64 {
            clock::system_now_ms()
        }
        fn boottime_ms(&self) -> i64 {
            clock::SystemSource.boottime_ms()
        }
        fn synchronized(&self) -> bool {
            false
        }
    }

    fn dispatcher(
        dir: &std::path::Path,
    ) -> (
        Dispatcher,
        watch::Receiver<Duration>,
        mpsc::UnboundedReceiver<SystemAction>,
    ) {
        let led = dir.join("led");
        std::fs::create_dir_all(&led).unwrap();
        for f in ["brightness", "trigger", "delay_on", "delay_off"] {
            std::fs::write(led.join(f), "0").unwrap();
        }
        std::fs::write(led.join("max_brightness"), "255").unwrap();
        let acts = Actuators::new(&[ActuatorConfig {
            id: "led0".into(),
            actuator_type: ActuatorType::Led,
            driver: ActuatorDriver::Led { path: led },
            on_shutdown: OnShutdown::Leave,
            thingplus_type: "led".into(),
        }]);
        let (tx, rx) = watch::channel(Duration::from_secs(60));
        let (atx, arx) = mpsc::unbounded_channel();
        let rpc = RpcConfig {
            allow_reboot: false,
            allow_poweroff: false,
            allow_restart: true,
            sw_update_command: None,
            reboot_command: vec!["true".into()],
            poweroff_command: vec!["true".into()],
            set_system_clock: false,
        };
        (
            Dispatcher::new(
                Arc::new(Clock::with_source(Box::new(Unsynchronised))),
                acts,
                StateFile::new(dir),
                tx,
                rpc,
                atx,
                Default::default(),
            ),
            rx,
            arx,
        )
    }

    fn call(d: &mut Dispatcher, req: &str) -> Json {
        match d.handle(req.as_bytes()) {
            Response::Now(b) => serde_json::from_slice(&b).unwrap(),
            Response::Later(_) => panic!("expected an immediate answer"),
        }
    }

    #[tokio::test]
    async fn set_property_applies_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let (mut d, rx, _) = dispatcher(dir.path());
        let r = call(
            &mut d,
            r#"{"id":"1","method":"setProperty","params":{"reportInterval":"120000"}}"#,
        );
        assert_eq!(r, json!({"id":"1","result":""}));
        assert_eq!(*rx.borrow(), Duration::from_secs(120));
        assert_eq!(
            StateFile::new(dir.path()).load().report_interval_ms,
            Some(120_000)
        );
        for bad in [r#""abc""#, "-5", "0", "[1]"] {
            let r = call(
                &mut d,
                &format!(
                    r#"{{"id":"2","method":"setProperty","params":{{"reportInterval":{bad}}}}}"#
                ),
            );
            assert_eq!(r["error"]["code"], json!(-32602), "{bad}: {r}");
        }
        assert_eq!(*rx.borrow(), Duration::from_secs(120));
    }

    fn report_after(cmd: &[&str]) -> SwUpdateReport {
        let cell: SwUpdateCell = Arc::new(std::sync::Mutex::new(Some(SwUpdateReport::started(
            cmd.iter().map(|s| s.to_string()).collect(),
            1,
        ))));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Bounded, so that a hang fails the test instead of stalling it.
            tokio::time::timeout(
                Duration::from_secs(30),
                run_sw_update(
                    cmd.iter().map(|s| s.to_string()).collect(),
                    cell.clone(),
                    None,
                ),
            )
            .await
            .expect("the update's outcome within 30 s")
        });
        let r = cell.lock().unwrap().clone().unwrap();
        assert!(!r.running && r.finished_ms.is_some(), "{r:?}");
        r
    }

    #[test]
    fn sw_update_outcomes() {
        let r = report_after(&["/bin/sh", "-c", "echo one; echo two >&2; exit 0"]);
        assert_eq!((r.success, r.exit_code), (Some(true), Some(0)));
        assert_eq!(r.outcome.as_deref(), Some("exit status 0"));
        assert!(
            r.output_tail.contains("one\n") && r.output_tail.contains("two\n"),
            "{r:?}"
        );

        let r = report_after(&["/bin/sh", "-c", "echo E: broken >&2; exit 3"]);
        assert_eq!((r.success, r.exit_code), (Some(false), Some(3)));
        assert_eq!(r.output_tail, "E: broken\n");

        let r = report_after(&["/bin/sh", "-c", "kill -9 $$"]);
        assert_eq!((r.success, r.exit_code), (Some(false), None));
        assert_eq!(r.outcome.as_deref(), Some("killed by signal 9"));

        let r = report_after(&["/nonexistent/update"]);
        assert_eq!(r.success, Some(false));
        assert!(
            r.outcome
                .as_deref()
                .unwrap()
                .starts_with("cannot run /nonexistent/update"),
            "{r:?}"
        );

        // A long output keeps its end only.
        let r = report_after(&[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done",
        ]);
        assert!(r.output_tail.len() <= SW_UPDATE_TAIL_BYTES);
        assert!(r.output_tail.ends_with("line 1999\n"), "{}", r.output_tail);
    }

    #[test]
    fn sw_update_ends_when_the_command_exits_though_a_background_child_holds_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 1000 & echo $! > {}; echo started the service; exit 0",
            pid_file.display()
        );
        // The left-behind `sleep` still holds the pipe: ended however the
        // test ends.
        struct KillOnDrop(std::path::PathBuf);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let pid = std::fs::read_to_string(&self.0).unwrap_or_default();
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: a signal to the process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _sleep = KillOnDrop(pid_file.clone());
        let r = report_after(&["/bin/sh", "-c", &script]);
        assert_eq!((r.success, r.exit_code), (Some(true), Some(0)), "{r:?}");
        assert_eq!(r.output_tail, "started the service\n");
    }

    #[tokio::test]
    async fn the_last_sw_update_is_kept_across_a_restart_and_a_running_one_is_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join(SW_UPDATE_FILE);
        assert!(load_sw_update(dir.path()).lock().unwrap().is_none());
        // Through the dispatcher: recorded at the start...
        let (mut d, _, _) = dispatcher(dir.path());
        d.state_file = StateFile::new(dir.path());
        d.rpc.sw_update_command = Some(vec!["/bin/sh".into(), "-c".into(), "exit 1".into()]);
        let r = call(&mut d, r#"{"id":"1","method":"swUpdate"}"#);
        assert_eq!(r["result"], json!("started"), "{r}");
        // (The update's task has not run yet: this test's runtime has one thread.)
        let started: SwUpdateReport =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        assert!(started.running, "{started:?}");
        // ...and at the end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let finished = loop {
            let r: SwUpdateReport =
                serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
            if !r.running {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never recorded as finished"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            finished.outcome.as_deref(),
            Some("exit status 1"),
            "{finished:?}"
        );
        // The next run of the daemon shows it as it was.
        let loaded = load_sw_update(dir.path()).lock().unwrap().clone().unwrap();
        assert_eq!(loaded, finished);
        // One recorded as running by a run that ended before it did.
        save_sw_update(&record, &started);
        let loaded = load_sw_update(dir.path()).lock().unwrap().clone().unwrap();
        assert!(!loaded.running, "{loaded:?}");
        assert_eq!(loaded.success, Some(false));
        assert_eq!(loaded.outcome.as_deref(), Some(SW_UPDATE_INTERRUPTED));
        assert_eq!(loaded.started_ms, started.started_ms);
        // Saved so: the run after that says the same.
        let again: SwUpdateReport =
            serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        assert_eq!(again, loaded);
    }

    #[test]
    fn output_tail_is_bounded_and_starts_at_a_line() {
        let mut long = Vec::new();
        for i in 0..1000 {
            long.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        let kept = &long[long.len() - SW_UPDATE_TAIL_BYTES..];
        let t = tail_text(kept);
        assert!(t.len() <= SW_UPDATE_TAIL_BYTES);
        assert!(t.starts_with("line ") && t.ends_with("line 999\n"), "{t}");
        assert_eq!(tail_text(b"short\n"), "short\n");
        assert_eq!(last_lines("a\nb\n\nc\nd\n", 2), "c | d");
    }

    #[tokio::test]
    async fn unknown_and_disabled_methods() {
        let dir = tempfile::tempdir().unwrap();
        let (mut d, _, mut actions) = dispatcher(dir.path());
        let r = call(&mut d, r#"{"id":"1","method":"fly"}"#);
        assert_eq!(r["error"]["code"], json!(-32601));
        let r = call(&mut d, r#"{"id":"2","method":"reboot"}"#);
        assert_eq!(r["error"]["code"], json!(-32601));
        assert!(r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_reboot"));
        let r = call(&mut d, r#"{"id":"3","method":"restart"}"#);
        assert_eq!(r["result"], json!(""));
        assert_eq!(actions.try_recv().unwrap(), SystemAction::Restart);
        let r = call(&mut d, r#"{"id":"4","method":"swUpdate"}"#);
        assert_eq!(r["error"]["code"], json!(-32601));
    }

    #[tokio::test]
    async fn led_commands() {
        let dir = tempfile::tempdir().unwrap();
        let (mut d, _, _) = dispatcher(dir.path());
        let led = dir.path().join("led");
        let read = |f: &str| std::fs::read_to_string(led.join(f)).unwrap();
        let r = call(
            &mut d,
            r#"{"id":"1","method":"controlActuator","params":{"id":"led0","cmd":"on"}}"#,
        );
        assert_eq!(r["result"], json!(""));
        assert_eq!(read("brightness"), "255");
        let r = call(
            &mut d,
            r#"{"id":"2","method":"controlActuator","params":{"id":"led0","cmd":"blink","options":{"interval":200}}}"#,
        );
        assert_eq!(r["result"], json!(""));
        assert_eq!(read("trigger"), "timer");
        assert_eq!(read("delay_on"), "200");
        let r = call(
            &mut d,
            r#"{"id":"3","method":"controlActuator","params":{"id":"nope","cmd":"on"}}"#,
        );
        assert_eq!(r["error"]["code"], json!(-32602));
        let r = call(
            &mut d,
            r#"{"id":"4","method":"controlActuator","params":{"id":"led0","cmd":"dance"}}"#,
        );
        assert_eq!(r["error"]["code"], json!(-32602));
        let r = call(
            &mut d,
            r#"{"id":"5","method":"controlActuator","params":{"id":"led0"}}"#,
        );
        assert_eq!(r["error"]["code"], json!(-32602));
    }

    #[tokio::test]
    async fn time_sync_sets_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut d, _, _) = dispatcher(dir.path());
        let target = clock::system_now_ms() + 3_600_000;
        let r = call(
            &mut d,
            &format!(r#"{{"id":"1","method":"timeSync","params":{{"time":{target}}}}}"#),
        );
        assert_eq!(r["result"], json!(""));
        assert!((d.clock.offset_ms() - 3_600_000).abs() < 1000);
        let r = call(&mut d, r#"{"id":"2","method":"timeSync","params":{}}"#);
        assert_eq!(r["error"]["code"], json!(-32602));
        // Not a whole number of ms that a time can be: invalid params.
        for bad in ["1e300", "9223372036854775807", "1.5", "\"x\"", "-1"] {
            let r = call(
                &mut d,
                &format!(r#"{{"id":"b","method":"timeSync","params":{{"time":{bad}}}}}"#),
            );
            assert_eq!(r["error"]["code"], json!(-32602), "{bad}: {r}");
        }
        // A whole number, but not a time to believe: refused, offset kept.
        let r = call(
            &mut d,
            r#"{"id":"3","method":"timeSync","params":{"time":7258118400000}}"#,
        );
        assert_eq!(r["error"]["code"], json!(-32000), "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("outside the plausible window"),
            "{r}"
        );
        assert!((d.clock.offset_ms() - 3_600_000).abs() < 1000);
    }

    #[tokio::test]
    async fn garbage_gets_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut d, _, _) = dispatcher(dir.path());
        let r = call(&mut d, "\u{1}\u{2}garbage");
        assert_eq!(r["error"]["code"], json!(-32700));
        assert_eq!(r["id"], Json::Null);
    }

    /// The commands task answers each request once, in the order sent,
    /// and ends when the session's end of the channel goes.
    #[tokio::test]
    async fn the_commands_task_answers_in_order_on_one_channel() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _, _) = dispatcher(dir.path());
        let (req_tx, req_rx) = mpsc::channel(4);
        let (ans_tx, mut ans_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(d.serve(req_rx, ans_tx));
        for r in [
            r#"{"id":"1","method":"swInfo"}"#,
            "garbage",
            r#"{"id":"3","method":"nope"}"#,
        ] {
            req_tx.send(r.as_bytes().to_vec()).await.unwrap();
        }
        let mut ids = Vec::new();
        for _ in 0..3 {
            match ans_rx.recv().await.unwrap() {
                Answer::Now(b) => {
                    let v: Json = serde_json::from_slice(&b).unwrap();
                    ids.push(v["id"].clone());
                }
                other => panic!("expected an immediate answer, got {other:?}"),
            }
        }
        assert_eq!(ids, [json!("1"), Json::Null, json!("3")]);
        drop(req_tx);
        task.await.unwrap();
        assert!(ans_rx.recv().await.is_none(), "one answer per request");
    }
}
