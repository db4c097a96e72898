//! The mixture-of-experts and latent-attention parts of a `config.json`: each family's
//! expert count, routing rule and dense layers ([`MoeConfig`]), DeepSeek-V3's expert
//! groups and shared experts, and its latent attention ([`MlaConfig`]), with
//! transformers' defaults for what a config omits. Errors are `(field, message)`.

use super::{Architecture, MlaConfig, MoeConfig, MoeNaming, RawConfig};
use novastack_kernels::{GroupLimit, MoeScoring};

/// The experts of a MoE family, with transformers' defaults for what a config omits.
pub(super) fn moe_config(
    raw: &RawConfig,
    arch: Architecture,
) -> std::result::Result<Option<MoeConfig>, (&'static str, String)> {
    let n = raw.num_hidden_layers;
    // (experts, top_k, expert width, scoring, renormalize, correction bias, naming)
    let (experts, top_k, width, scoring, renormalize, bias, naming) = match arch {
        Architecture::Qwen3Moe => (
            raw.num_experts.or(raw.num_local_experts).unwrap_or(128),
            raw.num_experts_per_tok.unwrap_or(8),
            raw.moe_intermediate_size.unwrap_or(768),
            MoeScoring::Softmax,
            raw.norm_topk_prob.unwrap_or(false),
            false,
            MoeNaming::Qwen,
        ),
        Architecture::Mixtral => (
            raw.num_local_experts.or(raw.num_experts).unwrap_or(8),
            raw.num_experts_per_tok.unwrap_or(2),
            raw.intermediate_size,
            MoeScoring::Softmax,
            true,
            false,
            MoeNaming::BlockSparse,
        ),
        Architecture::MiniMaxM2 => {
            if let Some(f) = raw.scoring_func.as_deref().filter(|f| *f != "sigmoid") {
                return Err((
                    "scoring_func",
                    format!("{f:?} is not supported for MiniMax-M2 (sigmoid)"),
                ));
            }
            (
                raw.num_local_experts.or(raw.num_experts).unwrap_or(256),
                raw.num_experts_per_tok.unwrap_or(8),
                raw.intermediate_size,
                MoeScoring::Sigmoid,
                true,
                raw.use_routing_bias.unwrap_or(true),
                MoeNaming::BlockSparse,
            )
        }
        Architecture::DeepseekV3 => (
            raw.n_routed_experts
                .or(raw.num_local_experts)
                .unwrap_or(256),
            raw.num_experts_per_tok.unwrap_or(8),
            raw.moe_intermediate_size.unwrap_or(2048),
            MoeScoring::Sigmoid,
            raw.norm_topk_prob.unwrap_or(true),
            true,
            MoeNaming::DeepSeek,
        ),
        _ => return Ok(None),
    };
    let field = if raw.num_experts.is_some() {
        "num_experts"
    } else {
        "num_local_experts"
    };
    if experts == 0 || experts > novastack_kernels::moe::MAX_EXPERTS {
        return Err((
            field,
            format!(
                "{experts} experts (1..={} supported)",
                novastack_kernels::moe::MAX_EXPERTS
            ),
        ));
    }
    if top_k == 0 || top_k > experts {
        return Err((
            "num_experts_per_tok",
            format!("{top_k} must be in 1..={experts} (the expert count)"),
        ));
    }
    if width == 0 {
        return Err(("moe_intermediate_size", "must be positive".into()));
    }
    let sparse_layers = match arch {
        Architecture::Qwen3Moe => {
            let step = raw.decoder_sparse_step.unwrap_or(1);
            if step == 0 {
                return Err(("decoder_sparse_step", "must be positive".into()));
            }
            let dense = raw.mlp_only_layers.clone().unwrap_or_default();
            if let Some(&bad) = dense.iter().find(|&&i| i >= n) {
                return Err((
                    "mlp_only_layers",
                    format!("layer {bad} does not exist ({n} layers)"),
                ));
            }
            (0..n)
                .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
                .collect()
        }
        Architecture::DeepseekV3 => {
            let k = raw.first_k_dense_replace.unwrap_or(3);
            (0..n).map(|i| i >= k).collect()
        }
        _ => vec![true; n],
    };
    let (group_limit, shared_intermediate) = match arch {
        Architecture::DeepseekV3 => (
            deepseek_groups(raw, experts, top_k)?,
            match raw.n_shared_experts.unwrap_or(1) {
                0 => None,
                s => Some(s * width),
            },
        ),
        _ => (None, None),
    };
    Ok(Some(MoeConfig {
        num_experts: experts,
        top_k,
        expert_intermediate: width,
        scoring,
        renormalize,
        routed_scale: raw.routed_scaling_factor.unwrap_or(1.0) as f32,
        correction_bias: bias,
        sparse_layers,
        naming,
        group_limit,
        shared_intermediate,
    }))
}

