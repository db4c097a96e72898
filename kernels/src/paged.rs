//! Plain-data description of the paged KV cache and of one step's attention batch.

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
}

/// One model's paged KV cache on a backend: a key and a value buffer per layer.
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
}
