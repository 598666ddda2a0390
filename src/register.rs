//! Registration of the configured sensors and actuators with the Thing+
//! REST API, so an operator need not click through the portal: gateway
//! info, gateway model, sensor drivers, what the gateway already has, then
//! the devices and sensors still missing.
//!
//! Idempotent and tolerant of servers that differ: what the lists show is
//! not created again, and a create answered "already exists" (409, or 400
//! with a "duplicated" text as some servers say) counts as existing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::config::Config;

/// The id templates of the Thing+ drivers this daemon's sensors and
/// actuators fit, for `check` (`register` asks the API for each driver's own).
pub const KNOWN_ID_TEMPLATES: [&str; 3] = [
    "{gatewayId}-{deviceAddress}-{type}-{sequence}",
    "{gatewayId}-{type}-{sequence}",
    "{type}-{gatewayId}-{sequence}",
];

/// One device, sensor or actuator of the configuration, devices first.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub path: String,
    pub body: Json,
    /// "device", "sensor" or "actuator".
    pub what: String,
    pub id: String,
    /// The gateway already has it (its list says so): nothing to create.
    pub exists: bool,
    /// For a sensor or actuator: the device it belongs to.
    pub device: Option<String>,
}

/// What `plan` found.
#[derive(Debug, Default)]
pub struct Plan {
    pub items: Vec<Planned>,
    /// Ids that cannot be registered, with why (failures of the run).
    pub failed: Vec<(String, String)>,
    /// What the operator should know about how the plan was made (a list
    /// the server does not offer, a missing autoCreateDiscoverable).
    pub notes: Vec<String>,
    /// Why nothing may be created, when the gateway says so
    /// (autoCreateDiscoverable other than "y").
    pub refusal: Option<String>,
}

impl Plan {
    /// The things still to create.
    pub fn to_create(&self) -> impl Iterator<Item = &Planned> {
        self.items.iter().filter(|p| !p.exists)
    }
}

/// What became of one planned thing.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Created,
    /// Listed by the gateway before (`None`), or answered "already
    /// exists" (the status and the server's text).
    Existed(Option<String>),
    Failed(String),
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub created: Vec<String>,
    pub existed: Vec<String>,
    /// Ids that could not be registered, with the reason.
    pub failed: Vec<(String, String)>,
}

/// An HTTP answer: status, the body as text, and as JSON (Null when not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Json,
    pub text: String,
    /// Text that never goes into a message (the APIKEY, should a server
    /// echo the request's headers); "" for none.
    secret: String,
}

impl Answer {
    pub fn new(status: u16, text: String) -> Self {
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Json::Null),
            text,
            secret: String::new(),
        }
    }

    /// The same answer, with `secret` masked wherever its text is quoted.
    pub fn hiding(mut self, secret: &str) -> Self {
        self.secret = secret.to_string();
        self
    }
}

/// How to talk to the API: the real client, or a test double.
pub trait Http {
    fn get(&mut self, path: &str) -> Result<Answer, String>;
    fn post(&mut self, path: &str, body: &Json) -> Result<Answer, String>;
}

/// The REST base URL: `[api] url`, or the one matching `[mqtt]`'s host.
pub fn api_url(config: &Config) -> Result<String, String> {
    if let Some(u) = &config.api_url {
        return Ok(u.trim_end_matches('/').to_string());
    }
    match config.mqtt.host.as_str() {
        "mqtt.thingplus.net" => Ok("https://api.thingplus.net".into()),
        "mqtt.sandbox.thingplus.net" => Ok("https://api.sandbox.thingplus.net".into()),
        other => Err(format!(
            "no REST API known for the broker {other}: set [api] url = \"https://...\""
        )),
    }
}

/// Longest server text quoted in a message.
const SERVER_TEXT_MAX: usize = 300;

