//! Serial line sensors against real pseudo-terminals: NMEA, CSV, JSON and
//! regex streams, a request/reply instrument, garbage and an endless line,
//! and a device missing at start, unplugged and plugged back.

mod pty;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pty::*;
use serde_json::json;
use thingplus_gw::reading::Value;
use thingplus_gw::sensor::serial::{spawn_port, Counters, ProblemKind};
use thingplus_gw::thingplus::Status;

fn sensor(id: &str, ty: &str, port: &str, field: &str, extra: &str) -> String {
    format!("[[sensor]]\nid = \"{id}\"\ntype = \"{ty}\"\nserial = \"{port}\"\nfield = \"{field}\"\n{extra}\n")
}

fn bad_checksum(sentence: &str) -> String {
    // Flip the last checksum digit.
    let t = sentence.trim_end();
    let (head, last) = t.split_at(t.len() - 1);
    let flipped = if last == "0" { "1" } else { "0" };
    format!("{head}{flipped}\r\n")
}

#[tokio::test]
async fn nmea_stream_with_bad_checksums_and_no_fix() {
    let gps = Pty::open();
    let cfg = config(&format!(
        "[serial.gps]\ndevice = \"{}\"\nformat = \"nmea\"\n{}{}{}{}{}",
        gps.path.display(),
        sensor("loc", "location", "gps", "location", "interval = \"50ms\""),
        sensor("fix", "onoff", "gps", "fix", ""),
        sensor("sats", "number", "gps", "satellites", "interval = \"50ms\""),
        sensor("alt", "number", "gps", "altitude", "interval = \"50ms\""),
        sensor("spd", "number", "gps", "speed", "interval = \"50ms\""),
    ));
    let rt = Rt::new(&cfg);
    let (_task, counters) = spawn_port(cfg.serial[0].clone(), cfg.sensors.clone(), rt.clone_rt());

    let a = Value::Json(json!({"lat": 37.5665, "lng": 126.99}));
    let c = Value::Json(json!({"lat": 35.0, "lng": 129.0}));
    gps.write(nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00").as_bytes());
    gps.write(b"hello, not NMEA\r\n");
    gps.write(nmea("GPGGA,120000,3733.990,N,12659.400,E,1,09,0.9,38.5,M,20.1,M,,").as_bytes());
    gps.write(nmea("GPRMC,120000,A,3733.990,N,12659.400,E,10.0,90.0,010124,,,A").as_bytes());
    rt.wait_value("loc", a.clone()).await;
    rt.wait_value("alt", num(38.5)).await;
    rt.wait_value("sats", num(9.0)).await;
    rt.wait_value("spd", num(18.52)).await; // 10 knots in km/h
    rt.wait_value("fix", num(1.0)).await;

    // Bad checksums carry a position that must never be reported; then the fix is lost.
    gps.write(
        bad_checksum(&nmea(
            "GPGGA,120001,1000.000,N,01000.000,E,1,09,0.9,38.5,M,20.1,M,,",
        ))
        .as_bytes(),
    );
    gps.write(
        bad_checksum(&nmea(
            "GPRMC,120001,A,1000.000,N,01000.000,E,10.0,90.0,010124,,,A",
        ))
        .as_bytes(),
    );
    gps.write(nmea("GPGGA,120002,,,,,0,03,,,M,,M,,").as_bytes());
    gps.write(nmea("GPRMC,120002,V,,,,,,,010124,,,N").as_bytes());
    rt.wait_value("fix", num(0.0)).await;
    let e = rt
        .wait_error("loc", &["serial port \"gps\"", "no fix"])
        .await;
    assert!(e.contains(&gps.path.display().to_string()), "{e}");
    rt.wait_value("sats", num(3.0)).await;

    // The fix comes back.
    gps.write(nmea("GPGGA,120003,3500.000,N,12900.000,E,2,11,0.8,12.0,M,20.1,M,,").as_bytes());
    rt.wait_value("loc", c.clone()).await;
    assert_eq!(rt.state("loc").status, Status::On);
    assert_eq!(rt.values("fix").await, vec![num(1.0), num(0.0), num(1.0)]);

    // Never the bad-checksum position, and nothing between losing the fix and regaining it.
    let readings = rt.readings().await;
    let lost_at = readings
        .iter()
        .position(|r| &*r.sensor_id == "fix" && r.value == num(0.0))
        .unwrap();
    for (i, r) in readings.iter().enumerate() {
        if &*r.sensor_id == "loc" {
            assert!(r.value == a || r.value == c, "{r:?}");
            if i > lost_at {
                assert_eq!(r.value, c, "a location after the fix was lost: {r:?}");
            }
        }
    }
    assert_eq!(counters.problems(ProblemKind::BadChecksum), 2);
    assert_eq!(counters.problems(ProblemKind::Malformed), 1);
    assert_eq!(Counters::get(&counters.lost), 0);
}

#[tokio::test]
async fn csv_json_and_regex_lines() {
    let ws = Pty::open();
    let wx = Pty::open();
    let rx = Pty::open();
    let cfg = config(&format!(
        "[serial.ws]\ndevice = \"{}\"\nformat = \"csv\"\ncolumns = [\"station\", \"temp\", \"hum\", \"state\"]\ndelimiter = \";\"\n\
         [serial.wx]\ndevice = \"{}\"\nformat = \"json\"\n\
         [serial.rx]\ndevice = \"{}\"\nformat = \"regex\"\nregex = 'T=(?<temp>-?[0-9.]+) H=(?<hum>[0-9]+)'\n{}{}{}{}{}{}{}{}",
        ws.path.display(),
        wx.path.display(),
        rx.path.display(),
        sensor("ws-temp", "temperature", "ws", "temp", "scale = 0.1\ninterval = \"50ms\""),
        sensor("ws-hum", "humidity", "ws", "hum", "interval = \"50ms\""),
        sensor("ws-state", "string", "ws", "state", "interval = \"50ms\""),
        sensor("wx-wind", "number", "wx", "wind.speed", "interval = \"50ms\""),
        sensor("wx-pos", "location", "wx", "pos", "interval = \"50ms\""),
        sensor("wx-name", "string", "wx", "name", "interval = \"50ms\""),
        sensor("rx-temp", "temperature", "rx", "temp", "interval = \"50ms\""),
        sensor("rx-hum", "humidity", "rx", "hum", "event = true"),
    ));
    let rt = Rt::new(&cfg);
    let mut counters = std::collections::HashMap::new();
    for p in &cfg.serial {
        let (_t, c) = spawn_port(p.clone(), cfg.sensors.clone(), rt.clone_rt());
        counters.insert(p.name.clone(), c);
    }

    // CSV: a header (ignored), values with scale and integer rounding, text.
    ws.write(b"station;temp;hum;state\r\nA1;215;47.6;ok\r\n");
    rt.wait_value("ws-temp", num(21.5)).await;
    rt.wait_value("ws-hum", num(48.0)).await;
    rt.wait_value("ws-state", text("ok")).await;
    // A cell that is not a number: that sensor is err, saying where and why.
    ws.write(b"A1;oops;47;ok\r\n");
    let e = rt
        .wait_error(
            "ws-temp",
            &["serial port \"ws\"", "\"temp\"", "not a number"],
        )
        .await;
    assert!(e.contains("oops"), "{e}");
    // A line of the wrong shape is counted; the next good one is used.
    ws.write(b"just one cell\r\nA1;220;48;rain\r\n");
    rt.wait_value("ws-temp", num(22.0)).await;
    rt.wait_value("ws-state", text("rain")).await;
    assert_eq!(counters["ws"].problems(ProblemKind::Malformed), 1);

    // JSON: dotted paths, objects passed through, text.
    wx.write(b"{\"name\":\"roof\",\"wind\":{\"speed\":3.5},\"pos\":{\"lat\":1.5,\"lng\":2.5}}\n");
    rt.wait_value("wx-wind", num(3.5)).await;
    rt.wait_value("wx-pos", Value::Json(json!({"lat": 1.5, "lng": 2.5})))
        .await;
    rt.wait_value("wx-name", text("roof")).await;
    wx.write(b"not json\n[1,2]\n{\"wind\":{\"speed\":4}}\n");
    rt.wait_value("wx-wind", num(4.0)).await;
    assert_eq!(counters["wx"].problems(ProblemKind::Malformed), 2);

    // Regex: named groups.
    rx.write(b"WS1 T=-3.5 H=81\r\n");
    rt.wait_value("rx-temp", num(-3.5)).await;
    rt.wait_value("rx-hum", num(81.0)).await;
    rx.write(b"xyz\r\nWS1 T=-4 H=80\r\n");
    rt.wait_value("rx-temp", num(-4.0)).await;
    rt.wait_value("rx-hum", num(80.0)).await;
    assert_eq!(counters["rx"].problems(ProblemKind::Malformed), 1);
    assert_eq!(rt.state("rx-hum").status, Status::On);
    // A series sensor whose field stops coming goes err after three intervals.
    rt.wait_error(
        "ws-temp",
        &["serial port \"ws\"", "no value for \"temp\" in 150ms"],
    )
    .await;
}

#[tokio::test]
async fn request_reply_instrument_with_a_missed_reply() {
    let meter = Pty::open();
    let cfg = config(&format!(
        "[serial.meter]\ndevice = \"{}\"\nformat = \"regex\"\nregex = 'P=(?<power>[0-9.]+)|E=(?<energy>[0-9]+)|V=(?<volt>[0-9.]+)'\nrequest = \"MEAS?\\r\\n\"\ninterval = \"100ms\"\nreply_timeout = \"500ms\"\n{}{}{}",
        meter.path.display(),
        sensor("power", "power", "meter", "power", ""),
        sensor("energy", "energy", "meter", "energy", ""),
        sensor("volt", "voltage", "meter", "volt", ""),
    ));
    let rt = Rt::new(&cfg);
    let (_task, counters) = spawn_port(cfg.serial[0].clone(), cfg.sensors.clone(), rt.clone_rt());

    // The instrument: answers each request with the next reading, unless silenced.
    let silent = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let inst = {
        let (silent, stop, requests) = (silent.clone(), stop.clone(), requests.clone());
        let master = meter.writer();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut pending = Vec::new();
            let mut k = 0;
            let mut buf = [0u8; 256];
            let mut master = master;
            while !stop.load(Ordering::Relaxed) {
                if !pty_readable(&master) {
                    continue;
                }
                let n = master.read(&mut buf).unwrap();
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                    let req: Vec<u8> = pending.drain(..end + 2).collect();
                    requests.lock().unwrap().push(req);
                    if !silent.load(Ordering::Relaxed) {
                        k += 1;
                        // A reply of two lines; it never gives "volt".
                        master
                            .write_all(format!("P={k}.5\r\nE={k}0\r\n").as_bytes())
                            .unwrap();
                    }
                }
            }
        })
    };

    rt.wait_value("power", num(1.5)).await;
    rt.wait_value("energy", num(10.0)).await;
    rt.wait_value("power", num(2.5)).await;
    rt.wait_value("energy", num(20.0)).await;
    rt.wait_error(
        "volt",
        &["serial port \"meter\"", "the reply has no field \"volt\""],
    )
    .await;
    assert_eq!(rt.state("energy").status, Status::On);
    silent.store(true, Ordering::Relaxed);
    let e = rt
        .wait_error(
            "power",
            &[
                "serial port \"meter\"",
                "no reply to the request within 500ms",
            ],
        )
        .await;
    assert!(e.contains(&meter.path.display().to_string()), "{e}");
    silent.store(false, Ordering::Relaxed);
    rt.wait_value("power", num(3.5)).await;
    assert_eq!(rt.state("power").status, Status::On);
    stop.store(true, Ordering::Relaxed);
    inst.join().unwrap();

    assert!(counters.problems(ProblemKind::NoReply) >= 1);
    let reqs = requests.lock().unwrap().clone();
    assert!(reqs.len() >= 4, "{reqs:?}");
    assert!(reqs.iter().all(|r| r == b"MEAS?\r\n"), "{reqs:?}");
    // Each reply is one reading, in order.
    let vals = rt.values("power").await;
    assert_eq!(&vals[..3], &[num(1.5), num(2.5), num(3.5)]);
}

