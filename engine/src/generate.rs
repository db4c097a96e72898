//! Single-sequence generation: prefill (chunked), then decode token by token over a
//! paged KV cache whose blocks this sequence owns.

use crate::error::{Error, Result};
use crate::request::FinishReason;
use crate::sampler::{Sampler, SamplingParams};
use novastack_kernels::Backend;
use novastack_models::{ForwardInput, Llama};

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub block_size: usize,
    /// Tokens per prefill step.
    pub prefill_chunk: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 16,
            sampling: SamplingParams::default(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            block_size: 16,
            prefill_chunk: 512,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
}

/// One sequence's step: `tokens` at positions `start..`, logits for the last one.
fn sequence_step(
    tokens: &[u32],
    start: usize,
    block_table: &[u32],
    block_size: usize,
) -> ForwardInput {
    let mut input = ForwardInput::default();
    input.push_seq(tokens, start, block_table.to_vec(), block_size, true);
    input
}

/// Generates up to `max_tokens` tokens after `prompt`. `on_token` sees each token as it
/// is sampled. Stops at an eos/stop id unless `ignore_eos` (stop ids still stop).
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    eos_token_ids: &[u32],
    params: &GenerateParams,
    mut on_token: impl FnMut(u32),
) -> Result<GenerateOutput> {
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt is empty".into()));
    }
    let vocab = model.config.vocab_size;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the vocabulary (size {vocab})"
        )));
    }
    let total = prompt.len() + params.max_tokens;
    if total > model.max_positions() {
        return Err(Error::Invalid(format!(
            "prompt ({} tokens) plus max_tokens ({}) is {total}, over the model's context of {}",
            prompt.len(),
            params.max_tokens,
            model.max_positions()
        )));
    }
    let bs = params.block_size.max(1);
    let num_blocks = total.div_ceil(bs).max(1);
    let mut kv = model.new_kv_cache(num_blocks, bs)?;
    let block_table: Vec<u32> = (0..num_blocks as u32).collect();
    let mut sampler = Sampler::new(params.sampling.clone())?;

    let chunk = params.prefill_chunk.max(1);
    let mut logits = Vec::new();
    for start in (0..prompt.len()).step_by(chunk) {
        let end = (start + chunk).min(prompt.len());
        let step = sequence_step(&prompt[start..end], start, &block_table, bs);
        logits = model.forward(&step, &mut kv)?;
    }
    let mut out = Vec::new();
    let mut finish = FinishReason::Length;
    while out.len() < params.max_tokens {
        let tok = sampler.sample(&logits);
        out.push(tok);
        on_token(tok);
        let is_eos = !params.ignore_eos && eos_token_ids.contains(&tok);
        if is_eos || params.stop_token_ids.contains(&tok) {
            finish = FinishReason::Stop;
            break;
        }
        if out.len() == params.max_tokens {
            break;
        }
        let pos = prompt.len() + out.len() - 1;
        let step = sequence_step(&[tok], pos, &block_table, bs);
        logits = model.forward(&step, &mut kv)?;
    }
    Ok(GenerateOutput {
        token_ids: out,
        finish_reason: finish,
    })
}
