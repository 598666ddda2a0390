//! Modbus RTU sensors: points read from devices on a named bus
//! (`[modbus.NAME]`).
//!
//! One task per bus owns the device, so there is one request at a time on
//! the wire. Sensors with the same interval are polled together; their
//! neighbouring points on the same device and function are read in one
//! request ("batched") when that is safe: contiguous or overlapping ranges
//! (or gaps of at most `max_gap` unused registers), within the protocol's
//! per-request limits. A batch that gets an exception (a device that does
//! not allow the range) is split into single reads for good.
//!
//! tokio-modbus has no timeouts and recovers poorly from bad frames, so every
//! request is wrapped in the bus `timeout`, and after a timeout or transport
//! error the device is reopened and a new client context built. If it cannot
//! be reopened (unplugged), every sensor of the bus goes `err` and the bus is
//! reopened with backoff.
//!
//! Register decoding ([`decode_registers`]) and batch planning ([`plan`])
//! are pure.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::backoff::Backoff;
use crate::config::{
    ModbusBusConfig, ModbusDataType, ModbusFunction, ModbusPoint, SensorConfig, SensorSource,
    WordOrder,
};
use crate::sensor::convert::number_value;
use crate::sensor::device::{open_device, Counters, ProblemKind, ProblemLog};
use crate::sensor::{Sampler, SensorRuntime};
use crate::units::format_duration;

/// Protocol limits per request.
pub const MAX_REGISTERS: u16 = 125;
pub const MAX_BITS: u16 = 2000;

// ---------------------------------------------------------------- pure decoding

