//! OpenAI-compatible upstreams (`/chat/completions`): the client's request passes through
//! with the upstream's model name and stream settings; answers are OpenAI chunks or one
//! completion.

use super::{
    event_json, mid_stream_error, upstream_model, Decoder, Flow, Provider, UpError, UpEvent,
};
use crate::config::ModelConfig;
use crate::policy::FailureKind;
use crate::request::ChatRequest;
use novastack_openai::protocol::{FinishReason, FunctionCallDelta, ToolCallDelta};
use novastack_openai::sse_parser::SseEvent;
use serde_json::{json, Value};
use std::collections::VecDeque;

pub struct OpenAi;

impl Provider for OpenAi {
    fn endpoint(&self, base_url: &str) -> Option<String> {
        Some(format!(
            "{}/chat/completions",
            base_url.trim_end_matches('/')
        ))
    }

    fn body(&self, m: &ModelConfig, req: &ChatRequest) -> Vec<u8> {
        let body = OpenAiBody {
            req,
            model: upstream_model(m),
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn decoder(&self) -> Box<dyn Decoder> {
        Box::new(OpenAiDecoder)
    }
}

/// The OpenAI request body: the client's fields with the upstream's model name and the
/// stream settings, serialized straight from the borrowed request (no deep copy).
struct OpenAiBody<'a> {
    req: &'a ChatRequest,
    model: &'a str,
}

impl serde::Serialize for OpenAiBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("messages", &self.req.messages)?;
        m.serialize_entry("stream", &self.req.stream)?;
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

pub struct OpenAiDecoder;

impl Decoder for OpenAiDecoder {
    fn event(&mut self, ev: &SseEvent, out: &mut VecDeque<UpEvent>) -> Result<Flow, UpError> {
        if ev.data.trim() == "[DONE]" {
            return Ok(Flow::End);
        }
        let v = event_json(ev)?;
        if let Some(err) = v.get("error") {
            return Err(mid_stream_error(FailureKind::Protocol, err));
        }
        out.extend(events(&v, true));
        Ok(Flow::More)
    }

    fn json(&mut self, v: &Value) -> Vec<UpEvent> {
        events(v, false)
    }
}

/// Events in one OpenAI chunk (`stream`) or whole completion.
fn events(v: &Value, stream: bool) -> Vec<UpEvent> {
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
            events(&piece, true),
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
        let ev = events(&whole, false);
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
                reason: FinishReason::ToolCalls
            }
        );
    }

    #[test]
    fn chunks_and_completions_become_events() {
        let chunk =
            json!({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]});
        assert_eq!(
            events(&chunk, true),
            [UpEvent::Text {
                index: 0,
                text: "Hi".into()
            }]
        );
        let done = json!({"choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "length"}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        assert_eq!(
            events(&done, false),
            [
                UpEvent::Text {
                    index: 0,
                    text: "Hi".into()
                },
                UpEvent::Finish {
                    index: 0,
                    reason: FinishReason::Length
                },
                UpEvent::Usage {
                    prompt: 3,
                    completion: 1
                },
            ]
        );
        assert_eq!(finish_reason("tool_calls"), FinishReason::ToolCalls);
        assert_eq!(finish_reason("eos_token"), FinishReason::Stop);
    }
}
