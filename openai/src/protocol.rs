//! The OpenAI wire protocol: request and response bodies of the chat, completion,
//! model and tokenize endpoints, as `/openapi.json` describes them. Shared by the
//! server (which fills them from engine output) and the gateway.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use utoipa::ToSchema;

/// Seconds since the Unix epoch: the `created` field of models and completions.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Integer fields also accept integral floats (`4.0`), as JSON Schema's `integer`
/// does; `4.5`, or a number out of the field's range, is refused naming the field.
pub mod integral {
    use serde::de::{Deserialize, Deserializer, Error, Unexpected};

    pub fn option<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i128>,
    {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        let (wide, unexpected) = if let Some(u) = n.as_u64() {
            (Some(i128::from(u)), Unexpected::Unsigned(u))
        } else if let Some(i) = n.as_i64() {
            (Some(i128::from(i)), Unexpected::Signed(i))
        } else {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let whole = f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38;
            (whole.then_some(f as i128), Unexpected::Float(f))
        };
        let Some(wide) = wide else {
            return Err(D::Error::invalid_value(unexpected, &"an integer"));
        };
        T::try_from(wide)
            .map(Some)
            .map_err(|_| D::Error::invalid_value(unexpected, &"an integer in the field's range"))
    }
}

/// A string or a list of strings.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Sampling fields shared by both endpoints (OpenAI's plus vLLM's extensions).
#[derive(Deserialize, Default, ToSchema)]
pub struct GenerationParams {
    /// A served model name or alias (default: the first model).
    pub model: Option<String>,
    #[serde(default, deserialize_with = "integral::option")]
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Choices per prompt, 1 to 16.
    #[serde(default, deserialize_with = "integral::option")]
    pub n: Option<usize>,
    /// Up to 4 stop strings; matched across token boundaries, never included.
    pub stop: Option<OneOrMany>,
    #[serde(default, deserialize_with = "integral::option")]
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) to a bias added to its logit.
    pub logit_bias: Option<HashMap<String, f32>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    /// vLLM extension: sample from the k most likely tokens (0 or -1: all).
    #[serde(default, deserialize_with = "integral::option")]
    pub top_k: Option<i64>,
    /// vLLM extension.
    pub min_p: Option<f32>,
    /// vLLM extension.
    pub repetition_penalty: Option<f32>,
    /// vLLM extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// vLLM extension: lower runs first.
    #[serde(default, deserialize_with = "integral::option")]
    pub priority: Option<i32>,
    /// vLLM extension: extra token ids that end a sequence.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Chat only: `[{"type": "function", "function": {"name", "description",
    /// "parameters"}}]`, given to the chat template; calls come back in
    /// `message.tool_calls`.
    pub tools: Option<Value>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
    /// "json_schema": {"name", "schema", "strict"}}`: the output is constrained to it.
    pub response_format: Option<Value>,
    /// vLLM extension: the output is JSON valid against this schema (an object, or a
    /// string holding one).
    pub guided_json: Option<Value>,
    /// vLLM extension: the whole output matches this regular expression.
    pub guided_regex: Option<String>,
    /// vLLM extension: the output is exactly one of these strings.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM extension: the output follows this grammar (Lark, or GBNF/EBNF with `::=`).
    pub guided_grammar: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and empty `choices` before `[DONE]`.
    pub include_usage: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct ChatRequest {
    /// `{"role", "content"}` objects; content is a string or an array of text parts.
    pub messages: Vec<Value>,
    /// `none`, `auto` (the default with `tools`), `required`, or
    /// `{"type": "function", "function": {"name": ...}}`.
    pub tool_choice: Option<Value>,
    /// `false`: at most one call per answer.
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, deserialize_with = "integral::option")]
    pub max_completion_tokens: Option<usize>,
    pub logprobs: Option<bool>,
    /// 0 to 20 alternatives per token (with `logprobs: true`).
    #[serde(default, deserialize_with = "integral::option")]
    pub top_logprobs: Option<usize>,
}

/// A string, strings, token ids, or lists of token ids.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Top alternatives per token, 0 to 20.
    #[serde(default, deserialize_with = "integral::option")]
    pub logprobs: Option<usize>,
    /// Not supported: `true` is rejected with 400.
    pub echo: Option<bool>,
    /// Not supported: rejected with 400.
    pub suffix: Option<String>,
    /// vLLM extension: logprob tokens as `token_id:N`.
    pub return_tokens_as_token_ids: Option<bool>,
}

/// The body of `POST /v1/chat/completions`: the chat fields and the common ones, side
/// by side in one object (the handler parses the two parts separately so errors name
/// the exact field; `/openapi.json` shows one flat object).
#[derive(Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    #[serde(flatten)]
    #[schema(inline)]
    pub chat: ChatRequest,
    #[serde(flatten)]
    #[schema(inline)]
    pub common: GenerationParams,
}

