//! `kernels/hip/cache.hip` on the host: each token's keys and values into the paged
//! cache at its slot, with the op's conformance cases. Slots are checked here, as the
//! kernel trusts them (except the padding slot `u32::MAX`, which it skips).

use crate::conformance::{Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch};
use crate::gpu::{Device, GpuBackend, GpuBuf};
use crate::{shape, Backend, KvCacheConfig, Result, SeqAttention};

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
    shape::slots_in_cache(OP, slot_mapping, cache)?;
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

/// The shape of one layer as the cache and attention cases see it: head size, GQA group
/// (q heads per kv head), kv heads, and the cache's block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub hd: usize,
    pub group: usize,
    pub kv_heads: usize,
    pub block_size: usize,
}

impl Layout {
    pub fn heads(&self) -> usize {
        self.group * self.kv_heads
    }

    /// A packed `[q | k | v]` row.
    pub fn stride(&self) -> usize {
        (self.heads() + 2 * self.kv_heads) * self.hd
    }

    /// The check's shape: `hd80 g2 kv2 bs32`.
    pub fn shape(&self) -> String {
        let Layout {
            hd,
            group,
            kv_heads,
            block_size,
        } = self;
        format!("hd{hd} g{group} kv{kv_heads} bs{block_size}")
    }

    /// A layout drawn from the seed: any head size, group 1 to 8, 1 or 2 kv heads, blocks
    /// of 8, 16 or 32.
    pub fn random(g: &mut Gen) -> Layout {
        Layout {
            hd: g.pick(&HEAD_DIMS),
            group: g.range(1, 8),
            kv_heads: g.range(1, 2),
            block_size: g.pick(&[8, 16, 32]),
        }
    }
}

/// The head sizes of the models we serve.
pub(super) const HEAD_DIMS: [usize; 5] = [64, 80, 96, 128, 256];

/// Each head size once, each GQA group 1, 2, 4, 8 at least once (with 1 or 2 kv heads),
/// blocks of 16 and 32 (and 8 in random layouts): the layouts of the short-context cache and attention cases.
pub(super) const LAYOUTS: [Layout; 5] = [
    Layout {
        hd: 64,
        group: 1,
        kv_heads: 2,
        block_size: 16,
    },
    Layout {
        hd: 80,
        group: 2,
        kv_heads: 2,
        block_size: 32,
    },
    Layout {
        hd: 96,
        group: 4,
        kv_heads: 1,
        block_size: 16,
    },
    Layout {
        hd: 128,
        group: 8,
        kv_heads: 1,
        block_size: 16,
    },
    Layout {
        hd: 256,
        group: 2,
        kv_heads: 1,
        block_size: 16,
    },
];

/// Sequences as (context, new tokens) around block boundaries, in batch order: a fresh
/// prefill one token past a block, a chunk that ends exactly on the second block's
/// boundary, and decodes at a block's last slot and one past two blocks.
pub(super) fn mixed_seqs(bs: usize) -> Vec<(usize, usize)> {
    vec![(bs + 1, bs + 1), (2 * bs, bs - 1), (bs, 1), (2 * bs + 1, 1)]
}

/// A batch's sequences over a cache of `l`'s shape: each sequence's blocks drawn at
/// random (no block shared, so no two new tokens share a slot) from a cache with a few
/// blocks to spare, rows in batch order.
pub(super) fn batch(
    g: &mut Gen,
    l: Layout,
    seqs: &[(usize, usize)],
) -> (KvCacheConfig, Vec<SeqAttention>) {
    let bs = l.block_size;
    let needed: usize = seqs.iter().map(|&(ctx, _)| ctx.div_ceil(bs)).sum();
    let cache = KvCacheConfig {
        num_blocks: needed + 3,
        block_size: bs,
        num_kv_heads: l.kv_heads,
        head_dim: l.hd,
    };
    // Fisher-Yates over the block ids.
    let mut blocks: Vec<u32> = (0..cache.num_blocks as u32).collect();
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, g.range(0, i));
    }
    let (mut start, mut next) = (0, 0);
    let seqs = seqs
        .iter()
        .map(|&(ctx, nq)| {
            let n = ctx.div_ceil(bs);
            let s = SeqAttention {
                query_start: start,
                num_queries: nq,
                context_len: ctx,
                block_table: blocks[next..next + n].to_vec(),
            };
            (start, next) = (start + nq, next + n);
            s
        })
        .collect();
    (cache, seqs)
}

struct ReshapeAndCache {
    variant: &'static str,
    layout: Layout,
    cache: KvCacheConfig,
    qkv: Vec<f32>,
    slots: Vec<u32>,
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
}

impl Case for ReshapeAndCache {
    fn op(&self) -> String {
        format!("reshape_and_cache {}", self.variant)
            .trim_end()
            .to_string()
    }
    fn shape(&self) -> String {
        format!("{}x {}", self.slots.len(), self.layout.shape())
    }
    fn empty_input(&self) -> bool {
        self.slots.is_empty()
    }
    /// Both caches, whole: the written slots and every slot left alone.
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let (c, l) = (&self.cache, &self.layout);
        let (mut k, mut v) = (b.upload(&self.key_cache)?, b.upload(&self.value_cache)?);
        let qkv = b.upload(&self.qkv)?;
        let k_offset = l.heads() * l.hd;
        b.reshape_and_cache(&qkv, l.stride(), k_offset, c, &self.slots, &mut k, &mut v)?;
        Ok(vec![("", b.download(&k)?), ("value", b.download(&v)?)])
    }
}

/// New tokens into blocks scattered over a cache already full of other values: no
/// tokens; at every layout, a mixed batch whose prefill, chunk and decodes cross and end
/// on block boundaries; the new tokens of long contexts (1024 and 1025 past the first
/// blocks); and random batches.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let long = Layout {
        hd: 64,
        group: 4,
        kv_heads: 1,
        block_size: 16,
    };
    let mut batches = vec![("", LAYOUTS[0], vec![])];
    for l in LAYOUTS {
        batches.push(("", l, mixed_seqs(l.block_size)));
    }
    batches.push(("long", long, vec![(1024, 1), (1025, 2), (1536, 17)]));
    for _ in 0..2 {
        let l = Layout::random(g);
        let n = g.range(1, 4);
        let seqs = (0..n)
            .map(|_| {
                let ctx = g.range(1, 200);
                (ctx, g.range(1, ctx.min(40)))
            })
            .collect();
        batches.push(("random", l, seqs));
    }
    for (variant, layout, seqs) in batches {
        let (cache, seqs) = batch(g, layout, &seqs);
        let bs = cache.block_size as u32;
        let slots: Vec<u32> = seqs
            .iter()
            .flat_map(|s| {
                (s.context_len - s.num_queries..s.context_len).map(|p| {
                    let p = p as u32;
                    s.block_table[(p / bs) as usize] * bs + p % bs
                })
            })
            .collect();
        v.case(ReshapeAndCache {
            variant,
            layout,
            cache,
            key_cache: g.rand(cache.layer_len(), 1.0),
            value_cache: g.rand(cache.layer_len(), 1.0),
            qkv: g.rand(slots.len().max(1) * layout.stride(), 1.0),
            slots,
        })?;
    }
    Ok(())
}
