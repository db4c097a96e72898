//! Sending one attempt and reading its answer, the same for every provider: the
//! transport (HTTP, or an in-process router for local models), timeouts, non-2xx
//! answers, SSE framing, an answer that stalls or stops early. What the request and the
//! answer look like is the provider's (`providers/`).
//!
//! Upstream keys never appear in errors or answers: messages and text are redacted
//! (`redact.rs`) before they leave here, error bodies before they are truncated.
//!
//! Bounds: `timeout_s` is the longest time without data (until the answer starts, and
//! between events; SSE comments and `ping` events are keep-alives and do not count);
//! an SSE line or event is at most `max_sse_line_bytes` and a JSON answer at most
//! `max_response_bytes`, so one upstream cannot make the gateway buffer without limit.

use crate::api::Api;
use crate::config::ModelConfig;
use crate::policy::FailureKind;
use crate::providers::{Decoder, Flow, Provider, UpError, UpEvent};
use crate::redact::{Redactor, StreamRedactor};
use crate::request::ClientRequest;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use novastack_openai::protocol::{FunctionCallDelta, ToolCallDelta};
use novastack_openai::sse_parser::{SseParser, DEFAULT_MAX_LINE};
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// The default `timeout_s`.
pub const DEFAULT_TIMEOUT_S: f64 = 120.0;
/// The default `max_response_bytes`: 16 MiB.
pub const DEFAULT_MAX_RESPONSE: usize = 16 << 20;
/// How much of an error answer's body is read.
const MAX_ERROR_BODY: usize = 64 << 10;
/// How much of a non-JSON error body reaches the client (after redaction).
const ERROR_TEXT_CHARS: usize = 300;

/// How requests reach a model.
pub enum Transport {
    /// A remote upstream: the endpoint of each API it serves, parsed once per config
    /// load.
    Http(Vec<(Api, reqwest::Url)>),
    /// A local model: its OpenAI router in this process.
    InProcess(axum::Router),
}

/// One model's upstream, resolved at config load: who speaks there, how to reach it,
/// and its key (from the environment), if the model has auth.
pub struct Endpoint {
    pub provider: &'static dyn Provider,
    pub transport: Transport,
    pub key: Option<String>,
    /// The key, precomputed for redaction.
    redactor: Redactor,
}

type ByteStream = BoxStream<'static, Result<Bytes, UpError>>;

