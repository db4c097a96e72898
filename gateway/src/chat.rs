//! `POST /v1/chat/completions`: authenticate, check the request, route, take the key's
//! limits, run the attempt loop, then answer: one OpenAI completion, or a relay of the
//! upstream's events as OpenAI chunks. Once a chunk has gone out, a failure ends the
//! stream with an error chunk (nothing is retried after the first byte).

use crate::attempt::{attempt_chain, Committed};
use crate::config::ModelConfig;
use crate::providers::UpEvent;
use crate::request::{parse_chat, request_info};
use crate::rules::{self, PlanError};
use crate::state::Gateway;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use novastack_openai::http::body_bytes;
use novastack_openai::protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta, ChatMessage,
    FinishReason, Role, ToolCall, Usage,
};
use novastack_openai::ApiError;
use serde::Serialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub(crate) async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let epoch = gw.epoch();
    let key = epoch.authenticate(&headers)?;
    let body = body_bytes(body)?;
    if gw.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the gateway is shutting down"));
    }
    let req = parse_chat(&body)?;
    let info = request_info(&req, &headers, &epoch.rule_headers)?;
    let key_cfg = key.map(|i| &epoch.cfg.api_keys[i]);
    if let Some(k) = key_cfg {
        if let Some(allowed) = k.models.as_ref().filter(|a| !a.contains(&req.model)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "API key {:?} may not use model {:?} (allowed: {allowed:?})",
                    k.name, req.model
                ),
                Some("model"),
            ));
        }
    }
    let key_name = key_cfg.map(|k| k.name.clone());
    let plan = rules::plan(&epoch.cfg, &info).map_err(|e| match e {
        PlanError::UnknownModel(m) => ApiError::not_found(
            format!(
                "the model `{m}` does not exist; the gateway has {:?} and `auto`",
                epoch.cfg.models.iter().map(|m| &m.name).collect::<Vec<_>>()
            ),
            Some("model"),
        ),
        PlanError::NothingFits(why) => ApiError::bad_request(why, Some("model")),
    })?;
    // Tools pass through to OpenAI-compatible upstreams unchanged and are translated for
    // Anthropic ones; what Anthropic has no equivalent for is refused before any attempt.
    if let Some(field) = req.field_anthropic_lacks() {
        let anthropic = plan.chain.iter().find(|n| {
            epoch
                .model(n)
                .is_some_and(|m| m.provider == crate::config::Provider::Anthropic)
        });
        if let Some(name) = anthropic {
            return Err(ApiError::bad_request(
                match field {
                    "messages" => format!("a content part in `messages` is neither text nor `image_url`, which Anthropic's Messages API does not take, and model `{name}` is an Anthropic upstream"),
                    _ => format!("`{field}` has no equivalent in Anthropic's Messages API, and model `{name}` is an Anthropic upstream"),
                },
                Some(field),
            ));
        }
    }
    let est = (info.context_length + info.max_tokens) as f64;
    let rl_headers = match &key_name {
        Some(k) => gw.clients.reserve(k, est)?,
        None => Vec::new(),
    };
    let started = Instant::now();
    let committed = match attempt_chain(&gw, &epoch, &plan.chain, &req, est, !req.stream).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(k) = &key_name {
                gw.clients.settle(k, est, 0.0);
            }
            return Err(e.with_headers(rl_headers));
        }
    };
    let mut hdrs: Vec<(&'static str, String)> = vec![
        ("x-novastack-model", committed.name.clone()),
        ("x-novastack-attempts", committed.attempts.to_string()),
    ];
    hdrs.extend(rl_headers);
    let answer = Answer {
        gw: gw.clone(),
        id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
        created: now_s(),
        model: req.model.clone(),
        model_cfg: epoch.model(&committed.name).cloned(),
        key_name,
        est,
        prompt_est: info.context_length,
        started,
    };
    if !req.stream {
        let (body, cost) = answer.complete(committed);
        hdrs.push(("x-novastack-cost-usd", format!("{cost:.8}")));
        let mut resp = Json(body).into_response();
        set_headers(&mut resp, &hdrs);
        return Ok(resp);
    }
    // Streaming: the response body itself pulls upstream events and turns them into
    // OpenAI chunks, in the connection's task: no relay task, no channel, no wake-ups
    // between threads per event, and chunks that are ready together go out in one write.
    let relay = Relay {
        answer,
        c: committed,
        include_usage: req.include_usage,
        tally: Tally::default(),
        pending: VecDeque::new(),
        out: VecDeque::new(),
        phase: Phase::Start,
        span: tracing::Span::current(),
    };
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        let span = r.span.clone();
        let ev = r.next().instrument(span).await;
        ev.map(|e| (Ok::<_, Infallible>(e), r))
    });
    let mut resp = Sse::new(stream).into_response();
    set_headers(&mut resp, &hdrs);
    Ok(resp)
}

