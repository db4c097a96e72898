//! Anthropic's Messages API: `x-api-key`-style auth from the config plus
//! `anthropic-version`, `system` apart from the turns, alternating turns, `max_tokens`
//! required; answers as `message_start` / `content_block_delta` / `message_delta` /
//! `message_stop` / `error` events, or one message.

use super::{
    auth_header, event_json, mid_stream_error, upstream_model, Decoder, Flow, Provider, UpError,
    UpEvent,
};
use crate::api::Api;
use crate::config::ModelConfig;
use crate::policy::FailureKind;
use crate::request::{content_text, ClientRequest};
use novastack_openai::protocol::{FinishReason, FunctionCallDelta, ToolCallDelta};
use novastack_openai::sse_parser::SseEvent;
use serde_json::{json, Value};
use std::collections::VecDeque;

/// `max_tokens` when the client gave none (Anthropic requires one).
const DEFAULT_MAX_TOKENS: usize = 4096;
const DEFAULT_VERSION: &str = "2023-06-01";

pub struct Anthropic;

impl Provider for Anthropic {
    fn endpoint(&self, base_url: &str, api: Api) -> Option<String> {
        if api != Api::Chat {
            return None;
        }
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

    fn body(&self, m: &ModelConfig, req: &ClientRequest) -> Vec<u8> {
        body(m, req).to_string().into_bytes()
    }

    fn decoder(&self, _api: Api) -> Box<dyn Decoder> {
        Box::new(AnthropicDecoder {
            prompt: 0,
            calls: Default::default(),
        })
    }
}

fn body(m: &ModelConfig, req: &ClientRequest) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for msg in &req.messages {
        let role = msg.get("role").and_then(Value::as_str).unwrap_or("user");
        let text = content_text(msg.get("content").unwrap_or(&Value::Null));
        let (role, content) = match role {
            "system" | "developer" => {
                system.push(text);
                continue;
            }
            // A tool's answer: a `tool_result` block in a user turn.
            "tool" => (
                "user",
                json!([{"type": "tool_result", "content": text,
                        "tool_use_id": msg.get("tool_call_id").cloned().unwrap_or(Value::Null)}]),
            ),
            // The assistant's calls: `tool_use` blocks after its text.
            "assistant" => match msg.get("tool_calls").and_then(Value::as_array) {
                Some(calls) if !calls.is_empty() => {
                    let mut blocks = text_blocks(text);
                    blocks.extend(calls.iter().map(tool_use_block));
                    ("assistant", Value::Array(blocks))
                }
                _ => ("assistant", Value::String(text)),
            },
            _ => match msg.get("content") {
                Some(Value::Array(parts)) if parts.iter().any(|p| p["type"] != "text") => (
                    "user",
                    Value::Array(parts.iter().filter_map(part_block).collect()),
                ),
                _ => ("user", Value::String(text)),
            },
        };
        // Anthropic wants alternating turns: merge consecutive same-role ones.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                last["content"] = merge(last["content"].take(), content);
            }
            _ => messages.push(json!({"role": role, "content": content})),
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
    if let Some(tools) = req.body.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut out = json!({"name": f["name"],
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = f.get("description").filter(|d| d.is_string()) {
                    out["description"] = d.clone();
                }
                out
            })
            .collect();
        body["tools"] = Value::Array(tools);
    }
    let mut choice = match req.body.get("tool_choice") {
        Some(Value::String(c)) if c == "required" => Some(json!({"type": "any"})),
        Some(Value::String(c)) if c == "none" || c == "auto" => Some(json!({"type": c})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"type": "tool", "name": n})),
        _ => None,
    };
    if req.body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        choice.get_or_insert_with(|| json!({"type": "auto"}))["disable_parallel_tool_use"] =
            Value::Bool(true);
    }
    if let Some(c) = choice {
        body["tool_choice"] = c;
    }
    body
}

