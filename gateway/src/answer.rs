//! One committed answer in the client's API shape: the whole JSON answer (a chat
//! completion, a text completion or an embeddings list), or the SSE events of a
//! streamed one; and the bookkeeping once it is done (metrics, limits, cost).

use crate::api::Api;
use crate::attempt::Committed;
use crate::config::ModelConfig;
use crate::providers::UpEvent;
use crate::rules;
use crate::state::Gateway;
use crate::tally::{ChoiceTally, Tally};
use novastack_openai::protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta, ChatMessage,
    Completion, CompletionChoice, FinishReason, Role, ToolCallDelta, Usage,
};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// What every part of an answer carries: its API's shape, id, time and model.
pub(crate) struct Shape {
    pub api: Api,
    pub id: String,
    pub created: u64,
    /// The model the client asked for (echoed in the answer).
    pub model: String,
}

pub(crate) struct Answer {
    pub gw: Arc<Gateway>,
    pub shape: Shape,
    /// The model that answers (for its price).
    pub model_cfg: Option<ModelConfig>,
    pub key_name: Option<String>,
    /// The key's reservation is in Redis (else in this process).
    pub key_shared: bool,
    /// Tokens reserved from the limits.
    pub est: f64,
    /// The prompt's estimated tokens, if the upstream reports none.
    pub prompt_est: usize,
    pub started: Instant,
}

/// An answer's last part with the gateway's cost estimate beside OpenAI's fields.
#[derive(Serialize)]
struct WithCost<T> {
    #[serde(flatten)]
    inner: T,
    x_novastack_cost_usd: f64,
}

impl Answer {
    /// The whole answer from every event; returns its JSON text and its cost.
    pub fn complete(&self, mut c: Committed) -> (Vec<u8>, f64) {
        let mut tally = Tally::default();
        let mut texts: BTreeMap<usize, String> = BTreeMap::new();
        let mut embeddings = None;
        for ev in std::mem::take(&mut c.events) {
            match ev {
                // Vectors can be megabytes: moved, not tallied.
                UpEvent::Embeddings { data } => embeddings = Some(data),
                ev => {
                    tally.see(&ev);
                    if let UpEvent::Text { index, text } = ev {
                        texts.entry(index).or_default().push_str(&text);
                    }
                }
            }
        }
        let (usage, cost) = self.succeeded(&c, &tally);
        let sh = &self.shape;
        let none = ChoiceTally::default();
        // Every choice seen, and at least the first.
        let mut indexes: Vec<usize> = tally.choices.keys().chain(texts.keys()).copied().collect();
        indexes.push(0);
        indexes.sort_unstable();
        indexes.dedup();
        let body = match sh.api {
            Api::Chat => {
                let choices = indexes
                    .iter()
                    .map(|i| {
                        let t = tally.choices.get(i).unwrap_or(&none);
                        let text = texts.remove(i).unwrap_or_default();
                        ChatChoice {
                            index: *i,
                            message: ChatMessage {
                                role: Role::Assistant,
                                content: (!text.is_empty() || t.calls.is_empty()).then_some(text),
                                tool_calls: t.tool_calls(),
                            },
                            logprobs: None,
                            finish_reason: t.finish_reason(),
                            stop_reason: t.stop.clone(),
                        }
                    })
                    .collect();
                to_json(&ChatCompletion {
                    id: sh.id.clone(),
                    object: "chat.completion".into(),
                    created: sh.created,
                    model: sh.model.clone(),
                    choices,
                    usage,
                })
            }
            Api::Completions => {
                let choices = indexes
                    .iter()
                    .map(|i| {
                        let t = tally.choices.get(i).unwrap_or(&none);
                        CompletionChoice {
                            index: *i,
                            text: texts.remove(i).unwrap_or_default(),
                            logprobs: None,
                            finish_reason: Some(t.finish_reason()),
                            stop_reason: t.stop.clone(),
                        }
                    })
                    .collect();
                to_json(&Completion {
                    id: sh.id.clone(),
                    object: "text_completion".into(),
                    created: sh.created,
                    model: sh.model.clone(),
                    choices,
                    usage: Some(usage),
                })
            }
            Api::Embeddings => to_json(&json!({
                "object": "list",
                "data": embeddings.unwrap_or_else(|| json!([])),
                "model": sh.model,
                "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
            })),
        };
        (body, cost)
    }

    /// Records a completed answer (metrics, limits); returns its usage and cost.
    pub fn succeeded(&self, c: &Committed, tally: &Tally) -> (Usage, f64) {
        let (pt, ct) = tally.usage(self.prompt_est);
        let ct = if self.shape.api == Api::Embeddings {
            0
        } else {
            ct
        };
        let cost = self
            .model_cfg
            .as_ref()
            .map_or(0.0, |m| rules::estimate_cost(m, pt, ct));
        let epoch = self.gw.epoch();
        self.gw.model_succeeded(&epoch, &c.name, &c.state);
        c.state
            .metrics
            .success(self.started.elapsed().as_secs_f64(), pt, ct, cost);
        self.gw.settle(
            &epoch,
            self.key_name.as_deref().map(|k| (k, self.key_shared)),
            Some((&c.name, &c.state, c.shared)),
            self.est,
            (pt + ct) as f64,
        );
        let usage = Usage {
            prompt_tokens: pt,
            completion_tokens: ct,
            total_tokens: pt + ct,
        };
        (usage, cost)
    }
}

