//! Serial line sensors: a named port (`[serial.NAME]`) prints lines; each
//! line becomes a record of fields (NMEA, CSV, JSON or regex); each sensor
//! of the port reports one field.
//!
//! One task per port owns the device. It reads through a bounded line
//! splitter (a device that never sends a newline cannot grow memory),
//! counts and rate-limits every kind of bad input, and when the device goes
//! away (missing at start, unplugged later: reads return `Ok(0)` or fail)
//! puts the port's sensors in `err` and reopens it with backoff.
//!
//! Streaming ports: series sensors take the newest value of their field
//! once per `interval` (default: the report interval); event sensors take
//! every value as it comes (only changes are sent). A series sensor whose
//! field has not come for three intervals goes `err` (an event sensor only
//! if it sets `interval`: event devices may print only on change); one
//! whose field the device says has no value (an NMEA sentence without a fix)
//! goes `err` at its next sample. Request ports (`request = ...`): the
//! request is written every port `interval`, and each reply line is a sample
//! of the sensors whose fields it names (a reply may span several lines); no
//! reply within `reply_timeout` is an error for all of them, and a field no
//! line of a reply named is an error for its sensor.

pub mod csv;
pub mod json;
pub mod nmea;
pub mod regex;
mod termios;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};

use crate::backoff::Backoff;
use crate::config::{
    FlowControl, LineSettings, Parity, SensorConfig, SensorSource, SerialFormat, SerialPortConfig,
    ValueType,
};
use crate::reading::Value;
use crate::sensor::file::{number_value, parse as parse_text};
use crate::sensor::{Sampler, SensorRuntime};
use crate::units::format_duration;

// ---------------------------------------------------------------- records

/// The fields one line gave. A field set to `None` is one the line speaks
/// of but has no value for (an NMEA sentence without a fix has no location).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    fields: Vec<(String, Option<J>)>,
    object: Option<serde_json::Map<String, J>>,
}

/// What a record says about one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<'a> {
    /// The record does not speak of the field.
    Absent,
    /// The record says the field has no value now.
    NoValue,
    Value(&'a J),
}

impl Record {
    pub fn set(&mut self, field: &str, value: Option<J>) {
        match self.fields.iter_mut().find(|(f, _)| f == field) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((field.to_string(), value)),
        }
    }

    /// A record over a JSON object, looked up by key or dotted path.
    pub fn from_object(map: serde_json::Map<String, J>) -> Record {
        Record {
            fields: Vec::new(),
            object: Some(map),
        }
    }

    pub fn get(&self, field: &str) -> Lookup<'_> {
        let found = match &self.object {
            Some(obj) => json::lookup(obj, field).map(Some),
            None => self
                .fields
                .iter()
                .find(|(f, _)| f == field)
                .map(|(_, v)| v.as_ref()),
        };
        match found {
            None => Lookup::Absent,
            Some(None) | Some(Some(J::Null)) => Lookup::NoValue,
            Some(Some(v)) => Lookup::Value(v),
        }
    }
}

/// Kinds of trouble a port or bus counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A line that is not what the format expects (or not text at all).
    Malformed,
    /// An NMEA sentence whose checksum does not match.
    BadChecksum,
    /// A line longer than `max_line`, dropped whole.
    Overlong,
    /// No reply to a request within `reply_timeout`.
    NoReply,
    /// A Modbus exception reply.
    Exception,
    /// A Modbus request without a reply in time.
    Timeout,
    /// A read or write on the device failed (Modbus transport errors too).
    Io,
}

const KINDS: [ProblemKind; 7] = [
    ProblemKind::Malformed,
    ProblemKind::BadChecksum,
    ProblemKind::Overlong,
    ProblemKind::NoReply,
    ProblemKind::Exception,
    ProblemKind::Timeout,
    ProblemKind::Io,
];

