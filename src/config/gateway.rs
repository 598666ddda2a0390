//! `[gateway]`: the gateway id, the APIKEY, the report interval, where
//! state and sysfs are.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::gateway_id;
use crate::units::{format_duration, HumanDuration};

use super::error::{line_col, Ctx};
use super::host::{secret_file_warning, Host, SystemHost};
use super::{read_config_text, ConfigError, DEFAULT_STATE_DIR, SERVICE_MIN_REPORT_INTERVAL};

/// Where sysfs is by default.
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    id: Option<Spanned<String>>,
    interface: Option<String>,
    apikey: Option<String>,
    apikey_file: Option<Spanned<PathBuf>>,
    report_interval: Option<Spanned<HumanDuration>>,
    status_validity: Option<Spanned<HumanDuration>>,
    state_dir: Option<PathBuf>,
    sysfs_root: Option<Spanned<PathBuf>>,
}

/// The APIKEY: never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub id: String,
    /// Where the id came from, for `check` and logs ("config", "MAC of eth0").
    pub id_source: String,
    pub apikey: Secret,
    pub report_interval: Duration,
    /// Status valid duration; `None`: 2 x the current report interval.
    pub status_validity: Option<Duration>,
    pub state_dir: PathBuf,
    /// Where sysfs is: file sensors and LED/value-file actuators whose paths
    /// start with `/sys/` are read and written under this directory instead
    /// (tests, containers with a bind-mounted host /sys). Default `/sys`.
    pub sysfs_root: PathBuf,
}

impl GatewayConfig {
    /// `path` as the daemon opens it: under `sysfs_root` when it is a `/sys/...` path.
    pub fn resolve_sysfs(&self, path: &Path) -> PathBuf {
        under_sysfs_root(&self.sysfs_root, path)
    }
}

/// `path` with a leading `/sys` replaced by `root`; other paths unchanged.
pub fn under_sysfs_root(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix(DEFAULT_SYSFS_ROOT) {
        Ok(rest) if root != Path::new(DEFAULT_SYSFS_ROOT) => {
            if rest.as_os_str().is_empty() {
                root.to_path_buf()
            } else {
                root.join(rest)
            }
        }
        _ => path.to_path_buf(),
    }
}

