//! `/tokenize` and `/detokenize` (vLLM's extensions), on the CPU pool.

use super::{check_body_size, parse_body};
use crate::serve::validate::{
    check_prompt_bytes, check_vocab, content_bytes, normalize_messages, tokenize_error,
};
use crate::serve::validation_error::ValidationError;
use crate::serve::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use novastack_openai::http::body_bytes;
use novastack_openai::protocol::*;
use novastack_openai::ApiError;
use std::sync::Arc;

#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse),
        (status = 400, description = "An invalid request; `param` names the field", body = ErrorResponse),
        (status = 401, description = "A missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorResponse),
        (status = 503, description = "The model is still loading", body = ErrorResponse)))]
pub(crate) async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let body = body_bytes(body)?;
    check_body_size(&state, &body, "prompt")?;
    let st = state.clone();
    state
        .cpu
        .run(move || tokenize_body(&st, &body))
        .await?
        .map(Json)
}

fn tokenize_body(state: &AppState, body: &[u8]) -> Result<TokenizeResponse, ApiError> {
    let (req, common): (TokenizeRequest, GenerationParams) = parse_body(body)?;
    let m = state.model(common.model.as_deref())?;
    let tok = &m.tokenizer;
    let limit = m.max_prompt_bytes(&state.limits);
    let ids = match (req.prompt, req.messages) {
        (Some(p), None) => {
            check_prompt_bytes(p.len(), limit, "prompt")?;
            tok.encode(&p, req.add_special_tokens.unwrap_or(true))
        }
        (None, Some(msgs)) => {
            let msgs = normalize_messages(&msgs)?;
            check_prompt_bytes(content_bytes(&msgs), limit, "messages")?;
            tok.encode_chat_with(
                &msgs,
                req.add_generation_prompt.unwrap_or(true),
                state.limits.allow_special_tokens_in_content,
                None,
            )
        }
        _ => return Err(ValidationError::PromptOrMessages.into()),
    }
    .map_err(tokenize_error("prompt"))?;
    Ok(TokenizeResponse {
        count: ids.len(),
        max_model_len: m.max_context,
        tokens: ids,
    })
}

#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse),
        (status = 400, description = "An invalid request; `param` names the field", body = ErrorResponse),
        (status = 401, description = "A missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorResponse),
        (status = 503, description = "The model is still loading", body = ErrorResponse)))]
pub(crate) async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let body = body_bytes(body)?;
    let st = state.clone();
    state
        .cpu
        .run(move || detokenize_body(&st, &body))
        .await?
        .map(Json)
}

fn detokenize_body(state: &AppState, body: &[u8]) -> Result<DetokenizeResponse, ApiError> {
    let (req, common): (DetokenizeRequest, GenerationParams) = parse_body(body)?;
    let m = state.model(common.model.as_deref())?;
    check_vocab(&req.tokens, m.tokenizer.vocab_size(), "tokens")?;
    let text = m
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(tokenize_error("tokens"))?;
    Ok(DetokenizeResponse { prompt: text })
}
