//! Generation for one prompt: a thin loop over [`Engine::step`], the same scheduler,
//! sampler and KV cache code the server runs, with a cache sized for this one
//! sequence. Prefill runs in chunks of `prefill_chunk` tokens, then one token per step.

use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Result};
use crate::request::{FinishReason, RequestParams};
use crate::sampler::SamplingParams;
use crate::scheduler::SchedulerConfig;
use crate::validate;
use crate::Buckets;
use novastack_kernels::Backend;
use novastack_models::CausalLm;

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    /// Sampling, with its penalties and logit bias applied as for any engine request.
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

/// Generates up to `max_tokens` tokens after `prompt`. `on_token` sees each token as it
/// is sampled. Stops at an eos/stop id unless `ignore_eos` (stop ids still stop).
pub fn generate<B: Backend, M: CausalLm<B> + ?Sized>(
    model: &M,
    prompt: &[u32],
    eos_token_ids: &[u32],
    params: &GenerateParams,
    mut on_token: impl FnMut(u32),
) -> Result<GenerateOutput> {
    // The engine checks these too; checked first here so that a prompt with several
    // faults reports the same one it always has.
    validate::prompt_not_empty(prompt)?;
    validate::tokens_in_vocabulary(prompt, model.vocab_size())?;
    validate::fits_context(prompt.len(), params.max_tokens, model.max_positions())?;
    validate::sampling(&params.sampling)?;
    if params.max_tokens == 0 {
        return Ok(GenerateOutput {
            token_ids: Vec::new(),
            finish_reason: FinishReason::Length,
        });
    }
    let block_size = params.block_size.max(1);
    let total = prompt.len() + params.max_tokens;
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_num_batched_tokens: params.prefill_chunk.max(1),
            max_num_seqs: 1,
            max_model_len: model.max_positions(),
            buckets: Buckets::off(),
            ..Default::default()
        },
        num_blocks: total.div_ceil(block_size).max(1),
        block_size,
    };
    let mut engine = Engine::new(model, eos_token_ids.to_vec(), config)?;
    let request = RequestParams {
        max_tokens: params.max_tokens,
        sampling: params.sampling.clone(),
        stop_token_ids: params.stop_token_ids.clone(),
        ignore_eos: params.ignore_eos,
        ..Default::default()
    };
    engine.add_request(prompt.to_vec(), request, 0.0)?;
    let mut out = GenerateOutput {
        token_ids: Vec::new(),
        finish_reason: FinishReason::Length,
    };
    while engine.has_work() {
        for ev in engine.step(0.0)? {
            if let Some(tok) = ev.token {
                out.token_ids.push(tok);
                on_token(tok);
            }
            match ev.finished {
                Some(FinishReason::Error) => {
                    return Err(Error::Step(ev.error.unwrap_or_default()));
                }
                Some(reason) => out.finish_reason = reason,
                None => {}
            }
        }
    }
    Ok(out)
}
