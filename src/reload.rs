//! What a configuration reload (SIGHUP) changes, decided by comparing the
//! running configuration with the new one. Pure: the daemon applies it.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{Config, ModbusBusConfig, SensorConfig, SensorSource, SerialPortConfig};
use crate::sensor::{self, SensorRuntime};

/// One sampling task and everything it is built from: a file sensor, or a
/// serial port or Modbus bus with the sensors it serves. A task is
/// restarted on reload only when its spec changed.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSpec {
    File(SensorConfig),
    Serial(SerialPortConfig, Vec<SensorConfig>),
    Modbus(ModbusBusConfig, Vec<SensorConfig>),
}

impl TaskSpec {
    /// Names the task among the daemon's: "sensor:ID", "serial:NAME", "modbus:NAME".
    pub fn key(&self) -> String {
        match self {
            TaskSpec::File(s) => format!("sensor:{}", s.id),
            TaskSpec::Serial(p, _) => format!("serial:{}", p.name),
            TaskSpec::Modbus(b, _) => format!("modbus:{}", b.name),
        }
    }

    pub fn spawn(&self, rt: SensorRuntime) -> JoinHandle<()> {
        match self {
            TaskSpec::File(s) => sensor::spawn(s.clone(), rt),
            TaskSpec::Serial(p, s) => sensor::serial::spawn_port(p.clone(), s.clone(), rt).0,
            TaskSpec::Modbus(b, s) => sensor::modbus::spawn_bus(b.clone(), s.clone(), rt).0,
        }
    }
}

/// The tasks a configuration runs:
/// ports and buses without sensors are not opened.
pub fn task_specs(config: &Config) -> Vec<TaskSpec> {
    let mut specs: Vec<TaskSpec> = config
        .sensors
        .iter()
        .filter(|s| matches!(s.source, SensorSource::File { .. }))
        .map(|s| TaskSpec::File(s.clone()))
        .collect();
    for port in &config.serial {
        let sensors: Vec<SensorConfig> = config
            .sensors
            .iter()
            .filter(
                |s| matches!(&s.source, SensorSource::Serial { port: p, .. } if *p == port.name),
            )
            .cloned()
            .collect();
        if !sensors.is_empty() {
            specs.push(TaskSpec::Serial(port.clone(), sensors));
        }
    }
    for bus in &config.modbus {
        let sensors: Vec<SensorConfig> = config
            .sensors
            .iter()
            .filter(|s| matches!(&s.source, SensorSource::Modbus(p) if p.bus == bus.name))
            .cloned()
            .collect();
        if !sensors.is_empty() {
            specs.push(TaskSpec::Modbus(bus.clone(), sensors));
        }
    }
    specs
}

/// The changes to carry out, and what only a restart can change.
#[derive(Debug, Default)]
pub struct ReloadPlan {
    /// Tasks to stop, by [`TaskSpec::key`]: gone, or changed (then also in `start`).
    pub stop: Vec<String>,
    /// Tasks to start: new, or changed.
    pub start: Vec<TaskSpec>,
    /// Sensors added, removed and changed (for the log).
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
    let (old_tasks, new_tasks) = (task_specs(old), task_specs(new));
    for o in &old_tasks {
        if !new_tasks.contains(o) {
            p.stop.push(o.key());
        }
    }
    for n in &new_tasks {
        if !old_tasks.contains(n) {
            p.start.push(n.clone());
        }
    }
    for o in &old.sensors {
        match new.sensors.iter().find(|n| n.id == o.id) {
            None => p.removed += 1,
            Some(n) if n != o => p.changed += 1,
            Some(_) => {}
        }
    }
    p.added = new
        .sensors
        .iter()
        .filter(|n| !old.sensors.iter().any(|o| o.id == n.id))
        .count();
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
        assert_eq!(p.stop, vec!["sensor:a".to_string(), "sensor:b".to_string()]);
        let started: Vec<_> = p.start.iter().map(|s| s.key()).collect();
        assert_eq!(started, vec!["sensor:b", "sensor:c"]);
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

    #[test]
    fn a_serial_port_restarts_only_when_it_or_its_sensors_change() {
        let port = "[serial.gps]\ndevice = \"/dev/ttyACM0\"\nbaud = 9600\nformat = \"nmea\"\n";
        let loc = "[[sensor]]\nid = \"loc\"\ntype = \"location\"\nserial = \"gps\"\nfield = \"location\"\n";
        let old = cfg(&format!("{A}{loc}{port}"));
        let p = plan(&old, &cfg(&format!("{A}{loc}{port}")));
        assert!(p.is_empty(), "{p:?}");
        // A file sensor added next to it: the port task goes on.
        let p = plan(&old, &cfg(&format!("{A}{B}{loc}{port}")));
        assert_eq!(
            p.start.iter().map(|t| t.key()).collect::<Vec<_>>(),
            vec!["sensor:b"]
        );
        assert!(p.stop.is_empty());
        // The port's speed changed: its task restarts, the file sensor's does not.
        let p = plan(
            &old,
            &cfg(&format!("{A}{loc}{}", port.replace("9600", "4800"))),
        );
        assert_eq!(p.stop, vec!["serial:gps".to_string()]);
        assert_eq!(
            p.start.iter().map(|t| t.key()).collect::<Vec<_>>(),
            vec!["serial:gps"]
        );
        // Its only sensor removed: the port is closed, not reopened.
        let p = plan(&old, &cfg(&format!("{A}{port}")));
        assert_eq!(p.stop, vec!["serial:gps".to_string()]);
        assert!(p.start.is_empty());
        assert_eq!(p.removed, 1);
    }
}