fn pty_readable(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 50) > 0 }
}

#[tokio::test]
async fn garbage_and_a_1mib_line_without_newline() {
    let dev = Pty::open();
    let cfg = config(&format!(
        "[serial.dev]\ndevice = \"{}\"\nformat = \"json\"\nmax_line = \"4KiB\"\n{}",
        dev.path.display(),
        sensor("v", "number", "dev", "v", "event = true"),
    ));
    let rt = Rt::new(&cfg);
    let (_task, counters) = spawn_port(cfg.serial[0].clone(), cfg.sensors.clone(), rt.clone_rt());

    dev.write(b"{\"v\":1}\n");
    rt.wait_value("v", num(1.0)).await;

    // Binary noise (a fixed pseudo-random sequence), cut into short lines.
    let mut x: u32 = 12345;
    let mut noise = Vec::new();
    for i in 0..64 * 1024 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        noise.push((x >> 16) as u8);
        if i % 100 == 99 {
            noise.push(b'\n');
        }
    }
    noise.push(b'\n');
    let writer = dev.writer();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let mut w = writer;
        w.write_all(&noise).unwrap();
        // A device that never ends its line: 1 MiB without a newline.
        w.write_all(&vec![b'x'; 1 << 20]).unwrap();
        w.write_all(b"\n{\"v\":2}\n").unwrap();
    });
    rt.wait_value("v", num(2.0)).await;
    feeder.join().unwrap();

    assert_eq!(counters.problems(ProblemKind::Overlong), 1);
    assert!(counters.problems(ProblemKind::Malformed) > 100);
    assert_eq!(rt.values("v").await, vec![num(1.0), num(2.0)]);
    assert_eq!(rt.state("v").status, Status::On);
    // Never fatal: the port stayed open all along.
    assert_eq!(Counters::get(&counters.opened), 1);
    assert_eq!(Counters::get(&counters.lost), 0);
}

