//! The commands of the `thingplus-gw` binary.

pub mod buffer;
pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod id;
pub mod run;

/// EX_CONFIG from sysexits.h: systemd is told not to restart on it.
pub const EXIT_CONFIG: u8 = 78;
/// EX_TEMPFAIL: exit asking systemd for a restart (the `restart` command).
pub const EXIT_RESTART: u8 = 75;
