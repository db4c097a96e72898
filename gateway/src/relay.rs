//! A streamed answer, relayed as the client reads it: the response body itself pulls
//! upstream events and turns them into the client's API's chunks, in the connection's
//! task (no relay task, no channel, no wake-ups between threads per event). Once a
//! chunk has gone out, a failure ends the stream with an error chunk and `[DONE]`
//! (nothing is retried after the first byte). Dropped when the client leaves, which
//! drops the upstream request with it.

use crate::answer::{data, Answer};
use crate::attempt::Committed;
use crate::policy::FailureKind;
use crate::providers::{UpError, UpEvent};
use crate::tally::Tally;
use axum::http::StatusCode;
use axum::response::sse::Event;
use novastack_openai::ApiError;
use std::collections::VecDeque;

/// Where a streamed answer is.
enum Phase {
    /// The first chunks have not gone out yet.
    Start,
    /// Relaying upstream events.
    Relaying,
    /// The last chunks are queued in `out`; nothing follows them.
    Ended,
}

pub(crate) struct Relay {
    answer: Answer,
    c: Committed,
    include_usage: bool,
    /// Choices asked for (each gets a finish chunk, even if the upstream sent none).
    choices: usize,
    tally: Tally,
    /// The committed first events, not yet relayed.
    pending: VecDeque<UpEvent>,
    /// Chunks ready to go out before anything else.
    out: VecDeque<Event>,
    phase: Phase,
    pub span: tracing::Span,
}

impl Relay {
    pub fn new(answer: Answer, c: Committed, include_usage: bool, choices: usize) -> Self {
        Relay {
            answer,
            c,
            include_usage,
            choices,
            tally: Tally::default(),
            pending: VecDeque::new(),
            out: VecDeque::new(),
            phase: Phase::Start,
            span: tracing::Span::current(),
        }
    }

    /// The next chunk for the client; `None` after `[DONE]`.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            match self.phase {
                Phase::Ended => return None,
                Phase::Start => {
                    self.phase = Phase::Relaying;
                    self.pending = std::mem::take(&mut self.c.events).into();
                    // Each chat choice opens with its role.
                    let shape = &self.answer.shape;
                    self.out.extend(
                        (0..self.choices)
                            .filter_map(|i| shape.role_event(i))
                            .map(event),
                    );
                    continue;
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
            if let UpEvent::ToolCall { index, call } = &mut ev {
                if !self.tally.has_call(*index, call.index) {
                    call.id
                        .get_or_insert_with(novastack_openai::protocol::new_call_id);
                    call.kind.get_or_insert_with(|| "function".into());
                }
            }
            self.tally.see(&ev);
            let shape = &self.answer.shape;
            let out = match ev {
                UpEvent::Text { index, text } => Some(shape.text_event(index, text)),
                UpEvent::ToolCall { index, call } => shape.call_event(index, call),
                UpEvent::Finish {
                    index,
                    reason,
                    stop,
                } => Some(shape.finish_event(index, reason, stop)),
                UpEvent::Usage { .. } | UpEvent::Embeddings { .. } => None,
            };
            if let Some(out) = out {
                return Some(event(out));
            }
        }
    }

    /// The upstream failed mid-stream: an error chunk and `[DONE]`.
    fn fail(&mut self, e: UpError) {
        self.phase = Phase::Ended;
        // A pool's replica that broke mid-stream is ejected like one that failed
        // before its answer; the model cools down only once no replica is left.
        let count = match &self.c.replica {
            Some(slot) if crate::attempt::replica_fault(&e.kind) => {
                slot.failed(e.kind == FailureKind::Connect)
            }
            _ => true,
        };
        self.answer
            .gw
            .model_failed_later(&self.c.name, e.kind.clone(), count);
        let err = ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("upstream {} failed mid-stream: {}", self.c.name, e.message),
            None,
        )
        .with_code("upstream_stream_error");
        self.out.push_back(event(data(&err.body())));
        self.out.push_back(Event::default().data("[DONE]"));
    }

    /// The upstream ended: a finish chunk for each choice that got none, usage if
    /// asked, `[DONE]`.
    fn finish(&mut self) {
        self.phase = Phase::Ended;
        let mut open: Vec<usize> = (0..self.choices)
            .chain(self.tally.choices.keys().copied())
            .filter(|i| !self.tally.finished(*i))
            .collect();
        open.sort_unstable();
        open.dedup();
        for i in open {
            let reason = self
                .tally
                .choices
                .get(&i)
                .map_or(novastack_openai::protocol::FinishReason::Stop, |c| {
                    c.finish_reason()
                });
            self.out
                .push_back(event(self.answer.shape.finish_event(i, reason, None)));
        }
        let (usage, cost) = self.answer.succeeded(&self.c, &self.tally);
        if self.include_usage {
            self.out
                .push_back(event(self.answer.shape.usage_event(usage, cost)));
        }
        self.out.push_back(Event::default().data("[DONE]"));
    }
}

fn event(json: String) -> Event {
    Event::default().data(json)
}