#[tokio::test]
async fn missing_at_start_unplugged_and_plugged_back() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyUSB-gps");
    let other = Pty::open();
    let cfg = config(&format!(
        "[serial.dev]\ndevice = \"{}\"\nformat = \"json\"\nreopen_min = \"20ms\"\nreopen_max = \"100ms\"\n\
         [serial.other]\ndevice = \"{}\"\nformat = \"json\"\n{}{}",
        link.display(),
        other.path.display(),
        sensor("v", "number", "dev", "v", "event = true"),
        sensor("w", "number", "other", "w", "event = true"),
    ));
    let rt = Rt::new(&cfg);
    let port = |name: &str| cfg.serial.iter().find(|p| p.name == name).unwrap().clone();
    let (_t1, counters) = spawn_port(port("dev"), cfg.sensors.clone(), rt.clone_rt());
    let (_t2, _) = spawn_port(port("other"), cfg.sensors.clone(), rt.clone_rt());

    // Missing at start: err, saying which port and why; the other port works.
    let e = rt
        .wait_error("v", &["serial port \"dev\"", "no such device"])
        .await;
    assert!(e.contains(&link.display().to_string()), "{e}");
    other.write(b"{\"w\":1}\n");
    rt.wait_value("w", num(1.0)).await;

    // Plugged in.
    let first = Pty::open();
    plug(&link, &first.path);
    first.write(b"{\"v\":1}\n");
    rt.wait_value("v", num(1.0)).await;
    assert_eq!(rt.state("v").status, Status::On);

    // Unplugged: the far end goes away.
    unplug(&link);
    drop(first);
    rt.wait_error("v", &["serial port \"dev\""]).await;
    eventually("the loss to be counted", async || {
        (Counters::get(&counters.lost) == 1).then_some(())
    })
    .await;
    other.write(b"{\"w\":2}\n");
    rt.wait_value("w", num(2.0)).await;
    assert_eq!(rt.state("w").status, Status::On);

    // Plugged back (a new pty, as a USB replug gives a new device behind the same name).
    let second = Pty::open();
    plug(&link, &second.path);
    second.write(b"{\"v\":2}\n");
    rt.wait_value("v", num(2.0)).await;
    assert_eq!(rt.state("v").status, Status::On);
    assert_eq!(Counters::get(&counters.opened), 2);
    assert_eq!(Counters::get(&counters.lost), 1);
}
