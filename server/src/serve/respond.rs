//! A validated generation to an HTTP answer: one JSON body, or an SSE stream of chunks
//! ending in `data: [DONE]` (an error mid-stream is an error chunk, then the end).

use super::collector::{submit, ChoiceState};
use super::logprobs::{chat_logprobs, completion_logprobs};
use super::routes::now;
use super::tool_call_stream::StreamGate;
use super::tool_calls::extract;
use super::validate::ValidGeneration;
use super::{AppState, ModelEntry};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use novastack_engine::{FinishReason, TokenLogprobs};
use novastack_openai::protocol::FinishReason as WireFinishReason;
use novastack_openai::protocol::*;
use novastack_openai::ApiError;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::Instrument;

/// Which OpenAI endpoint a generation answers (the response shapes differ).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    /// The request field that holds the prompt.
    pub(crate) fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Completion => "prompt",
            Endpoint::Chat => "messages",
        }
    }

    /// The request field that asks for alternatives per token.
    pub(crate) fn logprobs_param(self) -> &'static str {
        match self {
            Endpoint::Completion => "logprobs",
            Endpoint::Chat => "top_logprobs",
        }
    }
}

/// The engine's finish reason in the wire protocol.
pub(crate) fn wire_finish(f: FinishReason) -> WireFinishReason {
    match f {
        FinishReason::Stop => WireFinishReason::Stop,
        FinishReason::Length => WireFinishReason::Length,
        FinishReason::Abort => WireFinishReason::Abort,
        FinishReason::Error => WireFinishReason::Error,
    }
}

