//! One JSON object per line: `{"temp":21.5,"wind":{"speed":3.2}}`.
//!
//! Pure: one line in, a record out. A field is a key, or a dotted path into
//! nested objects and arrays (`wind.speed`, `values.0`); a key that itself
//! contains dots is found first. `null` means "no value".

use serde_json::Value as J;

use super::format::LineFormat;
use super::record::{ParseError, Record};

/// The `json` format.
pub struct Json;

impl LineFormat for Json {
    fn parse(&self, line: &str) -> Result<Option<Record>, ParseError> {
        parse(line)
    }
}

/// Nesting deeper than this is not an instrument's output.
const MAX_DEPTH: usize = 64;

pub fn parse(line: &str) -> Result<Option<Record>, ParseError> {
    let line = line.trim();
    // serde_json's own recursion limit (128) keeps the parser safe; reject
    // silly depths before building them.
    let depth = line
        .bytes()
        .scan(0i32, |d, b| {
            match b {
                b'{' | b'[' => *d += 1,
                b'}' | b']' => *d -= 1,
                _ => {}
            }
            Some(*d)
        })
        .max()
        .unwrap_or(0);
    if depth > MAX_DEPTH as i32 {
        return Err(ParseError::malformed("JSON nested too deeply"));
    }
    match serde_json::from_str::<J>(line) {
        Ok(J::Object(map)) => Ok(Some(Record::from_object(map))),
        Ok(_) => Err(ParseError::malformed("a JSON line must be an object")),
        Err(e) => Err(ParseError::malformed(format!("not JSON: {e}"))),
    }
}

/// Finds `path` in `obj`: the key itself, else the dotted path.
pub fn lookup<'a>(obj: &'a serde_json::Map<String, J>, path: &str) -> Option<&'a J> {
    if let Some(v) = obj.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = obj.get(parts.next()?)?;
    for p in parts {
        cur = match cur {
            J::Object(m) => m.get(p)?,
            J::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::super::record::Lookup;
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_and_paths() {
        let r =
            parse(r#"{"temp":21.5,"wind":{"speed":3.2,"dir":"NW"},"v":[1,2],"a.b":7,"gone":null}"#)
                .unwrap()
                .unwrap();
        assert_eq!(r.get("temp"), Lookup::Value(&json!(21.5)));
        assert_eq!(r.get("wind.speed"), Lookup::Value(&json!(3.2)));
        assert_eq!(r.get("wind.dir"), Lookup::Value(&json!("NW")));
        assert_eq!(r.get("v.1"), Lookup::Value(&json!(2)));
        assert_eq!(r.get("a.b"), Lookup::Value(&json!(7)));
        assert_eq!(
            r.get("wind"),
            Lookup::Value(&json!({"speed":3.2,"dir":"NW"}))
        );
        assert_eq!(r.get("gone"), Lookup::NoValue);
        assert_eq!(r.get("nope"), Lookup::Absent);
        assert_eq!(r.get("wind.speed.x"), Lookup::Absent);
        assert_eq!(r.get("v.9"), Lookup::Absent);
    }

    #[test]
    fn not_objects_are_errors() {
        for l in [
            "",
            "[1,2]",
            "42",
            "{\"a\":",
            "{\"a\":1} trailing",
            "\u{0}\u{1}",
        ] {
            assert!(parse(l).is_err(), "{l:?}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(&deep).is_err());
    }
}