/// The number a point's registers hold. `words` has at least the type's width.
pub fn decode_registers(
    words: &[u16],
    data_type: ModbusDataType,
    word_order: WordOrder,
) -> Result<f64, String> {
    let need = usize::from(data_type.width());
    if words.len() < need {
        return Err(format!(
            "{} needs {need} registers, got {}",
            data_type.name(),
            words.len()
        ));
    }
    let pair = || -> u32 {
        let (hi, lo) = match word_order {
            WordOrder::Big => (words[0], words[1]),
            WordOrder::Little => (words[1], words[0]),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    let v = match data_type {
        ModbusDataType::Bool => f64::from(u8::from(words[0] != 0)),
        ModbusDataType::U16 => f64::from(words[0]),
        ModbusDataType::I16 => f64::from(words[0] as i16),
        ModbusDataType::U32 => f64::from(pair()),
        ModbusDataType::I32 => f64::from(pair() as i32),
        ModbusDataType::F32 => {
            let f = f32::from_bits(pair());
            if !f.is_finite() {
                return Err(format!("the device holds a non-finite float ({f})"));
            }
            // Through the shortest decimal form, so 21.5f32 reads 21.5, not 21.5000004.
            f.to_string().parse::<f64>().unwrap_or(f64::from(f))
        }
    };
    Ok(v)
}

/// One request: a range of one function on one device, and the sensors it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub unit: u8,
    pub function: ModbusFunction,
    pub start: u16,
    pub count: u16,
    /// Indexes of the points served.
    pub members: Vec<usize>,
}

/// Groups points (by index into `points`) into requests. With `batch`,
/// points of the same unit and function whose ranges touch, overlap or are at
/// most `max_gap` apart share a request, up to the protocol limit.
pub fn plan(points: &[ModbusPoint], members: &[usize], batch: bool, max_gap: u16) -> Vec<Batch> {
    let mut order: Vec<usize> = members.to_vec();
    order.sort_by_key(|&i| (points[i].unit, points[i].function, points[i].address, i));
    let mut out: Vec<Batch> = Vec::new();
    for i in order {
        let p = &points[i];
        let end = u32::from(p.address) + u32::from(p.data_type.width());
        if batch {
            if let Some(b) = out.last_mut() {
                let b_end = u32::from(b.start) + u32::from(b.count);
                let limit = u32::from(if p.function.is_bits() {
                    MAX_BITS
                } else {
                    MAX_REGISTERS
                });
                let new_end = b_end.max(end);
                if b.unit == p.unit
                    && b.function == p.function
                    && u32::from(p.address) <= b_end + u32::from(max_gap)
                    && new_end - u32::from(b.start) <= limit
                {
                    b.count = (new_end - u32::from(b.start)) as u16;
                    b.members.push(i);
                    continue;
                }
            }
        }
        out.push(Batch {
            unit: p.unit,
            function: p.function,
            start: p.address,
            count: (end - u32::from(p.address)) as u16,
            members: vec![i],
        });
    }
    out
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// The raw number of one point out of its batch's data.
pub fn extract(data: &Data, batch: &Batch, point: &ModbusPoint) -> Result<f64, String> {
    let off = usize::from(point.address - batch.start);
    let w = usize::from(point.data_type.width());
    match data {
        Data::Bits(bits) => bits
            .get(off)
            .map(|b| f64::from(u8::from(*b)))
            .ok_or_else(|| "short reply".to_string()),
        Data::Words(words) => match words.get(off..off + w) {
            Some(ws) => decode_registers(ws, point.data_type, point.word_order),
            None => Err("short reply".to_string()),
        },
    }
}

// ---------------------------------------------------------------- the bus task

struct Slot {
    cfg: SensorConfig,
    point: ModbusPoint,
    sampler: Sampler,
}

struct Group {
    /// `None`: the report interval.
    interval: Option<Duration>,
    next_due: Instant,
    batches: Vec<Batch>,
}

/// What one read gave.
#[derive(Debug)]
pub enum Outcome {
    Data(Data),
    Exception(ExceptionCode),
    Failed(ProblemKind, String),
}

struct BusTask {
    bus: ModbusBusConfig,
    slots: Vec<Slot>,
    groups: Vec<Group>,
    rt: SensorRuntime,
    counters: Arc<Counters>,
    log: ProblemLog,
    label: String,
    report_interval_open: bool,
    answered: bool,
}

/// Starts the task of one Modbus bus and its sensors (those whose source
/// names the bus; others are ignored). The counters show what it has seen.
pub fn spawn_bus(
    bus: ModbusBusConfig,
    sensors: Vec<SensorConfig>,
    rt: SensorRuntime,
) -> (JoinHandle<()>, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let label = format!("Modbus bus \"{}\" ({})", bus.name, bus.device.display());
    let slots: Vec<Slot> = sensors
        .into_iter()
        .filter_map(|cfg| match &cfg.source {
            SensorSource::Modbus(p) if p.bus == bus.name => Some(Slot {
                point: p.clone(),
                sampler: Sampler::new(cfg.id.as_str().into(), cfg.event),
                cfg,
            }),
            _ => None,
        })
        .collect();
    let points: Vec<ModbusPoint> = slots.iter().map(|s| s.point.clone()).collect();
    let mut intervals: Vec<Option<Duration>> = slots.iter().map(|s| s.cfg.interval).collect();
    intervals.sort();
    intervals.dedup();
    let now = Instant::now();
    let groups = intervals
        .into_iter()
        .map(|iv| {
            let members: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].cfg.interval == iv)
                .collect();
            Group {
                interval: iv,
                next_due: now,
                batches: plan(&points, &members, bus.batch, bus.max_gap),
            }
        })
        .collect();
    let task = BusTask {
        log: ProblemLog::new(label.clone(), counters.clone()),
        bus,
        slots,
        groups,
        rt,
        counters: counters.clone(),
        label,
        report_interval_open: true,
        answered: false,
    };
    (tokio::spawn(task.run()), counters)
}

