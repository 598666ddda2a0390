//! Test harness: a real Mosquitto on free local ports (plain and TLS, with
//! certificates generated here), the real daemon binary, and a "cloud"
//! client that records everything the gateway publishes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const GW: &str = "gw-test";
pub const APIKEY: &str = "key-test-5ecret";
pub const CLOUD_USER: &str = "cloud";
pub const CLOUD_PASS: &str = "cloud-pass";

/// A generous bound for anything the tests wait for: the machine is shared and slow.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn mosquitto_bin() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed: run `apt-get install -y mosquitto` (scripts/test.sh does it)"
    );
}

/// A CA and a server certificate for 127.0.0.1/localhost, as PEM files.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate for the gateway (CN = GW), signed by the same CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path, name: &str) -> Pki {
        Self::generate_for(dir, name, &["localhost", "127.0.0.1"])
    }

    /// A CA and a server certificate valid for `server_names` only.
    pub fn generate_for(dir: &Path, name: &str, server_names: &[&str]) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let srv_key = KeyPair::generate().unwrap();
        let mut srv_params = CertificateParams::new(
            server_names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        srv_params
            .distinguished_name
            .push(DnType::CommonName, server_names[0]);
        let srv = srv_params.signed_by(&srv_key, &ca, &ca_key).unwrap();
        let cli_key = KeyPair::generate().unwrap();
        let mut cli_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        cli_params.distinguished_name.push(DnType::CommonName, GW);
        let cli = cli_params.signed_by(&cli_key, &ca, &ca_key).unwrap();
        let pki = Pki {
            ca_cert: dir.join(format!("{name}-ca.pem")),
            server_cert: dir.join(format!("{name}-server.pem")),
            server_key: dir.join(format!("{name}-server.key")),
            client_cert: dir.join(format!("{name}-client.pem")),
            client_key: dir.join(format!("{name}-client.key")),
        };
        std::fs::write(&pki.client_cert, cli.pem()).unwrap();
        std::fs::write(&pki.client_key, cli_key.serialize_pem()).unwrap();
        std::fs::set_permissions(
            &pki.client_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(&pki.ca_cert, ca.pem()).unwrap();
        std::fs::write(&pki.server_cert, srv.pem()).unwrap();
        std::fs::write(&pki.server_key, srv_key.serialize_pem()).unwrap();
        pki
    }
}

/// A Mosquitto broker with a password file, a plain listener and a TLS listener.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub tls_port: u16,
    /// TLS listener that requires a client certificate; its CN is the username.
    pub cert_port: u16,
    pub pki: Pki,
    conf: PathBuf,
    pub dir: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_with_names(dir, &["localhost", "127.0.0.1"])
    }

    /// A broker whose TLS certificate names only `server_names`.
    pub fn start_with_names(dir: &Path, server_names: &[&str]) -> Mosquitto {
        Self::start_configured(dir, server_names, "")
    }

    /// A broker with `extra` lines in its configuration (general settings,
    /// such as `max_queued_messages 20000`).
    pub fn start_with_settings(dir: &Path, extra: &str) -> Mosquitto {
        Self::start_configured(dir, &["localhost", "127.0.0.1"], extra)
    }

    fn start_configured(dir: &Path, server_names: &[&str], extra: &str) -> Mosquitto {
        let dir = dir.join("mosquitto");
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki::generate_for(&dir, "broker", server_names);
        let passwd = dir.join("passwd");
        for (i, (user, pass)) in [(GW, APIKEY), (CLOUD_USER, CLOUD_PASS)].iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            cmd.arg("-b");
            if i == 0 {
                cmd.arg("-c");
            }
            let st = cmd
                .arg(&passwd)
                .arg(user)
                .arg(pass)
                .status()
                .expect("mosquitto_passwd");
            assert!(st.success());
        }
        let port = free_port();
        let tls_port = free_port();
        let cert_port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\npersistence false\n{extra}\n\
                 log_dest file {log}\nlog_type all\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 listener {cert_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\nuse_identity_as_username true\n",
                passwd = passwd.display(),
                log = dir.join("mosquitto.log").display(),
                ca = pki.ca_cert.display(),
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            tls_port,
            cert_port,
            pki,
            conf,
            dir,
        };
        m.restart();
        m
    }

    /// Starts the broker (again) on the same ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let deadline = Instant::now() + WAIT;
        loop {
            let mut child = Command::new(mosquitto_bin())
                .arg("-c")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start mosquitto");
            // Ready when both listeners accept; a port still held from the last run makes it exit.
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", self.tls_port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", self.cert_port)).is_ok()
                {
                    self.child = Some(child);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not start: see {}",
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto keeps exiting: see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the broker (SIGKILL: no goodbye to anybody) and waits for it.
    pub fn kill(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message the cloud saw.
#[derive(Clone, Debug)]
pub struct Msg {
    pub topic: String,
    /// As the sender packed it: gunzipped when it came gzip-compressed.
    pub payload: Vec<u8>,
    /// It came gzip-compressed (told by the gzip magic, as Thing+ does).
    pub gzip: bool,
    /// Its size on the wire.
    pub wire_len: usize,
    pub retain: bool,
    pub at: Instant,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.topic, self.text()))
    }
}

