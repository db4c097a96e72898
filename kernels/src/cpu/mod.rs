//! The CPU reference backend: f32 everywhere, deterministic, batch-invariant.
//!
//! Batch invariance holds because every output element is computed by the same
//! sequence of floating-point operations whatever the batch holds: norms and rope are
//! per row, attention is per (token, head) over its own sequence, and the matmul's
//! reduction order depends only on `k` (see `matmul.rs`).

mod attention;
mod latent;
mod matmul;
mod moe;
mod quant;
mod simd;
mod weight;

pub use moe::CpuMoePlan;
pub use weight::CpuWeight;

/// An output pointer shared by the tasks of one parallel op; each task writes a
/// disjoint set of elements (its columns of a GEMM, its rows and heads of attention).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: see above: no two tasks touch the same element.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Taking `self` makes closures capture the whole wrapper, not its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

use crate::error::ensure;
use crate::shape;
use crate::{
    AttentionMetadata, Backend, Dtype, Error, HeadLayout, KvCacheConfig, LatentShape, Result,
};
use crate::{MoeInput, MoeRoute, MoeRouting, StoredRows};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Rows per rayon task for the cheap row-wise ops.
const ROWS_PER_TASK: usize = 8;

/// The CPU backend. Clones share one count of experts read
/// ([`Backend::moe_experts_read`]).
#[derive(Debug, Default, Clone)]
pub struct CpuBackend {
    experts_read: Arc<AtomicU64>,
    /// Whether weights stay in their file's precision (`upload_stored_weight`); off, every
    /// weight is widened to f32 (the oracle).
    native_weights: bool,
}

impl CpuBackend {
    /// The oracle: every weight widened to f32.
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// Keeps weights in their file's precision (bf16, f16, ggml's quantized formats)
    /// where `native`, computing on them as stored; else as [`CpuBackend::new`].
    pub fn with_native_weights(mut self, native: bool) -> Self {
        self.native_weights = native;
        self
    }

    fn count_plan(&self, plan: CpuMoePlan) -> CpuMoePlan {
        self.experts_read
            .fetch_add(plan.active_experts() as u64, Ordering::Relaxed);
        plan
    }
}

fn check_len(op: &'static str, what: &str, buf: &[f32], need: usize) -> Result<()> {
    ensure(buf.len() >= need, op, || {
        format!("{what} holds {} values, needs {need}", buf.len())
    })
}

