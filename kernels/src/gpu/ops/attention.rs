//! `kernels/hip/attention.hip` on the host: paged attention, as split-K decode
//! (`paged_attention_partial` then `paged_attention_reduce`) when every sequence has one
//! query, else the tiled `prefill_attention`; with [`AttnArgs`], the mirror of the
//! kernels' `ns_attn_args`, and the op's conformance cases.

use super::cache::{batch, mixed_seqs, Layout, LAYOUTS};
use crate::conformance::{output, Case, Gen, Visit};
use crate::gpu::launch::{launch, ATTN_WARPS, THREADS};
use crate::gpu::{Device, GpuBackend, GpuBuf, Launch};
use crate::{AttentionMetadata, Backend, Error, KvCacheConfig, Result};

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
    variant: String,
    layout: Layout,
    cache: KvCacheConfig,
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
        self.layout.shape()
    }
    fn empty_input(&self) -> bool {
        self.meta.seqs.is_empty()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let (c, l) = (&self.cache, &self.layout);
        let (heads, hd) = (l.heads(), l.hd);
        let (k, v) = (b.upload(&self.key_cache)?, b.upload(&self.value_cache)?);
        let qkv = b.upload(&self.qkv)?;
        let mut out = output(b, self.meta.num_tokens() * heads * hd)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let (meta, window) = (&self.meta, self.window);
        b.paged_attention(
            &qkv,
            l.stride(),
            heads,
            c,
            &k,
            &v,
            meta,
            scale,
            window,
            &mut out,
        )?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// One attention case before its inputs are drawn: a batch of (context, new tokens)
/// over a layout, and the sliding window. A batch of single queries runs the split-K
/// decode; any other the prefill kernel.
struct Spec {
    variant: String,
    layout: Layout,
    seqs: Vec<(usize, usize)>,
    window: Option<usize>,
}

impl Spec {
    fn new(
        variant: &str,
        layout: Layout,
        seqs: Vec<(usize, usize)>,
        window: Option<usize>,
    ) -> Spec {
        let variant = match window {
            Some(w) => format!("{variant} window {w}"),
            None => variant.to_string(),
        };
        Spec {
            variant,
            layout,
            seqs,
            window,
        }
    }

    /// The (query, key, head-dim) multiply-adds of the scores: what a simulated device
    /// pays for (the weighted sum of values costs as much again).
    fn macs(&self) -> usize {
        let keys: usize = self
            .seqs
            .iter()
            .flat_map(|&(ctx, nq)| ctx - nq..ctx)
            .map(|p| self.window.map_or(p + 1, |w| (p + 1).min(w)))
            .sum();
        keys * self.layout.heads() * self.layout.hd
    }
}

/// Random batches are redrawn until they cost at most this many multiply-adds.
const RANDOM_MACS: usize = 300_000;

/// The attention table. At every layout of [`LAYOUTS`] (each head size, GQA groups 1 to
/// 8, blocks of 16 and 32): decodes at block boundaries (contexts 1, bs - 1, bs, bs + 1,
/// 2 bs), a mixed batch (prefill, chunk and decodes, see [`mixed_seqs`]) and the same
/// under a sliding window (from a window of one token to two blocks). With few heads,
/// contexts that split over split-K partitions (at and past 512, 1024, 1536), with and
/// without windows, as decode and mixed with a long prefill chunk. No sequences at all.
/// Random layouts and batches. All inputs drawn after the shapes.
fn specs(g: &mut Gen) -> Vec<Spec> {
    let mut specs = vec![Spec::new("empty", LAYOUTS[0], vec![], None)];
    let windows = [16, 1, 19, 15, 20];
    for (l, w) in LAYOUTS.into_iter().zip(windows) {
        let bs = l.block_size;
        let decode = [1, bs - 1, bs, bs + 1, 2 * bs].map(|c| (c, 1)).to_vec();
        specs.push(Spec::new("decode", l, decode, None));
        specs.push(Spec::new("mixed", l, mixed_seqs(bs), None));
        specs.push(Spec::new("mixed", l, mixed_seqs(bs), Some(w)));
    }
    let long = Layout {
        hd: 64,
        group: 1,
        kv_heads: 1,
        block_size: 16,
    };
    let decode: Vec<_> = [512, 513, 1025, 1536].map(|c| (c, 1)).to_vec();
    specs.push(Spec::new("long decode", long, decode.clone(), None));
    specs.push(Spec::new("long decode", long, decode.clone(), Some(512)));
    specs.push(Spec::new("long decode", long, decode, Some(700)));
    let mixed = vec![(1025, 1), (1100, 5), (17, 17)];
    specs.push(Spec::new("long mixed", long, mixed.clone(), None));
    specs.push(Spec::new("long mixed", long, mixed, Some(600)));
    let long2 = Layout {
        hd: 128,
        group: 2,
        kv_heads: 1,
        block_size: 32,
    };
    let decode: Vec<_> = [1024, 1025, 1536].map(|c| (c, 1)).to_vec();
    specs.push(Spec::new("long decode", long2, decode.clone(), None));
    specs.push(Spec::new("long decode", long2, decode, Some(600)));
    for (i, kind) in ["decode", "mixed", "mixed"].into_iter().enumerate() {
        loop {
            let l = Layout::random(g);
            let n = g.range(1, 4);
            let seqs: Vec<_> = (0..n)
                .map(|_| match kind {
                    "decode" => (g.range(1, 300), 1),
                    _ => {
                        let ctx = g.range(1, 100);
                        (ctx, g.range(1, ctx))
                    }
                })
                .collect();
            let window = (g.range(0, 1) == 1).then(|| g.range(1, 64));
            let s = Spec::new(&format!("random {i} {kind}"), l, seqs, window);
            if s.macs() <= RANDOM_MACS {
                specs.push(s);
                break;
            }
        }
    }
    specs
}

pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for spec in specs(g) {
        let l = spec.layout;
        let (cache, seqs) = batch(g, l, &spec.seqs);
        let meta = AttentionMetadata { seqs };
        v.case(PagedAttention {
            variant: spec.variant,
            layout: l,
            cache,
            window: spec.window,
            key_cache: g.rand(cache.layer_len(), 1.0),
            value_cache: g.rand(cache.layer_len(), 1.0),
            // Queries at 4x make the softmax peaked, so a key misread shows.
            qkv: g.rand(meta.num_tokens().max(1) * l.stride(), 4.0),
            meta,
        })?;
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

    /// The table's attention stays cheap enough for a simulated device (every kernel
    /// thread a fiber): a few million multiply-adds per storage type, and it keeps its
    /// named edges (each head size, groups 1 to 8, contexts split over partitions).
    #[test]
    fn the_attention_cases_cover_the_edges_within_budget() {
        let specs = specs(&mut Gen::new(7, crate::Dtype::F32));
        let macs: usize = specs.iter().map(Spec::macs).sum();
        assert!(macs < 6_000_000, "{macs} multiply-adds");
        for hd in super::super::cache::HEAD_DIMS {
            assert!(specs.iter().any(|s| s.layout.hd == hd), "hd {hd}");
        }
        for group in [1, 2, 4, 8] {
            assert!(
                specs.iter().any(|s| s.layout.group == group),
                "group {group}"
            );
        }
        let split = |s: &Spec| {
            let all_decode = s.seqs.iter().all(|&(_, nq)| nq == 1);
            let span = |&(ctx, _): &(usize, usize)| s.window.map_or(ctx, |w| ctx.min(w));
            all_decode && s.seqs.iter().map(span).max().unwrap_or(0) > 2 * PARTITION
        };
        assert!(specs.iter().any(split));
    }
}
