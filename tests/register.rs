//! `thingplus-gw register` against a local HTTP server implementing the
//! Thing+ endpoints with recorded bodies: the real API's ways (lists of
//! what exists, 409 for a duplicate, autoCreateDiscoverable given) and
//! those of Daliworks' test server (400 "duplicated reqId", the field left
//! out), lists it does not offer, 401, 471 and other errors with text.

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

/// A Thing+ service for gateway gw-test that remembers what is created.
#[derive(Clone)]
struct Service {
    /// autoCreateDiscoverable in the gateway's answer: "y", "n", or left out.
    auto_create: Option<&'static str>,
    /// The answer to creating what exists: 409 (the API), or 400 with the
    /// text "duplicated reqId" (Daliworks' test server).
    duplicate: u16,
    /// Whether `GET /gateways/gw-test/devices` and `/sensors` answer (else 404).
    lists: bool,
    /// An id whose creation fails with this status and text.
    reject: Option<(&'static str, u16, Value)>,
    devices: Arc<Mutex<Vec<String>>>,
    sensors: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn new() -> Self {
        Service {
            auto_create: Some("y"),
            duplicate: 409,
            lists: true,
            reject: None,
            devices: Arc::default(),
            sensors: Arc::default(),
        }
    }

    /// The same service with `devices` and `sensors` registered before.
    fn having(self, devices: &[&str], sensors: &[&str]) -> Self {
        self.devices
            .lock()
            .unwrap()
            .extend(devices.iter().map(|s| s.to_string()));
        self.sensors
            .lock()
            .unwrap()
            .extend(sensors.iter().map(|s| s.to_string()));
        self
    }

    fn serve(&self) -> (String, Arc<Mutex<Vec<Req>>>) {
        let s = self.clone();
        api_server(Box::new(move |r| s.answer(r)))
    }

    fn answer(&self, req: &Req) -> (u16, Value) {
        let list = |l: &Mutex<Vec<String>>| {
            let items: Vec<Value> = l
                .lock()
                .unwrap()
                .iter()
                .map(|id| json!({"id": id, "owner": GW}))
                .collect();
            if self.lists {
                (200, Value::Array(items))
            } else {
                (404, json!({"error": "not found"}))
            }
        };
        let create = |l: &Mutex<Vec<String>>| {
            let id = req.body["reqId"].as_str().unwrap().to_string();
            if let Some((_, status, text)) = self.reject.as_ref().filter(|r| r.0 == id) {
                return (*status, text.clone());
            }
            let mut l = l.lock().unwrap();
            if l.contains(&id) {
                return match self.duplicate {
                    409 => (409, json!({"message": "already exists"})),
                    s => (s, json!({"error": "duplicated reqId"})),
                };
            }
            l.push(id.clone());
            (201, json!({"id": id}))
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", p) if p.starts_with("/gateways/gw-test?") => {
                let mut g = json!({"id": GW, "model": "34"});
                if let Some(y) = self.auto_create {
                    g["autoCreateDiscoverable"] = json!(y);
                }
                (200, g)
            }
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
            ("GET", "/gateways/gw-test/devices") => list(&self.devices),
            ("GET", "/gateways/gw-test/sensors") => list(&self.sensors),
            ("POST", "/gateways/gw-test/devices") => create(&self.devices),
            ("POST", "/gateways/gw-test/sensors") => create(&self.sensors),
            _ => (404, json!({})),
        }
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

fn register(cfg: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["register", "--config", cfg.to_str().unwrap()];
    args.extend(extra);
    let (st, out, err) = run_cli(&args);
    (st.code(), out, err)
}

fn posts(log: &Mutex<Vec<Req>>) -> Vec<Req> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "POST")
        .cloned()
        .collect()
}

