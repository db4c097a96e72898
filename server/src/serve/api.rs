//! Routes: chat and text completions (streaming and not), models, tokenize, health,
//! readiness, metrics and the OpenAPI document. The request and response types here
//! are the ones `/openapi.json` describes.

use super::error::ApiError;
use super::stop::StopMatcher;
use super::{AppState, ModelEntry};
use crate::batch::TokenLogprobs;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use novastack_engine::{FinishReason, RequestParams, SamplingParams, Submission, TokenEvent};
use novastack_models::IncrementalDecoder;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use utoipa::ToSchema;

pub fn app(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(|| async { ApiError::not_found("no such route; the API is under /v1", None) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
                None,
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Echoes the client's `x-request-id`, or makes one.
pub(crate) async fn request_id(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let mut resp = next.run(req).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Counts responses by route template and status for `/metrics`.
async fn count_responses(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    super::metrics::count_response(&state.http, req, next).await
}

/// Bearer-key check for the API routes.
async fn auth(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.api_keys.is_empty() || find_key(&state.api_keys, req.headers()).is_some() {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// The index of the key in `keys` that the request's `Authorization: Bearer` header
/// carries. Every key is compared in constant time, so timing tells nothing about which
/// or how much matched. Shared by `serve` and the gateway.
pub(crate) fn find_key<K: AsRef<str>>(
    keys: &[K],
    headers: &axum::http::HeaderMap,
) -> Option<usize> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("")
        .as_bytes();
    let mut found = None;
    for (i, k) in keys.iter().enumerate() {
        let k = k.as_ref().as_bytes();
        let same = k.len() == given.len()
            && k.iter().zip(given).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same {
            found = Some(i);
        }
    }
    found
}

/// The body bytes, or the limit / read failure as OpenAI error JSON (413 when too big).
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rej| {
        let status = rej.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
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

/// The model a request names, or 404 / 503 (loading).
fn model_entry(state: &AppState, name: Option<&str>) -> Result<Arc<ModelEntry>, ApiError> {
    let Some(reg) = state.registry() else {
        return Err(ApiError::unavailable(
            "the model is still loading; retry shortly",
        ));
    };
    reg.get(name).cloned().ok_or_else(|| {
        ApiError::not_found(
            format!(
                "the model `{}` does not exist; this server has {:?}",
                name.unwrap_or_default(),
                reg.names()
            ),
            Some("model"),
        )
    })
}

async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "`ok`", body = String)))]
async fn health() -> &'static str {
    "ok"
}

/// Readiness: every model loaded, every engine alive, not shutting down.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "`ready`", body = String),
    (status = 503, description = "loading, shutting down, or an engine stopped", body = ErrorResponse)))]
async fn ready(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let Some(reg) = state.registry() else {
        return Err(ApiError::unavailable("the model is still loading"));
    };
    if let Some(dead) = reg.models.iter().find(|m| !m.engine.is_alive()) {
        return Err(ApiError::unavailable(format!(
            "the engine of `{}` has stopped",
            dead.id()
        )));
    }
    Ok("ready")
}

fn model_card(m: &ModelEntry, id: &str) -> ModelCard {
    ModelCard {
        id: id.to_string(),
        object: "model".into(),
        created: now(),
        owned_by: "novastack".into(),
        max_model_len: m.max_context,
    }
}

#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "A served model name or alias")),
    responses((status = 200, body = ModelCard), (status = 404, body = ErrorResponse)))]
