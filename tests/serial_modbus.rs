//! Modbus RTU sensors against a real Modbus RTU server (tokio-modbus's
//! `rtu-server`) on the other end of a pseudo-terminal: every function and
//! data type, batching of neighbouring registers, an exception reply (and a
//! batch split after one), a device that never answers, and a bus missing at
//! start, unplugged and plugged back.

mod pty;

use std::collections::BTreeMap;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};

use pty::*;
use thingplus_gw::config::ModbusFunction;
use thingplus_gw::sensor::device::{Counters, ProblemKind};
use thingplus_gw::sensor::modbus::spawn_bus;
use thingplus_gw::thingplus::Status;
use tokio_modbus::server::rtu::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_serial::{SerialPort, SerialStream};

type Log = Arc<Mutex<Vec<(u8, ModbusFunction, u16, u16)>>>;

/// Unit 1 with some registers and bits; any other unit never answers.
struct Device {
    holding: BTreeMap<u16, u16>,
    input: BTreeMap<u16, u16>,
    coils: BTreeMap<u16, bool>,
    discrete: BTreeMap<u16, bool>,
    log: Log,
}

fn range<T: Copy>(map: &BTreeMap<u16, T>, a: u16, n: u16) -> Result<Vec<T>, ExceptionCode> {
    (a..a + n)
        .map(|i| {
            map.get(&i)
                .copied()
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

impl Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        let (f, a, n) = match req.request {
            Request::ReadHoldingRegisters(a, n) => (ModbusFunction::Holding, a, n),
            Request::ReadInputRegisters(a, n) => (ModbusFunction::Input, a, n),
            Request::ReadCoils(a, n) => (ModbusFunction::Coil, a, n),
            Request::ReadDiscreteInputs(a, n) => (ModbusFunction::Discrete, a, n),
            _ => return ready(Err(ExceptionCode::IllegalFunction)),
        };
        self.log.lock().unwrap().push((req.slave, f, a, n));
        if req.slave != 1 {
            return ready(Ok(None)); // nobody home: the client must time out
        }
        let r = match f {
            ModbusFunction::Holding => {
                range(&self.holding, a, n).map(Response::ReadHoldingRegisters)
            }
            ModbusFunction::Input => range(&self.input, a, n).map(Response::ReadInputRegisters),
            ModbusFunction::Coil => range(&self.coils, a, n).map(Response::ReadCoils),
            ModbusFunction::Discrete => {
                range(&self.discrete, a, n).map(Response::ReadDiscreteInputs)
            }
        };
        ready(r.map(Some))
    }
}

fn sensor(id: &str, ty: &str, keys: &str) -> String {
    format!("[[sensor]]\nid = \"{id}\"\ntype = \"{ty}\"\nmodbus = \"plc\"\ninterval = \"300ms\"\n{keys}\n")
}

/// The device of the test: unit 1 holds every data type in neighbouring
/// registers, two points that do not exist (100, 20) and bits.
fn plc(log: Log) -> Device {
    let f32_words = |v: f32| {
        let b = v.to_bits();
        ((b >> 16) as u16, b as u16)
    };
    let (h21_hi, h21_lo) = f32_words(21.5);
    let (m05_hi, m05_lo) = f32_words(-0.5);
    Device {
        holding: BTreeMap::from([
            (0, 0xFFFF),
            (1, 0x0001),
            (2, 0x0002),
            (3, 0xFFFE), // i32 -2, low word first
            (4, 0xFFFF),
            (5, h21_hi), // f32 21.5, high word first
            (6, h21_lo),
        ]),
        input: BTreeMap::from([
            (10, m05_lo), // f32 -0.5, low word first
            (11, m05_hi),
            (12, (-300i16) as u16),
            (21, 7),
        ]),
        coils: BTreeMap::from([(3, true)]),
        discrete: BTreeMap::from([(7, false)]),
        log,
    }
}

/// A bus `plc` on `device` with a sensor for each point of [`plc`], one
/// that does not exist, and one on a unit that never answers.
fn plc_config(device: &std::path::Path) -> thingplus_gw::config::Config {
    config(&format!(
        "[modbus.plc]\ndevice = \"{}\"\nbaud = 19200\ntimeout = \"500ms\"\nreopen_min = \"20ms\"\nreopen_max = \"100ms\"\n{}",
        device.display(),
        [
            sensor("h-u16", "number", "address = 0"),
            sensor("h-i16", "number", "address = 0\ndata_type = \"i16\""),
            sensor("h-u32", "number", "address = 1\ndata_type = \"u32\""),
            sensor("h-i32", "number", "address = 3\ndata_type = \"i32\"\nword_order = \"little\""),
            sensor("h-f32", "temperature", "address = 5\ndata_type = \"f32\""),
            sensor("i-f32", "number", "function = \"input\"\naddress = 10\ndata_type = \"f32\"\nword_order = \"little\"\nscale = 2\noffset = 1.5"),
            sensor("i-i16", "number", "function = \"input\"\naddress = 12\ndata_type = \"i16\"\nscale = 0.1"),
            sensor("c-3", "onoff", "function = \"coil\"\naddress = 3"),
            sensor("d-7", "number", "function = \"discrete\"\naddress = 7"),
            sensor("missing", "number", "address = 100"),
            sensor("i-20", "number", "function = \"input\"\naddress = 20"),
            sensor("i-21", "number", "function = \"input\"\naddress = 21"),
            sensor("silent", "number", "unit = 9\naddress = 0"),
        ]
        .concat()
    ))
}

/// Every point of [`plc`] reads its value; the ones the device refuses or
/// never answers are err, saying which bus, point and why.
async fn every_point_reads_or_says_why(rt: &Rt) {
    rt.wait_value("h-u16", num(65535.0)).await;
    rt.wait_value("h-i16", num(-1.0)).await;
    rt.wait_value("h-u32", num(65538.0)).await;
    rt.wait_value("h-i32", num(-2.0)).await;
    rt.wait_value("h-f32", num(21.5)).await;
    rt.wait_value("i-f32", num(0.5)).await; // -0.5 * 2 + 1.5
    rt.wait_value("i-i16", num(-30.0)).await;
    rt.wait_value("c-3", num(1.0)).await;
    rt.wait_value("d-7", num(0.0)).await;
    rt.wait_value("i-21", num(7.0)).await;

    let e = rt
        .wait_error(
            "missing",
            &["Modbus bus \"plc\"", "unit 1 holding 100", "exception 0x02"],
        )
        .await;
    assert!(e.contains("Illegal data address"), "{e}");
    rt.wait_error("i-20", &["unit 1 input 20", "exception 0x02"])
        .await;
    rt.wait_error(
        "silent",
        &["Modbus bus \"plc\"", "unit 9", "no reply within 500ms"],
    )
    .await;
}

/// The requests the device saw: neighbours batched, a refused batch split.
fn assert_batched_requests(log: &[(u8, ModbusFunction, u16, u16)]) {
    // Neighbouring holding registers 0..=6 are read in one request, never one by one.
    assert!(log.contains(&(1, ModbusFunction::Holding, 0, 7)), "{log:?}");
    assert!(
        !log.iter()
            .any(|r| r.1 == ModbusFunction::Holding && r.2 != 0 && r.2 != 100 && r.0 == 1),
        "{log:?}"
    );
    assert!(log.contains(&(1, ModbusFunction::Input, 10, 3)), "{log:?}");
    // The batch 20..=21 got an exception once, then is read point by point.
    let last_batch = log
        .iter()
        .rposition(|r| *r == (1, ModbusFunction::Input, 20, 2))
        .expect("a batched read of 20..=21");
    let first_single = log
        .iter()
        .position(|r| *r == (1, ModbusFunction::Input, 21, 1))
        .expect("a single read of 21");
    assert!(last_batch < first_single, "{log:?}");
    assert!(log.contains(&(1, ModbusFunction::Coil, 3, 1)), "{log:?}");
    assert!(
        log.contains(&(1, ModbusFunction::Discrete, 7, 1)),
        "{log:?}"
    );
    assert!(log.contains(&(9, ModbusFunction::Holding, 0, 1)), "{log:?}");
}

#[tokio::test]
async fn every_function_and_type_batches_exceptions_timeouts_and_a_late_bus() {
    let log: Log = Arc::default();
    // The server plays the device on the master side of a pty.
    let (master, slave) = SerialStream::pair().unwrap();
    let slave_path = slave.name().unwrap();
    let server = tokio::spawn(Server::new(master).serve_forever(plc(log.clone())));

    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyRS485");
    let cfg = plc_config(&link);
    let rt = Rt::new(&cfg);
    let (_task, counters) = spawn_bus(cfg.modbus[0].clone(), cfg.sensors.clone(), rt.clone_rt());

    // Missing at start: every sensor of the bus is err, saying which bus and why.
    let e = rt
        .wait_error("h-u16", &["Modbus bus \"plc\"", "no such device"])
        .await;
    assert!(e.contains(&link.display().to_string()), "{e}");
    plug(&link, std::path::Path::new(&slave_path));
    every_point_reads_or_says_why(&rt).await;

    // Later rounds still work although every round has a timeout (the
    // context is rebuilt after it).
    eventually("three rounds of h-f32", async || {
        (rt.values("h-f32").await.len() >= 3).then_some(())
    })
    .await;
    for id in ["h-u16", "h-f32", "i-f32", "c-3", "d-7", "i-21"] {
        assert_eq!(rt.state(id).status, Status::On, "{id}");
    }
    assert!(counters.problems(ProblemKind::Timeout) >= 2);
    assert!(counters.problems(ProblemKind::Exception) >= 2);
    assert!(Counters::get(&counters.opened) >= 3);
    assert_batched_requests(&log.lock().unwrap().clone());

    // Unplugged: once the bus has to reopen the device (after the next
    // timeout), every sensor is err; plugged back, they recover.
    unplug(&link);
    rt.wait_error("h-f32", &["Modbus bus \"plc\"", "no such device"])
        .await;
    let before = rt.values("h-f32").await.len();
    plug(&link, std::path::Path::new(&slave_path));
    eventually("h-f32 after the replug", async || {
        (rt.values("h-f32").await.len() > before && rt.state("h-f32").status == Status::On)
            .then_some(())
    })
    .await;
    assert!(Counters::get(&counters.lost) >= 1);

    server.abort();
    drop(slave);
}
