//! Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2) over a latent KV cache.
//!
//! Per token the layer caches one slot of `kv_lora_rank + qk_rope_head_dim` values: the
//! RMS-normed latent and the roped key shared by every head (576 values for DeepSeek-V3,
//! where per-head keys and values would take 128 heads x (192 + 128) = 40,960).
//!
//! Every pass (prefill and decode alike) attends in the latent space: the key
//! up-projection (`kv_b_proj`'s `k_nope` rows) is absorbed into the query
//! (`q_latent[h] = q_nope[h] · W_UK[h]`), attention scores the latents and the roped
//! keys directly, and the value up-projection (`kv_b_proj`'s value rows) is applied to
//! each head's attended latent afterwards. This computes what transformers' expanded
//! form computes, with sums in another order.
//!
//! Load-time layout changes, exact by construction: the q projection's rows are
//! reordered to `[every head's nope part | every head's rope part]`, and with
//! `rope_interleave` each rope part's (and the shared key's) interleaved pairs
//! `(x0, x1), (x2, x3), ...` are de-interleaved to `[x0, x2, ... | x1, x3, ...]`, so that
//! the usual rotate-half rope computes transformers' interleaved rotation bit for bit.

use super::norm::RmsNorm;
use super::rope::RotaryEmbedding;
use super::{Pass, Weights};
use crate::config::MlaConfig;
use crate::error::Result;
use crate::kv_spec::LayerKvSpec;
use novastack_kernels::{Backend, HeadLayout, KvCacheConfig, LatentShape};

/// The shape of one latent attention layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentAttentionShape {
    pub hidden: usize,
    pub heads: usize,
    pub mla: MlaConfig,
}

impl LatentAttentionShape {
    /// Width of the projected query row: `heads * (nope + rope)`.
    pub fn q_dim(&self) -> usize {
        self.heads * self.mla.qk_head_dim()
    }

    /// Scratch buffers for a pass of `rows` tokens.
    pub fn scratch<B: Backend>(&self, b: &B, rows: usize) -> Result<LatentScratch<B>> {
        let m = &self.mla;
        let (h, r) = (self.heads, m.kv_lora_rank);
        let ql = m.q_lora_rank.unwrap_or(0);
        Ok(LatentScratch {
            q_a: b.zeros(rows * ql)?,
            q_a_normed: b.zeros(rows * ql)?,
            q: b.zeros(rows * self.q_dim())?,
            kv: b.zeros(rows * m.slot_dim())?,
            q_latent: b.zeros(rows * h * r)?,
            o_latent: b.zeros(rows * h * r)?,
            o: b.zeros(rows * h * m.v_head_dim)?,
        })
    }

    /// The query's rope parts in the reordered q row.
    fn rope_layout(&self) -> HeadLayout {
        let m = &self.mla;
        HeadLayout {
            row_stride: self.q_dim(),
            offset: self.heads * m.qk_nope_head_dim,
            head_stride: m.qk_rope_head_dim,
        }
    }
}

/// Per-pass buffers.
pub struct LatentScratch<B: Backend> {
    q_a: B::Buf,
    q_a_normed: B::Buf,
    q: B::Buf,
    /// `[latent | shared key]` per token, normed and roped in place, then cached.
    kv: B::Buf,
    q_latent: B::Buf,
    o_latent: B::Buf,
    o: B::Buf,
}

/// The query's projection: low-rank with a norm between, or one matrix.
enum QueryProj<B: Backend> {
    LowRank {
        a: B::Weight,
        norm: RmsNorm<B>,
        b: B::Weight,
    },
    Full(B::Weight),
}

pub struct LatentAttention<B: Backend> {
    shape: LatentAttentionShape,
    q: QueryProj<B>,
    /// `kv_a_proj_with_mqa`: `[kv_lora_rank + rope, hidden]`.
    kv_a: B::Weight,
    kv_a_norm: RmsNorm<B>,
    /// Per head `[kv_lora_rank, nope]`: the key up-projection, transposed.
    w_uk: B::Weight,
    /// Per head `[v_head_dim, kv_lora_rank]`: the value up-projection.
    w_uv: B::Weight,
    o_proj: B::Weight,
}