async fn model_by_id(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let m = model_entry(&state, Some(&id))?;
    Ok(Json(model_card(&m, &id)))
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorResponse)))]
async fn models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let Some(reg) = state.registry() else {
        return Err(ApiError::unavailable(
            "the model is still loading; retry shortly",
        ));
    };
    // Every name, aliases included, so clients can check any name they use.
    let data = reg
        .models
        .iter()
        .flat_map(|m| m.names.iter().map(move |n| model_card(m, n)))
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 400, body = ErrorResponse)))]
async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (TokenizeRequest, Common) = parse_body(&body)?;
    let m = model_entry(&state, common.model.as_deref())?;
    let tok = &m.tokenizer;
    let ids = match (req.prompt, req.messages) {
        (Some(p), None) => tok.encode(&p, req.add_special_tokens.unwrap_or(true)),
        (None, Some(msgs)) => tok.encode_chat(
            &normalize_messages(&msgs)?,
            req.add_generation_prompt.unwrap_or(true),
        ),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` and `messages`",
                Some("prompt"),
            ))
        }
    }
    .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    Ok(Json(TokenizeResponse {
        count: ids.len(),
        max_model_len: m.max_context,
        tokens: ids,
    }))
}

#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = ErrorResponse)))]
async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (DetokenizeRequest, Common) = parse_body(&body)?;
    let m = model_entry(&state, common.model.as_deref())?;
    let vocab = m.tokenizer.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
            Some("tokens"),
        ));
    }
    let text = m
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))?;
    Ok(Json(DetokenizeResponse { prompt: text }))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a JSON body into the endpoint's fields and the common sampling fields; type
/// errors name the offending field.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(T, Common), ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
            None,
        ));
    }
    Ok((from_value(v.clone())?, from_value(v)?))
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
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

/// A string or a list of strings.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Sampling fields shared by both endpoints (OpenAI's plus vLLM's extensions).
#[derive(Deserialize, Default, ToSchema)]
pub(super) struct Common {
    /// A served model name or alias (default: the first model).
    model: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Choices per prompt, 1 to 16.
    n: Option<usize>,
    /// Up to 4 stop strings; matched across token boundaries, never included.
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// Token id (as a string) to a bias added to its logit.
    logit_bias: Option<HashMap<String, f32>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    #[allow(dead_code)]
    user: Option<String>,
    /// vLLM extension: sample from the k most likely tokens (0 or -1: all).
    top_k: Option<i64>,
    /// vLLM extension.
    min_p: Option<f32>,
    /// vLLM extension.
    repetition_penalty: Option<f32>,
    /// vLLM extension: keep generating past end-of-sequence tokens.
    ignore_eos: Option<bool>,
    /// vLLM extension: lower runs first.
    priority: Option<i32>,
    /// vLLM extension: extra token ids that end a sequence.
    stop_token_ids: Option<Vec<u32>>,
    /// Not supported yet: a non-null value is rejected with 400.
    tools: Option<Value>,
    /// Not supported yet: a non-null value is rejected with 400.
    response_format: Option<Value>,
}

#[derive(Deserialize, Default, ToSchema)]
pub(super) struct StreamOptions {
    /// Send a last chunk with `usage` and empty `choices` before `[DONE]`.
    include_usage: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct ChatRequest {
    /// `{"role", "content"}` objects; content is a string or an array of text parts.
    messages: Vec<Value>,
    max_completion_tokens: Option<usize>,
    logprobs: Option<bool>,
    /// 0 to 20 alternatives per token (with `logprobs: true`).
    top_logprobs: Option<usize>,
}

/// A string, strings, token ids, or lists of token ids.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, ToSchema)]
pub(super) struct CompletionRequest {
    prompt: Prompt,
    /// Top alternatives per token, 0 to 20.
    logprobs: Option<usize>,
    /// Not supported: `true` is rejected with 400.
    echo: Option<bool>,
    /// Not supported: rejected with 400.
    suffix: Option<String>,
    /// vLLM extension: logprob tokens as `token_id:N`.
    return_tokens_as_token_ids: Option<bool>,
}

/// The body of `POST /v1/chat/completions` (documentation type: the handler parses
/// the two parts separately so errors name the exact field).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ChatCompletionRequest {
    #[schema(inline)]
    chat: ChatRequest,
    #[schema(inline)]
    common: Common,
}

/// The body of `POST /v1/completions` (documentation type, as above).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct CompletionBody {
    #[schema(inline)]
    completion: CompletionRequest,
    #[schema(inline)]
    common: Common,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct TokenizeRequest {
    /// A served model name or alias (read with the common fields).
    #[allow(dead_code)]
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Value>>,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct DetokenizeRequest {
    /// A served model name or alias (read with the common fields).
    #[allow(dead_code)]
    model: Option<String>,
    tokens: Vec<u32>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokenizeResponse {
    count: usize,
    max_model_len: usize,
    tokens: Vec<u32>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct DetokenizeResponse {
    prompt: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ModelCard {
    id: String,
    object: String,
    created: u64,
    owned_by: String,
    max_model_len: usize,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ModelList {
    object: String,
    data: Vec<ModelCard>,
}

#[derive(Serialize, ToSchema, Clone, Copy)]
pub(super) struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ChatChoice {
    index: usize,
    message: ChatMessage,
    /// `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}` when requested.
    logprobs: Option<Value>,
    /// `stop`, `length`, or `abort`.
    finish_reason: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ChatCompletion {
    id: String,
    /// `chat.completion`
    object: String,
    created: u64,
    model: String,
    choices: Vec<ChatChoice>,
    usage: Usage,
}

#[derive(Serialize, ToSchema, Default)]
pub(super) struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ChatChunkChoice {
    index: usize,
    delta: ChatDelta,
    logprobs: Option<Value>,
    finish_reason: Option<String>,
}

/// One `data:` event of a streamed chat completion.
#[derive(Serialize, ToSchema)]
pub(super) struct ChatCompletionChunk {
    id: String,
    /// `chat.completion.chunk`
    object: String,
    created: u64,
    model: String,
    choices: Vec<ChatChunkChoice>,
    /// Only on the last chunk (empty `choices`) when `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CompletionChoice {
    index: usize,
    text: String,
    /// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` when requested.
    logprobs: Option<Value>,
    /// Null in stream chunks until the choice ends.
    finish_reason: Option<String>,
}

