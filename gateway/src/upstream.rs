//! Upstream adapters. Each turns the client's OpenAI chat request into the upstream's
//! request (auth header, body shape), and the upstream's answer (SSE or JSON) back into
//! one normalized event stream: text deltas, finish reasons, usage.
//!
//! - `openai`: any OpenAI-compatible server, quirks included: usage missing or only at
//!   the end, `[DONE]` missing or doubled, keep-alive comments, error objects mid-stream.
//! - `anthropic`: the Messages API (`x-api-key`, `anthropic-version`, `system` apart,
//!   `max_tokens` required, `message_start` / `content_block_delta` / `message_delta` /
//!   `message_stop` / `error` events).
//! - `local`: our own engine in-process, through the `serve` router (no socket).
//!
//! Upstream keys never appear in errors: messages are redacted before they leave here.

use super::config::{AuthSpec, ModelConfig, Provider};
use super::policy::FailureKind;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use novastack_openai::sse_parser::{SseEvent, SseParser};
use serde_json::{json, Map, Value};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// One normalized piece of an upstream answer.
#[derive(Debug, Clone, PartialEq)]
pub enum UpEvent {
    Text { index: usize, text: String },
    Finish { index: usize, reason: String },
    Usage { prompt: usize, completion: usize },
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

#[derive(Clone, Copy, PartialEq, Debug)]
enum Dialect {
    OpenAi,
    Anthropic,
}

/// Where and how to send one attempt.
pub struct Target<'a> {
    pub model: &'a ModelConfig,
    /// The upstream key (from the environment), if the model has auth.
    pub key: Option<&'a str>,
    /// `local` models: the in-process serve router.
    pub local: Option<&'a axum::Router>,
    /// Remote models: the endpoint, parsed once per config load.
    pub url: Option<&'a reqwest::Url>,
}

/// The endpoint a remote model's requests go to.
pub fn endpoint(m: &ModelConfig) -> Option<Result<reqwest::Url, String>> {
    let base = m.base_url.as_deref()?.trim_end_matches('/');
    let url = match m.provider {
        Provider::Anthropic if base.ends_with("/v1") => format!("{base}/messages"),
        Provider::Anthropic => format!("{base}/v1/messages"),
        _ => format!("{base}/chat/completions"),
    };
    Some(reqwest::Url::parse(&url).map_err(|e| format!("{url:?}: {e}")))
}

impl Target<'_> {
    fn redact(&self, s: &str) -> String {
        match self.key {
            Some(k) if k.len() >= 4 => s.replace(k, "[redacted]"),
            _ => s.to_string(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.model.timeout_s.unwrap_or(120.0))
    }
}

/// The client's request, already validated by the gateway.
pub struct ChatCall<'a> {
    /// The client's fields except `messages` (given apart) and `metadata` (routing only).
    pub body: &'a Map<String, Value>,
    pub messages: &'a [Value],
    pub max_tokens: Option<usize>,
    /// Stream from the upstream (the client streams); otherwise ask for one JSON answer.
    pub stream: bool,
}

/// The OpenAI request body: the client's fields with the upstream's model name and the
/// stream settings, serialized straight from the borrowed request (no deep copy).
struct OpenAiBody<'a> {
    call: &'a ChatCall<'a>,
    model: &'a str,
}