/// De-interleaves rows `start..start + dim` of a row-major `[_, k]` matrix in place:
/// rows `start + 2i` first, then rows `start + 2i + 1`.
fn deinterleave_rows(w: &mut [f32], k: usize, start: usize, dim: usize) {
    let block: Vec<f32> = w[start * k..(start + dim) * k].to_vec();
    for i in 0..dim / 2 {
        for (dst, src) in [(i, 2 * i), (dim / 2 + i, 2 * i + 1)] {
            w[(start + dst) * k..(start + dst + 1) * k]
                .copy_from_slice(&block[src * k..(src + 1) * k]);
        }
    }
}

impl<B: Backend> LatentAttention<B> {
    /// Loads `{prefix}.{q_proj | q_a_proj, q_a_layernorm, q_b_proj}`,
    /// `{prefix}.kv_a_proj_with_mqa`, `{prefix}.kv_a_layernorm`, `{prefix}.kv_b_proj`
    /// and `{prefix}.o_proj`, with `eps` for both norms.
    pub fn load(
        w: &Weights<'_, B>,
        prefix: &str,
        shape: LatentAttentionShape,
        eps: f32,
    ) -> Result<Self> {
        let m = &shape.mla;
        let (hid, heads) = (shape.hidden, shape.heads);
        let (dn, dr, dv, r) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim,
            m.kv_lora_rank,
        );
        let name = |p: &str| format!("{prefix}.{p}.weight");
        // The q projection's rows, reordered: every head's nope rows, then every head's
        // rope rows (de-interleaved where the checkpoint interleaves).
        let q_rows = |k: usize, v: Vec<f32>| -> Vec<f32> {
            let hd = dn + dr;
            let mut out = Vec::with_capacity(v.len());
            for h in 0..heads {
                out.extend_from_slice(&v[h * hd * k..(h * hd + dn) * k]);
            }
            for h in 0..heads {
                out.extend_from_slice(&v[(h * hd + dn) * k..(h + 1) * hd * k]);
            }
            if m.rope_interleave {
                for h in 0..heads {
                    deinterleave_rows(&mut out, k, heads * dn + h * dr, dr);
                }
            }
            out
        };
        let q_dim = shape.q_dim();
        let q = match m.q_lora_rank {
            Some(ql) => QueryProj::LowRank {
                a: w.matrix(&name("q_a_proj"), ql, hid)?,
                norm: RmsNorm::load(w, &name("q_a_layernorm"), ql, eps)?,
                b: w.upload_matrix(
                    &q_rows(ql, w.host(&name("q_b_proj"), &[q_dim, ql])?),
                    1,
                    q_dim,
                    ql,
                )?,
            },
            None => QueryProj::Full(w.upload_matrix(
                &q_rows(hid, w.host(&name("q_proj"), &[q_dim, hid])?),
                1,
                q_dim,
                hid,
            )?),
        };
        let mut kv_a = w.host(&name("kv_a_proj_with_mqa"), &[r + dr, hid])?;
        if m.rope_interleave {
            deinterleave_rows(&mut kv_a, hid, r, dr);
        }
        // kv_b_proj is [heads * (nope + v), r]: per head, the key rows then the value rows.
        let kv_b = w.host(&name("kv_b_proj"), &[heads * (dn + dv), r])?;
        let (mut uk, mut uv) = (
            Vec::with_capacity(heads * r * dn),
            Vec::with_capacity(heads * dv * r),
        );
        for h in 0..heads {
            let base = h * (dn + dv) * r;
            // W_UK[h]ᵀ: [r, dn].
            for c in 0..r {
                uk.extend((0..dn).map(|i| kv_b[base + i * r + c]));
            }
            uv.extend_from_slice(&kv_b[base + dn * r..base + (dn + dv) * r]);
        }
        Ok(LatentAttention {
            q,
            kv_a: w.upload_matrix(&kv_a, 1, r + dr, hid)?,
            kv_a_norm: RmsNorm::load(w, &name("kv_a_layernorm"), r, eps)?,
            w_uk: w.upload_matrix(&uk, heads, r, dn)?,
            w_uv: w.upload_matrix(&uv, heads, dv, r)?,
            o_proj: w.matrix(&name("o_proj"), hid, heads * dv)?,
            shape,
        })
    }

    /// What this layer keeps per token: one latent slot.
    pub fn kv_spec(&self) -> LayerKvSpec {
        LayerKvSpec::latent(self.shape.mla.slot_dim())
    }

    /// `out = attention(x)` for the pass's rows; writes their latents into the cache
    /// (one buffer: `cache_buf`) first.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        pass: &Pass<'_, B>,
        rope: &RotaryEmbedding<B>,
        x: &B::Buf,
        cache: &KvCacheConfig,
        cache_buf: &mut B::Buf,
        s: &mut LatentScratch<B>,
        out: &mut B::Buf,
    ) -> Result<()> {
        let (b, n, input) = (pass.backend, pass.rows, pass.input);
        let sh = &self.shape;
        let m = &sh.mla;
        let (hid, heads, r, dn, dv) = (
            sh.hidden,
            sh.heads,
            m.kv_lora_rank,
            m.qk_nope_head_dim,
            m.v_head_dim,
        );
        let q_dim = sh.q_dim();
        match &self.q {
            QueryProj::LowRank { a, norm, b: qb } => {
                let ql = m.q_lora_rank.unwrap_or(0);
                b.matmul(x, a, None, n, hid, ql, &mut s.q_a)?;
                norm.forward(b, &s.q_a, n, &mut s.q_a_normed)?;
                b.matmul(&s.q_a_normed, qb, None, n, ql, q_dim, &mut s.q)?;
            }
            QueryProj::Full(wq) => b.matmul(x, wq, None, n, hid, q_dim, &mut s.q)?,
        }
        let slot = m.slot_dim();
        b.matmul(x, &self.kv_a, None, n, hid, slot, &mut s.kv)?;
        self.kv_a_norm.forward_heads(b, &mut s.kv, n, slot, 0, 1)?;
        rope.apply(pass, &mut s.kv, slot, r, 1)?;
        rope.apply(pass, &mut s.q, q_dim, heads * dn, heads)?;
        b.cache_rows(&s.kv, slot, 0, cache, &input.slot_mapping, cache_buf)?;
        let nope = HeadLayout {
            row_stride: q_dim,
            offset: 0,
            head_stride: dn,
        };
        b.head_matmul(&s.q, nope, n, heads, &self.w_uk, dn, r, &mut s.q_latent)?;
        b.latent_attention(
            &s.q_latent,
            &s.q,
            sh.rope_layout(),
            LatentShape {
                heads,
                latent_dim: r,
            },
            cache,
            cache_buf,
            &input.attention,
            m.softmax_scale,
            &mut s.o_latent,
        )?;
        b.head_matmul(
            &s.o_latent,
            HeadLayout::packed(heads, r),
            n,
            heads,
            &self.w_uv,
            r,
            dv,
            &mut s.o,
        )?;
        b.matmul(&s.o, &self.o_proj, None, n, heads * dv, hid, out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::deinterleave_rows;

    #[test]
    fn deinterleaving_puts_even_rows_first() {
        // 6 rows of 2: rows 1..5 are a rope block of 4.
        let mut w: Vec<f32> = (0..12).map(|i| i as f32).collect();
        deinterleave_rows(&mut w, 2, 1, 4);
        let rows: Vec<f32> = w.chunks(2).map(|r| r[0] / 2.0).collect();
        assert_eq!(rows, [0.0, 1.0, 3.0, 2.0, 4.0, 5.0]);
    }
}
