//! `kernels/hip/latent.hip` on the host: multi-head latent attention's per-head GEMMs
//! (`head_gemm`), the latent cache write (`cache_rows`) and attention over the latent
//! cache, split-K for every row (`latent_attention_partial` then `_reduce`: a prefill's
//! rows each take their own causal range), with [`LatentArgs`], the mirror of the
//! kernels' `ns_latent_args`, and the ops' conformance cases.

use super::cache::{batch, mixed_seqs, Layout};
use crate::conformance::{output, Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch, ATTN_WARPS, THREADS};
use crate::gpu::{Device, GpuBackend, GpuBuf, Launch};
use crate::{
    shape, AttentionMetadata, Backend, Error, HeadLayout, KvCacheConfig, LatentShape, Result,
};

/// `NS_HG_BM` / `NS_HG_BN` / `NS_HG_THREADS` in latent.hip.
const HG_BM: usize = 8;
const HG_BN: usize = 32;
const HG_THREADS: u32 = 256;
/// `NS_LATENT_PARTITION` and `NS_LATENT_MAX_SLOT` in latent.hip.
const PARTITION: usize = 512;
const MAX_SLOT: usize = 1024;
/// The split-K partials of one launch are rows x heads x partitions x (latent + 2)
/// floats; a longer batch (a long prefill) runs in row chunks within this budget.
pub(crate) const SCRATCH_BYTES: usize = 256 << 20;

#[allow(clippy::too_many_arguments)]
pub(crate) fn head_matmul<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    layout: HeadLayout,
    rows: usize,
    heads: usize,
    w: &GpuBuf<D>,
    k: usize,
    n: usize,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "head_matmul";
    layout.check(OP, "x", rows, heads, k, x.len)?;
    b.check_dtype(OP, "x", x)?;
    b.check(OP, "w", w, heads * n * k)?;
    b.check(OP, "out", out, rows * heads * n)?;
    let cfg = Launch {
        grid: (
            rows.div_ceil(HG_BM) as u32,
            n.div_ceil(HG_BN) as u32,
            if k == 0 { 0 } else { heads as u32 },
        ),
        block: (HG_THREADS, 1, 1),
        shared: 0,
    };
    launch!(
        b,
        "head_gemm",
        cfg,
        out.ptr,
        x.ptr,
        w.ptr,
        rows as i32,
        heads as i32,
        k as i32,
        n as i32,
        layout.row_stride as i32,
        layout.offset as i32,
        layout.head_stride as i32
    )
}

pub(crate) fn cache_rows<D: Device>(
    b: &GpuBackend<D>,
    src: &GpuBuf<D>,
    row_stride: usize,
    col_offset: usize,
    cache: &KvCacheConfig,
    slot_mapping: &[u32],
    cache_buf: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "cache_rows";
    let slot_len = cache.slot_len();
    shape::row_in_row(OP, row_stride, col_offset, slot_len)?;
    b.check(OP, "src", src, slot_mapping.len() * row_stride)?;
    b.check(OP, "cache", cache_buf, cache.layer_len())?;
    shape::slots_in_cache(OP, slot_mapping, cache)?;
    let slots = b.cached_u32s(&b.slots, slot_mapping)?;
    launch!(
        b,
        "cache_rows",
        grid1(slot_mapping.len()),
        src.ptr,
        slots,
        cache_buf.ptr,
        row_stride as i32,
        col_offset as i32,
        slot_len as i32
    )
}

