//! JSON-RPC requests on `v/a/g/{gw}/req` and responses on `.../res`.

use serde_json::{json, Map, Value as Json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const SERVER_ERROR: i64 = -32000;

/// A request from the server. `id` is kept as JSON so it is echoed exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Json,
    pub method: String,
    pub params: Json,
}

/// A JSON-RPC error: code and human message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }
    pub fn method_not_found(message: impl Into<String>) -> Self {
        Self::new(METHOD_NOT_FOUND, message)
    }
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(SERVER_ERROR, message)
    }
}

/// A request that could not be decoded, with whatever id could be recovered
/// so the answer still reaches the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRequest {
    pub id: Json,
    pub error: RpcError,
}

/// Largest request accepted (bytes); a larger one gets -32600.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Deepest nesting of arrays and objects in a request.
pub const MAX_REQUEST_DEPTH: usize = 32;
/// Most values (array items and object members, at any depth) in a request.
pub const MAX_REQUEST_ELEMENTS: usize = 1024;

/// Checks size, nesting and element count before any parsing, so hostile
/// input costs no more than one pass over the bytes.
fn check_limits(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "request of {} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes",
            bytes.len()
        ));
    }
    let (mut depth, mut elements, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                elements += 1;
                if depth > MAX_REQUEST_DEPTH {
                    return Err(format!(
                        "request nests deeper than {MAX_REQUEST_DEPTH} levels"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => {
                elements += 1;
                if elements > MAX_REQUEST_ELEMENTS {
                    return Err(format!(
                        "request has more than {MAX_REQUEST_ELEMENTS} values"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The `"id"` member of the top-level object, read without parsing the
/// rest (which may be too large, too deep or broken): a string or a number,
/// else null. One pass over the bytes, no recursion, no allocation beyond
/// the id itself.
pub fn recover_id(bytes: &[u8]) -> Json {
    let mut s = Scanner { bytes, pos: 0 };
    if s.next_non_ws() != Some(b'{') {
        return Json::Null;
    }
    loop {
        let Some(key) = s.string() else {
            return Json::Null;
        };
        if s.next_non_ws() != Some(b':') {
            return Json::Null;
        }
        let start = s.skip_ws();
        if !s.skip_value() {
            return Json::Null;
        }
        if key == b"\"id\"" {
            return match serde_json::from_slice::<Json>(&bytes[start..s.pos]) {
                Ok(id @ (Json::String(_) | Json::Number(_))) => id,
                _ => Json::Null,
            };
        }
        if s.next_non_ws() != Some(b',') {
            return Json::Null;
        }
    }
}

/// A forward-only reader of JSON tokens for [`recover_id`].
struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn skip_ws(&mut self) -> usize {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        self.pos
    }

    fn next_non_ws(&mut self) -> Option<u8> {
        self.skip_ws();
        let b = self.bytes.get(self.pos).copied();
        self.pos += 1;
        b
    }

    /// A string token, quotes included.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.skip_ws();
        if self.bytes.get(start) != Some(&b'"') {
            return None;
        }
        let mut i = start + 1;
        while let Some(&b) = self.bytes.get(i) {
            match b {
                b'\\' => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return Some(&self.bytes[start..=i]);
                }
                _ => i += 1,
            }
        }
        None
    }

    /// Moves past one value of any depth; false when the input ends first.
    fn skip_value(&mut self) -> bool {
        let mut depth = 0usize;
        loop {
            self.skip_ws();
            let Some(&b) = self.bytes.get(self.pos) else {
                return false;
            };
            match b {
                b'"' => {
                    if self.string().is_none() {
                        return false;
                    }
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.pos += 1;
                }
                b'}' | b']' => {
                    if depth == 0 {
                        return false;
                    }
                    depth -= 1;
                    self.pos += 1;
                }
                b',' | b':' if depth > 0 => self.pos += 1,
                b',' | b':' => return false,
                _ => {
                    // A number or a literal: up to the next delimiter.
                    while self.bytes.get(self.pos).is_some_and(|b| {
                        !matches!(b, b',' | b':' | b'}' | b']' | b'"') && !b.is_ascii_whitespace()
                    }) {
                        self.pos += 1;
                    }
                }
            }
            if depth == 0 {
                return true;
            }
        }
    }
}

/// Decodes a request payload.
pub fn parse_request(bytes: &[u8]) -> Result<Request, BadRequest> {
    check_limits(bytes).map_err(|m| BadRequest {
        id: recover_id(bytes),
        error: RpcError::new(INVALID_REQUEST, m),
    })?;
    let v: Json = serde_json::from_slice(bytes).map_err(|e| BadRequest {
        id: recover_id(bytes),
        error: RpcError::new(PARSE_ERROR, format!("unparsable JSON: {e}")),
    })?;
    let Json::Object(mut obj) = v else {
        return Err(BadRequest {
            id: Json::Null,
            error: RpcError::new(INVALID_REQUEST, "a request must be a JSON object"),
        });
    };
    let id = match obj.remove("id") {
        Some(id @ (Json::String(_) | Json::Number(_))) => id,
        _ => {
            return Err(BadRequest {
                id: Json::Null,
                error: RpcError::new(INVALID_REQUEST, "\"id\" must be a string or a number"),
            })
        }
    };
    let method = match obj.remove("method") {
        Some(Json::String(m)) => m,
        _ => {
            return Err(BadRequest {
                id,
                error: RpcError::new(INVALID_REQUEST, "\"method\" must be a string"),
            })
        }
    };
    let params = obj.remove("params").unwrap_or(Json::Null);
    Ok(Request { id, method, params })
}

/// `{"id":..,"result":..}`
pub fn encode_result(id: &Json, result: Json) -> Vec<u8> {
    json!({"id": id, "result": result}).to_string().into_bytes()
}

/// `{"id":..,"error":{"code":..,"message":..}}`
pub fn encode_error(id: &Json, error: &RpcError) -> Vec<u8> {
    json!({"id": id, "error": {"code": error.code, "message": error.message}})
        .to_string()
        .into_bytes()
}

/// Reads a number of milliseconds from a JSON number or a numeric string.
pub fn millis_param(v: Option<&Json>, name: &str) -> Result<f64, RpcError> {
    let n = match v {
        Some(Json::Number(n)) => n.as_f64(),
        Some(Json::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() => Ok(n),
        _ => Err(RpcError::invalid_params(format!(
            "\"{name}\" must be a number of milliseconds (a number or a numeric string)"
        ))),
    }
}

/// Largest integer a JSON number carries exactly (2^53 - 1): beyond it a
/// time in ms is certainly not one (it is 285,000 years away).
pub const MAX_EXACT_INTEGER: i64 = (1 << 53) - 1;

/// Reads a whole number of milliseconds (a time): a JSON integer, a number
/// with no fraction, or a string of one, from 0 to [`MAX_EXACT_INTEGER`].
/// Anything else (1.5, 1e300, 2^63-1, "x", NaN) is invalid params.
pub fn integer_millis_param(v: Option<&Json>, name: &str) -> Result<i64, RpcError> {
    let exact = |n: f64| (n.fract() == 0.0).then_some(n);
    let n = match v {
        Some(Json::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Some(i as f64),
            (None, Some(u)) => Some(u as f64),
            _ => n.as_f64().and_then(exact),
        },
        Some(Json::String(s)) => s.trim().parse::<f64>().ok().and_then(exact),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() && (0.0..=MAX_EXACT_INTEGER as f64).contains(&n) => Ok(n as i64),
        _ => Err(RpcError::invalid_params(format!(
            "\"{name}\" must be a whole number of milliseconds from 0 to {MAX_EXACT_INTEGER}"
        ))),
    }
}

/// The params object, or an empty one when absent.
pub fn params_object(params: &Json) -> Result<Map<String, Json>, RpcError> {
    match params {
        Json::Object(m) => Ok(m.clone()),
        Json::Null => Ok(Map::new()),
        _ => Err(RpcError::invalid_params("\"params\" must be an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request() {
        let r =
            parse_request(br#"{"id":"17","method":"timeSync","params":{"time":1461563978000}}"#)
                .unwrap();
        assert_eq!(r.id, json!("17"));
        assert_eq!(r.method, "timeSync");
        assert_eq!(r.params["time"], json!(1461563978000i64));
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.error.code, PARSE_ERROR);
        assert_eq!(e.id, Json::Null);
    }

    #[test]
    fn missing_method_keeps_the_id() {
        let e = parse_request(br#"{"id":"5"}"#).unwrap_err();
        assert_eq!(e.error.code, INVALID_REQUEST);
        assert_eq!(e.id, json!("5"));
        let e = parse_request(br#"[1]"#).unwrap_err();
        assert_eq!(e.error.code, INVALID_REQUEST);
    }

    #[test]
    fn limits_are_enforced_before_parsing() {
        let big = format!(
            r#"{{"id":"1","method":"x","params":{{"s":"{}"}}}}"#,
            "a".repeat(MAX_REQUEST_BYTES)
        );
        let e = parse_request(big.as_bytes()).unwrap_err();
        assert_eq!(e.error.code, INVALID_REQUEST);
        assert!(e.error.message.contains("exceeds the limit"));
        let deep = format!(
            r#"{{"id":"1","method":"x","params":{}{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        let e = parse_request(deep.as_bytes()).unwrap_err();
        assert!(e.error.message.contains("nests deeper"), "{:?}", e);
        let many = format!(
            r#"{{"id":"1","method":"x","params":[{}]}}"#,
            vec!["1"; 2000].join(",")
        );
        let e = parse_request(many.as_bytes()).unwrap_err();
        assert!(e.error.message.contains("more than"), "{:?}", e);
        // Brackets and commas inside strings do not count.
        let ok = format!(
            r#"{{"id":"1","method":"x","params":{{"s":"{}"}}}}"#,
            "[,\\\"".repeat(100)
        );
        assert!(parse_request(ok.as_bytes()).is_ok());
    }

    #[test]
    fn the_id_is_recovered_from_a_request_that_cannot_be_parsed() {
        let deep = format!(
            r#"{{"method":"swInfo","params":{}{},"id":"deep"}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        let e = parse_request(deep.as_bytes()).unwrap_err();
        assert_eq!(e.error.code, INVALID_REQUEST);
        assert_eq!(e.id, json!("deep"));
        let big = format!(
            r#"{{"id":7,"method":"swInfo","params":{{"s":"{}"}}}}"#,
            "\\\"".repeat(MAX_REQUEST_BYTES)
        );
        assert_eq!(parse_request(big.as_bytes()).unwrap_err().id, json!(7));
        // Broken after the id: the id still reaches the caller.
        let e = parse_request(br#"{"id":"cut","method":"sw"#).unwrap_err();
        assert_eq!((e.error.code, e.id), (PARSE_ERROR, json!("cut")));
        // Keys and strings that only look like the id are skipped.
        assert_eq!(
            recover_id(br#"{"x":{"id":"inner"},"s":"\"id\":1","id":"outer"}"#),
            json!("outer")
        );
        for no_id in [
            &br#"{"x":1}"#[..],
            br#"{"id":{"a":1}}"#,
            br#"{"id":[1]}"#,
            br#"["id","x"]"#,
            br#"{"x":]"#,
            br#"{"id""#,
            b"",
            b"\x01\x02",
        ] {
            assert_eq!(
                recover_id(no_id),
                Json::Null,
                "{}",
                String::from_utf8_lossy(no_id)
            );
        }
    }

    #[test]
    fn integer_millis_accepts_only_whole_exact_numbers() {
        let ok = |v: Json| integer_millis_param(Some(&v), "t").unwrap();
        assert_eq!(ok(json!(1461563978000i64)), 1461563978000);
        assert_eq!(ok(json!(1461563978000.0)), 1461563978000);
        assert_eq!(ok(json!("1461563978000")), 1461563978000);
        assert_eq!(ok(json!(MAX_EXACT_INTEGER)), MAX_EXACT_INTEGER);
        let big: Json = serde_json::from_str("1e300").unwrap();
        for bad in [
            big,
            json!(i64::MAX),
            json!(u64::MAX),
            json!(MAX_EXACT_INTEGER + 1),
            json!(1.5),
            json!(-1),
            json!("x"),
            json!("NaN"),
            json!("inf"),
            json!(null),
            json!([1]),
        ] {
            let e = integer_millis_param(Some(&bad), "t").unwrap_err();
            assert_eq!(e.code, INVALID_PARAMS, "{bad}");
        }
        assert!(integer_millis_param(None, "t").is_err());
    }

    #[test]
    fn responses_have_the_protocol_shape() {
        let ok = encode_result(&json!("1"), json!(""));
        assert_eq!(String::from_utf8(ok).unwrap(), r#"{"id":"1","result":""}"#);
        let err = encode_error(&json!("2"), &RpcError::invalid_params("bad"));
        let v: Json = serde_json::from_slice(&err).unwrap();
        assert_eq!(v, json!({"id":"2","error":{"code":-32602,"message":"bad"}}));
    }

    #[test]
    fn millis_accepts_numbers_and_numeric_strings() {
        assert_eq!(millis_param(Some(&json!(60000)), "x").unwrap(), 60000.0);
        assert_eq!(
            millis_param(Some(&json!(" 120000 ")), "x").unwrap(),
            120000.0
        );
        assert!(millis_param(Some(&json!("abc")), "x").is_err());
        assert!(millis_param(None, "x").is_err());
        assert!(millis_param(Some(&json!([1])), "x").is_err());
    }
}
