//! Routes: chat and text completions (streaming and not), models, health, metrics.

use super::error::ApiError;
use super::stop::StopMatcher;
use super::AppState;
use crate::batch::TokenLogprobs;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use novastack_engine::{FinishReason, RequestParams, SamplingParams, Submission, TokenEvent};
use novastack_models::IncrementalDecoder;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Echoes the client's `x-request-id`, or makes one.
async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
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

async fn ready(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.engine.is_alive() {
        Ok("ready")
    } else {
        Err(ApiError::unavailable("the engine has stopped"))
    }
}

async fn model_by_id(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_auth(&state, &headers)?;
    check_model(&state, &Some(id))?;
    Ok(Json(
        json!({"id": state.model_name, "object": "model", "created": now(), "owned_by": "novastack"}),
    ))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    prompt: Option<String>,
    messages: Option<Vec<Value>>,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_auth(&state, &headers)?;
    let (req, common): (TokenizeRequest, Common) = parse_body(&body)?;
    check_model(&state, &common.model)?;
    let tok = &state.tokenizer;
    let ids = match (req.prompt, req.messages) {
        (Some(p), None) => tok.encode(&p, req.add_special_tokens.unwrap_or(true)),
        (None, Some(m)) => tok.encode_chat(
            &normalize_messages(&m)?,
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
    Ok(Json(
        json!({"count": ids.len(), "max_model_len": state.max_context, "tokens": ids}),
    ))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_auth(&state, &headers)?;
    let (req, common): (DetokenizeRequest, Common) = parse_body(&body)?;
    check_model(&state, &common.model)?;
    let vocab = state.tokenizer.vocab_size();
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
            Some("tokens"),
        ));
    }
    let text = state
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))?;
    Ok(Json(json!({"prompt": text})))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
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

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Sampling fields shared by both endpoints (OpenAI's plus vLLM's extensions).
#[derive(Deserialize, Default)]
struct Common {
    model: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<usize>,
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<HashMap<String, f32>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    #[allow(dead_code)]
    user: Option<String>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    ignore_eos: Option<bool>,
    priority: Option<i32>,
    stop_token_ids: Option<Vec<u32>>,
    tools: Option<Value>,
    response_format: Option<Value>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Value>,
    max_completion_tokens: Option<usize>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: Prompt,
    logprobs: Option<usize>,
    echo: Option<bool>,
    suffix: Option<String>,
    /// vLLM extension: logprob tokens as `token_id:N`.
    return_tokens_as_token_ids: Option<bool>,
}

/// A validated generation: prompts, engine parameters, stop strings. (The model name
/// is checked by the handlers before any tokenizing.)
struct Spec {
    prompts: Vec<Vec<u32>>,
    params: RequestParams,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn check_model(state: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != &state.model_name && m != "default" => Err(ApiError::not_found(
            format!(
                "the model `{m}` does not exist; this server has `{}`",
                state.model_name
            ),
            Some("model"),
        )),
        _ => Ok(()),
    }
}

