//! DeepSeek-V3 and Kimi-K2 (`DeepseekV3ForCausalLM`; Kimi's `model_type` is `kimi_k2`):
//! the Llama-style pre-norm block with multi-head latent attention
//! (`crate::layers::latent_attention`: q LoRA or a plain `q_proj`, the latent cache,
//! interleaved rope, YaRN with its softmax-scale correction) and DeepSeek's MoE: sigmoid
//! scores, `e_score_correction_bias` for selection only, group-limited top-k
//! (`n_group` / `topk_group`), `routed_scaling_factor`, shared experts, and dense MLP
//! layers before `first_k_dense_replace`. Experts are `mlp.experts.{e}.{gate,up,down}_proj`,
//! the router `mlp.gate` (with its bias), the shared experts `mlp.shared_experts`. The
//! multi-token-prediction layer that released checkpoints store as layer
//! `num_hidden_layers` is not read. The config rules live in `crate::config`
//! (`MlaConfig`, `MoeConfig`).

use crate::registry::Family;
use novastack_kernels::Backend;

/// The registry's entry for this family.
pub fn family<B: Backend + 'static>() -> Family<B> {
    Family {
        name: "deepseek_v3",
        hf_architectures: &["DeepseekV3ForCausalLM"],
        gguf_architectures: &[],
        load_hf: super::llama::load_hf::<B>,
        load_gguf: None,
    }
}
