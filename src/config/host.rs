//! The facts about this machine a configuration depends on, behind one
//! trait: NIC MACs (for `id = "auto"`), key files and who may read them,
//! environment directories (`STATE_DIRECTORY`) and directories such as
//! `sysfs_root`. Parsing and validation see the machine only through
//! [`Host`]: the daemon passes [`SystemHost`], unit tests and the fuzz
//! targets a [`FakeHost`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::small_file::{self, SmallFileError};

use super::MAX_SECRET_FILE_SIZE;

/// The group the service runs as (`Group=` of the systemd unit, created by
/// the packages): the one group that should read its key files.
pub const SERVICE_GROUP: &str = "thingplus-gw";

/// A group: its id, and its name when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub gid: u32,
    pub name: Option<String>,
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} (gid {})", self.gid),
            None => write!(f, "{}", self.gid),
        }
    }
}

/// Who may read a key file, and who is asking: what
/// [`secret_mode_warning`] decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileAccess {
    /// Permission bits of the file.
    pub mode: u32,
    pub file_group: Group,
    /// [`SERVICE_GROUP`], when the system has it.
    pub service_group: Option<Group>,
    /// The effective group of this process.
    pub caller_group: Group,
    pub caller_is_root: bool,
}

/// What a configuration needs to know about the machine.
pub trait Host {
    /// The MAC of a named interface; `Ok(None)` when it has none or does not exist.
    fn mac_of(&self, interface: &str) -> Result<Option<[u8; 6]>, String>;
    /// Every interface with a MAC, by name.
    fn nics(&self) -> Vec<(String, [u8; 6])>;
    /// A key file's text (`apikey_file`); the error says why it cannot be used.
    fn read_secret(&self, path: &Path) -> Result<String, String>;
    /// Who may read a key file; `None` when it cannot be looked at.
    fn key_file_access(&self, path: &Path) -> Option<KeyFileAccess>;
    /// A directory named by the environment, such as `STATE_DIRECTORY`.
    fn env_var(&self, name: &str) -> Option<OsString>;
    /// Whether `path` is a directory (`Ok(false)`: it exists and is not one).
    fn is_dir(&self, path: &Path) -> std::io::Result<bool>;
}

/// This machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn mac_of(&self, interface: &str) -> Result<Option<[u8; 6]>, String> {
        crate::gateway_id::system_mac_of(interface)
    }

    fn nics(&self) -> Vec<(String, [u8; 6])> {
        crate::gateway_id::system_nics()
    }

    fn read_secret(&self, path: &Path) -> Result<String, String> {
        read_secret_file(path)
    }

    fn key_file_access(&self, path: &Path) -> Option<KeyFileAccess> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        // SAFETY: geteuid and getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Some(KeyFileAccess {
            mode: meta.mode(),
            file_group: group_by_id(meta.gid()),
            service_group: group_by_name(SERVICE_GROUP),
            caller_group: group_by_id(egid),
            caller_is_root: euid == 0,
        })
    }

    fn env_var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn is_dir(&self, path: &Path) -> std::io::Result<bool> {
        std::fs::metadata(path).map(|m| m.is_dir())
    }
}

/// A machine made up for tests and fuzzing: only what it is told exists.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    /// Interfaces and their MACs.
    pub nics: Vec<(String, [u8; 6])>,
    /// Key files: their text and who may read them.
    pub secrets: BTreeMap<PathBuf, (String, KeyFileAccess)>,
    pub env: BTreeMap<String, OsString>,
    pub dirs: BTreeSet<PathBuf>,
}

impl Host for FakeHost {
    fn mac_of(&self, interface: &str) -> Result<Option<[u8; 6]>, String> {
        Ok(self
            .nics
            .iter()
            .find(|(n, _)| n == interface)
            .map(|(_, m)| *m))
    }

    fn nics(&self) -> Vec<(String, [u8; 6])> {
        self.nics.clone()
    }

    fn read_secret(&self, path: &Path) -> Result<String, String> {
        self.secrets
            .get(path)
            .map(|(text, _)| text.clone())
            .ok_or_else(|| "cannot read it: No such file or directory (os error 2)".to_string())
    }