/// The body of `POST /v1/completions` (one flat object, as above).
#[derive(Deserialize, ToSchema)]
pub struct CompletionBody {
    #[serde(flatten)]
    #[schema(inline)]
    pub completion: CompletionRequest,
    #[serde(flatten)]
    #[schema(inline)]
    pub common: GenerationParams,
}

#[derive(Deserialize, ToSchema)]
pub struct TokenizeRequest {
    /// A served model name or alias (read with the common fields).
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    /// A served model name or alias (read with the common fields).
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

#[derive(Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    pub max_model_len: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Serialize, ToSchema, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ChatMessage {
    pub role: Role,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// A function the model called, with its arguments as JSON text.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq, Default)]
pub struct ToolCall {
    pub id: String,
    /// `function`
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// A new tool-call id in OpenAI's shape (`call_` and 24 hex digits), for calls a model
/// or an upstream gave without one.
pub fn new_call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

#[derive(Serialize, ToSchema, Clone, Debug, PartialEq, Default)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// A piece of a streamed tool call: the id, type and name come first, then the
/// arguments in fragments, all with the call's `index`.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Serialize, ToSchema, Clone, Debug, PartialEq, Default)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessage,
    /// `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}` when requested.
    pub logprobs: Option<Value>,
    /// `stop`, `length`, or `abort`.
    pub finish_reason: FinishReason,
    /// vLLM's extension: the stop string that ended the choice (absent otherwise). The
    /// Anthropic translation reports it as `stop_sequence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Serialize, ToSchema, Default)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<FinishReason>,
    /// vLLM's extension: the stop string that ended the choice (absent otherwise). The
    /// Anthropic translation reports it as `stop_sequence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// One `data:` event of a streamed chat completion.
#[derive(Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Only on the last chunk (empty `choices`) when `stream_options.include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    /// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` when requested.
    pub logprobs: Option<Value>,
    /// Null in stream chunks until the choice ends.
    pub finish_reason: Option<FinishReason>,
    /// vLLM's extension: the stop string that ended the choice (absent otherwise). The
    /// Anthropic translation reports it as `stop_sequence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// A text completion, or (streaming) one `data:` event of it.
#[derive(Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// `text_completion`
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// OpenAI's error shape.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// Why a choice ended, as the wire spells it.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// The request was cancelled.
    Abort,
    /// The request failed (streams end with an error chunk).
    Error,
    /// The model called a tool (an upstream's answer, relayed by the gateway).
    ToolCalls,
    /// Content was withheld by a filter (an upstream's answer, relayed by the gateway).
    ContentFilter,
    /// The deprecated form of `tool_calls` (relayed by the gateway).
    FunctionCall,
}

impl FinishReason {
    /// The finish reason spelled `s` on the wire, if it is one of OpenAI's.
    pub fn parse(s: &str) -> Option<FinishReason> {
        Some(match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "abort" => FinishReason::Abort,
            "error" => FinishReason::Error,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            "function_call" => FinishReason::FunctionCall,
            _ => return None,
        })
    }
}

/// A chat message's author.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role named `s`, if it is one the API accepts.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_and_roles_serialize_as_the_wire_spells_them() {
        for (f, s) in [
            (FinishReason::Stop, "stop"),
            (FinishReason::Length, "length"),
            (FinishReason::Abort, "abort"),
            (FinishReason::Error, "error"),
            (FinishReason::ToolCalls, "tool_calls"),
            (FinishReason::ContentFilter, "content_filter"),
            (FinishReason::FunctionCall, "function_call"),
        ] {
            assert_eq!(serde_json::to_value(f).unwrap(), s);
            assert_eq!(FinishReason::parse(s), Some(f));
        }
        assert_eq!(FinishReason::parse("eos"), None);
        for r in ["system", "developer", "user", "assistant", "tool"] {
            let role = Role::parse(r).unwrap();
            assert_eq!(serde_json::to_value(role).unwrap(), r);
        }
        assert_eq!(Role::parse("robot"), None);
    }

    #[test]
    fn integer_fields_take_integral_floats_and_refuse_fractions() {
        let p: GenerationParams = serde_json::from_value(
            serde_json::json!({"max_tokens": 4.0, "n": 2, "seed": 7.0, "top_k": -1.0}),
        )
        .unwrap();
        assert_eq!(
            (p.max_tokens, p.n, p.seed, p.top_k),
            (Some(4), Some(2), Some(7), Some(-1))
        );
        let p: GenerationParams = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(p.max_tokens, None);
        for bad in [
            serde_json::json!({"max_tokens": 4.5}),
            serde_json::json!({"max_tokens": -1}),
            serde_json::json!({"max_tokens": "4"}),
            serde_json::json!({"priority": 1e20}),
        ] {
            let e = serde_json::from_value::<GenerationParams>(bad.clone())
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.to_string().contains("invalid"), "{e}");
        }
    }
}
