//! The Llama-style decoder: Llama, Mistral, Qwen2 (qkv bias) and Qwen3 (q/k norm), and
//! the mixture-of-experts families built on the same block (`qwen3_moe.rs`,
//! `mixtral.rs`, `minimax_m2.rs`), configured by [`ModelConfig`]. Each block is pre-norm
//! attention then a pre-norm feed-forward (a gated MLP, or a sparse MoE block where
//! `config.moe` says so), with residual adds; weight names mirror the Hugging Face
//! safetensors names (`model.layers.{i}.self_attn.q_proj.weight`, ...).

use crate::causal_lm::{CausalLm, Parameters};
use crate::config::{Architecture, ModelConfig, MoeNaming, QkNorm};
use crate::error::{Error, Result};
use crate::gguf::{config_from_gguf, GgufFile, GgufLlamaSource};
use crate::graph::{DecodeGraphs, GraphOptions};
use crate::input::ForwardInput;
use crate::kv_spec::KvCacheSpec;
use crate::layers::attention::{
    Attention, AttentionOptions, AttentionScratch, AttentionShape, KvLayer,
};
use crate::layers::latent_attention::{LatentAttention, LatentAttentionShape, LatentScratch};
use crate::layers::mlp::{GatedMlp, MlpScratch};
use crate::layers::moe::{MoeScratch, MoeShape, SparseMoe};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::RotaryEmbedding;
use crate::layers::{Pass, Weights};
use crate::loader::TensorSource;
use crate::registry::{Family, HfCheckpoint};
use crate::workspace::{Capacity, Workspace};
use novastack_kernels::{Backend, KvCache};

/// The registry's entry for this family.
pub fn family<B: Backend + 'static>() -> Family<B> {
    Family {
        name: "llama",
        hf_architectures: HF_ARCHITECTURES,
        gguf_architectures: &["llama"],
        load_hf: load_hf::<B>,
        load_gguf: Some(load_gguf::<B>),
    }
}

/// Builds the decoder of a GGUF file (`llama`, with or without experts, `qwen3moe`,
/// `minimax-m2`: see `crate::gguf::llama`).
pub fn load_gguf<B: Backend + 'static>(
    file: &GgufFile,
    backend: B,
) -> Result<Box<dyn CausalLm<B>>> {
    let config = config_from_gguf(file)?;
    let source = GgufLlamaSource::new(file, &config);
    Ok(Box::new(Llama::load(config, &source, backend)?) as Box<dyn CausalLm<B>>)
}

/// Builds the decoder of a Hugging Face folder: every family built on this decoder
/// loads through here (its config says which variant it is).
pub fn load_hf<B: Backend + 'static>(
    mut ckpt: HfCheckpoint<'_>,
    backend: B,
) -> Result<Box<dyn CausalLm<B>>> {
    let value = std::mem::take(&mut ckpt.config);
    let config = ModelConfig::from_value(&ckpt.config_path, value)?;
    let weights = ckpt.weights()?;
    Ok(Box::new(Llama::load(config, &weights, backend)?) as Box<dyn CausalLm<B>>)
}

/// The config.json `architectures` this family runs (the dense [`Architecture`] variants).
const HF_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
];

/// A block's feed-forward part.
enum FeedForward<B: Backend> {
    Dense(GatedMlp<B>),
    Sparse(SparseMoe<B>),
}

/// A block's attention: grouped-query over keys and values, or latent (DeepSeek-V3).
enum SelfAttention<B: Backend> {
    Gqa(Attention<B>),
    Latent(LatentAttention<B>),
}

impl<B: Backend> SelfAttention<B> {
    fn kv_spec(&self) -> crate::kv_spec::LayerKvSpec {
        match self {
            SelfAttention::Gqa(a) => a.kv_spec(),
            SelfAttention::Latent(a) => a.kv_spec(),
        }
    }
}

struct Block<B: Backend> {
    input_norm: RmsNorm<B>,
    attn: SelfAttention<B>,
    post_norm: RmsNorm<B>,
    ffn: FeedForward<B>,
}

