//! `[rpc]`: which of the platform's commands this gateway obeys, and how.

use serde::Deserialize;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRpc {
    allow_reboot: Option<bool>,
    allow_poweroff: Option<bool>,
    allow_restart: Option<bool>,
    sw_update_command: Option<Vec<String>>,
    reboot_command: Option<Vec<String>>,
    poweroff_command: Option<Vec<String>>,
    set_system_clock: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RpcConfig {
    pub allow_reboot: bool,
    pub allow_poweroff: bool,
    pub allow_restart: bool,
    pub sw_update_command: Option<Vec<String>>,
    /// What `reboot` runs once answered; default `systemctl reboot`.
    pub reboot_command: Vec<String>,
    /// What `poweroff` runs once answered; default `systemctl poweroff`.
    pub poweroff_command: Vec<String>,
    pub set_system_clock: bool,
}

impl From<RawRpc> for RpcConfig {
    fn from(r: RawRpc) -> Self {
        let or_systemctl = |c: Option<Vec<String>>, verb: &str| {
            c.filter(|c| !c.is_empty())
                .unwrap_or_else(|| vec!["systemctl".into(), verb.into()])
        };
        RpcConfig {
            allow_reboot: r.allow_reboot.unwrap_or(false),
            allow_poweroff: r.allow_poweroff.unwrap_or(false),
            allow_restart: r.allow_restart.unwrap_or(true),
            sw_update_command: r.sw_update_command,
            reboot_command: or_systemctl(r.reboot_command, "reboot"),
            poweroff_command: or_systemctl(r.poweroff_command, "poweroff"),
            set_system_clock: r.set_system_clock.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_commands_default_to_systemctl_and_only_restart_is_allowed() {
        let r: RawRpc = toml::from_str("reboot_command = []\n").unwrap();
        let c = RpcConfig::from(r);
        assert_eq!(c.reboot_command, ["systemctl", "reboot"]);
        assert_eq!(c.poweroff_command, ["systemctl", "poweroff"]);
        assert!(c.allow_restart && !c.allow_reboot && !c.allow_poweroff);
        let r: RawRpc =
            toml::from_str("poweroff_command = [\"/sbin/halt\"]\nallow_poweroff = true\n").unwrap();
        let c = RpcConfig::from(r);
        assert_eq!(c.poweroff_command, ["/sbin/halt"]);
        assert!(c.allow_poweroff);
    }
}
