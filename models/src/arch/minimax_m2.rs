//! MiniMax-M2 (`MiniMaxM2ForCausalLM`): full attention with RMSNorm over the whole
//! projected q and k rows (not per head) and partial rotary (`rotary_dim` in released
//! configs, `partial_rotary_factor` in transformers 5), and a sparse MoE feed-forward
//! with sigmoid scores: the top-k are picked on score + `e_score_correction_bias`, weighed
//! by the scores alone, renormalized. Experts are `block_sparse_moe.experts.{e}.{w1,w3,w2}`.

use crate::registry::Family;
use novastack_kernels::Backend;

/// The registry's entry for this family.
pub fn family<B: Backend + 'static>() -> Family<B> {
    Family {
        name: "minimax_m2",
        hf_architectures: &["MiniMaxM2ForCausalLM"],
        gguf_architectures: &["minimax-m2"],
        load_hf: super::llama::load_hf::<B>,
        load_gguf: Some(super::llama::load_gguf::<B>),
    }
}