pub struct Llama<B: Backend> {
    pub config: ModelConfig,
    backend: B,
    /// The token embedding, a matrix: also the head when tied.
    embed: B::Weight,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Weight>,
    norm: RmsNorm<B>,
    layers: Vec<Block<B>>,
    rope: RotaryEmbedding<B>,
    max_positions: usize,
    /// Activations, kept from step to step (and fixed for decode graphs).
    acts: Workspace<Activations<B>>,
    graphs: DecodeGraphs,
    params: ParamCount,
    /// Bytes of the matrices a pass reads, as stored (0 where the backend does not say).
    shared_bytes: u64,
    /// Forward passes run, and the backend's count of experts read when the model was
    /// built (`Backend::moe_experts_read`): what `parameters_read` counts from.
    passes: std::sync::atomic::AtomicU64,
    experts_read_at_load: u64,
}

/// Parameter counts derived from the config at load.
#[derive(Debug, Clone, Copy)]
struct ParamCount {
    total: u64,
    /// Everything but the routed experts.
    shared: u64,
    /// One routed expert of one layer.
    per_expert: u64,
    /// Routed experts one token uses, over all layers.
    active_experts: u64,
}

impl ParamCount {
    fn new(c: &ModelConfig) -> Self {
        let (h, v) = (c.hidden_size as u64, c.vocab_size as u64);
        let sh = attention_shape(c);
        let (q, kv) = (sh.q_dim() as u64, sh.kv_dim() as u64);
        let mut shared = v * h + h; // embedding, final norm
        if !c.tie_word_embeddings {
            shared += v * h;
        }
        let mut attn = (q + 2 * kv) * h + q * h + 2 * h;
        if let Some(m) = &c.mla {
            let (heads, r) = (c.num_heads as u64, m.kv_lora_rank as u64);
            let q_dim = heads * m.qk_head_dim() as u64;
            let q_params = match m.q_lora_rank {
                Some(ql) => ql as u64 * (h + 1 + q_dim),
                None => q_dim * h,
            };
            let kv_params = (r + m.qk_rope_head_dim as u64) * h
                + r
                + heads * (m.qk_nope_head_dim + m.v_head_dim) as u64 * r;
            attn = q_params + kv_params + heads * m.v_head_dim as u64 * h + 2 * h;
        }
        if c.qkv_bias {
            attn += q + 2 * kv;
        }
        if c.o_bias {
            attn += h;
        }
        attn += match c.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead => 2 * c.head_dim as u64,
            QkNorm::FullWidth => q + kv,
        };
        let inter = c.intermediate_size as u64;
        let dense = 3 * h * inter + if c.mlp_bias { 2 * inter + h } else { 0 };
        let (mut routed, mut per_expert, mut active_experts) = (0u64, 0u64, 0u64);
        for i in 0..c.num_layers {
            shared += attn;
            match &c.moe {
                Some(m) if m.sparse_layers[i] => {
                    let e = m.num_experts as u64;
                    per_expert = 3 * h * m.expert_intermediate as u64;
                    shared += e * h + if m.correction_bias { e } else { 0 };
                    shared += m.shared_intermediate.map_or(0, |si| 3 * h * si as u64);
                    routed += e * per_expert;
                    active_experts += m.top_k as u64;
                }
                _ => shared += dense,
            }
        }
        ParamCount {
            total: shared + routed,
            shared,
            per_expert,
            active_experts,
        }
    }
}

/// Every activation of a forward pass, for up to `rows` tokens and `logits_rows`
/// rows of logits.
struct Activations<B: Backend> {
    /// The residual stream.
    x: B::Buf,
    normed: B::Buf,
    /// Only with grouped-query attention.
    attn: Option<AttentionScratch<B>>,
    /// Only with latent attention.
    latent: Option<LatentScratch<B>>,
    proj: B::Buf,
    /// Only with a dense layer.
    mlp: Option<MlpScratch<B>>,
    /// Only with a MoE layer.
    moe: Option<MoeScratch<B>>,
    last: B::Buf,
    last_normed: B::Buf,
    logits: B::Buf,
}