/// A text completion, or (streaming) one `data:` event of it.
#[derive(Serialize, ToSchema)]
pub(super) struct Completion {
    id: String,
    /// `text_completion`
    object: String,
    created: u64,
    model: String,
    choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

/// OpenAI's error shape.
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorResponse {
    error: ErrorDetail,
}

/// A validated generation: prompts, engine parameters, stop strings.
struct Spec {
    prompts: Vec<Vec<u32>>,
    params: RequestParams,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn build_spec(
    m: &ModelEntry,
    c: Common,
    prompts: Vec<Vec<u32>>,
    max_tokens: Option<usize>,
    logprobs: Option<usize>,
) -> Result<Spec, ApiError> {
    if c.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_request(
            "tools are not supported yet",
            Some("tools"),
        ));
    }
    if c.response_format.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_request(
            "response_format is not supported yet",
            Some("response_format"),
        ));
    }
    let n = c.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad_request(
            format!("n must be between 1 and 16, got {n}"),
            Some("n"),
        ));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::bad_request("the prompt is empty", Some("prompt")));
    }
    if prompts.len() * n > 64 {
        return Err(ApiError::bad_request(
            format!(
                "{} prompts x n={n} is {} sequences; at most 64 per request",
                prompts.len(),
                prompts.len() * n
            ),
            Some("prompt"),
        ));
    }
    let vocab = m.tokenizer.vocab_size().max(1);
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
            Some("prompt"),
        ));
    }
    let room = m.max_context.saturating_sub(longest);
    if room == 0 {
        return Err(ApiError::bad_request(
            format!(
                "the prompt is {longest} tokens, the model's context window is {}",
                m.max_context
            ),
            Some("messages"),
        ));
    }
    let max_tokens = max_tokens.unwrap_or(room.min(4096));
    if max_tokens == 0 || max_tokens > room {
        return Err(ApiError::bad_request(
            format!(
                "max_tokens {max_tokens} must be between 1 and {room}: the context window is {} and the prompt is {longest} tokens",
                m.max_context
            ),
            Some("max_tokens"),
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in c.logit_bias.unwrap_or_default() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::bad_request(
                format!("logit_bias key {k:?} is not a token id"),
                Some("logit_bias"),
            )
        })?;
        logit_bias.push((id, v));
    }
    let sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_p: c.top_p.unwrap_or(1.0),
        top_k: c.top_k.filter(|&k| k > 0).map_or(0, |k| k as usize),
        min_p: c.min_p.unwrap_or(0.0),
        seed: c.seed,
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        logit_bias,
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string().replace("invalid request: ", ""), None))?;
    if logprobs.is_some_and(|k| k > 20) {
        return Err(ApiError::bad_request(
            "top logprobs must be at most 20",
            Some("logprobs"),
        ));
    }
    let stops = match c.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if stops.len() > 4 {
        return Err(ApiError::bad_request(
            "at most 4 stop sequences",
            Some("stop"),
        ));
    }
    Ok(Spec {
        prompts,
        params: RequestParams {
            max_tokens,
            sampling,
            stop_token_ids: c.stop_token_ids.unwrap_or_default(),
            ignore_eos: c.ignore_eos.unwrap_or(false),
            priority: c.priority.unwrap_or(0),
            logprobs,
            n,
        },
        stops,
        stream: c.stream.unwrap_or(false),
        include_usage: c
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// Text from a string or an array of `{"type": "text", "text": ...}` parts.
fn message_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    _ => Err(ApiError::bad_request(
                        "only text content parts are supported",
                        Some("messages"),
                    )),
                }
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "message content must be a string or an array of parts",
            Some("messages"),
        )),
    }
}

fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    messages
        .iter()
        .map(|m| {
            let obj = m.as_object().ok_or_else(|| {
                ApiError::bad_request("each message must be an object", Some("messages"))
            })?;
            let role = obj.get("role").and_then(Value::as_str);
            if !matches!(
                role,
                Some("system" | "user" | "assistant" | "developer" | "tool")
            ) {
                return Err(ApiError::bad_request(
                    format!("invalid message role {:?}", obj.get("role")),
                    Some("messages"),
                ));
            }
            let mut out = obj.clone();
            out.insert(
                "content".into(),
                Value::String(message_text(obj.get("content").unwrap_or(&Value::Null))?),
            );
            Ok(Value::Object(out))
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// One choice's progress: decoding, stop strings, logprobs.
struct ChoiceState {
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    text: String,
    logprobs: Vec<TokenLogprobs>,
    finish: Option<&'static str>,
}

/// A piece of output for one choice.
struct Delta {
    choice: usize,
    text: String,
    logprobs: Vec<TokenLogprobs>,
    finish: Option<&'static str>,
}

/// Turns engine events into per-choice deltas; aborts sequences whose stop string matched.
struct Collector {
    m: Arc<ModelEntry>,
    choices: Vec<ChoiceState>,
    index_of: HashMap<novastack_engine::RequestId, usize>,
    prompt_tokens: usize,
    completion_tokens: usize,
    error: Option<String>,
    /// Streaming: logprobs go out with each delta; otherwise they are kept per choice.
    stream: bool,
}

impl Collector {
    fn on_event(&mut self, ev: TokenEvent) -> Option<Delta> {
        let &ci = self.index_of.get(&ev.id)?;
        let tok = &*self.m.tokenizer;
        let c = &mut self.choices[ci];
        if c.finish.is_some() {
            return None;
        }
        let mut text = String::new();
        let mut lps = Vec::new();
        if let Some(t) = ev.token {
            self.completion_tokens += 1;
            if let Some((lp, top)) = ev.logprobs {
                lps.push((t, lp, top));
            }
            let piece = c.decoder.push(tok, t).unwrap_or_default();
            let (emit, stopped) = c.stop.push(&piece);
            text.push_str(&emit);
            if stopped {
                c.finish = Some("stop");
                self.m.engine.abort(ev.id);
            }
        }
        if let Some(f) = ev.finished {
            if c.finish.is_none() {
                let tail = c.decoder.flush(tok).unwrap_or_default();
                let (emit, stopped) = c.stop.push(&tail);
                text.push_str(&emit);
                if !stopped {
                    text.push_str(&c.stop.finish());
                }
                c.finish = Some(match f {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                    FinishReason::Abort => "abort",
                    FinishReason::Error => {
                        self.error = ev.error.clone();
                        "error"
                    }
                });
            }
        }
        c.text.push_str(&text);
        if !self.stream {
            c.logprobs.append(&mut lps);
        }
        if let Some(f) = c.finish {
            // Finished just now (events for finished choices return early above).
            self.m.metrics.finished(f);
        }
        Some(Delta {
            choice: ci,
            text,
            logprobs: lps,
            finish: c.finish,
        })
    }

    fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens + self.completion_tokens,
        }
    }
}

