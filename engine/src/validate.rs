//! Request validation: one function per rule, each returning a typed [`RequestError`].
//! The engine checks them on admission; the HTTP edge can call the same functions
//! and map the variants to status codes. The messages are the ones clients have
//! always seen, word for word.

use crate::request::RequestId;
use crate::sampler::SamplingParams;
use thiserror::Error;

/// Why a request cannot be served as asked.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RequestError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} is outside the vocabulary (size {vocab_size})")]
    TokenOutsideVocabulary { token: u32, vocab_size: usize },
    #[error("prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is {total}, over the model's context of {max_context}")]
    OverContext {
        prompt_tokens: usize,
        max_tokens: usize,
        total: usize,
        max_context: usize,
    },
    #[error("the request needs {needed} KV blocks ({total} tokens) but the cache has only {available} blocks")]
    OverKvCache {
        needed: usize,
        total: usize,
        available: usize,
    },
    #[error("n must be at least 1")]
    ZeroSequences,
    #[error("temperature must be >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("duplicate request id {0}")]
    DuplicateId(RequestId),
    #[error(
        "the grammar was compiled for a vocabulary of {grammar} tokens, the model has {model}"
    )]
    GrammarVocabulary { grammar: usize, model: usize },
}

pub type Result<T> = std::result::Result<T, RequestError>;

/// A prompt has at least one token.
pub fn prompt_not_empty(prompt: &[u32]) -> Result<()> {
    if prompt.is_empty() {
        return Err(RequestError::EmptyPrompt);
    }
    Ok(())
}

/// Every token id is below `vocab_size`; the first one that is not is named.
pub fn tokens_in_vocabulary(tokens: &[u32], vocab_size: usize) -> Result<()> {
    match tokens.iter().find(|&&t| t as usize >= vocab_size) {
        Some(&token) => Err(RequestError::TokenOutsideVocabulary { token, vocab_size }),
        None => Ok(()),
    }
}

/// A grammar's masks cover exactly the model's logits.
pub fn grammar_vocabulary(grammar: usize, model: usize) -> Result<()> {
    if grammar != model {
        return Err(RequestError::GrammarVocabulary { grammar, model });
    }
    Ok(())
}

/// The prompt plus every token asked for fits the model's context.
pub fn fits_context(prompt_tokens: usize, max_tokens: usize, max_context: usize) -> Result<()> {
    let total = prompt_tokens + max_tokens;
    if total > max_context {
        return Err(RequestError::OverContext {
            prompt_tokens,
            max_tokens,
            total,
            max_context,
        });
    }
    Ok(())
}

/// `total` tokens fit a cache of `num_blocks` blocks of `block_size` even when the
/// request has it all to itself.
pub fn fits_kv_cache(total: usize, block_size: usize, num_blocks: usize) -> Result<()> {
    let needed = total.div_ceil(block_size.max(1));
    if needed > num_blocks {
        return Err(RequestError::OverKvCache {
            needed,
            total,
            available: num_blocks,
        });
    }
    Ok(())
}

/// At least one sequence per prompt.
pub fn num_sequences(n: usize) -> Result<()> {
    if n == 0 {
        return Err(RequestError::ZeroSequences);
    }
    Ok(())
}

/// Temperature, top-p and min-p are in range.
pub fn sampling(p: &SamplingParams) -> Result<()> {
    if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
        return Err(RequestError::Temperature(p.temperature));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(RequestError::TopP(p.top_p));
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return Err(RequestError::MinP(p.min_p));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_ones_clients_match() {
        let cases: Vec<(Result<()>, &str)> = vec![
            (prompt_not_empty(&[]), "the prompt is empty"),
            (
                tokens_in_vocabulary(&[1, 70, 100], 50),
                "token id 70 is outside the vocabulary (size 50)",
            ),
            (
                fits_context(10, 7, 16),
                "prompt (10 tokens) plus max_tokens (7) is 17, over the model's context of 16",
            ),
            (
                fits_kv_cache(30, 4, 6),
                "the request needs 8 KV blocks (30 tokens) but the cache has only 6 blocks",
            ),
            (num_sequences(0), "n must be at least 1"),
            (
                sampling(&SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                }),
                "temperature must be >= 0, got -1",
            ),
            (
                sampling(&SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                }),
                "top_p must be in (0, 1], got 0",
            ),
            (
                sampling(&SamplingParams {
                    min_p: 2.0,
                    ..Default::default()
                }),
                "min_p must be in [0, 1], got 2",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(r.unwrap_err().to_string(), want);
        }
        assert!(prompt_not_empty(&[0]).is_ok());
        assert!(tokens_in_vocabulary(&[49], 50).is_ok());
        assert!(fits_context(10, 6, 16).is_ok());
        assert!(fits_kv_cache(24, 4, 6).is_ok());
        assert!(num_sequences(1).is_ok());
        assert!(sampling(&SamplingParams::greedy()).is_ok());
    }
}