impl<B: Backend> Activations<B> {
    fn new(b: &B, c: &ModelConfig, cap: Capacity) -> Result<Self> {
        let (n, m, h) = (cap.rows, cap.logits_rows, c.hidden_size);
        Ok(Activations {
            x: b.zeros(n * h)?,
            normed: b.zeros(n * h)?,
            attn: match c.mla {
                None => Some(attention_shape(c).scratch(b, n)?),
                Some(_) => None,
            },
            latent: match latent_shape(c) {
                Some(l) => Some(l.scratch(b, n)?),
                None => None,
            },
            proj: b.zeros(n * h)?,
            mlp: if has_dense_layer(c) {
                Some(MlpScratch::new(b, n, c.intermediate_size)?)
            } else {
                None
            },
            moe: match &c.moe {
                Some(m) => Some(MoeShape::new(h, m).scratch(b, n)?),
                None => None,
            },
            last: b.zeros(m * h)?,
            last_normed: b.zeros(m * h)?,
            logits: b.zeros(m * c.vocab_size)?,
        })
    }
}

impl<B: Backend> Llama<B> {
    /// Loads every weight from `src`, checking names and shapes.
    pub fn load(config: ModelConfig, src: &dyn TensorSource, backend: B) -> Result<Self> {
        let c = &config;
        let w = Weights::new(src, &backend);
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let shape = attention_shape(c);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let opts = AttentionOptions {
                qkv_bias: c.qkv_bias,
                o_bias: c.o_bias,
                qk_norm: c.qk_norm,
                norm_eps: eps,
                sliding_window: c.sliding_window.get(i).copied().flatten(),
            };
            let attn = match latent_shape(c) {
                Some(l) => SelfAttention::Latent(LatentAttention::load(
                    &w,
                    &format!("{p}.self_attn"),
                    l,
                    eps,
                )?),
                None => {
                    SelfAttention::Gqa(Attention::load(&w, &format!("{p}.self_attn"), shape, opts)?)
                }
            };
            layers.push(Block {
                input_norm: RmsNorm::load(&w, &format!("{p}.input_layernorm.weight"), h, eps)?,
                attn,
                post_norm: RmsNorm::load(
                    &w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                )?,
                ffn: match &c.moe {
                    Some(m) if m.sparse_layers[i] => {
                        let prefix = match m.naming {
                            MoeNaming::Qwen | MoeNaming::DeepSeek => format!("{p}.mlp"),
                            MoeNaming::BlockSparse => format!("{p}.block_sparse_moe"),
                        };
                        FeedForward::Sparse(SparseMoe::load(&w, &prefix, h, m)?)
                    }
                    _ => FeedForward::Dense(GatedMlp::load(
                        &w,
                        &format!("{p}.mlp"),
                        h,
                        c.intermediate_size,
                        c.mlp_bias,
                    )?),
                },
            });
        }
        let embed = w.matrix("model.embed_tokens.weight", c.vocab_size, h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(
                w.matrix("lm_head.weight", c.vocab_size, h)
                    .map_err(|e| match e {
                        Error::MissingTensor { name, looked_in } => Error::MissingTensor {
                            name,
                            looked_in: format!(
                                "{looked_in}; config.json has tie_word_embeddings false"
                            ),
                        },
                        e => e,
                    })?,
            )
        };
        let norm = RmsNorm::load(&w, "model.norm.weight", h, eps)?;
        let max_positions = c.max_position_embeddings.max(1);
        let rope = RotaryEmbedding::new(
            &w,
            c.head_dim,
            c.rotary_dim,
            c.rope_theta,
            &c.rope_scaling,
            max_positions,
        )?;
        let params = ParamCount::new(&config);
        // A pass reads every matrix but the routed experts, less an untied embedding
        // table (only its rows are read).
        let untied_embed = if config.tie_word_embeddings {
            0
        } else {
            backend.weight_bytes(&embed) as u64
        };
        let shared_bytes = w.matrix_bytes().saturating_sub(untied_embed);
        let experts_read_at_load = if config.moe.is_some() {
            backend.moe_experts_read()?
        } else {
            0
        };
        Ok(Llama {
            config,
            backend,
            embed,
            lm_head,
            norm,
            layers,
            rope,
            max_positions,
            acts: Workspace::default(),
            graphs: DecodeGraphs::default(),
            params,
            shared_bytes,
            passes: Default::default(),
            experts_read_at_load,
        })
    }

    /// Which variant of the family this is.
    pub fn architecture(&self) -> Architecture {
        self.config.architecture
    }

    /// Runs one step and hands `read` the logits, `[logits_indices.len(), vocab]` at
    /// the start of a device buffer that may hold more rows (the workspace's). A
    /// decode step goes through a graph where the backend has them (`crate::graph`).
    fn with_logits<R>(
        &self,
        input: &ForwardInput,
        kv: &mut KvCache<B>,
        read: impl FnOnce(&B::Buf) -> Result<R>,
    ) -> Result<R> {
        let c = &self.config;
        let b = &self.backend;
        let n = input.token_ids.len();
        if input.positions.len() != n
            || input.slot_mapping.len() != n
            || input.attention.num_tokens() != n
        {
            return Err(Error::Invalid(format!(
                "forward: {n} tokens but {} positions, {} slots and {} attention rows",
                input.positions.len(),
                input.slot_mapping.len(),
                input.attention.num_tokens()
            )));
        }
        let want = self
            .kv_cache_spec()
            .config(kv.config.num_blocks, kv.config.block_size);
        if kv.layers.len() != c.num_layers || want != Some(kv.config) {
            return Err(Error::Invalid(
                "forward: KV cache does not match the model".into(),
            ));
        }
        if n == 0 {
            return read(&b.zeros(0)?);
        }
        self.passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let padded = if b.graphs_enabled() {
            self.graphs.plan(input)
        } else {
            None
        };
        let step = padded.as_ref().map_or(input, |p| &p.input);
        let need = Capacity {
            rows: step.num_tokens(),
            logits_rows: step.logits_indices.len(),
        };
        self.acts.with(
            need,
            |cap| Activations::new(b, c, cap),
            |acts| {
                match &padded {
                    Some(p) => self
                        .graphs
                        .run(b, p, &mut |step| self.forward_into(step, kv, acts))?,
                    None => self.forward_into(input, kv, acts)?,
                }
                read(&acts.logits)
            },
        )
    }

    /// One forward pass over `input` into `acts` (logits in `acts.logits`). Issues the
    /// same ops for the same shapes every time, and allocates nothing.
    fn forward_into(
        &self,
        input: &ForwardInput,
        kv: &mut KvCache<B>,
        acts: &mut Activations<B>,
    ) -> Result<()> {
        let c = &self.config;
        let b = &self.backend;
        let n = input.token_ids.len();
        let h = c.hidden_size;
        let pass = Pass {
            backend: b,
            input,
            rows: n,
        };
        let Activations {
            x,
            normed,
            attn,
            latent,
            proj,
            mlp,
            moe,
            last,
            last_normed,
            logits,
        } = acts;
        b.embedding(&self.embed, c.vocab_size, h, &input.token_ids, x)?;
        let kv_config = kv.config;
        for (layer, (kc, vc)) in self.layers.iter().zip(kv.layers.iter_mut()) {
            layer.input_norm.forward(b, x, n, normed)?;
            match (&layer.attn, attn.as_mut(), latent.as_mut()) {
                (SelfAttention::Gqa(a), Some(s), _) => {
                    let cache = KvLayer {
                        config: &kv_config,
                        key: kc,
                        value: vc,
                    };
                    a.forward(&pass, &self.rope, normed, cache, s, proj)?
                }
                (SelfAttention::Latent(a), _, Some(s)) => {
                    a.forward(&pass, &self.rope, normed, &kv_config, kc, s, proj)?
                }
                _ => return Err(Error::Invalid("forward: no scratch for a layer".into())),
            }
            layer.post_norm.add_forward(b, x, proj, n, normed)?;
            match (&layer.ffn, mlp.as_mut(), moe.as_mut()) {
                (FeedForward::Dense(m), Some(s), _) => m.forward(&pass, normed, s, proj)?,
                (FeedForward::Sparse(m), _, Some(s)) => m.forward(&pass, normed, s, proj)?,
                _ => return Err(Error::Invalid("forward: no scratch for a layer".into())),
            }
            b.add_inplace(x, proj, n * h)?;
        }
        let m = input.logits_indices.len();
        b.gather_rows(x, h, &input.logits_indices, last)?;
        self.norm.forward(b, last, m, last_normed)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        b.matmul(last_normed, head, None, m, h, c.vocab_size, logits)?;
        Ok(())
    }
}

