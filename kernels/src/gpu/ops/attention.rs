//! `kernels/hip/attention.hip` on the host: paged attention, as split-K decode
//! (`paged_attention_partial` then `paged_attention_reduce`) when every sequence has one
//! query, else the tiled `prefill_attention`; with [`AttnArgs`], the mirror of the
//! kernels' `ns_attn_args`, and the op's conformance cases.

use crate::conformance::{poisoned, Case, Gen, Visit};
use crate::gpu::launch::{launch, ATTN_WARPS, THREADS};
use crate::gpu::{Device, GpuBackend, GpuBuf, Launch};
use crate::{AttentionMetadata, Backend, Error, KvCacheConfig, Result, SeqAttention};

/// Tokens per split-K partition: `NS_PARTITION` in attention.hip.
const PARTITION: usize = 512;
/// Keys per shared-memory tile of the prefill kernel: `NS_TILE` in attention.hip.
const TILE: usize = 16;
/// `NS_MAX_HEAD_DIM` in attention.hip (the size of its shared q array).
const MAX_HEAD_DIM: usize = 256;

/// `ns_attn_args` in attention.hip, field for field (passed by value).
#[repr(C)]
#[derive(Clone, Copy)]
struct AttnArgs {
    query_start: u64,
    num_queries: u64,
    context_len: u64,
    block_tables: u64,
    max_blocks: i32,
    block_size: i32,
    num_heads: i32,
    num_kv_heads: i32,
    head_dim: i32,
    row_stride: i32,
    scale: f32,
    window: i32,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention<D: Device>(
    b: &GpuBackend<D>,
    qkv: &GpuBuf<D>,
    row_stride: usize,
    num_heads: usize,
    cache: &KvCacheConfig,
    key_cache: &GpuBuf<D>,
    value_cache: &GpuBuf<D>,
    meta: &AttentionMetadata,
    scale: f32,
    sliding_window: Option<usize>,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "paged_attention";
    // A window of 0 means none, as on the CPU (the kernels read 0 as "no window",
    // while the split-K partition count would take it as a 0-token window).
    let sliding_window = sliding_window.filter(|&w| w > 0);
    let seqs = &meta.seqs;
    if seqs.is_empty() {
        return Ok(());
    }
    let hd = cache.head_dim;
    if hd > MAX_HEAD_DIM {
        return Err(Error::Shape {
            op: OP,
            msg: format!("head_dim {hd} > {MAX_HEAD_DIM}"),
        });
    }
    meta.validate(row_stride, num_heads, cache, qkv.len, out.len)?;
    b.check_dtype(OP, "qkv", qkv)?;
    b.check_dtype(OP, "out", out)?;
    b.check(OP, "key_cache", key_cache, cache.layer_len())?;
    b.check(OP, "value_cache", value_cache, cache.layer_len())?;
    let max_blocks = seqs
        .iter()
        .map(|s| s.block_table.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let n = seqs.len();
    let mut meta_host = vec![0u32; 3 * n + n * max_blocks];
    for (i, s) in seqs.iter().enumerate() {
        meta_host[i] = s.query_start as u32;
        meta_host[n + i] = s.num_queries as u32;
        meta_host[2 * n + i] = s.context_len as u32;
        let t = 3 * n + i * max_blocks;
        meta_host[t..t + s.block_table.len()].copy_from_slice(&s.block_table);
    }
    let base = b.cached_u32s(&b.attn_meta, &meta_host)?;
    let at = |k: usize| base + (k * std::mem::size_of::<u32>()) as u64;
    let args = AttnArgs {
        query_start: at(0),
        num_queries: at(n),
        context_len: at(2 * n),
        block_tables: at(3 * n),
        max_blocks: max_blocks as i32,
        block_size: cache.block_size as i32,
        num_heads: num_heads as i32,
        num_kv_heads: cache.num_kv_heads as i32,
        head_dim: hd as i32,
        row_stride: row_stride as i32,
        scale,
        window: sliding_window.unwrap_or(0) as i32,
    };
    let threads = ATTN_WARPS * b.dev.info().warp;
    if seqs.iter().all(|s| s.num_queries == 1) {
        // Decode: split-K (flash-decoding) over partitions of the context, then a
        // reduce. The partials live in the grow-only scratch area.
        let span = seqs
            .iter()
            .map(|s| sliding_window.map_or(s.context_len, |w| s.context_len.min(w)))
            .max()
            .unwrap_or(1);
        let parts = span.div_ceil(PARTITION).max(1);
        let items = seqs.len() * num_heads * parts;
        let base = b.scratch((items * hd + 2 * items) * 4)?;
        let (tmp, maxl, sums) = (
            base,
            base + (items * hd * 4) as u64,
            base + ((items * hd + items) * 4) as u64,
        );
        let cfg = Launch {
            grid: (num_heads as u32, seqs.len() as u32, parts as u32),
            block: (threads, 1, 1),
            shared: 0,
        };
        launch!(
            b,
            "paged_attention_partial",
            cfg,
            qkv.ptr,
            key_cache.ptr,
            value_cache.ptr,
            tmp,
            maxl,
            sums,
            args,
            parts as i32
        )?;
        let cfg = Launch {
            grid: (num_heads as u32, seqs.len() as u32, 1),
            block: (THREADS, 1, 1),
            shared: 0,
        };
        launch!(
            b,
            "paged_attention_reduce",
            cfg,
            out.ptr,
            tmp,
            maxl,
            sums,
            args,
            parts as i32
        )
    } else {
        let max_q = seqs.iter().map(|s| s.num_queries).max().unwrap_or(1);
        let shared = ((ATTN_WARPS as usize * hd + 2 * TILE * hd) * 4) as u32;
        let cfg = Launch {
            grid: (
                max_q.div_ceil(ATTN_WARPS as usize) as u32,
                num_heads as u32,
                seqs.len() as u32,
            ),
            block: (threads, 1, 1),
            shared,
        };
        launch!(
            b,
            "prefill_attention",
            cfg,
            qkv.ptr,
            key_cache.ptr,
            value_cache.ptr,
            out.ptr,
            args
        )
    }
}

struct PagedAttention {
    variant: &'static str,
    cache: KvCacheConfig,
    heads: usize,
    meta: AttentionMetadata,
    window: Option<usize>,
    qkv: Vec<f32>,
    key_cache: Vec<f32>,
    value_cache: Vec<f32>,
}

impl Case for PagedAttention {
    fn op(&self) -> String {
        format!("paged_attention {}", self.variant)
    }
    fn shape(&self) -> String {
        format!("hd{}", self.cache.head_dim)
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let c = &self.cache;
        let (heads, hd) = (self.heads, c.head_dim);
        let stride = (heads + 2 * c.num_kv_heads) * hd;
        let (k, v) = (b.upload(&self.key_cache)?, b.upload(&self.value_cache)?);
        let qkv = b.upload(&self.qkv)?;
        let mut out = poisoned(b, self.meta.num_tokens() * heads * hd)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let (meta, window) = (&self.meta, self.window);
        b.paged_attention(
            &qkv, stride, heads, c, &k, &v, meta, scale, window, &mut out,
        )?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// Three sequences over blocks scattered through a full cache (contexts 700, 40 and
/// 100): as a mixed prefill (1, 40 and 20 new tokens, the 700 split over partitions),
/// the same with a 64-token sliding window, and as decode (one query each).
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for hd in [64, 128] {
        let cache = super::cache::cache_config(hd);
        let heads = 8;
        let stride = (heads + 2 * cache.num_kv_heads) * hd;
        let (key_cache, value_cache) = (
            g.rand(cache.layer_len(), 1.0),
            g.rand(cache.layer_len(), 1.0),
        );
        let mut seqs = Vec::new();
        let mut start = 0;
        for (s, (ctx, nq)) in [(700usize, 1usize), (40, 40), (100, 20)]
            .into_iter()
            .enumerate()
        {
            seqs.push(SeqAttention {
                query_start: start,
                num_queries: nq,
                context_len: ctx,
                block_table: (0..ctx.div_ceil(cache.block_size))
                    .map(|i| ((i * 3 + s * 31) % cache.num_blocks) as u32)
                    .collect(),
            });
            start += nq;
        }
        let decode: Vec<SeqAttention> = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| SeqAttention {
                query_start: i,
                num_queries: 1,
                ..s.clone()
            })
            .collect();
        let qkv = g.rand(start * stride, 1.0);
        for (variant, seqs, window) in [
            ("mixed prefill", seqs.clone(), None),
            ("mixed prefill window 64", seqs, Some(64)),
            ("decode", decode, None),
        ] {
            v.case(PagedAttention {
                variant,
                cache,
                heads,
                meta: AttentionMetadata { seqs },
                window,
                qkv: qkv.clone(),
                key_cache: key_cache.clone(),
                value_cache: value_cache.clone(),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::launch::Params;

    /// `ns_attn_args` is 64 bytes (four pointers, eight 4-byte fields) and travels whole
    /// in one argument slot.
    #[test]
    fn attn_args_fill_one_argument_slot() {
        let a = AttnArgs {
            query_start: 1,
            num_queries: 2,
            context_len: 3,
            block_tables: 4,
            max_blocks: 5,
            block_size: 6,
            num_heads: 7,
            num_kv_heads: 8,
            head_dim: 9,
            row_stride: 10,
            scale: 0.5,
            window: 11,
        };
        assert_eq!(std::mem::size_of::<AttnArgs>(), 64);
        let mut p = Params::new();
        p.push(7u64);
        p.push(a);
        let ptrs = p.ptrs();
        // SAFETY: the second pointer addresses the args pushed into its slot.
        let back = unsafe { *(ptrs[1] as *const AttnArgs) };
        assert_eq!((back.block_tables, back.window, back.scale), (4, 11, 0.5));
        assert_eq!(back.query_start, 1);
    }
}
