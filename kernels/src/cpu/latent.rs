//! Multi-head latent attention on the CPU: the per-head GEMMs of the absorbed
//! up-projections, the latent cache write, and attention over the latent cache.
//!
//! Attention runs one task per (token, head): the token's scores over its causal range
//! (two in-order dot products per key, latent then rope, summed), a max-subtracted
//! softmax, and the weighted sum of the latents in key order. Nothing depends on the
//! rest of the batch, so prefill, chunked prefill and decode give a token the same bits.

use super::simd;
use super::{CpuWeight, SendPtr};
use crate::error::ensure;
use crate::{AttentionMetadata, HeadLayout, KvCacheConfig, LatentShape, Result};
use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
pub(crate) fn head_matmul(
    x: &[f32],
    layout: HeadLayout,
    rows: usize,
    heads: usize,
    w: &CpuWeight,
    k: usize,
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "head_matmul";
    layout.check(OP, "x", rows, heads, k, x.len())?;
    w.check(OP, "w", heads, n, k)?;
    ensure(out.len() >= rows * heads * n, OP, || {
        format!("out holds {} values, needs {}", out.len(), rows * heads * n)
    })?;
    if rows * heads * n == 0 {
        return Ok(());
    }
    let panels = w.all_panels(OP)?;
    let per = simd::panels_len(n, k);
    let c = SendPtr(out.as_mut_ptr());
    (0..heads).into_par_iter().for_each_init(Vec::new, |xs, h| {
        // The head's rows, contiguous for the panel GEMM.
        xs.clear();
        for r in 0..rows {
            let at = layout.at(r, h, 0);
            xs.extend_from_slice(&x[at..at + k]);
        }
        // SAFETY: xs is [rows, k], group h is [n, k]; out is [rows, heads * n] (checked)
        // and columns h * n..(h + 1) * n belong to this task alone.
        unsafe {
            simd::gemm_bt(
                xs,
                &panels[h * per..(h + 1) * per],
                k,
                0..rows,
                0..n,
                c.get().add(h * n),
                heads * n,
            )
        };
    });
    Ok(())
}

pub(crate) fn cache_rows(
    src: &[f32],
    row_stride: usize,
    col_offset: usize,
    cache: &KvCacheConfig,
    slot_mapping: &[u32],
    cache_buf: &mut [f32],
) -> Result<()> {
    const OP: &str = "cache_rows";
    let slot_len = cache.slot_len();
    crate::shape::row_in_row(OP, row_stride, col_offset, slot_len)?;
    ensure(src.len() >= slot_mapping.len() * row_stride, OP, || {
        "src is shorter than the batch".into()
    })?;
    ensure(cache_buf.len() >= cache.layer_len(), OP, || {
        format!(
            "the cache holds {} values, the config needs {}",
            cache_buf.len(),
            cache.layer_len()
        )
    })?;
    crate::shape::slots_in_cache(OP, slot_mapping, cache)?;
    for (i, &slot) in slot_mapping.iter().enumerate() {
        if slot == crate::PADDING_SLOT {
            continue;
        }
        let s = slot as usize * slot_len;
        let from = i * row_stride + col_offset;
        cache_buf[s..s + slot_len].copy_from_slice(&src[from..from + slot_len]);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn latent_attention(
    q_latent: &[f32],
    q_rope: &[f32],
    rope: HeadLayout,
    shape: LatentShape,
    cache: &KvCacheConfig,
    latent_cache: &[f32],
    meta: &AttentionMetadata,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let rows = shape.validate(
        cache,
        latent_cache.len(),
        meta,
        q_latent.len(),
        &rope,
        q_rope.len(),
        out.len(),
    )?;
    let (heads, r) = (shape.heads, shape.latent_dim);
    let dr = shape.rope_dim(cache);
    let (bs, slot_len) = (cache.block_size, cache.slot_len());
    // Each row's sequence and position.
    let mut row_of = Vec::with_capacity(rows);
    for (s, seq) in meta.seqs.iter().enumerate() {
        for q in 0..seq.num_queries {
            row_of.push((s, seq.context_len - seq.num_queries + q));
        }
    }
    let o = SendPtr(out.as_mut_ptr());
    (0..rows * heads)
        .into_par_iter()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
            let (row, h) = (task / heads, task % heads);
            let (s, pos) = row_of[row];
            let table = &meta.seqs[s].block_table;
            let ql = &q_latent[(row * heads + h) * r..][..r];
            let qr = &q_rope[rope.at(row, h, 0)..][..dr];
            let slot = |t: usize| (table[t / bs] as usize * bs + t % bs) * slot_len;
            scores.clear();
            scores.extend((0..=pos).map(|t| {
                let key = &latent_cache[slot(t)..][..slot_len];
                simd::dot(ql, &key[..r]) + simd::dot(qr, &key[r..])
            }));
            simd::softmax_scaled(scores, scale);
            // SAFETY: row < rows and head h < heads (validated): this task alone writes
            // these latent_dim values of out.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(o.get().add((row * heads + h) * r), r) };
            dst.fill(0.0);
            for (t, &p) in scores.iter().enumerate() {
                let lat = &latent_cache[slot(t)..][..r];
                for (d, &v) in dst.iter_mut().zip(lat) {
                    *d += p * v;
                }
            }
        });
    Ok(())
}
