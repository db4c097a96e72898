//! Anthropic's Messages API: `x-api-key`-style auth from the config plus
//! `anthropic-version`, `system` apart from the turns, alternating turns, `max_tokens`
//! required; answers as `message_start` / `content_block_delta` / `message_delta` /
//! `message_stop` / `error` events, or one message.

use super::{
    auth_header, event_json, mid_stream_error, upstream_model, Decoder, Flow, Provider, UpError,
    UpEvent,
};
use crate::config::ModelConfig;
use crate::policy::FailureKind;
use crate::request::{content_text, ChatRequest};
use novastack_openai::protocol::FinishReason;
use novastack_openai::sse_parser::SseEvent;
use serde_json::{json, Value};
use std::collections::VecDeque;

/// `max_tokens` when the client gave none (Anthropic requires one).
const DEFAULT_MAX_TOKENS: usize = 4096;
const DEFAULT_VERSION: &str = "2023-06-01";

pub struct Anthropic;

impl Provider for Anthropic {
    fn endpoint(&self, base_url: &str) -> Option<String> {
        let base = base_url.trim_end_matches('/');
        Some(if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        })
    }

    fn headers(&self, m: &ModelConfig, key: Option<&str>) -> Vec<(String, String)> {
        let version = m.anthropic_version.as_deref().unwrap_or(DEFAULT_VERSION);
        std::iter::once(("anthropic-version".to_string(), version.to_string()))
            .chain(auth_header(m, key))
            .collect()
    }

    fn body(&self, m: &ModelConfig, req: &ChatRequest) -> Vec<u8> {
        body(m, req).to_string().into_bytes()
    }

    fn decoder(&self) -> Box<dyn Decoder> {
        Box::new(AnthropicDecoder { prompt: 0 })
    }
}

fn body(m: &ModelConfig, req: &ChatRequest) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for msg in &req.messages {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("user");
        let text = content_text(msg.get("content").unwrap_or(&Value::Null));
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
        "model": upstream_model(m),
        "messages": messages,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "stream": req.stream,
    });
    if !system.is_empty() {
        body["system"] = Value::String(system.join("\n\n"));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
    ] {
        if let Some(v) = req.body.get(from).filter(|v| !v.is_null()) {
            body[to] = v.clone();
        }
    }
    match req.body.get("stop") {
        Some(Value::String(s)) => body["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => body["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    body
}

struct AnthropicDecoder {
    /// Prompt tokens from `message_start`, reported with the usage at `message_delta`.
    prompt: usize,
}

impl Decoder for AnthropicDecoder {
    fn event(&mut self, ev: &SseEvent, out: &mut VecDeque<UpEvent>) -> Result<Flow, UpError> {
        let v = event_json(ev)?;
        let kind = ev
            .event
            .clone()
            .or_else(|| v.get("type").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        match kind.as_str() {
            "message_start" => {
                let u = &v["message"]["usage"];
                self.prompt = u["input_tokens"].as_u64().unwrap_or(0) as usize
                    + u["cache_read_input_tokens"].as_u64().unwrap_or(0) as usize
                    + u["cache_creation_input_tokens"].as_u64().unwrap_or(0) as usize;
            }
            "content_block_delta" => {
                if let Some(t) = v["delta"]["text"].as_str() {
                    out.push_back(UpEvent::Text {
                        index: 0,
                        text: t.to_string(),
                    });
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    out.push_back(UpEvent::Finish {
                        index: 0,
                        reason: finish_reason(r),
                    });
                }
                if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                    out.push_back(UpEvent::Usage {
                        prompt: self.prompt,
                        completion: n as usize,
                    });
                }
            }
            "message_stop" => return Ok(Flow::End),
            "error" => {
                let kind = match v["error"]["type"].as_str() {
                    Some("rate_limit_error") => FailureKind::Status(429),
                    Some("overloaded_error") => FailureKind::Status(529),
                    _ => FailureKind::Protocol,
                };
                return Err(mid_stream_error(kind, &v["error"]));
            }
            _ => {} // ping, content_block_start/stop
        }
        Ok(Flow::More)
    }

    fn json(&mut self, v: &Value) -> Vec<UpEvent> {
        let text: String = v["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["text"].as_str())
            .collect();
        vec![
            UpEvent::Text { index: 0, text },
            UpEvent::Finish {
                index: 0,
                reason: finish_reason(v["stop_reason"].as_str().unwrap_or("end_turn")),
            },
            UpEvent::Usage {
                prompt: v["usage"]["input_tokens"].as_u64().unwrap_or(0) as usize,
                completion: v["usage"]["output_tokens"].as_u64().unwrap_or(0) as usize,
            },
        ]
    }
}

fn finish_reason(r: &str) -> FinishReason {
    match r {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop, // end_turn, stop_sequence, pause_turn
    }
}
