//! GGUF files of the Llama-style decoders: `llama` (dense, or Mixtral when it has
//! experts), `qwen3moe` and `minimax-m2`. The config comes from the `{arch}.*` metadata,
//! and the tensor names are mapped to Hugging Face ones, with llama.cpp's q/k row
//! permutation undone for `llama`. Expert tensors are 3-D (`blk.N.ffn_gate_exps` is
//! `[experts, inter, hidden]`); they are offered under the stacked names the MoE layer
//! asks for first (`model.layers.N.mlp.experts.gate_proj.weight`,
//! `...block_sparse_moe.experts.w1.weight`), so each is dequantized once.

use super::dequant::GgmlType;
use super::file::{GgufFile, MetaValue};
use crate::config::{Architecture, ModelConfig, MoeConfig, MoeNaming, QkNorm, RopeScaling};
use crate::error::{Error, Result};
use crate::loader::TensorSource;
use novastack_kernels::{MoeScoring, StoredRows};

fn config_err(file: &GgufFile, key: &str, msg: &str) -> Error {
    Error::Config {
        path: file.path.clone(),
        field: key.into(),
        msg: msg.into(),
    }
}

fn req_u(file: &GgufFile, key: &str) -> Result<usize> {
    file.get(key)
        .and_then(MetaValue::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| config_err(file, key, "missing or not an integer"))
}

fn opt_u(file: &GgufFile, key: &str) -> Option<usize> {
    file.get(key)
        .and_then(MetaValue::as_u64)
        .map(|v| v as usize)
}

fn opt_f(file: &GgufFile, key: &str) -> Option<f64> {
    file.get(key).and_then(MetaValue::as_f64)
}

/// The GGUF architectures read here.
pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen3moe", "minimax-m2"];

/// Reads the model config from `general.architecture` and the `{arch}.*` keys.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| config_err(file, "general.architecture", "missing"))?;
    if !GGUF_ARCHITECTURES.contains(&arch) {
        return Err(Error::UnknownArchitecture {
            path: file.path.clone(),
            found: format!("GGUF architecture {arch:?}"),
            supported: GGUF_ARCHITECTURES.join(", "),
        });
    }
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = req_u(file, &k("embedding_length"))?;
    let num_heads = req_u(file, &k("attention.head_count"))?;
    let num_kv_heads = opt_u(file, &k("attention.head_count_kv")).unwrap_or(num_heads);
    if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(config_err(
            file,
            &k("attention.head_count_kv"),
            "must divide attention.head_count",
        ));
    }
    let head_dim = opt_u(file, &k("attention.key_length")).unwrap_or(hidden / num_heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(config_err(
            file,
            &k("attention.key_length"),
            "head size must be even",
        ));
    }
    let vocab = match opt_u(file, &k("vocab_size")) {
        Some(v) => v,
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .map(|a| a.len())
            .or_else(|| file.tensor_info("token_embd.weight").map(|t| t.shape()[0]))
            .ok_or_else(|| config_err(file, &k("vocab_size"), "missing, and no token list"))?,
    };
    let rope_scaling = match file
        .get(&k("rope.scaling.type"))
        .and_then(MetaValue::as_str)
    {
        None | Some("none") => RopeScaling::None,
        Some("linear") => RopeScaling::Linear {
            factor: opt_f(file, &k("rope.scaling.factor")).unwrap_or(1.0) as f32,
        },
        Some(other) => {
            return Err(config_err(
                file,
                &k("rope.scaling.type"),
                &format!("{other:?} is not supported"),
            ))
        }
    };
    let num_layers = req_u(file, &k("block_count"))?;
    let eos = file
        .get("tokenizer.ggml.eos_token_id")
        .and_then(MetaValue::as_u64);
    let rotary_dim = opt_u(file, &k("rope.dimension_count")).unwrap_or(head_dim);
    if rotary_dim == 0 || rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
        return Err(config_err(
            file,
            &k("rope.dimension_count"),
            &format!("{rotary_dim} must be even and in 2..={head_dim}"),
        ));
    }
    let experts = opt_u(file, &k("expert_count")).unwrap_or(0);
    let architecture = match arch {
        "qwen3moe" => Architecture::Qwen3Moe,
        "minimax-m2" => Architecture::MiniMaxM2,
        _ if experts > 0 => Architecture::Mixtral,
        _ => Architecture::Llama,
    };
    let moe = if experts > 0 || architecture != Architecture::Llama {
        Some(moe_from_gguf(file, arch, architecture, num_layers)?)
    } else {
        None
    };
    let qk_norm = match architecture {
        Architecture::Qwen3Moe => QkNorm::PerHead,
        Architecture::MiniMaxM2 => QkNorm::FullWidth,
        _ => QkNorm::None,
    };
    Ok(ModelConfig {
        mla: None,
        architecture,
        hidden_size: hidden,
        intermediate_size: req_u(file, &k("feed_forward_length"))?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size: vocab,
        rms_norm_eps: opt_f(file, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
        rope_theta: opt_f(file, &k("rope.freq_base")).unwrap_or(10000.0) as f32,
        rope_scaling,
        max_position_embeddings: opt_u(file, &k("context_length")).unwrap_or(4096),
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        qkv_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        o_bias: file.tensor_info("blk.0.attn_output.bias").is_some(),
        mlp_bias: false,
        qk_norm,
        rotary_dim,
        moe,
        sliding_window: vec![None; num_layers],
        dtype: None,
        bos_token_id: file
            .get("tokenizer.ggml.bos_token_id")
            .and_then(MetaValue::as_u64)
            .map(|v| v as u32),
        eos_token_ids: eos.map(|v| vec![v as u32]).unwrap_or_default(),
    })
}

