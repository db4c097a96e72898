//! The client's chat request: the fields the gateway checks and needs (model, messages,
//! max tokens, streaming, routing metadata), and what routing looks at
//! (`RequestInfo`). Everything else passes through to the upstream untouched.

use crate::rules::RequestInfo;
use axum::http::HeaderMap;
use novastack_openai::ApiError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Tokens assumed for `max_tokens` when a request gives none (cost and TPM estimates).
pub(crate) const DEFAULT_MAX_TOKENS: usize = 1024;

/// Tokens in `s`, estimated (about 4 characters a token).
pub(crate) fn estimate_tokens(s: &str) -> usize {
    s.chars().count().div_ceil(4)
}

/// A client's chat request, checked.
pub struct ChatRequest {
    /// The client's fields except `messages` (given apart), `metadata` (routing only)
    /// and `stream_options` (the gateway's own).
    pub body: Map<String, Value>,
    pub messages: Vec<Value>,
    /// The model asked for: a configured name or `auto`.
    pub model: String,
    pub max_tokens: Option<usize>,
    /// The client streams (and so does the upstream); otherwise one JSON answer.
    pub stream: bool,
    pub include_usage: bool,
    pub metadata: BTreeMap<String, Value>,
}

impl ChatRequest {
    /// The first field the request sets that Anthropic's Messages API has no
    /// equivalent for: the deprecated `functions` / `function_call`, a
    /// `response_format` other than plain text, and content parts other than text and
    /// `image_url` (in `messages`).
    pub(crate) fn field_anthropic_lacks(&self) -> Option<&'static str> {
        let set = |k: &str| self.body.get(k).is_some_and(|v| !v.is_null());
        if let Some(k) = ["functions", "function_call"].into_iter().find(|k| set(k)) {
            return Some(k);
        }
        let text = Some(&Value::from("text"));
        let format = self.body.get("response_format").and_then(|f| f.get("type"));
        if set("response_format") && format != text {
            return Some("response_format");
        }
        // Content parts other than text and images.
        let part_ok = |p: &Value| matches!(p["type"].as_str(), Some("text" | "image_url"));
        self.messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .any(|parts| !parts.iter().all(part_ok))
            .then_some("messages")
    }
}

/// Parses and checks a chat request body; errors are 400s naming the field.
pub(crate) fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let mut body = novastack_openai::http::json_object(body)?;
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "`model` is required (a model name or `auto`)",
                Some("model"),
            ))
        }
    };
    let messages = match body.remove("messages") {
        Some(Value::Array(m)) if !m.is_empty() && m.iter().all(Value::is_object) => m,
        _ => {
            return Err(ApiError::bad_request(
                "`messages` must be a non-empty array of objects",
                Some("messages"),
            ))
        }
    };
    let uint = |k: &str| -> Result<Option<usize>, ApiError> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("`{k}` must be a positive integer"), Some(k))
                }),
        }
    };
    let max_tokens = uint("max_completion_tokens")?.or(uint("max_tokens")?);
    if uint("n")?.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            "the gateway supports n = 1 only",
            Some("n"),
        ));
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        _ => {
            return Err(ApiError::bad_request(
                "`stream` must be a boolean",
                Some("stream"),
            ))
        }
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let metadata = match body.remove("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.into_iter().collect(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`metadata` must be an object",
                Some("metadata"),
            ))
        }
    };
    body.remove("stream_options");
    Ok(ChatRequest {
        body,
        messages,
        model,
        max_tokens,
        stream,
        include_usage,
        metadata,
    })
}

/// What routing looks at: the request, the `x-novastack-*` headers, and the headers in
/// `rule_headers` (lower-case names some rule uses).
pub(crate) fn request_info(
    p: &ChatRequest,
    headers: &HeaderMap,
    rule_headers: &[String],
) -> Result<RequestInfo, ApiError> {
    let hdr = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let task = hdr("x-novastack-task").or_else(|| {
        p.metadata
            .get("task")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let budget = match hdr("x-novastack-budget-usd") {
        Some(b) => Some(
            b.trim()
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite() && *b >= 0.0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!("x-novastack-budget-usd: {b:?} is not a non-negative number"),
                        None,
                    )
                })?,
        ),
        None => match p.metadata.get("budget_usd") {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|b| *b >= 0.0)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "metadata.budget_usd must be a non-negative number",
                            Some("metadata"),
                        )
                    })?,
            ),
        },
    };
    let context_length = p
        .messages
        .iter()
        .map(|m| 4 + estimate_tokens(&content_text(m.get("content").unwrap_or(&Value::Null))))
        .sum();
    Ok(RequestInfo {
        model: p.model.clone(),
        task,
        budget,
        context_length,
        max_tokens: p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        headers: rule_headers
            .iter()
            .filter(|k| k.as_str() != "authorization")
            .filter_map(|k| Some((k.clone(), headers.get(k)?.to_str().ok()?.to_string())))
            .collect(),
        metadata: p.metadata.clone(),
    })
}

/// Text from a message `content`: a string or an array of text parts.
pub(crate) fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_chat_validates_and_strips_routing_metadata() {
        let p = parse_chat(br#"{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "metadata": {"task": "qa", "budget_usd": 0.01}, "stream": true, "stream_options": {"include_usage": true}}"#).unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(p.max_tokens, Some(5));
        assert!(!p.body.contains_key("metadata") && !p.body.contains_key("stream_options"));
        let info = request_info(&p, &HeaderMap::new(), &[]).unwrap();
        assert_eq!(info.task.as_deref(), Some("qa"));
        assert_eq!(info.budget, Some(0.01));
        let mut h = HeaderMap::new();
        h.insert("x-novastack-task", "reasoning".parse().unwrap());
        h.insert("x-novastack-budget-usd", "0.5".parse().unwrap());
        h.insert("authorization", "Bearer secret".parse().unwrap());
        let info =
            request_info(&p, &h, &["authorization".to_string(), "x-team".to_string()]).unwrap();
        assert_eq!(
            (info.task.as_deref(), info.budget),
            (Some("reasoning"), Some(0.5))
        );
        assert!(!info.headers.contains_key("authorization"));
        for bad in [
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            r#"{"model": "m", "messages": []}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
            "[1]",
        ] {
            assert_eq!(
                parse_chat(bad.as_bytes()).err().map(|e| e.status.as_u16()),
                Some(400),
                "{bad}"
            );
        }
    }
}