impl serde::Serialize for OpenAiBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("messages", self.call.messages)?;
        m.serialize_entry("stream", &self.call.stream)?;
        if self.call.stream {
            m.serialize_entry("stream_options", &json!({"include_usage": true}))?;
        }
        for (k, v) in self.call.body {
            if !matches!(
                k.as_str(),
                "model" | "messages" | "stream" | "stream_options" | "metadata"
            ) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

fn openai_body(t: &Target, call: &ChatCall) -> Vec<u8> {
    let model = t.model.upstream_model.as_deref().unwrap_or(&t.model.name);
    serde_json::to_vec(&OpenAiBody { call, model }).unwrap_or_default()
}

/// Text from a message `content`: a string or an array of text parts.
pub(crate) fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn anthropic_body(t: &Target, call: &ChatCall) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in call.messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let text = content_text(m.get("content").unwrap_or(&Value::Null));
        match role {
            "system" | "developer" => system.push(text),
            r => {
                let role = if r == "assistant" {
                    "assistant"
                } else {
                    "user"
                };
                // Anthropic wants alternating turns: merge consecutive same-role ones.
                match messages.last_mut() {
                    Some(last) if last["role"] == role => {
                        let prev = last["content"].as_str().unwrap_or("").to_string();
                        last["content"] = Value::String(format!("{prev}\n\n{text}"));
                    }
                    _ => messages.push(json!({"role": role, "content": text})),
                }
            }
        }
    }
    let mut body = json!({
        "model": t.model.upstream_model.clone().unwrap_or_else(|| t.model.name.clone()),
        "messages": messages,
        "max_tokens": call.max_tokens.unwrap_or(4096),
        "stream": call.stream,
    });
    if !system.is_empty() {
        body["system"] = Value::String(system.join("\n\n"));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
    ] {
        if let Some(v) = call.body.get(from).filter(|v| !v.is_null()) {
            body[to] = v.clone();
        }
    }
    match call.body.get("stop") {
        Some(Value::String(s)) => body["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => body["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    body
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

type ByteStream = BoxStream<'static, Result<Bytes, UpError>>;

/// Sends the request; returns the answer's event stream once the upstream said 2xx.
pub async fn open(t: &Target<'_>, call: &ChatCall<'_>) -> Result<UpStream, UpError> {
    let dialect = if t.model.provider == Provider::Anthropic {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let body = match dialect {
        Dialect::OpenAi => openai_body(t, call),
        Dialect::Anthropic => anthropic_body(t, call).to_string().into_bytes(),
    };
    let timeout = t.timeout();
    let (status, headers, is_json, bytes): (u16, reqwest::header::HeaderMap, bool, ByteStream) =
        if let Some(router) = t.local {
            use tower::ServiceExt;
            let req = axum::http::Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .map_err(|e| UpError::new(FailureKind::Protocol, e.to_string()))?;
            let resp = router
                .clone()
                .oneshot(req)
                .await
                .map_err(|e| UpError::new(FailureKind::Connect, e.to_string()))?;
            let mut headers = reqwest::header::HeaderMap::new();
            for (k, v) in resp.headers() {
                if let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()),
                    reqwest::header::HeaderValue::from_bytes(v.as_bytes()),
                ) {
                    headers.insert(k, v);
                }
            }
            let is_json = is_json_type(&headers);
            let status = resp.status().as_u16();
            let stream = resp
                .into_body()
                .into_data_stream()
                .map_err(|e| UpError::new(FailureKind::Connect, e.to_string()))
                .boxed();
            (status, headers, is_json, stream)
        } else {
            let url = match t.url {
                Some(u) => u.clone(),
                None => match endpoint(t.model) {
                    Some(Ok(u)) => u,
                    _ => return Err(UpError::new(FailureKind::Connect, "no usable base_url")),
                },
            };
            let client = http_client();
            let mut rb = client
                .post(url)
                .header("content-type", "application/json")
                .header(
                    "accept",
                    if call.stream {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                );
            if dialect == Dialect::Anthropic {
                rb = rb.header(
                    "anthropic-version",
                    t.model.anthropic_version.as_deref().unwrap_or("2023-06-01"),
                );
            }
            if let (Some(AuthSpec::Header(a)), Some(key)) = (&t.model.auth, t.key) {
                rb = rb.header(a.header.as_str(), format!("{}{key}", a.prefix));
            }
            let send = rb.body(body).send();
            let resp = match tokio::time::timeout(timeout, send).await {
                Err(_) => {
                    return Err(UpError::new(
                        FailureKind::Timeout,
                        format!("no answer within {timeout:?}"),
                    ))
                }
                Ok(Err(e)) => {
                    let kind = if e.is_timeout() {
                        FailureKind::Timeout
                    } else {
                        FailureKind::Connect
                    };
                    return Err(UpError::new(kind, t.redact(&without_url(&e))));
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let is_json = is_json_type(&headers);
            let stream = resp
                .bytes_stream()
                .map_err(|e| UpError::new(FailureKind::Connect, without_url(&e)))
                .boxed();
            (status, headers, is_json, stream)
        };
    if !(200..300).contains(&status) {
        let body = read_all(bytes, timeout).await.unwrap_or_default();
        return Err(UpError {
            kind: FailureKind::Status(status),
            message: t.redact(&format!(
                "upstream {} answered {status}: {}",
                t.model.name,
                error_message(&body)
            )),
            retry_after: retry_after(&headers),
        });
    }
    Ok(UpStream {
        bytes,
        dialect,
        is_json,
        parser: SseParser::new(),
        queue: VecDeque::new(),
        done: false,
        finished: HashSet::new(),
        idle: timeout,
        redact_key: t.key.map(str::to_string),
        anthropic_prompt: 0,
    })
}

fn is_json_type(h: &reqwest::header::HeaderMap) -> bool {
    h.get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A reqwest error's text and causes, without the URL.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s = format!("{s}: {x}");
        src = x.source();
    }
    match e.url() {
        Some(u) => s.replace(u.as_str(), "<upstream>"),
        None => s,
    }
}

async fn read_all(mut s: ByteStream, timeout: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, s.next()).await {
        out.extend_from_slice(&b);
        if out.len() > 1 << 20 {
            break;
        }
    }
    Some(out)
}

/// An upstream answer as normalized events.
pub struct UpStream {
    bytes: ByteStream,
    dialect: Dialect,
    is_json: bool,
    parser: SseParser,
    queue: VecDeque<UpEvent>,
    done: bool,
    finished: HashSet<usize>,
    idle: Duration,
    redact_key: Option<String>,
    anthropic_prompt: usize,
}

impl UpStream {
    /// The next event; `None` at a proper end. A stream that stops early, stalls past
    /// the timeout, or carries an error object yields an error.
    pub async fn next(&mut self) -> Option<Result<UpEvent, UpError>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                if let UpEvent::Finish { index, .. } = &ev {
                    self.finished.insert(*index);
                }
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            if self.is_json {
                let body = match read_all(
                    std::mem::replace(&mut self.bytes, futures_util::stream::empty().boxed()),
                    self.idle,
                )
                .await
                {
                    Some(b) => b,
                    None => return Some(Err(UpError::new(FailureKind::Timeout, "no answer body"))),
                };
                self.done = true;
                match parse_json_answer(self.dialect, &body) {
                    Ok(evs) => self.queue.extend(evs),
                    Err(e) => return Some(Err(self.redacted(e))),
                }
                continue;
            }
            let chunk = match tokio::time::timeout(self.idle, self.bytes.next()).await {
                Err(_) => {
                    return Some(Err(UpError::new(
                        FailureKind::Timeout,
                        format!("the stream stalled for {:?}", self.idle),
                    )))
                }
                Ok(Some(Err(e))) => return Some(Err(self.redacted(e))),
                Ok(Some(Ok(b))) => Some(b),
                Ok(None) => None,
            };
            let events = match &chunk {
                Some(b) => self.parser.push(b),
                None => self.parser.finish().into_iter().collect(),
            };
            for ev in events {
                if let Err(e) = self.on_event(ev) {
                    self.done = true;
                    self.queue.clear();
                    return Some(Err(self.redacted(e)));
                }
                if self.done {
                    break;
                }
            }
            if chunk.is_none() && !self.done {
                self.done = true;
                // EOF: fine once every choice finished (a missing [DONE] is a quirk);
                // otherwise the upstream died mid-answer.
                let pending_finish = self
                    .queue
                    .iter()
                    .any(|e| matches!(e, UpEvent::Finish { .. }));
                if self.finished.is_empty() && !pending_finish {
                    return Some(Err(UpError::new(
                        FailureKind::Protocol,
                        "the upstream stream ended before the answer finished",
                    )));
                }
            }
        }
    }

    fn redacted(&self, mut e: UpError) -> UpError {
        if let Some(k) = self.redact_key.as_deref().filter(|k| k.len() >= 4) {
            e.message = e.message.replace(k, "[redacted]");
        }
        e
    }

    fn on_event(&mut self, ev: SseEvent) -> Result<(), UpError> {
        match self.dialect {
            Dialect::OpenAi => {
                let data = ev.data.trim();
                if data == "[DONE]" {
                    self.done = true;
                    return Ok(());
                }
                let v: Value = serde_json::from_str(data).map_err(|e| {
                    UpError::new(
                        FailureKind::Protocol,
                        format!("malformed SSE data from upstream: {e}"),
                    )
                })?;
                if let Some(err) = v.get("error") {
                    return Err(UpError::new(
                        FailureKind::Protocol,
                        format!(
                            "upstream error mid-stream: {}",
                            err.get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("unknown")
                        ),
                    ));
                }
                self.queue.extend(openai_events(&v, true));
            }
            Dialect::Anthropic => {
                let v: Value = serde_json::from_str(ev.data.trim()).map_err(|e| {
                    UpError::new(
                        FailureKind::Protocol,
                        format!("malformed SSE data from upstream: {e}"),
                    )
                })?;
                let kind = ev
                    .event
                    .clone()
                    .or_else(|| v.get("type").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                match kind.as_str() {
                    "message_start" => {
                        let u = &v["message"]["usage"];
                        self.anthropic_prompt = u["input_tokens"].as_u64().unwrap_or(0) as usize
                            + u["cache_read_input_tokens"].as_u64().unwrap_or(0) as usize
                            + u["cache_creation_input_tokens"].as_u64().unwrap_or(0) as usize;
                    }
                    "content_block_delta" => {
                        if let Some(t) = v["delta"]["text"].as_str() {
                            self.queue.push_back(UpEvent::Text {
                                index: 0,
                                text: t.to_string(),
                            });
                        }
                    }
                    "message_delta" => {
                        if let Some(r) = v["delta"]["stop_reason"].as_str() {
                            self.queue.push_back(UpEvent::Finish {
                                index: 0,
                                reason: anthropic_reason(r),
                            });
                        }
                        if let Some(out) = v["usage"]["output_tokens"].as_u64() {
                            self.queue.push_back(UpEvent::Usage {
                                prompt: self.anthropic_prompt,
                                completion: out as usize,
                            });
                        }
                    }
                    "message_stop" => self.done = true,
                    "error" => {
                        let kind = match v["error"]["type"].as_str() {
                            Some("rate_limit_error") => FailureKind::Status(429),
                            Some("overloaded_error") => FailureKind::Status(529),
                            _ => FailureKind::Protocol,
                        };
                        return Err(UpError::new(
                            kind,
                            format!(
                                "upstream error mid-stream: {}",
                                v["error"]["message"].as_str().unwrap_or("unknown")
                            ),
                        ));
                    }
                    _ => {} // ping, content_block_start/stop
                }
            }
        }
        Ok(())
    }
}

fn anthropic_reason(r: &str) -> String {
    match r {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    }
    .to_string()
}

/// Events in one OpenAI chunk (`stream`) or whole completion.
fn openai_events(v: &Value, stream: bool) -> Vec<UpEvent> {
    let mut out = Vec::new();
    for c in v["choices"].as_array().into_iter().flatten() {
        let index = c["index"].as_u64().unwrap_or(0) as usize;
        let text = if stream {
            c["delta"]["content"].as_str()
        } else {
            c["message"]["content"].as_str()
        };
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            out.push(UpEvent::Text {
                index,
                text: t.to_string(),
            });
        }
        if let Some(r) = c["finish_reason"].as_str() {
            out.push(UpEvent::Finish {
                index,
                reason: r.to_string(),
            });
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        out.push(UpEvent::Usage {
            prompt: u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
            completion: u["completion_tokens"].as_u64().unwrap_or(0) as usize,
        });
    }
    out
}

fn parse_json_answer(d: Dialect, body: &[u8]) -> Result<Vec<UpEvent>, UpError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        UpError::new(
            FailureKind::Protocol,
            format!("malformed JSON from upstream: {e}"),
        )
    })?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(UpError::new(
            FailureKind::Protocol,
            format!(
                "upstream error: {}",
                err.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
            ),
        ));
    }
    Ok(match d {
        Dialect::OpenAi => openai_events(&v, false),
        Dialect::Anthropic => {
            let text: String = v["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["text"].as_str())
                .collect();
            let mut out = vec![UpEvent::Text { index: 0, text }];
            out.push(UpEvent::Finish {
                index: 0,
                reason: anthropic_reason(v["stop_reason"].as_str().unwrap_or("end_turn")),
            });
            out.push(UpEvent::Usage {
                prompt: v["usage"]["input_tokens"].as_u64().unwrap_or(0) as usize,
                completion: v["usage"]["output_tokens"].as_u64().unwrap_or(0) as usize,
            });
            out
        }
    })
}

/// One connection pool for every upstream.
pub fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut b = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        // Proxies from the environment as usual; without any, skip the per-request
        // proxy matching.
        let proxied = ["http_proxy", "https_proxy", "all_proxy"]
            .iter()
            .any(|k| std::env::var_os(k).is_some() || std::env::var_os(k.to_uppercase()).is_some());
        if !proxied {
            b = b.no_proxy();
        }
        b.build().expect("HTTP client")
    })
}