/// The experts of a GGUF MoE file, as llama.cpp runs them: the chosen weights are always
/// renormalized (`build_moe_ffn(..., norm_w = true, ...)` for all three), softmax scores
/// except MiniMax-M2's sigmoid (or as `expert_gating_func` says: 1 softmax, 2 sigmoid),
/// and `exp_probs_b` as the selection bias where the file has it.
fn moe_from_gguf(
    file: &GgufFile,
    arch: &str,
    architecture: Architecture,
    num_layers: usize,
) -> Result<MoeConfig> {
    let k = |s: &str| format!("{arch}.{s}");
    let num_experts = req_u(file, &k("expert_count"))?;
    let top_k = req_u(file, &k("expert_used_count"))?;
    if num_experts == 0 || num_experts > novastack_kernels::moe::MAX_EXPERTS {
        return Err(config_err(
            file,
            &k("expert_count"),
            &format!(
                "{num_experts} experts (1..={} supported)",
                novastack_kernels::moe::MAX_EXPERTS
            ),
        ));
    }
    if top_k == 0 || top_k > num_experts {
        return Err(config_err(
            file,
            &k("expert_used_count"),
            &format!("{top_k} must be in 1..={num_experts}"),
        ));
    }
    let expert_intermediate = opt_u(file, &k("expert_feed_forward_length"))
        .or_else(|| opt_u(file, &k("feed_forward_length")))
        .ok_or_else(|| config_err(file, &k("expert_feed_forward_length"), "missing"))?;
    let scoring = match opt_u(file, &k("expert_gating_func")) {
        Some(2) => MoeScoring::Sigmoid,
        Some(1) => MoeScoring::Softmax,
        Some(other) => {
            return Err(config_err(
                file,
                &k("expert_gating_func"),
                &format!("{other} is not supported (1 softmax, 2 sigmoid)"),
            ))
        }
        None if architecture == Architecture::MiniMaxM2 => MoeScoring::Sigmoid,
        None => MoeScoring::Softmax,
    };
    let routed_scale = opt_f(file, &k("expert_weights_scale"))
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0) as f32;
    Ok(MoeConfig {
        shared_intermediate: None,
        num_experts,
        top_k,
        expert_intermediate,
        scoring,
        renormalize: true,
        routed_scale,
        correction_bias: file.tensor_info("blk.0.exp_probs_b.bias").is_some(),
        sparse_layers: vec![true; num_layers],
        naming: if architecture == Architecture::Qwen3Moe {
            MoeNaming::Qwen
        } else {
            MoeNaming::BlockSparse
        },
        group_limit: None,
    })
}

/// Hugging Face tensor names over a GGUF file of a Llama-style decoder.
pub struct GgufLlamaSource<'a> {
    file: &'a GgufFile,
    num_heads: usize,
    num_kv_heads: usize,
    /// llama.cpp permutes q/k rows only for its `llama` architecture.
    permute_qk: bool,
}

impl<'a> GgufLlamaSource<'a> {
    pub fn new(file: &'a GgufFile, config: &ModelConfig) -> Self {
        GgufLlamaSource {
            file,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            permute_qk: matches!(
                config.architecture,
                Architecture::Llama | Architecture::Mixtral
            ),
        }
    }
}

/// The GGUF name of a Hugging Face tensor name, and whether its rows are permuted
/// (and over how many heads).
fn gguf_name(hf: &str) -> Option<(String, Option<bool>)> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), None));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let (gg, permute) = match name {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(true)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(false)),
        "self_attn.q_proj.bias" => ("attn_q.bias", Some(true)),
        "self_attn.k_proj.bias" => ("attn_k.bias", Some(false)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.v_proj.bias" => ("attn_v.bias", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "self_attn.o_proj.bias" => ("attn_output.bias", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        "self_attn.q_norm.weight" => ("attn_q_norm.weight", None),
        "self_attn.k_norm.weight" => ("attn_k_norm.weight", None),
        "mlp.gate.weight" | "block_sparse_moe.gate.weight" => ("ffn_gate_inp.weight", None),
        "block_sparse_moe.e_score_correction_bias" => ("exp_probs_b.bias", None),
        // The stacked expert tensors (see the module docs).
        "mlp.experts.gate_proj.weight" | "block_sparse_moe.experts.w1.weight" => {
            ("ffn_gate_exps.weight", None)
        }
        "mlp.experts.up_proj.weight" | "block_sparse_moe.experts.w3.weight" => {
            ("ffn_up_exps.weight", None)
        }
        "mlp.experts.down_proj.weight" | "block_sparse_moe.experts.w2.weight" => {
            ("ffn_down_exps.weight", None)
        }
        _ => return None,
    };
    Some((format!("blk.{layer}.{gg}"), permute))
}

