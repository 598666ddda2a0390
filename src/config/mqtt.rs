//! `[mqtt]`: the broker, TLS, keep-alive, reconnect backoff and message limits.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::thingplus::Compression;
use crate::units::{format_duration, ByteSize, HumanDuration};

use super::error::Ctx;
use super::host::secret_file_warning;
use super::{ConfigError, PROTOCOL_MIN_RECONNECT};

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    host: Option<String>,
    service: Option<Spanned<String>>,
    port: Option<u16>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    keep_alive: Option<Spanned<HumanDuration>>,
    reconnect_min: Option<Spanned<HumanDuration>>,
    reconnect_max: Option<Spanned<HumanDuration>>,
    connect_timeout: Option<HumanDuration>,
    ack_timeout: Option<HumanDuration>,
    max_message_size: Option<Spanned<ByteSize>>,
    max_inflight: Option<Spanned<u16>>,
    shutdown_timeout: Option<HumanDuration>,
    compress: Option<Spanned<String>>,
    compress_min_bytes: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `None`: 2 x report interval, within 60..600 s.
    pub keep_alive: Option<Duration>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    /// A publish not acknowledged within this time means the link is dead.
    pub ack_timeout: Duration,
    pub max_message_size: usize,
    /// Value messages in flight at once (kept well under rumqttc's own limit).
    pub max_inflight: u16,
    /// How long shutdown may spend delivering what is pending.
    pub shutdown_timeout: Duration,
    /// gzip of large values and status payloads (`max_message_size`
    /// bounds them before compression).
    pub compress: Compression,
}

impl MqttConfig {
    /// Keep-alive: configured, or 2 x report interval clamped to 60..600 s.
    pub fn keep_alive_for(&self, report_interval: Duration) -> Duration {
        self.keep_alive.unwrap_or_else(|| {
            (report_interval * 2).clamp(Duration::from_secs(60), Duration::from_secs(600))
        })
    }
}

pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

pub(super) fn mqtt_from_raw(
    m: RawMqtt,
    ctx: &Ctx,
    warnings: &mut Vec<String>,
) -> Result<MqttConfig, ConfigError> {
    let host = host_of(&m, ctx)?;
    let tls = m.tls.unwrap_or(true);
    let port = m.port.unwrap_or(if tls { 8883 } else { 1883 });
    if !tls && !is_loopback_host(&host) {
        warnings.push(format!(
            "tls = false: the APIKEY and every reading go to {host} unencrypted; use TLS for anything but a local broker"
        ));
    }
    if m.client_cert.is_some() != m.client_key.is_some() {
        return Err(ctx.err("[mqtt] client_cert and client_key go together: set both or neither"));
    }
    if let Some(key) = &m.client_key {
        warnings.extend(secret_file_warning(ctx.host, key, "[mqtt] client_key"));
    }
    let (reconnect_min, reconnect_max) = reconnect_of(&m, ctx, warnings)?;
    if let Some(k) = &m.keep_alive {
        let secs = k.get_ref().0.as_secs();
        if !(5..=65535).contains(&secs) {
            return Err(ctx.err_at(k.span(), "keep_alive must be between 5s and 65535s"));
        }
    }
    let max_message_size = match &m.max_message_size {
        Some(s) if s.get_ref().0 < 1024 => {
            return Err(ctx.err_at(s.span(), "max_message_size must be at least 1KiB"))
        }
        Some(s) => s.get_ref().0 as usize,
        None => 64 << 10,
    };
    let max_inflight = match &m.max_inflight {
        Some(n) if !(1..=50).contains(n.get_ref()) => {
            return Err(ctx.err_at(n.span(), "max_inflight must be between 1 and 50"))
        }
        Some(n) => *n.get_ref(),
        None => 8,
    };
    let compress = compress_of(&m, ctx, warnings)?;
    Ok(MqttConfig {
        host,
        port,
        tls,
        ca_file: m.ca_file,
        client_cert: m.client_cert,
        client_key: m.client_key,
        keep_alive: m.keep_alive.map(|k| k.get_ref().0),
        reconnect_min,
        reconnect_max,
        connect_timeout: m.connect_timeout.map_or(Duration::from_secs(10), |d| d.0),
        ack_timeout: m.ack_timeout.map_or(Duration::from_secs(60), |d| d.0),
        max_message_size,
        max_inflight,
        shutdown_timeout: m.shutdown_timeout.map_or(Duration::from_secs(5), |d| d.0),
        compress,
    })
}

/// The broker's host name: `host`, or the one of a named `service`.
fn host_of(m: &RawMqtt, ctx: &Ctx) -> Result<String, ConfigError> {
    const COMMERCIAL: &str = "mqtt.thingplus.net";
    match (&m.host, &m.service) {
        (Some(_), Some(s)) => {
            Err(ctx.err_at(s.span(), "set either host or service in [mqtt], not both"))
        }
        (Some(h), None) => Ok(h.clone()),
        (None, Some(s)) => ctx
            .choose(
                s,
                &[
                    ("commercial", COMMERCIAL),
                    ("sandbox", "mqtt.sandbox.thingplus.net"),
                ],
                "unknown service",
                "expected \"commercial\" or \"sandbox\" (or set host)",
            )
            .map(str::to_string),
        (None, None) => Ok(COMMERCIAL.to_string()),
    }
}

