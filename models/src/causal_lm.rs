//! The model seam: what the engine and the tools need from a causal language model,
//! whatever its family. A step's batch goes in ([`ForwardInput`]), one row of logits
//! (or its argmax) per requested row comes out, and the model's paged KV cache is
//! read and written on the way. The model declares its cache ([`KvCacheSpec`]); the
//! caller sizes and allocates it.

use crate::error::Result;
use crate::graph::GraphOptions;
use crate::input::ForwardInput;
use crate::kv_spec::KvCacheSpec;
use novastack_kernels::Dtype;
use novastack_kernels::{Backend, KvCache};

pub trait CausalLm<B: Backend>: Send + Sync {
    /// The backend the weights live on.
    fn backend(&self) -> &B;

    /// Size of the vocabulary: token ids are below it and logits rows are this wide.
    fn vocab_size(&self) -> usize;

    /// Longest sequence (prompt plus output) the model can position.
    fn max_positions(&self) -> usize;

    /// What the model caches per token, layer by layer.
    fn kv_cache_spec(&self) -> KvCacheSpec;

    /// Bytes of KV cache per token when the backend stores `storage`.
    fn kv_bytes_per_token(&self, storage: Dtype) -> usize {
        self.kv_cache_spec().bytes_per_token(storage)
    }

    /// A paged KV cache of `num_blocks` blocks of `block_size` tokens for this model.
    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        self.kv_cache_spec()
            .allocate(self.backend(), num_blocks, block_size)
    }

    /// Runs one step and returns logits `[logits_indices.len(), vocab]` on the host.
    fn forward(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<f32>>;

    /// Runs one step for greedy decoding: the argmax of each logits row, computed where
    /// the logits are (on a GPU only the ids come back).
    fn forward_greedy(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<u32>>;

    /// Which decode steps run through graphs, where the backend has them
    /// (`crate::graph`); a model without graphs ignores it.
    fn set_graph_options(&self, options: GraphOptions) {
        let _ = options;
    }

    /// Parameter counts: all of them, and those one token runs through (a MoE model's
    /// non-expert weights plus `top_k` experts per MoE layer; all of them when dense).
    fn parameters(&self) -> Parameters;

    /// The parameters every forward pass so far has read, summed: per pass, every weight
    /// of a dense model; the non-expert weights plus the experts its tokens chose (each
    /// once) for a MoE model. The difference over a run of decode steps is what their
    /// memory-bandwidth bound is computed from. A GPU backend counts the experts on the
    /// device, so this waits for it: call it around a run, not inside one.
    fn parameters_read(&self) -> Result<u64>;

    /// As [`CausalLm::parameters_read`], in bytes of the weights as the backend stores
    /// them (bf16, quantized blocks, f32); `None` where the backend does not say.
    fn weight_bytes_read(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// A model's parameter counts (see [`CausalLm::parameters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parameters {
    pub total: u64,
    pub active_per_token: u64,
}

/// A pointer to a model is a model: a `Box<dyn CausalLm>` (what the registry builds)
/// and a borrowed model (an engine for one run over a model the caller keeps).
impl<B: Backend, P> CausalLm<B> for P
where
    P: std::ops::Deref + Send + Sync,
    P::Target: CausalLm<B>,
{
    fn backend(&self) -> &B {
        (**self).backend()
    }
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn max_positions(&self) -> usize {
        (**self).max_positions()
    }
    fn kv_cache_spec(&self) -> KvCacheSpec {
        (**self).kv_cache_spec()
    }
    fn kv_bytes_per_token(&self, storage: Dtype) -> usize {
        (**self).kv_bytes_per_token(storage)
    }
    fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        (**self).new_kv_cache(num_blocks, block_size)
    }
    fn forward(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<f32>> {
        (**self).forward(input, kv)
    }
    fn forward_greedy(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<u32>> {
        (**self).forward_greedy(input, kv)
    }
    fn set_graph_options(&self, options: GraphOptions) {
        (**self).set_graph_options(options)
    }
    fn parameters(&self) -> Parameters {
        (**self).parameters()
    }
    fn parameters_read(&self) -> Result<u64> {
        (**self).parameters_read()
    }
    fn weight_bytes_read(&self) -> Result<Option<u64>> {
        (**self).weight_bytes_read()
    }
}
