//! Anthropic's Messages API (`POST /v1/messages`) in front of an OpenAI-style chat
//! handler, for `serve` and the gateway alike: the request becomes a chat completion
//! request, the handler answers it, and the answer (JSON or SSE) comes back in
//! Anthropic's shapes: a `message` with `text` and `tool_use` blocks, or the
//! `message_start` … `message_stop` event stream. Errors use Anthropic's error shape.

use crate::sse_parser::SseParser;
use crate::ApiError;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::convert::Infallible;

/// Anthropic's error `type` for an HTTP status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`,
/// keeping the status and headers (such as `Retry-After`).
pub fn error_response(e: ApiError) -> Response {
    let status = e.status;
    let body =
        json!({"type": "error", "error": {"type": error_type(status), "message": e.message}});
    let mut r = (status, axum::Json(body)).into_response();
    for (name, value) in &e.headers {
        if let Ok(v) = value.parse() {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg.into(), None)
}

/// The text of a `tool_result` (a string, or text blocks).
fn result_text(content: Option<&Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => Ok(b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()),
                other => Err(bad(format!(
                    "a tool_result block of type {other:?} is not supported; send text"
                ))),
            })
            .collect(),
        Some(_) => Err(bad("tool_result content must be a string or blocks")),
    }
}

/// One Anthropic message into OpenAI messages (tool results become `tool` messages,
/// placed before the turn's other content).
fn convert_message(i: usize, m: &Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = m.get("role").and_then(Value::as_str);
    let role = match role {
        Some(r @ ("user" | "assistant")) => r,
        other => {
            return Err(bad(format!(
                "messages[{i}].role must be user or assistant, got {other:?}"
            )))
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        _ => {
            return Err(bad(format!(
                "messages[{i}].content must be a string or an array of blocks"
            )))
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(json!({"type": "text",
                "text": b.get("text").and_then(Value::as_str).unwrap_or("")})),
            Some("image") => {
                let src = b.get("source").cloned().unwrap_or(Value::Null);
                let url = match src.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
                        src.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    Some("url") => src.get("url").and_then(Value::as_str).unwrap_or("").to_string(),
                    _ => return Err(bad(format!("messages[{i}].content[{j}]: an image needs a base64 or url source"))),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_use") if role == "assistant" => {
                let id = b.get("id").and_then(Value::as_str).unwrap_or_default();
                let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            Some("tool_result") if role == "user" => {
                let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or_default();
                out.push(json!({"role": "tool", "tool_call_id": id,
                    "content": result_text(b.get("content"))?}));
            }
            // Extended thinking from an earlier turn: not replayed.
            Some("thinking" | "redacted_thinking") if role == "assistant" => {}
            other => {
                return Err(bad(format!(
                    "messages[{i}].content[{j}] is a block of type {other:?}, which a {role} message cannot carry here"
                )))
            }
        }
    }
    if role == "assistant" {
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// A Messages request as an OpenAI chat completion request (streams ask for usage).
pub fn chat_request(req: &Value) -> Result<Value, ApiError> {
    let obj = req
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    let max_tokens = obj
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("max_tokens: a positive integer is required"))?;
    let mut messages = Vec::new();
    match obj.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text: String = blocks
                .iter()
                .map(|b| b.get("text").and_then(Value::as_str).unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(bad("system must be a string or text blocks")),
    }
    let list = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages: an array is required"))?;
    for (i, m) in list.iter().enumerate() {
        convert_message(i, m, &mut messages)?;
    }
    let mut out = Map::new();
    if let Some(m) = obj.get("model") {
        out.insert("model".into(), m.clone());
    }
    out.insert("messages".into(), Value::Array(messages));
    out.insert("max_tokens".into(), json!(max_tokens));
    // Anthropic's sampling fields, and (from clients' `extra_body`) the OpenAI-side
    // extensions Anthropic has no name for.
    for k in [
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "min_p",
        "repetition_penalty",
        "ignore_eos",
    ] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(s) = obj.get("stop_sequences").filter(|v| !v.is_null()) {
        out.insert("stop".into(), s.clone());
    }
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.get("name").cloned().unwrap_or(Value::Null),
                    "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(tc) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": tc.get("name").cloned().unwrap_or(Value::Null)}})
            }
            other => {
                return Err(bad(format!(
                    "tool_choice type {other:?} is not one of auto, any, tool, none"
                )))
            }
        };
        out.insert("tool_choice".into(), choice);
        if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(Value::Object(out))
}

/// A `/v1/messages` body as the bytes of the chat completion request it stands for
/// (what both servers hand their chat handler).
pub fn chat_body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    let body = crate::http::body_bytes(body)?;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let chat = chat_request(&v)?;
    Ok(serde_json::to_vec(&chat).expect("JSON serializes").into())
}

