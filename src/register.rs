//! Registration of the configured sensors and actuators with the Thing+
//! REST API, so an operator need not click through the portal: gateway
//! info, gateway model, sensor drivers, then devices and sensors.
//! Idempotent: "already exists" (409) counts as done.

use std::collections::{BTreeMap, HashMap};
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

/// One thing to create, in order: devices before their sensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub path: String,
    pub body: Json,
    /// "device" or "sensor"/"actuator".
    pub what: String,
    pub id: String,
}

/// What `plan` found: things to create, and ids that cannot be, with why.
#[derive(Debug, Default)]
pub struct Plan {
    pub items: Vec<Planned>,
    pub skipped: Vec<(String, String)>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub created: Vec<String>,
    pub existing: Vec<String>,
    /// Ids that could not be registered, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// An HTTP answer: status and JSON body (Null when not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Json,
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

/// Explains an HTTP error status in words.
pub fn explain(status: u16, what: &str, gateway_id: &str) -> String {
    match status {
        401 => format!("{what}: 401 unauthorized: the API refused gateway id {gateway_id} with this APIKEY; check [gateway] id and the APIKEY issued in the portal"),
        403 => format!("{what}: 403 forbidden: this gateway's APIKEY may not do this; check its permissions in the portal"),
        404 => format!("{what}: 404 not found: gateway {gateway_id} is not registered in this Thing+ service (register it in the portal first, or check [mqtt] service / [api] url)"),
        471 => format!("{what}: 471: the service plan does not allow more devices or sensors; upgrade the plan or remove some"),
        s => format!("{what}: HTTP {s}"),
    }
}

fn get_ok(http: &mut dyn Http, path: &str, what: &str, gw: &str) -> Result<Json, String> {
    let a = http.get(path)?;
    if a.status / 100 != 2 {
        return Err(explain(a.status, what, gw));
    }
    Ok(a.body)
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

/// Works out what to create, asking the API for the models and drivers.
pub fn plan(config: &Config, http: &mut dyn Http) -> Result<Plan, String> {
    let gw = &config.gateway.id;
    let info = get_ok(
        http,
        &format!("/gateways/{gw}?fields=model&fields=autoCreateDiscoverable"),
        "reading the gateway",
        gw,
    )?;
    if info["autoCreateDiscoverable"].as_str() != Some("y") {
        return Err(format!(
            "gateway {gw} does not allow creating discovered devices and sensors (autoCreateDiscoverable is not \"y\"): enable it in the Thing+ portal"
        ));
    }
    let model_id = match &info["model"] {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        _ => return Err("the gateway information has no model".into()),
    };
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
    let mut skipped = Vec::new();
    for (id, ty, category) in things {
        let Some(sm) = sensor_models.iter().find(|m| {
            m["type"].as_str() == Some(ty.as_str())
                && m["category"].as_str().unwrap_or("sensor") == category
        }) else {
            skipped.push((
                id,
                format!("device model {device_model_id} offers no {category} of type \"{ty}\""),
            ));
            continue;
        };
        let driver = sm["driverName"].as_str().unwrap_or_default().to_string();
        let template = match drivers.get(&driver) {
            Some(t) => t.clone(),
            None => {
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
                drivers.insert(driver.clone(), t.clone());
                t
            }
        };
        let Some(mut address) = match_template(&template, &id, gw, &ty) else {
            skipped.push((
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
        });
    }
    let mut items: Vec<Planned> = devices.into_values().collect();
    items.extend(sensors);
    Ok(Plan { items, skipped })
}

/// Creates what the plan lists; 409 is "already there".
pub fn apply(plan: &[Planned], http: &mut dyn Http, gw: &str) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    for p in plan {
        let a = http.post(&p.path, &p.body)?;
        match a.status {
            200..=299 => out.created.push(p.id.clone()),
            409 => out.existing.push(p.id.clone()),
            s => return Err(explain(s, &format!("creating {} {}", p.what, p.id), gw)),
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
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        url: &str,
    ) -> Result<Answer, String> {
        let mut r = r.map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Json::Null),
        })
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
        Self::answer(r, &url)
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
        Self::answer(r, &url)
    }
}

/// A plan for people.
pub fn describe(plan: &[Planned], skipped: &[(String, String)]) -> String {
    let mut o = String::new();
    for p in plan {
        let _ = writeln!(
            o,
            "create {:<8} {:<40} POST {} {}",
            p.what, p.id, p.path, p.body
        );
    }
    for (id, why) in skipped {
        let _ = writeln!(o, "skip   {id}: {why}");
    }
    o
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

    #[test]
    fn errors_in_words() {
        assert!(explain(401, "x", "gw").contains("APIKEY"));
        assert!(explain(404, "x", "gw").contains("not registered"));
        assert!(explain(471, "x", "gw").contains("plan"));
    }
}
