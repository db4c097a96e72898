//! Validation at the edge: a chat or completion request becomes a
//! [`ValidGeneration`] (prompts, engine parameters, stop strings) or a
//! [`ValidationError`] naming the rule and the field. Each rule is checked here once;
//! the engine only asserts its invariants.

use super::respond::Endpoint;
use super::validation_error::ValidationError;
use super::ModelEntry;
use novastack_engine::{RequestParams, SamplingParams};
use novastack_openai::protocol::{GenerationParams, OneOrMany, Role};
use serde_json::Value;

/// A validated generation: prompts, engine parameters, stop strings.
pub(crate) struct ValidGeneration {
    pub(crate) prompts: Vec<Vec<u32>>,
    pub(crate) params: RequestParams,
    pub(crate) stops: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// How answers are read for tool calls (chat with `tools`).
    pub(crate) tools: Option<super::tool_calls::ToolPlan>,
}

/// Most sequences (prompts × `n`) one request may start.
const MAX_SEQUENCES: usize = 64;
/// Most tokens one request may ask for (sequences × `max_tokens`), in context windows.
const MAX_CONTEXTS_PER_REQUEST: usize = 16;
/// Longest stop string in bytes (stop strings are matched against held-back text on
/// every token, so their length is work per token).
pub(crate) const MAX_STOP_BYTES: usize = 1024;
/// Most alternatives per token (`top_logprobs`, and `logprobs` of completions).
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;

/// An accepted range: bounds, whether each is included, and how errors say it.
struct Range {
    min: f32,
    min_inclusive: bool,
    max: f32,
    text: &'static str,
}

/// OpenAI's ranges, and vLLM's for its extensions.
const TEMPERATURE: Range = Range {
    min: 0.0,
    min_inclusive: true,
    max: 2.0,
    text: "between 0 and 2",
};
const TOP_P: Range = Range {
    min: 0.0,
    min_inclusive: false,
    max: 1.0,
    text: "in (0, 1]",
};
const MIN_P: Range = Range {
    min: 0.0,
    min_inclusive: true,
    max: 1.0,
    text: "between 0 and 1",
};
const PENALTY: Range = Range {
    min: -2.0,
    min_inclusive: true,
    max: 2.0,
    text: "between -2 and 2",
};
const REPETITION_PENALTY: Range = Range {
    min: 0.0,
    min_inclusive: false,
    max: 2.0,
    text: "in (0, 2]",
};
const LOGIT_BIAS: Range = Range {
    min: -100.0,
    min_inclusive: true,
    max: 100.0,
    text: "between -100 and 100",
};

/// `v` is finite and in `r`, or an error naming `param`.
fn in_range(param: &'static str, v: f32, r: Range) -> Result<(), ValidationError> {
    let above_min = if r.min_inclusive {
        v >= r.min
    } else {
        v > r.min
    };
    if v.is_finite() && above_min && v <= r.max {
        Ok(())
    } else {
        Err(ValidationError::OutOfRange {
            param,
            range: r.text,
            value: v.to_string(),
        })
    }
}

/// The prompt text (`bytes` in all) fits `limit`: checked before any tokenizing.
pub(crate) fn check_prompt_bytes(
    bytes: usize,
    limit: usize,
    param: &'static str,
) -> Result<(), ValidationError> {
    if bytes > limit {
        return Err(ValidationError::PromptTooLong {
            bytes,
            limit,
            param,
        });
    }
    Ok(())
}

