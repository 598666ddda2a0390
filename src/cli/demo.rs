//! `thingplus-gw demo`: the whole pipeline on this box, with no account and
//! no network. An embedded broker (rumqttd) on 127.0.0.1 stands in for
//! Thing+, a simulated cloud prints what arrives and sends a few commands,
//! and the real daemon reads this machine's sensors (or a clearly labelled
//! synthetic one) and drives an LED directory made for the demo.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::config::Config;
use crate::daemon::{self, Control};
use crate::thingplus::{compress, parse_values, Topics};

const DEMO_APIKEY: &str = "demo-apikey";
const MAX_REAL_SENSORS: usize = 6;

/// A sensor the demo found on this machine.
struct Found {
    id: String,
    path: PathBuf,
    label: String,
}

/// Readable temperature sensors: thermal zones and hwmon inputs.
fn find_sensors(gw: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let mut zones: Vec<_> = glob_dir("/sys/class/thermal", "thermal_zone");
    zones.sort();
    for z in zones {
        let p = z.join("temp");
        if readable_number(&p) {
            let kind = std::fs::read_to_string(z.join("type")).unwrap_or_default();
            out.push(Found {
                id: format!("{gw}-temperature-{}", out.len()),
                path: p,
                label: format!("thermal zone {}", kind.trim()),
            });
        }
    }
    let mut hwmons = glob_dir("/sys/class/hwmon", "hwmon");
    hwmons.sort();
    for h in hwmons {
        let name = std::fs::read_to_string(h.join("name")).unwrap_or_default();
        let mut inputs: Vec<_> = std::fs::read_dir(&h)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                        n.starts_with("temp") && n.ends_with("_input")
                    })
                    .collect()
            })
            .unwrap_or_default();
        inputs.sort();
        for p in inputs {
            if readable_number(&p) {
                out.push(Found {
                    id: format!("{gw}-temperature-{}", out.len()),
                    label: format!(
                        "hwmon {} {}",
                        name.trim(),
                        p.file_name().unwrap().to_string_lossy()
                    ),
                    path: p,
                });
            }
        }
    }
    out.truncate(MAX_REAL_SENSORS);
    out
}