/// What the server said in an error answer: its `message` or `error`
/// field, or the body's text; "" when it said nothing.
pub fn server_text(a: &Answer) -> String {
    let field = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("message").and_then(Json::as_str).map(str::to_string),
        _ => None,
    };
    let text = field(&a.body["message"])
        .or_else(|| field(&a.body["error"]))
        .unwrap_or_else(|| match &a.body {
            Json::Object(o) if o.is_empty() => String::new(),
            _ => a.text.clone(),
        });
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !a.secret.is_empty() {
        text = text.replace(&a.secret, "<APIKEY>");
    }
    match text.char_indices().nth(SERVER_TEXT_MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// Explains an HTTP error answer in words, with the server's own text.
pub fn explain(a: &Answer, what: &str, gateway_id: &str) -> String {
    let said = server_text(a);
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(" (the server said: {said})")
    };
    match a.status {
        401 => format!("{what}: 401 unauthorized: the API refused gateway id {gateway_id} with this APIKEY; check [gateway] id and the APIKEY issued in the portal{said}"),
        403 => format!("{what}: 403 forbidden: this gateway's APIKEY may not do this; check its permissions in the portal{said}"),
        404 => format!("{what}: 404 not found: gateway {gateway_id} is not registered in this Thing+ service (register it in the portal first, or check [mqtt] service / [api] url){said}"),
        471 => format!("{what}: 471: the service plan does not allow more devices or sensors; upgrade the plan or remove some{said}"),
        s => format!("{what}: HTTP {s}{said}"),
    }
}

/// Whether an error answer to a create means "it exists already": 409, or
/// a 400 whose text says so (the Thing+ test server answers 400
/// "duplicated reqId").
pub fn is_duplicate(a: &Answer) -> bool {
    if a.status == 409 {
        return true;
    }
    let text = server_text(a).to_ascii_lowercase();
    a.status == 400 && (text.contains("duplicat") || text.contains("already exist"))
}

fn get_ok(http: &mut dyn Http, path: &str, what: &str, gw: &str) -> Result<Json, String> {
    let a = http.get(path)?;
    if a.status / 100 != 2 {
        return Err(explain(&a, what, gw));
    }
    Ok(a.body)
}

/// The ids in a list answer: a JSON array of objects with `id`, or an
/// object holding such an array under `data` or `items`.
fn listed_ids(body: &Json) -> Option<HashSet<String>> {
    let list = match body {
        Json::Array(a) => a,
        Json::Object(o) => o
            .get("data")
            .or_else(|| o.get("items"))
            .and_then(Json::as_array)?,
        _ => return None,
    };
    Some(
        list.iter()
            .filter_map(|e| e["id"].as_str().or(e["reqId"].as_str()))
            .map(str::to_string)
            .collect(),
    )
}

/// What the gateway already has of `kind` ("devices" or "sensors"); `None`
/// (with a note) when the server does not say: every create is then tried
/// and an "already exists" answer counts as existing.
fn existing(
    http: &mut dyn Http,
    gw: &str,
    kind: &str,
    notes: &mut Vec<String>,
) -> Result<Option<HashSet<String>>, String> {
    let a = http.get(&format!("/gateways/{gw}/{kind}"))?;
    if matches!(a.status, 401 | 403) {
        return Err(explain(&a, &format!("listing the gateway's {kind}"), gw));
    }
    let ids = if a.status / 100 == 2 {
        listed_ids(&a.body)
    } else {
        None
    };
    if ids.is_none() {
        let said = server_text(&a);
        let why = match (a.status / 100 == 2, said.is_empty()) {
            (true, _) => "the answer holds no list".to_string(),
            (false, true) => format!("HTTP {}", a.status),
            (false, false) => format!("HTTP {}: {said}", a.status),
        };
        notes.push(format!(
            "cannot list the gateway's {kind} ({why}): each is created, and \"already exists\" counts as existing"
        ));
    }
    Ok(ids)
}