/// An OpenAI content part as an Anthropic block: text, or an `image_url` (a base64
/// `data:` URL or a web URL) as an image. Other kinds are refused before any attempt
/// (`ClientRequest::field_anthropic_lacks`).
fn part_block(part: &Value) -> Option<Value> {
    match part["type"].as_str()? {
        "text" => Some(json!({"type": "text", "text": part["text"]})),
        "image_url" => {
            let url = part["image_url"]["url"].as_str()?;
            let source = match url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(";base64,"))
            {
                Some((media_type, data)) => {
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
                None => json!({"type": "url", "url": url}),
            };
            Some(json!({"type": "image", "source": source}))
        }
        _ => None,
    }
}

/// `text` as content blocks (none when empty).
fn text_blocks(text: String) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    }
}

/// An OpenAI tool call as a `tool_use` block (arguments that are not JSON become `{}`).
fn tool_use_block(call: &Value) -> Value {
    let f = &call["function"];
    let input = f["arguments"]
        .as_str()
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    json!({"type": "tool_use", "id": call["id"], "name": f["name"], "input": input})
}

/// Two turns' contents as one: strings joined by a blank line, else blocks in order.
fn merge(a: Value, b: Value) -> Value {
    let blocks = |v: Value| match v {
        Value::String(s) => text_blocks(s),
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    match (a, b) {
        (Value::String(a), Value::String(b)) => Value::String(format!("{a}\n\n{b}")),
        (a, b) => {
            let mut out = blocks(a);
            out.extend(blocks(b));
            Value::Array(out)
        }
    }
}

struct AnthropicDecoder {
    /// Prompt tokens from `message_start`, reported with the usage at `message_delta`.
    prompt: usize,
    /// Tool calls so far, by the index of their `tool_use` content block.
    calls: std::collections::HashMap<u64, usize>,
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
            "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                let block = v["index"].as_u64().unwrap_or(0);
                let n = self.calls.len();
                let index = *self.calls.entry(block).or_insert(n);
                let b = &v["content_block"];
                out.push_back(tool_call(index, b, String::new()));
            }
            "content_block_delta" => {
                if let Some(t) = v["delta"]["text"].as_str() {
                    out.push_back(UpEvent::Text {
                        index: 0,
                        text: t.to_string(),
                    });
                }
                let call = v["index"].as_u64().and_then(|b| self.calls.get(&b));
                if let (Some(&index), Some(j)) = (call, v["delta"]["partial_json"].as_str()) {
                    out.push_back(UpEvent::ToolCall {
                        index: 0,
                        call: ToolCallDelta {
                            index,
                            id: None,
                            kind: None,
                            function: FunctionCallDelta {
                                name: None,
                                arguments: Some(j.to_string()),
                            },
                        },
                    });
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    out.push_back(UpEvent::Finish {
                        index: 0,
                        reason: finish_reason(r),
                        stop: v["delta"]["stop_sequence"].as_str().map(str::to_string),
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
            _ => {} // ping, text content_block_start, content_block_stop
        }
        Ok(Flow::More)
    }

    fn json(&mut self, v: &Value) -> Vec<UpEvent> {
        let blocks = v["content"].as_array().into_iter().flatten();
        let text: String = blocks.clone().filter_map(|b| b["text"].as_str()).collect();
        let calls = blocks
            .filter(|b| b["type"] == "tool_use")
            .enumerate()
            .map(|(i, b)| tool_call(i, b, b["input"].to_string()));
        std::iter::once(UpEvent::Text { index: 0, text })
            .chain(calls)
            .chain([
                UpEvent::Finish {
                    index: 0,
                    reason: finish_reason(v["stop_reason"].as_str().unwrap_or("end_turn")),
                    stop: v["stop_sequence"].as_str().map(str::to_string),
                },
                UpEvent::Usage {
                    prompt: v["usage"]["input_tokens"].as_u64().unwrap_or(0) as usize,
                    completion: v["usage"]["output_tokens"].as_u64().unwrap_or(0) as usize,
                },
            ])
            .collect()
    }
}

/// A `tool_use` block's call, with these arguments (JSON text).
fn tool_call(index: usize, block: &Value, arguments: String) -> UpEvent {
    let s = |v: &Value| v.as_str().map(str::to_string);
    UpEvent::ToolCall {
        index: 0,
        call: ToolCallDelta {
            index,
            id: s(&block["id"]),
            kind: Some("function".into()),
            function: FunctionCallDelta {
                name: s(&block["name"]),
                arguments: Some(arguments),
            },
        },
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