/// Undoes llama.cpp's conversion permutation. Within each head of `head_dim` rows,
/// GGUF row `2j + i` holds Hugging Face row `i * head_dim / 2 + j` (i in {0, 1}).
pub fn unpermute_rows(data: &[f32], num_heads: usize, cols: usize) -> Vec<f32> {
    let rows = data.len() / cols.max(1);
    let head_dim = rows / num_heads.max(1);
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..num_heads {
        for i in 0..2 {
            for j in 0..half {
                let src = h * head_dim + 2 * j + i;
                let dst = h * head_dim + i * half + j;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The order of rows that undoes llama.cpp's permutation (see [`unpermute_rows`]):
/// row `i` of the Hugging Face layout is GGUF row `order[i]`.
fn unpermute_order(rows: usize, num_heads: usize) -> Vec<usize> {
    let head_dim = rows / num_heads.max(1);
    let half = head_dim / 2;
    let mut order: Vec<usize> = (0..rows).collect();
    for h in 0..num_heads {
        for i in 0..2 {
            for j in 0..half {
                order[h * head_dim + i * half + j] = h * head_dim + 2 * j + i;
            }
        }
    }
    order
}

impl GgufLlamaSource<'_> {
    /// The GGUF tensor for Hugging Face `name`, its shape checked, and the heads its rows
    /// are permuted over (if they are).
    fn info(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<(&super::file::TensorInfo, Option<usize>)> {
        let missing = || Error::MissingTensor {
            name: name.into(),
            looked_in: self.describe(),
        };
        let (gg, permute) = gguf_name(name).ok_or_else(missing)?;
        let info = self
            .file
            .tensor_info(&gg)
            .ok_or_else(|| Error::MissingTensor {
                name: format!("{gg} (for {name})"),
                looked_in: self.describe(),
            })?;
        if info.shape() != shape {
            return Err(Error::Shape {
                name: gg,
                path: self.file.path.clone(),
                expected: shape.to_vec(),
                found: info.shape(),
            });
        }
        let heads = permute.filter(|_| self.permute_qk).map(|is_q| {
            if is_q {
                self.num_heads
            } else {
                self.num_kv_heads
            }
        });
        Ok((info, heads))
    }
}

impl TensorSource for GgufLlamaSource<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (info, heads) = self.info(name, shape)?;
        let data = self.file.dequantize(info)?;
        Ok(match heads {
            Some(heads) => {
                let cols = if shape.len() == 2 { shape[1] } else { 1 };
                unpermute_rows(&data, heads, cols)
            }
            None => data,
        })
    }

    /// Every supported ggml type is kept as stored; permuted rows are reordered whole
    /// (a row is whole blocks).
    fn stored(&self, name: &str, n: usize, k: usize) -> Result<Option<StoredRows>> {
        let (info, heads) = self.info(name, &[n, k])?;
        let bytes = self.file.tensor_bytes(info)?;
        let ty = GgmlType::from_id(info.ggml_type).expect("checked by tensor_bytes");
        let Some(rows) = StoredRows::new(ty.format(), n, k, bytes.to_vec()) else {
            return Ok(None);
        };
        Ok(Some(match heads {
            Some(heads) => rows.reorder(&unpermute_order(n, heads), k),
            None => rows,
        }))
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|(g, _)| self.file.tensor_info(&g).is_some())
    }

    fn describe(&self) -> String {
        self.file.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): HF row h*hd + i*half + j
        // goes to GGUF row h*hd + 2j + i. Build that and invert it.
        let (heads, hd, cols) = (3, 8, 2);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..hd / 2 {
                    let src = h * hd + i * hd / 2 + j;
                    let dst = h * hd + 2 * j + i;
                    gguf[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, heads, cols), hf);
        let order = unpermute_order(heads * hd, heads);
        let by_order: Vec<f32> = order
            .iter()
            .flat_map(|&r| gguf[r * cols..(r + 1) * cols].to_vec())
            .collect();
        assert_eq!(by_order, hf);
    }

    #[test]
    fn names_map() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_proj.weight"),
            Some(("blk.3.attn_k.weight".into(), Some(false)))
        );
        assert_eq!(
            gguf_name("lm_head.weight"),
            Some(("output.weight".into(), None))
        );
        assert_eq!(gguf_name("model.layers.3.bogus"), None);
        assert_eq!(
            gguf_name("model.layers.1.block_sparse_moe.experts.w3.weight"),
            Some(("blk.1.ffn_up_exps.weight".into(), None))
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.gate.weight"),
            Some(("blk.0.ffn_gate_inp.weight".into(), None))
        );
    }
}