    fn key_file_access(&self, path: &Path) -> Option<KeyFileAccess> {
        self.secrets.get(path).map(|(_, access)| access.clone())
    }

    fn env_var(&self, name: &str) -> Option<OsString> {
        self.env.get(name).cloned()
    }

    fn is_dir(&self, path: &Path) -> std::io::Result<bool> {
        if self.dirs.contains(path) {
            Ok(true)
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }
}

/// Looks a group up by name in the system's group database.
pub fn group_by_name(name: &str) -> Option<Group> {
    let c = std::ffi::CString::new(name).ok()?;
    group_lookup(|grp, buf, result| {
        // SAFETY: every pointer is valid for the call; `buf` is as long as told.
        unsafe { libc::getgrnam_r(c.as_ptr(), grp, buf.as_mut_ptr(), buf.len(), result) }
    })
}

/// Looks a group up by id; a group without an entry has no name.
pub fn group_by_id(gid: u32) -> Group {
    group_lookup(|grp, buf, result| {
        // SAFETY: as in `group_by_name`.
        unsafe { libc::getgrgid_r(gid, grp, buf.as_mut_ptr(), buf.len(), result) }
    })
    .unwrap_or(Group { gid, name: None })
}

fn group_lookup(
    call: impl Fn(&mut libc::group, &mut Vec<libc::c_char>, &mut *mut libc::group) -> libc::c_int,
) -> Option<Group> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: a zeroed `group` is a valid out-parameter (null pointers).
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = call(&mut grp, &mut buf, &mut result);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success gr_name points to a NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(grp.gr_name) }
            .to_string_lossy()
            .into_owned();
        return Some(Group {
            gid: grp.gr_gid,
            name: Some(name),
        });
    }
}

/// A warning when a file holding a secret can be read by others than its
/// owner and the service's group ([`SERVICE_GROUP`], looked up by name: the
/// caller of `check` is often root, whose group is not the service's).
pub fn secret_file_warning(host: &dyn Host, path: &Path, what: &str) -> Option<String> {
    let a = host.key_file_access(path)?;
    secret_mode_warning(
        &path.display().to_string(),
        what,
        a.mode,
        &a.file_group,
        a.service_group.as_ref(),
        &a.caller_group,
        a.caller_is_root,
    )
}

/// The decision of [`secret_file_warning`] on facts already looked up.
/// Readers allowed besides the owner: the service's group when the system
/// has one, and the caller's group when the caller is not root (it is then
/// the service, or runs as it); the caller's group (root's too) when the
/// system has no service group, as on a box without the package.
pub fn secret_mode_warning(
    path: &str,
    what: &str,
    mode: u32,
    file_group: &Group,
    service_group: Option<&Group>,
    caller_group: &Group,
    caller_is_root: bool,
) -> Option<String> {
    if mode & 0o004 != 0 {
        return Some(format!(
            "{what} {path} is readable by every user: chmod 640 it (owner root, group {SERVICE_GROUP})"
        ));
    }
    if mode & 0o040 == 0 {
        return None;
    }
    let callers = file_group.gid == caller_group.gid;
    match service_group {
        Some(service) if file_group.gid == service.gid || (callers && !caller_is_root) => None,
        Some(service) => Some(format!(
            "{what} {path} is readable by group {file_group} which is not the service's group {service}: chgrp {SERVICE_GROUP} it, or chmod 600"
        )),
        None if callers => None,
        None => Some(format!(
            "{what} {path} is readable by group {file_group} which is not the service's group (this system has no group {SERVICE_GROUP}, and the daemon runs as group {caller_group}): chgrp it to the daemon's group, or chmod 600"
        )),
    }
}