/// One committed answer: what its chunks carry, and what to settle once it is done.
struct Answer {
    gw: Arc<Gateway>,
    id: String,
    created: u64,
    /// The model the client asked for (echoed in the answer).
    model: String,
    /// The model that answers (for its price).
    model_cfg: Option<ModelConfig>,
    key_name: Option<String>,
    /// Tokens reserved from the limits.
    est: f64,
    /// The prompt's estimated tokens, if the upstream reports none.
    prompt_est: usize,
    started: Instant,
}

/// The last chunk when the client asked for usage: OpenAI's, plus the cost.
#[derive(Serialize)]
struct UsageChunk {
    #[serde(flatten)]
    chunk: ChatCompletionChunk,
    x_novastack_cost_usd: f64,
}

impl Answer {
    /// A non-streaming answer from every event; returns the completion and its cost.
    fn complete(&self, c: Committed) -> (ChatCompletion, f64) {
        let mut tally = Tally::default();
        let mut text = String::new();
        for ev in &c.events {
            tally.see(ev);
            if let UpEvent::Text { text: t, .. } = ev {
                text.push_str(t);
            }
        }
        let (usage, cost) = self.succeeded(&c, &tally);
        let body = ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: Role::Assistant,
                    content: (!text.is_empty() || tally.calls.is_empty()).then_some(text),
                    tool_calls: tally.tool_calls(),
                },
                logprobs: None,
                finish_reason: tally.finish_reason(),
            }],
            usage,
        };
        (body, cost)
    }

    /// Records a completed answer (metrics, limits); returns its usage and cost.
    fn succeeded(&self, c: &Committed, tally: &Tally) -> (Usage, f64) {
        let (pt, ct) = tally.usage(self.prompt_est);
        let cost = self
            .model_cfg
            .as_ref()
            .map_or(0.0, |m| rules::estimate_cost(m, pt, ct));
        c.state.succeeded();
        c.state
            .metrics
            .success(self.started.elapsed().as_secs_f64(), pt, ct, cost);
        c.state.settle(self.est, (pt + ct) as f64, Instant::now());
        if let Some(k) = &self.key_name {
            self.gw.clients.settle(k, self.est, (pt + ct) as f64);
        }
        let usage = Usage {
            prompt_tokens: pt,
            completion_tokens: ct,
            total_tokens: pt + ct,
        };
        (usage, cost)
    }

    fn chunk(&self, delta: ChatDelta, finish: Option<FinishReason>) -> Event {
        let choice = ChatChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        };
        data(&self.chunk_with(vec![choice], None))
    }

    fn chunk_with(
        &self,
        choices: Vec<ChatChunkChoice>,
        usage: Option<Usage>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

/// Where a streamed answer is.
enum Phase {
    /// The role chunk has not gone out yet.
    Start,
    /// Relaying upstream events.
    Relaying,
    /// The last chunks are queued in `out`; nothing follows them.
    Ended,
}

/// A streamed answer, relayed as the client reads it. Dropped when the client leaves,
/// which drops the upstream request with it.
struct Relay {
    answer: Answer,
    c: Committed,
    include_usage: bool,
    tally: Tally,
    /// The committed first events, not yet relayed.
    pending: VecDeque<UpEvent>,
    /// Chunks ready to go out before anything else.
    out: VecDeque<Event>,
    phase: Phase,
    span: tracing::Span,
}

impl Relay {
    /// The next chunk for the client; `None` after `[DONE]`.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            match self.phase {
                Phase::Ended => return None,
                Phase::Start => {
                    self.phase = Phase::Relaying;
                    self.pending = std::mem::take(&mut self.c.events).into();
                    let first = ChatDelta {
                        role: Some(Role::Assistant),
                        content: Some(String::new()),
                        tool_calls: None,
                    };
                    return Some(self.answer.chunk(first, None));
                }
                Phase::Relaying => {}
            }
            let mut ev = match self.pending.pop_front() {
                Some(ev) => ev,
                None => match self.c.stream.next().await {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        self.fail(e);
                        continue;
                    }
                    None => {
                        self.finish();
                        continue;
                    }
                },
            };
            // A call's first piece carries its id and type, even if the upstream's did not.
            if let UpEvent::ToolCall { call, .. } = &mut ev {
                if !self.tally.calls.contains_key(&call.index) {
                    call.id
                        .get_or_insert_with(novastack_openai::protocol::new_call_id);
                    call.kind.get_or_insert_with(|| "function".into());
                }
            }
            self.tally.see(&ev);
            match ev {
                UpEvent::Text { text, .. } => {
                    let delta = ChatDelta {
                        role: None,
                        content: Some(text),
                        tool_calls: None,
                    };
                    return Some(self.answer.chunk(delta, None));
                }
                UpEvent::ToolCall { call, .. } => {
                    let delta = ChatDelta {
                        tool_calls: Some(vec![call]),
                        ..ChatDelta::default()
                    };
                    return Some(self.answer.chunk(delta, None));
                }
                UpEvent::Finish { reason, .. } => {
                    return Some(self.answer.chunk(ChatDelta::default(), Some(reason)))
                }
                UpEvent::Usage { .. } => {}
            }
        }
    }

    /// The upstream failed mid-stream: an error chunk and `[DONE]`.
    fn fail(&mut self, e: crate::providers::UpError) {
        self.phase = Phase::Ended;
        let cooldown = self.answer.gw.epoch().cfg.cooldown;
        self.c.state.failed(&e.kind, &cooldown, Instant::now());
        let err = ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("upstream {} failed mid-stream: {}", self.c.name, e.message),
            None,
        )
        .with_code("upstream_stream_error");
        self.out.push_back(data(&err.body()));
        self.out.push_back(Event::default().data("[DONE]"));
    }

    /// The upstream ended: a finish chunk if it sent none, usage if asked, `[DONE]`.
    fn finish(&mut self) {
        self.phase = Phase::Ended;
        if self.tally.finish.is_none() {
            let last = self
                .answer
                .chunk(ChatDelta::default(), Some(self.tally.finish_reason()));
            self.out.push_back(last);
        }
        let (usage, cost) = self.answer.succeeded(&self.c, &self.tally);
        if self.include_usage {
            let last = UsageChunk {
                chunk: self.answer.chunk_with(Vec::new(), Some(usage)),
                x_novastack_cost_usd: cost,
            };
            self.out.push_back(data(&last));
        }
        self.out.push_back(Event::default().data("[DONE]"));
    }
}

