//! Sending one attempt and reading its answer, the same for every provider: the
//! transport (HTTP, or an in-process router for local models), timeouts, non-2xx
//! answers, SSE framing, an answer that stalls or stops early. What the request and the
//! answer look like is the provider's (`providers/`).
//!
//! Upstream keys never appear in errors: messages are redacted before they leave here.

use crate::config::ModelConfig;
use crate::policy::FailureKind;
use crate::providers::{Decoder, Flow, Provider, UpError, UpEvent};
use crate::request::ChatRequest;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use novastack_openai::sse_parser::SseParser;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// How requests reach a model.
pub enum Transport {
    /// A remote upstream: its chat endpoint, parsed once per config load.
    Http(reqwest::Url),
    /// A local model: its OpenAI router in this process.
    InProcess(axum::Router),
}

/// One model's upstream, resolved at config load: who speaks there, how to reach it,
/// and its key (from the environment), if the model has auth.
pub struct Endpoint {
    pub provider: &'static dyn Provider,
    pub transport: Transport,
    pub key: Option<String>,
}

type ByteStream = BoxStream<'static, Result<Bytes, UpError>>;

impl Endpoint {
    /// Sends the request for model `m`; returns the answer's event stream once the
    /// upstream said 2xx.
    pub async fn open(&self, m: &ModelConfig, req: &ChatRequest) -> Result<AnswerStream, UpError> {
        let body = self.provider.body(m, req);
        let timeout = Duration::from_secs_f64(m.timeout_s.unwrap_or(120.0));
        let (status, headers, bytes) = match &self.transport {
            Transport::InProcess(router) => call_in_process(router, body).await?,
            Transport::Http(url) => self.post(m, url, body, req.stream, timeout).await?,
        };
        if !(200..300).contains(&status) {
            let body = read_all(bytes, timeout).await;
            return Err(UpError {
                kind: FailureKind::Status(status),
                message: self.redact(&format!(
                    "upstream {} answered {status}: {}",
                    m.name,
                    error_message(&body)
                )),
                retry_after: retry_after(&headers),
            });
        }
        Ok(AnswerStream {
            bytes,
            decoder: self.provider.decoder(),
            is_json: is_json_type(&headers),
            parser: SseParser::new(),
            queue: VecDeque::new(),
            done: false,
            finished: HashSet::new(),
            idle: timeout,
            redact_key: self.key.clone(),
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
                return Err(UpError::new(kind, self.redact(&without_url(&e))));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let stream = resp
            .bytes_stream()
            .map_err(|e| UpError::new(FailureKind::Connect, without_url(&e)))
            .boxed();
        Ok((status, headers, stream))
    }

    fn redact(&self, s: &str) -> String {
        redact(s, self.key.as_deref())
    }
}

fn redact(s: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if k.len() >= 4 => s.replace(k, "[redacted]"),
        _ => s.to_string(),
    }
}

/// Sends `body` to an in-process router's chat endpoint.
async fn call_in_process(
    router: &axum::Router,
    body: Vec<u8>,
) -> Result<(u16, reqwest::header::HeaderMap, ByteStream), UpError> {
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

fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
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

/// The body so far (at most about 1 MiB) when it ends, fails or `timeout` passes.
async fn read_all(mut s: ByteStream, timeout: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, s.next()).await {
        out.extend_from_slice(&b);
        if out.len() > 1 << 20 {
            break;
        }
    }
    out
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
    idle: Duration,
    redact_key: Option<String>,
}

impl AnswerStream {
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
                let bytes =
                    std::mem::replace(&mut self.bytes, futures_util::stream::empty().boxed());
                let body = read_all(bytes, self.idle).await;
                self.done = true;
                match self.json_answer(&body) {
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
        e.message = redact(&e.message, self.redact_key.as_deref());
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
