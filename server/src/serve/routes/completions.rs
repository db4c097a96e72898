//! `POST /v1/completions`: text or token-id prompts, then the shared generation path.
//! Parsing and tokenization run on the CPU pool.
//!
//! Text prompts are the client's raw model input, so special-token text in them is
//! read as special tokens (as vLLM does); only chat messages are guarded.

use super::{check_body_size, parse_body};
use crate::serve::respond::{respond, Endpoint};
use crate::serve::validate::{
    check_prompt_bytes, tokenize_error, validate_generation, ValidGeneration,
};
use crate::serve::validation_error::ValidationError;
use crate::serve::{AppState, ModelEntry};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use novastack_openai::http::body_bytes;
use novastack_openai::protocol::*;
use novastack_openai::ApiError;
use std::sync::Arc;

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionBody,
    responses(
        (status = 200, description = "A completion, or with `stream: true` an SSE stream of `Completion` events ending in `data: [DONE]`",
         content((Completion = "application/json"), (Completion = "text/event-stream"))),
        (status = 400, description = "An invalid request; `param` names the field", body = ErrorResponse),
        (status = 401, description = "A missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorResponse),
        (status = 429, description = "The queue is full (--max-waiting); see Retry-After", body = ErrorResponse),
        (status = 500, description = "The model failed", body = ErrorResponse),
        (status = 503, description = "Loading, shutting down, or the engine stopped", body = ErrorResponse)))]
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    check_body_size(&state, &body, "prompt")?;
    let st = state.clone();
    let (m, spec, as_ids) = state.cpu.run(move || prepare(&st, &body)).await??;
    respond(state, m, spec, Endpoint::Completion, as_ids).await
}

/// The body into a validated generation: parse, cap, tokenize, validate.
fn prepare(
    state: &AppState,
    body: &[u8],
) -> Result<(Arc<ModelEntry>, ValidGeneration, bool), ApiError> {
    let (req, common): (CompletionRequest, GenerationParams) = parse_body(body)?;
    let m = state.model(common.model.as_deref())?;
    if req.echo.unwrap_or(false) {
        return Err(ValidationError::Unsupported {
            message: "echo is not supported",
            param: "echo",
        }
        .into());
    }
    if req.suffix.is_some() {
        return Err(ValidationError::Unsupported {
            message: "suffix is not supported",
            param: "suffix",
        }
        .into());
    }
    let limit = m.max_prompt_bytes(&state.limits);
    let tok = &m.tokenizer;
    let enc = |s: &str| tok.encode(s, true).map_err(tokenize_error("prompt"));
    let prompts = match req.prompt {
        Prompt::Text(s) => {
            check_prompt_bytes(s.len(), limit, "prompt")?;
            vec![enc(&s)?]
        }
        Prompt::Texts(v) => {
            // Each prompt is its own sequence: each must fit.
            if let Some(longest) = v.iter().map(String::len).max() {
                check_prompt_bytes(longest, limit, "prompt")?;
            }
            v.iter().map(|s| enc(s)).collect::<Result<_, _>>()?
        }
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(l) => l,
    };
    let max = common.max_tokens.or(Some(16));
    let as_ids = req.return_tokens_as_token_ids.unwrap_or(false);
    if common.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ValidationError::Unsupported {
            message: "tools are for /v1/chat/completions",
            param: "tools",
        }
        .into());
    }
    let spec = validate_generation(
        &m,
        common,
        prompts,
        max,
        req.logprobs,
        Endpoint::Completion,
        None,
    )?;
    Ok((m, spec, as_ids))
}
