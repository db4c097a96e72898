//! Plain-data description of the paged KV cache and of one step's attention batch.

use crate::error::ensure;
use crate::{Error, Result};

/// Shape of one layer's key (or value) cache: `[num_blocks, block_size, num_kv_heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheConfig {
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheConfig {
    /// Number of f32 values in one layer's key (or value) cache.
    pub fn layer_len(&self) -> usize {
        self.num_blocks * self.block_size * self.num_kv_heads * self.head_dim
    }

    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Values per slot (one token's keys for all kv heads).
    pub fn slot_len(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// One sequence's part of a step: rows `query_start..query_start + num_queries` of the
/// batch are its new tokens, the last `num_queries` of its `context_len` cached tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqAttention {
    pub query_start: usize,
    pub num_queries: usize,
    pub context_len: usize,
    pub block_table: Vec<u32>,
}

/// Attention metadata of one step: the sequences in batch order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttentionMetadata {
    pub seqs: Vec<SeqAttention>,
}

impl AttentionMetadata {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.num_queries).sum()
    }

    /// Checks a step against the cache and the buffers before any work (every backend
    /// calls this, so no kernel can read outside a buffer or fail midway): heads, rows
    /// in order, blocks covering each context, block ids in range. Returns the rows.
    pub fn validate(
        &self,
        row_stride: usize,
        num_heads: usize,
        cache: &KvCacheConfig,
        qkv_len: usize,
        out_len: usize,
    ) -> Result<usize> {
        const OP: &str = "paged_attention";
        let hd = cache.head_dim;
        let kvh = cache.num_kv_heads;
        ensure(kvh > 0 && num_heads.is_multiple_of(kvh), OP, || {
            format!("{num_heads} heads is not a multiple of {kvh} kv heads")
        })?;
        ensure(num_heads * hd <= row_stride, OP, || {
            "q overruns the row".into()
        })?;
        let num_tokens = self.num_tokens();
        ensure(qkv_len >= num_tokens * row_stride, OP, || {
            "qkv is shorter than the batch".into()
        })?;
        ensure(out_len >= num_tokens * num_heads * hd, OP, || {
            "out is shorter than the batch".into()
        })?;
        self.validate_seqs(cache, OP)?;
        Ok(num_tokens)
    }

    /// The per-sequence rules of [`AttentionMetadata::validate`] alone (rows in order,
    /// blocks covering each context, block ids in range), for `op`. Returns the rows.
    pub fn validate_seqs(&self, cache: &KvCacheConfig, op: &'static str) -> Result<usize> {
        let mut rows = 0;
        for (s, seq) in self.seqs.iter().enumerate() {
            ensure(seq.query_start == rows, op, || {
                format!(
                    "sequence {s} starts at row {} (expected {})",
                    seq.query_start, rows
                )
            })?;
            ensure(seq.num_queries <= seq.context_len, op, || {
                format!("sequence {s} has more queries than context")
            })?;
            let need = seq.context_len.div_ceil(cache.block_size);
            ensure(seq.block_table.len() >= need, op, || {
                format!(
                    "sequence {s} has {} blocks, needs {need}",
                    seq.block_table.len()
                )
            })?;
            if let Some(&b) = seq.block_table[..need]
                .iter()
                .find(|&&b| b as usize >= cache.num_blocks)
            {
                return Err(Error::OutOfRange {
                    op,
                    index: b as usize,
                    limit: cache.num_blocks,
                });
            }
            rows += seq.num_queries;
        }
        Ok(rows)
    }
}

/// One model's paged KV cache on a backend: a key and a value buffer per layer. A
/// latent cache (multi-head latent attention) keeps everything in the key buffer: one
/// slot per token of `[latent | roped key]`, and an empty value buffer.
pub struct KvCache<B: crate::Backend> {
    pub config: KvCacheConfig,
    pub layers: Vec<(B::Buf, B::Buf)>,
}

impl<B: crate::Backend> KvCache<B> {
    pub fn new(backend: &B, config: KvCacheConfig, num_layers: usize) -> crate::Result<Self> {
        let layers = (0..num_layers)
            .map(|_| {
                Ok((
                    backend.zeros(config.layer_len())?,
                    backend.zeros(config.layer_len())?,
                ))
            })
            .collect::<crate::Result<_>>()?;
        Ok(KvCache { config, layers })
    }

    /// A cache of one buffer per layer (`config.layer_len()` values) and no values: the
    /// latent cache of multi-head latent attention.
    pub fn keys_only(backend: &B, config: KvCacheConfig, num_layers: usize) -> crate::Result<Self> {
        let layers = (0..num_layers)
            .map(|_| Ok((backend.zeros(config.layer_len())?, backend.zeros(0)?)))
            .collect::<crate::Result<_>>()?;
        Ok(KvCache { config, layers })
    }
}
