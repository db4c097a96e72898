//! `POST /v1/chat/completions`: messages through the chat template, then the shared
//! generation path. Parsing, the template and tokenization run on the CPU pool.

use super::{check_body_size, parse_body};
use crate::serve::respond::{respond, Endpoint};
use crate::serve::structured::GrammarRequest;
use crate::serve::tool_calls;
use crate::serve::validate::{
    check_prompt_bytes, content_bytes, normalize_messages, tokenize_error, validate_generation,
    ValidGeneration, MAX_TOP_LOGPROBS,
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

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or with `stream: true` an SSE stream of `ChatCompletionChunk` events ending in `data: [DONE]`",
         content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, description = "An invalid request; `param` names the field", body = ErrorResponse),
        (status = 401, description = "A missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 413, description = "The body is over --max-body-bytes", body = ErrorResponse),
        (status = 429, description = "The queue is full (--max-waiting); see Retry-After", body = ErrorResponse),
        (status = 500, description = "The model failed", body = ErrorResponse),
        (status = 503, description = "Loading, shutting down, or the engine stopped", body = ErrorResponse)))]
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    check_body_size(&state, &body, "messages")?;
    let st = state.clone();
    let (m, spec) = state.cpu.run(move || prepare(&st, &body)).await??;
    respond(state, m, spec, Endpoint::Chat, false).await
}

/// The body into a validated generation: parse, cap, render, tokenize, validate.
fn prepare(state: &AppState, body: &[u8]) -> Result<(Arc<ModelEntry>, ValidGeneration), ApiError> {
    let (req, common): (ChatRequest, GenerationParams) = parse_body(body)?;
    let m = state.model(common.model.as_deref())?;
    let mut messages = normalize_messages(&req.messages)?;
    tool_calls::arguments_as_objects(&mut messages);
    let tools = match common.tools.as_ref().filter(|t| !t.is_null()) {
        Some(t) => tool_calls::parse_tools(t)?,
        None => Vec::new(),
    };
    let plan = if tools.is_empty() {
        if req
            .tool_choice
            .as_ref()
            .is_some_and(|c| !c.is_null() && c != "none")
        {
            return Err(ValidationError::Grammar {
                message: "tool_choice needs tools".into(),
                param: "tool_choice",
            }
            .into());
        }
        None
    } else {
        let parser = state.limits.tool_call_parser.or(m.tool_parser);
        tool_calls::plan(&tools, req.tool_choice.as_ref(), parser)?
    };
    let forced = plan.as_ref().and_then(|p| {
        tool_calls::forced_schema(p, &tools, req.parallel_tool_calls.unwrap_or(true)).map(
            |schema| GrammarRequest {
                spec: novastack_engine::GrammarSpec::JsonSchema(schema),
                param: "tool_choice",
            },
        )
    });
    let template_tools = (!tools.is_empty())
        .then_some(common.tools.as_ref())
        .flatten();
    check_prompt_bytes(
        content_bytes(&messages),
        m.max_prompt_bytes(&state.limits),
        "messages",
    )?;
    let prompt = m
        .tokenizer
        .encode_chat_with(
            &messages,
            true,
            state.limits.allow_special_tokens_in_content,
            template_tools,
        )
        .map_err(tokenize_error("messages"))?;
    if req.top_logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(ValidationError::TopLogprobs("top_logprobs").into());
    }
    let logprobs = if req.logprobs.unwrap_or(false) {
        Some(req.top_logprobs.unwrap_or(0))
    } else {
        None
    };
    let max = req.max_completion_tokens.or(common.max_tokens);
    let mut spec = validate_generation(
        &m,
        common,
        vec![prompt],
        max,
        logprobs,
        Endpoint::Chat,
        forced,
    )?;
    spec.tools = plan;
    Ok((m, spec))
}
