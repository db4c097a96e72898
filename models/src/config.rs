//! Hugging Face `config.json` into [`ModelConfig`].
//!
//! Accepts both the hub layout (`rope_theta`, `rope_scaling`, `torch_dtype`) and the
//! transformers-5 layout (`rope_parameters`, `dtype`).

mod experts;
mod rope;

use crate::error::{read_json, Error, Result};
use novastack_kernels::{Dtype, GroupLimit, MoeScoring};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Mistral,
    Qwen3Moe,
    Mixtral,
    MiniMaxM2,
    /// DeepSeek-V3 and Kimi-K2 (`model_type` `kimi_k2`): multi-head latent attention.
    DeepseekV3,
}

impl Architecture {
    const ALL: [(&'static str, Architecture); 8] = [
        ("LlamaForCausalLM", Architecture::Llama),
        ("Qwen2ForCausalLM", Architecture::Qwen2),
        ("Qwen3ForCausalLM", Architecture::Qwen3),
        ("MistralForCausalLM", Architecture::Mistral),
        ("Qwen3MoeForCausalLM", Architecture::Qwen3Moe),
        ("MixtralForCausalLM", Architecture::Mixtral),
        ("MiniMaxM2ForCausalLM", Architecture::MiniMaxM2),
        ("DeepseekV3ForCausalLM", Architecture::DeepseekV3),
    ];

    pub fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    pub fn hf_name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    pub fn supported() -> String {
        Self::ALL.map(|(n, _)| n).join(", ")
    }
}

/// How rotary frequencies are derived from the base ones.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
    /// YaRN (Qwen2.5 / Qwen3 long context, DeepSeek-V3): frequencies blended between
    /// interpolated (`/ factor`) and original along a ramp over the dimensions whose
    /// wavelength `beta_fast` / `beta_slow` rotations bound, and cos / sin scaled by
    /// `attention_factor` (given, or from `factor`, `mscale` and `mscale_all_dim`).
    Yarn {
        factor: f32,
        original_max_position_embeddings: f32,
        beta_fast: f32,
        beta_slow: f32,
        /// Round the ramp's ends outwards (transformers' `truncate`, default true).
        truncate: bool,
        attention_factor: f32,
    },
}

/// Where the q/k RMSNorm applies (before rope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Per head, over `head_dim` (Qwen3, Qwen3-MoE).
    PerHead,
    /// Over the whole projected q (and k) row (MiniMax-M2).
    FullWidth,
}

/// How a family names a MoE layer's weights in its checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeNaming {
    /// `mlp.gate.weight`, `mlp.experts.{e}.{gate,up,down}_proj.weight` (Qwen-MoE).
    Qwen,
    /// `block_sparse_moe.gate.weight`, `block_sparse_moe.experts.{e}.{w1,w3,w2}.weight`
    /// (Mixtral, MiniMax-M2; gate, up, down), plus `block_sparse_moe.e_score_correction_bias`.
    BlockSparse,
    /// As [`MoeNaming::Qwen`], with the selection bias at
    /// `mlp.gate.e_score_correction_bias` and the shared experts at
    /// `mlp.shared_experts.{gate,up,down}_proj.weight` (DeepSeek-V3).
    DeepSeek,
}

/// The mixture-of-experts part of a config.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    /// Width of each expert's gated MLP.
    pub expert_intermediate: usize,
    pub scoring: MoeScoring,
    /// Renormalize the chosen weights to sum to 1.
    pub renormalize: bool,
    /// `routed_scaling_factor` (1 when absent).
    pub routed_scale: f32,
    /// A per-expert `e_score_correction_bias` that shifts selection.
    pub correction_bias: bool,
    /// Per layer: a MoE layer (true) or a dense MLP of `intermediate_size` (false).
    pub sparse_layers: Vec<bool>,
    pub naming: MoeNaming,
    /// DeepSeek-V3's group-limited selection (`n_group`, `topk_group`), where the
    /// router has it.
    pub group_limit: Option<GroupLimit>,
    /// Width of the always-on shared experts' MLP (DeepSeek's `n_shared_experts` x
    /// `moe_intermediate_size`), where the layer has them.
    pub shared_intermediate: Option<usize>,
}

/// Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// The query's low-rank width (`q_a_proj`, `q_a_layernorm`, `q_b_proj`), or `None`
    /// for a plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// The cached latent's width.
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    /// The roped part of each query head and of the shared key (`head_dim` too).
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// The checkpoint stores the roped dimensions in interleaved pairs.
    pub rope_interleave: bool,
    /// The softmax scale: `(nope + rope)^-1/2`, times `mscale(factor, mscale_all_dim)²`
    /// under YaRN.
    pub softmax_scale: f32,
}

impl MlaConfig {
    /// Width of a query (and key) head.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// One latent-cache slot: the latent, then the roped shared key.
    pub fn slot_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// Everything the decoder needs, resolved and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection carries a bias (Llama `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm on q and k before rope (Qwen3 per head, MiniMax-M2 over the row).
    pub qk_norm: QkNorm,
    /// The rotated part of each head (`head_dim` unless partial rotary).
    pub rotary_dim: usize,
    /// The experts, for a mixture-of-experts family.
    pub moe: Option<MoeConfig>,
    /// Multi-head latent attention, in place of grouped-query attention.
    pub mla: Option<MlaConfig>,
    /// Sliding attention window per layer (`None` = full attention).
    pub sliding_window: Vec<Option<usize>>,
    pub dtype: Option<Dtype>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    max_position_embeddings: Option<usize>,
    /// Pretraining context, outside the rope block (Phi-3 style; YaRN reads it).
    original_max_position_embeddings: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    partial_rotary_factor: Option<f64>,
    rotary_dim: Option<usize>,
    // Mixture of experts.
    num_experts: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<usize>,
    mlp_only_layers: Option<Vec<usize>>,
    routed_scaling_factor: Option<f64>,
    scoring_func: Option<String>,
    use_routing_bias: Option<bool>,
    // DeepSeek-V3 / Kimi-K2.
    n_routed_experts: Option<usize>,
    n_shared_experts: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    topk_method: Option<String>,
    first_k_dense_replace: Option<usize>,
    /// Absent (`None`: transformers' default 1536) or given (`Some`, null included).
    #[serde(default, deserialize_with = "present")]
    q_lora_rank: Option<Option<usize>>,
    kv_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    rope_interleave: Option<bool>,
    quantization_config: Option<Value>,
}