pub(super) fn gateway_from_raw(
    g: RawGateway,
    ctx: &Ctx,
    warnings: &mut Vec<String>,
) -> Result<GatewayConfig, ConfigError> {
    let (id, id_source) = gateway_id_of(&g, ctx)?;
    let apikey = apikey_of(&g, ctx, warnings)?;
    let report_interval = match &g.report_interval {
        Some(ri) => {
            let d = ri.get_ref().0;
            if d.is_zero() {
                return Err(ctx.err_at(
                    ri.span(),
                    "report_interval must be greater than zero, such as \"60s\"",
                ));
            }
            d
        }
        None => SERVICE_MIN_REPORT_INTERVAL,
    };
    if report_interval < SERVICE_MIN_REPORT_INTERVAL {
        warnings.push(format!(
            "report_interval is {}: the Thing+ service requires at least 60s (fine for local brokers and tests)",
            format_duration(report_interval)
        ));
    }
    let status_validity = ctx.positive_opt(&g.status_validity, "status_validity")?;
    let state_dir = g
        .state_dir
        .or_else(|| {
            ctx.host.env_var("STATE_DIRECTORY").map(|s| {
                // systemd may pass several colon-separated directories; the first is ours.
                let s = s.to_string_lossy().into_owned();
                PathBuf::from(s.split(':').next().unwrap_or_default())
            })
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let sysfs_root = match &g.sysfs_root {
        None => PathBuf::from(DEFAULT_SYSFS_ROOT),
        Some(r) => check_sysfs_root(ctx.host, resolve_relative(ctx.path, r.get_ref()))
            .map_err(|m| ctx.err_at(r.span(), m))?,
    };
    Ok(GatewayConfig {
        id,
        id_source,
        apikey: Secret::new(apikey),
        report_interval,
        status_validity,
        state_dir,
        sysfs_root,
    })
}

/// The gateway id and where it came from.
fn gateway_id_of(g: &RawGateway, ctx: &Ctx) -> Result<(String, String), ConfigError> {
    if let Some(id) = g.id.as_ref().filter(|id| id.get_ref() != "auto") {
        if !gateway_id::is_valid_id(id.get_ref()) {
            return Err(ctx.err_at(
                id.span(),
                format!(
                    "invalid gateway id \"{}\": use only letters, digits and - _ . ~",
                    id.get_ref()
                ),
            ));
        }
        return Ok((id.get_ref().clone(), "config".to_string()));
    }
    let id = gateway_id::auto_id_from(
        g.interface.as_deref(),
        |name| ctx.host.mac_of(name),
        || ctx.host.nics(),
    )
    .map_err(|m| match &g.id {
        Some(s) => ctx.err_at(s.span(), format!("id = \"auto\": {m}")),
        None => ctx.err(format!("[gateway] id is not set, so it is \"auto\": {m}")),
    })?;
    let src = match &g.interface {
        Some(i) => format!("MAC of {i}"),
        None => "MAC of the first hardware NIC".to_string(),
    };
    Ok((id, src))
}

/// The APIKEY, inline or from a file.
fn apikey_of(g: &RawGateway, ctx: &Ctx, warnings: &mut Vec<String>) -> Result<String, ConfigError> {
    let apikey = match (&g.apikey, &g.apikey_file) {
        (Some(_), Some(f)) => {
            return Err(ctx.err_at(
                f.span(),
                "set either apikey or apikey_file in [gateway], not both",
            ))
        }
        (Some(k), None) => k.clone(),
        (None, Some(f)) => {
            let p = resolve_relative(ctx.path, f.get_ref());
            let key = ctx
                .host
                .read_secret(&p)
                .map_err(|e| ctx.err_at(f.span(), format!("apikey_file {}: {e}", p.display())))?;
            warnings.extend(secret_file_warning(ctx.host, &p, "apikey_file"));
            key.trim().to_string()
        }
        (None, None) => {
            return Err(ctx.err(
                "[gateway] needs the APIKEY the Thing+ portal issued for this gateway: set apikey = \"...\" or apikey_file = \"/etc/thingplus-gw/apikey\"",
            ))
        }
    };
    if apikey.is_empty() {
        return Err(ctx.err("[gateway] the APIKEY is empty"));
    }
    Ok(apikey)
}

/// A `/sys/...` path, checked: with `..` in it, it would mean something
/// else under another `sysfs_root` (`/sys/../etc/x` is `/etc/x`, but
/// `<root>/../etc/x` is next to the root), so it is refused.
pub(super) fn no_dotdot_in_sys(p: &Spanned<PathBuf>, ctx: &Ctx) -> Result<PathBuf, ConfigError> {
    let path = p.get_ref();
    if path.starts_with(DEFAULT_SYSFS_ROOT)
        && path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(ctx.err_at(
            p.span(),
            format!(
                "{}: a /sys/ path must not contain \"..\" (write the path it leads to)",
                path.display()
            ),
        ));
    }
    Ok(path.clone())
}

/// `p` if it is a directory, else why it cannot be the sysfs root.
fn check_sysfs_root(host: &dyn Host, p: PathBuf) -> Result<PathBuf, String> {
    match host.is_dir(&p) {
        Ok(true) => Ok(p),
        Ok(false) => Err(format!("sysfs_root {} is not a directory: it must be a sysfs tree (such as /sys, or a copy of one)", p.display())),
        Err(e) => Err(format!("sysfs_root {}: {e} (it must be an existing sysfs tree, such as /sys)", p.display())),
    }
}

/// Only `[gateway] sysfs_root` of the configuration file at `path`
/// (`None` when not set), read line by line: the rest of the file may be
/// unfinished or invalid, and nothing else it names (such as `apikey_file`)
/// is read. For `discover --config`, which runs while the configuration is
/// being written. A set root must be an existing directory, as for `load`.
pub fn read_sysfs_root(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
    let (text, _) = read_config_text(path)?;
    sysfs_root_in(&text, path, &SystemHost)
}

/// [`read_sysfs_root`] on text already read.
fn sysfs_root_in(text: &str, path: &Path, host: &dyn Host) -> Result<Option<PathBuf>, ConfigError> {
    let err = |position, message: String| ConfigError {
        path: path.to_path_buf(),
        position,
        message,
    };
    let mut in_gateway = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let t = line.trim();
        if t.starts_with('[') {
            // `[gateway]`, possibly followed by a comment.
            in_gateway = t
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .is_some_and(|(name, rest)| {
                    name.trim() == "gateway"
                        && matches!(rest.trim().chars().next(), None | Some('#'))
                });
            continue;
        }
        if !in_gateway {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "sysfs_root" {
            continue;
        }
        let value_at = start + key.len() + 1 + (value.len() - value.trim_start().len());
        let position = Some(line_col(text, value_at));
        let root = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| match t.remove("v") {
                Some(toml::Value::String(s)) => Some(s),
                _ => None,
            })
            .ok_or_else(|| err(position, "sysfs_root must be a string (a directory)".into()))?;
        return check_sysfs_root(host, resolve_relative(path, Path::new(&root)))
            .map(Some)
            .map_err(|m| err(position, m));
    }
    Ok(None)
}

