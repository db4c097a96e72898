//! `kernels/hip/cache.hip` on the host: each token's keys and values into the paged
//! cache at its slot, with the op's conformance cases. Slots are checked here, as the
//! kernel trusts them (except the padding slot `u32::MAX`, which it skips).

use crate::conformance::{Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch};
use crate::gpu::{Device, GpuBackend, GpuBuf};
use crate::{shape, Backend, Error, KvCacheConfig, Result};

/// `reshape_and_cache(qkv, slots, key_cache, value_cache, row_stride, k_offset,
/// v_offset, slot_len)`: one block per token; the slot mapping goes through the
/// per-step upload cache (every layer reuses it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reshape_and_cache<D: Device>(
    b: &GpuBackend<D>,
    qkv: &GpuBuf<D>,
    row_stride: usize,
    k_offset: usize,
    cache: &KvCacheConfig,
    slot_mapping: &[u32],
    key_cache: &mut GpuBuf<D>,
    value_cache: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "reshape_and_cache";
    let slot_len = cache.slot_len();
    shape::kv_in_row(row_stride, k_offset, slot_len)?;
    b.check(OP, "qkv", qkv, slot_mapping.len() * row_stride)?;
    let cache_len = cache.num_slots() * slot_len;
    b.check(OP, "key_cache", key_cache, cache_len)?;
    b.check(OP, "value_cache", value_cache, cache_len)?;
    if let Some(&s) = slot_mapping
        .iter()
        .find(|&&s| s as usize >= cache.num_slots())
    {
        return Err(Error::OutOfRange {
            op: OP,
            index: s as usize,
            limit: cache.num_slots(),
        });
    }
    let slots = b.cached_u32s(&b.slots, slot_mapping)?;
    launch!(
        b,
        "reshape_and_cache",
        grid1(slot_mapping.len()),
        qkv.ptr,
        slots,
        key_cache.ptr,
        value_cache.ptr,
        row_stride as i32,
        k_offset as i32,
        (k_offset + slot_len) as i32,
        slot_len as i32
    )
}

/// The cache every attention case uses: 96 blocks of 16 slots, 2 kv heads.
pub(super) fn cache_config(head_dim: usize) -> KvCacheConfig {
    KvCacheConfig {
        num_blocks: 96,
        block_size: 16,
        num_kv_heads: 2,
        head_dim,
    }
}

struct ReshapeAndCache {
    cache: KvCacheConfig,
    heads: usize,
    qkv: Vec<f32>,
    slots: Vec<u32>,
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
}

impl Case for ReshapeAndCache {
    fn op(&self) -> String {
        "reshape_and_cache".into()
    }
    fn shape(&self) -> String {
        format!("hd{}", self.cache.head_dim)
    }
    /// Both caches, whole: the written slots and every slot left alone.
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let c = &self.cache;
        let stride = (self.heads + 2 * c.num_kv_heads) * c.head_dim;
        let (mut k, mut v) = (b.upload(&self.key_cache)?, b.upload(&self.value_cache)?);
        let qkv = b.upload(&self.qkv)?;
        let k_offset = self.heads * c.head_dim;
        b.reshape_and_cache(&qkv, stride, k_offset, c, &self.slots, &mut k, &mut v)?;
        Ok(vec![("", b.download(&k)?), ("value", b.download(&v)?)])
    }
}

/// Three sequences' new tokens (1, 40 and 20 of contexts 700, 40 and 100) into blocks
/// scattered over a cache already full of other values.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for hd in [64, 128] {
        let cache = cache_config(hd);
        let heads = 8;
        let bs = cache.block_size;
        let mut slots = Vec::new();
        for (s, (ctx, nq)) in [(700usize, 1usize), (40, 40), (100, 20)]
            .into_iter()
            .enumerate()
        {
            let blocks: Vec<u32> = (0..ctx.div_ceil(bs))
                .map(|i| ((i * 3 + s * 31) % cache.num_blocks) as u32)
                .collect();
            for p in ctx - nq..ctx {
                slots.push(blocks[p / bs] * bs as u32 + (p % bs) as u32);
            }
        }
        let stride = (heads + 2 * cache.num_kv_heads) * hd;
        v.case(ReshapeAndCache {
            cache,
            heads,
            key_cache: g.rand(cache.layer_len(), 1.0),
            value_cache: g.rand(cache.layer_len(), 1.0),
            qkv: g.rand(slots.len() * stride, 1.0),
            slots,
        })?;
    }
    Ok(())
}