/// A field that may be null: `Some(None)` when given as null, `None` (the default)
/// when absent.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Token ids given as an int, a list of ints, or null.
pub(crate) fn token_ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Value::Array(a) => a.iter().flat_map(token_ids).collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = read_json(path)?;
        Self::from_value(path, value)
    }

    pub fn from_value(path: &Path, value: Value) -> Result<Self> {
        let raw: RawConfig = serde_json::from_value(value).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            error: e,
        })?;
        let err = |field: &str, msg: String| Error::Config {
            path: path.to_path_buf(),
            field: field.into(),
            msg,
        };
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .ok_or_else(|| err("architectures", "missing or empty".into()))?;
        let architecture =
            Architecture::from_hf_name(&arch_name).ok_or_else(|| Error::UnknownArchitecture {
                path: path.to_path_buf(),
                found: arch_name.clone(),
                supported: Architecture::supported(),
            })?;
        if let Some(act) = &raw.hidden_act {
            if act != "silu" && act != "swish" {
                return Err(err(
                    "hidden_act",
                    format!("{act:?} is not supported (only silu)"),
                ));
            }
        }
        if raw.quantization_config.is_some() {
            return Err(err(
                "quantization_config",
                "quantized checkpoints are not supported yet (use a bf16 or f32 export)".into(),
            ));
        }
        let num_heads = raw.num_attention_heads;
        // Latent attention has no kv heads of its own: every query head reads the latent.
        let num_kv_heads = if architecture == Architecture::DeepseekV3 {
            num_heads
        } else {
            raw.num_key_value_heads.unwrap_or(num_heads)
        };
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(err(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        let (rope_theta, rope_scaling, mscale) = rope::parse_rope(&raw, path)?;
        let mla = experts::mla_config(&raw, architecture, mscale)
            .map_err(|(field, msg)| err(field, msg))?;
        let head_dim = match raw.head_dim {
            // transformers: a DeepSeek-V3 config's head_dim is its rope width.
            _ if mla.is_some() => mla.as_ref().map_or(0, |m| m.qk_rope_head_dim),
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(num_heads) => raw.hidden_size / num_heads,
            None => {
                return Err(err(
                    "head_dim",
                    "absent and hidden_size is not a multiple of num_attention_heads".into(),
                ))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(err(
                "head_dim",
                format!("{head_dim} must be even and positive"),
            ));
        }
        for (field, v) in [
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("vocab_size", raw.vocab_size),
        ] {
            if v == 0 {
                return Err(err(field, "must be positive".into()));
            }
        }
        let sliding_window = sliding_windows(&raw, architecture);
        let rotary_dim = rotary_dim(&raw, head_dim).map_err(|(field, msg)| err(field, msg))?;
        let moe =
            experts::moe_config(&raw, architecture).map_err(|(field, msg)| err(field, msg))?;
        let qk_norm = match architecture {
            Architecture::Qwen3 | Architecture::Qwen3Moe => QkNorm::PerHead,
            Architecture::MiniMaxM2 => QkNorm::FullWidth,
            _ => QkNorm::None,
        };
        let dtype_str = raw.dtype.as_deref().or(raw.torch_dtype.as_deref());
        Ok(ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2 || raw.attention_bias.unwrap_or(false),
            o_bias: architecture != Architecture::Qwen2 && raw.attention_bias.unwrap_or(false),
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm,
            rotary_dim,
            moe,
            mla,
            sliding_window,
            dtype: dtype_str.and_then(Dtype::parse),
            bos_token_id: raw
                .bos_token_id
                .as_ref()
                .and_then(|v| token_ids(v).first().copied()),
            eos_token_ids: raw.eos_token_id.as_ref().map(token_ids).unwrap_or_default(),
        })
    }
}

/// The rotated width of each head: `partial_rotary_factor` (in `rope_parameters` or at
/// the top level, transformers 5) or `rotary_dim` (released MiniMax-M2 configs), as
/// transformers resolves them: `int(head_dim * factor)`.
fn rotary_dim(
    raw: &RawConfig,
    head_dim: usize,
) -> std::result::Result<usize, (&'static str, String)> {
    let in_params = raw
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(Value::as_f64);
    let (field, dim) = match (in_params.or(raw.partial_rotary_factor), raw.rotary_dim) {
        (Some(f), _) => ("partial_rotary_factor", (head_dim as f64 * f) as usize),
        (None, Some(d)) => ("rotary_dim", d),
        (None, None) => return Ok(head_dim),
    };
    if dim == 0 || dim > head_dim || dim % 2 != 0 {
        return Err((
            field,
            format!("gives a rotary width of {dim}, which must be even and in 2..={head_dim}"),
        ));
    }
    Ok(dim)
}

