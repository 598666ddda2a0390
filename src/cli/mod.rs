//! The commands of the `thingplus-gw` binary.

pub mod args;
pub mod buffer;
pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discover;
pub mod id;
pub mod register;
pub mod run;
pub mod status;

/// EX_CONFIG from sysexits.h: systemd is told not to restart on it.
pub const EXIT_CONFIG: u8 = 78;
/// EX_TEMPFAIL: exit asking systemd for a restart (the `restart` command).
pub const EXIT_RESTART: u8 = 75;