/// `out = x * rsqrt(mean(x²) + eps) * w`, in the order transformers computes it.
fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum_sq: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (sum_sq / x.len() as f32 + eps).sqrt();
    for ((o, &xv), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = wv * (xv * inv);
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type MoePlan = CpuMoePlan;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn upload_weight(&self, data: &[f32], groups: usize, n: usize, k: usize) -> Result<CpuWeight> {
        CpuWeight::new(data, groups, n, k)
    }

    /// bf16 / f16 in column panels, the quantized formats in tiles for the integer GEMM.
    fn upload_stored_weight(&self, parts: &[StoredRows], k: usize) -> Result<Option<CpuWeight>> {
        if !self.native_weights {
            return Ok(None);
        }
        CpuWeight::from_stored(parts, k)
    }

    fn keeps_stored_weights(&self) -> bool {
        self.native_weights
    }

    fn run_pass<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() {
            f()
        } else {
            rayon::scope(|_| f())
        }
    }

    fn weight_bytes(&self, w: &CpuWeight) -> usize {
        w.bytes()
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn download_prefix(&self, buf: &Vec<f32>, len: usize) -> Result<Vec<f32>> {
        Ok(buf[..len.min(buf.len())].to_vec())
    }

    /// The oracle stores and computes in f32 only.
    fn dtype(&self, _: &Vec<f32>) -> Dtype {
        Dtype::F32
    }

    fn embedding(
        &self,
        table: &CpuWeight,
        vocab: usize,
        hidden: usize,
        ids: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "embedding";
        table.check(OP, "table", 1, vocab, hidden)?;
        check_len(OP, "out", out, ids.len() * hidden)?;
        if hidden == 0 {
            // Nothing to copy; the ids are still checked.
            return match ids.iter().find(|&&id| id as usize >= vocab) {
                Some(&id) => Err(Error::OutOfRange {
                    op: OP,
                    index: id as usize,
                    limit: vocab,
                }),
                None => Ok(()),
            };
        }
        for (row, &id) in out.chunks_exact_mut(hidden).zip(ids) {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::OutOfRange {
                    op: OP,
                    index: id,
                    limit: vocab,
                });
            }
            table.row_into(0, id, row);
        }
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        check_len(OP, "x", x, rows * dim)?;
        check_len(OP, "weight", weight, dim)?;
        check_len(OP, "out", out, rows * dim)?;
        if dim == 0 {
            return Ok(()); // zero-width rows: nothing to normalize
        }
        out[..rows * dim]
            .par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x[..rows * dim].par_chunks(dim * ROWS_PER_TASK))
            .for_each(|(o, xs)| {
                for (orow, xrow) in o.chunks_exact_mut(dim).zip(xs.chunks_exact(dim)) {
                    rms_norm_row(xrow, &weight[..dim], eps, orow);
                }
            });
        Ok(())
    }

    fn add_rms_norm(
        &self,
        residual: &mut Vec<f32>,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        self.add_inplace(residual, x, rows * dim)?;
        self.rms_norm(residual, weight, rows, dim, eps, out)
    }

    fn add_inplace(&self, residual: &mut Vec<f32>, x: &Vec<f32>, len: usize) -> Result<()> {
        const OP: &str = "add_inplace";
        check_len(OP, "residual", residual, len)?;
        check_len(OP, "x", x, len)?;
        for (r, &v) in residual[..len].iter_mut().zip(&x[..len]) {
            *r += v;
        }
        Ok(())
    }

    fn matmul(
        &self,
        x: &Vec<f32>,
        w: &CpuWeight,
        bias: Option<&Vec<f32>>,
        m: usize,
        k: usize,
        n: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "matmul";
        check_len(OP, "x", x, m * k)?;
        w.check(OP, "w", 1, n, k)?;
        check_len(OP, "out", out, m * n)?;
        if let Some(b) = bias {
            check_len(OP, "bias", b, n)?;
        }
        let bias = bias.map(|b| &b[..n]);
        match w.segments() {
            Some(segs) => matmul::matmul_segments(&x[..m * k], segs, bias, m, k, n, out),
            None => matmul::matmul_bt(&x[..m * k], w.group(OP, 0)?, bias, m, k, n, out),
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
        positions: &[u32],
        cos_sin: &Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "rope";
        shape::rope_shape(row_stride, col_offset, num_heads, head_dim, rotary_dim)?;
        check_len(OP, "x", x, positions.len() * row_stride)?;
        if num_heads * rotary_dim == 0 {
            return Ok(()); // nothing to rotate
        }
        let max_pos = cos_sin.len() / rotary_dim;
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= max_pos) {
            return Err(Error::OutOfRange {
                op: OP,
                index: p as usize,
                limit: max_pos,
            });
        }
        let half = rotary_dim / 2;
        x[..positions.len() * row_stride]
            .par_chunks_mut(row_stride)
            .zip(positions.par_iter())
            .for_each(|(row, &pos)| {
                let table = &cos_sin[pos as usize * rotary_dim..(pos as usize + 1) * rotary_dim];
                let (cos, sin) = table.split_at(half);
                let heads = &mut row[col_offset..col_offset + num_heads * head_dim];
                for head in heads.chunks_exact_mut(head_dim) {
                    let (x1, x2) = head[..rotary_dim].split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (x1[i], x2[i]);
                        // transformers: q * cos + rotate_half(q) * sin, no fused multiply-add
                        x1[i] = a * cos[i] + (-b) * sin[i];
                        x2[i] = b * cos[i] + a * sin[i];
                    }
                }
            });
        Ok(())
    }

    fn reshape_and_cache(
        &self,
        qkv: &Vec<f32>,
        row_stride: usize,
        k_offset: usize,
        cache: &KvCacheConfig,
        slot_mapping: &[u32],
        key_cache: &mut Vec<f32>,
        value_cache: &mut Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "reshape_and_cache";
        let slot_len = cache.slot_len();
        shape::kv_in_row(row_stride, k_offset, slot_len)?;
        check_len(OP, "qkv", qkv, slot_mapping.len() * row_stride)?;
        check_len(OP, "key_cache", key_cache, cache.layer_len())?;
        check_len(OP, "value_cache", value_cache, cache.layer_len())?;
        shape::slots_in_cache(OP, slot_mapping, cache)?;
        for (row, &slot) in qkv.chunks_exact(row_stride).zip(slot_mapping) {
            if slot == crate::PADDING_SLOT {
                continue;
            }
            let slot = slot as usize;
            let dst = slot * slot_len..(slot + 1) * slot_len;
            key_cache[dst.clone()].copy_from_slice(&row[k_offset..k_offset + slot_len]);
            value_cache[dst].copy_from_slice(&row[k_offset + slot_len..k_offset + 2 * slot_len]);
        }
        Ok(())
    }

    fn paged_attention(
        &self,
        qkv: &Vec<f32>,
        row_stride: usize,
        num_heads: usize,
        cache: &KvCacheConfig,
        key_cache: &Vec<f32>,
        value_cache: &Vec<f32>,
        meta: &AttentionMetadata,
        scale: f32,
        sliding_window: Option<usize>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        attention::paged_attention(
            qkv,
            row_stride,
            num_heads,
            cache,
            key_cache,
            value_cache,
            meta,
            scale,
            sliding_window,
            out,
        )
    }

    fn head_matmul(
        &self,
        x: &Vec<f32>,
        layout: HeadLayout,
        rows: usize,
        heads: usize,
        w: &CpuWeight,
        k: usize,
        n: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        latent::head_matmul(x, layout, rows, heads, w, k, n, out)
    }

    fn cache_rows(
        &self,
        src: &Vec<f32>,
        row_stride: usize,
        col_offset: usize,
        cache: &KvCacheConfig,
        slot_mapping: &[u32],
        cache_buf: &mut Vec<f32>,
    ) -> Result<()> {
        latent::cache_rows(src, row_stride, col_offset, cache, slot_mapping, cache_buf)
    }

    fn latent_attention(
        &self,
        q_latent: &Vec<f32>,
        q_rope: &Vec<f32>,
        rope: HeadLayout,
        shape: LatentShape,
        cache: &KvCacheConfig,
        latent_cache: &Vec<f32>,
        meta: &AttentionMetadata,
        scale: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        latent::latent_attention(
            q_latent,
            q_rope,
            rope,
            shape,
            cache,
            latent_cache,
            meta,
            scale,
            out,
        )
    }

    fn silu_and_mul(
        &self,
        x: &Vec<f32>,
        rows: usize,
        inter: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "silu_and_mul";
        check_len(OP, "x", x, rows * 2 * inter)?;
        check_len(OP, "out", out, rows * inter)?;
        if inter == 0 {
            return Ok(());
        }
        out[..rows * inter]
            .par_chunks_mut(inter)
            .zip(x[..rows * 2 * inter].par_chunks(2 * inter))
            .for_each(|(o, xr)| {
                let (gate, up) = xr.split_at(inter);
                simd::silu_mul(gate, up, o);
            });
        Ok(())
    }

    /// The logits are already on the host: the argmax of each row in place, without the
    /// copy that the trait's default (`download`) makes.
    fn argmax_rows(&self, x: &Vec<f32>, rows: usize, cols: usize) -> Result<Vec<u32>> {
        check_len("argmax_rows", "x", x, rows * cols)?;
        if cols == 0 {
            return Ok(vec![0; rows]);
        }
        Ok(x[..rows * cols]
            .chunks_exact(cols)
            .map(|r| crate::argmax(r).unwrap_or(0) as u32)
            .collect())
    }

    fn head_rms_norm(
        &self,
        x: &mut Vec<f32>,
        rows: usize,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        weight: &Vec<f32>,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "head_rms_norm";
        shape::heads_in_row(OP, row_stride, col_offset, num_heads, head_dim)?;
        check_len(OP, "x", x, rows * row_stride)?;
        check_len(OP, "weight", weight, head_dim)?;
        if num_heads * head_dim == 0 {
            return Ok(()); // no head to normalize (also covers row_stride 0)
        }
        x[..rows * row_stride]
            .par_chunks_mut(row_stride)
            .for_each_init(
                || vec![0.0f32; head_dim],
                |tmp, row| {
                    let heads = &mut row[col_offset..col_offset + num_heads * head_dim];
                    for head in heads.chunks_exact_mut(head_dim) {
                        tmp.copy_from_slice(head);
                        rms_norm_row(tmp, &weight[..head_dim], eps, head);
                    }
                },
            );
        Ok(())
    }

    fn gather_rows(
        &self,
        x: &Vec<f32>,
        dim: usize,
        indices: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<()> {
        const OP: &str = "gather_rows";
        check_len(OP, "out", out, indices.len() * dim)?;
        if dim == 0 {
            return Ok(());
        }
        let rows = x.len() / dim;
        for (o, &i) in out.chunks_exact_mut(dim).zip(indices) {
            if i >= rows {
                return Err(Error::OutOfRange {
                    op: OP,
                    index: i,
                    limit: rows,
                });
            }
            o.copy_from_slice(&x[i * dim..(i + 1) * dim]);
        }
        Ok(())
    }

    fn moe_route(
        &self,
        x: &Vec<f32>,
        gate: &CpuWeight,
        rows: usize,
        hidden: usize,
        routing: &MoeRouting,
        bias: Option<&Vec<f32>>,
    ) -> Result<CpuMoePlan> {
        const OP: &str = "moe_route";
        routing.check(OP)?;
        let e = routing.num_experts;
        check_len(OP, "x", x, rows * hidden)?;
        gate.check(OP, "gate", 1, e, hidden)?;
        if let Some(b) = bias {
            check_len(OP, "bias", b, e)?;
        }
        let mut logits = vec![0f32; rows * e];
        matmul::matmul_bt(
            &x[..rows * hidden],
            gate.group(OP, 0)?,
            None,
            rows,
            hidden,
            e,
            &mut logits,
        );
        let route = crate::moe::route_rows(&logits, rows, routing, bias.map(|b| b.as_slice()));
        Ok(self.count_plan(CpuMoePlan::new(route, rows, routing)))
    }

    fn moe_plan(
        &self,
        route: &MoeRoute,
        tokens: usize,
        routing: &MoeRouting,
    ) -> Result<CpuMoePlan> {
        Ok(self.count_plan(CpuMoePlan::checked(route, tokens, routing)?))
    }

    fn moe_choices(&self, plan: &CpuMoePlan) -> Result<MoeRoute> {
        Ok(plan.route().clone())
    }

    fn moe_matmul(
        &self,
        x: &Vec<f32>,
        input: MoeInput,
        plan: &CpuMoePlan,
        w: &CpuWeight,
        k: usize,
        n: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        moe::moe_matmul(x, input, plan, w, k, n, out)
    }

    fn moe_combine(
        &self,
        y: &Vec<f32>,
        plan: &CpuMoePlan,
        dim: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        moe::moe_combine(y, plan, dim, out)
    }

    fn moe_experts_read(&self) -> Result<u64> {
        Ok(self.experts_read.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests;
