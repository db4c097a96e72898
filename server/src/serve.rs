//! `novastack serve`: a model behind an OpenAI-compatible `/v1/chat/completions`.
//!
//! This is the minimal server: one worker thread owns the model and runs requests one
//! at a time. The continuous-batching engine and the full API replace the worker and
//! grow the routes.

use crate::default_model;
use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use novastack_engine::{generate, GenerateOutput, GenerateParams, SamplingParams};
use novastack_kernels::CpuBackend;
use novastack_models::{load_model, Llama, Tokenizer};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Hugging Face model folder, a .gguf file, or `default` (SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id clients use (default: the model's folder or file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            model: None,
            host: "127.0.0.1".into(),
            port: 8080,
            served_model_name: None,
        }
    }
}

struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    reply: oneshot::Sender<Result<GenerateOutput, String>>,
}

/// What the handlers share.
pub struct AppState {
    pub model_name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub max_context: usize,
    jobs: mpsc::Sender<Job>,
}

/// Starts the worker thread that owns `model`.
pub fn app_state(
    model: Llama<CpuBackend>,
    tokenizer: Tokenizer,
    model_name: String,
) -> Arc<AppState> {
    let (tx, rx) = mpsc::channel::<Job>();
    let max_context = model.max_positions();
    let eos = tokenizer.eos_token_ids().to_vec();
    std::thread::Builder::new()
        .name("novastack-worker".into())
        .spawn(move || {
            for job in rx {
                if job.reply.is_closed() {
                    continue; // the client left while queued
                }
                let out = generate(&model, &job.prompt, &eos, &job.params, |_| {})
                    .map_err(|e| e.to_string());
                let _ = job.reply.send(out);
            }
        })
        .expect("spawn worker thread");
    Arc::new(AppState {
        model_name,
        tokenizer: Arc::new(tokenizer),
        max_context,
        jobs: tx,
    })
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

pub fn run(args: ServeArgs) -> Result<()> {
    let path = default_model::resolve(args.model.as_deref())?;
    eprintln!("loading {}", path.display());
    let lm = load_model(&path, CpuBackend::new())
        .with_context(|| format!("cannot load model from {}", path.display()))?;
    let name = match (&args.served_model_name, &args.model) {
        (Some(n), _) => n.clone(),
        (None, None) => "default".into(),
        (None, Some(p)) if p.as_os_str() == "default" => "default".into(),
        (None, Some(p)) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    };
    let state = app_state(lm.model, lm.tokenizer, name.clone());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving model {name:?} at http://{}/v1 (POST /v1/chat/completions)",
            listener.local_addr()?
        );
        serve_on(listener, state).await
    })
}

/// Serves `state` on `listener` until Ctrl-C.
pub async fn serve_on(listener: tokio::net::TcpListener, state: Arc<AppState>) -> Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// An error in OpenAI's JSON shape.
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            400 => "invalid_request_error",
            404 => "not_found_error",
            _ => "server_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}});
        (self.status, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<Value>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    seed: Option<u64>,
    stream: Option<bool>,
    n: Option<u32>,
}

/// Text content from a string or an array of `{"type": "text", "text": ...}` parts.
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

/// Parses a JSON body; type errors name the offending field.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = if path == "." {
            format!("invalid request body: {}", e.inner())
        } else {
            format!("invalid request body: field `{path}`: {}", e.inner())
        };
        ApiError::bad_request(msg, None)
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": state.model_name, "object": "model", "created": now(), "owned_by": "novastack"}]}),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ChatRequest = parse_body(&body)?;
    if let Some(m) = &req.model {
        if m != &state.model_name && m != "default" {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "the model `{m}` does not exist; this server has `{}`",
                    state.model_name
                ),
                param: Some("model"),
            });
        }
    }
    if req.stream == Some(true) {
        return Err(ApiError::bad_request(
            "stream=true is not supported yet",
            Some("stream"),
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only n=1 is supported", Some("n")));
    }
    let messages = normalize_messages(&req.messages)?;
    let prompt = state
        .tokenizer
        .encode_chat(&messages, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let room = state.max_context.saturating_sub(prompt.len());
    if room == 0 {
        return Err(ApiError::bad_request(
            format!(
                "the prompt is {} tokens, the model's context window is {}",
                prompt.len(),
                state.max_context
            ),
            Some("messages"),
        ));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens).unwrap_or(room);
    if max_tokens == 0 || max_tokens > room {
        return Err(ApiError::bad_request(
            format!(
                "max_tokens {max_tokens} must be between 1 and {room} (context window {} minus the {}-token prompt)",
                state.max_context,
                prompt.len()
            ),
            Some("max_tokens"),
        ));
    }
    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k: req.top_k.filter(|&k| k > 0).map_or(0, |k| k as usize),
        min_p: 0.0,
        seed: req.seed,
        ..Default::default()
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    let (tx, rx) = oneshot::channel();
    let job = Job {
        prompt: prompt.clone(),
        params: GenerateParams {
            max_tokens,
            sampling,
            ..Default::default()
        },
        reply: tx,
    };
    let internal = |msg: String| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: msg,
        param: None,
    };
    state
        .jobs
        .send(job)
        .map_err(|_| internal("the model worker has stopped".into()))?;
    let out = rx
        .await
        .map_err(|_| internal("the model worker dropped the request".into()))?
        .map_err(internal)?;
    let text = state
        .tokenizer
        .decode(&out.token_ids, true)
        .map_err(|e| internal(e.to_string()))?;
    let (p, c) = (prompt.len(), out.token_ids.len());
    Ok(Json(json!({
        "id": format!("chatcmpl-{:x}{:x}", now(), rand::random::<u64>()),
        "object": "chat.completion",
        "created": now(),
        "model": state.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                     "finish_reason": out.finish_reason.as_str()}],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    })))
}
