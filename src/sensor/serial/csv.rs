//! Delimited lines: `21.5,48,1013.2` with named columns.
//!
//! Pure: one line in, fields out. Cells are trimmed; a cell may be quoted
//! (`"a, b"`, with `""` for a quote). Columns named `""` or `"_"` are
//! skipped. A line with another number of cells than columns is an error
//! (the instrument and the configuration disagree), and a line that repeats
//! the column names (a header) is ignored.

use serde_json::Value as J;

use super::format::LineFormat;
use super::record::{ParseError, Record};

/// The `csv` format: its column names and delimiter.
pub struct Csv {
    columns: Vec<String>,
    delimiter: char,
}

impl Csv {
    pub fn new(columns: Vec<String>, delimiter: char) -> Self {
        Csv { columns, delimiter }
    }
}

impl LineFormat for Csv {
    fn parse(&self, line: &str) -> Result<Option<Record>, ParseError> {
        parse(line, &self.columns, self.delimiter)
    }
}

pub fn parse(
    line: &str,
    columns: &[String],
    delimiter: char,
) -> Result<Option<Record>, ParseError> {
    let line = line.trim_matches(|c: char| c == '\r' || c == '\n');
    let cells = split(line, delimiter)?;
    if cells.len() != columns.len() {
        return Err(ParseError::malformed(format!(
            "{} values on the line, {} columns configured",
            cells.len(),
            columns.len()
        )));
    }
    if cells.iter().zip(columns).all(|(c, n)| c == n) {
        return Ok(None); // a header line
    }
    let mut r = Record::default();
    for (cell, name) in cells.into_iter().zip(columns) {
        if name.is_empty() || name == "_" {
            continue;
        }
        r.set(
            name,
            if cell.is_empty() {
                None
            } else {
                Some(J::String(cell))
            },
        );
    }
    Ok(Some(r))
}

fn split(line: &str, delimiter: char) -> Result<Vec<String>, ParseError> {
    let mut cells = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        // One cell.
        while chars.next_if(|c| *c == ' ' && delimiter != ' ').is_some() {}
        let mut cell = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => cell.push('"'),
                    Some('"') => break,
                    Some(c) => cell.push(c),
                    None => return Err(ParseError::malformed("unterminated quote")),
                }
            }
            while chars
                .next_if(|c| c.is_whitespace() && *c != delimiter)
                .is_some()
            {}
            match chars.peek() {
                None => {}
                Some(c) if *c == delimiter => {}
                Some(_) => return Err(ParseError::malformed("text after a closing quote")),
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != delimiter) {
                cell.push(c);
            }
            cell = cell.trim().to_string();
        }
        cells.push(cell);
        if chars.next().is_none() {
            return Ok(cells);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Lookup;
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    fn text(r: &Record, f: &str) -> Option<String> {
        match r.get(f) {
            Lookup::Value(J::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn named_columns() {
        let c = cols(&["time", "temp", "_", "hum"]);
        let r = parse("12:00:01, 21.5 ,x,48\r\n", &c, ',').unwrap().unwrap();
        assert_eq!(text(&r, "temp").as_deref(), Some("21.5"));
        assert_eq!(text(&r, "hum").as_deref(), Some("48"));
        assert_eq!(text(&r, "time").as_deref(), Some("12:00:01"));
        assert_eq!(r.get("_"), Lookup::Absent);
    }

    #[test]
    fn other_delimiters_quotes_and_empty_cells() {
        let c = cols(&["a", "b", "c"]);
        let r = parse("1\t\"x\"\"y, z\"\t", &c, '\t').unwrap().unwrap();
        assert_eq!(text(&r, "a").as_deref(), Some("1"));
        assert_eq!(text(&r, "b").as_deref(), Some("x\"y, z"));
        assert_eq!(r.get("c"), Lookup::NoValue);
        let r = parse("1;2;3", &c, ';').unwrap().unwrap();
        assert_eq!(text(&r, "c").as_deref(), Some("3"));
    }

    #[test]
    fn header_is_ignored_and_wrong_shapes_are_errors() {
        let c = cols(&["a", "b"]);
        assert_eq!(parse("a,b", &c, ',').unwrap(), None);
        assert!(parse("1", &c, ',').is_err());
        assert!(parse("1,2,3", &c, ',').is_err());
        assert!(parse("\"1,2", &c, ',').is_err());
        assert!(parse("\"1\"x,2", &c, ',').is_err());
    }
}