impl ProblemKind {
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Malformed => "malformed line",
            ProblemKind::BadChecksum => "bad checksum",
            ProblemKind::Overlong => "overlong line",
            ProblemKind::NoReply => "no reply",
            ProblemKind::Exception => "Modbus exception",
            ProblemKind::Timeout => "timeout",
            ProblemKind::Io => "I/O error",
        }
    }
    fn index(self) -> usize {
        KINDS.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Why a line was not used.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub kind: ProblemKind,
    pub detail: String,
}

impl ParseError {
    pub fn malformed(detail: impl Into<String>) -> Self {
        ParseError {
            kind: ProblemKind::Malformed,
            detail: detail.into(),
        }
    }
    pub fn checksum(detail: impl Into<String>) -> Self {
        ParseError {
            kind: ProblemKind::BadChecksum,
            detail: detail.into(),
        }
    }
}

/// Parses one line (without its terminator) in a port's format.
/// `Ok(None)`: a valid line that carries nothing (another NMEA sentence, a
/// CSV header).
pub fn parse_line(format: &SerialFormat, line: &[u8]) -> Result<Option<Record>, ParseError> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(ParseError::malformed("binary data, not text"));
    };
    match format {
        SerialFormat::Nmea => nmea::parse(text),
        SerialFormat::Csv { columns, delimiter } => csv::parse(text, columns, *delimiter),
        SerialFormat::Json => json::parse(text),
        SerialFormat::Regex(re) => regex::parse(text, re),
    }
}

/// A field's JSON value as a sensor value: numbers get `scale`/`offset`
/// (and rounding for integer types); numeric text is parsed first; objects
/// and arrays (a location) pass through as they are.
pub fn field_value(v: &J, cfg: &SensorConfig) -> Result<Value, String> {
    match v {
        J::Number(n) => number_value(
            n.as_f64().unwrap_or(f64::NAN),
            cfg.value_type,
            cfg.scale,
            cfg.offset,
        ),
        J::String(s) => parse_text(s, None, cfg.value_type, cfg.scale, cfg.offset),
        J::Bool(b) => match cfg.value_type {
            ValueType::Text => Ok(Value::Text(b.to_string())),
            _ => number_value(f64::from(u8::from(*b)), cfg.value_type, 1.0, 0.0),
        },
        J::Object(_) | J::Array(_) => Ok(Value::Json(v.clone())),
        J::Null => Err("no value".into()),
    }
}

// ---------------------------------------------------------------- lines

/// What the line splitter found.
#[derive(Debug, Clone, PartialEq)]
pub enum LineEvent {
    Line(Vec<u8>),
    /// A line grew past the limit: it is dropped up to its end.
    Overlong,
}

/// Splits a byte stream into lines ended by `\n` or `\r` (so `\r\n` works
/// too; empty lines are skipped), keeping at most `max` bytes of a line.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::with_capacity(max.min(4096) + 1),
            max,
            discarding: false,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) -> Vec<LineEvent> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let end = data.iter().position(|b| *b == b'\n' || *b == b'\r');
            let (chunk, rest, ended) = match end {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            data = rest;
            if !self.discarding {
                let room = self.max + 1 - self.buf.len();
                self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if self.buf.len() > self.max {
                    self.buf.clear();
                    self.discarding = true;
                    out.push(LineEvent::Overlong);
                }
            }
            if ended {
                if self.discarding {
                    self.discarding = false;
                } else if !self.buf.is_empty() {
                    out.push(LineEvent::Line(std::mem::take(&mut self.buf)));
                    self.buf.reserve(self.max.min(4096) + 1);
                }
            }
        }
        out
    }

    /// Bytes held for the current line (memory bound checks).
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets a partial line (the device went away).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }
}

// ---------------------------------------------------------------- counters and logs

/// What a port or bus has seen since start. Shared with whoever wants to show it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Times the device was opened.
    pub opened: AtomicU64,
    /// Times an open device was lost (closed by the far end, read errors).
    pub lost: AtomicU64,
    /// Lines (or Modbus replies) that gave values.
    pub records: AtomicU64,
    problems: [AtomicU64; KINDS.len()],
}