/// Submits every prompt to the engine; all events arrive on one stream.
async fn start(
    state: &AppState,
    m: &Arc<ModelEntry>,
    spec: &Spec,
) -> Result<(Collector, mpsc::UnboundedReceiver<TokenEvent>), ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    if !m.engine.is_alive() {
        return Err(ApiError::unavailable(format!(
            "the engine of `{}` has stopped",
            m.id()
        )));
    }
    let waiting = m.engine.num_waiting();
    if waiting >= state.max_waiting {
        return Err(ApiError::too_many(format!(
            "the server is busy: {waiting} requests are waiting (limit {}); retry later",
            state.max_waiting
        )));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let n = spec.params.n;
    let mut index_of = HashMap::new();
    for (p, prompt) in spec.prompts.iter().enumerate() {
        let engine = m.engine.clone();
        let sub = Submission {
            prompt: prompt.clone(),
            params: spec.params.clone(),
        };
        let tx = tx.clone();
        let ids = tokio::task::spawn_blocking(move || engine.submit_to(sub, tx))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|e| {
                ApiError::bad_request(e.to_string().replace("invalid request: ", ""), None)
            })?;
        for (i, id) in ids.into_iter().enumerate() {
            index_of.insert(id, p * n + i);
        }
    }
    let choices = (0..spec.prompts.len() * n)
        .map(|_| ChoiceState {
            decoder: IncrementalDecoder::new(true),
            stop: StopMatcher::new(spec.stops.clone()),
            text: String::new(),
            logprobs: Vec::new(),
            finish: None,
        })
        .collect();
    let prompt_tokens = spec.prompts.iter().map(Vec::len).sum::<usize>() * n;
    Ok((
        Collector {
            stream: spec.stream,
            m: m.clone(),
            choices,
            index_of,
            prompt_tokens,
            completion_tokens: 0,
            error: None,
        },
        rx,
    ))
}

fn token_str(m: &ModelEntry, id: u32, as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        m.tokenizer.decode(&[id], false).unwrap_or_default()
    }
}