/// Per-layer sliding windows, following transformers: explicit `layer_types` win;
/// Mistral slides on every layer when `sliding_window` is set; Qwen2/3 only with
/// `use_sliding_window`, from layer `max_window_layers` on.
fn sliding_windows(raw: &RawConfig, arch: Architecture) -> Vec<Option<usize>> {
    let n = raw.num_hidden_layers;
    let Some(w) = raw
        .sliding_window
        .filter(|_| arch != Architecture::MiniMaxM2)
    else {
        // MiniMax-M2 attends over everything (transformers ignores its window).
        return vec![None; n];
    };
    if let Some(types) = &raw.layer_types {
        if types.len() == n {
            return types
                .iter()
                .map(|t| (t == "sliding_attention").then_some(w))
                .collect();
        }
    }
    match arch {
        Architecture::Mistral | Architecture::Mixtral => vec![Some(w); n],
        // Qwen3-MoE: every layer, `max_window_layers` unused.
        Architecture::Qwen3Moe if raw.use_sliding_window.unwrap_or(false) => vec![Some(w); n],
        Architecture::Qwen2 | Architecture::Qwen3 if raw.use_sliding_window.unwrap_or(false) => {
            let from = raw.max_window_layers.unwrap_or(0);
            (0..n).map(|i| (i >= from).then_some(w)).collect()
        }
        _ => vec![None; n],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "torch_dtype": "bfloat16", "eos_token_id": [1, 2]
        })
    }

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_value(Path::new("config.json"), v)
    }

    /// A DeepSeek-V3 config as released (hub layout, Kimi-K2's `model_type`, an MTP
    /// layer, keys we do not read): latent attention, group-limited sigmoid routing,
    /// shared experts, dense first layers, YaRN's softmax correction.
    fn deepseek() -> Value {
        json!({
            "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2",
            "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
            "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
            "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
            "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc",
            "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "moe_layer_freq": 1,
            "first_k_dense_replace": 3, "norm_topk_prob": true, "scoring_func": "sigmoid",
            "num_nextn_predict_layers": 1, "vocab_size": 129280, "rms_norm_eps": 1e-6,
            "rope_theta": 10000, "max_position_embeddings": 163840,
            "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
            "torch_dtype": "bfloat16", "aux_loss_alpha": 0.001, "ep_size": 1
        })
    }

    #[test]
    fn deepseek_v3_latent_attention_and_routing() {
        let c = parse(deepseek()).unwrap();
        assert_eq!(c.architecture, Architecture::DeepseekV3);
        let m = c.mla.clone().unwrap();
        assert_eq!(
            (m.q_lora_rank, m.kv_lora_rank, m.slot_dim(), m.qk_head_dim()),
            (Some(1536), 512, 576, 192)
        );
        assert!(m.rope_interleave);
        // head_dim is the rope width (transformers), every head its own kv head.
        assert_eq!((c.head_dim, c.rotary_dim, c.num_kv_heads), (64, 64, 128));
        let ms = 0.1 * 40f64.ln() + 1.0;
        let want = (ms * ms / 192f64.sqrt()) as f32;
        assert!(
            (m.softmax_scale - want).abs() <= 1e-7,
            "{}",
            m.softmax_scale
        );
        // mscale == mscale_all_dim: cos and sin are not scaled.
        assert!(
            matches!(c.rope_scaling, RopeScaling::Yarn { attention_factor, .. } if attention_factor == 1.0)
        );
        let moe = c.moe.unwrap();
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.expert_intermediate),
            (256, 8, 2048)
        );
        assert_eq!(moe.scoring, MoeScoring::Sigmoid);
        assert!(moe.renormalize && moe.correction_bias);
        assert_eq!(moe.routed_scale, 2.5);
        assert_eq!(
            moe.group_limit,
            Some(GroupLimit {
                groups: 8,
                top_groups: 4
            })
        );
        assert_eq!(moe.shared_intermediate, Some(2048));
        assert_eq!(moe.naming, MoeNaming::DeepSeek);
        assert_eq!(moe.sparse_layers.iter().filter(|s| !**s).count(), 3);
        assert!(!moe.sparse_layers[2] && moe.sparse_layers[3]);

        // DeepSeek-V2-Lite style: no q LoRA, one group; no rope scaling.
        let mut v = deepseek();
        v["q_lora_rank"] = Value::Null;
        v["n_group"] = json!(1);
        v["rope_scaling"] = Value::Null;
        let c = parse(v).unwrap();
        assert_eq!(c.mla.as_ref().unwrap().q_lora_rank, None);
        assert_eq!(c.mla.unwrap().softmax_scale, 192f64.powf(-0.5) as f32);
        assert_eq!(c.moe.unwrap().group_limit, None);
        // The transformers-5 layout gives the same scale.
        let mut v = deepseek();
        let mut rp = v["rope_scaling"].clone();
        rp["rope_type"] = json!("yarn");
        rp["rope_theta"] = json!(10000);
        v.as_object_mut().unwrap().remove("rope_scaling");
        v["rope_parameters"] = rp;
        assert_eq!(parse(v).unwrap().mla.unwrap().softmax_scale, want);
        // Absent means transformers' default.
        let mut v = deepseek();
        v.as_object_mut().unwrap().remove("q_lora_rank");
        assert_eq!(parse(v).unwrap().mla.unwrap().q_lora_rank, Some(1536));
    }

    #[test]
    fn deepseek_v3_errors_name_the_field() {
        for (key, value, field) in [
            (
                "quantization_config",
                json!({"quant_method": "fp8"}),
                "quantization_config",
            ),
            ("topk_method", json!("greedy"), "topk_method"),
            ("n_group", json!(3), "n_group"),
            ("topk_group", json!(0), "topk_group"),
            ("q_lora_rank", json!(0), "q_lora_rank"),
            ("qk_rope_head_dim", json!(7), "qk_rope_head_dim"),
            ("qk_nope_head_dim", json!(0), "qk_nope_head_dim"),
            ("attention_bias", json!(true), "attention_bias"),
        ] {
            let mut v = deepseek();
            v[key] = value;
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains(field), "{key}: {e}");
        }
    }

    /// YaRN as transformers 5.24 reads it: the attention factor from `mscale` /
    /// `mscale_all_dim` (bits from `_compute_yarn_parameters`), else from `factor`; the
    /// top-level `original_max_position_embeddings` before the rope block's; a missing
    /// `factor` as the ratio of the contexts; defaults for the betas and `truncate`.
    #[test]
    fn yarn_rope_parameters() {
        let mut v = base();
        v["max_position_embeddings"] = json!(8192);
        v["rope_parameters"] = json!({
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
            "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 0.707
        });
        match parse(v.clone()).unwrap().rope_scaling {
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => {
                assert_eq!((factor, original_max_position_embeddings), (40.0, 4096.0));
                assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
                assert_eq!(attention_factor.to_bits(), 0x3f8a_f915);
            }
            other => panic!("{other:?}"),
        }
        v["original_max_position_embeddings"] = json!(2048);
        v["rope_parameters"] = json!({"rope_type": "yarn", "factor": null, "truncate": false});
        match parse(v.clone()).unwrap().rope_scaling {
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                truncate,
                attention_factor,
                ..
            } => {
                assert_eq!((factor, original_max_position_embeddings), (4.0, 2048.0));
                assert!(!truncate);
                // 0.1 ln 4 + 1, as transformers' get_mscale(4).
                assert_eq!(attention_factor.to_bits(), 0x3f91_be9c);
            }
            other => panic!("{other:?}"),
        }
        v["rope_parameters"] = json!({"rope_type": "yarn", "factor": 0.5});
        let e = parse(v).unwrap_err().to_string();
        assert!(
            e.contains("rope_parameters") && e.contains("at least 1"),
            "{e}"
        );
    }

    #[test]
    fn hub_layout() {
        let c = parse(base()).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.dtype, Some(Dtype::Bf16));
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.sliding_window, vec![None, None]);
    }

    #[test]
    fn transformers5_layout_with_llama3_rope() {
        let mut v = base();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("torch_dtype");
        o.insert("dtype".into(), json!("float16"));
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64}),
        );
        let c = parse(v).unwrap();
        assert_eq!(c.rope_theta, 10000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.dtype, Some(Dtype::F16));
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = base();
        v["architectures"] = json!(["GPTNeoXForCausalLM"]);
        let e = parse(v).unwrap_err().to_string();
        assert!(
            e.contains("GPTNeoXForCausalLM") && e.contains("LlamaForCausalLM"),
            "{e}"
        );

        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");

        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "longrope", "factor": 4.0});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("longrope") && e.contains("rope_scaling"), "{e}");

        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(parse(v)
            .unwrap_err()
            .to_string()
            .contains("num_key_value_heads"));
    }

    #[test]
    fn sliding_window_rules() {
        let mut v = base();
        v["architectures"] = json!(["MistralForCausalLM"]);
        v["sliding_window"] = json!(32);
        assert_eq!(parse(v).unwrap().sliding_window, vec![Some(32), Some(32)]);

        let mut v = base();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["sliding_window"] = json!(32);
        v["use_sliding_window"] = json!(false);
        let c = parse(v).unwrap();
        assert_eq!(c.sliding_window, vec![None, None]);
        assert!(c.qkv_bias && !c.o_bias);
    }

    #[test]
    fn moe_configs_in_both_spellings_with_dense_layers() {
        let mut v = base();
        v["architectures"] = json!(["Qwen3MoeForCausalLM"]);
        v["num_hidden_layers"] = json!(4);
        v["num_experts"] = json!(16);
        v["num_experts_per_tok"] = json!(4);
        v["moe_intermediate_size"] = json!(32);
        v["decoder_sparse_step"] = json!(2);
        v["mlp_only_layers"] = json!([3]);
        let c = parse(v.clone()).unwrap();
        let m = c.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.top_k, m.expert_intermediate), (16, 4, 32));
        assert_eq!(m.sparse_layers, vec![false, true, false, false]);
        assert!(!m.renormalize && m.naming == MoeNaming::Qwen);
        assert_eq!(c.qk_norm, QkNorm::PerHead);
        // transformers 5 spells the count num_local_experts.
        let o = v.as_object_mut().unwrap();
        o.remove("num_experts");
        o.insert("num_local_experts".into(), json!(8));
        o.insert("norm_topk_prob".into(), json!(true));
        let c = parse(v.clone()).unwrap();
        assert_eq!(c.moe.as_ref().unwrap().num_experts, 8);
        assert!(c.moe.unwrap().renormalize);
        v["mlp_only_layers"] = json!([9]);
        let e = parse(v.clone()).unwrap_err().to_string();
        assert!(e.contains("mlp_only_layers") && e.contains('9'), "{e}");
        v["mlp_only_layers"] = json!([]);
        v["num_experts_per_tok"] = json!(9);
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("num_experts_per_tok"), "{e}");
    }

    #[test]
    fn minimax_m2_partial_rotary_and_sigmoid_router() {
        let mut v = base();
        v["architectures"] = json!(["MiniMaxM2ForCausalLM"]);
        v["head_dim"] = json!(32);
        v["rotary_dim"] = json!(16);
        v["num_local_experts"] = json!(8);
        v["num_experts_per_tok"] = json!(2);
        v["sliding_window"] = json!(32);
        let c = parse(v.clone()).unwrap();
        assert_eq!((c.rotary_dim, c.qk_norm), (16, QkNorm::FullWidth));
        assert_eq!(c.sliding_window, vec![None, None]);
        let m = c.moe.unwrap();
        assert!(m.scoring == MoeScoring::Sigmoid && m.renormalize && m.correction_bias);
        // transformers 5: partial_rotary_factor in rope_parameters wins over rotary_dim.
        v["rope_parameters"] =
            json!({"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 0.25});
        assert_eq!(parse(v.clone()).unwrap().rotary_dim, 8);
        v["rope_parameters"] =
            json!({"rope_type": "default", "rope_theta": 5e6, "partial_rotary_factor": 2.0});
        let e = parse(v.clone()).unwrap_err().to_string();
        assert!(e.contains("partial_rotary_factor"), "{e}");
        v["rope_parameters"] = Value::Null;
        v["scoring_func"] = json!("softmax");
        assert!(parse(v).unwrap_err().to_string().contains("scoring_func"));
    }
}
