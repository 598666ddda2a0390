//! `exec` actuators: a configured program, run without a shell as
//! `command... <cmd> <options as JSON>`, bounded by a timeout.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::thingplus::rpc::RpcError;

/// Output kept for logs and replies.
const MAX_OUTPUT: usize = 4096;

fn clip(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]);
    s.trim().to_string()
}

/// Runs the program; its exit status becomes the reply.
pub async fn run(
    actuator_id: &str,
    command: &[String],
    timeout: Duration,
    cmd: &str,
    options: &Map<String, Json>,
) -> Result<Json, RpcError> {
    let options = Json::Object(options.clone()).to_string();
    let child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .arg(cmd)
        .arg(&options)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A newer command or a timeout drops the future: the program goes with it.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| RpcError::server(format!("cannot run {}: {e}", command[0])))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(RpcError::server(format!("{} failed: {e}", command[0]))),
        Err(_) => {
            tracing::warn!(actuator_id, command = %command[0], cmd, "actuator program timed out and was killed: {actuator_id} ({} {cmd})", command[0]);
            return Err(RpcError::server(format!(
                "{} did not finish within {} s and was killed",
                command[0],
                timeout.as_secs_f64()
            )));
        }
    };
    let stdout = clip(&out.stdout);
    let stderr = clip(&out.stderr);
    if out.status.success() {
        tracing::info!(actuator_id, cmd, stdout = %stdout, stderr = %stderr, "actuator program succeeded: {actuator_id} ({} {cmd})", command[0]);
        Ok(Json::String(String::new()))
    } else {
        tracing::warn!(actuator_id, cmd, status = %out.status, stdout = %stdout, stderr = %stderr, "actuator program failed: {actuator_id} ({} {cmd}) {}: {}", command[0], out.status, stderr.lines().next().unwrap_or(""));
        let detail = stderr.lines().next().unwrap_or("").to_string();
        Err(RpcError::server(format!(
            "{} exited with {}{}",
            command[0],
            out.status,
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        )))
    }
}