/// Turns an id template such as `{gatewayId}-{deviceAddress}-{type}-{sequence}`
/// into a matcher; returns the device address found in `id` (or "" when the
/// template has none), or `None` when `id` does not fit.
pub fn match_template(
    template: &str,
    id: &str,
    gateway_id: &str,
    sensor_type: &str,
) -> Option<String> {
    let mut re = String::from("^");
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let (lit, tail) = rest.split_at(start);
        let Some(end) = tail.find('}') else { break };
        let name = &tail[1..end];
        // "-{sequence}" may be left out when there is one sensor of a type.
        if name == "sequence" && lit.ends_with('-') {
            re.push_str(&regex::escape(&lit[..lit.len() - 1]));
            re.push_str("(?:-[A-Za-z0-9_.~]+)?");
        } else {
            re.push_str(&regex::escape(lit));
            match name {
                "gatewayId" => re.push_str(&regex::escape(gateway_id)),
                "type" => re.push_str(&regex::escape(sensor_type)),
                "deviceAddress" => re.push_str("(?P<addr>[A-Za-z0-9_.~]+)"),
                _ => re.push_str("[A-Za-z0-9_.~]+"),
            }
        }
        rest = &tail[end + 1..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    let re = regex::Regex::new(&re).ok()?;
    let caps = re.captures(id)?;
    Some(
        caps.name("addr")
            .map_or(String::new(), |m| m.as_str().to_string()),
    )
}

/// What `thingplus-gw check` says of a sensor or actuator id (`kind`) that
/// fits none of [`KNOWN_ID_TEMPLATES`].
pub fn id_convention_warning(
    kind: &str,
    id: &str,
    gateway_id: &str,
    thing_type: &str,
) -> Option<String> {
    let fits = KNOWN_ID_TEMPLATES
        .iter()
        .any(|t| match_template(t, id, gateway_id, thing_type).is_some());
    (!fits).then(|| {
        format!(
            "{kind} id \"{id}\" does not follow the Thing+ templates {} (such as \"{gateway_id}-{thing_type}-0\"): `register` creates it only if its driver's template allows it",
            KNOWN_ID_TEMPLATES.join(", ")
        )
    })
}

/// Works out what to create: asks the API for the gateway, its model, the
/// drivers, and the devices and sensors it has already.
pub fn plan(config: &Config, http: &mut dyn Http) -> Result<Plan, String> {
    let gw = &config.gateway.id;
    let mut notes = Vec::new();
    let info = get_ok(
        http,
        &format!("/gateways/{gw}?fields=model&fields=autoCreateDiscoverable"),
        "reading the gateway",
        gw,
    )?;
    // Absent: the server did not say (some leave it out); the creates tell.
    let refusal = match &info["autoCreateDiscoverable"] {
        Json::Null => {
            notes.push(format!(
                "gateway {gw} does not say whether it allows creating discovered devices and sensors (no autoCreateDiscoverable): trying, the server's answers decide"
            ));
            None
        }
        Json::String(y) if y == "y" => None,
        other => Some(format!(
            "gateway {gw} does not allow creating discovered devices and sensors (autoCreateDiscoverable is {other}, not \"y\"): enable it in the Thing+ portal"
        )),
    };
    let model_id = match &info["model"] {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => return Err(format!("the gateway information has no model: {info}")),
    };
    let (device_model_id, device_template, sensor_models) = device_model(http, gw, &model_id)?;

    let mut things: Vec<(String, String, &str)> = config
        .sensors
        .iter()
        .map(|s| (s.id.clone(), s.sensor_type.clone(), "sensor"))
        .collect();
    things.extend(
        config
            .actuators
            .iter()
            .map(|a| (a.id.clone(), a.thingplus_type.clone(), "actuator")),
    );

    let mut drivers: HashMap<String, String> = HashMap::new();
    let mut devices: BTreeMap<String, Planned> = BTreeMap::new();
    let mut sensors = Vec::new();
    let mut failed = Vec::new();
    for (id, ty, category) in things {
        let Some(sm) = sensor_models.iter().find(|m| {
            m["type"].as_str() == Some(ty.as_str())
                && m["category"].as_str().unwrap_or("sensor") == category
        }) else {
            failed.push((
                id,
                format!("device model {device_model_id} offers no {category} of type \"{ty}\""),
            ));
            continue;
        };
        let driver = sm["driverName"].as_str().unwrap_or_default().to_string();
        let template = driver_template(http, gw, &mut drivers, &driver)?;
        let Some(mut address) = match_template(&template, &id, gw, &ty) else {
            failed.push((
                id,
                format!("the id does not follow the driver's template {template}"),
            ));
            continue;
        };
        if address.is_empty() {
            address = "0".into();
        }
        let device_id = device_template
            .replace("{gatewayId}", gw)
            .replace("{deviceAddress}", &address);
        devices.entry(device_id.clone()).or_insert_with(|| Planned {
            path: format!("/gateways/{gw}/devices"),
            body: json!({"reqId": device_id, "name": format!("{gw} device {address}"), "model": device_model_id}),
            what: "device".into(),
            id: device_id.clone(),
            exists: false,
            device: None,
        });
        sensors.push(Planned {
            path: format!("/gateways/{gw}/sensors"),
            body: json!({
                "reqId": id,
                "category": category,
                "type": ty,
                "model": sm["model"],
                "driverName": driver,
                "network": sm["network"],
                "name": id,
                "deviceId": device_id,
            }),
            what: category.to_string(),
            id,
            exists: false,
            device: Some(device_id),
        });
    }
    let mut items: Vec<Planned> = devices.into_values().collect();
    items.extend(sensors);
    if !items.is_empty() {
        mark_existing(http, gw, &mut items, &mut notes)?;
    }
    Ok(Plan {
        items,
        failed,
        notes,
        refusal,
    })
}

/// The gateway model's device model (the discoverable one, else the first):
/// its id, its device id template and the sensor models it offers.
fn device_model(
    http: &mut dyn Http,
    gw: &str,
    model_id: &str,
) -> Result<(String, String, Vec<Json>), String> {
    let model = get_ok(
        http,
        &format!("/gatewayModels/{model_id}"),
        "reading the gateway model",
        gw,
    )?;
    let device_models = model["deviceModels"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(device_model) = device_models
        .iter()
        .find(|d| d["discoverable"].as_str() == Some("y"))
        .or(device_models.first())
    else {
        return Err(format!("gateway model {model_id} has no device model"));
    };
    let device_model_id = device_model["id"].as_str().unwrap_or_default().to_string();
    let device_template = device_model["idTemplate"]
        .as_str()
        .unwrap_or("{gatewayId}-{deviceAddress}")
        .to_string();
    let sensor_models = device_model["sensors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok((device_model_id, device_template, sensor_models))
}

/// The id template of sensor driver `driver`, asked of the API once per
/// driver (`drivers` keeps the answers).
fn driver_template(
    http: &mut dyn Http,
    gw: &str,
    drivers: &mut HashMap<String, String>,
    driver: &str,
) -> Result<String, String> {
    if let Some(t) = drivers.get(driver) {
        return Ok(t.clone());
    }
    let d = get_ok(
        http,
        &format!("/sensorDrivers/?filter[id]={driver}"),
        "reading a sensor driver",
        gw,
    )?;
    // One object, or a list holding it.
    let d = match d {
        Json::Array(a) => a.into_iter().next().unwrap_or(Json::Null),
        d => d,
    };
    let t = d["idTemplate"]
        .as_str()
        .unwrap_or("{gatewayId}-{deviceAddress}-{type}-{sequence}")
        .to_string();
    drivers.insert(driver.to_string(), t.clone());
    Ok(t)
}

/// Marks the planned devices and sensors the gateway already has.
fn mark_existing(
    http: &mut dyn Http,
    gw: &str,
    items: &mut [Planned],
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let have_devices = existing(http, gw, "devices", notes)?;
    let have_sensors = existing(http, gw, "sensors", notes)?;
    for p in items {
        let have = if p.what == "device" {
            &have_devices
        } else {
            &have_sensors
        };
        p.exists = have.as_ref().is_some_and(|h| h.contains(&p.id));
    }
    Ok(())
}

/// Creates what the plan lists as missing, in order, telling `report` what
/// became of each planned thing (existing ones included). A sensor whose
/// device could not be created is not tried. Stops only when the server
/// cannot be reached.
pub fn apply(
    plan: &[Planned],
    http: &mut dyn Http,
    gw: &str,
    report: &mut dyn FnMut(&Planned, &Step),
) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let mut failed_devices = HashSet::new();
    for p in plan {
        let step = if p.exists {
            Step::Existed(None)
        } else if let Some(d) = p.device.as_ref().filter(|d| failed_devices.contains(*d)) {
            Step::Failed(format!("not tried: its device {d} could not be created"))
        } else {
            let a = http.post(&p.path, &p.body)?;
            match a.status {
                200..=299 => Step::Created,
                _ if is_duplicate(&a) => Step::Existed(Some(
                    format!("HTTP {} {}", a.status, server_text(&a))
                        .trim_end()
                        .to_string(),
                )),
                _ => Step::Failed(explain(&a, &format!("creating {} {}", p.what, p.id), gw)),
            }
        };
        report(p, &step);
        match step {
            Step::Created => out.created.push(p.id.clone()),
            Step::Existed(_) => out.existed.push(p.id.clone()),
            Step::Failed(why) => {
                if p.what == "device" {
                    failed_devices.insert(p.id.clone());
                }
                out.failed.push((p.id.clone(), why));
            }
        }
    }
    Ok(out)
}

/// The real HTTPS client: rustls with the system trust store.
pub struct UreqHttp {
    agent: ureq::Agent,
    base: String,
    username: String,
    apikey: String,
}

impl UreqHttp {
    pub fn new(base: &str, username: &str, apikey: &str) -> Self {
        crate::tls::install_crypto_provider();
        let certs: Vec<ureq::tls::Certificate<'static>> = rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        UreqHttp {
            agent,
            base: base.to_string(),
            username: username.to_string(),
            apikey: apikey.to_string(),
        }
    }

    fn answer(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        url: &str,
    ) -> Result<Answer, String> {
        let mut r = r.map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        Ok(Answer::new(status, text).hiding(&self.apikey))
    }
}

impl Http for UreqHttp {
    fn get(&mut self, path: &str) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .get(&url)
            .header("username", &self.username)
            .header("apikey", &self.apikey)
            .call();
        self.answer(r, &url)
    }

    fn post(&mut self, path: &str, body: &Json) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .post(&url)
            .header("username", &self.username)
            .header("apikey", &self.apikey)
            .content_type("application/json")
            .send(body.to_string());
        self.answer(r, &url)
    }
}