/// `ns_latent_args` in latent.hip, field for field (passed by value).
#[repr(C)]
#[derive(Clone, Copy)]
struct LatentArgs {
    row_seq: u64,
    row_pos: u64,
    block_tables: u64,
    max_blocks: i32,
    block_size: i32,
    heads: i32,
    latent_dim: i32,
    rope_dim: i32,
    rope_stride: i32,
    rope_offset: i32,
    rope_head_stride: i32,
    scale: f32,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn latent_attention<D: Device>(
    b: &GpuBackend<D>,
    q_latent: &GpuBuf<D>,
    q_rope: &GpuBuf<D>,
    rope: HeadLayout,
    shape: LatentShape,
    cache: &KvCacheConfig,
    latent_cache: &GpuBuf<D>,
    meta: &AttentionMetadata,
    scale: f32,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "latent_attention";
    if cache.head_dim > MAX_SLOT {
        return Err(Error::Shape {
            op: OP,
            msg: format!("a latent slot of {} > {MAX_SLOT}", cache.head_dim),
        });
    }
    let rows = shape.validate(
        cache,
        latent_cache.len,
        meta,
        q_latent.len,
        &rope,
        q_rope.len,
        out.len,
    )?;
    for (what, buf) in [
        ("q_latent", q_latent),
        ("q_rope", q_rope),
        ("latent_cache", latent_cache),
        ("out", &*out),
    ] {
        b.check_dtype(OP, what, buf)?;
    }
    if rows == 0 {
        return Ok(());
    }
    let seqs = &meta.seqs;
    let max_blocks = seqs
        .iter()
        .map(|s| s.block_table.len())
        .max()
        .unwrap_or(1)
        .max(1);
    // [row_seq | row_pos | block tables], cached across layers.
    let mut host = vec![0u32; 2 * rows + seqs.len() * max_blocks];
    let mut row = 0;
    for (i, s) in seqs.iter().enumerate() {
        for q in 0..s.num_queries {
            host[row] = i as u32;
            host[rows + row] = (s.context_len - s.num_queries + q) as u32;
            row += 1;
        }
        let t = 2 * rows + i * max_blocks;
        host[t..t + s.block_table.len()].copy_from_slice(&s.block_table);
    }
    let longest = seqs.iter().map(|s| s.context_len).max().unwrap_or(1);
    let parts = longest.div_ceil(PARTITION).max(1);
    let base = b.cached_u32s(&b.attn_meta, &host)?;
    let at = |k: usize| base + (k * std::mem::size_of::<u32>()) as u64;
    let r = shape.latent_dim;
    let args = LatentArgs {
        row_seq: at(0),
        row_pos: at(rows),
        block_tables: at(2 * rows),
        max_blocks: max_blocks as i32,
        block_size: cache.block_size as i32,
        heads: shape.heads as i32,
        latent_dim: r as i32,
        rope_dim: shape.rope_dim(cache) as i32,
        rope_stride: rope.row_stride as i32,
        rope_offset: rope.offset as i32,
        rope_head_stride: rope.head_stride as i32,
        scale,
    };
    // Rows per launch: as many as the scratch budget holds (at least one).
    let per_row = shape.heads * parts * (r + 2) * 4;
    let limit = b.latent_scratch.load(std::sync::atomic::Ordering::Relaxed);
    let chunk = (limit / per_row.max(1)).clamp(1, rows);
    let elem = b.dtype.bytes(1) as u64;
    let tmp = b.scratch(chunk * per_row)?;
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let items = n * shape.heads * parts;
        let (maxl, sums) = (
            tmp + (items * r * 4) as u64,
            tmp + ((items * r + items) * 4) as u64,
        );
        let args = LatentArgs {
            row_seq: at(start),
            row_pos: at(rows + start),
            ..args
        };
        let latent_row = (start * shape.heads * r) as u64 * elem;
        let cfg = Launch {
            grid: (shape.heads as u32, n as u32, parts as u32),
            block: (ATTN_WARPS * b.dev.info().warp, 1, 1),
            shared: 0,
        };
        launch!(
            b,
            "latent_attention_partial",
            cfg,
            q_latent.ptr + latent_row,
            q_rope.ptr + (start * rope.row_stride) as u64 * elem,
            latent_cache.ptr,
            tmp,
            maxl,
            sums,
            args,
            parts as i32
        )?;
        let cfg = Launch {
            grid: (shape.heads as u32, n as u32, 1),
            block: (THREADS, 1, 1),
            shared: 0,
        };
        launch!(
            b,
            "latent_attention_reduce",
            cfg,
            out.ptr + latent_row,
            tmp,
            maxl,
            sums,
            args,
            parts as i32
        )?;
        start += n;
    }
    Ok(())
}