impl Counters {
    pub fn problems(&self, kind: ProblemKind) -> u64 {
        self.problems[kind.index()].load(Ordering::Relaxed)
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts problems and logs them at most once per period per port, so that
/// a babbling device cannot flood the journal.
pub(crate) struct ProblemLog {
    label: String,
    counters: Arc<Counters>,
    period: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl ProblemLog {
    pub(crate) fn new(label: String, counters: Arc<Counters>) -> Self {
        ProblemLog {
            label,
            counters,
            period: Duration::from_secs(60),
            last_log: None,
            suppressed: 0,
        }
    }

    pub(crate) fn note(&mut self, kind: ProblemKind, detail: &str) {
        Counters::bump(&self.counters.problems[kind.index()]);
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.suppressed += 1;
            return;
        }
        let totals: Vec<String> = KINDS
            .iter()
            .filter(|k| self.counters.problems(**k) > 0)
            .map(|k| format!("{} {}", self.counters.problems(*k), k.name()))
            .collect();
        tracing::warn!(
            port = %self.label,
            problem = kind.name(),
            detail,
            suppressed = self.suppressed,
            totals = %totals.join(", "),
            "bad input from {}; ignored (logged at most once a minute)",
            self.label
        );
        self.suppressed = 0;
        self.last_log = Some(now);
    }
}

/// An open serial device. Dropping it gives up the exclusive claim first,
/// so the next open (ours after a replug, or an operator's) is not refused.
pub(crate) struct Device(SerialStream);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.set_exclusive(false);
    }
}

impl AsyncRead for Device {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Device {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Device {
    /// Drops whatever the device sent before now (a late reply).
    pub(crate) fn discard_input(&self) {
        let _ = self.0.clear(tokio_serial::ClearBuffer::Input);
    }
}

/// Opens a serial device with its line settings, exclusively.
pub(crate) fn open_device(device: &Path, line: &LineSettings) -> Result<Device, String> {
    if !device.exists() {
        return Err(format!(
            "cannot open {}: no such device (unplugged?)",
            device.display()
        ));
    }
    let builder = tokio_serial::new(device.to_string_lossy(), line.baud)
        .data_bits(match line.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if line.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match line.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        });
    if !CLASSIC_TERMIOS.load(Ordering::Relaxed) {
        match SerialStream::open(&builder) {
            Ok(s) => return Ok(Device(s)),
            Err(e) if !termios::lacks_termios2(device) => {
                return Err(format!("cannot open {}: {e}", device.display()));
            }
            Err(e) => {
                CLASSIC_TERMIOS.store(true, Ordering::Relaxed);
                tracing::info!(
                    device = %device.display(),
                    "serial: {} does not support termios2 ({e}): opening serial devices \
                     through classic termios from now on (standard baud rates only)",
                    device.display()
                );
            }
        }
    }
    open_classic(device, line)
        .map(Device)
        .map_err(|e| format!("cannot open {}: {e}", device.display()))
}

/// Set once a terminal turned out to lack termios2 (qemu-user, some
/// kernels): every later open goes straight to classic termios.
static CLASSIC_TERMIOS: AtomicBool = AtomicBool::new(false);

fn open_classic(device: &Path, line: &LineSettings) -> std::io::Result<SerialStream> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = termios::open_classic(device, line)?;
    // SAFETY: the descriptor is open and handed over; from_raw_fd takes the
    // flock and TIOCEXCL this descriptor already holds.
    let port = unsafe { serialport::TTYPort::from_raw_fd(fd.into_raw_fd()) };
    SerialStream::try_from(port).map_err(std::io::Error::from)
}

/// A short, printable piece of a bad line for logs.
pub(crate) fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(60)]);
    let mut e: String = s.chars().filter(|c| !c.is_control()).take(60).collect();
    if line.len() > 60 {
        e.push('…');
    }
    format!("{e:?}")
}

// ---------------------------------------------------------------- the port task