#[test]
fn register_creates_devices_then_sensors_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::new();
    let (url, log) = service.serve();
    let cfg = config(dir.path(), &url, THINGS);

    // Dry run: the plan, and no POST.
    let (code, out, err) = register(&cfg, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("create device   gw-test-0"), "{out}");
    assert!(
        out.contains("create sensor   gw-test-0-temperature-0"),
        "{out}"
    );
    assert!(out.contains("create actuator gw-test-0-led-0"), "{out}");
    assert!(
        out.contains("dry run: nothing was created (4 to create, 0 existing"),
        "{out}"
    );
    assert!(posts(&log).is_empty());

    let (code, out, err) = register(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    for line in [
        "created device   gw-test-0",
        "created sensor   gw-test-0-temperature-0",
        "created sensor   gw-test-0-humidity",
        "created actuator gw-test-0-led-0",
        "4 created, 0 existed, 0 failed",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    let reqs = log.lock().unwrap().clone();
    // Every request authenticates with the gateway id and APIKEY headers.
    assert!(reqs.iter().all(|r| r.username == GW && r.apikey == APIKEY));
    let posts1 = posts(&log);
    assert_eq!(posts1.len(), 4);
    assert_eq!(posts1[0].path, "/gateways/gw-test/devices");
    assert_eq!(
        posts1[0].body,
        json!({"reqId":"gw-test-0","name":"gw-test device 0","model":"jsonrpcFullV1.0"})
    );
    assert_eq!(
        posts1[1].body,
        json!({"reqId":"gw-test-0-temperature-0","category":"sensor","type":"temperature","model":"jsonrpcTemp",
               "driverName":"jsonrpcSensor","network":"jsonrpc","name":"gw-test-0-temperature-0","deviceId":"gw-test-0"})
    );
    assert_eq!(posts1[3].body["category"], json!("actuator"));
    assert_eq!(posts1[3].body["model"], json!("jsonrpcLed"));
    // The driver was asked for once, not per sensor.
    let driver_gets = reqs
        .iter()
        .filter(|r| r.path.contains("filter[id]=jsonrpcSensor"))
        .count();
    assert_eq!(
        driver_gets, 2,
        "once for the dry run, once for the real run"
    );

    // Again: everything is listed as existing; nothing is posted.
    let (code, out, err) = register(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("existed device   gw-test-0\n"), "{out}");
    assert!(out.contains("0 created, 4 existed, 0 failed"), "{out}");
    assert_eq!(posts(&log).len(), 4, "no create for what exists");
}

#[test]
fn register_creates_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::new().having(&["gw-test-0"], &["gw-test-0-humidity"]);
    let (url, log) = service.serve();
    let cfg = config(dir.path(), &url, THINGS);

    let (code, out, _) = register(&cfg, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("exists device   gw-test-0\n"), "{out}");
    assert!(
        out.contains("exists sensor   gw-test-0-humidity\n"),
        "{out}"
    );
    assert!(
        out.contains("create sensor   gw-test-0-temperature-0"),
        "{out}"
    );
    assert!(out.contains("(2 to create, 2 existing, 0 cannot"), "{out}");

    let (code, out, err) = register(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("existed device   gw-test-0\n"), "{out}");
    assert!(
        out.contains("existed sensor   gw-test-0-humidity\n"),
        "{out}"
    );
    assert!(out.contains("2 created, 2 existed, 0 failed"), "{out}");
    let ids: Vec<_> = posts(&log)
        .iter()
        .map(|r| r.body["reqId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["gw-test-0-temperature-0", "gw-test-0-led-0"]);
}

/// Daliworks' test server: no autoCreateDiscoverable in the gateway's
/// answer; and servers that do not list: each create is tried, and a
/// duplicate (409, or 400 "duplicated reqId") counts as existing.
#[test]
fn register_without_lists_or_the_auto_create_field_tries_and_lets_the_server_decide() {
    for duplicate in [409, 400] {
        let dir = tempfile::tempdir().unwrap();
        let mut service = Service::new().having(&["gw-test-0"], &["gw-test-0-humidity"]);
        service.auto_create = None;
        service.duplicate = duplicate;
        service.lists = false;
        let (url, log) = service.serve();
        let cfg = config(dir.path(), &url, THINGS);
        let (code, out, err) = register(&cfg, &[]);
        assert_eq!(code, Some(0), "{duplicate}: {out}{err}");
        for line in [
            "note: gateway gw-test does not say whether it allows creating discovered devices and sensors",
            "note: cannot list the gateway's devices (HTTP 404: not found)",
            "note: cannot list the gateway's sensors (HTTP 404: not found)",
            "created sensor   gw-test-0-temperature-0\n",
            "created actuator gw-test-0-led-0\n",
            "2 created, 2 existed, 0 failed",
        ] {
            assert!(out.contains(line), "{duplicate}: {line:?} in:\n{out}");
        }
        let said = if duplicate == 409 {
            "HTTP 409 already exists"
        } else {
            "HTTP 400 duplicated reqId"
        };
        assert!(
            out.contains(&format!(
                "existed device   gw-test-0 (the server answered {said})"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "existed sensor   gw-test-0-humidity (the server answered {said})"
            )),
            "{out}"
        );
        assert_eq!(posts(&log).len(), 4, "each is tried once");
        assert_eq!(service.sensors.lock().unwrap().len(), 3);
    }
}

#[test]
fn register_reports_failures_with_the_servers_text_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::new();
    service.reject = Some(("gw-test-0-led-0", 400, json!({"error": "invalid model"})));
    let (url, _) = service.serve();
    let cfg = config(dir.path(), &url, THINGS);
    let (code, out, err) = register(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("FAILED  actuator gw-test-0-led-0: creating actuator gw-test-0-led-0: HTTP 400 (the server said: invalid model)"),
        "{out}"
    );
    assert!(out.contains("3 created, 0 existed, 1 failed"), "{out}");
    assert!(!out.contains("created actuator"), "{out}");

    // A device that cannot be created: its sensors are not tried.
    let mut service = Service::new();
    service.reject = Some(("gw-test-0", 500, json!({"message": "database unavailable"})));
    let (url, log) = service.serve();
    let cfg = config(dir.path(), &url, THINGS);
    let (code, out, err) = register(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("FAILED  device   gw-test-0: creating device gw-test-0: HTTP 500 (the server said: database unavailable)"),
        "{out}"
    );
    assert!(
        out.contains("FAILED  sensor   gw-test-0-humidity: not tried: its device gw-test-0 could not be created"),
        "{out}"
    );
    assert!(out.contains("0 created, 0 existed, 4 failed"), "{out}");
    assert_eq!(posts(&log).len(), 1);
}

#[test]
fn register_refused_by_the_gateway_only_when_something_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::new().having(&["gw-test-0"], &["gw-test-0-humidity"]);
    service.auto_create = Some("n");
    let (url, log) = service.serve();
    let cfg = config(dir.path(), &url, THINGS);
    let (code, out, err) = register(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("gateway gw-test does not allow creating discovered devices and sensors (autoCreateDiscoverable is \"n\", not \"y\"): enable it in the Thing+ portal (2 to create)"),
        "{err}"
    );
    assert!(out.contains("existed sensor   gw-test-0-humidity"), "{out}");
    assert!(posts(&log).is_empty());

    // All there already: nothing to ask of the gateway, success.
    let only_humidity =
        "[[sensor]]\nid = \"{gateway_id}-0-humidity\"\ntype = \"humidity\"\npath = \"/tmp/h\"\n";
    let cfg = config(dir.path(), &url, only_humidity);
    let (code, out, err) = register(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 created, 2 existed, 0 failed"), "{out}");
}

#[test]
fn register_explains_401_and_471_and_odd_ids() {
    let dir = tempfile::tempdir().unwrap();
    // A server that echoes the key in its error text: never printed.
    let (url, _) = api_server(Box::new(|r| {
        (
            401,
            json!({"message": format!("Unauthorized: apikey {}", r.apikey)}),
        )
    }));
    let cfg = config(dir.path(), &url, THINGS);
    let (code, _, err) = register(&cfg, &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("401 unauthorized") && err.contains("APIKEY"),
        "{err}"
    );
    assert!(
        err.contains("(the server said: Unauthorized: apikey <APIKEY>)"),
        "{err}"
    );
    assert!(!err.contains(APIKEY), "the key itself is never printed");

    let service = Service::new();
    let s = service.clone();
    let (url, _) = api_server(Box::new(move |r| {
        if r.method == "POST" && r.path.ends_with("/sensors") {
            (471, json!({}))
        } else {
            s.answer(r)
        }
    }));
    let cfg = config(dir.path(), &url, THINGS);
    let (code, out, _) = register(&cfg, &[]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("FAILED  sensor   gw-test-0-humidity: creating sensor gw-test-0-humidity: 471: the service plan"),
        "{out}"
    );
    assert!(out.contains("1 created, 0 existed, 3 failed"), "{out}");

    // An id outside the driver's template, and a type the model does not
    // offer, cannot be registered: failures with reasons.
    let (url, _) = Service::new().serve();
    let odd = "[[sensor]]\nid = \"kitchen\"\ntype = \"temperature\"\npath = \"/a\"\n\n[[sensor]]\nid = \"{gateway_id}-0-co2-0\"\ntype = \"co2\"\npath = \"/b\"\n";
    let cfg = config(dir.path(), &url, odd);
    let (code, out, _) = register(&cfg, &["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("cannot register kitchen: the id does not follow the driver's template"),
        "{out}"
    );
    let (code, out, _) = register(&cfg, &[]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("FAILED  kitchen: the id does not follow the driver's template"),
        "{out}"
    );
    assert!(out.contains("offers no sensor of type \"co2\""), "{out}");
    assert!(out.contains("0 created, 0 existed, 2 failed"), "{out}");
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