pub(crate) async fn respond(
    state: Arc<AppState>,
    m: Arc<ModelEntry>,
    spec: ValidGeneration,
    kind: Endpoint,
    as_ids: bool,
) -> Result<Response, ApiError> {
    let (mut col, mut rx) = submit(&state, &m, &spec).await?;
    let prefix = if kind == Endpoint::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    };
    let id = format!("{prefix}-{:032x}", rand::random::<u128>());
    let created = now();
    let model = m.id().to_string();
    let want_logprobs = spec.params.logprobs.is_some();
    let tool_plan = spec.tools.clone();
    let logprobs_of = move |m: &ModelEntry, lps: &[TokenLogprobs], base: usize| -> Option<Value> {
        if !want_logprobs {
            None
        } else if kind == Endpoint::Chat {
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
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                e.clone(),
                None,
            ));
        }
        let finish = |c: &ChoiceState| wire_finish(c.finish.unwrap_or(FinishReason::Abort));
        let resp = match kind {
            Endpoint::Chat => Json(ChatCompletion {
                id,
                object: "chat.completion".into(),
                created,
                model,
                choices: col
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(index, c)| {
                        let (content, calls) = match &tool_plan {
                            Some(plan) => extract(plan, &c.text),
                            None => (Some(c.text.clone()), Vec::new()),
                        };
                        let finish_reason = match finish(c) {
                            WireFinishReason::Stop if !calls.is_empty() => {
                                WireFinishReason::ToolCalls
                            }
                            f => f,
                        };
                        ChatChoice {
                            index,
                            message: ChatMessage {
                                role: Role::Assistant,
                                content,
                                tool_calls: (!calls.is_empty()).then_some(calls),
                            },
                            logprobs: logprobs_of(&m, &c.logprobs, 0),
                            finish_reason,
                            stop_reason: c.stop.matched().map(str::to_string),
                        }
                    })
                    .collect(),
                usage: col.usage(),
            })
            .into_response(),
            Endpoint::Completion => Json(Completion {
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
                        stop_reason: c.stop.matched().map(str::to_string),
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
    // requests and frees their blocks. The task keeps the request's span (its id).
    let (sse_tx, sse_rx) = mpsc::channel::<Event>(64);
    let include_usage = spec.include_usage;
    tokio::spawn(
        async move {
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
            let mut gates: Vec<Option<StreamGate>> = (0..col.choices.len())
                .map(|_| tool_plan.clone().map(StreamGate::new))
                .collect();
            if kind == Endpoint::Chat {
                for index in 0..col.choices.len() {
                    let first = chat_chunk(
                        vec![ChatChunkChoice {
                            index,
                            delta: ChatDelta {
                                role: Some(Role::Assistant),
                                content: Some(String::new()),
                                tool_calls: None,
                            },
                            logprobs: None,
                            finish_reason: None,
                            stop_reason: None,
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
                if d.finish == Some(FinishReason::Error) {
                    let err = ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        col.error.clone().unwrap_or_default(),
                        None,
                    );
                    let _ = sse_tx
                        .send(Event::default().data(
                            novastack_openai::sse_json::escape_line_breaks(err.body().to_string()),
                        ))
                        .await;
                    break;
                }
                let base = col.choices[d.choice].text.len() - d.text.len();
                let lp = logprobs_of(&col.m, &d.logprobs, base);
                let finish_reason = d.finish.map(wire_finish);
                let stop_reason = d
                    .finish
                    .and_then(|_| col.choices[d.choice].stop.matched().map(str::to_string));
                let evs = match kind {
                    Endpoint::Chat => {
                        // Under a tool plan the text passes its gate: content, and
                        // tool-call deltas as the calls are written; then the finish.
                        let mut content = d.text;
                        let mut calls = Vec::new();
                        let mut finish_reason = finish_reason;
                        if let Some(g) = gates[d.choice].as_mut() {
                            let out = g.push(&content);
                            content = out.content;
                            calls = out.calls;
                            if d.finish.is_some() {
                                if let Some(g) = gates[d.choice].take() {
                                    let (rest, were_calls) = g.finish();
                                    content.push_str(&rest.content);
                                    calls.extend(rest.calls);
                                    if were_calls && finish_reason == Some(WireFinishReason::Stop) {
                                        finish_reason = Some(WireFinishReason::ToolCalls);
                                    }
                                }
                            }
                        }
                        let one =
                            |delta: ChatDelta, lp: Option<Value>, f: Option<WireFinishReason>| {
                                data(&chat_chunk(
                                    vec![ChatChunkChoice {
                                        index: d.choice,
                                        delta,
                                        logprobs: lp,
                                        stop_reason: f.and(stop_reason.clone()),
                                        finish_reason: f,
                                    }],
                                    None,
                                ))
                            };
                        let text_delta = |content: String| ChatDelta {
                            role: None,
                            content: (!content.is_empty()).then_some(content),
                            tool_calls: None,
                        };
                        let mut evs = Vec::new();
                        if calls.is_empty() {
                            if !content.is_empty() || lp.is_some() || finish_reason.is_some() {
                                evs.push(one(text_delta(content), lp, finish_reason));
                            }
                        } else {
                            if !content.is_empty() || lp.is_some() {
                                evs.push(one(text_delta(content), lp, None));
                            }
                            for call in calls {
                                let delta = ChatDelta {
                                    tool_calls: Some(vec![call]),
                                    ..ChatDelta::default()
                                };
                                evs.push(one(delta, None, None));
                            }
                            if finish_reason.is_some() {
                                evs.push(one(text_delta(String::new()), None, finish_reason));
                            }
                        }
                        evs
                    }
                    Endpoint::Completion => vec![data(&text_chunk(
                        vec![CompletionChoice {
                            index: d.choice,
                            text: d.text,
                            logprobs: lp,
                            finish_reason,
                            stop_reason,
                        }],
                        None,
                    ))],
                };
                for ev in evs {
                    if sse_tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            if include_usage {
                let usage = Some(col.usage());
                let ev = match kind {
                    Endpoint::Chat => data(&chat_chunk(Vec::new(), usage)),
                    Endpoint::Completion => data(&text_chunk(Vec::new(), usage)),
                };
                let _ = sse_tx.send(ev).await;
            }
            let _ = sse_tx.send(Event::default().data("[DONE]")).await;
        }
        .instrument(tracing::Span::current()),
    );
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
            novastack_openai::sse_json::sse_json(self)
        }
    }
}
