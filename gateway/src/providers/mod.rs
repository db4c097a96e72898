//! Providers: how the gateway speaks to each kind of upstream. A provider turns the
//! client's OpenAI chat request into its own request (endpoint, headers, body) and
//! decodes its answer (SSE events or one JSON body) into normalized `UpEvent`s: text
//! deltas, tool calls, finish reasons, usage, embeddings. Sending, timeouts, status handling and SSE framing are
//! the same for all of them (`upstream.rs`).
//!
//! - `openai`: any OpenAI-compatible server, quirks included (usage missing or only at
//!   the end, `[DONE]` missing or doubled, keep-alive comments, error objects mid-stream).
//! - `anthropic`: the Messages API.
//! - `local`: our own engine in-process (OpenAI's format, no socket).
//!
//! Adding a provider: a file here implementing `Provider`, a variant of
//! `config::Provider`, its arm in `for_model`, and a `Behavior` of the test upstream
//! (`tests/src/mock_upstream.rs`) that speaks it.

mod anthropic;
mod local;
mod openai;

use crate::api::Api;
use crate::config::{self, AuthSpec, ModelConfig};
use crate::policy::FailureKind;
use crate::request::ClientRequest;
use novastack_openai::protocol::{FinishReason, ToolCallDelta};
use novastack_openai::sse_parser::SseEvent;
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;

/// One normalized piece of an upstream answer.
#[derive(Debug, Clone, PartialEq)]
pub enum UpEvent {
    Text {
        index: usize,
        text: String,
    },
    /// A tool call or a piece of one (OpenAI's delta shape: the id, type and name
    /// first, then argument fragments, all with the call's index).
    ToolCall {
        index: usize,
        call: ToolCallDelta,
    },
    Finish {
        index: usize,
        reason: FinishReason,
        /// The stop string that ended the choice, where the upstream says (vLLM's
        /// `stop_reason`, Anthropic's `stop_sequence`).
        stop: Option<String>,
    },
    Usage {
        prompt: usize,
        completion: usize,
    },
    /// An embeddings answer's `data` (the vectors, as the upstream encoded them).
    Embeddings {
        data: Value,
    },
}

/// A failed attempt: what kind, a message safe to show, and the upstream's Retry-After.
#[derive(Debug, Clone)]
pub struct UpError {
    pub kind: FailureKind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl UpError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        UpError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// How one kind of upstream is spoken to. Implementations are stateless; state kept
/// while one answer is read lives in its `Decoder`.
pub trait Provider: Send + Sync {
    /// The endpoint of `api` under the model's `base_url`; `None` for a provider that
    /// is not reached over HTTP (`local`) or does not speak `api`.
    fn endpoint(&self, base_url: &str, api: Api) -> Option<String>;

    /// Request headers besides content type and accept: by default the configured
    /// `auth` header carrying the upstream key.
    fn headers(&self, m: &ModelConfig, key: Option<&str>) -> Vec<(String, String)> {
        auth_header(m, key).into_iter().collect()
    }

    /// The upstream's request body for the client's request.
    fn body(&self, m: &ModelConfig, req: &ClientRequest) -> Vec<u8>;

    /// A decoder for one answer to a request for `api`.
    fn decoder(&self, api: Api) -> Box<dyn Decoder>;
}

/// Whether an answer goes on after an SSE event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    More,
    /// The upstream said the answer is complete (`[DONE]`, `message_stop`).
    End,
}

/// Turns one answer into events. An `Err` ends the answer with that failure.
pub trait Decoder: Send {
    /// One SSE event: appends its events to `out`.
    fn event(&mut self, ev: &SseEvent, out: &mut VecDeque<UpEvent>) -> Result<Flow, UpError>;

    /// A whole JSON answer (already checked for an `error` object).
    fn json(&mut self, v: &Value) -> Vec<UpEvent>;
}

/// The implementation of a configured provider.
pub fn for_model(p: config::Provider) -> &'static dyn Provider {
    match p {
        config::Provider::Openai => &openai::OpenAi,
        config::Provider::Anthropic => &anthropic::Anthropic,
        config::Provider::Local => &local::Local,
    }
}

/// The configured `auth` header with the key, if both are there.
pub fn auth_header(m: &ModelConfig, key: Option<&str>) -> Option<(String, String)> {
    match (&m.auth, key) {
        (Some(AuthSpec::Header(a)), Some(key)) => {
            Some((a.header.clone(), format!("{}{key}", a.prefix)))
        }
        _ => None,
    }
}

/// The model name the upstream knows.
fn upstream_model(m: &ModelConfig) -> &str {
    m.upstream_model.as_deref().unwrap_or(&m.name)
}

/// An SSE event's data as JSON.
fn event_json(ev: &SseEvent) -> Result<Value, UpError> {
    serde_json::from_str(ev.data.trim()).map_err(|e| {
        UpError::new(
            FailureKind::Protocol,
            format!("malformed SSE data from upstream: {e}"),
        )
    })
}

/// An error object's message inside an answer.
fn mid_stream_error(kind: FailureKind, err: &Value) -> UpError {
    UpError::new(
        kind,
        format!(
            "upstream error mid-stream: {}",
            err.get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
        ),
    )
}