/// Whether some layer is a dense MLP (all of them unless the config has experts).
fn has_dense_layer(c: &ModelConfig) -> bool {
    c.moe
        .as_ref()
        .is_none_or(|m| m.sparse_layers.iter().any(|s| !s))
}

fn latent_shape(c: &ModelConfig) -> Option<LatentAttentionShape> {
    c.mla.as_ref().map(|m| LatentAttentionShape {
        hidden: c.hidden_size,
        heads: c.num_heads,
        mla: m.clone(),
    })
}

fn attention_shape(c: &ModelConfig) -> AttentionShape {
    AttentionShape {
        hidden: c.hidden_size,
        num_heads: c.num_heads,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
    }
}

impl<B: Backend> CausalLm<B> for Llama<B> {
    fn backend(&self) -> &B {
        &self.backend
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn kv_cache_spec(&self) -> KvCacheSpec {
        KvCacheSpec {
            layers: self.layers.iter().map(|l| l.attn.kv_spec()).collect(),
        }
    }

    fn forward(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<f32>> {
        let len = input.logits_indices.len() * self.config.vocab_size;
        self.backend.run_pass(|| {
            self.with_logits(input, kv, |logits| {
                Ok(self.backend.download_prefix(logits, len)?)
            })
        })
    }

    fn forward_greedy(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<u32>> {
        let rows = input.logits_indices.len();
        self.backend.run_pass(|| {
            self.with_logits(input, kv, |logits| {
                Ok(self
                    .backend
                    .argmax_rows(logits, rows, self.config.vocab_size)?)
            })
        })
    }

    fn set_graph_options(&self, options: GraphOptions) {
        self.graphs.set_options(options);
    }

    fn parameters(&self) -> Parameters {
        let p = &self.params;
        Parameters {
            total: p.total,
            active_per_token: p.shared + p.active_experts * p.per_expert,
        }
    }

    fn parameters_read(&self) -> Result<u64> {
        let p = &self.params;
        let passes = self.passes.load(std::sync::atomic::Ordering::Relaxed);
        let experts = if self.config.moe.is_some() {
            self.backend.moe_experts_read()? - self.experts_read_at_load
        } else {
            0
        };
        Ok(passes * p.shared + experts * p.per_expert)
    }

    fn weight_bytes_read(&self) -> Result<Option<u64>> {
        if self.shared_bytes == 0 {
            return Ok(None);
        }
        let p = &self.params;
        let passes = self.passes.load(std::sync::atomic::Ordering::Relaxed);
        let experts = if self.config.moe.is_some() {
            self.backend.moe_experts_read()? - self.experts_read_at_load
        } else {
            0
        };
        // Routed experts are f32 wherever the backend reports bytes (the CPU).
        Ok(Some(
            passes * self.shared_bytes + experts * p.per_expert * 4,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_names_are_the_config_architectures() {
        let names = crate::registry::supported_hf::<novastack_kernels::CpuBackend>();
        assert_eq!(names, Architecture::supported());
        for n in HF_ARCHITECTURES {
            assert!(Architecture::from_hf_name(n).is_some(), "{n}");
        }
    }
}
