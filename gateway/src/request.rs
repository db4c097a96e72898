//! The client's request, for any of the APIs (`api.rs`): the fields the gateway checks
//! and needs (model, messages or prompt, max tokens, choices, streaming, routing
//! metadata), and what routing looks at (`RequestInfo`). Everything else passes through
//! to the upstream untouched.

use crate::api::Api;
use crate::rules::RequestInfo;
use axum::http::HeaderMap;
use novastack_openai::ApiError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Tokens assumed for `max_tokens` when a request gives none (cost and TPM estimates).
pub(crate) const DEFAULT_MAX_TOKENS: usize = 1024;

/// The largest `n` (OpenAI's own limit).
pub(crate) const MAX_N: usize = 128;

/// Tokens in `s`, estimated (about 4 characters a token).
pub(crate) fn estimate_tokens(s: &str) -> usize {
    s.chars().count().div_ceil(4)
}

/// A client's request, checked.
pub struct ClientRequest {
    pub api: Api,
    /// The client's fields except `messages` (given apart), `metadata` (routing only)
    /// and `stream_options` (the gateway's own).
    pub body: Map<String, Value>,
    /// Chat only (empty otherwise).
    pub messages: Vec<Value>,
    /// The model asked for: a configured name or `auto`.
    pub model: String,
    pub max_tokens: Option<usize>,
    /// The client streams (and so does the upstream); otherwise one JSON answer.
    pub stream: bool,
    pub include_usage: bool,
    pub metadata: BTreeMap<String, Value>,
    /// Choices the answer has: `n`, times the prompts of a completion request.
    pub choices: usize,
    /// The prompt's (or input's) tokens, estimated.
    pub prompt_tokens: usize,
}

impl ClientRequest {
    /// The first field the request sets that Anthropic's Messages API has no
    /// equivalent for: `n` above 1, the deprecated `functions` / `function_call`, a
    /// `response_format` other than plain text, and content parts other than text and
    /// `image_url` (in `messages`).
    pub(crate) fn field_anthropic_lacks(&self) -> Option<&'static str> {
        let set = |k: &str| self.body.get(k).is_some_and(|v| !v.is_null());
        if self.choices > 1 {
            return Some("n");
        }
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

    /// `max_tokens`, or what the gateway assumes for limits and costs without one
    /// (embeddings generate nothing).
    pub(crate) fn max_tokens_or_default(&self) -> usize {
        match self.api {
            Api::Embeddings => 0,
            Api::Chat | Api::Completions => self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        }
    }

    /// Tokens reserved from the limits: the prompt, and every choice's `max_tokens`.
    pub(crate) fn estimated_tokens(&self) -> f64 {
        (self.prompt_tokens + self.max_tokens_or_default() * self.choices) as f64
    }
}

/// Parses and checks a request body for `api`; errors are 400s naming the field.
pub(crate) fn parse_request(api: Api, body: &[u8]) -> Result<ClientRequest, ApiError> {
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
    let (messages, prompts, prompt_tokens) = match api {
        Api::Chat => {
            let messages = match body.remove("messages") {
                Some(Value::Array(m)) if !m.is_empty() && m.iter().all(Value::is_object) => m,
                _ => {
                    return Err(ApiError::bad_request(
                        "`messages` must be a non-empty array of objects",
                        Some("messages"),
                    ))
                }
            };
            let tokens = messages
                .iter()
                .map(|m| {
                    4 + estimate_tokens(&content_text(m.get("content").unwrap_or(&Value::Null)))
                })
                .sum();
            (messages, 1, tokens)
        }
        Api::Completions => {
            let (prompts, tokens) = prompt_size(body.get("prompt"), "prompt")?;
            (Vec::new(), prompts, tokens)
        }
        Api::Embeddings => {
            let (_, tokens) = prompt_size(body.get("input"), "input")?;
            (Vec::new(), 1, tokens)
        }
    };
    let uint = |k: &str| -> Result<Option<usize>, ApiError> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e15)
                        .map(|f| f as u64)
                })
                .filter(|&n| n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("`{k}` must be a positive integer"), Some(k))
                }),
        }
    };
    let (max_tokens, n) = match api {
        Api::Embeddings => (None, 1),
        Api::Chat | Api::Completions => {
            let max = uint("max_completion_tokens")?.or(uint("max_tokens")?);
            let n = uint("n")?.unwrap_or(1);
            if n > MAX_N {
                return Err(ApiError::bad_request(
                    format!("`n` must be at most {MAX_N}"),
                    Some("n"),
                ));
            }
            (max, n)
        }
    };
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
    if stream && api == Api::Embeddings {
        return Err(ApiError::bad_request(
            "embeddings are not streamed; leave out `stream`",
            Some("stream"),
        ));
    }
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
    Ok(ClientRequest {
        api,
        body,
        messages,
        model,
        max_tokens,
        stream,
        include_usage,
        metadata,
        choices: n * prompts,
        prompt_tokens,
    })
}

