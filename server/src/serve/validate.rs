//! Validation at the edge: a chat or completion request becomes a
//! [`ValidGeneration`] (prompts, engine parameters, stop strings) or a 400 that names
//! the field. Each rule is checked here once; the engine only asserts its invariants.

use super::ModelEntry;
use novastack_engine::{RequestParams, SamplingParams};
use novastack_openai::protocol::{GenerationParams, OneOrMany};
use novastack_openai::ApiError;
use serde_json::Value;

/// A validated generation: prompts, engine parameters, stop strings.
pub(crate) struct ValidGeneration {
    pub(crate) prompts: Vec<Vec<u32>>,
    pub(crate) params: RequestParams,
    pub(crate) stops: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

pub(crate) fn validate_generation(
    m: &ModelEntry,
    c: GenerationParams,
    prompts: Vec<Vec<u32>>,
    max_tokens: Option<usize>,
    logprobs: Option<usize>,
) -> Result<ValidGeneration, ApiError> {
    if c.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_request(
            "tools are not supported yet",
            Some("tools"),
        ));
    }
    if c.response_format.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::bad_request(
            "response_format is not supported yet",
            Some("response_format"),
        ));
    }
    let n = c.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad_request(
            format!("n must be between 1 and 16, got {n}"),
            Some("n"),
        ));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::bad_request("the prompt is empty", Some("prompt")));
    }
    if prompts.len() * n > 64 {
        return Err(ApiError::bad_request(
            format!(
                "{} prompts x n={n} is {} sequences; at most 64 per request",
                prompts.len(),
                prompts.len() * n
            ),
            Some("prompt"),
        ));
    }
    for p in &prompts {
        check_vocab(p, m.tokenizer.vocab_size().max(1), "prompt")?;
    }
    let room = m.max_context.saturating_sub(longest);
    if room == 0 {
        return Err(ApiError::bad_request(
            format!(
                "the prompt is {longest} tokens, the model's context window is {}",
                m.max_context
            ),
            Some("messages"),
        ));
    }
    let max_tokens = max_tokens.unwrap_or(room.min(4096));
    if max_tokens == 0 || max_tokens > room {
        return Err(ApiError::bad_request(
            format!(
                "max_tokens {max_tokens} must be between 1 and {room}: the context window is {} and the prompt is {longest} tokens",
                m.max_context
            ),
            Some("max_tokens"),
        ));
    }
    let mut logit_bias = Vec::new();
    for (k, v) in c.logit_bias.unwrap_or_default() {
        let id: u32 = k.parse().map_err(|_| {
            ApiError::bad_request(
                format!("logit_bias key {k:?} is not a token id"),
                Some("logit_bias"),
            )
        })?;
        logit_bias.push((id, v));
    }
    let sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_p: c.top_p.unwrap_or(1.0),
        top_k: c.top_k.filter(|&k| k > 0).map_or(0, |k| k as usize),
        min_p: c.min_p.unwrap_or(0.0),
        seed: c.seed,
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        logit_bias,
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string().replace("invalid request: ", ""), None))?;
    if logprobs.is_some_and(|k| k > 20) {
        return Err(ApiError::bad_request(
            "top logprobs must be at most 20",
            Some("logprobs"),
        ));
    }
    let stops = match c.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if stops.len() > 4 {
        return Err(ApiError::bad_request(
            "at most 4 stop sequences",
            Some("stop"),
        ));
    }
    Ok(ValidGeneration {
        prompts,
        params: RequestParams {
            max_tokens,
            sampling,
            stop_token_ids: c.stop_token_ids.unwrap_or_default(),
            ignore_eos: c.ignore_eos.unwrap_or(false),
            priority: c.priority.unwrap_or(0),
            logprobs,
            n,
        },
        stops,
        stream: c.stream.unwrap_or(false),
        include_usage: c
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// Text from a string or an array of `{"type": "text", "text": ...}` parts.
fn message_text(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    _ => Err(ApiError::bad_request(
                        "only text content parts are supported",
                        Some("messages"),
                    )),
                }
            })
            .collect(),
        _ => Err(ApiError::bad_request(
            "message content must be a string or an array of parts",
            Some("messages"),
        )),
    }
}

pub(crate) fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    messages
        .iter()
        .map(|m| {
            let obj = m.as_object().ok_or_else(|| {
                ApiError::bad_request("each message must be an object", Some("messages"))
            })?;
            let role = obj.get("role").and_then(Value::as_str);
            if !matches!(
                role,
                Some("system" | "user" | "assistant" | "developer" | "tool")
            ) {
                return Err(ApiError::bad_request(
                    format!("invalid message role {:?}", obj.get("role")),
                    Some("messages"),
                ));
            }
            let mut out = obj.clone();
            out.insert(
                "content".into(),
                Value::String(message_text(obj.get("content").unwrap_or(&Value::Null))?),
            );
            Ok(Value::Object(out))
        })
        .collect()
}

/// Every id of `ids` is a token of a vocabulary of `vocab` entries, or a 400 naming
/// `param`.
pub(crate) fn check_vocab(ids: &[u32], vocab: usize, param: &str) -> Result<(), ApiError> {
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(bad) => Err(ApiError::bad_request(
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
            Some(param),
        )),
        None => Ok(()),
    }
}
