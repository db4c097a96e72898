//! The HTTP handlers, one file per endpoint group, and what they share: reading the
//! body into the endpoint's fields plus the generation parameters.

pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod models;
pub(crate) mod tokenize;

use novastack_openai::http::{from_value, json_object};
use novastack_openai::protocol::GenerationParams;
use novastack_openai::ApiError;
use std::time::{SystemTime, UNIX_EPOCH};

/// Parses a JSON body into the endpoint's fields and the common sampling fields; type
/// errors name the offending field.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<(T, GenerationParams), ApiError> {
    let v = json_object(body)?;
    Ok((from_value(v.clone())?, from_value(v)?))
}

/// Seconds since the Unix epoch (`created` fields).
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
