//! The Llama family of dense decoders: Llama, Mistral, Qwen2 (qkv bias) and Qwen3
//! (q/k norm). Weight names mirror the Hugging Face safetensors names.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::loader::TensorSource;
use crate::rope;
use novastack_kernels::{AttentionMetadata, Backend, KvCache, KvCacheConfig};

struct Layer<B: Backend> {
    input_norm: B::Buf,
    /// q, k and v projections stacked: `[(num_heads + 2 * num_kv_heads) * head_dim, hidden]`.
    qkv: B::Buf,
    qkv_bias: Option<B::Buf>,
    q_norm: Option<B::Buf>,
    k_norm: Option<B::Buf>,
    o_proj: B::Buf,
    o_bias: Option<B::Buf>,
    post_norm: B::Buf,
    /// gate and up projections stacked: `[2 * intermediate, hidden]`.
    gate_up: B::Buf,
    gate_up_bias: Option<B::Buf>,
    down: B::Buf,
    down_bias: Option<B::Buf>,
    sliding_window: Option<usize>,
}

pub struct Llama<B: Backend> {
    pub config: ModelConfig,
    backend: B,
    embed: B::Buf,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Buf>,
    norm: B::Buf,
    layers: Vec<Layer<B>>,
    cos_sin: B::Buf,
    max_positions: usize,
}

/// One step's batch, flattened: `token_ids[i]` sits at `positions[i]` and is written to
/// KV slot `slot_mapping[i]`. Logits are computed for rows `logits_indices` only.
#[derive(Debug, Clone, Default)]
pub struct ForwardInput {
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub slot_mapping: Vec<u32>,
    pub attention: AttentionMetadata,
    pub logits_indices: Vec<usize>,
}

impl ForwardInput {
    /// Appends one sequence's tokens at positions `start..`, their KV slots from
    /// `block_table`, and, if `want_logits`, a logits row for its last token. The one
    /// place that turns (positions, block table) into slots.
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        start: usize,
        block_table: Vec<u32>,
        block_size: usize,
        want_logits: bool,
    ) {
        let bs = block_size as u32;
        self.attention.seqs.push(novastack_kernels::SeqAttention {
            query_start: self.token_ids.len(),
            num_queries: tokens.len(),
            context_len: start + tokens.len(),
            block_table,
        });
        let table = &self.attention.seqs.last().expect("just pushed").block_table;
        for (i, &t) in tokens.iter().enumerate() {
            let pos = (start + i) as u32;
            self.token_ids.push(t);
            self.positions.push(pos);
            self.slot_mapping
                .push(table[(pos / bs) as usize] * bs + pos % bs);
        }
        if want_logits && !tokens.is_empty() {
            self.logits_indices.push(self.token_ids.len() - 1);
        }
    }
}

fn concat(parts: Vec<Vec<f32>>) -> Vec<f32> {
    parts.concat()
}

