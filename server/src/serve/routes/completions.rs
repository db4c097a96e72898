//! `POST /v1/completions`: text or token-id prompts, then the shared generation path.

use super::parse_body;
use crate::serve::respond::{respond, Endpoint};
use crate::serve::validate::{tokenize_error, validate_generation};
use crate::serve::validation_error::ValidationError;
use crate::serve::AppState;
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
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (CompletionRequest, GenerationParams) = parse_body(&body)?;
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
    let tok = &m.tokenizer;
    let enc = |s: &str| tok.encode(s, true).map_err(tokenize_error("prompt"));
    let prompts = match req.prompt {
        Prompt::Text(s) => vec![enc(&s)?],
        Prompt::Texts(v) => v.iter().map(|s| enc(s)).collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(l) => l,
    };
    let max = common.max_tokens.or(Some(16));
    let spec = validate_generation(&m, common, prompts, max, req.logprobs)?;
    respond(
        state,
        m,
        spec,
        Endpoint::Completion,
        req.return_tokens_as_token_ids.unwrap_or(false),
    )
    .await
}