/// Whether the text sets an inline APIKEY (not `apikey_file`).
pub(super) fn text_has_apikey(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with("apikey") && !l.trim_start().starts_with("apikey_file"))
}

/// `p` relative to the configuration file's directory.
pub(super) fn resolve_relative(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::sysfs_root_in;
    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn sysfs_root_moves_sys_paths_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let c = parse_here(&format!(
            "[gateway]\nid = \"gw1\"\napikey = \"k\"\nsysfs_root = \"{root}\"\n\
             [[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"/sys/class/thermal/thermal_zone0/temp\"\n\
             [[sensor]]\nid = \"f\"\ntype = \"temperature\"\npath = \"/var/lib/x/temp\"\n\
             [[actuator]]\nid = \"l\"\ntype = \"led\"\npath = \"/sys/class/leds/led0\"\n\
             [[actuator]]\nid = \"v\"\ntype = \"powerSwitch\"\npath = \"/sys/class/gpio/gpio17/value\"\n\
             [[actuator]]\nid = \"g\"\ntype = \"powerSwitch\"\ngpio_chip = \"/dev/gpiochip0\"\nline = 1\n"
        ))
        .unwrap();
        assert_eq!(c.gateway.sysfs_root, dir.path());
        let paths: Vec<_> = c
            .sensors
            .iter()
            .map(|s| match &s.source {
                SensorSource::File { path, .. } => path.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            paths,
            [
                dir.path().join("class/thermal/thermal_zone0/temp"),
                PathBuf::from("/var/lib/x/temp")
            ]
        );
        assert_eq!(
            c.actuators[0].driver,
            ActuatorDriver::Led {
                path: dir.path().join("class/leds/led0")
            }
        );
        assert_eq!(
            c.actuators[1].driver,
            ActuatorDriver::ValueFile {
                path: dir.path().join("class/gpio/gpio17/value"),
                active_low: false
            }
        );
        assert!(
            matches!(&c.actuators[2].driver, ActuatorDriver::GpioLine { chip, .. } if chip == Path::new("/dev/gpiochip0"))
        );
        // Not /sysfoo: only whole components.
        assert_eq!(
            under_sysfs_root(dir.path(), Path::new("/sysfoo/x")),
            PathBuf::from("/sysfoo/x")
        );
        // The default leaves everything as written.
        let c = parse_here(&format!(
            "{MIN}[[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"/sys/class/thermal/thermal_zone0/temp\"\n"
        ))
        .unwrap();
        assert_eq!(c.gateway.sysfs_root, Path::new("/sys"));
        assert!(
            matches!(&c.sensors[0].source, SensorSource::File { path, .. } if path == Path::new("/sys/class/thermal/thermal_zone0/temp"))
        );
    }

    #[test]
    fn sysfs_root_must_be_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = parse_here(&format!("{MIN}sysfs_root = \"{}\"\n", missing.display())).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
        assert!(
            e.message.contains("sysfs_root") && e.message.contains("No such file"),
            "{e}"
        );
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = parse_here(&format!("{MIN}sysfs_root = \"{}\"\n", file.display())).unwrap_err();
        assert!(e.message.contains("is not a directory"), "{e}");
        // Relative to the configuration file.
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        let c = Config::parse(
            &format!("{MIN}sysfs_root = \"tree\"\n"),
            &dir.path().join("c.toml"),
        )
        .unwrap();
        assert_eq!(c.gateway.sysfs_root, dir.path().join("tree"));
    }

    #[test]
    fn dotdot_in_a_sys_path_is_an_error_with_its_place() {
        for (section, line) in [
            ("[[sensor]]\nid = \"s\"\ntype = \"temperature\"\npath = ", 8),
            ("[[actuator]]\nid = \"l\"\ntype = \"led\"\npath = ", 8),
            (
                "[[actuator]]\nid = \"p\"\ntype = \"powerSwitch\"\npath = ",
                8,
            ),
        ] {
            let text = format!("{MIN}\n{section}\"/sys/class/../../etc/x\"\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.position, Some((line, 8)), "{e}");
            assert!(e.message.contains("must not contain \"..\""), "{e}");
            assert!(e.to_string().starts_with("/etc/t.toml:8:8: "), "{e}");
        }
        // Other paths, and names merely containing dots, are as before.
        let ok = format!(
            "{MIN}\n[[sensor]]\nid = \"s\"\ntype = \"temperature\"\npath = \"/sys/a..b/x\"\n\
             [[sensor]]\nid = \"t\"\ntype = \"temperature\"\npath = \"/tmp/../tmp/x\"\n"
        );
        assert_eq!(parse(&ok).unwrap().sensors.len(), 2);
    }

    #[test]
    fn missing_apikey_is_explained() {
        let e = parse("[gateway]\nid = \"gw\"\n").unwrap_err();
        assert!(e.message.contains("apikey"), "{e}");
    }

    #[test]
    fn zero_report_interval_is_rejected() {
        let e = parse(&format!("{MIN}report_interval = \"0s\"\n")).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
        assert!(e.message.contains("greater than zero"));
    }

    #[test]
    fn bad_ids_are_rejected() {
        let e = parse("[gateway]\nid = \"gw/1\"\napikey = \"k\"\n").unwrap_err();
        assert!(e.message.contains("invalid gateway id"));
        let text = format!("{MIN}[[sensor]]\nid = \"a,b\"\ntype = \"number\"\npath = \"/a\"\n");
        assert!(parse(&text)
            .unwrap_err()
            .message
            .contains("invalid sensor id"));
    }

    #[test]
    fn apikey_file_is_read_and_secret_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("apikey");
        std::fs::write(&key, "s3cr3t\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "[gateway]\nid = \"gw\"\napikey_file = \"apikey\"\n").unwrap();
        let c = Config::load(&cfg).unwrap();
        assert_eq!(c.gateway.apikey.expose(), "s3cr3t");
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("readable by every user")));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn errors_on_the_apikey_line_do_not_quote_it() {
        for v in [
            "123456789012345",
            "1.5e300",
            "[\"Xk9-SeCrEt\"]",
            "\"Xk9-SeCrEt",
            "Xk9-SeCrEt",
            "{ k = \"Xk9-SeCrEt\" }",
        ] {
            let text = format!("[gateway]\nid = \"gw\"\n  apikey = {v}\n");
            let e = Config::parse(&text, Path::new("c.toml")).unwrap_err();
            let shown = e.to_string();
            assert!(shown.starts_with("c.toml:3:"), "{shown}");
            assert!(shown.contains("apikey must be text in quotes"), "{shown}");
            for secret in ["123456789012345", "1.5e300", "Xk9-SeCrEt"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        // Other errors keep their message.
        let e =
            Config::parse("[gateway]\nid = 5\napikey = \"k\"\n", Path::new("c.toml")).unwrap_err();
        assert!(e.message.contains("invalid type"), "{e}");
    }

    fn parse_for(host: &FakeHost, text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, Path::new("/etc/thingplus-gw/config.toml"), host)
    }

    fn nics() -> FakeHost {
        FakeHost {
            nics: vec![
                ("lo".into(), [0; 6]),
                ("docker0".into(), [0x02, 0x42, 1, 2, 3, 4]),
                ("wlan0".into(), [0xb8, 0x27, 0xeb, 0, 0, 2]),
                ("eth0".into(), [0xb8, 0x27, 0xeb, 0, 0, 1]),
            ],
            ..FakeHost::default()
        }
    }

    #[test]
    fn auto_id_is_the_mac_of_the_named_or_first_hardware_nic() {
        let host = nics();
        let c = parse_for(&host, "[gateway]\napikey = \"k\"\n").unwrap();
        assert_eq!(c.gateway.id, "b827eb000001");
        assert_eq!(c.gateway.id_source, "MAC of the first hardware NIC");
        let c = parse_for(
            &host,
            "[gateway]\nid = \"auto\"\ninterface = \"wlan0\"\napikey = \"k\"\n",
        )
        .unwrap();
        assert_eq!(c.gateway.id, "b827eb000002");
        assert_eq!(c.gateway.id_source, "MAC of wlan0");
        let e = parse_for(
            &host,
            "[gateway]\nid = \"auto\"\ninterface = \"eth9\"\napikey = \"k\"\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "/etc/thingplus-gw/config.toml:2:6: id = \"auto\": interface \"eth9\" has no MAC address"
            ),
            "{e}"
        );
        // Only virtual interfaces, no id: said without a position.
        let e = parse_for(&FakeHost::default(), "[gateway]\napikey = \"k\"\n").unwrap_err();
        assert_eq!(e.position, None);
        assert!(
            e.message.starts_with(
                "[gateway] id is not set, so it is \"auto\": no network interface with a hardware MAC"
            ),
            "{e}"
        );
    }

    #[test]
    fn state_dir_is_set_or_systemds_first_state_directory_or_the_default() {
        let mut host = FakeHost::default();
        let c = parse_for(&host, MIN).unwrap();
        assert_eq!(c.gateway.state_dir, Path::new(DEFAULT_STATE_DIR));
        host.env.insert(
            "STATE_DIRECTORY".into(),
            "/var/lib/gw-a:/var/lib/gw-b".into(),
        );
        let c = parse_for(&host, MIN).unwrap();
        assert_eq!(c.gateway.state_dir, Path::new("/var/lib/gw-a"));
        assert_eq!(c.buffer.dir, Path::new("/var/lib/gw-a/buffer"));
        let c = parse_for(&host, &format!("{MIN}state_dir = \"/srv/gw\"\n")).unwrap();
        assert_eq!(c.gateway.state_dir, Path::new("/srv/gw"));
    }

    #[test]
    fn apikey_file_is_read_through_the_host_and_its_readers_checked() {
        let g = |gid, name: &str| Group {
            gid,
            name: Some(name.into()),
        };
        let mut host = FakeHost::default();
        host.secrets.insert(
            PathBuf::from("/etc/thingplus-gw/apikey"),
            (
                "  s3cr3t \n".into(),
                KeyFileAccess {
                    mode: 0o640,
                    file_group: g(4, "adm"),
                    service_group: Some(g(997, "thingplus-gw")),
                    caller_group: g(0, "root"),
                    caller_is_root: true,
                },
            ),
        );
        // Relative to the configuration's directory.
        let text = "[gateway]\nid = \"gw\"\napikey_file = \"apikey\"\n";
        let c = parse_for(&host, text).unwrap();
        assert_eq!(c.gateway.apikey.expose(), "s3cr3t");
        assert_eq!(
            c.warnings,
            ["apikey_file /etc/thingplus-gw/apikey is readable by group adm (gid 4) which is not the service's group thingplus-gw (gid 997): chgrp thingplus-gw it, or chmod 600"]
        );
        let e = parse_for(&host, "[gateway]\nid = \"gw\"\napikey_file = \"/nope\"\n").unwrap_err();
        assert_eq!(e.position, Some((3, 15)), "{e}");
        assert!(e.message.starts_with("apikey_file /nope: "), "{e}");
        let e = parse_for(
            &host,
            "[gateway]\nid = \"gw\"\napikey = \"k\"\napikey_file = \"apikey\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
    }

    #[test]
    fn sysfs_root_must_be_a_directory_of_the_host() {
        let mut host = FakeHost::default();
        host.dirs.insert(PathBuf::from("/etc/thingplus-gw/tree"));
        let c = parse_for(&host, &format!("{MIN}sysfs_root = \"tree\"\n")).unwrap();
        assert_eq!(c.gateway.sysfs_root, Path::new("/etc/thingplus-gw/tree"));
        let e = parse_for(&host, &format!("{MIN}sysfs_root = \"/srv/sys\"\n")).unwrap_err();
        assert_eq!(e.position, Some((4, 14)), "{e}");
        assert!(e.message.starts_with("sysfs_root /srv/sys: "), "{e}");
    }

    #[test]
    fn sysfs_root_alone_is_read_from_an_unfinished_file() {
        let mut host = FakeHost::default();
        host.dirs.insert(PathBuf::from("/srv/sys"));
        let path = Path::new("/etc/c.toml");
        let text =
            "[mqtt]\nsysfs_root = \"/x\"\n[gateway] # ours\nid = \nsysfs_root = \"/srv/sys\"\n";
        assert_eq!(
            sysfs_root_in(text, path, &host).unwrap(),
            Some(PathBuf::from("/srv/sys"))
        );
        assert_eq!(
            sysfs_root_in("[gateway]\nid = 1\n", path, &host).unwrap(),
            None
        );
        let e = sysfs_root_in("[gateway]\nsysfs_root = 5\n", path, &host).unwrap_err();
        assert_eq!(e.position, Some((2, 14)), "{e}");
        assert!(e.message.contains("must be a string"), "{e}");
    }
}