fn glob_dir(dir: &str, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn readable_number(p: &Path) -> bool {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .is_some()
}

fn hhmmss(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn start_broker(port: u16) -> Result<(), String> {
    let text = format!(
        r#"id = 0
[router]
id = 0
max_connections = 16
max_outgoing_packet_count = 200
max_segment_size = 10485760
max_segment_count = 4

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                eprintln!("demo broker stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    // Ready when it accepts connections.
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("the embedded broker did not start listening".into())
}

fn make_led(dir: &Path) -> std::io::Result<PathBuf> {
    let led = dir.join("leds/demo:green:status");
    std::fs::create_dir_all(&led)?;
    for (f, v) in [
        ("brightness", "0"),
        ("max_brightness", "1"),
        ("trigger", "none"),
        ("delay_on", "0"),
        ("delay_off", "0"),
    ] {
        std::fs::write(led.join(f), v)?;
    }
    Ok(led)
}

fn led_state(led: &Path) -> String {
    let r = |f: &str| {
        std::fs::read_to_string(led.join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    match r("trigger").as_str() {
        "timer" => format!(
            "blinking ({} ms on / {} ms off)",
            r("delay_on"),
            r("delay_off")
        ),
        _ => format!("brightness {}", r("brightness")),
    }
}

pub fn run(duration: Option<Duration>) -> ExitCode {
    // The demo's own output is the point; keep library logs to what matters
    // (the embedded broker's are noise here).
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn,thingplus_gw=info,rumqttd=off");
    }
    crate::logging::init(None);
    match demo(duration) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(duration: Option<Duration>) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("thingplus-gw-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let gw = "demo-gateway";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    start_broker(port)?;

    let found = find_sensors(gw);
    let synthetic = dir.join("synthetic-temperature");
    let mut sensors = String::new();
    println!(
        "thingplus-gw demo: embedded broker on 127.0.0.1:{port}, files in {}",
        dir.display()
    );
    if found.is_empty() {
        println!("  no readable thermal zone or hwmon sensor here: using a SYNTHETIC temperature (a sine wave written to {})", synthetic.display());
        std::fs::write(&synthetic, "21000\n").map_err(|e| e.to_string())?;
        let _ = writeln!(
            sensors,
            "[[sensor]]\nid = \"{gw}-synthetic-temperature-0\"\ntype = \"temperature\"\npath = \"{}\"\nscale = 0.001\ninterval = \"1s\"\n",
            synthetic.display()
        );
    }
    for f in &found {
        println!("  sensor {} <- {} ({})", f.id, f.path.display(), f.label);
        let _ = writeln!(
            sensors,
            "[[sensor]]\nid = \"{}\"\ntype = \"temperature\"\npath = \"{}\"\nscale = 0.001\ninterval = \"1s\"\n",
            f.id,
            f.path.display()
        );
    }
    let led = make_led(&dir).map_err(|e| e.to_string())?;
    println!(
        "  actuator {gw}-led-0 -> {} (an LED directory made for the demo)",
        led.display()
    );
    let config_text = format!(
        r#"[gateway]
id = "{gw}"
apikey = "{DEMO_APIKEY}"
report_interval = "5s"
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"
port = {port}
tls = false
reconnect_min = "1s"
reconnect_max = "5s"

[buffer]
dir = "{state}/buffer"

{sensors}
[[actuator]]
id = "{gw}-led-0"
type = "led"
path = "{led}"
"#,
        state = dir.join("state").display(),
        led = led.display(),
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, &config_text).map_err(|e| e.to_string())?;
    let mut config = Config::load(&config_path).map_err(|e| e.to_string())?;
    // Short intervals are the point of a demo; do not warn about them.
    config.warnings.clear();
    println!(
        "  config: {} (report interval 5 s: the real service needs >= 60 s)\n",
        config_path.display()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let control = Control::new();
        let daemon_task = tokio::spawn(daemon::run(config, control.clone()));
        let cloud = tokio::spawn(simulated_cloud(
            gw.to_string(),
            port,
            led.clone(),
            synthetic.clone(),
            found.is_empty(),
        ));
        let until = duration.unwrap_or(Duration::from_secs(86_400 * 365 * 100));
        tokio::select! {
            _ = tokio::time::sleep(until) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        println!(
            "\nstopping: the gateway delivers what is pending, publishes \"off\" and disconnects"
        );
        control.stop();
        let r = daemon_task.await;
        // Let the cloud print the goodbye.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cloud.abort();
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Subscribes to everything of the gateway, prints it, and plays the
/// server's part: timeSync, setProperty, an LED command, swInfo.
async fn simulated_cloud(
    gw: String,
    port: u16,
    led: PathBuf,
    synthetic: PathBuf,
    write_synthetic: bool,
) {
    let topics = Topics::new(&gw);
    let mut o = MqttOptions::new("demo-cloud", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(o, 64);
    let _ = client
        .subscribe(format!("{}/#", topics.values), QoS::AtLeastOnce)
        .await;

    let script = {
        let client = client.clone();
        let req = topics.request.clone();
        let led = led.clone();
        let led_id = format!("{gw}-led-0");
        async move {
            let steps = [
                (
                    3u64,
                    json!({"id":"1","method":"timeSync","params":{"time": crate::clock::system_now_ms()}}),
                ),
                (
                    3,
                    json!({"id":"2","method":"setProperty","params":{"reportInterval": 3000}}),
                ),
                (
                    3,
                    json!({"id":"3","method":"controlActuator","params":{"id": led_id, "cmd":"blink","options":{"interval": 250, "duration": 4000}}}),
                ),
                (3, json!({"id":"4","method":"swInfo"})),
            ];
            for (wait, mut body) in steps {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                if body["method"] == "timeSync" {
                    body["params"]["time"] = json!(crate::clock::system_now_ms());
                }
                println!("[cloud] -> request {}", body);
                let _ = client
                    .publish(req.clone(), QoS::AtLeastOnce, false, body.to_string())
                    .await;
                if body["method"] == "controlActuator" {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    println!("[box]   LED is now {}", led_state(&led));
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            println!("[box]   LED after its 4 s blink: {}", led_state(&led));
        }
    };
    tokio::spawn(script);
    tokio::spawn(async move {
        if !write_synthetic {
            return;
        }
        let mut t = 0f64;
        loop {
            let v = 21.0 + 3.0 * (t / 10.0).sin();
            let _ = std::fs::write(&synthetic, format!("{}\n", (v * 1000.0).round() as i64));
            t += 1.0;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let mut received = 0usize;
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Like Thing+, take gzip payloads by their magic ([mqtt] compress).
                let payload = match compress::decode(&p.payload, 16 << 20) {
                    Ok(b) => b.into_owned(),
                    Err(e) => {
                        println!("[cloud] {}: bad gzip payload: {e}", p.topic);
                        continue;
                    }
                };
                let text = String::from_utf8_lossy(&payload).into_owned();
                if p.topic == topics.mqtt_status {
                    println!("[cloud] connection status: {text}");
                } else if p.topic == topics.status {
                    println!("[cloud] status: {text}");
                } else if p.topic == topics.response {
                    println!("[cloud] <- response {text}");
                } else if p.topic == topics.values {
                    match parse_values(&payload) {
                        Ok(readings) => {
                            received += readings.len();
                            let mut by_sensor: Vec<(String, usize, String)> = Vec::new();
                            for r in &readings {
                                let v = format!(
                                    "{} at {}",
                                    r.value.to_json_string(),
                                    hhmmss(r.time_ms)
                                );
                                match by_sensor.iter_mut().find(|(id, _, _)| **id == *r.sensor_id) {
                                    Some(e) => {
                                        e.1 += 1;
                                        e.2 = v;
                                    }
                                    None => by_sensor.push((r.sensor_id.to_string(), 1, v)),
                                }
                            }
                            for (id, n, last) in by_sensor {
                                println!("[cloud] values: {id}: {n} reading(s), latest {last} (UTC)  [total {received}]");
                            }
                        }
                        Err(e) => println!("[cloud] values message not understood: {e}"),
                    }
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
