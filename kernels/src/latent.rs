//! Plain data and shape rules of the multi-head latent attention ops (DeepSeek-V2/V3,
//! Kimi-K2): per-head GEMMs over strided head slices ([`crate::Backend::head_matmul`],
//! the key and value up-projections absorbed into the query and applied after
//! attention), and attention over a latent cache
//! ([`crate::Backend::latent_attention`]), whose slot per token is
//! `[latent (latent_dim) | roped shared key (rope_dim)]`.

use crate::error::ensure;
use crate::{AttentionMetadata, KvCacheConfig, Result};

/// Where each head's values sit in the rows of a buffer: head `h` of row `r` starts at
/// `r * row_stride + offset + h * head_stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    pub row_stride: usize,
    pub offset: usize,
    pub head_stride: usize,
}

impl HeadLayout {
    /// Heads of `width` values packed back to back from column 0.
    pub fn packed(heads: usize, width: usize) -> Self {
        HeadLayout {
            row_stride: heads * width,
            offset: 0,
            head_stride: width,
        }
    }

    /// `heads` heads of `width` fit in each row, and `rows` rows in `len` values.
    pub(crate) fn check(
        &self,
        op: &'static str,
        what: &str,
        rows: usize,
        heads: usize,
        width: usize,
        len: usize,
    ) -> Result<()> {
        if heads == 0 || width == 0 || rows == 0 {
            return Ok(());
        }
        let last = self.offset + (heads - 1) * self.head_stride + width;
        ensure(last <= self.row_stride, op, || {
            format!(
                "{what}: {heads} heads of {width} at offset {} every {} overrun a row of {}",
                self.offset, self.head_stride, self.row_stride
            )
        })?;
        ensure(len >= rows * self.row_stride, op, || {
            format!(
                "{what} holds {len} values, {rows} rows need {}",
                rows * self.row_stride
            )
        })
    }

    /// Index of value `i` of head `h` of row `r`.
    #[inline]
    pub fn at(&self, r: usize, h: usize, i: usize) -> usize {
        r * self.row_stride + self.offset + h * self.head_stride + i
    }
}

/// The shape of a latent attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentShape {
    pub heads: usize,
    /// The latent's width (`kv_lora_rank`); the slot's rest is the roped key.
    pub latent_dim: usize,
}

impl LatentShape {
    /// The roped key's width in a slot of `cache`.
    pub fn rope_dim(&self, cache: &KvCacheConfig) -> usize {
        cache.head_dim.saturating_sub(self.latent_dim)
    }

    /// Checks a call against the cache and the buffers before any work (every backend
    /// runs the same rules): the cache is one "head" of `latent_dim + rope_dim`, the
    /// query parts and the output fit. Returns the rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn validate(
        &self,
        cache: &KvCacheConfig,
        cache_len: usize,
        meta: &AttentionMetadata,
        q_latent_len: usize,
        rope: &HeadLayout,
        q_rope_len: usize,
        out_len: usize,
    ) -> Result<usize> {
        const OP: &str = "latent_attention";
        ensure(
            cache.num_kv_heads == 1 && cache.head_dim > self.latent_dim && self.latent_dim > 0,
            OP,
            || {
                format!(
                    "a latent cache is one head of latent {} + rope; got {} heads of {}",
                    self.latent_dim, cache.num_kv_heads, cache.head_dim
                )
            },
        )?;
        ensure(cache_len >= cache.layer_len(), OP, || {
            format!(
                "the latent cache holds {cache_len} values, the config needs {}",
                cache.layer_len()
            )
        })?;
        let rows = meta.validate_seqs(cache, OP)?;
        let (h, r) = (self.heads, self.latent_dim);
        ensure(q_latent_len >= rows * h * r, OP, || {
            format!(
                "q_latent holds {q_latent_len} values, needs {}",
                rows * h * r
            )
        })?;
        rope.check(OP, "q_rope", rows, h, self.rope_dim(cache), q_rope_len)?;
        ensure(out_len >= rows * h * r, OP, || {
            format!("out holds {out_len} values, needs {}", rows * h * r)
        })?;
        Ok(rows)
    }
}
