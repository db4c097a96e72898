//! What a model keeps in the KV cache per token, layer by layer. The model declares
//! it; the engine sizes and allocates the cache from it, so a family that caches
//! something else (a latent vector, another dtype) changes its spec, not the engine.

use crate::error::{Error, Result};
use novastack_kernels::Dtype;
use novastack_kernels::{Backend, KvCache, KvCacheConfig};

/// One layer's cache entry per token: `num_kv_heads` key rows and as many value rows of
/// `head_dim` values each, or (`latent`) one row of `head_dim` values and no values:
/// multi-head latent attention's `[latent | roped shared key]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerKvSpec {
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// The cache's element type; `None` = the backend's storage type (every family
    /// today: the cache is stored like the activations).
    pub dtype: Option<Dtype>,
    /// One latent row per token instead of keys and values.
    pub latent: bool,
}

impl LayerKvSpec {
    /// Keys and values of `num_kv_heads` heads of `head_dim`, stored in the backend's type.
    pub fn key_value(num_kv_heads: usize, head_dim: usize) -> Self {
        LayerKvSpec {
            num_kv_heads,
            head_dim,
            dtype: None,
            latent: false,
        }
    }

    /// One latent slot of `dim` values per token (multi-head latent attention).
    pub fn latent(dim: usize) -> Self {
        LayerKvSpec {
            num_kv_heads: 1,
            head_dim: dim,
            dtype: None,
            latent: true,
        }
    }

    /// Values cached per token (keys and values, or the latent slot).
    pub fn values_per_token(&self) -> usize {
        let rows = if self.latent { 1 } else { 2 };
        rows * self.num_kv_heads * self.head_dim
    }

    /// Bytes per token when the backend stores `storage`.
    pub fn bytes_per_token(&self, storage: Dtype) -> usize {
        self.values_per_token() * self.dtype.unwrap_or(storage).size()
    }
}

/// The whole model's KV cache, one entry per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCacheSpec {
    pub layers: Vec<LayerKvSpec>,
}

impl KvCacheSpec {
    /// What a model of config `c` caches, from the config alone (no weights): one latent
    /// slot per layer for latent attention, keys and values per kv head otherwise. The
    /// decoder's own spec (`CausalLm::kv_cache_spec`) equals it.
    pub fn from_config(c: &crate::config::ModelConfig) -> Self {
        let layer = match &c.mla {
            Some(m) => LayerKvSpec::latent(m.slot_dim()),
            None => LayerKvSpec::key_value(c.num_kv_heads, c.head_dim),
        };
        KvCacheSpec {
            layers: vec![layer; c.num_layers],
        }
    }

    /// Bytes of KV cache per token over all layers when the backend stores `storage`.
    pub fn bytes_per_token(&self, storage: Dtype) -> usize {
        self.layers.iter().map(|l| l.bytes_per_token(storage)).sum()
    }

    /// Allocates a paged cache of `num_blocks` blocks of `block_size` tokens. The
    /// backend's cache holds one shape for every layer in its own storage type, so the
    /// layers must agree and use that type.
    pub fn allocate<B: Backend>(
        &self,
        backend: &B,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<KvCache<B>> {
        let first = self
            .layers
            .first()
            .copied()
            .unwrap_or(LayerKvSpec::key_value(0, 0));
        if self.layers.iter().any(|l| *l != first) || first.dtype.is_some() {
            return Err(Error::Invalid(format!(
                "KV cache: the backend's paged cache needs one shape in its storage type for all layers, got {:?}",
                self.layers
            )));
        }
        let cfg = KvCacheConfig {
            num_blocks,
            block_size,
            num_kv_heads: first.num_kv_heads,
            head_dim: first.head_dim,
        };
        Ok(if first.latent {
            KvCache::keys_only(backend, cfg, self.layers.len())?
        } else {
            KvCache::new(backend, cfg, self.layers.len())?
        })
    }

    /// The cache shape every layer shares (the first layer's), as
    /// [`KvCacheSpec::allocate`] lays it out for `num_blocks` blocks of `block_size`.
    pub fn config(&self, num_blocks: usize, block_size: usize) -> Option<KvCacheConfig> {
        self.layers.first().map(|l| KvCacheConfig {
            num_blocks,
            block_size,
            num_kv_heads: l.num_kv_heads,
            head_dim: l.head_dim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novastack_kernels::CpuBackend;

    #[test]
    fn bytes_follow_the_storage_type_and_per_layer_overrides() {
        let mut spec = KvCacheSpec {
            layers: vec![LayerKvSpec::key_value(2, 16); 3],
        };
        // 3 layers x (key + value) x 2 heads x 16 values.
        assert_eq!(spec.bytes_per_token(Dtype::F32), 3 * 2 * 2 * 16 * 4);
        assert_eq!(spec.bytes_per_token(Dtype::Bf16), 3 * 2 * 2 * 16 * 2);
        spec.layers[1].dtype = Some(Dtype::F32);
        assert_eq!(
            spec.bytes_per_token(Dtype::F16),
            2 * 2 * 2 * 16 * 2 + 2 * 2 * 16 * 4
        );
        // The backend's cache cannot hold a layer of its own type.
        assert!(spec.allocate(&CpuBackend::new(), 4, 16).is_err());
    }

    #[test]
    fn allocates_one_key_and_value_buffer_per_layer() {
        let spec = KvCacheSpec {
            layers: vec![LayerKvSpec::key_value(2, 8); 3],
        };
        let kv = spec.allocate(&CpuBackend::new(), 4, 16).unwrap();
        assert_eq!(kv.layers.len(), 3);
        assert_eq!(kv.config.slot_len(), 16);
        assert_eq!(kv.config.num_slots(), 64);
    }

    #[test]
    fn a_latent_cache_is_one_buffer_of_slots_per_layer() {
        // DeepSeek-V3: latent 512 + rope 64 per token and layer.
        let spec = KvCacheSpec {
            layers: vec![LayerKvSpec::latent(576); 2],
        };
        assert_eq!(spec.bytes_per_token(Dtype::Bf16), 2 * 576 * 2);
        let kv = spec.allocate(&CpuBackend::new(), 4, 16).unwrap();
        for (k, v) in &kv.layers {
            assert_eq!((k.len(), v.len()), (4 * 16 * 576, 0));
        }
        // What the allocator holds is what the spec says.
        let held: usize = kv.layers.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(held * 4, spec.bytes_per_token(Dtype::F32) * 4 * 16);
    }
}