fn data(v: &impl Serialize) -> Event {
    Event::default().data(novastack_openai::sse_json::sse_json(v))
}

pub(crate) use novastack_openai::protocol::unix_now as now_s;

/// Tracks usage and text while events go by.
#[derive(Default)]
struct Tally {
    text_chars: usize,
    usage: Option<(usize, usize)>,
    finish: Option<FinishReason>,
    /// Tool calls seen, by their index.
    calls: std::collections::BTreeMap<usize, ToolCall>,
}

impl Tally {
    fn see(&mut self, ev: &UpEvent) {
        match ev {
            UpEvent::Text { text, .. } => self.text_chars += text.chars().count(),
            UpEvent::ToolCall { call, .. } => {
                let c = self.calls.entry(call.index).or_default();
                if let Some(id) = &call.id {
                    c.id.clone_from(id);
                }
                if let Some(k) = &call.kind {
                    c.kind.clone_from(k);
                }
                if let Some(n) = &call.function.name {
                    c.function.name.push_str(n);
                }
                if let Some(a) = &call.function.arguments {
                    self.text_chars += a.chars().count();
                    c.function.arguments.push_str(a);
                }
            }
            UpEvent::Finish { reason, .. } => self.finish = Some(*reason),
            UpEvent::Usage { prompt, completion } => {
                // Some servers send zeros in early chunks; keep the largest seen.
                let (p, c) = self.usage.unwrap_or((0, 0));
                self.usage = Some((p.max(*prompt), c.max(*completion)));
            }
        }
    }

