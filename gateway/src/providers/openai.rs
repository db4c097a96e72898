//! OpenAI-compatible upstreams (`/chat/completions`, `/completions`, `/embeddings`): the
//! client's request passes through with the upstream's model name and stream settings;
//! answers are OpenAI chunks, one completion, or one embeddings list.

use super::{
    event_json, mid_stream_error, upstream_model, Decoder, Flow, Provider, UpError, UpEvent,
};
use crate::api::Api;
use crate::config::ModelConfig;
use crate::policy::FailureKind;
use crate::request::ClientRequest;
use novastack_openai::protocol::{FinishReason, FunctionCallDelta, ToolCallDelta};
use novastack_openai::sse_parser::SseEvent;
use serde_json::{json, Value};
use std::collections::VecDeque;

pub struct OpenAi;

impl Provider for OpenAi {
    fn endpoint(&self, base_url: &str, api: Api) -> Option<String> {
        Some(format!("{}/{}", base_url.trim_end_matches('/'), api.path()))
    }

    fn body(&self, m: &ModelConfig, req: &ClientRequest) -> Vec<u8> {
        let body = OpenAiBody {
            req,
            model: upstream_model(m),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn decoder(&self, api: Api) -> Box<dyn Decoder> {
        Box::new(OpenAiDecoder { api })
    }
}

/// The OpenAI request body: the client's fields with the upstream's model name and the
/// stream settings, serialized straight from the borrowed request (no deep copy).
struct OpenAiBody<'a> {
    req: &'a ClientRequest,
    model: &'a str,
}

impl serde::Serialize for OpenAiBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        if self.req.api == Api::Chat {
            m.serialize_entry("messages", &self.req.messages)?;
        }
        if self.req.api != Api::Embeddings {
            m.serialize_entry("stream", &self.req.stream)?;
        }
        if self.req.stream {
            m.serialize_entry("stream_options", &json!({"include_usage": true}))?;
        }
        for (k, v) in &self.req.body {
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

/// Decodes answers to requests for `api`.
pub struct OpenAiDecoder {
    pub api: Api,
}

impl Decoder for OpenAiDecoder {
    fn event(&mut self, ev: &SseEvent, out: &mut VecDeque<UpEvent>) -> Result<Flow, UpError> {
        if ev.data.trim() == "[DONE]" {
            return Ok(Flow::End);
        }
        let v = event_json(ev)?;
        if let Some(err) = v.get("error") {
            return Err(mid_stream_error(FailureKind::Protocol, err));
        }
        out.extend(events(&v, self.api, true));
        Ok(Flow::More)
    }

    fn json(&mut self, v: &Value) -> Vec<UpEvent> {
        events(v, self.api, false)
    }
}

/// Events in one OpenAI chunk (`stream`) or whole answer to a request for `api`.
fn events(v: &Value, api: Api, stream: bool) -> Vec<UpEvent> {
    let mut out = Vec::new();
    if api == Api::Embeddings {
        out.push(UpEvent::Embeddings {
            data: v.get("data").cloned().unwrap_or(Value::Null),
        });
    }
    for c in v["choices"].as_array().into_iter().flatten() {
        let index = c["index"].as_u64().unwrap_or(0) as usize;
        let text = match (api, stream) {
            (Api::Chat, true) => c["delta"]["content"].as_str(),
            (Api::Chat, false) => c["message"]["content"].as_str(),
            (Api::Completions | Api::Embeddings, _) => c["text"].as_str(),
        };
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            out.push(UpEvent::Text {
                index,
                text: t.to_string(),
            });
        }
        let calls = if stream {
            &c["delta"]["tool_calls"]
        } else {
            &c["message"]["tool_calls"]
        };
        for (i, tc) in calls.as_array().into_iter().flatten().enumerate() {
            let s = |v: &Value| v.as_str().map(str::to_string);
            let f = &tc["function"];
            out.push(UpEvent::ToolCall {
                index,
                call: ToolCallDelta {
                    // A streamed piece names its call; a whole answer lists them in order.
                    index: tc["index"].as_u64().map_or(i, |n| n as usize),
                    id: s(&tc["id"]),
                    kind: s(&tc["type"]).or_else(|| tc.get("id").map(|_| "function".into())),
                    function: FunctionCallDelta {
                        name: s(&f["name"]),
                        arguments: s(&f["arguments"]),
                    },
                },
            });
        }
        if let Some(r) = c["finish_reason"].as_str() {
            out.push(UpEvent::Finish {
                index,
                reason: finish_reason(r),
                stop: c["stop_reason"].as_str().map(str::to_string),
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

/// OpenAI's finish reasons pass through; one outside OpenAI's set is a `stop`.
fn finish_reason(r: &str) -> FinishReason {
    FinishReason::parse(r).unwrap_or_else(|| {
        tracing::debug!(
            reason = r,
            "upstream finish reason outside OpenAI's set; relayed as stop"
        );
        FinishReason::Stop
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_become_events_streamed_and_whole() {
        let piece = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "function": {"arguments": "{\"a\":"}}]}, "finish_reason": null}]});
        assert_eq!(
            events(&piece, Api::Chat, true),
            [UpEvent::ToolCall {
                index: 0,
                call: ToolCallDelta {
                    index: 1,
                    id: None,
                    kind: None,
                    function: FunctionCallDelta {
                        name: None,
                        arguments: Some("{\"a\":".into())
                    }
                }
            }]
        );
        let whole = json!({"choices": [{"index": 0, "message": {"content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "function": {"name": "g", "arguments": "[]"}}]}, "finish_reason": "tool_calls"}]});
        let ev = events(&whole, Api::Chat, false);
        assert_eq!(ev.len(), 3, "{ev:?}");
        let UpEvent::ToolCall { call, .. } = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (call.index, call.id.as_deref(), call.kind.as_deref()),
            (1, Some("c2"), Some("function"))
        );
        assert_eq!(
            ev[2],
            UpEvent::Finish {
                index: 0,
                reason: FinishReason::ToolCalls,
                stop: None
            }
        );
    }

    #[test]
    fn chunks_and_completions_become_events() {
        let chunk =
            json!({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]});
        assert_eq!(
            events(&chunk, Api::Chat, true),
            [UpEvent::Text {
                index: 0,
                text: "Hi".into()
            }]
        );
        let done = json!({"choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "length"}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        assert_eq!(
            events(&done, Api::Chat, false),
            [
                UpEvent::Text {
                    index: 0,
                    text: "Hi".into()
                },
                UpEvent::Finish {
                    index: 0,
                    reason: FinishReason::Length,
                    stop: None
                },
                UpEvent::Usage {
                    prompt: 3,
                    completion: 1
                },
            ]
        );
        assert_eq!(finish_reason("tool_calls"), FinishReason::ToolCalls);
        // Completions carry `text`, streamed or whole; embeddings their `data`.
        let text = json!({"choices": [{"index": 1, "text": "Hi", "finish_reason": "stop", "stop_reason": "END"}]});
        for stream in [true, false] {
            assert_eq!(
                events(&text, Api::Completions, stream),
                [
                    UpEvent::Text {
                        index: 1,
                        text: "Hi".into()
                    },
                    UpEvent::Finish {
                        index: 1,
                        reason: FinishReason::Stop,
                        stop: Some("END".into())
                    }
                ]
            );
        }
        let emb = json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
                         "usage": {"prompt_tokens": 2, "total_tokens": 2}});
        assert_eq!(
            events(&emb, Api::Embeddings, false),
            [
                UpEvent::Embeddings {
                    data: emb["data"].clone()
                },
                UpEvent::Usage {
                    prompt: 2,
                    completion: 0
                }
            ]
        );
        assert_eq!(finish_reason("eos_token"), FinishReason::Stop);
    }
}