impl BusTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.bus.reopen_min, self.bus.reopen_max);
        loop {
            match self.connect() {
                Err(e) => self.fail_all(&e),
                Ok(ctx) => {
                    tracing::info!(bus = %self.label, line = %self.bus.line, "Modbus bus opened: {} ({})", self.label, self.bus.line);
                    self.answered = false;
                    let reason = self.serve(ctx).await;
                    Counters::bump(&self.counters.lost);
                    tracing::warn!(bus = %self.label, reason = %reason, "Modbus bus lost: {}: {reason}; reopening it with backoff", self.label);
                    self.fail_all(&reason);
                    if self.answered {
                        backoff.reset();
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn connect(&self) -> Result<Context, String> {
        let dev = open_device(&self.bus.device, &self.bus.line)?;
        dev.discard_input();
        Counters::bump(&self.counters.opened);
        Ok(tokio_modbus::client::rtu::attach_slave(dev, Slave(1)))
    }

    fn fail_all(&mut self, reason: &str) {
        let msg = format!("{}: {reason}", self.label);
        for s in &mut self.slots {
            s.sampler.take(Err(msg.clone()), &self.rt);
        }
    }

    /// Polls the groups as they fall due, until the bus cannot be reopened.
    async fn serve(&mut self, ctx: Context) -> String {
        let mut ctx = Some(ctx);
        loop {
            let Some(next) = self.groups.iter().map(|g| g.next_due).min() else {
                return "no sensors".into();
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                changed = self.rt.report_interval.changed(), if self.report_interval_open => {
                    if changed.is_err() {
                        self.report_interval_open = false;
                    } else {
                        let ri = *self.rt.report_interval.borrow_and_update();
                        let now = Instant::now();
                        for g in &mut self.groups {
                            if g.interval.is_none() {
                                g.next_due = now + ri;
                            }
                        }
                    }
                    continue;
                }
            }
            let ri = *self.rt.report_interval.borrow();
            for gi in 0..self.groups.len() {
                let now = Instant::now();
                let g = &mut self.groups[gi];
                if g.next_due > now {
                    continue;
                }
                let iv = g.interval.unwrap_or(ri);
                let due = g.next_due + iv;
                g.next_due = if due <= now { now + iv } else { due };
                if let Err(reason) = self.poll_group(gi, &mut ctx).await {
                    return reason;
                }
            }
        }
    }

    /// Reads every batch of a group once. Err: the bus is gone.
    async fn poll_group(&mut self, gi: usize, ctx: &mut Option<Context>) -> Result<(), String> {
        let mut bi = 0;
        while bi < self.groups[gi].batches.len() {
            let batch = self.groups[gi].batches[bi].clone();
            let outcome = match ctx.as_mut() {
                Some(c) => self.read(c, &batch).await,
                None => {
                    *ctx = Some(self.connect()?);
                    continue;
                }
            };
            match outcome {
                Outcome::Data(data) => {
                    self.answered = true;
                    Counters::bump(&self.counters.records);
                    for &m in &batch.members {
                        let s = &mut self.slots[m];
                        let r = extract(&data, &batch, &s.point)
                            .and_then(|raw| {
                                number_value(raw, s.cfg.value_type, s.cfg.scale, s.cfg.offset)
                            })
                            .map_err(|e| format!("{}: {}: {e}", self.label, describe(&s.point)));
                        s.sampler.take(r, &self.rt);
                    }
                }
                Outcome::Exception(code) if batch.members.len() > 1 => {
                    self.answered = true;
                    self.log.note(
                        ProblemKind::Exception,
                        &format!(
                            "unit {} {} {}..{}: exception {} on a batched read; reading these points one by one from now on",
                            batch.unit,
                            batch.function.name(),
                            batch.start,
                            u32::from(batch.start) + u32::from(batch.count) - 1,
                            exception_text(code)
                        ),
                    );
                    let points: Vec<ModbusPoint> =
                        self.slots.iter().map(|s| s.point.clone()).collect();
                    let singles = plan(&points, &batch.members, false, 0);
                    self.groups[gi].batches.splice(bi..=bi, singles);
                    continue; // read the first single now
                }
                Outcome::Exception(code) => {
                    self.answered = true;
                    let text = exception_text(code);
                    let s = &mut self.slots[batch.members[0]];
                    let what = describe(&s.point);
                    self.log
                        .note(ProblemKind::Exception, &format!("{what}: exception {text}"));
                    s.sampler.take(
                        Err(format!(
                            "{}: {what}: the device answered with exception {text}",
                            self.label
                        )),
                        &self.rt,
                    );
                }
                Outcome::Failed(kind, why) => {
                    let what = format!(
                        "unit {} {} {}",
                        batch.unit,
                        batch.function.name(),
                        batch.start
                    );
                    self.log.note(kind, &format!("{what}: {why}"));
                    for &m in &batch.members {
                        let s = &mut self.slots[m];
                        s.sampler.take(
                            Err(format!("{}: {}: {why}", self.label, describe(&s.point))),
                            &self.rt,
                        );
                    }
                    // The client may hold half a frame: close the device and
                    // start afresh (before the next request).
                    if let Some(mut c) = ctx.take() {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(100), c.disconnect()).await;
                    }
                }
            }
            bi += 1;
        }
        Ok(())
    }

    async fn read(&mut self, ctx: &mut Context, b: &Batch) -> Outcome {
        match tokio::time::timeout(self.bus.timeout, read_batch(ctx, b)).await {
            Err(_) => Outcome::Failed(
                ProblemKind::Timeout,
                format!("no reply within {}", format_duration(self.bus.timeout)),
            ),
            Ok(outcome) => outcome,
        }
    }
}

/// One request on the wire and what the device answered: the batch's data,
/// an exception, or a failure. The reply's length is checked here
/// (tokio-modbus's typed readers only debug-assert it, which panics in debug
/// builds on a device's bad reply); coils and discrete inputs come back
/// padded to whole bytes and are cut to the count asked for. No timeout:
/// the caller sets one.
pub async fn read_batch(ctx: &mut Context, b: &Batch) -> Outcome {
    ctx.set_slave(Slave(b.unit));
    let (start, count) = (b.start, b.count);
    let request = match b.function {
        ModbusFunction::Holding => Request::ReadHoldingRegisters(start, count),
        ModbusFunction::Input => Request::ReadInputRegisters(start, count),
        ModbusFunction::Coil => Request::ReadCoils(start, count),
        ModbusFunction::Discrete => Request::ReadDiscreteInputs(start, count),
    };
    let data = match ctx.call(request).await {
        Err(e) => return Outcome::Failed(ProblemKind::Io, e.to_string()),
        Ok(Err(code)) => return Outcome::Exception(code),
        Ok(Ok(Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)))
            if !b.function.is_bits() =>
        {
            Data::Words(words)
        }
        Ok(Ok(Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits)))
            if b.function.is_bits() =>
        {
            Data::Bits(bits)
        }
        Ok(Ok(other)) => {
            return Outcome::Failed(
                ProblemKind::Io,
                format!("a reply of another kind: {other:?}"),
            )
        }
    };
    let want = usize::from(count);
    match data {
        Data::Bits(mut bits) if bits.len() >= want => {
            bits.truncate(want);
            Outcome::Data(Data::Bits(bits))
        }
        Data::Words(words) if words.len() == want => Outcome::Data(Data::Words(words)),
        Data::Bits(v) => Outcome::Failed(
            ProblemKind::Io,
            format!("short reply: {} of {want} values", v.len()),
        ),
        Data::Words(v) => Outcome::Failed(
            ProblemKind::Io,
            format!("a reply of {} values to a request for {want}", v.len()),
        ),
    }
}

