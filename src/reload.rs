//! What a configuration reload (SIGHUP) changes, decided by comparing the
//! running configuration with the new one. Pure: the daemon applies it.

use std::time::Duration;

use crate::config::{Config, SensorConfig};

/// The changes to carry out, and what only a restart can change.
#[derive(Debug, Default)]
pub struct ReloadPlan {
    /// Sensors to stop: removed, or changed (then also in `start`).
    pub stop: Vec<String>,
    /// Sensors to start: new, or changed.
    pub start: Vec<SensorConfig>,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub actuators_changed: bool,
    /// The configured report interval, when it changed.
    pub report_interval: Option<Duration>,
    /// The MQTT session must be rebuilt: broker, TLS, credentials, gateway id.
    pub reconnect: bool,
    pub log_level_changed: bool,
    /// Settings that changed but take effect only after a restart.
    pub need_restart: Vec<&'static str>,
}

impl ReloadPlan {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.start.is_empty()
            && !self.actuators_changed
            && self.report_interval.is_none()
            && !self.reconnect
            && !self.log_level_changed
            && self.need_restart.is_empty()
    }

    /// A short summary for the log.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.added + self.removed + self.changed > 0 {
            parts.push(format!(
                "sensors +{} -{} ~{}",
                self.added, self.removed, self.changed
            ));
        }
        if self.actuators_changed {
            parts.push("actuators".into());
        }
        if self.report_interval.is_some() {
            parts.push("report interval".into());
        }
        if self.reconnect {
            parts.push("MQTT connection".into());
        }
        if self.log_level_changed {
            parts.push("log level".into());
        }
        if parts.is_empty() {
            "nothing changed".into()
        } else {
            parts.join(", ")
        }
    }
}

pub fn plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut p = ReloadPlan::default();
    for o in &old.sensors {
        match new.sensors.iter().find(|n| n.id == o.id) {
            None => {
                p.stop.push(o.id.clone());
                p.removed += 1;
            }
            Some(n) if n != o => {
                p.stop.push(o.id.clone());
                p.start.push(n.clone());
                p.changed += 1;
            }
            Some(_) => {}
        }
    }
    for n in &new.sensors {
        if !old.sensors.iter().any(|o| o.id == n.id) {
            p.start.push(n.clone());
            p.added += 1;
        }
    }
    p.actuators_changed = old.actuators != new.actuators;
    if old.gateway.report_interval != new.gateway.report_interval {
        p.report_interval = Some(new.gateway.report_interval);
    }
    let (og, ng) = (&old.gateway, &new.gateway);
    p.reconnect = old.mqtt != new.mqtt
        || og.id != ng.id
        || og.apikey != ng.apikey
        || og.status_validity != ng.status_validity;
    p.log_level_changed = old.log_level != new.log_level;
    if old.buffer != new.buffer {
        p.need_restart.push("[buffer]");
    }
    if og.state_dir != ng.state_dir {
        p.need_restart.push("[gateway] state_dir");
    }
    if old.rpc != new.rpc {
        p.need_restart.push("[rpc]");
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let text =
            format!("[gateway]\nid = \"gw1\"\napikey = \"k\"\nstate_dir = \"/tmp/x\"\n{extra}");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    const A: &str = "[[sensor]]\nid = \"a\"\ntype = \"temperature\"\npath = \"/a\"\n";
    const B: &str = "[[sensor]]\nid = \"b\"\ntype = \"temperature\"\npath = \"/b\"\n";
    const B2: &str = "[[sensor]]\nid = \"b\"\ntype = \"temperature\"\npath = \"/b2\"\n";

    #[test]
    fn identical_configs_change_nothing() {
        let p = plan(&cfg(A), &cfg(A));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.summary(), "nothing changed");
    }

    #[test]
    fn sensors_are_added_removed_and_restarted_when_changed() {
        let old = cfg(&format!("{A}{B}"));
        let new = cfg(&format!(
            "{B2}[[sensor]]\nid = \"c\"\ntype = \"humidity\"\npath = \"/c\"\n"
        ));
        let p = plan(&old, &new);
        assert_eq!(p.stop, vec!["a".to_string(), "b".to_string()]);
        let started: Vec<_> = p.start.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(started, vec!["b", "c"]);
        assert_eq!((p.added, p.removed, p.changed), (1, 1, 1));
        assert!(!p.reconnect);
    }

    #[test]
    fn interval_change_does_not_reconnect_but_mqtt_change_does() {
        let p = plan(
            &cfg("report_interval = \"60s\"\n"),
            &cfg("report_interval = \"120s\"\n"),
        );
        assert_eq!(p.report_interval, Some(Duration::from_secs(120)));
        assert!(!p.reconnect);
        let p = plan(
            &cfg("[mqtt]\nhost = \"127.0.0.1\"\ntls = false\n"),
            &cfg("[mqtt]\nhost = \"127.0.0.1\"\ntls = false\nport = 1884\n"),
        );
        assert!(p.reconnect);
        assert!(p.start.is_empty() && p.stop.is_empty());
    }

    #[test]
    fn restart_only_settings_are_named() {
        let p = plan(
            &cfg("[buffer]\nmax_size = \"1MiB\"\n[rpc]\nallow_reboot = false\n"),
            &cfg("[buffer]\nmax_size = \"2MiB\"\n[rpc]\nallow_reboot = true\n"),
        );
        assert_eq!(p.need_restart, vec!["[buffer]", "[rpc]"]);
    }
}
