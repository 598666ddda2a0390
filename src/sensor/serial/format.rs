//! Line formats: how one line of a serial device becomes a record. Each
//! format lives in its own file beside its parser and implements
//! [`LineFormat`]; [`line_format`] is where a format is registered.

use super::record::{ParseError, Record};
use super::{csv, json, nmea, regex};
use crate::config::SerialFormat;

/// A serial line format. Parsing is pure: one line in, a record out.
pub trait LineFormat: Send + Sync {
    /// Parses one line of text (without its terminator). `Ok(None)`: a
    /// valid line that carries nothing (another NMEA sentence, a CSV header).
    fn parse(&self, line: &str) -> Result<Option<Record>, ParseError>;

    /// Why the device may give no value for `field`, for the sensor's error
    /// ("the receiver has no fix"). None by default.
    fn no_value_hint(&self, _field: &str) -> Option<&'static str> {
        None
    }

    /// Parses one line as the device sent it: bytes that are not text are
    /// a malformed line.
    fn parse_bytes(&self, line: &[u8]) -> Result<Option<Record>, ParseError> {
        match std::str::from_utf8(line) {
            Ok(text) => self.parse(text),
            Err(_) => Err(ParseError::malformed("binary data, not text")),
        }
    }
}

/// The parser of a port's format: one line per format.
pub fn line_format(format: &SerialFormat) -> Box<dyn LineFormat> {
    match format {
        SerialFormat::Nmea => Box::new(nmea::Nmea),
        SerialFormat::Csv { columns, delimiter } => {
            Box::new(csv::Csv::new(columns.clone(), *delimiter))
        }
        SerialFormat::Json => Box::new(json::Json),
        SerialFormat::Regex(re) => Box::new(regex::NamedGroups(re.clone())),
    }
}

/// Parses one line (without its terminator) in a port's format.
/// `Ok(None)`: a valid line that carries nothing (another NMEA sentence, a
/// CSV header).
pub fn parse_line(format: &SerialFormat, line: &[u8]) -> Result<Option<Record>, ParseError> {
    line_format(format).parse_bytes(line)
}

#[cfg(test)]
mod tests {
    use super::super::lines::{LineEvent, LineSplitter};
    use super::super::record::Lookup;
    use super::*;
    use crate::sensor::device::ProblemKind;

    fn formats() -> Vec<SerialFormat> {
        vec![
            SerialFormat::Nmea,
            SerialFormat::Csv {
                columns: vec!["a".into(), "b".into()],
                delimiter: ',',
            },
            SerialFormat::Json,
            SerialFormat::Regex(::regex::Regex::new(r"T=(?<t>-?[0-9.]+)").unwrap()),
        ]
    }

    #[test]
    fn every_format_is_registered_with_its_own_parser() {
        let line = |f: &SerialFormat, l: &str| line_format(f).parse(l);
        let [nmea, csv, json, regex] = &formats()[..] else {
            unreachable!()
        };
        let gga = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        assert!(line(nmea, gga).unwrap().is_some());
        assert!(line(csv, gga).is_err());
        let r = line(csv, "1,2").unwrap().unwrap();
        assert_eq!(r.get("b"), Lookup::Value(&serde_json::json!("2")));
        let r = line(json, r#"{"t":1}"#).unwrap().unwrap();
        assert_eq!(r.get("t"), Lookup::Value(&serde_json::json!(1)));
        let r = line(regex, "T=4").unwrap().unwrap();
        assert_eq!(r.get("t"), Lookup::Value(&serde_json::json!("4")));
        // Only NMEA knows why a field can have no value.
        for f in [csv, json, regex] {
            assert_eq!(line_format(f).no_value_hint("location"), None);
        }
        assert_eq!(
            line_format(nmea).no_value_hint("location"),
            Some("the receiver has no fix")
        );
        assert_eq!(line_format(nmea).no_value_hint("satellites"), None);
    }

    #[test]
    fn binary_noise_is_malformed() {
        for f in formats() {
            let e = parse_line(&f, &[0xff, 0xfe, 0x00, b'{']).unwrap_err();
            assert_eq!(e.kind, ProblemKind::Malformed, "{}", f.name());
            assert_eq!(e.detail, "binary data, not text");
        }
    }

    proptest::proptest! {
        /// No input makes a parser panic, and the splitter never holds more
        /// than its limit however the bytes are cut.
        #[test]
        fn parsers_and_splitter_take_any_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
        ) {
            let formats: Vec<Box<dyn LineFormat>> = formats().iter().map(line_format).collect();
            let mut splitter = LineSplitter::new(64);
            for c in &chunks {
                for f in &formats {
                    let _ = f.parse_bytes(c);
                }
                for ev in splitter.push(c) {
                    if let LineEvent::Line(l) = ev {
                        proptest::prop_assert!(l.len() <= 64);
                        proptest::prop_assert!(!l.contains(&b'\n') && !l.contains(&b'\r'));
                        for f in &formats {
                            let _ = f.parse_bytes(&l);
                        }
                    }
                }
                proptest::prop_assert!(splitter.held() <= 4096 + 1);
            }
        }
    }
}
