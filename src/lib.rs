//! thingplus-gw: a Thing+ gateway daemon. The binary is a thin CLI over
//! these modules; tests and benchmarks use them directly.

pub mod actuator;
pub mod backoff;
pub mod buffer;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control_socket;
pub mod daemon;
pub mod discover;
pub mod fasthash;
pub mod gateway_id;
pub mod log_limit;
pub mod logging;
pub mod reading;
pub mod register;
pub mod reload;
pub mod rpc;
pub mod sensor;
pub mod session;
pub mod small_file;
pub mod state;
pub mod status_board;
pub mod systemd;
pub mod thingplus;
pub mod tls;
pub mod units;
pub mod version;