/// `timeout_s` of a model.
pub fn idle_timeout(m: &ModelConfig) -> Duration {
    Duration::from_secs_f64(m.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
}

impl Endpoint {
    pub fn new(provider: &'static dyn Provider, transport: Transport, key: Option<String>) -> Self {
        let redactor = Redactor::new(key.as_deref());
        Endpoint {
            provider,
            transport,
            key,
            redactor,
        }
    }

    /// Sends the request for model `m`; returns the answer's event stream once the
    /// upstream said 2xx.
    pub async fn open(
        &self,
        m: &ModelConfig,
        req: &ClientRequest,
    ) -> Result<AnswerStream, UpError> {
        let body = self.provider.body(m, req);
        let timeout = idle_timeout(m);
        let sent = Instant::now();
        let (status, headers, bytes) = match &self.transport {
            Transport::InProcess(router) => call_in_process(router, req.api, body).await?,
            Transport::Http(urls) => {
                let Some((_, url)) = urls.iter().find(|(a, _)| *a == req.api) else {
                    return Err(UpError::new(
                        FailureKind::Protocol,
                        format!("upstream {} does not serve {}", m.name, req.api.route()),
                    ));
                };
                self.post(m, url, body, req.stream, timeout).await?
            }
        };
        if !(200..300).contains(&status) {
            let body = read_capped(bytes, Instant::now() + timeout, MAX_ERROR_BODY)
                .await
                .unwrap_or_else(|partial| partial);
            return Err(UpError {
                kind: FailureKind::Status(status),
                message: format!(
                    "upstream {} answered {status}: {}",
                    m.name,
                    error_message(&body, &self.redactor)
                ),
                retry_after: retry_after(&headers),
            });
        }
        Ok(AnswerStream {
            bytes,
            decoder: self.provider.decoder(req.api),
            is_json: is_json_type(&headers),
            parser: SseParser::with_max_line(m.max_sse_line_bytes.unwrap_or(DEFAULT_MAX_LINE)),
            queue: VecDeque::new(),
            done: false,
            finished: HashSet::new(),
            idle: timeout,
            data_deadline: sent + timeout,
            max_response: m.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE),
            redactor: self.redactor.clone(),
            texts: Default::default(),
            args: Default::default(),
            failure: None,
        })
    }

    async fn post(
        &self,
        m: &ModelConfig,
        url: &reqwest::Url,
        body: Vec<u8>,
        stream: bool,
        timeout: Duration,
    ) -> Result<(u16, reqwest::header::HeaderMap, ByteStream), UpError> {
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut rb = http_client()
            .post(url.clone())
            .header("content-type", "application/json")
            .header("accept", accept);
        for (k, v) in self.provider.headers(m, self.key.as_deref()) {
            rb = rb.header(k, v);
        }
        let resp = match tokio::time::timeout(timeout, rb.body(body).send()).await {
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
                return Err(UpError::new(kind, without_url(&e, &self.redactor)));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let redactor = self.redactor.clone();
        let stream = resp
            .bytes_stream()
            .map_err(move |e| UpError::new(FailureKind::Connect, without_url(&e, &redactor)))
            .boxed();
        Ok((status, headers, stream))
    }
}

/// Sends `body` to an in-process router's endpoint for `api`.
async fn call_in_process(
    router: &axum::Router,
    api: Api,
    body: Vec<u8>,
) -> Result<(u16, reqwest::header::HeaderMap, ByteStream), UpError> {
    use tower::ServiceExt;
    let req = axum::http::Request::post(api.route())
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
    let status = resp.status().as_u16();
    let stream = resp
        .into_body()
        .into_data_stream()
        .map_err(|e| UpError::new(FailureKind::Connect, e.to_string()))
        .boxed();
    Ok((status, headers, stream))
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

/// An error body's message, redacted: the JSON `error.message`, or the body's text
/// redacted first and then cut to 300 bytes (so a cut key is still caught whole).
fn error_message(body: &[u8], redactor: &Redactor) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match v.pointer("/error/message").and_then(Value::as_str) {
        Some(m) => redactor.redact(m).into_owned(),
        None => redactor.redact_truncated(&String::from_utf8_lossy(body), ERROR_TEXT_CHARS),
    }
}

fn is_json_type(h: &reqwest::header::HeaderMap) -> bool {
    h.get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A reqwest error's text and causes, without the URL, redacted.
fn without_url(e: &reqwest::Error, redactor: &Redactor) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s = format!("{s}: {x}");
        src = x.source();
    }
    let parts: Vec<String> = match e.url() {
        Some(u) => s
            .split(u.as_str())
            .map(|p| redactor.redact(p).into_owned())
            .collect(),
        None => vec![redactor.redact(&s).into_owned()],
    };
    parts.join("<upstream>")
}