fn describe(p: &ModbusPoint) -> String {
    format!(
        "unit {} {} {} ({})",
        p.unit,
        p.function.name(),
        p.address,
        p.data_type.name()
    )
}

fn exception_text(code: ExceptionCode) -> String {
    format!("0x{:02X} ({code})", u8::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(unit: u8, function: ModbusFunction, address: u16, dt: ModbusDataType) -> ModbusPoint {
        ModbusPoint {
            bus: "b".into(),
            unit,
            function,
            address,
            data_type: dt,
            word_order: WordOrder::Big,
        }
    }

    #[test]
    fn decodes_every_type_and_word_order() {
        use ModbusDataType::*;
        use WordOrder::*;
        assert_eq!(decode_registers(&[0xFFFF], U16, Big).unwrap(), 65535.0);
        assert_eq!(decode_registers(&[0xFFFF], I16, Big).unwrap(), -1.0);
        assert_eq!(decode_registers(&[0x8000], I16, Big).unwrap(), -32768.0);
        assert_eq!(
            decode_registers(&[0x0001, 0x0002], U32, Big).unwrap(),
            65538.0
        );
        assert_eq!(
            decode_registers(&[0x0002, 0x0001], U32, Little).unwrap(),
            65538.0
        );
        assert_eq!(decode_registers(&[0xFFFF, 0xFFFE], I32, Big).unwrap(), -2.0);
        assert_eq!(
            decode_registers(&[0xFFFE, 0xFFFF], I32, Little).unwrap(),
            -2.0
        );
        // 21.5f32 = 0x41AC0000
        assert_eq!(decode_registers(&[0x41AC, 0x0000], F32, Big).unwrap(), 21.5);
        assert_eq!(
            decode_registers(&[0x0000, 0x41AC], F32, Little).unwrap(),
            21.5
        );
        let b = (-0.1f32).to_bits();
        assert_eq!(
            decode_registers(&[(b >> 16) as u16, b as u16], F32, Big).unwrap(),
            -0.1
        );
        assert!(decode_registers(&[0x7FC0, 0x0000], F32, Big).is_err()); // NaN
        assert!(decode_registers(&[0x7F80, 0x0000], F32, Big).is_err()); // inf
        assert!(decode_registers(&[1], U32, Big).is_err());
    }

    #[test]
    fn batches_only_neighbours_of_one_device_and_function() {
        use ModbusDataType::*;
        use ModbusFunction::*;
        let points = vec![
            pt(1, Holding, 10, U16), // 0
            pt(1, Holding, 11, F32), // 1: 11..13, touches 0
            pt(1, Holding, 14, U16), // 2: gap of 1 after 1
            pt(2, Holding, 12, U16), // 3: other unit
            pt(1, Input, 12, U16),   // 4: other function
            pt(1, Holding, 10, I16), // 5: same register as 0
            pt(1, Coil, 0, Bool),    // 6
            pt(1, Coil, 1, Bool),    // 7
        ];
        let all: Vec<usize> = (0..points.len()).collect();
        let b = plan(&points, &all, true, 0);
        let summary: Vec<(u8, ModbusFunction, u16, u16, Vec<usize>)> = b
            .iter()
            .map(|b| (b.unit, b.function, b.start, b.count, b.members.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, Coil, 0, 2, vec![6, 7]),
                (1, Holding, 10, 3, vec![0, 5, 1]),
                (1, Holding, 14, 1, vec![2]),
                (1, Input, 12, 1, vec![4]),
                (2, Holding, 12, 1, vec![3]),
            ]
        );
        // With a gap allowance the lone register joins.
        let b = plan(&points, &[0, 1, 2], true, 1);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].start, b[0].count), (10, 5));
        // Without batching: one request per point.
        assert_eq!(plan(&points, &all, false, 0).len(), points.len());
    }

    #[test]
    fn batches_respect_the_protocol_limit() {
        let points: Vec<ModbusPoint> = (0..200)
            .map(|a| pt(1, ModbusFunction::Holding, a, ModbusDataType::U16))
            .collect();
        let all: Vec<usize> = (0..200).collect();
        let b = plan(&points, &all, true, 0);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].count, MAX_REGISTERS);
        assert_eq!(b[1].count, 200 - MAX_REGISTERS);
    }

    #[test]
    fn extracts_points_from_a_batch() {
        let p0 = pt(1, ModbusFunction::Holding, 10, ModbusDataType::U16);
        let mut p1 = pt(1, ModbusFunction::Holding, 11, ModbusDataType::U32);
        p1.word_order = WordOrder::Little;
        let batch = Batch {
            unit: 1,
            function: ModbusFunction::Holding,
            start: 10,
            count: 3,
            members: vec![0, 1],
        };
        let d = Data::Words(vec![7, 0x0002, 0x0001]);
        assert_eq!(extract(&d, &batch, &p0).unwrap(), 7.0);
        assert_eq!(extract(&d, &batch, &p1).unwrap(), 65538.0);
        assert!(extract(&Data::Words(vec![7]), &batch, &p1).is_err());
    }
}
