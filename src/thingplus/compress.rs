//! Optional gzip of large payloads (`[mqtt] compress = "gzip"`).
//!
//! Thing+ accepts gzip-compressed payloads for large messages; the protocol
//! page says nothing of a flag, so the receiver tells them apart by the gzip
//! magic (`1f 8b`), which no JSON text and no comma-separated status can
//! start with. Pure: bytes in, bytes out.

use std::borrow::Cow;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// gzip level (see [`gzip`]).
const LEVEL: u32 = 3;

/// The first two bytes of every gzip stream (RFC 1952).
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Default of `[mqtt] compress_min_bytes`: below about 1 KiB gzip's 18
/// bytes of framing eat most of what it saves.
pub const DEFAULT_MIN_BYTES: usize = 1024;

/// What is done to values and status payloads before they are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Off,
    /// gzip payloads longer than `min_bytes`.
    Gzip { min_bytes: usize },
}

impl Compression {
    /// The payload to publish: gzip of `payload` when compression is on,
    /// the payload is longer than the threshold and gzip makes it smaller;
    /// `payload` itself otherwise (so a message never grows).
    pub fn apply(self, payload: Vec<u8>) -> Vec<u8> {
        match self {
            Compression::Gzip { min_bytes } if payload.len() > min_bytes => {
                let packed = gzip(&payload);
                if packed.len() < payload.len() {
                    packed
                } else {
                    payload
                }
            }
            _ => payload,
        }
    }
}

/// gzip at level 3: it saves nearly all that higher levels save at a
/// fraction of their CPU, and on an edge box's slow core that CPU bounds how
/// fast a backlog drains (figures per level: benches/README.md).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::new(LEVEL),
    );
    e.write_all(data).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

/// Whether `payload` is a gzip stream (by its magic).
pub fn is_gzip(payload: &[u8]) -> bool {
    payload.starts_with(&GZIP_MAGIC)
}

/// A received payload as its sender packed it: gunzipped when it starts
/// with the gzip magic, unchanged otherwise. `limit` bounds the output
/// (a small bomb cannot fill the memory).
pub fn decode(payload: &[u8], limit: usize) -> std::io::Result<Cow<'_, [u8]>> {
    if !is_gzip(payload) {
        return Ok(Cow::Borrowed(payload));
    }
    let mut out = Vec::new();
    GzDecoder::new(payload)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("gzip payload inflates beyond {limit} bytes"),
        ));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Reading, Value};
    use crate::thingplus::encode_values;

    fn backlog(n: usize) -> Vec<u8> {
        let readings: Vec<Reading> = (0..n)
            .map(|i| {
                Reading::new(
                    format!("b827eb1dcccc-temperature-{}", i % 10),
                    1_461_563_978_000 + i as i64 * 1000,
                    Value::Number(20.0 + (i % 97) as f64 / 4.0),
                )
            })
            .collect();
        encode_values(&readings).into_bytes()
    }

    #[test]
    fn large_payloads_are_gzipped_and_come_back_unchanged() {
        let json = backlog(2000);
        let sent = Compression::Gzip { min_bytes: 1024 }.apply(json.clone());
        assert!(is_gzip(&sent));
        assert!(
            sent.len() * 3 < json.len(),
            "{} -> {} bytes",
            json.len(),
            sent.len()
        );
        assert_eq!(decode(&sent, json.len()).unwrap().as_ref(), &json[..]);
    }

    #[test]
    fn small_payloads_and_off_are_left_alone() {
        let json = backlog(3);
        assert!(json.len() <= 1024);
        let sent = Compression::Gzip { min_bytes: 1024 }.apply(json.clone());
        assert_eq!(sent, json);
        let big = backlog(2000);
        assert_eq!(Compression::Off.apply(big.clone()), big);
        // Plain payloads pass through decode untouched.
        assert!(matches!(decode(&json, 10).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn the_threshold_is_exclusive() {
        let json = backlog(50);
        let at = Compression::Gzip {
            min_bytes: json.len(),
        };
        assert_eq!(at.apply(json.clone()), json);
        let below = Compression::Gzip {
            min_bytes: json.len() - 1,
        };
        assert!(is_gzip(&below.apply(json)));
    }

    #[test]
    fn incompressible_payloads_are_sent_as_they_are() {
        // Pseudo-random bytes: gzip would only add its framing.
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let sent = Compression::Gzip { min_bytes: 1024 }.apply(noise.clone());
        assert_eq!(sent, noise);
    }

    #[test]
    fn decode_refuses_output_beyond_the_limit_and_garbage() {
        let zeros = gzip(&vec![b'0'; 1 << 20]);
        assert!(zeros.len() < 4096);
        assert!(decode(&zeros, 1 << 16).is_err());
        assert_eq!(decode(&zeros, 1 << 20).unwrap().len(), 1 << 20);
        assert!(decode(&[0x1f, 0x8b, 0, 1, 2, 3], 1024).is_err());
    }
}