fn build_spec(
    state: &AppState,
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
    let vocab = state.tokenizer.vocab_size().max(1);
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
            Some("prompt"),
        ));
    }
    let room = state.max_context.saturating_sub(longest);
    if room == 0 {
        return Err(ApiError::bad_request(
            format!(
                "the prompt is {longest} tokens, the model's context window is {}",
                state.max_context
            ),
            Some("messages"),
        ));
    }
    let max_tokens = max_tokens.unwrap_or(room.min(4096));
    if max_tokens == 0 || max_tokens > room {
        return Err(ApiError::bad_request(
            format!(
                "max_tokens {max_tokens} must be between 1 and {room}: the context window is {} and the prompt is {longest} tokens",
                state.max_context
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
    token_ids: Vec<u32>,
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
    state: Arc<AppState>,
    choices: Vec<ChoiceState>,
    index_of: HashMap<novastack_engine::RequestId, usize>,
    prompt_tokens: usize,
    completion_tokens: usize,
    error: Option<String>,
}

impl Collector {
    fn on_event(&mut self, ev: TokenEvent) -> Option<Delta> {
        let &ci = self.index_of.get(&ev.id)?;
        let tok = self.state.tokenizer.clone();
        let c = &mut self.choices[ci];
        if c.finish.is_some() {
            return None;
        }
        let mut text = String::new();
        let mut lps = Vec::new();
        if let Some(t) = ev.token {
            c.token_ids.push(t);
            self.completion_tokens += 1;
            if let Some((lp, top)) = ev.logprobs {
                lps.push((t, lp, top));
            }
            let piece = c.decoder.push(&tok, t).unwrap_or_default();
            let (emit, stopped) = c.stop.push(&piece);
            text.push_str(&emit);
            if stopped {
                c.finish = Some("stop");
                self.state.engine.abort(ev.id);
            }
        }
        if let Some(f) = ev.finished {
            if c.finish.is_none() {
                let tail = c.decoder.flush(&tok).unwrap_or_default();
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
        c.logprobs.extend(lps.iter().cloned());
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
}

/// Submits every prompt to the engine; all events arrive on one stream.
async fn start(
    state: &Arc<AppState>,
    spec: &Spec,
) -> Result<(Collector, mpsc::UnboundedReceiver<TokenEvent>), ApiError> {
    if !state.engine.is_alive() {
        return Err(ApiError::unavailable("the engine has stopped"));
    }
    let waiting = state.engine.stats().num_waiting;
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
        let engine = state.engine.clone();
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
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish: None,
        })
        .collect();
    let prompt_tokens = spec.prompts.iter().map(Vec::len).sum::<usize>() * n;
    Ok((
        Collector {
            state: state.clone(),
            choices,
            index_of,
            prompt_tokens,
            completion_tokens: 0,
            error: None,
        },
        rx,
    ))
}

fn usage(c: &Collector) -> Value {
    json!({"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
           "total_tokens": c.prompt_tokens + c.completion_tokens})
}

fn token_str(state: &AppState, id: u32, as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        state.tokenizer.decode(&[id], false).unwrap_or_default()
    }
}

fn chat_logprobs(state: &AppState, lps: &[TokenLogprobs]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|(t, lp, top)| {
            let s = token_str(state, *t, false);
            json!({"token": s, "logprob": lp, "bytes": s.as_bytes(),
                   "top_logprobs": top.iter().map(|(i, l)| { let s = token_str(state, *i, false); json!({"token": s, "logprob": l, "bytes": s.as_bytes()}) }).collect::<Vec<_>>()})
        })
        .collect();
    json!({"content": content})
}

fn completion_logprobs(state: &AppState, lps: &[TokenLogprobs], as_ids: bool) -> Value {
    json!({
        "tokens": lps.iter().map(|(t, _, _)| token_str(state, *t, as_ids)).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|(_, l, _)| *l).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|(_, _, top)| top.iter().map(|(i, l)| (token_str(state, *i, as_ids), json!(l))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": Vec::<usize>::new(),
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    let (req, common): (ChatRequest, Common) = parse_body(&body)?;
    check_model(&state, &common.model)?;
    let messages = normalize_messages(&req.messages)?;
    let prompt = state
        .tokenizer
        .encode_chat(&messages, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let logprobs = if req.logprobs.unwrap_or(false) {
        Some(req.top_logprobs.unwrap_or(0))
    } else {
        None
    };
    let max = req.max_completion_tokens.or(common.max_tokens);
    let spec = build_spec(&state, common, vec![prompt], max, logprobs)?;
    respond(state, spec, Kind::Chat, false).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_auth(&state, &headers)?;
    let (req, common): (CompletionRequest, Common) = parse_body(&body)?;
    check_model(&state, &common.model)?;
    if req.echo.unwrap_or(false) {
        return Err(ApiError::bad_request("echo is not supported", Some("echo")));
    }
    if req.suffix.is_some() {
        return Err(ApiError::bad_request(
            "suffix is not supported",
            Some("suffix"),
        ));
    }
    let tok = &state.tokenizer;
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
    let spec = build_spec(&state, common, prompts, max, req.logprobs)?;
    respond(
        state,
        spec,
        Kind::Completion,
        req.return_tokens_as_token_ids.unwrap_or(false),
    )
    .await
}

async fn respond(
    state: Arc<AppState>,
    spec: Spec,
    kind: Kind,
    as_ids: bool,
) -> Result<Response, ApiError> {
    let (mut col, mut rx) = start(&state, &spec).await?;
    let id = format!(
        "{}-{:x}{:x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        now(),
        rand::random::<u64>()
    );
    let created = now();
    let model = state.model_name.clone();
    let want_logprobs = spec.params.logprobs.is_some();
    if !spec.stream {
        while !col.done() {
            let Some(ev) = rx.recv().await else { break };
            col.on_event(ev);
        }
        if let Some(e) = &col.error {
            return Err(ApiError {
                status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                message: e.clone(),
                param: None,
            });
        }
        let choices: Vec<Value> = col
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| match kind {
                Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text},
                    "logprobs": if want_logprobs { chat_logprobs(&state, &c.logprobs) } else { Value::Null },
                    "finish_reason": c.finish.unwrap_or("abort")}),
                Kind::Completion => json!({"index": i, "text": c.text,
                    "logprobs": if want_logprobs { completion_logprobs(&state, &c.logprobs, as_ids) } else { Value::Null },
                    "finish_reason": c.finish.unwrap_or("abort")}),
            })
            .collect();
        let object = if kind == Kind::Chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        return Ok(Json(
            json!({"id": id, "object": object, "created": created, "model": model,
            "choices": choices, "usage": usage(&col)}),
        )
        .into_response());
    }
    // Streaming: a task turns engine events into SSE events; if the client leaves, the
    // SSE channel closes, the task ends and drops the engine stream, which aborts the
    // requests and frees their blocks.
    let (sse_tx, sse_rx) = mpsc::channel::<Event>(64);
    let include_usage = spec.include_usage;
    tokio::spawn(async move {
        let object = if kind == Kind::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let chunk = |choices: Value, usage: Value| {
            let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
            if !usage.is_null() {
                v["usage"] = usage;
            }
            Event::default().data(v.to_string())
        };
        if kind == Kind::Chat {
            for i in 0..col.choices.len() {
                let c = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
                if sse_tx.send(chunk(c, Value::Null)).await.is_err() {
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
                let err = ApiError {
                    status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    message: col.error.clone().unwrap_or_default(),
                    param: None,
                };
                let _ = sse_tx
                    .send(Event::default().data(err.body().to_string()))
                    .await;
                break;
            }
            let lp = if !want_logprobs {
                Value::Null
            } else if kind == Kind::Chat {
                chat_logprobs(&col.state, &d.logprobs)
            } else {
                completion_logprobs(&col.state, &d.logprobs, as_ids)
            };
            let c = match kind {
                Kind::Chat => {
                    json!([{"index": d.choice, "delta": if d.text.is_empty() { json!({}) } else { json!({"content": d.text}) },
                    "logprobs": lp, "finish_reason": d.finish}])
                }
                Kind::Completion => {
                    json!([{"index": d.choice, "text": d.text, "logprobs": lp, "finish_reason": d.finish}])
                }
            };
            if sse_tx.send(chunk(c, Value::Null)).await.is_err() {
                return;
            }
        }
        if include_usage {
            let _ = sse_tx.send(chunk(json!([]), usage(&col))).await;
        }
        let _ = sse_tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = futures_util::stream::unfold(sse_rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream).into_response())
}

async fn models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_auth(&state, &headers)?;
    Ok(Json(
        json!({"object": "list", "data": [{"id": state.model_name, "object": "model", "created": now(), "owned_by": "novastack"}]}),
    ))
}

async fn metrics(State(state): State<Arc<AppState>>) -> String {
    let s = state.engine.stats();
    let mut out = String::new();
    let mut g = |name: &str, help: &str, kind: &str, v: f64| {
        out.push_str(&format!("# HELP novastack_{name} {help}\n# TYPE novastack_{name} {kind}\nnovastack_{name} {v}\n"));
    };
    g(
        "requests_waiting",
        "Requests waiting to be scheduled.",
        "gauge",
        s.num_waiting as f64,
    );
    g(
        "requests_running",
        "Requests running.",
        "gauge",
        s.num_running as f64,
    );
    g(
        "requests_preempted",
        "Requests preempted, waiting to recompute.",
        "gauge",
        s.num_preempted as f64,
    );
    g(
        "kv_blocks_total",
        "KV cache blocks.",
        "gauge",
        s.kv_blocks_total as f64,
    );
    g(
        "kv_blocks_used",
        "KV cache blocks in use.",
        "gauge",
        (s.kv_blocks_total - s.kv_blocks_free) as f64,
    );
    g(
        "prefix_cache_queries_total",
        "Full blocks looked up in the prefix cache.",
        "counter",
        s.prefix_queried_blocks as f64,
    );
    g(
        "prefix_cache_hits_total",
        "Full blocks found in the prefix cache.",
        "counter",
        s.prefix_hit_blocks as f64,
    );
    g(
        "preemptions_total",
        "Requests preempted.",
        "counter",
        s.num_preemptions as f64,
    );
    g(
        "prompt_tokens_total",
        "Prompt tokens computed.",
        "counter",
        s.num_prompt_tokens_computed as f64,
    );
    g(
        "generation_tokens_total",
        "Tokens generated.",
        "counter",
        s.num_generated_tokens as f64,
    );
    g(
        "engine_steps_total",
        "Engine steps.",
        "counter",
        s.num_steps as f64,
    );
    for (name, help, h) in [
        (
            "time_to_first_token_seconds",
            "Time from arrival to the first token.",
            &s.ttft,
        ),
        (
            "inter_token_latency_seconds",
            "Time between consecutive tokens of a sequence.",
            &s.itl,
        ),
    ] {
        out.push_str(&format!(
            "# HELP novastack_{name} {help}\n# TYPE novastack_{name} histogram\n"
        ));
        let mut cum = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cum += c;
            let le = h
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            out.push_str(&format!("novastack_{name}_bucket{{le=\"{le}\"}} {cum}\n"));
        }
        out.push_str(&format!(
            "novastack_{name}_sum {}\nnovastack_{name}_count {}\n",
            h.sum, h.count
        ));
    }
    out
}