/// DeepSeek-V3's expert groups: `n_group` groups of which the best `topk_group` stay
/// (`topk_method: noaux_tc`); none for a config without groups or with one group.
fn deepseek_groups(
    raw: &RawConfig,
    experts: usize,
    top_k: usize,
) -> std::result::Result<Option<GroupLimit>, (&'static str, String)> {
    if let Some(m) = raw.topk_method.as_deref().filter(|m| *m != "noaux_tc") {
        return Err((
            "topk_method",
            format!("{m:?} is not supported for DeepSeek-V3 (noaux_tc)"),
        ));
    }
    let groups = raw.n_group.unwrap_or(8);
    let top_groups = raw.topk_group.unwrap_or(4);
    if groups <= 1 {
        return Ok(None);
    }
    if !experts.is_multiple_of(groups) || experts / groups < 2 {
        return Err((
            "n_group",
            format!("{groups} groups must split {experts} experts into groups of 2 or more"),
        ));
    }
    if top_groups == 0 || top_groups > groups || top_groups * (experts / groups) < top_k {
        return Err((
            "topk_group",
            format!(
                "{top_groups} of {groups} groups must hold num_experts_per_tok {top_k} experts"
            ),
        ));
    }
    Ok(Some(GroupLimit { groups, top_groups }))
}

/// The latent attention of a DeepSeek-V3 config, with transformers' defaults.
///
/// `mscale` is the rope scaling's `mscale(factor, mscale_all_dim)` (1 without one): the
/// softmax scale is `qk_head_dim ** -0.5 * mscale * mscale`, as transformers computes it
/// in f64.
pub(super) fn mla_config(
    raw: &RawConfig,
    arch: Architecture,
    mscale: f64,
) -> std::result::Result<Option<MlaConfig>, (&'static str, String)> {
    if arch != Architecture::DeepseekV3 {
        return Ok(None);
    }
    if raw.attention_bias.unwrap_or(false) {
        return Err((
            "attention_bias",
            "latent attention with projection biases is not supported".into(),
        ));
    }
    // q_lora_rank: absent means transformers' default 1536; null means a plain q_proj.
    let q_lora_rank = match raw.q_lora_rank {
        None => Some(1536),
        Some(Some(0)) => return Err(("q_lora_rank", "must be positive or null".into())),
        Some(r) => r,
    };
    let m = MlaConfig {
        q_lora_rank,
        kv_lora_rank: raw.kv_lora_rank.unwrap_or(512),
        qk_nope_head_dim: raw.qk_nope_head_dim.unwrap_or(128),
        qk_rope_head_dim: raw.qk_rope_head_dim.unwrap_or(64),
        v_head_dim: raw.v_head_dim.unwrap_or(128),
        rope_interleave: raw.rope_interleave.unwrap_or(true),
        softmax_scale: 0.0,
    };
    for (field, v) in [
        ("kv_lora_rank", m.kv_lora_rank),
        ("qk_nope_head_dim", m.qk_nope_head_dim),
        ("qk_rope_head_dim", m.qk_rope_head_dim),
        ("v_head_dim", m.v_head_dim),
    ] {
        if v == 0 {
            return Err((field, "must be positive".into()));
        }
    }
    if !m.qk_rope_head_dim.is_multiple_of(2) {
        return Err((
            "qk_rope_head_dim",
            format!("{} must be even", m.qk_rope_head_dim),
        ));
    }
    Ok(Some(MlaConfig {
        softmax_scale: ((m.qk_head_dim() as f64).powf(-0.5) * mscale * mscale) as f32,
        ..m
    }))
}
