//! `/tokenize` and `/detokenize` (vLLM's extensions).

use super::parse_body;
use crate::serve::validate::{check_vocab, normalize_messages, tokenize_error};
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
    responses((status = 200, body = TokenizeResponse), (status = 400, body = ErrorResponse)))]
pub(crate) async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (TokenizeRequest, GenerationParams) = parse_body(&body)?;
    let m = state.model(common.model.as_deref())?;
    let tok = &m.tokenizer;
    let ids = match (req.prompt, req.messages) {
        (Some(p), None) => tok.encode(&p, req.add_special_tokens.unwrap_or(true)),
        (None, Some(msgs)) => tok.encode_chat(
            &normalize_messages(&msgs)?,
            req.add_generation_prompt.unwrap_or(true),
        ),
        _ => return Err(ValidationError::PromptOrMessages.into()),
    }
    .map_err(tokenize_error("prompt"))?;
    Ok(Json(TokenizeResponse {
        count: ids.len(),
        max_model_len: m.max_context,
        tokens: ids,
    }))
}

#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = ErrorResponse)))]
pub(crate) async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (DetokenizeRequest, GenerationParams) = parse_body(&body)?;
    let m = state.model(common.model.as_deref())?;
    check_vocab(&req.tokens, m.tokenizer.vocab_size(), "tokens")?;
    let text = m
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(tokenize_error("tokens"))?;
    Ok(Json(DetokenizeResponse { prompt: text }))
}