/// The parts of a streamed answer, as the JSON text of each SSE event.
impl Shape {
    /// The id prefix OpenAI uses for the API's answers.
    pub fn id_prefix(api: Api) -> &'static str {
        match api {
            Api::Chat => "chatcmpl",
            Api::Completions => "cmpl",
            Api::Embeddings => "embd",
        }
    }

    /// A streamed chat answer's first chunk for choice `index`: the role, no content
    /// yet. Text completions have none.
    pub fn role_event(&self, index: usize) -> Option<String> {
        (self.api == Api::Chat).then(|| {
            let delta = ChatDelta {
                role: Some(Role::Assistant),
                content: Some(String::new()),
                tool_calls: None,
            };
            self.chat_event(index, delta, None, None)
        })
    }

    pub fn text_event(&self, index: usize, text: String) -> String {
        match self.api {
            Api::Chat => {
                let delta = ChatDelta {
                    content: Some(text),
                    ..ChatDelta::default()
                };
                self.chat_event(index, delta, None, None)
            }
            _ => self.completion_event(index, text, None, None),
        }
    }

    /// A tool-call piece (chat only: text completions have no tool calls).
    pub fn call_event(&self, index: usize, call: ToolCallDelta) -> Option<String> {
        (self.api == Api::Chat).then(|| {
            let delta = ChatDelta {
                tool_calls: Some(vec![call]),
                ..ChatDelta::default()
            };
            self.chat_event(index, delta, None, None)
        })
    }

    /// A choice's last chunk: its finish reason, and the stop string that ended it.
    pub fn finish_event(&self, index: usize, reason: FinishReason, stop: Option<String>) -> String {
        match self.api {
            Api::Chat => self.chat_event(index, ChatDelta::default(), Some(reason), stop),
            _ => self.completion_event(index, String::new(), Some(reason), stop),
        }
    }

    /// The last chunk when the client asked for usage: no choices, the usage and the
    /// cost.
    pub fn usage_event(&self, usage: Usage, cost: f64) -> String {
        match self.api {
            Api::Chat => data(&WithCost {
                inner: self.chat_chunk(Vec::new(), Some(usage)),
                x_novastack_cost_usd: cost,
            }),
            _ => data(&WithCost {
                inner: self.completion_chunk(Vec::new(), Some(usage)),
                x_novastack_cost_usd: cost,
            }),
        }
    }

    fn chat_event(
        &self,
        index: usize,
        delta: ChatDelta,
        finish: Option<FinishReason>,
        stop: Option<String>,
    ) -> String {
        let choice = ChatChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason: finish,
            stop_reason: stop,
        };
        data(&self.chat_chunk(vec![choice], None))
    }

    fn chat_chunk(
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

    fn completion_event(
        &self,
        index: usize,
        text: String,
        finish: Option<FinishReason>,
        stop: Option<String>,
    ) -> String {
        let choice = CompletionChoice {
            index,
            text,
            logprobs: None,
            finish_reason: finish,
            stop_reason: stop,
        };
        data(&self.completion_chunk(vec![choice], None))
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Completion {
        Completion {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

fn to_json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// `v` as the JSON text of an SSE event.
pub(crate) fn data(v: &impl Serialize) -> String {
    novastack_openai::sse_json::sse_json(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn shape(api: Api) -> Shape {
        Shape {
            api,
            id: "x-1".into(),
            created: 7,
            model: "auto".into(),
        }
    }

    fn same(typed: String, wire: Value) {
        assert_eq!(serde_json::from_str::<Value>(&typed).unwrap(), wire);
    }

    /// Streamed chat chunks keep OpenAI's wire shape, choice indexes included.
    #[test]
    fn chat_chunks_keep_their_wire_shape() {
        let s = shape(Api::Chat);
        let chunk = |choices: Value| json!({"id": "x-1", "object": "chat.completion.chunk", "created": 7, "model": "auto", "choices": choices});
        same(
            s.role_event(2).unwrap(),
            chunk(
                json!([{"index": 2, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            ),
        );
        same(
            s.text_event(1, "hi".into()),
            chunk(
                json!([{"index": 1, "delta": {"content": "hi"}, "logprobs": null, "finish_reason": null}]),
            ),
        );
        same(
            s.finish_event(0, FinishReason::Length, None),
            chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"}])),
        );
        same(
            s.finish_event(1, FinishReason::Stop, Some("END".into())),
            chunk(
                json!([{"index": 1, "delta": {}, "logprobs": null, "finish_reason": "stop", "stop_reason": "END"}]),
            ),
        );
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        };
        let mut last = chunk(json!([]));
        last["usage"] = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5});
        last["x_novastack_cost_usd"] = json!(0.25);
        same(s.usage_event(usage, 0.25), last);
    }

    /// Streamed text completions: `text_completion` chunks with `text`, no role chunk
    /// and no tool calls.
    #[test]
    fn completion_chunks_keep_their_wire_shape() {
        let s = shape(Api::Completions);
        assert!(s.role_event(0).is_none());
        let call = ToolCallDelta {
            index: 0,
            id: None,
            kind: None,
            function: Default::default(),
        };
        assert!(s.call_event(0, call).is_none());
        let chunk = |choices: Value| json!({"id": "x-1", "object": "text_completion", "created": 7, "model": "auto", "choices": choices});
        same(
            s.text_event(3, "The".into()),
            chunk(json!([{"index": 3, "text": "The", "logprobs": null, "finish_reason": null}])),
        );
        same(
            s.finish_event(3, FinishReason::Stop, None),
            chunk(json!([{"index": 3, "text": "", "logprobs": null, "finish_reason": "stop"}])),
        );
    }
}
