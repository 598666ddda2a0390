//! End to end: the daemon binary reads a GPS (NMEA), a line instrument
//! (CSV) and a Modbus RTU device on pseudo-terminals, and the readings
//! arrive at a real Mosquitto as Thing+ values of the right types: the
//! location as an object, numbers as numbers, text as strings.

mod common;
mod pty;

use std::future::{ready, Ready};
use std::os::fd::AsRawFd;

use common::*;
use serde_json::json;
use tokio_modbus::server::rtu::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_serial::{SerialPort, SerialStream};

/// A Modbus device whose holding registers 0..=1 hold 21.5 as an f32.
struct Thermometer;

impl Service for Thermometer {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        let b = 21.5f32.to_bits();
        ready(match req.request {
            Request::ReadHoldingRegisters(0, 2) => Ok(Some(Response::ReadHoldingRegisters(vec![
                (b >> 16) as u16,
                b as u16,
            ]))),
            Request::ReadHoldingRegisters(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

fn cloexec(fd: &impl AsRawFd) {
    // SAFETY: fcntl on a valid fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Starts the Modbus device on its own runtime thread; returns the device path.
fn modbus_device() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (master, slave) = SerialStream::pair().unwrap();
            // Neither end may leak into the daemon or the broker.
            cloexec(&master);
            cloexec(&slave);
            tx.send(slave.name().unwrap()).unwrap();
            let _keep = slave;
            let _ = Server::new(master).serve_forever(Thermometer).await;
        });
    });
    rx.recv().unwrap()
}

/// A GPS (NMEA) and a station (CSV) on serial ports, a thermometer on a
/// Modbus bus, and a sensor for each of their fields.
fn sensors_config(gps: &std::path::Path, station: &std::path::Path, plc: &str) -> String {
    format!(
        r#"
[serial.gps]
device = "{gps}"
format = "nmea"

[serial.station]
device = "{station}"
format = "csv"
columns = ["name", "temp", "state"]

[modbus.plc]
device = "{plc}"
timeout = "500ms"

[[sensor]]
id = "{{gateway_id}}-location-0"
type = "location"
serial = "gps"
field = "location"

[[sensor]]
id = "{{gateway_id}}-satellites-0"
type = "number"
serial = "gps"
field = "satellites"

[[sensor]]
id = "{{gateway_id}}-temperature-0"
type = "temperature"
serial = "station"
field = "temp"
scale = 0.1

[[sensor]]
id = "{{gateway_id}}-string-0"
type = "string"
serial = "station"
field = "state"

[[sensor]]
id = "{{gateway_id}}-temperature-1"
type = "temperature"
modbus = "plc"
address = 0
data_type = "f32"
"#,
        gps = gps.display(),
        station = station.display(),
    )
}

#[test]
fn serial_and_modbus_readings_arrive_as_thing_plus_values() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let cloud = Cloud::connect(broker.port);

    let gps = pty::Pty::open();
    let station = pty::Pty::open();
    let plc = modbus_device();
    let sensors = sensors_config(&gps.path, &station.path, &plc);
    let mut d = Daemon::spawn(
        dir.path(),
        &config_text(dir.path(), broker.port, "", &sensors),
    );

    // Devices that print steadily, as real ones do.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (g, s, stop) = (gps.writer(), station.writer(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let (mut g, mut s) = (g, s);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                g.write_all(
                    pty::nmea("GPGGA,120000,3733.990,N,12659.400,E,1,09,0.9,38.5,M,20.1,M,,")
                        .as_bytes(),
                )
                .unwrap();
                s.write_all(b"roof,215,ok\r\n\x00\x17garbage\xff\r\n")
                    .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        })
    };

    let id = |s: &str| format!("{GW}-{s}");
    cloud.wait_values(&id("location-0"), "a location object", |v| {
        v.iter()
            .any(|(_, x)| *x == json!({"lat": 37.5665, "lng": 126.99}))
    });
    cloud.wait_values(&id("satellites-0"), "9 satellites", |v| {
        v.iter().any(|(_, x)| *x == json!(9))
    });
    cloud.wait_values(&id("temperature-0"), "21.5 from the CSV line", |v| {
        v.iter().any(|(_, x)| *x == json!(21.5))
    });
    cloud.wait_values(&id("string-0"), "the text \"ok\"", |v| {
        v.iter().any(|(_, x)| *x == json!("ok"))
    });
    cloud.wait_values(&id("temperature-1"), "21.5 from Modbus", |v| {
        v.iter().any(|(_, x)| *x == json!(21.5))
    });
    // Time order per sensor holds for serial sources too.
    for s in ["location-0", "temperature-0", "temperature-1"] {
        let vals = cloud.values_of(&id(s));
        if let Err(e) = strictly_increasing_dedup(&vals) {
            panic!("{s}: {e}");
        }
    }

    // The daemon's own view (`status --json`): every serial and Modbus
    // sensor on, with its last value, no error.
    let status = wait_status_json(dir.path(), "every serial and Modbus sensor on", |v| {
        v["sensors"].as_array().is_some_and(|s| {
            s.len() == 5
                && s.iter()
                    .all(|s| s["status"] == "on" && s["error"].is_null())
        })
    });
    let last = |s: &str| {
        status["sensors"]
            .as_array()
            .and_then(|all| all.iter().find(|x| x["id"] == json!(id(s))))
            .map(|x| x["value"].clone())
            .unwrap_or_else(|| panic!("no {s} in {status}"))
    };
    assert_eq!(last("location-0"), json!({"lat": 37.5665, "lng": 126.99}));
    assert_eq!(last("satellites-0"), json!(9));
    assert_eq!(last("temperature-0"), json!(21.5));
    assert_eq!(last("string-0"), json!("ok"));
    assert_eq!(last("temperature-1"), json!(21.5));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    // Garbage came with every line: it is logged once (the log's own
    // once-a-minute limit is what this checks), and never stopped the port.
    assert_eq!(
        d.count_warnings("bad input from serial port \"station\""),
        1,
        "{:#?}",
        d.log_lines()
    );
    assert_eq!(d.count_warnings("serial port lost"), 0);
    assert!(d.terminate().success());
}
