//! Qwen3-MoE (`Qwen3MoeForCausalLM`): the Qwen3 block (per-head q/k norm, explicit
//! `head_dim`) with a sparse MoE feed-forward: softmax top-k routing, renormalized when
//! `norm_topk_prob`; dense MLP layers where `mlp_only_layers` or `decoder_sparse_step`
//! put them. Experts are `mlp.experts.{e}.{gate,up,down}_proj`, the router `mlp.gate`.
//! The config rules live in `crate::config` (`MoeConfig`).

use crate::registry::Family;
use novastack_kernels::Backend;

/// The registry's entry for this family.
pub fn family<B: Backend + 'static>() -> Family<B> {
    Family {
        name: "qwen3_moe",
        hf_architectures: &["Qwen3MoeForCausalLM"],
        gguf_architectures: &["qwen3moe"],
        load_hf: super::llama::load_hf::<B>,
        load_gguf: Some(super::llama::load_gguf::<B>),
    }
}
