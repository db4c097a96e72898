//! The HTTP handlers, one file per endpoint group, and what they share: reading the
//! body into the endpoint's fields plus the generation parameters.

pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod models;
pub(crate) mod tokenize;

use novastack_openai::http::{from_value, json_object};
pub(crate) use novastack_openai::protocol::unix_now as now;
use novastack_openai::protocol::GenerationParams;
use novastack_openai::ApiError;
use serde_json::Value;

/// Parses a JSON body into the endpoint's fields and the common sampling fields; type
/// errors name the offending field.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<(T, GenerationParams), ApiError> {
    let v = Value::Object(json_object(body)?);
    Ok((from_value(v.clone())?, from_value(v)?))
}