/// The whole body when it ends, fails or `deadline` passes; `Err` with the first
/// `max` bytes once it is longer than `max` (the rest is not read).
async fn read_capped(mut s: ByteStream, deadline: Instant, max: usize) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, s.next()).await {
        if out.len() + b.len() > max {
            out.extend_from_slice(&b[..max - out.len()]);
            return Err(out);
        }
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// An upstream's answer as normalized events.
pub struct AnswerStream {
    bytes: ByteStream,
    decoder: Box<dyn Decoder>,
    is_json: bool,
    parser: SseParser,
    queue: VecDeque<UpEvent>,
    done: bool,
    finished: HashSet<usize>,
    /// `timeout_s`: the longest time without data.
    idle: Duration,
    /// When the attempt fails unless data comes; moved on by every data event.
    data_deadline: Instant,
    max_response: usize,
    redactor: Redactor,
    /// Text on its way to the client, redacted across pieces, by choice.
    texts: std::collections::BTreeMap<usize, StreamRedactor>,
    /// Tool-call arguments on their way, redacted across pieces, by (choice, call).
    args: std::collections::BTreeMap<(usize, usize), StreamRedactor>,
    /// A failure to report once the text held back before it has gone out.
    failure: Option<UpError>,
}

impl AnswerStream {
    /// The next event; `None` at a proper end. A stream that stops early, goes
    /// without data past the timeout, passes a size cap, or carries an error object
    /// yields an error. Text comes redacted (a piece may be held back until the next
    /// shows it is no part of a key).
    pub async fn next(&mut self) -> Option<Result<UpEvent, UpError>> {
        if self.failure.is_some() {
            if let Some(text) = self.flush_text(None) {
                return Some(Ok(text));
            }
            return self.failure.take().map(Err);
        }
        let r = self.next_event().await;
        match r {
            // Text held back goes out before the failure (alone it holds no part of a
            // key long enough to matter: it is shorter than 8 characters).
            Some(Err(e)) => {
                self.failure = Some(e);
                match self.flush_text(None) {
                    Some(text) => Some(Ok(text)),
                    None => self.failure.take().map(Err),
                }
            }
            r => r,
        }
    }

    /// Text held back for choice `only` (any choice: `None`), as one more piece.
    fn flush_text(&mut self, only: Option<usize>) -> Option<UpEvent> {
        let (&index, r) = self
            .texts
            .iter_mut()
            .find(|(i, r)| only.is_none_or(|o| o == **i) && r.has_pending())?;
        let text = r.finish();
        Some(UpEvent::Text { index, text })
    }

    /// A tool-call piece, redacted: id and name whole, arguments across pieces (a tail
    /// that could still become part of a key is held back).
    fn redact_call(&mut self, index: usize, mut call: ToolCallDelta) -> ToolCallDelta {
        if self.redactor.is_empty() {
            return call;
        }
        let whole = |s: Option<String>| s.map(|s| self.redactor.redact(&s).into_owned());
        call.id = whole(call.id);
        call.function.name = whole(call.function.name);
        if let Some(a) = call.function.arguments.take() {
            let r = self
                .args
                .entry((index, call.index))
                .or_insert_with(|| StreamRedactor::new(self.redactor.clone()));
            call.function.arguments = Some(r.push(&a));
        }
        call
    }

    /// Arguments held back for a call of choice `only` (any choice: `None`), as one
    /// more piece of that call.
    fn flush_args(&mut self, only: Option<usize>) -> Option<UpEvent> {
        let (&(index, call), r) = self
            .args
            .iter_mut()
            .find(|((i, _), r)| only.is_none_or(|o| o == *i) && r.has_pending())?;
        let rest = r.finish();
        Some(UpEvent::ToolCall {
            index,
            call: ToolCallDelta {
                index: call,
                id: None,
                kind: None,
                function: FunctionCallDelta {
                    name: None,
                    arguments: Some(rest),
                },
            },
        })
    }

    async fn next_event(&mut self) -> Option<Result<UpEvent, UpError>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                match ev {
                    UpEvent::Text { index, text } => {
                        let r = self
                            .texts
                            .entry(index)
                            .or_insert_with(|| StreamRedactor::new(self.redactor.clone()));
                        let text = r.push(&text);
                        if text.is_empty() {
                            continue;
                        }
                        return Some(Ok(UpEvent::Text { index, text }));
                    }
                    UpEvent::Finish { index, .. } | UpEvent::ToolCall { index, .. }
                        if self.texts.get(&index).is_some_and(|r| r.has_pending()) =>
                    {
                        self.queue.push_front(ev);
                        return self.flush_text(Some(index)).map(Ok);
                    }
                    UpEvent::Finish { index, .. } => {
                        if let Some(rest) = self.flush_args(Some(index)) {
                            self.queue.push_front(ev);
                            return Some(Ok(rest));
                        }
                        self.finished.insert(index);
                        return Some(Ok(ev));
                    }
                    UpEvent::ToolCall { index, call } => {
                        return Some(Ok(UpEvent::ToolCall {
                            index,
                            call: self.redact_call(index, call),
                        }))
                    }
                    UpEvent::Usage { .. } | UpEvent::Embeddings { .. } => return Some(Ok(ev)),
                }
            }
            if self.done {
                if let Some(text) = self.flush_text(None) {
                    return Some(Ok(text));
                }
                return self.flush_args(None).map(Ok);
            }
            if self.is_json {
                let bytes =
                    std::mem::replace(&mut self.bytes, futures_util::stream::empty().boxed());
                self.done = true;
                let read = read_capped(bytes, Instant::now() + self.idle, self.max_response);
                let Ok(body) = read.await else {
                    return Some(Err(UpError::new(
                        FailureKind::Protocol,
                        format!(
                            "the upstream answer is larger than {} bytes (max_response_bytes)",
                            self.max_response
                        ),
                    )));
                };
                match self.json_answer(&body) {
                    Ok(evs) => self.queue.extend(evs),
                    Err(e) => return Some(Err(self.redacted(e))),
                }
                continue;
            }
            let chunk = match tokio::time::timeout_at(self.data_deadline, self.bytes.next()).await {
                Err(_) => {
                    self.done = true;
                    return Some(Err(UpError::new(
                        FailureKind::Timeout,
                        format!(
                            "no data from the upstream for {:?} (keep-alives do not count)",
                            self.idle
                        ),
                    )));
                }
                Ok(Some(Err(e))) => return Some(Err(self.redacted(e))),
                Ok(Some(Ok(b))) => Some(b),
                Ok(None) => None,
            };
            let events = match &chunk {
                Some(b) => match self.parser.try_push(b) {
                    Ok(evs) => evs,
                    Err(e) => {
                        self.done = true;
                        self.queue.clear();
                        return Some(Err(UpError::new(
                            FailureKind::Protocol,
                            format!("{e} (max_sse_line_bytes)"),
                        )));
                    }
                },
                None => self.parser.finish().into_iter().collect(),
            };
            for ev in events {
                // Data moves the deadline on; comments never reach here, and `ping`
                // events are keep-alives too.
                if ev.event.as_deref() != Some("ping") {
                    self.data_deadline = Instant::now() + self.idle;
                }
                match self.decoder.event(&ev, &mut self.queue) {
                    Ok(Flow::More) => {}
                    Ok(Flow::End) => {
                        self.done = true;
                        break;
                    }
                    Err(e) => {
                        self.done = true;
                        self.queue.clear();
                        return Some(Err(self.redacted(e)));
                    }
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

    /// A whole JSON answer: an error object, or the provider's events.
    fn json_answer(&mut self, body: &[u8]) -> Result<Vec<UpEvent>, UpError> {
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
        Ok(self.decoder.json(&v))
    }

    fn redacted(&self, mut e: UpError) -> UpError {
        if let std::borrow::Cow::Owned(m) = self.redactor.redact(&e.message) {
            e.message = m;
        }
        e
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_request;

    const KEY: &str = "sk-proj-7fQ2xLm9Vt4Rz8Kw3Np6";

    fn model() -> ModelConfig {
        let yaml = "models:\n  - {name: m, provider: local, path: default, timeout_s: 5}\n";
        crate::config::parse(yaml, &|_| None)
            .unwrap()
            .models
            .remove(0)
    }

    /// An in-process upstream answering `status` with `body` (`text/plain` unless it
    /// starts with `{`, `text/event-stream` when it starts with `data:`).
    fn endpoint(status: u16, body: String) -> Endpoint {
        let ctype = if body.starts_with('{') {
            "application/json"
        } else if body.starts_with("data:") {
            "text/event-stream"
        } else {
            "text/plain"
        };
        let router = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                let body = body.clone();
                async move {
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("content-type", ctype)],
                        body,
                    )
                }
            }),
        );
        Endpoint::new(
            crate::providers::for_model(crate::config::Provider::Openai),
            Transport::InProcess(router),
            Some(KEY.to_string()),
        )
    }

    fn req(stream: bool) -> ClientRequest {
        let body = format!(
            r#"{{"model": "m", "messages": [{{"role": "user", "content": "hi"}}], "stream": {stream}}}"#
        );
        parse_request(Api::Chat, body.as_bytes()).unwrap()
    }

    /// The error message (what the client sees and the log records) is redacted
    /// before the body is cut, in every form of the key.
    #[tokio::test]
    async fn error_messages_are_redacted_before_truncation() {
        let pad = "e".repeat(292);
        for body in [
            format!("{pad}{KEY}"),
            format!("bad key {}", KEY.to_uppercase()),
            format!(r#"{{"error": {{"message": "bad key {}"}}}}"#, &KEY[4..16]),
        ] {
            let Err(e) = endpoint(401, body.clone())
                .open(&model(), &req(false))
                .await
            else {
                panic!("401 must fail");
            };
            let low = e.message.to_lowercase();
            assert!(!low.contains(&KEY.to_lowercase()[..8]), "{}", e.message);
            assert!(!low.contains("7fq2xlm9"), "{}", e.message);
            assert!(e.message.contains("[redact"), "{}", e.message);
        }
    }

    /// Streamed text echoing the key is redacted even when split across events.
    #[tokio::test]
    async fn streamed_text_is_redacted_across_events() {
        let delta = |t: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": {"content": t}}]})
            )
        };
        let body = [
            delta("key="),
            delta(&KEY[..10]),
            delta(&KEY[10..]),
            delta("!"),
        ]
        .concat()
            + "data: [DONE]\n\n";
        let mut s = endpoint(200, body)
            .open(&model(), &req(true))
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(ev) = s.next().await {
            if let UpEvent::Text { text: t, .. } = ev.unwrap() {
                text += &t;
            }
        }
        assert_eq!(text, "key=[redacted]!");
    }

    /// Choices streamed interleaved (`n` > 1) are redacted each on its own: a key
    /// split across one choice's pieces is caught, and another choice's text between
    /// them is neither held nor mixed in.
    #[tokio::test]
    async fn interleaved_choices_are_redacted_apart() {
        let ev =
            |c: serde_json::Value| format!("data: {}\n\n", serde_json::json!({ "choices": [c] }));
        let delta =
            |i: usize, t: &str| ev(serde_json::json!({"index": i, "delta": {"content": t}}));
        let finish =
            |i: usize| ev(serde_json::json!({"index": i, "delta": {}, "finish_reason": "stop"}));
        let body = [
            delta(0, &KEY[..10]),
            delta(1, "one "),
            delta(0, &KEY[10..]),
            delta(1, "two"),
            delta(0, "!"),
            finish(1),
            finish(0),
        ]
        .concat()
            + "data: [DONE]\n\n";
        let mut s = endpoint(200, body)
            .open(&model(), &req(true))
            .await
            .unwrap();
        let mut text = [String::new(), String::new()];
        let mut finished = Vec::new();
        while let Some(ev) = s.next().await {
            match ev.unwrap() {
                UpEvent::Text { index, text: t } => {
                    assert!(!finished.contains(&index), "text after its finish");
                    text[index] += &t;
                }
                UpEvent::Finish { index, .. } => finished.push(index),
                _ => {}
            }
        }
        assert_eq!(text, ["[redacted]!", "one two"]);
        assert_eq!(finished, [1, 0]);
    }
}
