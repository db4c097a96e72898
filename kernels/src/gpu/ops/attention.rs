//! `kernels/hip/attention.hip` on the host: paged attention, the sequences with one
//! query (decodes) as split-K (`paged_attention_partial` then `paged_attention_reduce`)
//! and those with more (prefill, prefill chunks) through the tiled `prefill_attention`,
//! both in one step when the batch mixes them; with [`AttnArgs`], the mirror of the
//! kernels' `ns_attn_args`, and the op's conformance cases.

use super::cache::{batch, mixed_seqs, Layout, LAYOUTS};
use crate::conformance::{output, Case, Gen, Visit};
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
    // Single queries (decodes) go through split-K, longer ones (prefill, chunks) through
    // the prefill kernel; each launch writes only its own sequences' rows of `out`.
    let (decodes, prefills) = split(seqs);
    let order: Vec<&SeqAttention> = decodes.iter().chain(&prefills).map(|&i| &seqs[i]).collect();
    let max_blocks = order
        .iter()
        .map(|s| s.block_table.len())
        .max()
        .unwrap_or(1)
        .max(1);
    // One upload for both launches, cached across layers: the sequences reordered
    // decodes first, [query_start | num_queries | context_len | block tables]; each
    // launch's arrays start at its first sequence. In a batch of one kind the order (and
    // so the buffer) is the batch's own.
    let n = order.len();
    let mut meta_host = vec![0u32; 3 * n + n * max_blocks];
    for (i, s) in order.iter().enumerate() {
        meta_host[i] = s.query_start as u32;
        meta_host[n + i] = s.num_queries as u32;
        meta_host[2 * n + i] = s.context_len as u32;
        let t = 3 * n + i * max_blocks;
        meta_host[t..t + s.block_table.len()].copy_from_slice(&s.block_table);
    }
    let base = b.cached_u32s(&b.attn_meta, &meta_host)?;
    let at = |k: usize| base + (k * std::mem::size_of::<u32>()) as u64;
    // The kernels' view of the sequences from `first` on.
    let args = |first: usize| AttnArgs {
        query_start: at(first),
        num_queries: at(n + first),
        context_len: at(2 * n + first),
        block_tables: at(3 * n + first * max_blocks),
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
    let nd = decodes.len();
    if nd > 0 {
        // Decode: split-K (flash-decoding) over partitions of the context, then a
        // reduce. The partials live in the grow-only scratch area.
        let parts = partitions(&order[..nd], sliding_window);
        let items = nd * num_heads * parts;
        let base = b.scratch((items * hd + 2 * items) * 4)?;
        let (tmp, maxl, sums) = (
            base,
            base + (items * hd * 4) as u64,
            base + ((items * hd + items) * 4) as u64,
        );
        let cfg = Launch {
            grid: (num_heads as u32, nd as u32, parts as u32),
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
            args(0),
            parts as i32
        )?;
        let cfg = Launch {
            grid: (num_heads as u32, nd as u32, 1),
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
            args(0),
            parts as i32
        )?;
    }
    if !prefills.is_empty() {
        let max_q = order[nd..].iter().map(|s| s.num_queries).max().unwrap_or(1);
        let shared = ((ATTN_WARPS as usize * hd + 2 * TILE * hd) * 4) as u32;
        let cfg = Launch {
            grid: (
                max_q.div_ceil(ATTN_WARPS as usize) as u32,
                num_heads as u32,
                prefills.len() as u32,
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
            args(nd)
        )?;
    }
    Ok(())
}

/// The batch's sequences (indices, in batch order) by kernel: single queries (decodes)
/// for split-K, more than one (prefills, prefill chunks) for `prefill_attention`.
/// Sequences with no query have no rows to write and go to neither.
fn split(seqs: &[SeqAttention]) -> (Vec<usize>, Vec<usize>) {
    let of = |keep: fn(usize) -> bool| {
        (0..seqs.len())
            .filter(|&i| keep(seqs[i].num_queries))
            .collect::<Vec<_>>()
    };
    (of(|q| q == 1), of(|q| q > 1))
}

/// Split-K partitions for these decodes: enough for the longest span a query sees (its
/// context, or its window if shorter), at least one.
fn partitions(decodes: &[&SeqAttention], window: Option<usize>) -> usize {
    let span = decodes
        .iter()
        .map(|s| window.map_or(s.context_len, |w| s.context_len.min(w)))
        .max()
        .unwrap_or(1);
    span.div_ceil(PARTITION).max(1)
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
/// over a layout, and the sliding window. Its single queries run the split-K decode,
/// its longer ones the prefill kernel.
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
/// without windows, as decode and mixed (alternating in batch order) with a long
/// prefill chunk. No sequences at all.
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
    // Decodes and prefills alternating in batch order (so neither launch's sequences
    // are one run of the batch), a sequence with no new token among them, and decodes
    // that split into three (or two) partitions and one beside two prefills.
    let mixed = vec![(1025, 1), (1100, 5), (9, 0), (530, 1), (17, 17), (9, 1)];
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
    use crate::gpu::recorder::{backend, launches_with_args, Recorder};
    use crate::gpu::Launch;

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
        // A mixed batch whose decodes split: the decodes go through split-K beside the
        // prefill kernel, with more than one partition.
        let mixed_split = |s: &Spec| {
            let span = |&(ctx, _): &(usize, usize)| s.window.map_or(ctx, |w| ctx.min(w));
            s.seqs.iter().any(|&(_, nq)| nq > 1)
                && s.seqs.iter().any(|q| q.1 == 1 && span(q) > PARTITION)
        };
        assert!(specs.iter().any(mixed_split));
    }

    /// R5: the constants the host sizes launches and scratch with are the kernels' own
    /// `#define`s (a mismatch would misplace partials or overrun shared memory).
    #[test]
    fn the_host_constants_are_the_kernels_defines() {
        let src = include_str!("../../../hip/attention.hip");
        let define = |name: &str| -> usize {
            let line = src
                .lines()
                .find_map(|l| l.trim().strip_prefix(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("no #define {name}"));
            let value = line.split_whitespace().next().unwrap();
            value.parse().unwrap_or_else(|_| panic!("{name} = {value}"))
        };
        assert_eq!(define("NS_PARTITION"), PARTITION);
        assert_eq!(define("NS_TILE"), TILE);
        assert_eq!(define("NS_MAX_HEAD_DIM"), MAX_HEAD_DIM);
    }

    /// `n` values of the u32 array at `ptr` in the recording device's (host) memory.
    fn u32s_at(ptr: u64, n: usize) -> Vec<u32> {
        (0..n)
            // SAFETY: the upload cache keeps the metadata buffer alive, and the tests
            // read only within the arrays they uploaded.
            .map(|i| unsafe { std::ptr::read_unaligned((ptr as *const u32).add(i)) })
            .collect()
    }

    /// A sequence as a kernel sees it: (query_start, num_queries, context_len, block
    /// table).
    type Seen = (u32, u32, u32, Vec<u32>);

    /// The sequences an `AttnArgs` shows its kernel, and the metadata buffer's address.
    fn seen(bytes: &[u8], n: usize) -> (Vec<Seen>, u64) {
        assert_eq!(bytes.len(), std::mem::size_of::<AttnArgs>());
        // SAFETY: the bytes of an AttnArgs argument, recorded whole.
        let a = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const AttnArgs) };
        let (qs, nq, ctx) = (
            u32s_at(a.query_start, n),
            u32s_at(a.num_queries, n),
            u32s_at(a.context_len, n),
        );
        let mb = a.max_blocks as usize;
        let seqs = (0..n)
            .map(|i| {
                let table = u32s_at(a.block_tables + (i * mb * 4) as u64, mb);
                (qs[i], nq[i], ctx[i], table)
            })
            .collect();
        (seqs, a.query_start)
    }

    /// A batch of (context, queries) with block tables 100 * s + block, rows in order.
    fn meta(seqs: &[(usize, usize)], bs: usize) -> AttentionMetadata {
        let mut row = 0;
        let seqs = seqs
            .iter()
            .enumerate()
            .map(|(s, &(ctx, nq))| {
                let seq = SeqAttention {
                    query_start: row,
                    num_queries: nq,
                    context_len: ctx,
                    block_table: (0..ctx.div_ceil(bs) as u32)
                        .map(|b| 100 * s as u32 + b)
                        .collect(),
                };
                row += nq;
                seq
            })
            .collect();
        AttentionMetadata { seqs }
    }

    struct Batch {
        cache: KvCacheConfig,
        heads: usize,
    }

    impl Batch {
        fn new() -> Batch {
            Batch {
                cache: KvCacheConfig {
                    num_blocks: 600,
                    block_size: 16,
                    num_kv_heads: 2,
                    head_dim: 8,
                },
                heads: 4,
            }
        }

        /// Runs the op on the recording device: its launches with their arguments.
        fn run(
            &self,
            b: &GpuBackend<Recorder>,
            meta: &AttentionMetadata,
            window: Option<usize>,
        ) -> Vec<(String, Launch, Vec<Vec<u8>>)> {
            let (c, h) = (&self.cache, self.heads);
            let stride = (h + 2 * c.num_kv_heads) * c.head_dim;
            let rows = meta.num_tokens();
            let kc = b.zeros(c.layer_len()).unwrap();
            let vc = b.zeros(c.layer_len()).unwrap();
            let qkv = b.zeros(rows * stride).unwrap();
            let mut out = b.zeros(rows * h * c.head_dim).unwrap();
            b.paged_attention(&qkv, stride, h, c, &kc, &vc, meta, 0.5, window, &mut out)
                .unwrap();
            launches_with_args(b)
        }
    }

    /// In a mixed batch the decodes go through split-K and only the prefills through the
    /// prefill kernel, with the batch's own rows and block tables; every row is written
    /// by exactly one launch; the second layer reuses the step's metadata upload.
    #[test]
    fn a_mixed_batch_sends_decodes_to_split_k_and_prefills_to_the_prefill_kernel() {
        let b = backend(64);
        let t = Batch::new();
        // decode, prefill, no query, decode, chunk, decode.
        let batch = [(1200, 1), (40, 7), (9, 0), (20, 1), (64, 33), (600, 1)];
        let m = meta(&batch, 16);
        let l = t.run(&b, &m, None);
        let names: Vec<&str> = l.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "paged_attention_partial_f32",
                "paged_attention_reduce_f32",
                "prefill_attention_f32"
            ]
        );
        // Heads x decodes x partitions (1200 tokens: 3 of 512), then heads x decodes, then
        // query blocks (33 queries, 4 per block) x heads x prefills.
        let grids: Vec<_> = l.iter().map(|x| x.1.grid).collect();
        assert_eq!(grids, [(4, 3, 3), (4, 3, 1), (9, 4, 2)]);
        let threads = ATTN_WARPS * 64;
        assert_eq!(l[0].1.block.0, threads);
        assert_eq!(l[2].1.block.0, threads);
        assert_eq!(l[0].2.last().unwrap(), &3i32.to_le_bytes());
        let want = |idx: &[usize]| -> Vec<Seen> {
            idx.iter()
                .map(|&i| {
                    let s = &m.seqs[i];
                    let mut table = s.block_table.clone();
                    table.resize(1200usize.div_ceil(16), 0);
                    (
                        s.query_start as u32,
                        s.num_queries as u32,
                        s.context_len as u32,
                        table,
                    )
                })
                .collect()
        };
        let (partial, meta_ptr) = seen(&l[0].2[6], 3);
        let (reduce, _) = seen(&l[1].2[4], 3);
        let (prefill, _) = seen(&l[2].2[4], 2);
        assert_eq!(partial, want(&[0, 3, 5]));
        assert_eq!(reduce, partial);
        assert_eq!(prefill, want(&[1, 4]));
        // Every row once: a decode's row by the reduce, a prefill's rows by the prefill
        // kernel.
        let mut rows: Vec<u32> = partial.iter().map(|s| s.0 + s.1 - 1).collect();
        rows.extend(prefill.iter().flat_map(|s| s.0..s.0 + s.1));
        rows.sort_unstable();
        assert_eq!(rows, (0..m.num_tokens() as u32).collect::<Vec<_>>());
        // The next layer: the same launches over the same metadata buffer (no upload).
        let again = t.run(&b, &m, None);
        assert_eq!(again.len(), 3);
        assert_eq!(seen(&again[0].2[6], 3).1, meta_ptr);
        assert_eq!(again[2].2[4], l[2].2[4]);
    }

    /// Under a sliding window the decodes split by the window, not the context.
    #[test]
    fn a_mixed_batch_splits_its_decodes_by_the_window() {
        let b = backend(32);
        let m = meta(&[(40, 7), (1200, 1), (2000, 1)], 16);
        let l = Batch::new().run(&b, &m, Some(600));
        let grids: Vec<_> = l.iter().map(|x| (x.0.as_str(), x.1.grid)).collect();
        assert_eq!(
            grids,
            [
                ("paged_attention_partial_f32", (4, 2, 2)),
                ("paged_attention_reduce_f32", (4, 2, 1)),
                ("prefill_attention_f32", (2, 4, 1)),
            ]
        );
    }

    /// A batch of one kind launches as before the split: decodes two kernels, prefills
    /// one, over metadata in the batch's own order.
    #[test]
    fn batches_of_one_kind_launch_one_path_over_the_batch_order() {
        let b = backend(64);
        let t = Batch::new();
        let m = meta(&[(700, 1), (5, 1), (1100, 1)], 16);
        let l = t.run(&b, &m, None);
        let grids: Vec<_> = l.iter().map(|x| (x.0.as_str(), x.1.grid)).collect();
        assert_eq!(
            grids,
            [
                ("paged_attention_partial_f32", (4, 3, 3)),
                ("paged_attention_reduce_f32", (4, 3, 1)),
            ]
        );
        let order: Vec<u32> = seen(&l[0].2[6], 3).0.iter().map(|s| s.2).collect();
        assert_eq!(order, [700, 5, 1100]);
        let m = meta(&[(30, 30), (64, 9), (17, 2)], 16);
        let l = t.run(&b, &m, None);
        let grids: Vec<_> = l.iter().map(|x| (x.0.as_str(), x.1.grid)).collect();
        assert_eq!(grids, [("prefill_attention_f32", (8, 4, 3))]);
        let order: Vec<u32> = seen(&l[0].2[4], 3).0.iter().map(|s| s.2).collect();
        assert_eq!(order, [30, 64, 17]);
        // Only sequences with no new token: nothing to launch.
        let m = meta(&[(30, 0)], 16);
        assert!(t.run(&b, &m, None).is_empty());
    }
}
