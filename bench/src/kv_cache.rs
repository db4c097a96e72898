//! `bench kv-cache`: what a model's KV cache costs per token, and how many tokens fit in
//! a given memory. For a latent-attention model (DeepSeek-V3, Kimi-K2) it sets the latent
//! cache (one slot of `kv_lora_rank + qk_rope_head_dim` per layer) beside what per-head
//! keys and values would need (`heads x (qk_nope + qk_rope + v_head_dim)` per layer, the
//! expanded layout a server without a latent cache keeps). The latent figure is measured:
//! a small cache is allocated on the CPU backend and its buffers counted.

use anyhow::{Context, Result};
use clap::Args;
use novastack_kernels::{Backend, CpuBackend, Dtype};
use novastack_models::{KvCacheSpec, ModelConfig};
use std::path::PathBuf;

/// DeepSeek-V3's released config.json (the fields the cache depends on, and the MoE and
/// rope ones that the parser checks).
const DEEPSEEK_V3: &str = r#"{
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
  "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
  "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
  "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
  "num_experts_per_tok": 8, "first_k_dense_replace": 3, "norm_topk_prob": true,
  "num_nextn_predict_layers": 1, "vocab_size": 129280, "rms_norm_eps": 1e-6,
  "rope_theta": 10000, "max_position_embeddings": 163840,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
    "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
  "torch_dtype": "bfloat16"
}"#;

#[derive(Args, Debug)]
pub struct KvCacheArgs {
    /// A config.json (default: DeepSeek-V3's).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Memory for the KV cache, GiB (an MI250 GCD has 64).
    #[arg(long, default_value_t = 48.0)]
    pub memory_gib: f64,
    /// The cache's storage type: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct KvRow {
    pub layout: &'static str,
    pub bytes_per_token: u64,
    pub max_tokens: u64,
}

/// The cache's bytes per token as the allocator holds them: `blocks` blocks of 16
/// tokens allocated on the CPU backend (f32), scaled to `dtype`.
pub fn measured_bytes_per_token(spec: &KvCacheSpec, dtype: Dtype) -> Result<u64> {
    const BLOCKS: usize = 2;
    const BLOCK: usize = 16;
    let b = CpuBackend::new();
    let kv = spec.allocate(&b, BLOCKS, BLOCK)?;
    let values: usize = kv.layers.iter().map(|(k, v)| k.len() + v.len()).sum();
    debug_assert_eq!(b.dtype(&kv.layers[0].0), Dtype::F32);
    Ok((values / (BLOCKS * BLOCK) * dtype.size()) as u64)
}

/// The rows for config `c`: the cache novastack allocates, and for a latent-attention
/// model the per-head keys and values it replaces.
pub fn rows(c: &ModelConfig, dtype: Dtype, memory_bytes: f64) -> Result<Vec<KvRow>> {
    let spec = KvCacheSpec::from_config(c);
    let ours = measured_bytes_per_token(&spec, dtype)?;
    anyhow::ensure!(
        ours == spec.bytes_per_token(dtype) as u64,
        "the allocator holds {ours} bytes per token, the spec says {}",
        spec.bytes_per_token(dtype)
    );
    let fit = |b: u64| (memory_bytes / b.max(1) as f64) as u64;
    let mut out = vec![KvRow {
        layout: if c.mla.is_some() {
            "latent (novastack)"
        } else {
            "per-head K/V (novastack)"
        },
        bytes_per_token: ours,
        max_tokens: fit(ours),
    }];
    if let Some(m) = &c.mla {
        let per_head =
            (c.num_layers * c.num_heads * (m.qk_head_dim() + m.v_head_dim) * dtype.size()) as u64;
        out.push(KvRow {
            layout: "per-head K/V (expanded)",
            bytes_per_token: per_head,
            max_tokens: fit(per_head),
        });
    }
    Ok(out)
}

pub fn run(args: KvCacheArgs) -> Result<()> {
    let dtype = Dtype::parse(&args.dtype)
        .with_context(|| format!("--dtype {:?}: use bf16, f16 or f32", args.dtype))?;
    let (name, value): (String, serde_json::Value) = match &args.config {
        Some(p) => (
            p.display().to_string(),
            serde_json::from_slice(&std::fs::read(p).with_context(|| p.display().to_string())?)
                .with_context(|| p.display().to_string())?,
        ),
        None => ("DeepSeek-V3".into(), serde_json::from_str(DEEPSEEK_V3)?),
    };
    let c = ModelConfig::from_value(std::path::Path::new(&name), value)?;
    let memory = args.memory_gib * (1u64 << 30) as f64;
    let rows = rows(&c, dtype, memory)?;
    println!(
        "KV cache of {name} ({} layers, {dtype}) in {} GiB",
        c.num_layers, args.memory_gib
    );
    println!(
        "{:<26} {:>16} {:>14} {:>8}",
        "layout", "bytes/token", "max tokens", "ratio"
    );
    let first = rows[0].bytes_per_token as f64;
    for r in &rows {
        println!(
            "{:<26} {:>16} {:>14} {:>7.1}x",
            r.layout,
            r.bytes_per_token,
            r.max_tokens,
            r.bytes_per_token as f64 / first
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepseek_v3_latent_cache_is_the_formulas() {
        let v = serde_json::from_str(DEEPSEEK_V3).unwrap();
        let c = ModelConfig::from_value(std::path::Path::new("ds"), v).unwrap();
        let r = rows(&c, Dtype::Bf16, (1u64 << 30) as f64).unwrap();
        // 61 layers x (512 + 64) values x 2 bytes, against 61 x 128 x (192 + 128) x 2.
        assert_eq!(r[0].bytes_per_token, 61 * 576 * 2);
        assert_eq!(r[1].bytes_per_token, 61 * 128 * 320 * 2);
        assert_eq!(r[0].max_tokens, (1u64 << 30) / (61 * 576 * 2));
    }
}