/// A choice's OpenAI finish reason (and vLLM's `stop_reason`, the stop string that
/// matched) as Anthropic's `stop_reason` and `stop_sequence`.
fn stop_reason(choice: &Value) -> (Value, Value) {
    let matched = choice["stop_reason"].as_str();
    match choice["finish_reason"].as_str() {
        Some("length") => (json!("max_tokens"), Value::Null),
        Some("tool_calls") => (json!("tool_use"), Value::Null),
        Some("stop") if matched.is_some() => (json!("stop_sequence"), json!(matched)),
        Some(_) => (json!("end_turn"), Value::Null),
        None => (Value::Null, Value::Null),
    }
}

fn message_id() -> String {
    format!("msg_{:024x}", rand::random::<u128>() >> 32)
}

/// A chat completion (JSON) as a Messages answer.
pub fn message_from_completion(c: &Value) -> Value {
    let choice = &c["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for call in msg["tool_calls"].as_array().into_iter().flatten() {
        let args = call["function"]["arguments"].as_str().unwrap_or("{}");
        content.push(
            json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
            "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}))}),
        );
    }
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": c["model"],
        "content": content,
        "stop_reason": stop_reason(choice).0,
        "stop_sequence": stop_reason(choice).1,
        "usage": {"input_tokens": c["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                  "output_tokens": c["usage"]["completion_tokens"].as_u64().unwrap_or(0)},
    })
}

/// OpenAI chat chunks into Anthropic stream events, in order.
pub struct MessageStream {
    id: String,
    started: bool,
    /// The open content block: its index and whether it is text.
    open: Option<(usize, bool)>,
    next_index: usize,
    /// OpenAI tool-call index → our block index.
    calls: Vec<(usize, usize)>,
    /// `stop_reason` and `stop_sequence`.
    stop: (Value, Value),
    input_tokens: u64,
    output_tokens: u64,
}

impl Default for MessageStream {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageStream {
    pub fn new() -> Self {
        MessageStream {
            id: message_id(),
            started: false,
            open: None,
            next_index: 0,
            calls: Vec::new(),
            stop: (Value::Null, Value::Null),
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    fn start(&mut self, model: &Value, out: &mut Vec<(&'static str, Value)>) {
        if !self.started {
            self.started = true;
            out.push((
                "message_start",
                json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ));
        }
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if let Some((index, _)) = self.open.take() {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// One OpenAI chunk (or error object) in; the events it makes out.
    pub fn push(&mut self, chunk: &Value) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        if let Some(err) = chunk.get("error") {
            out.push((
                "error",
                json!({"type": "error", "error": {"type": "api_error",
                "message": err.get("message").cloned().unwrap_or(Value::Null)}}),
            ));
            return out;
        }
        self.start(&chunk["model"], &mut out);
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(self.input_tokens);
            self.output_tokens = u["completion_tokens"]
                .as_u64()
                .unwrap_or(self.output_tokens);
        }
        for c in chunk["choices"].as_array().into_iter().flatten() {
            let delta = &c["delta"];
            if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                if !matches!(self.open, Some((_, true))) {
                    self.close(&mut out);
                    let index = self.next_index;
                    self.next_index += 1;
                    self.open = Some((index, true));
                    out.push((
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index,
                        "content_block": {"type": "text", "text": ""}}),
                    ));
                }
                let index = self.open.map_or(0, |o| o.0);
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": t}}),
                ));
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let k = call["index"].as_u64().unwrap_or(0) as usize;
                let block = match self.calls.iter().find(|(ck, _)| *ck == k) {
                    Some(&(_, b)) => b,
                    None => {
                        self.close(&mut out);
                        let index = self.next_index;
                        self.next_index += 1;
                        self.calls.push((k, index));
                        self.open = Some((index, false));
                        out.push(("content_block_start", json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}})));
                        index
                    }
                };
                if let Some(a) = call["function"]["arguments"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                {
                    out.push((
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": a}}),
                    ));
                }
            }
            if c["finish_reason"].is_string() {
                self.stop = stop_reason(c);
            }
        }
        out
    }

    /// The end of the OpenAI stream (`[DONE]`): the last events.
    pub fn finish(&mut self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        self.start(&Value::Null, &mut out);
        self.close(&mut out);
        out.push((
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop.0, "stop_sequence": self.stop.1},
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
        out
    }
}

/// An OpenAI error body (`{"error": {...}}`) as an [`ApiError`] with its status.
async fn api_error_of(r: Response) -> ApiError {
    let status = r.status();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or("request failed")
        .to_string();
    let mut e = ApiError::new(status, message, None);
    if let Some(v) = retry_after {
        e.headers.push(("retry-after", v));
    }
    e
}

