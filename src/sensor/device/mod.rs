//! Device plumbing shared by serial ports and Modbus buses: opening a
//! serial device with its line settings (exclusively, through classic
//! termios where termios2 is missing), and the counters and rate-limited
//! log of the problems a port or bus meets.

mod termios;

use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};

use crate::config::{FlowControl, LineSettings, Parity};

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
        self.note_at(kind, detail, Instant::now());
    }

    /// Counts a problem seen at `now`; logs it unless the period since the
    /// last log has not passed. True if it logged.
    fn note_at(&mut self, kind: ProblemKind, detail: &str, now: Instant) -> bool {
        Counters::bump(&self.counters.problems[kind.index()]);
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.suppressed += 1;
            return false;
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
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_counted_each_and_logged_at_most_once_a_period() {
        let counters = Arc::new(Counters::default());
        let mut log = ProblemLog::new("serial port \"p\" (/dev/x)".into(), counters.clone());
        let t0 = Instant::now();
        assert!(log.note_at(ProblemKind::Malformed, "a", t0));
        assert!(!log.note_at(ProblemKind::BadChecksum, "b", t0 + Duration::from_secs(1)));
        assert!(!log.note_at(ProblemKind::Malformed, "c", t0 + Duration::from_secs(59)));
        assert_eq!(log.suppressed, 2);
        assert!(log.note_at(ProblemKind::Io, "d", t0 + Duration::from_secs(60)));
        assert_eq!(log.suppressed, 0);
        assert_eq!(counters.problems(ProblemKind::Malformed), 2);
        assert_eq!(counters.problems(ProblemKind::BadChecksum), 1);
        assert_eq!(counters.problems(ProblemKind::Io), 1);
        assert_eq!(counters.problems(ProblemKind::Timeout), 0);
    }

    #[test]
    fn every_kind_has_its_own_counter_and_name() {
        let counters = Counters::default();
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.index(), i);
            Counters::bump(&counters.problems[k.index()]);
            assert_eq!(counters.problems(*k), 1, "{}", k.name());
        }
        let names: std::collections::HashSet<&str> = KINDS.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), KINDS.len());
    }

    #[test]
    fn a_missing_device_is_named_in_the_error() {
        let line = LineSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        };
        let Err(e) = open_device(Path::new("/nonexistent/ttyUSB9"), &line) else {
            panic!("a missing device opened");
        };
        assert_eq!(
            e,
            "cannot open /nonexistent/ttyUSB9: no such device (unplugged?)"
        );
    }
}
