//! `thingplus-gw register` against a local HTTP server implementing the
//! Thing+ endpoints with recorded bodies, including 409, 401 and 471.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    username: String,
    apikey: String,
    body: Value,
}

type Handler = dyn Fn(&Req) -> (u16, Value) + Send + Sync;

/// A one-request-per-connection HTTP/1.1 server recording what it gets.
fn api_server(handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Req>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Arc<Mutex<Vec<Req>>> = Arc::default();
    let l = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let (mut len, mut username, mut apikey) = (0usize, String::new(), String::new());
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((h, ""));
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap(),
                    "username" => username = v.trim().to_string(),
                    "apikey" => apikey = v.trim().to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let req = Req {
                method,
                path,
                username,
                apikey,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
            let (status, reply) = handler(&req);
            l.lock().unwrap().push(req);
            let text = reply.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, log)
}

/// The recorded answers of a Thing+ service for gateway gw-test.
fn thingplus(req: &Req) -> (u16, Value) {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", p) if p.starts_with("/gateways/gw-test?") => (
            200,
            json!({"id":"gw-test","model":"34","autoCreateDiscoverable":"y"}),
        ),
        ("GET", "/gatewayModels/34") => (
            200,
            json!({"id":"34","model":"openHardwareCustom","deviceModels":[{
                "id":"jsonrpcFullV1.0","idTemplate":"{gatewayId}-{deviceAddress}","discoverable":"y",
                "sensors":[
                    {"network":"jsonrpc","driverName":"jsonrpcSensor","model":"jsonrpcTemp","type":"temperature","category":"sensor"},
                    {"network":"jsonrpc","driverName":"jsonrpcSensor","model":"jsonrpcHumi","type":"humidity","category":"sensor"},
                    {"network":"jsonrpc","driverName":"jsonrpcActuator","model":"jsonrpcLed","type":"led","category":"actuator"}
                ],"max":1}]}),
        ),
        ("GET", p) if p.starts_with("/sensorDrivers/") => (
            200,
            json!({"id": p.rsplit('=').next().unwrap(),"idTemplate":"{gatewayId}-{deviceAddress}-{type}-{sequence}"}),
        ),
        ("POST", "/gateways/gw-test/devices") => (201, json!({"id": req.body["reqId"]})),
        // The humidity sensor was registered before.
        ("POST", "/gateways/gw-test/sensors") if req.body["type"] == "humidity" => {
            (409, json!({"message":"exists"}))
        }
        ("POST", "/gateways/gw-test/sensors") => (201, json!({"id": req.body["reqId"]})),
        _ => (404, json!({})),
    }
}