struct Slot {
    cfg: SensorConfig,
    field: String,
    sampler: Sampler,
    /// Newest value (or conversion error) not yet taken (series sensors).
    pending: Option<Result<Value, String>>,
    /// The newest record naming the field said it has no value.
    cleared: bool,
    next_due: Instant,
    /// When the field last came (or the port was opened).
    fresh_at: Instant,
    /// A reply to the current request named the field (request ports).
    replied: bool,
}

struct PortTask {
    port: SerialPortConfig,
    slots: Vec<Slot>,
    rt: SensorRuntime,
    counters: Arc<Counters>,
    log: ProblemLog,
    label: String,
    report_interval_open: bool,
}

/// Starts the task of one serial port and its sensors (those whose source
/// names the port; others are ignored). The counters show what it has seen.
pub fn spawn_port(
    port: SerialPortConfig,
    sensors: Vec<SensorConfig>,
    rt: SensorRuntime,
) -> (JoinHandle<()>, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let label = format!("serial port \"{}\" ({})", port.name, port.device.display());
    let now = Instant::now();
    let slots = sensors
        .into_iter()
        .filter_map(|cfg| match &cfg.source {
            SensorSource::Serial { port: p, field } if *p == port.name => Some(Slot {
                field: field.clone(),
                sampler: Sampler::new(cfg.id.as_str().into(), cfg.event),
                cfg,
                pending: None,
                cleared: false,
                next_due: now,
                fresh_at: now,
                replied: false,
            }),
            _ => None,
        })
        .collect();
    let task = PortTask {
        log: ProblemLog::new(label.clone(), counters.clone()),
        port,
        slots,
        rt,
        counters: counters.clone(),
        label,
        report_interval_open: true,
    };
    (tokio::spawn(task.run()), counters)
}

