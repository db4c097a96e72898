//! The HTTP handlers, one file per endpoint group, and what they share: reading the
//! body into the endpoint's fields plus the generation parameters.

pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod health;
pub(crate) mod messages;
pub(crate) mod metrics;
pub(crate) mod models;
pub(crate) mod tokenize;

use crate::serve::validation_error::ValidationError;
use crate::serve::AppState;
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

/// Bytes a body may hold beyond its prompt text: JSON can spell one byte of text in up
/// to 6 (`\u0000`), plus room for every other field.
const BODY_SLACK_BYTES: usize = 1 << 20;

/// The cheap check before any parsing: a body far larger than the largest prompt any
/// served model accepts is refused at once (the exact per-model check follows parsing).
pub(crate) fn check_body_size(
    state: &AppState,
    body: &[u8],
    param: &'static str,
) -> Result<(), ApiError> {
    let limit = state.largest_prompt_bytes();
    if limit > 0 && body.len() > limit.saturating_mul(6).saturating_add(BODY_SLACK_BYTES) {
        return Err(ValidationError::PromptTooLong {
            bytes: body.len(),
            limit,
            param,
        }
        .into());
    }
    Ok(())
}
