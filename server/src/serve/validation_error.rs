//! Why a request is invalid: one variant per rule, so tests and callers match the rule
//! rather than its wording. Every variant is a 400 naming its field (`param`); the
//! conversion into [`ApiError`] is the only place that decides so.

use novastack_engine::RequestError;
use novastack_openai::ApiError;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub(crate) enum ValidationError {
    /// A field the server does not implement (yet).
    #[error("{message}")]
    Unsupported {
        message: &'static str,
        param: &'static str,
    },
    #[error("n must be between 1 and 16, got {0}")]
    ChoicesOutOfRange(usize),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{prompts} prompts x n={n} is {} sequences; at most 64 per request", prompts * n)]
    TooManySequences { prompts: usize, n: usize },
    #[error("the prompt is {prompt} tokens, the model's context window is {context}")]
    PromptFillsContext {
        prompt: usize,
        context: usize,
        /// `prompt` or `messages`, by endpoint.
        param: &'static str,
    },
    #[error("max_tokens {max_tokens} must be between 1 and {room}: the context window is {context} and the prompt is {prompt} tokens")]
    MaxTokens {
        max_tokens: usize,
        room: usize,
        context: usize,
        prompt: usize,
    },
    #[error("logit_bias key {0:?} is not a token id")]
    LogitBiasKey(String),
    /// One of the engine's own rules (sampling ranges, the vocabulary), checked here at
    /// the edge with the engine's function; `param` is the field it concerns.
    #[error("{error}")]
    Engine {
        error: RequestError,
        param: Option<&'static str>,
    },
    /// `logprobs` (completions) or `top_logprobs` (chat) over the limit.
    #[error("{0} must be at most 20")]
    TopLogprobs(&'static str),
    #[error("at most 4 stop sequences")]
    TooManyStops,
    #[error("each stop string must be at most {limit} bytes, got one of {bytes}")]
    StopTooLong { bytes: usize, limit: usize },
    /// A number outside the range the API accepts (non-finite numbers included).
    #[error("{param} must be {range}, got {value}")]
    OutOfRange {
        param: &'static str,
        range: &'static str,
        value: String,
    },
    #[error("{sequences} sequences x max_tokens {max_tokens} is {} tokens; at most {limit} per request (16 x the context window)", sequences * max_tokens)]
    TooManyTokens {
        sequences: usize,
        max_tokens: usize,
        limit: usize,
    },
    /// Refused before tokenizing: the prompt text alone cannot fit the context.
    #[error("the prompt is {bytes} bytes, over the limit of {limit} bytes (--max-prompt-bytes)")]
    PromptTooLong {
        bytes: usize,
        limit: usize,
        param: &'static str,
    },
    #[error("messages must not be empty")]
    NoMessages,
    #[error("each message must be an object")]
    MessageNotObject,
    /// The role as the request gave it (`None` when missing).
    #[error("invalid message role {0}")]
    Role(String),
    /// A content part that is not text: where it is, and its type.
    #[error("{at} is a content part of type {kind}, but this model takes text only; send `{{\"type\": \"text\", \"text\": ...}}` parts")]
    ContentPart { at: String, kind: String },
    #[error("message content must be a string or an array of parts")]
    ContentType,
    #[error("give exactly one of `prompt` and `messages`")]
    PromptOrMessages,
    /// An output constraint that is malformed, conflicting or cannot be enforced.
    #[error("{message}")]
    Grammar {
        message: String,
        param: &'static str,
    },
    /// The chat template or the tokenizer refused the input.
    #[error("{message}")]
    Tokenize {
        message: String,
        param: &'static str,
    },
}

impl ValidationError {
    /// An engine rule's failure, with the request field it concerns.
    pub(crate) fn engine(error: RequestError, param: Option<&'static str>) -> ValidationError {
        let param = match &error {
            RequestError::Temperature(_) => Some("temperature"),
            RequestError::TopP(_) => Some("top_p"),
            RequestError::MinP(_) => Some("min_p"),
            RequestError::ZeroSequences => Some("n"),
            _ => param,
        };
        ValidationError::Engine { error, param }
    }

    /// The request field at fault, if one is.
    pub(crate) fn param(&self) -> Option<&'static str> {
        use ValidationError::*;
        match self {
            Unsupported { param, .. }
            | Grammar { param, .. }
            | Tokenize { param, .. }
            | OutOfRange { param, .. }
            | PromptTooLong { param, .. }
            | PromptFillsContext { param, .. }
            | TopLogprobs(param) => Some(param),
            Engine { param, .. } => *param,
            ChoicesOutOfRange(_) => Some("n"),
            EmptyPrompt | TooManySequences { .. } | PromptOrMessages => Some("prompt"),
            NoMessages | MessageNotObject | Role(_) | ContentPart { .. } | ContentType => {
                Some("messages")
            }
            MaxTokens { .. } | TooManyTokens { .. } => Some("max_tokens"),
            LogitBiasKey(_) => Some("logit_bias"),
            TooManyStops | StopTooLong { .. } => Some("stop"),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> ApiError {
        ApiError::bad_request(e.to_string(), e.param())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_a_400_that_names_its_field() {
        let e: ApiError = ValidationError::MaxTokens {
            max_tokens: 9,
            room: 4,
            context: 10,
            prompt: 6,
        }
        .into();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert_eq!(
            e.message,
            "max_tokens 9 must be between 1 and 4: the context window is 10 and the prompt is 6 tokens"
        );
        let e: ApiError = ValidationError::TooManySequences { prompts: 5, n: 16 }.into();
        assert_eq!(
            e.message,
            "5 prompts x n=16 is 80 sequences; at most 64 per request"
        );
        let e: ApiError = ValidationError::engine(
            RequestError::TokenOutsideVocabulary {
                token: 7,
                vocab_size: 5,
            },
            Some("tokens"),
        )
        .into();
        assert_eq!(
            (e.message.as_str(), e.param.as_deref()),
            (
                "token id 7 is outside the vocabulary (size 5)",
                Some("tokens")
            )
        );
        let e = ValidationError::engine(RequestError::TopP(0.0), None);
        assert_eq!(e.param(), Some("top_p"));
        let e: ApiError = ValidationError::OutOfRange {
            param: "temperature",
            range: "between 0 and 2",
            value: "inf".into(),
        }
        .into();
        assert_eq!(
            (e.message.as_str(), e.param.as_deref()),
            (
                "temperature must be between 0 and 2, got inf",
                Some("temperature")
            )
        );
    }
}