impl PortTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.port.reopen_min, self.port.reopen_max);
        loop {
            match open_device(&self.port.device, &self.port.line) {
                Err(e) => self.fail_all(&e),
                Ok(stream) => {
                    Counters::bump(&self.counters.opened);
                    tracing::info!(port = %self.label, line = %self.port.line, "serial port opened: {} ({})", self.label, self.port.line);
                    let (reason, got_data) = self.session(stream).await;
                    Counters::bump(&self.counters.lost);
                    tracing::warn!(port = %self.label, reason = %reason, "serial port lost: {}: {reason}; reopening it with backoff", self.label);
                    self.fail_all(&reason);
                    if got_data {
                        backoff.reset();
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn fail_all(&mut self, reason: &str) {
        let msg = format!("{}: {reason}", self.label);
        for s in &mut self.slots {
            s.pending = None;
            s.sampler.take(Err(msg.clone()), &self.rt);
        }
    }

    fn interval_of(&self, cfg: &SensorConfig) -> Duration {
        cfg.interval
            .unwrap_or_else(|| *self.rt.report_interval.borrow())
    }

    /// Reads the open device until it goes away; returns why, and whether it
    /// gave any good line.
    async fn session(&mut self, stream: Device) -> (String, bool) {
        let polled = self.port.request.is_some();
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let iv = self.interval_of(&self.slots[i].cfg);
            let s = &mut self.slots[i];
            s.next_due = now + iv;
            s.fresh_at = now;
            s.cleared = false;
            s.pending = None;
        }
        let request_period = |me: &Self| {
            me.port
                .interval
                .unwrap_or_else(|| *me.rt.report_interval.borrow())
        };
        let mut next_request = polled.then_some(now);
        let mut deadline: Option<Instant> = None;
        let mut splitter = LineSplitter::new(self.port.max_line);
        let mut got_data = false;
        // A line answered the current request.
        let mut answered = false;
        let mut buf = vec![0u8; 4096];
        let (mut rd, mut wr) = tokio::io::split(stream);
        let far = now + Duration::from_secs(86400 * 365);

        let reason = loop {
            let next_tick = if polled {
                None
            } else {
                self.slots.iter().map(|s| s.next_due).min()
            };
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) => break "the device closed (unplugged?)".to_string(),
                    Ok(n) => {
                        for ev in splitter.push(&buf[..n]) {
                            match ev {
                                LineEvent::Line(l) => {
                                    if self.on_line(&l, polled) {
                                        got_data = true;
                                        answered = true;
                                        deadline = None;
                                    }
                                }
                                LineEvent::Overlong => self.log.note(
                                    ProblemKind::Overlong,
                                    &format!("a line longer than max_line ({} bytes) was dropped", self.port.max_line),
                                ),
                            }
                        }
                    }
                    Err(e) => {
                        self.log.note(ProblemKind::Io, &e.to_string());
                        break format!("read failed: {e}");
                    }
                },
                _ = tokio::time::sleep_until(next_tick.unwrap_or(far)), if next_tick.is_some() => {
                    self.tick(Instant::now());
                }
                _ = tokio::time::sleep_until(next_request.unwrap_or(far)), if next_request.is_some() => {
                    let now = Instant::now();
                    let period = request_period(self);
                    let due = next_request.unwrap_or(now) + period;
                    next_request = Some(if due <= now { now + period } else { due });
                    if deadline.is_some() {
                        continue; // the previous request is still waiting for its reply
                    }
                    if answered {
                        // Replies may span several lines; a field none of them named is an error.
                        for s in &mut self.slots {
                            if !s.replied {
                                s.sampler.take(
                                    Err(format!("{}: the reply has no field \"{}\"", self.label, s.field)),
                                    &self.rt,
                                );
                            }
                        }
                    }
                    answered = false;
                    for s in &mut self.slots {
                        s.replied = false;
                    }
                    let req = self.port.request.clone().unwrap_or_default();
                    match tokio::time::timeout(self.port.reply_timeout, async {
                        wr.write_all(&req).await?;
                        wr.flush().await
                    })
                    .await
                    {
                        Ok(Ok(())) => deadline = Some(Instant::now() + self.port.reply_timeout),
                        Ok(Err(e)) => {
                            self.log.note(ProblemKind::Io, &e.to_string());
                            break format!("cannot write the request: {e}");
                        }
                        Err(_) => {
                            self.log.note(ProblemKind::Io, "request write timed out");
                            break format!(
                                "writing the request took longer than {} (flow control?)",
                                format_duration(self.port.reply_timeout)
                            );
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    deadline = None;
                    let t = format_duration(self.port.reply_timeout);
                    self.log.note(ProblemKind::NoReply, &format!("no reply within {t}"));
                    self.fail_all(&format!("no reply to the request within {t}"));
                }
                changed = self.rt.report_interval.changed(), if self.report_interval_open => {
                    if changed.is_err() {
                        self.report_interval_open = false;
                        continue;
                    }
                    let now = Instant::now();
                    let ri = *self.rt.report_interval.borrow_and_update();
                    for s in &mut self.slots {
                        if s.cfg.interval.is_none() {
                            s.next_due = now + ri;
                        }
                    }
                    if polled && self.port.interval.is_none() {
                        next_request = Some(now + ri);
                    }
                }
            }
        };
        drop(rd.unsplit(wr));
        (reason, got_data)
    }

    /// Handles one line; true if it gave a record.
    fn on_line(&mut self, line: &[u8], polled: bool) -> bool {
        let record = match parse_line(&self.port.format, line) {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                self.log
                    .note(e.kind, &format!("{}: {}", e.detail, excerpt(line)));
                return false;
            }
        };
        Counters::bump(&self.counters.records);
        let now = Instant::now();
        let no_fix_hint = matches!(self.port.format, SerialFormat::Nmea);
        for s in &mut self.slots {
            let looked = record.get(&s.field);
            if polled {
                let r = match looked {
                    Lookup::Value(v) => field_value(v, &s.cfg)
                        .map_err(|e| format!("{}: field \"{}\": {e}", self.label, s.field)),
                    Lookup::NoValue => Err(format!(
                        "{}: the reply gives no value for \"{}\"",
                        self.label, s.field
                    )),
                    // Perhaps on another line of the reply: checked at the next request.
                    Lookup::Absent => continue,
                };
                s.replied = true;
                s.sampler.take(r, &self.rt);
                continue;
            }
            match looked {
                Lookup::Absent => {}
                Lookup::NoValue => {
                    s.pending = None;
                    s.cleared = true;
                    if s.cfg.event {
                        s.sampler.take(
                            Err(no_value_msg(&self.label, &s.field, no_fix_hint)),
                            &self.rt,
                        );
                    }
                }
                Lookup::Value(v) => {
                    let r = field_value(v, &s.cfg)
                        .map_err(|e| format!("{}: field \"{}\": {e}", self.label, s.field));
                    s.cleared = false;
                    if s.cfg.event {
                        s.fresh_at = now;
                        s.sampler.take(r, &self.rt);
                    } else {
                        s.pending = Some(r);
                    }
                }
            }
        }
        true
    }

    /// Samples the series sensors that are due; flags silent fields.
    fn tick(&mut self, now: Instant) {
        let ri = *self.rt.report_interval.borrow();
        let no_fix_hint = matches!(self.port.format, SerialFormat::Nmea);
        for s in &mut self.slots {
            if s.next_due > now {
                continue;
            }
            let iv = s.cfg.interval.unwrap_or(ri);
            let due = s.next_due + iv;
            s.next_due = if due <= now { now + iv } else { due };
            let stale_after = iv * 3;
            if let Some(r) = s.pending.take() {
                s.fresh_at = now;
                s.sampler.take(r, &self.rt);
            } else if s.cleared && !s.cfg.event {
                s.sampler.take(
                    Err(no_value_msg(&self.label, &s.field, no_fix_hint)),
                    &self.rt,
                );
            } else if now.duration_since(s.fresh_at) >= stale_after
                && !s.cleared
                // Event devices may print only on change: silence is an error
                // only when the sensor sets an interval.
                && (!s.cfg.event || s.cfg.interval.is_some())
            {
                s.sampler.take(
                    Err(format!(
                        "{}: no value for \"{}\" in {}",
                        self.label,
                        s.field,
                        format_duration(stale_after)
                    )),
                    &self.rt,
                );
            }
        }
    }
}