fn chat_logprobs(m: &ModelEntry, lps: &[TokenLogprobs]) -> Value {
    let entry = |id: u32, lp: f32| {
        let s = token_str(m, id, false);
        json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|(t, lp, top)| {
            let mut e = entry(*t, *lp);
            e["top_logprobs"] = top.iter().map(|(i, l)| entry(*i, *l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// OpenAI's completion logprobs; `text_offset` counts bytes from the start of the choice's
/// text (`base` is where these tokens begin).
fn completion_logprobs(m: &ModelEntry, lps: &[TokenLogprobs], as_ids: bool, base: usize) -> Value {
    let tokens: Vec<String> = lps
        .iter()
        .map(|(t, _, _)| token_str(m, *t, as_ids))
        .collect();
    let mut offsets = Vec::with_capacity(lps.len());
    let mut at = base;
    for (t, _, _) in lps {
        offsets.push(at);
        at += m.tokenizer.decode(&[*t], true).map_or(0, |s| s.len());
    }
    let top: Vec<serde_json::Map<String, Value>> = lps
        .iter()
        .map(|(_, _, top)| {
            top.iter()
                .map(|(i, l)| (token_str(m, *i, as_ids), json!(l)))
                .collect()
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": lps.iter().map(|(_, l, _)| *l).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or with `stream: true` an SSE stream of `ChatCompletionChunk` events ending in `data: [DONE]`",
         content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (ChatRequest, Common) = parse_body(&body)?;
    let m = model_entry(&state, common.model.as_deref())?;
    let messages = normalize_messages(&req.messages)?;
    let prompt = m
        .tokenizer
        .encode_chat(&messages, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let logprobs = if req.logprobs.unwrap_or(false) {
        Some(req.top_logprobs.unwrap_or(0))
    } else {
        None
    };
    let max = req.max_completion_tokens.or(common.max_tokens);
    let spec = build_spec(&m, common, vec![prompt], max, logprobs)?;
    respond(state, m, spec, Kind::Chat, false).await
}

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionBody,
    responses(
        (status = 200, description = "A completion, or with `stream: true` an SSE stream of `Completion` events ending in `data: [DONE]`",
         content((Completion = "application/json"), (Completion = "text/event-stream"))),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 413, body = ErrorResponse), (status = 429, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let (req, common): (CompletionRequest, Common) = parse_body(&body)?;
    let m = model_entry(&state, common.model.as_deref())?;
    if req.echo.unwrap_or(false) {
        return Err(ApiError::bad_request("echo is not supported", Some("echo")));
    }
    if req.suffix.is_some() {
        return Err(ApiError::bad_request(
            "suffix is not supported",
            Some("suffix"),
        ));
    }
    let tok = &m.tokenizer;
    let enc = |s: &str| {
        tok.encode(s, true)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))
    };
    let prompts = match req.prompt {
        Prompt::Text(s) => vec![enc(&s)?],
        Prompt::Texts(v) => v.iter().map(|s| enc(s)).collect::<Result<_, _>>()?,
        Prompt::Ids(ids) => vec![ids],
        Prompt::IdLists(l) => l,
    };
    let max = common.max_tokens.or(Some(16));
    let spec = build_spec(&m, common, prompts, max, req.logprobs)?;
    respond(
        state,
        m,
        spec,
        Kind::Completion,
        req.return_tokens_as_token_ids.unwrap_or(false),
    )
    .await
}

async fn respond(
    state: Arc<AppState>,
    m: Arc<ModelEntry>,
    spec: Spec,
    kind: Kind,
    as_ids: bool,
) -> Result<Response, ApiError> {
    let (mut col, mut rx) = start(&state, &m, &spec).await?;
    let prefix = if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let id = format!("{prefix}-{:032x}", rand::random::<u128>());
    let created = now();
    let model = m.id().to_string();
    let want_logprobs = spec.params.logprobs.is_some();
    let logprobs_of = move |m: &ModelEntry, lps: &[TokenLogprobs], base: usize| -> Option<Value> {
        if !want_logprobs {
            None
        } else if kind == Kind::Chat {
            Some(chat_logprobs(m, lps))
        } else {
            Some(completion_logprobs(m, lps, as_ids, base))
        }
    };
    if !spec.stream {
        while !col.done() {
            let Some(ev) = rx.recv().await else { break };
            col.on_event(ev);
        }
        if let Some(e) = &col.error {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.clone(),
                None,
            ));
        }
        let finish = |c: &ChoiceState| c.finish.unwrap_or("abort").to_string();
        let resp = match kind {
            Kind::Chat => Json(ChatCompletion {
                id,
                object: "chat.completion".into(),
                created,
                model,
                choices: col
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(index, c)| ChatChoice {
                        index,
                        message: ChatMessage {
                            role: "assistant".into(),
                            content: c.text.clone(),
                        },
                        logprobs: logprobs_of(&m, &c.logprobs, 0),
                        finish_reason: finish(c),
                    })
                    .collect(),
                usage: col.usage(),
            })
            .into_response(),
            Kind::Completion => Json(Completion {
                id,
                object: "text_completion".into(),
                created,
                model,
                choices: col
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(index, c)| CompletionChoice {
                        index,
                        text: c.text.clone(),
                        logprobs: logprobs_of(&m, &c.logprobs, 0),
                        finish_reason: Some(finish(c)),
                    })
                    .collect(),
                usage: Some(col.usage()),
            })
            .into_response(),
        };
        return Ok(resp);
    }
    // Streaming: a task turns engine events into SSE events; if the client leaves, the
    // SSE channel closes, the task ends and drops the engine stream, which aborts the
    // requests and frees their blocks.
    let (sse_tx, sse_rx) = mpsc::channel::<Event>(64);
    let include_usage = spec.include_usage;
    tokio::spawn(async move {
        let data = |v: &dyn erased::Json| Event::default().data(v.json());
        let chat_chunk =
            |choices: Vec<ChatChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk".into(),
                created,
                model: model.clone(),
                choices,
                usage,
            };
        let text_chunk = |choices: Vec<CompletionChoice>, usage: Option<Usage>| Completion {
            id: id.clone(),
            object: "text_completion".into(),
            created,
            model: model.clone(),
            choices,
            usage,
        };
        if kind == Kind::Chat {
            for index in 0..col.choices.len() {
                let first = chat_chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta: ChatDelta {
                            role: Some("assistant".into()),
                            content: Some(String::new()),
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                );
                if sse_tx.send(data(&first)).await.is_err() {
                    return;
                }
            }
        }
        while !col.done() {
            let Some(ev) = rx.recv().await else { break };
            let Some(d) = col.on_event(ev) else { continue };
            if d.text.is_empty() && d.finish.is_none() && d.logprobs.is_empty() {
                continue;
            }
            if d.finish == Some("error") {
                let err = ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    col.error.clone().unwrap_or_default(),
                    None,
                );
                let _ = sse_tx
                    .send(Event::default().data(err.body().to_string()))
                    .await;
                break;
            }
            let base = col.choices[d.choice].text.len() - d.text.len();
            let lp = logprobs_of(&col.m, &d.logprobs, base);
            let finish_reason = d.finish.map(str::to_string);
            let ev = match kind {
                Kind::Chat => data(&chat_chunk(
                    vec![ChatChunkChoice {
                        index: d.choice,
                        delta: ChatDelta {
                            role: None,
                            content: (!d.text.is_empty()).then_some(d.text),
                        },
                        logprobs: lp,
                        finish_reason,
                    }],
                    None,
                )),
                Kind::Completion => data(&text_chunk(
                    vec![CompletionChoice {
                        index: d.choice,
                        text: d.text,
                        logprobs: lp,
                        finish_reason,
                    }],
                    None,
                )),
            };
            if sse_tx.send(ev).await.is_err() {
                return;
            }
        }
        if include_usage {
            let usage = Some(col.usage());
            let ev = match kind {
                Kind::Chat => data(&chat_chunk(Vec::new(), usage)),
                Kind::Completion => data(&text_chunk(Vec::new(), usage)),
            };
            let _ = sse_tx.send(ev).await;
        }
        let _ = sse_tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = futures_util::stream::unfold(sse_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream).into_response())
}

/// Serialises either chunk type behind one closure.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&state),
    )
        .into_response()
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI 3.1 document for `/openapi.json`, generated from the handler
/// annotations and the request/response types above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "novastack", description = "OpenAI-compatible LLM inference API. With --api-key or --api-key-file, /v1/* and the tokenize routes need `Authorization: Bearer KEY`."),
    paths(chat_completions, completions, models, model_by_id, tokenize, detokenize, health, ready, metrics),
    components(schemas(ChatCompletionRequest, CompletionBody, ChatCompletion, ChatCompletionChunk, Completion, ErrorResponse, ModelList, ModelCard, TokenizeRequest, TokenizeResponse, DetokenizeRequest, DetokenizeResponse, Usage)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

pub fn openapi_document() -> String {
    use utoipa::OpenApi;
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