    /// The finish reason: the upstream's, else `tool_calls` after calls, else `stop`.
    fn finish_reason(&self) -> FinishReason {
        self.finish.unwrap_or(if self.calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        })
    }

    /// The tool calls seen, in order (ids made up where the upstream gave none).
    fn tool_calls(&self) -> Option<Vec<ToolCall>> {
        (!self.calls.is_empty()).then(|| {
            self.calls
                .values()
                .cloned()
                .map(|mut c| {
                    if c.id.is_empty() {
                        c.id = novastack_openai::protocol::new_call_id();
                    }
                    if c.kind.is_empty() {
                        c.kind = "function".into();
                    }
                    c
                })
                .collect()
        })
    }

    /// Upstream usage, or an estimate (prompt from the request, completion from text).
    fn usage(&self, prompt_est: usize) -> (usize, usize) {
        match self.usage {
            Some((p, c)) if p + c > 0 => (if p == 0 { prompt_est } else { p }, c),
            _ => (prompt_est, self.text_chars.div_ceil(4)),
        }
    }
}

fn set_headers(resp: &mut Response, hdrs: &[(&'static str, String)]) {
    for (k, v) in hdrs {
        if let Ok(v) = axum::http::HeaderValue::from_str(v) {
            resp.headers_mut().insert(*k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The typed answers serialize byte for byte as the gateway's earlier `json!` shapes.
    #[test]
    fn answers_keep_their_wire_shape() {
        let chunk = |choices, usage| ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: "chat.completion.chunk".into(),
            created: 7,
            model: "auto".into(),
            choices,
            usage,
        };
        let choice = |delta, finish| ChatChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish,
        };
        let same = |typed: String, old: serde_json::Value| assert_eq!(typed, old.to_string());
        let first = ChatDelta {
            role: Some(Role::Assistant),
            content: Some(String::new()),
            tool_calls: None,
        };
        same(
            serde_json::to_string(&chunk(vec![choice(first, None)], None)).unwrap(),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "auto",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]}),
        );
        let end = choice(ChatDelta::default(), Some(FinishReason::Length));
        same(
            serde_json::to_string(&chunk(vec![end], None)).unwrap(),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "auto",
                "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"}]}),
        );
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        };
        let last = UsageChunk {
            chunk: chunk(Vec::new(), Some(usage)),
            x_novastack_cost_usd: 0.25,
        };
        same(
            serde_json::to_string(&last).unwrap(),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "auto", "choices": [],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}, "x_novastack_cost_usd": 0.25}),
        );
        let done = ChatCompletion {
            id: "chatcmpl-1".into(),
            object: "chat.completion".into(),
            created: 7,
            model: "auto".into(),
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage {
                    role: Role::Assistant,
                    content: Some("hi".into()),
                    tool_calls: None,
                },
                logprobs: None,
                finish_reason: FinishReason::Stop,
            }],
            usage,
        };
        same(
            serde_json::to_string(&done).unwrap(),
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "auto",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        );
        let err = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream a failed mid-stream: x",
            None,
        )
        .with_code("upstream_stream_error");
        same(
            err.body().to_string(),
            json!({"error": {"message": "upstream a failed mid-stream: x", "type": "upstream_error", "param": null, "code": "upstream_stream_error"}}),
        );
    }

    #[test]
    fn tally_prefers_upstream_usage_and_estimates_otherwise() {
        let mut t = Tally::default();
        t.see(&UpEvent::Text {
            index: 0,
            text: "abcdefgh".into(),
        });
        assert_eq!(t.usage(10), (10, 2));
        t.see(&UpEvent::Usage {
            prompt: 0,
            completion: 0,
        });
        assert_eq!(t.usage(10), (10, 2));
        t.see(&UpEvent::Usage {
            prompt: 7,
            completion: 3,
        });
        assert_eq!(t.usage(10), (7, 3));
    }
}