/// A plan for people: what exists, what would be created and how, what
/// cannot be registered.
pub fn describe(plan: &Plan) -> String {
    let mut o = String::new();
    for n in &plan.notes {
        let _ = writeln!(o, "note: {n}");
    }
    for p in &plan.items {
        if p.exists {
            let _ = writeln!(o, "exists {:<8} {}", p.what, p.id);
        } else {
            let _ = writeln!(
                o,
                "create {:<8} {:<40} POST {} {}",
                p.what, p.id, p.path, p.body
            );
        }
    }
    for (id, why) in &plan.failed {
        let _ = writeln!(o, "cannot register {id}: {why}");
    }
    o
}

/// One line of a run's report.
pub fn describe_step(p: &Planned, step: &Step) -> String {
    match step {
        Step::Created => format!("created {:<8} {}", p.what, p.id),
        Step::Existed(None) => format!("existed {:<8} {}", p.what, p.id),
        Step::Existed(Some(answer)) => format!(
            "existed {:<8} {} (the server answered {answer})",
            p.what, p.id
        ),
        Step::Failed(why) => format!("FAILED  {:<8} {}: {why}", p.what, p.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = "{gatewayId}-{deviceAddress}-{type}-{sequence}";
        assert_eq!(
            match_template(t, "gw-0-temperature-1", "gw", "temperature"),
            Some("0".into())
        );
        assert_eq!(
            match_template(t, "gw-0-temperature", "gw", "temperature"),
            Some("0".into())
        );
        assert_eq!(
            match_template(t, "gw-temperature-0", "gw", "temperature"),
            None
        );
        assert_eq!(
            match_template(t, "other-0-temperature-1", "gw", "temperature"),
            None
        );
        let t2 = "{gatewayId}-{type}-{sequence}";
        assert_eq!(
            match_template(t2, "gw-temperature-0", "gw", "temperature"),
            Some(String::new())
        );
        // Every template the daemon knows, sensors and actuators alike.
        for (id, ty) in [
            ("gw-temperature-0", "temperature"),
            ("gw-dev1-humidity-2", "humidity"),
            ("temperature-gw-0", "temperature"),
            ("temperature-gw", "temperature"),
            ("gw-led-0", "led"),
            ("powerSwitch-gw-1", "powerSwitch"),
        ] {
            assert!(
                id_convention_warning("sensor", id, "gw", ty).is_none(),
                "{id}"
            );
        }
        let w = id_convention_warning("actuator", "kitchen", "gw", "led").unwrap();
        assert!(w.starts_with("actuator id \"kitchen\" does not follow the Thing+ templates"));
        for t in KNOWN_ID_TEMPLATES {
            assert!(w.contains(t), "{w}");
        }
        // The type must be the thing's own, the gateway id this gateway's.
        assert!(id_convention_warning("sensor", "humidity-gw-0", "gw", "temperature").is_some());
        assert!(
            id_convention_warning("sensor", "temperature-other-0", "gw", "temperature").is_some()
        );
    }

    fn answer(status: u16, text: &str) -> Answer {
        Answer::new(status, text.to_string())
    }

    #[test]
    fn errors_in_words_with_the_servers_text() {
        assert!(explain(&answer(401, ""), "x", "gw").contains("APIKEY"));
        assert!(explain(&answer(404, "{}"), "x", "gw").contains("not registered"));
        assert!(explain(&answer(471, "{}"), "x", "gw").contains("plan"));
        // Whatever form the server's text takes, it is shown with the status.
        for (text, said) in [
            (r#"{"error":"invalid model"}"#, "invalid model"),
            (r#"{"message":"no such\n driver"}"#, "no such driver"),
            (r#"{"error":{"code":7,"message":"bad body"}}"#, "bad body"),
            ("Bad Request: plain text", "Bad Request: plain text"),
        ] {
            assert_eq!(
                explain(&answer(400, text), "creating sensor s", "gw"),
                format!("creating sensor s: HTTP 400 (the server said: {said})")
            );
        }
        assert_eq!(
            explain(&answer(500, ""), "x", "gw"),
            "x: HTTP 500",
            "nothing said, nothing quoted"
        );
        let long = explain(&answer(400, &"e".repeat(1000)), "x", "gw");
        assert!(long.len() < 400 && long.ends_with("...)"), "{long}");
    }

    #[test]
    fn the_key_is_masked_in_what_is_quoted_not_in_what_is_parsed() {
        // A short key (as in a test setup) occurs inside JSON keys too.
        let a = Answer::new(400, r#"{"network":"x","error":"bad key k"}"#.into()).hiding("k");
        assert_eq!(a.body["network"], "x");
        assert_eq!(server_text(&a), "bad <APIKEY>ey <APIKEY>");
        let a = Answer::new(401, "denied for key-5ecret".into()).hiding("key-5ecret");
        assert!(!explain(&a, "x", "gw").contains("key-5ecret"));
    }

    #[test]
    fn duplicates_are_recognised_in_either_form() {
        assert!(is_duplicate(&answer(409, "")));
        assert!(is_duplicate(&answer(
            400,
            r#"{"error":"duplicated reqId"}"#
        )));
        assert!(is_duplicate(&answer(400, "Sensor already exists")));
        assert!(!is_duplicate(&answer(400, r#"{"error":"invalid model"}"#)));
        assert!(!is_duplicate(&answer(500, "duplicated")));
    }

    #[test]
    fn lists_in_either_shape() {
        let ids = |t: &str| listed_ids(&serde_json::from_str(t).unwrap());
        let want: HashSet<String> = ["a".to_string(), "b".to_string()].into();
        assert_eq!(
            ids(r#"[{"id":"a"},{"id":"b","owner":"gw"}]"#),
            Some(want.clone())
        );
        assert_eq!(ids(r#"{"data":[{"id":"a"},{"reqId":"b"}]}"#), Some(want));
        assert_eq!(ids(r#"{"id":"a"}"#), None);
    }
}