pub(crate) fn validate_generation(
    m: &ModelEntry,
    c: GenerationParams,
    prompts: Vec<Vec<u32>>,
    max_tokens: Option<usize>,
    logprobs: Option<usize>,
    api: Endpoint,
    forced: Option<super::structured::GrammarRequest>,
) -> Result<ValidGeneration, ValidationError> {
    let asked = super::structured::requested_grammar(&c)?;
    if let (Some(f), Some(a)) = (&forced, &asked) {
        return Err(ValidationError::Grammar {
            message: format!(
                "tool_choice {} constrains the answer already; drop {}",
                if f.param == "tool_choice" {
                    "required or a named function"
                } else {
                    f.param
                },
                a.param
            ),
            param: a.param,
        });
    }
    let grammar = match forced.or(asked) {
        Some(req) => Some(m.grammars.compile(&m.tokenizer, &req)?),
        None => None,
    };
    let n = c.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ValidationError::ChoicesOutOfRange(n));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(ValidationError::EmptyPrompt);
    }
    if prompts.len() * n > MAX_SEQUENCES {
        return Err(ValidationError::TooManySequences {
            prompts: prompts.len(),
            n,
        });
    }
    for p in &prompts {
        check_vocab(p, m.tokenizer.vocab_size().max(1), "prompt")?;
    }
    let room = m.max_context.saturating_sub(longest);
    if room == 0 {
        return Err(ValidationError::PromptFillsContext {
            prompt: longest,
            context: m.max_context,
            param: api.prompt_param(),
        });
    }
    let max_tokens = max_tokens.unwrap_or(room.min(4096));
    if max_tokens == 0 || max_tokens > room {
        return Err(ValidationError::MaxTokens {
            max_tokens,
            room,
            context: m.max_context,
            prompt: longest,
        });
    }
    let sequences = prompts.len() * n;
    let token_limit = m.max_context.saturating_mul(MAX_CONTEXTS_PER_REQUEST);
    if sequences * max_tokens > token_limit {
        return Err(ValidationError::TooManyTokens {
            sequences,
            max_tokens,
            limit: token_limit,
        });
    }
    let vocab = m.tokenizer.vocab_size().max(1);
    let mut logit_bias = Vec::new();
    for (k, v) in c.logit_bias.unwrap_or_default() {
        let id: u32 = k.parse().map_err(|_| ValidationError::LogitBiasKey(k))?;
        check_vocab(&[id], vocab, "logit_bias")?;
        in_range("logit_bias", v, LOGIT_BIAS)?;
        logit_bias.push((id, v));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    in_range("temperature", temperature, TEMPERATURE)?;
    let top_p = c.top_p.unwrap_or(1.0);
    in_range("top_p", top_p, TOP_P)?;
    let min_p = c.min_p.unwrap_or(0.0);
    in_range("min_p", min_p, MIN_P)?;
    let presence_penalty = c.presence_penalty.unwrap_or(0.0);
    in_range("presence_penalty", presence_penalty, PENALTY)?;
    let frequency_penalty = c.frequency_penalty.unwrap_or(0.0);
    in_range("frequency_penalty", frequency_penalty, PENALTY)?;
    let repetition_penalty = c.repetition_penalty.unwrap_or(1.0);
    in_range("repetition_penalty", repetition_penalty, REPETITION_PENALTY)?;
    let top_k = c.top_k.unwrap_or(0);
    if top_k < -1 {
        return Err(ValidationError::OutOfRange {
            param: "top_k",
            range: "-1, 0 (all tokens) or positive",
            value: top_k.to_string(),
        });
    }
    let sampling = SamplingParams {
        temperature,
        top_p,
        top_k: top_k.max(0) as usize,
        min_p,
        seed: c.seed,
        presence_penalty,
        frequency_penalty,
        repetition_penalty,
        logit_bias,
    };
    novastack_engine::validate::sampling(&sampling)
        .map_err(|e| ValidationError::engine(e, None))?;
    if logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(ValidationError::TopLogprobs(api.logprobs_param()));
    }
    let stops = match c.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if stops.len() > 4 {
        return Err(ValidationError::TooManyStops);
    }
    if let Some(s) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ValidationError::StopTooLong {
            bytes: s.len(),
            limit: MAX_STOP_BYTES,
        });
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
            grammar,
        },
        stops,
        stream: c.stream.unwrap_or(false),
        include_usage: c
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        tools: None,
    })
}

/// Text from a string or an array of `{"type": "text", "text": ...}` parts.
/// `message` is the message's index, for errors.
fn message_text(content: &Value, message: usize) -> Result<String, ValidationError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    (kind, _) => Err(ValidationError::ContentPart {
                        at: format!("messages[{message}].content[{i}]"),
                        kind: kind.map_or("(none)".into(), |k| format!("`{k}`")),
                    }),
                }
            })
            .collect(),
        _ => Err(ValidationError::ContentType),
    }
}

/// Checks every message (an object with a known role) and flattens its content to text,
/// for the chat template.
pub(crate) fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ValidationError> {
    if messages.is_empty() {
        return Err(ValidationError::NoMessages);
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let obj = m.as_object().ok_or(ValidationError::MessageNotObject)?;
            let role = obj.get("role").and_then(Value::as_str);
            if role.and_then(Role::parse).is_none() {
                return Err(ValidationError::Role(format!("{:?}", obj.get("role"))));
            }
            let mut out = obj.clone();
            out.insert(
                "content".into(),
                Value::String(message_text(obj.get("content").unwrap_or(&Value::Null), i)?),
            );
            Ok(Value::Object(out))
        })
        .collect()
}

/// Bytes of message text (after [`normalize_messages`]): what the prompt cap counts.
pub(crate) fn content_bytes(messages: &[Value]) -> usize {
    messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_str))
        .map(str::len)
        .sum()
}

/// Every id of `ids` is a token of a vocabulary of `vocab` entries.
pub(crate) fn check_vocab(
    ids: &[u32],
    vocab: usize,
    param: &'static str,
) -> Result<(), ValidationError> {
    novastack_engine::validate::tokens_in_vocabulary(ids, vocab)
        .map_err(|e| ValidationError::engine(e, Some(param)))
}

/// The chat template or tokenizer refused the input given as `param`.
pub(crate) fn tokenize_error(
    param: &'static str,
) -> impl Fn(novastack_models::Error) -> ValidationError {
    move |e| ValidationError::Tokenize {
        message: e.to_string(),
        param,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_parts_equal_the_plain_string_and_an_image_part_is_named() {
        let plain = normalize_messages(&[json!({"role": "user", "content": "Hello there"})]);
        let parts = normalize_messages(&[json!({"role": "user", "content": [
            {"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]})]);
        assert_eq!(plain.unwrap(), parts.unwrap());
        let image = json!({"role": "user", "content": [{"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]});
        let err =
            normalize_messages(&[json!({"role": "system", "content": "x"}), image]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("messages[1].content[1]")
                && msg.contains("`image_url`")
                && msg.contains("text only"),
            "{msg}"
        );
        assert_eq!(err.param(), Some("messages"));
    }
}