/// `heads` per-head GEMMs over a strided input.
struct HeadMatmul {
    rows: usize,
    heads: usize,
    k: usize,
    n: usize,
    layout: HeadLayout,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case for HeadMatmul {
    fn op(&self) -> String {
        "head_matmul".into()
    }
    fn shape(&self) -> String {
        let l = &self.layout;
        format!(
            "{}x {}h k{} n{} stride{}+{}/{}",
            self.rows, self.heads, self.k, self.n, l.row_stride, l.offset, l.head_stride
        )
    }
    fn empty_input(&self) -> bool {
        self.rows == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let x = b.upload(&self.x)?;
        let w = b.upload_weight(&self.w, self.heads, self.n, self.k)?;
        let mut out = output(b, self.rows * self.heads * self.n)?;
        b.head_matmul(
            &x,
            self.layout,
            self.rows,
            self.heads,
            &w,
            self.k,
            self.n,
            &mut out,
        )?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// Latent rows into scattered slots of a full cache.
struct CacheRows {
    cache: KvCacheConfig,
    row_stride: usize,
    col_offset: usize,
    src: Vec<f32>,
    slots: Vec<u32>,
    init: Vec<f32>,
}

impl Case for CacheRows {
    fn op(&self) -> String {
        "cache_rows".into()
    }
    fn shape(&self) -> String {
        format!(
            "{}x slot{} bs{}",
            self.slots.len(),
            self.cache.head_dim,
            self.cache.block_size
        )
    }
    fn empty_input(&self) -> bool {
        self.slots.is_empty()
    }
    /// The whole cache: the written slots and every slot left alone.
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let src = b.upload(&self.src)?;
        let mut c = b.upload(&self.init)?;
        b.cache_rows(
            &src,
            self.row_stride,
            self.col_offset,
            &self.cache,
            &self.slots,
            &mut c,
        )?;
        Ok(vec![("", b.download(&c)?)])
    }
}

/// Attention over a latent cache: a batch of sequences, the query's rope parts inside a
/// wider row (as the model's q projection leaves them).
struct LatentAttention {
    variant: &'static str,
    shape: LatentShape,
    cache: KvCacheConfig,
    meta: AttentionMetadata,
    rope: HeadLayout,
    q_latent: Vec<f32>,
    q_rope: Vec<f32>,
    latent_cache: Vec<f32>,
}

impl Case for LatentAttention {
    fn op(&self) -> String {
        format!("latent_attention {}", self.variant)
            .trim_end()
            .to_string()
    }
    fn shape(&self) -> String {
        format!(
            "{}x {}h r{} rope{} bs{}",
            self.meta.num_tokens(),
            self.shape.heads,
            self.shape.latent_dim,
            self.shape.rope_dim(&self.cache),
            self.cache.block_size
        )
    }
    fn empty_input(&self) -> bool {
        self.meta.seqs.is_empty()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let ql = b.upload(&self.q_latent)?;
        let qr = b.upload(&self.q_rope)?;
        let c = b.upload(&self.latent_cache)?;
        let rows = self.meta.num_tokens();
        let mut out = output(b, rows * self.shape.heads * self.shape.latent_dim)?;
        // DeepSeek's softmax scale: 1 / sqrt(192).
        b.latent_attention(
            &ql,
            &qr,
            self.rope,
            self.shape,
            &self.cache,
            &c,
            &self.meta,
            0.0722,
            &mut out,
        )?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// Per-head GEMMs at the absorbed projections' shapes (the query's `[dn] → [r]` from a
/// wider q row, and the output's `[r] → [dv]`), with rows past one block and columns
/// past one tile; latent cache writes; and latent attention over mixed batches (prefill
/// crossing blocks, a chunk, decodes) at DeepSeek's latent 512 + rope 64, a small
/// latent, and a context of three partitions.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    // (rows, heads, k, n, layout)
    let hm = [
        (0, 2, 16, 8, HeadLayout::packed(2, 16)),
        (
            3,
            4,
            128,
            512,
            HeadLayout {
                row_stride: 4 * 128 + 4 * 64,
                offset: 0,
                head_stride: 128,
            },
        ),
        (9, 3, 512, 128, HeadLayout::packed(3, 512)),
        (
            5,
            2,
            48,
            40,
            HeadLayout {
                row_stride: 2 * 72 + 16,
                offset: 16,
                head_stride: 72,
            },
        ),
    ];
    for (rows, heads, k, n, layout) in hm {
        v.case(HeadMatmul {
            rows,
            heads,
            k,
            n,
            layout,
            x: g.rand(rows.max(1) * layout.row_stride, 1.0),
            w: g.rand(heads * n * k, 0.1),
        })?;
    }
    // Batches: (variant, heads, latent, rope, block size, seqs as (context, new tokens)).
    type Batch = (
        &'static str,
        usize,
        usize,
        usize,
        usize,
        Vec<(usize, usize)>,
    );
    let mixed = mixed_seqs;
    let batches: Vec<Batch> = vec![
        ("", 2, 32, 16, 16, vec![]),
        ("", 4, 512, 64, 16, mixed(16)),
        ("", 3, 32, 16, 8, mixed(8)),
        ("long", 2, 64, 32, 16, vec![(1100, 1), (1300, 3)]),
    ];
    for (variant, heads, r, dr, bs, seqs) in batches {
        let layout = Layout {
            hd: r + dr,
            group: 1,
            kv_heads: 1,
            block_size: bs,
        };
        let (cache, seqs) = batch(g, layout, &seqs);
        let shape = LatentShape {
            heads,
            latent_dim: r,
        };
        let rows: usize = seqs.iter().map(|s| s.num_queries).sum();
        let nope = 24;
        let rope = HeadLayout {
            row_stride: heads * (nope + dr),
            offset: nope,
            head_stride: nope + dr,
        };
        if variant.is_empty() && heads == 4 {
            // The write of these rows into the same cache shape.
            let slots: Vec<u32> = seqs
                .iter()
                .flat_map(|s| {
                    (s.context_len - s.num_queries..s.context_len)
                        .map(|p| s.block_table[p / bs] * bs as u32 + (p % bs) as u32)
                })
                .collect();
            v.case(CacheRows {
                cache,
                row_stride: r + dr + 8,
                col_offset: 8,
                src: g.rand(slots.len() * (r + dr + 8), 1.0),
                slots,
                init: g.rand(cache.layer_len(), 1.0),
            })?;
        }
        v.case(LatentAttention {
            variant,
            shape,
            cache,
            meta: AttentionMetadata { seqs },
            rope,
            q_latent: g.rand(rows.max(1) * heads * r, 1.0),
            q_rope: g.rand(rows.max(1) * rope.row_stride, 1.0),
            latent_cache: g.rand(cache.layer_len(), 1.0),
        })?;
    }
    Ok(())
}
