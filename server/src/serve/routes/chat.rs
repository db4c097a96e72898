//! `POST /v1/chat/completions`: messages through the chat template, then the shared
//! generation path.

use super::parse_body;
use crate::serve::respond::{respond, Endpoint};
use crate::serve::validate::{normalize_messages, tokenize_error, validate_generation};
use crate::serve::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use novastack_openai::http::body_bytes;
use novastack_openai::protocol::*;
use novastack_openai::ApiError;
use std::sync::Arc;

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or with `stream: true` an SSE stream of `ChatCompletionChunk` events ending in `data: [DONE]`",
         content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (ChatRequest, GenerationParams) = parse_body(&body)?;
    let m = state.model(common.model.as_deref())?;
    let messages = normalize_messages(&req.messages)?;
    let prompt = m
        .tokenizer
        .encode_chat(&messages, true)
        .map_err(tokenize_error("messages"))?;
    let logprobs = if req.logprobs.unwrap_or(false) {
        Some(req.top_logprobs.unwrap_or(0))
    } else {
        None
    };
    let max = req.max_completion_tokens.or(common.max_tokens);
    let spec = validate_generation(&m, common, vec![prompt], max, logprobs)?;
    respond(state, m, spec, Endpoint::Chat, false).await
}