/// The chat handler's answer as a Messages answer: JSON, SSE or an error.
pub async fn respond(answer: Result<Response, ApiError>) -> Response {
    let r = match answer {
        Ok(r) => r,
        Err(e) => return error_response(e),
    };
    if !r.status().is_success() {
        return error_response(api_error_of(r).await);
    }
    let is_sse = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        let body = match axum::body::to_bytes(r.into_body(), usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                return error_response(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string(), None))
            }
        };
        return match serde_json::from_slice::<Value>(&body) {
            Ok(v) => axum::Json(message_from_completion(&v)).into_response(),
            Err(e) => error_response(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string(), None)),
        };
    }
    // Relay in the client's task: each OpenAI event in, its Anthropic events out.
    struct Relay {
        body: axum::body::BodyDataStream,
        parser: SseParser,
        conv: MessageStream,
        pending: std::collections::VecDeque<Event>,
        done: bool,
    }
    let relay = Relay {
        body: r.into_body().into_data_stream(),
        parser: SseParser::new(),
        conv: MessageStream::new(),
        pending: Default::default(),
        done: false,
    };
    let to_event = |(name, v): (&'static str, Value)| {
        Event::default()
            .event(name)
            .data(crate::sse_json::sse_json(&v))
    };
    let stream = futures_util::stream::unfold(relay, move |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            if s.done {
                return None;
            }
            match s.body.next().await {
                Some(Ok(bytes)) => {
                    for ev in s.parser.push(&bytes) {
                        if ev.data == "[DONE]" {
                            let evs = s.conv.finish();
                            s.pending.extend(evs.into_iter().map(to_event));
                            s.done = true;
                            break;
                        }
                        if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                            let evs = s.conv.push(&v);
                            s.pending.extend(evs.into_iter().map(to_event));
                        }
                    }
                }
                // The upstream body ended without `[DONE]` (or failed): end cleanly.
                Some(Err(_)) | None => {
                    let evs = s.conv.finish();
                    s.pending.extend(evs.into_iter().map(to_event));
                    s.done = true;
                }
            }
        }
    });
    Sse::new(stream).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_becomes_a_chat_request() {
        let req = json!({
            "model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "temperature": 0.5, "stream": true,
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Thanks"}]}
            ]
        });
        let c = chat_request(&req).unwrap();
        assert_eq!(
            c["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            c["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(c["messages"][2]["content"], "Checking.");
        assert_eq!(
            c["messages"][3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "21C"})
        );
        assert_eq!(c["messages"][4]["content"][0]["text"], "Thanks");
        assert_eq!(c["stop"], json!(["END"]));
        assert_eq!(c["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(c["parallel_tool_calls"], false);
        assert_eq!(c["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(c["stream_options"]["include_usage"], true);
        assert!(
            chat_request(&json!({"messages": []})).is_err(),
            "max_tokens is required"
        );
        let e = chat_request(
            &json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
        )
        .unwrap_err();
        assert!(e.message.contains("messages[0].role"), "{}", e.message);
    }

    /// A stop string that ended the answer (vLLM's `stop_reason`) is Anthropic's
    /// `stop_sequence`; an end-of-sequence token is `end_turn`.
    #[test]
    fn a_matched_stop_string_is_a_stop_sequence() {
        let answer = |stop: Value| {
            message_from_completion(
                &json!({"model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                "stop_reason": stop, "message": {"role": "assistant", "content": "x"}}], "usage": {}}),
            )
        };
        let m = answer(json!("END"));
        assert_eq!(
            (m["stop_reason"].as_str(), m["stop_sequence"].as_str()),
            (Some("stop_sequence"), Some("END"))
        );
        let m = answer(Value::Null);
        assert_eq!(
            (m["stop_reason"].as_str(), &m["stop_sequence"]),
            (Some("end_turn"), &Value::Null)
        );
        let mut s = MessageStream::new();
        s.push(&json!({"model": "m", "choices": [{"index": 0, "delta": {"content": "x"}}]}));
        s.push(&json!({"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}));
        let end = s.finish();
        let delta = &end.iter().find(|(n, _)| *n == "message_delta").unwrap().1["delta"];
        assert_eq!(
            delta,
            &json!({"stop_reason": "stop_sequence", "stop_sequence": "END"})
        );
    }

    #[test]
    fn answers_and_streams_come_back_in_anthropic_shapes() {
        let m = message_from_completion(
            &json!({"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me see.", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
        );
        assert_eq!(
            m["content"][0],
            json!({"type": "text", "text": "Let me see."})
        );
        assert_eq!(m["content"][1]["input"], json!({"a": 1}));
        assert_eq!(
            (
                m["stop_reason"].as_str(),
                m["usage"]["input_tokens"].as_u64()
            ),
            (Some("tool_use"), Some(7))
        );
        let mut s = MessageStream::new();
        let mut names = Vec::new();
        for chunk in [
            json!({"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"model": "m", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}}),
        ] {
            names.extend(s.push(&chunk));
        }
        names.extend(s.finish());
        let kinds: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(names[4].1["content_block"]["name"], "f");
        assert_eq!(names[5].1["delta"]["partial_json"], "{\"a\":1}");
        assert_eq!(names[7].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(names[7].1["usage"]["output_tokens"], 9);
    }

    #[test]
    fn errors_take_anthropics_shape_and_keep_retry_after() {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down", None);
        e.headers.push(("retry-after", "3".into()));
        let r = error_response(e);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "3");
    }
}
