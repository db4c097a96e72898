//! Mixtral (`MixtralForCausalLM`): the Mistral block (sliding window where configured)
//! with a sparse MoE feed-forward: softmax over all experts, top-k (2 in the released
//! models), always renormalized. Experts are `block_sparse_moe.experts.{e}.{w1,w3,w2}`
//! (gate, up, down), the router `block_sparse_moe.gate`.

use crate::registry::Family;
use novastack_kernels::Backend;

/// The registry's entry for this family.
pub fn family<B: Backend + 'static>() -> Family<B> {
    Family {
        name: "mixtral",
        hf_architectures: &["MixtralForCausalLM"],
        gguf_architectures: &[],
        load_hf: super::llama::load_hf::<B>,
        load_gguf: None,
    }
}