/// A completion `prompt` or an embeddings `input`: a string, strings, token ids, or
/// lists of token ids. Returns how many prompts and their estimated tokens.
fn prompt_size(v: Option<&Value>, field: &str) -> Result<(usize, usize), ApiError> {
    let bad = || {
        ApiError::bad_request(
            format!("`{field}` must be a string, an array of strings, an array of token ids or an array of token-id arrays"),
            Some(field),
        )
    };
    let is_id = |x: &Value| x.as_u64().is_some_and(|n| n <= u32::MAX as u64);
    match v {
        Some(Value::String(s)) => Ok((1, estimate_tokens(s))),
        Some(Value::Array(a)) if a.is_empty() => Err(bad()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok((
            a.len(),
            a.iter()
                .filter_map(Value::as_str)
                .map(estimate_tokens)
                .sum(),
        )),
        Some(Value::Array(a)) if a.iter().all(is_id) => Ok((1, a.len())),
        Some(Value::Array(a))
            if a.iter().all(|x| {
                x.as_array()
                    .is_some_and(|ids| !ids.is_empty() && ids.iter().all(is_id))
            }) =>
        {
            Ok((
                a.len(),
                a.iter().filter_map(Value::as_array).map(Vec::len).sum(),
            ))
        }
        _ => Err(bad()),
    }
}

/// What routing looks at: the request, the `x-novastack-*` headers, and the headers in
/// `rule_headers` (lower-case names some rule uses).
pub(crate) fn request_info(
    p: &ClientRequest,
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
    Ok(RequestInfo {
        api: p.api,
        model: p.model.clone(),
        task,
        budget,
        context_length: p.prompt_tokens,
        max_tokens: p.max_tokens_or_default(),
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

    fn parse_chat(body: &[u8]) -> Result<ClientRequest, ApiError> {
        parse_request(Api::Chat, body)
    }

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
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 129}"#,
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

    /// `n` and completion prompts count choices; limits reserve every choice's tokens.
    #[test]
    fn choices_and_estimates_follow_n_and_prompts() {
        let p = parse_chat(br#"{"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}], "n": 3, "max_tokens": 10}"#).unwrap();
        assert_eq!((p.choices, p.prompt_tokens), (3, 6));
        assert_eq!(p.estimated_tokens(), 36.0);
        assert_eq!(p.field_anthropic_lacks(), Some("n"));
        let c = parse_request(
            Api::Completions,
            br#"{"model": "m", "prompt": ["abcd", "abcdefgh"], "n": 2, "max_tokens": 4.0}"#,
        )
        .unwrap();
        assert_eq!((c.choices, c.prompt_tokens, c.max_tokens), (4, 3, Some(4)));
        let ids = parse_request(
            Api::Completions,
            br#"{"model": "m", "prompt": [[1, 2], [3]]}"#,
        )
        .unwrap();
        assert_eq!((ids.choices, ids.prompt_tokens), (2, 3));
        let e = parse_request(Api::Embeddings, br#"{"model": "m", "input": [1, 2, 3]}"#).unwrap();
        assert_eq!(
            (e.choices, e.prompt_tokens, e.estimated_tokens()),
            (1, 3, 3.0)
        );
        for (api, bad, field) in [
            (Api::Completions, r#"{"model": "m"}"#, "prompt"),
            (
                Api::Completions,
                r#"{"model": "m", "prompt": [1, "a"]}"#,
                "prompt",
            ),
            (
                Api::Completions,
                r#"{"model": "m", "prompt": []}"#,
                "prompt",
            ),
            (
                Api::Embeddings,
                r#"{"model": "m", "input": {"a": 1}}"#,
                "input",
            ),
            (
                Api::Embeddings,
                r#"{"model": "m", "input": "x", "stream": true}"#,
                "stream",
            ),
        ] {
            let err = parse_request(api, bad.as_bytes()).err().unwrap();
            assert_eq!(err.status.as_u16(), 400, "{bad}");
            assert_eq!(err.param.as_deref(), Some(field), "{bad}");
        }
    }
}
