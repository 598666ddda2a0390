//! Serial line sensors: a named port (`[serial.NAME]`) prints lines; each
//! line becomes a record of fields (NMEA, CSV, JSON or regex); each sensor
//! of the port reports one field.
//!
//! One task per port owns the device. It reads through a bounded line
//! splitter (a device that never sends a newline cannot grow memory),
//! counts and rate-limits every kind of bad input, and when the device goes
//! away (missing at start, unplugged later: reads return `Ok(0)` or fail)
//! puts the port's sensors in `err` and reopens it with backoff.
//!
//! Streaming ports: series sensors take the newest value of their field
//! once per `interval` (default: the report interval); event sensors take
//! every value as it comes (only changes are sent). A series sensor whose
//! field has not come for three intervals goes `err` (an event sensor only
//! if it sets `interval`: event devices may print only on change); one
//! whose field the device says has no value (an NMEA sentence without a fix)
//! goes `err` at its next sample. Request ports (`request = ...`): the
//! request is written every port `interval`, and each reply line is a sample
//! of the sensors whose fields it names (a reply may span several lines); no
//! reply within `reply_timeout` is an error for all of them, and a field no
//! line of a reply named is an error for its sensor.
//!
//! A format is one file here implementing [`LineFormat`], registered in
//! [`line_format`] (its name and options are read by the configuration's
//! `SerialFormat`). Records (`record.rs`) and line splitting (`lines.rs`)
//! are apart from the port task (`port.rs`); the device plumbing the task
//! shares with Modbus is [`crate::sensor::device`].

pub mod csv;
mod format;
pub mod json;
mod lines;
pub mod nmea;
mod port;
mod record;
pub mod regex;

pub use crate::sensor::convert::field_value;
pub use crate::sensor::device::{Counters, ProblemKind};
pub use format::{line_format, parse_line, LineFormat};
pub use lines::{LineEvent, LineSplitter};
pub use port::spawn_port;
pub use record::{Lookup, ParseError, Record};
