//! The Llama family of dense decoders: Llama, Mistral, Qwen2 (qkv bias) and Qwen3
//! (q/k norm), configured by [`ModelConfig`]. Each block is pre-norm attention then a
//! pre-norm gated MLP, with residual adds; weight names mirror the Hugging Face
//! safetensors names (`model.layers.{i}.self_attn.q_proj.weight`, ...).

use crate::causal_lm::CausalLm;
use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::gguf::{config_from_gguf, GgufFile, GgufLlamaSource};
use crate::input::ForwardInput;
use crate::kv_spec::KvCacheSpec;
use crate::layers::attention::{Attention, AttentionOptions, AttentionShape, KvLayer};
use crate::layers::mlp::{GatedMlp, MlpScratch};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::RotaryEmbedding;
use crate::layers::{Pass, Weights};
use crate::loader::TensorSource;
use crate::registry::{Family, HfCheckpoint};
use novastack_kernels::{Backend, KvCache};

/// The registry's entry for this family.
pub fn family<B: Backend + 'static>() -> Family<B> {
    Family {
        name: "llama",
        hf_architectures: HF_ARCHITECTURES,
        gguf_architectures: &["llama"],
        load_hf: |mut ckpt: HfCheckpoint<'_>, backend: B| {
            let value = std::mem::take(&mut ckpt.config);
            let config = ModelConfig::from_value(&ckpt.config_path, value)?;
            let weights = ckpt.weights()?;
            Ok(Box::new(Llama::load(config, &weights, backend)?) as Box<dyn CausalLm<B>>)
        },
        load_gguf: Some(|file: &GgufFile, backend: B| {
            let config = config_from_gguf(file)?;
            let source = GgufLlamaSource::new(file, &config);
            Ok(Box::new(Llama::load(config, &source, backend)?) as Box<dyn CausalLm<B>>)
        }),
    }
}

/// The config.json `architectures` this family runs (the [`Architecture`] variants).
const HF_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
];

struct Block<B: Backend> {
    input_norm: RmsNorm<B>,
    attn: Attention<B>,
    post_norm: RmsNorm<B>,
    mlp: GatedMlp<B>,
}

pub struct Llama<B: Backend> {
    pub config: ModelConfig,
    backend: B,
    embed: B::Buf,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Buf>,
    norm: RmsNorm<B>,
    layers: Vec<Block<B>>,
    rope: RotaryEmbedding<B>,
    max_positions: usize,
}

impl<B: Backend> Llama<B> {
    /// Loads every weight from `src`, checking names and shapes.
    pub fn load(config: ModelConfig, src: &dyn TensorSource, backend: B) -> Result<Self> {
        let c = &config;
        let w = Weights {
            source: src,
            backend: &backend,
        };
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let shape = attention_shape(c);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let opts = AttentionOptions {
                qkv_bias: c.qkv_bias,
                o_bias: c.o_bias,
                qk_norm: c.qk_norm.then_some(eps),
                sliding_window: c.sliding_window.get(i).copied().flatten(),
            };
            layers.push(Block {
                input_norm: RmsNorm::load(&w, &format!("{p}.input_layernorm.weight"), h, eps)?,
                attn: Attention::load(&w, &format!("{p}.self_attn"), shape, opts)?,
                post_norm: RmsNorm::load(
                    &w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                )?,
                mlp: GatedMlp::load(&w, &format!("{p}.mlp"), h, c.intermediate_size, c.mlp_bias)?,
            });
        }
        let embed = w.get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(
                w.get("lm_head.weight", &[c.vocab_size, h])
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
        let rope =
            RotaryEmbedding::new(&w, c.head_dim, c.rope_theta, &c.rope_scaling, max_positions)?;
        Ok(Llama {
            config,
            backend,
            embed,
            lm_head,
            norm,
            layers,
            rope,
            max_positions,
        })
    }

    /// Which variant of the family this is.
    pub fn architecture(&self) -> Architecture {
        self.config.architecture
    }

    /// Runs one step and leaves the logits `[logits_indices.len(), vocab]` on the device.
    pub fn forward_on_device(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<B::Buf> {
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
        if kv.layers.len() != c.num_layers
            || kv.config.head_dim != c.head_dim
            || kv.config.num_kv_heads != c.num_kv_heads
        {
            return Err(Error::Invalid(
                "forward: KV cache does not match the model".into(),
            ));
        }
        if n == 0 {
            return Ok(b.zeros(0)?);
        }
        let h = c.hidden_size;
        let pass = Pass {
            backend: b,
            input,
            rows: n,
        };
        let mut x = b.zeros(n * h)?;
        b.embedding(&self.embed, c.vocab_size, h, &input.token_ids, &mut x)?;
        let mut normed = b.zeros(n * h)?;
        let mut attn = attention_shape(c).scratch(b, n)?;
        let mut proj = b.zeros(n * h)?;
        let mut mlp = MlpScratch::new(b, n, c.intermediate_size)?;
        let kv_config = kv.config;
        for (layer, (kc, vc)) in self.layers.iter().zip(kv.layers.iter_mut()) {
            layer.input_norm.forward(b, &x, n, &mut normed)?;
            let cache = KvLayer {
                config: &kv_config,
                key: kc,
                value: vc,
            };
            layer
                .attn
                .forward(&pass, &self.rope, &normed, cache, &mut attn, &mut proj)?;
            layer
                .post_norm
                .add_forward(b, &mut x, &proj, n, &mut normed)?;
            layer.mlp.forward(&pass, &normed, &mut mlp, &mut proj)?;
            b.add_inplace(&mut x, &proj, n * h)?;
        }
        let m = input.logits_indices.len();
        let mut last = b.zeros(m * h)?;
        b.gather_rows(&x, h, &input.logits_indices, &mut last)?;
        let mut last_normed = b.zeros(m * h)?;
        self.norm.forward(b, &last, m, &mut last_normed)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = b.zeros(m * c.vocab_size)?;
        b.matmul(&last_normed, head, None, m, h, c.vocab_size, &mut logits)?;
        Ok(logits)
    }
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
        let logits = self.forward_on_device(input, kv)?;
        Ok(self.backend.download(&logits)?)
    }

    fn forward_greedy(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<u32>> {
        let logits = self.forward_on_device(input, kv)?;
        Ok(self
            .backend
            .argmax_rows(&logits, input.logits_indices.len(), self.config.vocab_size)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_names_are_the_config_architectures() {
        let names: Vec<&str> = HF_ARCHITECTURES.to_vec();
        assert_eq!(names.join(", "), Architecture::supported());
        for n in names {
            assert!(Architecture::from_hf_name(n).is_some(), "{n}");
        }
    }
}
