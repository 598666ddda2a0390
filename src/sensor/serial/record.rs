//! Records: the fields one line of a serial device gave, and why a line
//! gave none.

use serde_json::Value as J;

use super::json;
use crate::sensor::device::ProblemKind;

/// The fields one line gave. A field set to `None` is one the line speaks
/// of but has no value for (an NMEA sentence without a fix has no location).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    fields: Vec<(String, Option<J>)>,
    object: Option<serde_json::Map<String, J>>,
}

/// What a record says about one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<'a> {
    /// The record does not speak of the field.
    Absent,
    /// The record says the field has no value now.
    NoValue,
    Value(&'a J),
}

impl Record {
    pub fn set(&mut self, field: &str, value: Option<J>) {
        match self.fields.iter_mut().find(|(f, _)| f == field) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((field.to_string(), value)),
        }
    }

    /// A record over a JSON object, looked up by key or dotted path.
    pub fn from_object(map: serde_json::Map<String, J>) -> Record {
        Record {
            fields: Vec::new(),
            object: Some(map),
        }
    }

    pub fn get(&self, field: &str) -> Lookup<'_> {
        let found = match &self.object {
            Some(obj) => json::lookup(obj, field).map(Some),
            None => self
                .fields
                .iter()
                .find(|(f, _)| f == field)
                .map(|(_, v)| v.as_ref()),
        };
        match found {
            None => Lookup::Absent,
            Some(None) | Some(Some(J::Null)) => Lookup::NoValue,
            Some(Some(v)) => Lookup::Value(v),
        }
    }
}

/// Why a line was not used.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub kind: ProblemKind,
    pub detail: String,
}

impl ParseError {
    pub fn malformed(detail: impl Into<String>) -> Self {
        ParseError {
            kind: ProblemKind::Malformed,
            detail: detail.into(),
        }
    }
    pub fn checksum(detail: impl Into<String>) -> Self {
        ParseError {
            kind: ProblemKind::BadChecksum,
            detail: detail.into(),
        }
    }
}