/// Reads a small file holding a secret: a regular file of at most
/// [`MAX_SECRET_FILE_SIZE`] bytes. Opened without blocking, so a FIFO or a
/// device named by mistake neither hangs the daemon nor fills its memory.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    match small_file::read_text(path, MAX_SECRET_FILE_SIZE) {
        Ok((text, _)) => Ok(text),
        Err(SmallFileError::NotRegular(kind)) => Err(format!("not a regular file ({kind})")),
        Err(SmallFileError::TooLarge { .. }) => Err(format!(
            "larger than the limit of {MAX_SECRET_FILE_SIZE} bytes for a key file"
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {

    use crate::config::*;

    #[test]
    fn apikey_file_must_be_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let load = |key: &str| {
            std::fs::write(
                &cfg,
                format!("[gateway]\nid = \"gw\"\napikey_file = \"{key}\"\n"),
            )
            .unwrap();
            Config::load(&cfg)
        };
        // Too large: refused at the limit, not read whole.
        let big = dir.path().join("big");
        std::fs::write(&big, "k".repeat(MAX_SECRET_FILE_SIZE as usize + 1)).unwrap();
        let e = load(big.to_str().unwrap()).unwrap_err();
        assert!(e.message.contains("limit of 65536 bytes"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        // A device that never ends, a FIFO nobody writes to, a directory:
        // errors at once (no endless read, no hang).
        for (path, why) in [
            ("/dev/zero", "not a regular file"),
            (dir.path().to_str().unwrap(), "not a regular file"),
        ] {
            let e = load(path).unwrap_err();
            assert!(e.message.contains(why), "{path}: {e}");
        }
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = load(fifo.to_str().unwrap()).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        // At the limit is fine.
        std::fs::write(&big, "k".repeat(MAX_SECRET_FILE_SIZE as usize)).unwrap();
        assert!(load(big.to_str().unwrap()).is_ok());
    }

    #[test]
    fn key_readable_by_a_group_other_than_the_services_warns() {
        let g = |gid, name: &str| Group {
            gid,
            name: Some(name.to_string()),
        };
        let (root, service, adm) = (g(0, "root"), g(997, "thingplus-gw"), g(4, "adm"));
        let warn = |mode, file: &Group, svc: Option<&Group>, caller: &Group, is_root| {
            secret_mode_warning("/k", "apikey_file", mode, file, svc, caller, is_root)
        };
        // README's way, checked by root (`sudo thingplus-gw check`) or by
        // the service itself.
        assert_eq!(warn(0o640, &service, Some(&service), &root, true), None);
        assert_eq!(warn(0o640, &service, Some(&service), &service, false), None);
        // Another group: named, with the service's.
        assert_eq!(
            warn(0o640, &adm, Some(&service), &root, true).unwrap(),
            "apikey_file /k is readable by group adm (gid 4) which is not the service's group thingplus-gw (gid 997): chgrp thingplus-gw it, or chmod 600"
        );
        // root's own group is not the service's either.
        assert!(warn(0o640, &root, Some(&service), &root, true)
            .unwrap()
            .contains("group root (gid 0) which is not the service's group thingplus-gw"));
        // A daemon run under another group (a drop-in's Group=) reads its own.
        assert_eq!(warn(0o640, &adm, Some(&service), &adm, false), None);
        // No service group on this system: the caller's group is the one.
        assert_eq!(warn(0o640, &root, None, &root, true), None);
        let unnamed = Group {
            gid: 12345,
            name: None,
        };
        assert!(warn(0o640, &unnamed, None, &root, true)
            .unwrap()
            .contains("readable by group 12345 which is not the service's group (this system has no group thingplus-gw, and the daemon runs as group root (gid 0))"));
        // Not readable by the group, or readable by all.
        assert_eq!(warn(0o600, &adm, Some(&service), &root, true), None);
        assert!(warn(0o644, &service, Some(&service), &root, true)
            .unwrap()
            .contains("readable by every user"));
    }

    #[test]
    fn groups_are_looked_up_by_name_and_id() {
        // Every system has group 0, named root.
        let root = group_by_name("root").unwrap();
        assert_eq!(root.gid, 0);
        assert_eq!(group_by_id(0), root);
        assert_eq!(group_by_name("no-such-group-thingplus"), None);
        let unknown = group_by_id(4_000_000_000);
        assert_eq!(unknown.name, None);
        assert_eq!(unknown.to_string(), "4000000000");
    }
}
