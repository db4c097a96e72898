//! Request bodies: the byte limit as 413, and JSON into typed requests with errors that
//! name the offending field.

use super::body_deadline::RequestBodyTimeout;
use crate::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};

/// The body bytes, or the limit / read failure as OpenAI error JSON (413 when too big,
/// 408 when it did not arrive within `--request-body-timeout`).
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        let status = rej.status();
        if let Some(t) = RequestBodyTimeout::find(&rej) {
            // The rest of the body may still be on its way: the connection cannot be reused.
            ApiError::new(StatusCode::REQUEST_TIMEOUT, t.to_string(), None)
                .with_code("request_timeout")
                .with_header("connection", "close")
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "the request body is larger than the server's limit (--max-body-bytes)",
                None,
            )
        } else {
            ApiError::bad_request(
                format!("cannot read the request body: {}", rej.body_text()),
                None,
            )
        }
    })
}

/// Parses a JSON object body; anything else is a 400.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::bad_request(
            format!("invalid request body: {e}"),
            None,
        )),
    }
}

/// Deserializes `v` into `T`; a type error names the field's path (`param` too).
pub fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::bad_request(format!("invalid request body: {}", e.inner()), None)
        } else {
            ApiError::bad_request(
                format!("invalid request body: field `{path}`: {}", e.inner()),
                Some(&path),
            )
        }
    })
}