fn no_value_msg(label: &str, field: &str, nmea: bool) -> String {
    let hint = if nmea && matches!(field, "location" | "altitude" | "speed" | "course" | "hdop") {
        " (the receiver has no fix)"
    } else {
        ""
    };
    format!("{label}: the device reports no value for \"{field}\"{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ev: &[LineEvent]) -> Vec<String> {
        ev.iter()
            .map(|e| match e {
                LineEvent::Line(l) => String::from_utf8_lossy(l).into_owned(),
                LineEvent::Overlong => "<overlong>".into(),
            })
            .collect()
    }

    #[test]
    fn splits_on_any_line_end_across_chunks() {
        let mut s = LineSplitter::new(64);
        assert_eq!(lines(&s.push(b"ab")), Vec::<String>::new());
        assert_eq!(lines(&s.push(b"c\r\nde\nf\rg")), ["abc", "de", "f"]);
        assert_eq!(lines(&s.push(b"\n\n\n")), ["g"]);
    }

    #[test]
    fn overlong_lines_are_dropped_and_memory_stays_bounded() {
        let mut s = LineSplitter::new(100);
        let junk = vec![b'x'; 4096];
        let mut events = Vec::new();
        for _ in 0..256 {
            // 1 MiB without a newline.
            events.extend(s.push(&junk));
            assert!(s.held() <= 4096 + 1, "held {}", s.held());
        }
        assert_eq!(lines(&events), ["<overlong>"]);
        assert_eq!(lines(&s.push(b"tail\nok\n")), ["ok"]);
        // Exactly max fits.
        let mut s = LineSplitter::new(4);
        assert_eq!(lines(&s.push(b"1234\n12345\n")), ["1234", "<overlong>"]);
    }

    fn sensor(vt: ValueType, scale: f64) -> SensorConfig {
        SensorConfig {
            id: "s".into(),
            sensor_type: "number".into(),
            source: SensorSource::Serial {
                port: "p".into(),
                field: "f".into(),
            },
            value_type: vt,
            scale,
            offset: 0.0,
            interval: None,
            event: false,
        }
    }

    #[test]
    fn field_values_take_scale_and_types() {
        let n = sensor(ValueType::Number, 0.1);
        assert_eq!(field_value(&J::from(215), &n).unwrap(), Value::Number(21.5));
        assert_eq!(
            field_value(&J::from("215"), &n).unwrap(),
            Value::Number(21.5)
        );
        assert!(field_value(&J::from("x"), &n).is_err());
        let i = sensor(ValueType::Integer, 1.0);
        assert_eq!(field_value(&J::Bool(true), &i).unwrap(), Value::Number(1.0));
        let t = sensor(ValueType::Text, 1.0);
        assert_eq!(
            field_value(&J::from(" on "), &t).unwrap(),
            Value::Text("on".into())
        );
        let loc = serde_json::json!({"lat": 1.5, "lng": 2.5});
        assert_eq!(field_value(&loc, &n).unwrap(), Value::Json(loc.clone()));
    }

    proptest::proptest! {
        /// No input makes a parser panic, and the splitter never holds more
        /// than its limit however the bytes are cut.
        #[test]
        fn parsers_and_splitter_take_any_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
        ) {
            let formats = [
                SerialFormat::Nmea,
                SerialFormat::Csv { columns: vec!["a".into(), "b".into()], delimiter: ',' },
                SerialFormat::Json,
                SerialFormat::Regex(::regex::Regex::new(r"T=(?<t>-?[0-9.]+)").unwrap()),
            ];
            let mut splitter = LineSplitter::new(64);
            for c in &chunks {
                for f in &formats {
                    let _ = parse_line(f, c);
                }
                for ev in splitter.push(c) {
                    if let LineEvent::Line(l) = ev {
                        proptest::prop_assert!(l.len() <= 64);
                        proptest::prop_assert!(!l.contains(&b'\n') && !l.contains(&b'\r'));
                        for f in &formats {
                            let _ = parse_line(f, &l);
                        }
                    }
                }
                proptest::prop_assert!(splitter.held() <= 4096 + 1);
            }
        }

        /// Any well-formed GGA with a fix gives a location within range.
        #[test]
        fn gga_locations_are_in_range(lat in 0u32..9_000_000, lng in 0u32..18_000_000, s in proptest::bool::ANY, w in proptest::bool::ANY) {
            let lat_s = format!("{:02}{:07.4}", lat / 100_000, f64::from(lat % 100_000) * 60.0 / 100_000.0);
            let lng_s = format!("{:03}{:07.4}", lng / 100_000, f64::from(lng % 100_000) * 60.0 / 100_000.0);
            let body = format!(
                "GPGGA,120000,{lat_s},{},{lng_s},{},1,08,0.9,10.0,M,0.0,M,,",
                if s { "S" } else { "N" },
                if w { "W" } else { "E" }
            );
            let sum = body.bytes().fold(0u8, |a, b| a ^ b);
            let r = nmea::parse(&format!("${body}*{sum:02X}")).unwrap().unwrap();
            let Lookup::Value(loc) = r.get("location") else { panic!("no location in {body}") };
            let (la, ln) = (loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap());
            proptest::prop_assert!((-90.0..=90.0).contains(&la), "{}", body);
            proptest::prop_assert!((-180.0..=180.0).contains(&ln), "{}", body);
            proptest::prop_assert!((la.abs() - f64::from(lat) / 100_000.0).abs() < 1e-6, "{}", body);
        }
    }

    #[test]
    fn binary_noise_is_malformed() {
        let e = parse_line(&SerialFormat::Json, &[0xff, 0xfe, 0x00, b'{']).unwrap_err();
        assert_eq!(e.kind, ProblemKind::Malformed);
    }
}