impl<B: Backend> Llama<B> {
    /// Loads every weight from `src`, checking names and shapes.
    pub fn load(config: ModelConfig, src: &dyn TensorSource, backend: B) -> Result<Self> {
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_heads * hd, c.num_kv_heads * hd);
        let up = |v: Vec<f32>| backend.upload(&v).map_err(Error::from);
        let get = |name: &str, shape: &[usize]| src.tensor(name, shape);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let proj = |name: &str, out: usize, inp: usize| {
                get(&format!("{p}.{name}.weight"), &[out, inp])
            };
            let bias = |name: &str, out: usize| get(&format!("{p}.{name}.bias"), &[out]);
            let qkv = concat(vec![
                proj("self_attn.q_proj", q_dim, h)?,
                proj("self_attn.k_proj", kv_dim, h)?,
                proj("self_attn.v_proj", kv_dim, h)?,
            ]);
            let qkv_bias = if c.qkv_bias {
                Some(up(concat(vec![
                    bias("self_attn.q_proj", q_dim)?,
                    bias("self_attn.k_proj", kv_dim)?,
                    bias("self_attn.v_proj", kv_dim)?,
                ]))?)
            } else {
                None
            };
            let (q_norm, k_norm) = if c.qk_norm {
                (
                    Some(up(get(&format!("{p}.self_attn.q_norm.weight"), &[hd])?)?),
                    Some(up(get(&format!("{p}.self_attn.k_norm.weight"), &[hd])?)?),
                )
            } else {
                (None, None)
            };
            let gate_up = concat(vec![
                proj("mlp.gate_proj", c.intermediate_size, h)?,
                proj("mlp.up_proj", c.intermediate_size, h)?,
            ]);
            let (gate_up_bias, down_bias) = if c.mlp_bias {
                (
                    Some(up(concat(vec![
                        bias("mlp.gate_proj", c.intermediate_size)?,
                        bias("mlp.up_proj", c.intermediate_size)?,
                    ]))?),
                    Some(up(bias("mlp.down_proj", h)?)?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                input_norm: up(get(&format!("{p}.input_layernorm.weight"), &[h])?)?,
                qkv: up(qkv)?,
                qkv_bias,
                q_norm,
                k_norm,
                o_proj: up(proj("self_attn.o_proj", h, q_dim)?)?,
                o_bias: if c.o_bias {
                    Some(up(bias("self_attn.o_proj", h)?)?)
                } else {
                    None
                },
                post_norm: up(get(&format!("{p}.post_attention_layernorm.weight"), &[h])?)?,
                gate_up: up(gate_up)?,
                gate_up_bias,
                down: up(proj("mlp.down_proj", h, c.intermediate_size)?)?,
                down_bias,
                sliding_window: c.sliding_window.get(i).copied().flatten(),
            });
        }
        let embed = up(get("model.embed_tokens.weight", &[c.vocab_size, h])?)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(up(get("lm_head.weight", &[c.vocab_size, h]).map_err(
                |e| match e {
                    Error::MissingTensor { name, looked_in } => Error::MissingTensor {
                        name,
                        looked_in: format!(
                            "{looked_in}; config.json has tie_word_embeddings false"
                        ),
                    },
                    e => e,
                },
            )?)?)
        };
        let norm = up(get("model.norm.weight", &[h])?)?;
        let max_positions = c.max_position_embeddings.max(1);
        let inv = rope::inv_freq(hd, c.rope_theta, &c.rope_scaling);
        let cos_sin = up(rope::cos_sin_table(max_positions, hd, &inv))?;
        Ok(Llama {
            config,
            backend,
            embed,
            lm_head,
            norm,
            layers,
            cos_sin,
            max_positions,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Longest sequence the model's position table covers.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// A paged KV cache for this model.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache<B>> {
        let cfg = KvCacheConfig {
            num_blocks,
            block_size,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        };
        Ok(KvCache::new(&self.backend, cfg, self.config.num_layers)?)
    }

    /// Bytes of KV cache per token (f32 keys and values over all layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.config.num_layers * self.config.num_kv_heads * self.config.head_dim * 4
    }

    /// Runs one step and returns logits `[logits_indices.len(), vocab]` on the host.
    pub fn forward(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<f32>> {
        let logits = self.forward_on_device(input, kv)?;
        Ok(self.backend.download(&logits)?)
    }

    /// Runs one step for greedy decoding: the argmax of each logits row, computed where
    /// the logits are (on a GPU only the ids come back).
    pub fn forward_greedy(&self, input: &ForwardInput, kv: &mut KvCache<B>) -> Result<Vec<u32>> {
        let logits = self.forward_on_device(input, kv)?;
        Ok(self
            .backend
            .argmax_rows(&logits, input.logits_indices.len(), self.config.vocab_size)?)
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
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_heads * hd, c.num_kv_heads * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let inter = c.intermediate_size;
        let eps = c.rms_norm_eps;
        let scale = 1.0 / (hd as f32).sqrt();

        let mut x = b.zeros(n * h)?;
        b.embedding(&self.embed, c.vocab_size, h, &input.token_ids, &mut x)?;
        let mut normed = b.zeros(n * h)?;
        let mut qkv = b.zeros(n * qkv_dim)?;
        let mut attn = b.zeros(n * q_dim)?;
        let mut proj = b.zeros(n * h)?;
        let mut gate_up = b.zeros(n * 2 * inter)?;
        let mut act = b.zeros(n * inter)?;
        for (layer, (kc, vc)) in self.layers.iter().zip(kv.layers.iter_mut()) {
            b.rms_norm(&x, &layer.input_norm, n, h, eps, &mut normed)?;
            b.matmul(
                &normed,
                &layer.qkv,
                layer.qkv_bias.as_ref(),
                n,
                h,
                qkv_dim,
                &mut qkv,
            )?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                b.head_rms_norm(&mut qkv, n, qkv_dim, 0, c.num_heads, hd, qn, eps)?;
                b.head_rms_norm(&mut qkv, n, qkv_dim, q_dim, c.num_kv_heads, hd, kn, eps)?;
            }
            b.rope(
                &mut qkv,
                qkv_dim,
                0,
                c.num_heads,
                hd,
                &input.positions,
                &self.cos_sin,
            )?;
            b.rope(
                &mut qkv,
                qkv_dim,
                q_dim,
                c.num_kv_heads,
                hd,
                &input.positions,
                &self.cos_sin,
            )?;
            b.reshape_and_cache(
                &qkv,
                qkv_dim,
                q_dim,
                &kv.config,
                &input.slot_mapping,
                kc,
                vc,
            )?;
            b.paged_attention(
                &qkv,
                qkv_dim,
                c.num_heads,
                &kv.config,
                kc,
                vc,
                &input.attention,
                scale,
                layer.sliding_window,
                &mut attn,
            )?;
            b.matmul(
                &attn,
                &layer.o_proj,
                layer.o_bias.as_ref(),
                n,
                q_dim,
                h,
                &mut proj,
            )?;
            b.add_rms_norm(&mut x, &proj, &layer.post_norm, n, h, eps, &mut normed)?;
            b.matmul(
                &normed,
                &layer.gate_up,
                layer.gate_up_bias.as_ref(),
                n,
                h,
                2 * inter,
                &mut gate_up,
            )?;
            b.silu_and_mul(&gate_up, n, inter, &mut act)?;
            b.matmul(
                &act,
                &layer.down,
                layer.down_bias.as_ref(),
                n,
                inter,
                h,
                &mut proj,
            )?;
            b.add_inplace(&mut x, &proj, n * h)?;
        }
        let m = input.logits_indices.len();
        let mut last = b.zeros(m * h)?;
        b.gather_rows(&x, h, &input.logits_indices, &mut last)?;
        let mut last_normed = b.zeros(m * h)?;
        b.rms_norm(&last, &self.norm, m, h, eps, &mut last_normed)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = b.zeros(m * c.vocab_size)?;
        b.matmul(&last_normed, head, None, m, h, c.vocab_size, &mut logits)?;
        Ok(logits)
    }
}