fn reconnect_of(
    m: &RawMqtt,
    ctx: &Ctx,
    warnings: &mut Vec<String>,
) -> Result<(Duration, Duration), ConfigError> {
    let reconnect_min = ctx.positive(&m.reconnect_min, "reconnect_min", PROTOCOL_MIN_RECONNECT)?;
    let reconnect_max = m
        .reconnect_max
        .as_ref()
        .map_or(Duration::from_secs(300), |d| d.get_ref().0);
    if reconnect_min < PROTOCOL_MIN_RECONNECT {
        warnings.push(format!(
            "reconnect_min is {}: Thing+ requires at least 10s between attempts (fine for local brokers and tests)",
            format_duration(reconnect_min)
        ));
    }
    if reconnect_max < reconnect_min {
        let span = m.reconnect_max.as_ref().map(|s| s.span()).unwrap_or(0..0);
        return Err(ctx.err_at(span, "reconnect_max must not be smaller than reconnect_min"));
    }
    Ok((reconnect_min, reconnect_max))
}

fn compress_of(
    m: &RawMqtt,
    ctx: &Ctx,
    warnings: &mut Vec<String>,
) -> Result<Compression, ConfigError> {
    let min_bytes = match &m.compress_min_bytes {
        Some(s) => usize::try_from(s.get_ref().0).unwrap_or(usize::MAX),
        None => crate::thingplus::compress::DEFAULT_MIN_BYTES,
    };
    let compress = ctx.choose_or(
        &m.compress,
        Compression::Off,
        &[
            ("off", Compression::Off),
            ("gzip", Compression::Gzip { min_bytes }),
        ],
        "invalid compress",
        "expected \"gzip\" or \"off\"",
    )?;
    if compress == Compression::Off && m.compress_min_bytes.is_some() {
        warnings.push(
            "compress_min_bytes is set but compress is not \"gzip\": nothing is compressed".into(),
        );
    }
    Ok(compress)
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use crate::config::test_support::*;

    use crate::thingplus::Compression;

    #[test]
    fn compress_is_gzip_or_off_with_a_threshold() {
        let c = parse(&format!("{MIN}[mqtt]\ncompress = \"gzip\"\n")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Gzip { min_bytes: 1024 });
        let c = parse(&format!(
            "{MIN}[mqtt]\ncompress = \"gzip\"\ncompress_min_bytes = \"4KiB\"\n"
        ))
        .unwrap();
        assert_eq!(c.mqtt.compress, Compression::Gzip { min_bytes: 4096 });
        let c = parse(&format!("{MIN}[mqtt]\ncompress = \"off\"\n")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Off);
        let c = parse(&format!("{MIN}[mqtt]\ncompress_min_bytes = 100\n")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Off);
        assert!(
            c.warnings[0].contains("nothing is compressed"),
            "{:?}",
            c.warnings
        );
        let e = parse(&format!("{MIN}[mqtt]\ncompress = \"zip\"\n")).unwrap_err();
        assert_eq!(e.position, Some((5, 12)), "{e}");
        assert!(e.message.contains("expected \"gzip\" or \"off\""), "{e}");
    }

    /// The commented compression lines of the reference file are valid.
    #[test]
    fn reference_compress_lines_parse_when_uncommented() {
        let text = include_str!("../../config/thingplus-gw.toml");
        let lines: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# compress"))
            .map(|l| format!("compress{}\n", l.split('#').next().unwrap()))
            .collect();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        let c = parse(&format!("{MIN}[mqtt]\n{lines}")).unwrap();
        assert_eq!(c.mqtt.compress, Compression::Off);
        let c = parse(&format!(
            "{MIN}[mqtt]\n{}",
            lines.replace("\"off\"", "\"gzip\"")
        ))
        .unwrap();
        assert_eq!(c.mqtt.compress, Compression::Gzip { min_bytes: 1024 });
    }

    #[test]
    fn service_names_pick_hosts() {
        let c = parse(&format!("{MIN}[mqtt]\nservice = \"sandbox\"\n")).unwrap();
        assert_eq!(c.mqtt.host, "mqtt.sandbox.thingplus.net");
        let e = parse(&format!("{MIN}[mqtt]\nservice = \"prod\"\n")).unwrap_err();
        assert!(e.message.contains("unknown service"));
    }

    #[test]
    fn warnings_for_short_intervals_and_plain_tcp() {
        let c = parse(&format!(
            "{MIN}report_interval = \"1s\"\n[mqtt]\nhost = \"example.com\"\ntls = false\nreconnect_min = \"1s\"\n"
        ))
        .unwrap();
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert_eq!(c.mqtt.port, 1883);
    }

    #[test]
    fn keep_alive_follows_report_interval() {
        let c = parse(MIN).unwrap();
        assert_eq!(
            c.mqtt.keep_alive_for(Duration::from_secs(60)),
            Duration::from_secs(120)
        );
        assert_eq!(
            c.mqtt.keep_alive_for(Duration::from_secs(1)),
            Duration::from_secs(60)
        );
        assert_eq!(
            c.mqtt.keep_alive_for(Duration::from_secs(3600)),
            Duration::from_secs(600)
        );
    }
}
