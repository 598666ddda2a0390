//! The decoder of the server's requests (`v/a/g/{gw}/req` payloads): any
//! bytes give a request or a JSON-RPC error, never a panic, and the answer
//! built from either is valid JSON carrying the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use thingplus_gw::thingplus::rpc::{
    encode_error, encode_result, millis_param, params_object, parse_request, RpcError,
    INVALID_REQUEST, MAX_REQUEST_BYTES, PARSE_ERROR,
};

fuzz_target!(|data: &[u8]| {
    let answer = match parse_request(data) {
        Ok(req) => {
            assert!(data.len() <= MAX_REQUEST_BYTES);
            assert!(matches!(req.id, Json::String(_) | Json::Number(_)));
            // What the dispatcher does with params, for every method.
            if let Ok(p) = params_object(&req.params) {
                for key in ["time", "reportInterval", "duration", "interval"] {
                    if let Ok(ms) = millis_param(p.get(key), key) {
                        assert!(ms.is_finite());
                    }
                }
            }
            let bytes = encode_result(&req.id, Json::String(req.method.clone()));
            (req.id, bytes)
        }
        Err(bad) => {
            assert!(
                [PARSE_ERROR, INVALID_REQUEST].contains(&bad.error.code),
                "{bad:?}"
            );
            let bytes = encode_error(&bad.id, &RpcError::new(bad.error.code, bad.error.message));
            (bad.id, bytes)
        }
    };
    let (id, bytes) = answer;
    let back: Json = serde_json::from_slice(&bytes).expect("the answer is JSON");
    assert_eq!(back["id"], id);
});
