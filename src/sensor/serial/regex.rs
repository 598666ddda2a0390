//! Lines matched by a regex whose named groups are the fields:
//! `T=(?<temp>-?[0-9.]+) H=(?<hum>[0-9]+)`.
//!
//! Pure: one line in, fields out. A line the regex does not match is an
//! error; a group that did not take part in the match is absent.

use ::regex::Regex;
use serde_json::Value as J;

use super::format::LineFormat;
use super::record::{ParseError, Record};

/// The `regex` format: the regex whose named groups are the fields.
pub struct NamedGroups(pub Regex);

impl LineFormat for NamedGroups {
    fn parse(&self, line: &str) -> Result<Option<Record>, ParseError> {
        parse(line, &self.0)
    }
}

pub fn parse(line: &str, re: &Regex) -> Result<Option<Record>, ParseError> {
    let line = line.trim_matches(|c: char| c == '\r' || c == '\n');
    let Some(caps) = re.captures(line) else {
        return Err(ParseError::malformed("the line does not match the regex"));
    };
    let mut r = Record::default();
    for name in re.capture_names().flatten() {
        if let Some(m) = caps.name(name) {
            r.set(name, Some(J::String(m.as_str().to_string())));
        }
    }
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::super::record::Lookup;
    use super::*;
    use serde_json::json;

    #[test]
    fn named_groups_are_fields() {
        let re = Regex::new(r"T=(?<temp>-?[0-9.]+)(?: H=(?<hum>[0-9]+))?").unwrap();
        let r = parse("WS1 T=-3.5 H=81\r", &re).unwrap().unwrap();
        assert_eq!(r.get("temp"), Lookup::Value(&json!("-3.5")));
        assert_eq!(r.get("hum"), Lookup::Value(&json!("81")));
        let r = parse("T=4", &re).unwrap().unwrap();
        assert_eq!(r.get("hum"), Lookup::Absent);
        assert!(parse("garbage", &re).is_err());
    }
}
