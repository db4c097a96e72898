//! Grouped-query self-attention over the paged KV cache: fused q/k/v projection
//! (optional bias), optional q/k RMSNorm (per head as Qwen3, or over the whole q and k
//! rows as MiniMax-M2), rotary embedding (possibly partial), cache
//! write, paged attention (optionally over a sliding window), output projection.
//!
//! What it caches per token is [`Attention::kv_spec`]: one key and one value row of
//! `num_kv_heads * head_dim` values.

use super::norm::RmsNorm;
use super::rope::RotaryEmbedding;
use super::{Pass, Weights};
use crate::config::QkNorm;
use crate::error::Result;
use crate::kv_spec::LayerKvSpec;
use novastack_kernels::{Backend, KvCacheConfig};

/// Head counts and sizes of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub hidden: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Width of a fused `[q | k | v]` row.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Scratch buffers for a pass of `rows` tokens.
    pub fn scratch<B: Backend>(&self, b: &B, rows: usize) -> Result<AttentionScratch<B>> {
        Ok(AttentionScratch {
            qkv: b.zeros(rows * self.qkv_dim())?,
            attn: b.zeros(rows * self.q_dim())?,
        })
    }
}

/// Which optional parts a family's attention has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOptions {
    /// q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// The output projection carries a bias.
    pub o_bias: bool,
    /// RMSNorm on q and k before rope, with this epsilon.
    pub qk_norm: QkNorm,
    pub norm_eps: f32,
    /// Attend to at most this many past positions (`None` = full attention).
    pub sliding_window: Option<usize>,
}

/// Per-pass buffers: the fused `[q | k | v]` rows and the attention output.
pub struct AttentionScratch<B: Backend> {
    qkv: B::Buf,
    attn: B::Buf,
}

/// One layer's slice of the paged KV cache.
pub struct KvLayer<'a, B: Backend> {
    pub config: &'a KvCacheConfig,
    pub key: &'a mut B::Buf,
    pub value: &'a mut B::Buf,
}

pub struct Attention<B: Backend> {
    shape: AttentionShape,
    /// q, k and v projections stacked: `[(num_heads + 2 * num_kv_heads) * head_dim, hidden]`.
    qkv: B::Weight,
    qkv_bias: Option<B::Buf>,
    /// q and k norms, both or neither, per head or over the whole q / k section.
    qk_norm: Option<(RmsNorm<B>, RmsNorm<B>)>,
    qk_full_width: bool,
    o_proj: B::Weight,
    o_bias: Option<B::Buf>,
    sliding_window: Option<usize>,
    scale: f32,
}

impl<B: Backend> Attention<B> {
    /// Loads `{prefix}.{q,k,v,o}_proj.*` and, with q/k norm, `{prefix}.{q,k}_norm.weight`.
    pub fn load(
        w: &Weights<'_, B>,
        prefix: &str,
        shape: AttentionShape,
        opts: AttentionOptions,
    ) -> Result<Self> {
        let (h, hd) = (shape.hidden, shape.head_dim);
        let (q_dim, kv_dim) = (shape.q_dim(), shape.kv_dim());
        let name = |proj: &str, kind: &str| format!("{prefix}.{proj}.{kind}");
        let qkv = w.stacked_matrix(
            &[
                (name("q_proj", "weight"), q_dim),
                (name("k_proj", "weight"), kv_dim),
                (name("v_proj", "weight"), kv_dim),
            ],
            h,
        )?;
        let qkv_bias = if opts.qkv_bias {
            Some(w.stacked(&[
                (name("q_proj", "bias"), vec![q_dim]),
                (name("k_proj", "bias"), vec![kv_dim]),
                (name("v_proj", "bias"), vec![kv_dim]),
            ])?)
        } else {
            None
        };
        let eps = opts.norm_eps;
        let qk_norm = match opts.qk_norm {
            QkNorm::PerHead => Some((
                RmsNorm::load(w, &name("q_norm", "weight"), hd, eps)?,
                RmsNorm::load(w, &name("k_norm", "weight"), hd, eps)?,
            )),
            QkNorm::FullWidth => Some((
                RmsNorm::load(w, &name("q_norm", "weight"), q_dim, eps)?,
                RmsNorm::load(w, &name("k_norm", "weight"), kv_dim, eps)?,
            )),
            QkNorm::None => None,
        };
        let o_proj = w.matrix(&name("o_proj", "weight"), h, q_dim)?;
        let o_bias = if opts.o_bias {
            Some(w.get(&name("o_proj", "bias"), &[h])?)
        } else {
            None
        };
        Ok(Attention {
            shape,
            qkv,
            qkv_bias,
            qk_norm,
            qk_full_width: opts.qk_norm == QkNorm::FullWidth,
            o_proj,
            o_bias,
            sliding_window: opts.sliding_window,
            scale: 1.0 / (hd as f32).sqrt(),
        })
    }

    /// What this layer keeps per token in the KV cache.
    pub fn kv_spec(&self) -> LayerKvSpec {
        LayerKvSpec::key_value(self.shape.num_kv_heads, self.shape.head_dim)
    }

    /// `out = attention(x)` for the pass's `rows` tokens; writes their keys and values
    /// into `cache` first.
    pub fn forward(
        &self,
        pass: &Pass<'_, B>,
        rope: &RotaryEmbedding<B>,
        x: &B::Buf,
        cache: KvLayer<'_, B>,
        s: &mut AttentionScratch<B>,
        out: &mut B::Buf,
    ) -> Result<()> {
        let (b, n, input) = (pass.backend, pass.rows, pass.input);
        let sh = &self.shape;
        let (h, q_dim, qkv_dim) = (sh.hidden, sh.q_dim(), sh.qkv_dim());
        b.matmul(
            x,
            &self.qkv,
            self.qkv_bias.as_ref(),
            n,
            h,
            qkv_dim,
            &mut s.qkv,
        )?;
        match &self.qk_norm {
            // The whole q (k) section is one "head" of q_dim (kv_dim) values.
            Some((qn, kn)) if self.qk_full_width => {
                qn.forward_heads(b, &mut s.qkv, n, qkv_dim, 0, 1)?;
                kn.forward_heads(b, &mut s.qkv, n, qkv_dim, q_dim, 1)?;
            }
            Some((qn, kn)) => {
                qn.forward_heads(b, &mut s.qkv, n, qkv_dim, 0, sh.num_heads)?;
                kn.forward_heads(b, &mut s.qkv, n, qkv_dim, q_dim, sh.num_kv_heads)?;
            }
            None => {}
        }
        rope.apply(pass, &mut s.qkv, qkv_dim, 0, sh.num_heads)?;
        rope.apply(pass, &mut s.qkv, qkv_dim, q_dim, sh.num_kv_heads)?;
        b.reshape_and_cache(
            &s.qkv,
            qkv_dim,
            q_dim,
            cache.config,
            &input.slot_mapping,
            cache.key,
            cache.value,
        )?;
        b.paged_attention(
            &s.qkv,
            qkv_dim,
            sh.num_heads,
            cache.config,
            cache.key,
            cache.value,
            &input.attention,
            self.scale,
            self.sliding_window,
            &mut s.attn,
        )?;
        b.matmul(
            &s.attn,
            &self.o_proj,
            self.o_bias.as_ref(),
            n,
            q_dim,
            h,
            out,
        )?;
        Ok(())
    }
}
