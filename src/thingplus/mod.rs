//! The Thing+ wire format: topics, payload encoders and parsers, JSON-RPC.
//! Pure code: bytes in, bytes out, no I/O.

pub mod compress;
pub mod payload;
pub mod rpc;
pub mod topics;

pub use compress::Compression;
pub use payload::{
    encode_status, encode_values, pack_values, parse_status, parse_values, Packer, ParsedStatus,
    Status,
};
pub use topics::Topics;
