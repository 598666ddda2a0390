//! The task of one serial port: it owns the device, reads it through a
//! bounded line splitter, hands each line to the port's format, feeds the
//! sensors' samplers, writes the request of request ports, and reopens the
//! device with backoff when it goes away.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::format::{line_format, LineFormat};
use super::lines::{excerpt, LineEvent, LineSplitter};
use super::record::Lookup;
use crate::backoff::Backoff;
use crate::config::{SensorConfig, SensorSource, SerialPortConfig};
use crate::reading::Value;
use crate::sensor::convert::field_value;
use crate::sensor::device::{open_device, Counters, Device, ProblemKind, ProblemLog};
use crate::sensor::{Sampler, SensorRuntime};
use crate::units::format_duration;

/// One sensor of the port.
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
    format: Box<dyn LineFormat>,
    slots: Vec<Slot>,
    rt: SensorRuntime,
    counters: Arc<Counters>,
    log: ProblemLog,
    label: String,
    report_interval_open: bool,
}

/// What the reading loop of one open device keeps.
struct Link {
    /// A request port: lines are replies to the request.
    polled: bool,
    next_request: Option<Instant>,
    /// When the reply to the request written last is due.
    deadline: Option<Instant>,
    splitter: LineSplitter,
    /// A line gave a record since the device was opened.
    got_data: bool,
    /// A line answered the current request.
    answered: bool,
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
        format: line_format(&port.format),
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

    fn request_period(&self) -> Duration {
        self.port
            .interval
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
        let mut link = Link {
            polled,
            next_request: polled.then_some(now),
            deadline: None,
            splitter: LineSplitter::new(self.port.max_line),
            got_data: false,
            answered: false,
        };
        let mut buf = vec![0u8; 4096];
        let (mut rd, mut wr) = tokio::io::split(stream);
        let far = now + Duration::from_secs(86400 * 365);

        let reason = loop {
            let next_tick = if polled {
                None
            } else {
                self.slots.iter().map(|s| s.next_due).min()
            };
            let step = tokio::select! {
                r = rd.read(&mut buf) => self.on_read(r.map(|n| &buf[..n]), &mut link),
                _ = tokio::time::sleep_until(next_tick.unwrap_or(far)), if next_tick.is_some() => {
                    self.tick(Instant::now());
                    Ok(())
                }
                _ = tokio::time::sleep_until(link.next_request.unwrap_or(far)), if link.next_request.is_some() => {
                    self.request(&mut link, &mut wr).await
                }
                _ = tokio::time::sleep_until(link.deadline.unwrap_or(far)), if link.deadline.is_some() => {
                    link.deadline = None;
                    let t = format_duration(self.port.reply_timeout);
                    self.log.note(ProblemKind::NoReply, &format!("no reply within {t}"));
                    self.fail_all(&format!("no reply to the request within {t}"));
                    Ok(())
                }
                changed = self.rt.report_interval.changed(), if self.report_interval_open => {
                    self.on_report_interval(changed.is_ok(), &mut link);
                    Ok(())
                }
            };
            if let Err(reason) = step {
                break reason;
            }
        };
        drop(rd.unsplit(wr));
        (reason, link.got_data)
    }

    /// Takes what a read gave; `Err` says why the device is gone.
    fn on_read(&mut self, read: std::io::Result<&[u8]>, link: &mut Link) -> Result<(), String> {
        let data = match read {
            Ok([]) => return Err("the device closed (unplugged?)".to_string()),
            Ok(data) => data,
            Err(e) => {
                self.log.note(ProblemKind::Io, &e.to_string());
                return Err(format!("read failed: {e}"));
            }
        };
        for ev in link.splitter.push(data) {
            match ev {
                LineEvent::Line(l) => {
                    if self.on_line(&l, link.polled) {
                        link.got_data = true;
                        link.answered = true;
                        link.deadline = None;
                    }
                }
                LineEvent::Overlong => self.log.note(
                    ProblemKind::Overlong,
                    &format!(
                        "a line longer than max_line ({} bytes) was dropped",
                        self.port.max_line
                    ),
                ),
            }
        }
        Ok(())
    }

    /// Writes the request when it is due (unless the previous one still
    /// waits for its reply); `Err` says why the device is unusable.
    async fn request(&mut self, link: &mut Link, wr: &mut WriteHalf<Device>) -> Result<(), String> {
        let now = Instant::now();
        let period = self.request_period();
        let due = link.next_request.unwrap_or(now) + period;
        link.next_request = Some(if due <= now { now + period } else { due });
        if link.deadline.is_some() {
            return Ok(());
        }
        if link.answered {
            // Replies may span several lines; a field none of them named is an error.
            for s in &mut self.slots {
                if !s.replied {
                    s.sampler.take(
                        Err(format!(
                            "{}: the reply has no field \"{}\"",
                            self.label, s.field
                        )),
                        &self.rt,
                    );
                }
            }
        }
        link.answered = false;
        for s in &mut self.slots {
            s.replied = false;
        }
        let req = self.port.request.clone().unwrap_or_default();
        let written = tokio::time::timeout(self.port.reply_timeout, async {
            wr.write_all(&req).await?;
            wr.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                link.deadline = Some(Instant::now() + self.port.reply_timeout);
                Ok(())
            }
            Ok(Err(e)) => {
                self.log.note(ProblemKind::Io, &e.to_string());
                Err(format!("cannot write the request: {e}"))
            }
            Err(_) => {
                self.log.note(ProblemKind::Io, "request write timed out");
                Err(format!(
                    "writing the request took longer than {} (flow control?)",
                    format_duration(self.port.reply_timeout)
                ))
            }
        }
    }

    /// A new report interval: the sensors (and the request) that follow it
    /// start their new period now.
    fn on_report_interval(&mut self, open: bool, link: &mut Link) {
        if !open {
            self.report_interval_open = false;
            return;
        }
        let now = Instant::now();
        let ri = *self.rt.report_interval.borrow_and_update();
        for s in &mut self.slots {
            if s.cfg.interval.is_none() {
                s.next_due = now + ri;
            }
        }
        if link.polled && self.port.interval.is_none() {
            link.next_request = Some(now + ri);
        }
    }

    /// Handles one line; true if it gave a record.
    fn on_line(&mut self, line: &[u8], polled: bool) -> bool {
        let record = match self.format.parse_bytes(line) {
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
                        let msg = no_value_msg(&self.label, &s.field, &*self.format);
                        s.sampler.take(Err(msg), &self.rt);
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
                let msg = no_value_msg(&self.label, &s.field, &*self.format);
                s.sampler.take(Err(msg), &self.rt);
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

/// The error of a sensor whose field the device says has no value.
fn no_value_msg(label: &str, field: &str, format: &dyn LineFormat) -> String {
    let hint = format
        .no_value_hint(field)
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    format!("{label}: the device reports no value for \"{field}\"{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::serial::{csv::Csv, nmea::Nmea};

    #[test]
    fn no_value_errors_name_the_port_and_field_and_the_format_gives_the_reason() {
        let label = "serial port \"gps\" (/dev/ttyACM0)";
        assert_eq!(
            no_value_msg(label, "location", &Nmea),
            "serial port \"gps\" (/dev/ttyACM0): the device reports no value for \"location\" (the receiver has no fix)"
        );
        assert_eq!(
            no_value_msg(label, "satellites", &Nmea),
            "serial port \"gps\" (/dev/ttyACM0): the device reports no value for \"satellites\""
        );
        let csv = Csv::new(vec!["location".into()], ',');
        assert!(!no_value_msg(label, "location", &csv).contains("fix"));
    }
}