#[derive(Default)]
struct Inbox {
    msgs: Vec<Msg>,
    connacks: usize,
}

/// The simulated Thing+ cloud: subscribed to everything of the gateway.
pub struct Cloud {
    client: rumqttc::Client,
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
    /// Index of the next message `next` returns.
    cursor: usize,
}

impl Cloud {
    pub fn connect(port: u16) -> Cloud {
        let mut o = rumqttc::MqttOptions::new(format!("cloud-{}", free_port()), "127.0.0.1", port);
        o.set_credentials(CLOUD_USER, CLOUD_PASS);
        o.set_max_packet_size(16 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = rumqttc::Client::new(o, 64);
        let inbox: Arc<(Mutex<Inbox>, Condvar)> = Arc::default();
        let ib = inbox.clone();
        let sub = client.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        // Clean session: subscribe again after every connect.
                        let _ = sub.try_subscribe(format!("v/a/g/{GW}"), rumqttc::QoS::AtLeastOnce);
                        let _ =
                            sub.try_subscribe(format!("v/a/g/{GW}/#"), rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let (m, cv) = &*ib;
                        m.lock().unwrap().connacks += 1;
                        cv.notify_all();
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let (m, cv) = &*ib;
                        let gzip = thingplus_gw::thingplus::compress::is_gzip(&p.payload);
                        // Bad gzip stays as it came: the test's JSON check reports it.
                        let payload =
                            thingplus_gw::thingplus::compress::decode(&p.payload, 64 << 20)
                                .map_or_else(|_| p.payload.to_vec(), |b| b.into_owned());
                        m.lock().unwrap().msgs.push(Msg {
                            topic: p.topic.clone(),
                            payload,
                            gzip,
                            wire_len: p.payload.len(),
                            retain: p.retain,
                            at: Instant::now(),
                        });
                        cv.notify_all();
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let c = Cloud {
            client,
            inbox,
            cursor: 0,
        };
        c.wait_inbox(|ib| ib.connacks >= 1, "cloud subscription");
        c
    }

    fn wait_inbox(&self, mut pred: impl FnMut(&Inbox) -> bool, what: &str) {
        let (m, cv) = &*self.inbox;
        let deadline = Instant::now() + WAIT;
        let mut g = m.lock().unwrap();
        while !pred(&g) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Number of (re)subscriptions so far: grows by 1 after each reconnect.
    pub fn subscriptions(&self) -> usize {
        self.inbox.0.lock().unwrap().connacks
    }

    pub fn wait_subscriptions(&self, n: usize) {
        self.wait_inbox(|ib| ib.connacks >= n, "cloud re-subscription");
    }

    /// Every message so far.
    pub fn all(&self) -> Vec<Msg> {
        self.inbox.0.lock().unwrap().msgs.clone()
    }

    /// Waits for the next message (after the cursor) matching `pred`, and
    /// moves the cursor past it.
    pub fn next(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let mut found = None;
        let start = self.cursor;
        self.wait_inbox(
            |ib| {
                if let Some(i) = ib.msgs[start.min(ib.msgs.len())..].iter().position(&pred) {
                    found = Some((start + i, ib.msgs[start + i].clone()));
                    true
                } else {
                    false
                }
            },
            what,
        );
        let (i, m) = found.unwrap();
        self.cursor = i + 1;
        m
    }

    /// Waits for the next message on `topic`.
    pub fn next_on(&mut self, topic: &str) -> Msg {
        let t = topic.to_string();
        self.next(&format!("a message on {topic}"), move |m| m.topic == t)
    }

    /// Sends a request to the gateway and waits for the response with the same id.
    pub fn request(&mut self, id: &str, body: serde_json::Value) -> serde_json::Value {
        let mut req = body;
        req["id"] = serde_json::Value::String(id.to_string());
        self.client
            .publish(
                format!("v/a/g/{GW}/req"),
                rumqttc::QoS::AtLeastOnce,
                false,
                req.to_string(),
            )
            .unwrap();
        self.response(id)
    }

    /// Sends raw bytes as a request.
    pub fn request_raw(&mut self, payload: &[u8]) {
        self.client
            .publish(
                format!("v/a/g/{GW}/req"),
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .unwrap();
    }

    /// Waits for the response carrying `id` (any position after the cursor).
    pub fn response(&mut self, id: &str) -> serde_json::Value {
        let topic = format!("v/a/g/{GW}/res");
        let id = serde_json::Value::String(id.to_string());
        let m = self.next(&format!("response {id}"), move |m| {
            m.topic == topic
                && serde_json::from_slice::<serde_json::Value>(&m.payload)
                    .map(|v| v["id"] == id)
                    .unwrap_or(false)
        });
        m.json()
    }

    /// The values (time, value) of one sensor from every values message so far.
    pub fn values_of(&self, sensor_id: &str) -> Vec<(i64, serde_json::Value)> {
        let topic = format!("v/a/g/{GW}");
        let mut out = Vec::new();
        for m in self.all().iter().filter(|m| m.topic == topic) {
            if let Some(arr) = m.json().get(sensor_id).and_then(|a| a.as_array()) {
                for pair in arr.chunks(2) {
                    out.push((pair[0].as_i64().unwrap(), pair[1].clone()));
                }
            }
        }
        out
    }

    /// Waits until `pred` holds for the values of `sensor_id`.
    pub fn wait_values(
        &self,
        sensor_id: &str,
        what: &str,
        pred: impl Fn(&[(i64, serde_json::Value)]) -> bool,
    ) {
        let topic = format!("v/a/g/{GW}");
        self.wait_inbox(
            |ib| {
                let mut vals = Vec::new();
                for m in ib.msgs.iter().filter(|m| m.topic == topic) {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                        if let Some(arr) = v.get(sensor_id).and_then(|a| a.as_array()) {
                            for pair in arr.chunks(2) {
                                vals.push((pair[0].as_i64().unwrap_or(0), pair[1].clone()));
                            }
                        }
                    }
                }
                pred(&vals)
            },
            what,
        );
    }
}

/// The daemon binary running `run` with a config written to a temp dir.
pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_thingplus-gw")
}

/// A config for the test broker (plain TCP), with fast timings. `extra` is
/// appended (sensors, actuators, ...) and may add keys to [mqtt] via `mqtt_extra`.
pub fn config_text(dir: &Path, port: u16, mqtt_extra: &str, extra: &str) -> String {
    format!(
        r#"[gateway]
id = "{GW}"
apikey = "{APIKEY}"
report_interval = "1s"
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"
port = {port}
tls = false
reconnect_min = "1s"
reconnect_max = "2s"
connect_timeout = "5s"
{mqtt_extra}

[buffer]
dir = "{buffer}"

{extra}
"#,
        state = dir.join("state").display(),
        buffer = dir.join("buffer").display(),
    )
}

impl Daemon {
    pub fn spawn(dir: &Path, config: &str) -> Daemon {
        Self::spawn_with(dir, config, &[])
    }

    pub fn spawn_with(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        // The config holds the APIKEY: keep it private as an operator would.
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            // Each daemon its own control socket, so parallel tests never meet.
            .env("RUNTIME_DIRECTORY", dir.join("run"))
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn daemon");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let l = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_DAEMON_LOG").is_some() {
                    eprintln!("daemon: {line}");
                }
                let (m, cv) = &*l;
                m.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        Daemon {
            child,
            config: path,
            log,
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Lines at WARN level containing `needle`.
    pub fn count_warnings(&self, needle: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .count()
    }

    /// Waits until the log has at least `n` lines containing `needle`.
    pub fn wait_log_n(&self, needle: &str, n: usize) -> Instant {
        let (m, cv) = &*self.log;
        let deadline = Instant::now() + WAIT;
        let mut g = m.lock().unwrap();
        loop {
            if g.iter().filter(|l| l.contains(needle)).count() >= n {
                return Instant::now();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out waiting for {n} x {needle:?} in the daemon log:\n{}",
                    g.join("\n")
                );
            }
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Waits until `thingplus-gw status --json` says the session is
    /// connected (the state set on CONNACK), rather than for log wording.
    pub fn wait_connected(&self) -> serde_json::Value {
        let dir = self
            .config
            .parent()
            .expect("the config is in the test's directory");
        wait_status_json(dir, "the daemon connected to the broker", |v| {
            v["connected"] == serde_json::json!(true)
        })
    }

    pub fn wait_log(&self, needle: &str) -> Instant {
        self.wait_log_n(needle, 1)
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, bounded.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log_lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `thingplus-gw status --json` of the daemon in `dir` until `pred` holds.
pub fn wait_status_json(
    dir: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let socket = dir.join("run/control.sock");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, out, err) = run_cli(&["status", "--json", "--socket", socket.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v} {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the binary with arguments to completion; returns (status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The distinct times of `values`, checked to be strictly increasing once
/// re-sent duplicates (at-least-once delivery) are skipped.
pub fn strictly_increasing_dedup(values: &[(i64, serde_json::Value)]) -> Result<Vec<i64>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (t, _) in values {
        if !seen.insert(*t) {
            continue; // a message re-sent after a lost PUBACK: at-least-once
        }
        if let Some(last) = out.last() {
            if t <= last {
                return Err(format!("time {t} after {last}"));
            }
        }
        out.push(*t);
    }
    Ok(out)
}

/// Collects the log lines written while `f` runs on this thread.
pub fn with_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    (out, text)
}