fn config(dir: &std::path::Path, url: &str, sensors: &str) -> std::path::PathBuf {
    let text = config_text(
        dir,
        1883,
        "",
        &format!("[api]\nurl = \"{url}\"\n\n{sensors}"),
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const THINGS: &str = r#"
[[sensor]]
id = "{gateway_id}-0-temperature-0"
type = "temperature"
path = "/sys/class/thermal/thermal_zone0/temp"

[[sensor]]
id = "{gateway_id}-0-humidity"
type = "humidity"
path = "/tmp/h"

[[actuator]]
id = "{gateway_id}-0-led-0"
type = "led"
path = "/sys/class/leds/led0"
"#;

#[test]
fn register_creates_devices_then_sensors_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (url, log) = api_server(Box::new(thingplus));
    let cfg = config(dir.path(), &url, THINGS);

    // Dry run: the plan, and no POST.
    let (st, out, err) = run_cli(&["register", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert!(st.success(), "{out}{err}");
    assert!(out.contains("create device   gw-test-0"), "{out}");
    assert!(
        out.contains("create sensor   gw-test-0-temperature-0"),
        "{out}"
    );
    assert!(out.contains("create actuator gw-test-0-led-0"), "{out}");
    assert!(out.contains("dry run: nothing was created"), "{out}");
    assert!(log.lock().unwrap().iter().all(|r| r.method == "GET"));

    let (st, out, err) = run_cli(&["register", "--config", cfg.to_str().unwrap()]);
    assert!(st.success(), "{out}{err}");
    assert!(
        out.contains("3 created, 1 already there, 0 skipped"),
        "{out}"
    );
    let reqs = log.lock().unwrap().clone();
    // Every request authenticates with the gateway id and APIKEY headers.
    assert!(reqs.iter().all(|r| r.username == GW && r.apikey == APIKEY));
    let posts: Vec<_> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts[0].path, "/gateways/gw-test/devices");
    assert_eq!(
        posts[0].body,
        json!({"reqId":"gw-test-0","name":"gw-test device 0","model":"jsonrpcFullV1.0"})
    );
    assert_eq!(
        posts[1].body,
        json!({"reqId":"gw-test-0-temperature-0","category":"sensor","type":"temperature","model":"jsonrpcTemp",
               "driverName":"jsonrpcSensor","network":"jsonrpc","name":"gw-test-0-temperature-0","deviceId":"gw-test-0"})
    );
    assert_eq!(posts[3].body["category"], json!("actuator"));
    assert_eq!(posts[3].body["model"], json!("jsonrpcLed"));
    // The driver was asked for once, not per sensor.
    let driver_gets = reqs
        .iter()
        .filter(|r| r.path.contains("filter[id]=jsonrpcSensor"))
        .count();
    assert_eq!(
        driver_gets, 2,
        "once for the dry run, once for the real run"
    );
}

#[test]
fn register_explains_401_and_471_and_odd_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = api_server(Box::new(|_| (401, json!({"message":"Unauthorized"}))));
    let cfg = config(dir.path(), &url, THINGS);
    let (st, _, err) = run_cli(&["register", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1));
    assert!(
        err.contains("401 unauthorized") && err.contains("APIKEY"),
        "{err}"
    );
    assert!(!err.contains(APIKEY), "the key itself is never printed");

    let (url, _) = api_server(Box::new(|r| {
        if r.method == "POST" && r.path.ends_with("/sensors") {
            (471, json!({}))
        } else {
            thingplus(r)
        }
    }));
    let cfg = config(dir.path(), &url, THINGS);
    let (st, _, err) = run_cli(&["register", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("service plan"), "{err}");

    // An id outside the driver's template, and a type the model does not offer, are skipped with reasons.
    let (url, _) = api_server(Box::new(thingplus));
    let odd = "[[sensor]]\nid = \"kitchen\"\ntype = \"temperature\"\npath = \"/a\"\n\n[[sensor]]\nid = \"{gateway_id}-0-co2-0\"\ntype = \"co2\"\npath = \"/b\"\n";
    let cfg = config(dir.path(), &url, odd);
    let (st, out, _) = run_cli(&["register", "--config", cfg.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1));
    assert!(
        out.contains("skip   kitchen: the id does not follow the driver's template"),
        "{out}"
    );
    assert!(out.contains("offers no sensor of type \"co2\""), "{out}");
    // `check` warns about the odd id too.
    let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(st.success());
    assert!(
        err.contains("sensor id \"kitchen\" does not follow the Thing+ templates"),
        "{err}"
    );
}

/// `check` warns about an id that fits none of the templates the daemon
/// knows, sensor or actuator, and names the templates; not about ids that
/// fit one (`{type}-{gatewayId}-{sequence}` included).
#[test]
fn check_warns_only_about_ids_outside_every_known_template() {
    let dir = tempfile::tempdir().unwrap();
    let things = r#"
[[sensor]]
id = "kitchen"
type = "temperature"
path = "/a"

[[sensor]]
id = "temperature-{gateway_id}-0"
type = "temperature"
path = "/b"

[[sensor]]
id = "{gateway_id}-humidity-0"
type = "humidity"
path = "/c"

[[sensor]]
id = "{gateway_id}-0-light-0"
type = "light"
path = "/d"

[[actuator]]
id = "relay"
type = "powerSwitch"
path = "/e"

[[actuator]]
id = "led-{gateway_id}-0"
type = "led"
path = "/sys/class/leds/led0"
"#;
    let cfg = config(dir.path(), "http://127.0.0.1:9", things);
    let (st, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("does not follow the Thing+ templates"))
        .collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].starts_with("warning: sensor id \"kitchen\" does not follow the Thing+ templates {gatewayId}-{deviceAddress}-{type}-{sequence}, {gatewayId}-{type}-{sequence}, {type}-{gatewayId}-{sequence}"),
        "{err}"
    );
    assert!(
        warnings[1]
            .starts_with("warning: actuator id \"relay\" does not follow the Thing+ templates"),
        "{err}"
    );
    assert!(warnings[1].contains("\"gw-test-powerSwitch-0\""), "{err}");
}
