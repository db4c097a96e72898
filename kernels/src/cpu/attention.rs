//! Causal attention over the paged KV cache, a block of query tokens by one kv head at
//! a time.
//!
//! A task takes up to [`ROWS`] consecutive tokens of one sequence and one kv head: the
//! `ROWS × group` query heads score every key of the block's span together (each key
//! row is loaded once for all of them), then each token takes its softmax over its own
//! causal range and sums the value rows for its `group` heads in one pass. Every score
//! is `simd::dot` of its two rows and every output element one in-order sum over its
//! keys, so a token's result is the same bits whatever its block, batch or step
//! (prefill, chunked prefill and decode agree).

use super::simd::{self, Queries};
use super::SendPtr;
use crate::error::ensure;
use crate::{AttentionMetadata, KvCacheConfig, Result};
use rayon::prelude::*;

/// Query tokens per task: 4 tokens of a 3-head group are 12 queries, four 3×4
/// micro-kernels per key block.
const ROWS: usize = 4;

#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention(
    qkv: &[f32],
    row_stride: usize,
    num_heads: usize,
    cache: &KvCacheConfig,
    key_cache: &[f32],
    value_cache: &[f32],
    meta: &AttentionMetadata,
    scale: f32,
    sliding_window: Option<usize>,
    out: &mut [f32],
) -> Result<()> {
    let hd = cache.head_dim;
    let kvh = cache.num_kv_heads;
    let num_tokens = meta.validate(row_stride, num_heads, cache, qkv.len(), out.len())?;
    for (what, c) in [("key", key_cache), ("value", value_cache)] {
        ensure(c.len() >= cache.layer_len(), "paged_attention", || {
            format!(
                "the {what} cache holds {} values, the config needs {}",
                c.len(),
                cache.layer_len()
            )
        })?;
    }
    if num_tokens == 0 {
        return Ok(());
    }
    let group = num_heads / kvh;
    let slot_len = cache.slot_len();
    let first_key = |pos: usize| match sliding_window {
        Some(w) if w > 0 => (pos + 1).saturating_sub(w),
        _ => 0,
    };
    // Per sequence, the slot offset (slot · slot_len) of every position its queries can
    // see, from `lo` on: computed once per call, shared by all kv heads and tokens.
    let bs = cache.block_size;
    let spans: Vec<(usize, Vec<usize>)> = meta
        .seqs
        .iter()
        .map(|seq| {
            let lo = first_key(seq.context_len - seq.num_queries);
            // Block by block (no division per position).
            let offs = seq.block_table[lo / bs..seq.context_len.div_ceil(bs)]
                .iter()
                .enumerate()
                .flat_map(|(i, &b)| {
                    let first = (lo / bs + i) * bs;
                    (first.max(lo)..(first + bs).min(seq.context_len))
                        .map(move |t| (b as usize * bs + t - first) * slot_len)
                })
                .collect();
            (lo, offs)
        })
        .collect();
    // Tasks: (sequence, first row, rows) blocks by kv head.
    let blocks: Vec<(usize, usize, usize)> = meta
        .seqs
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| {
            (0..seq.num_queries)
                .step_by(ROWS)
                .map(move |r| (s, seq.query_start + r, ROWS.min(seq.num_queries - r)))
        })
        .collect();
    let outp = SendPtr(out.as_mut_ptr());
    let out_stride = num_heads * hd;
    (0..blocks.len() * kvh).into_par_iter().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, task| {
            let (s, row0, rows) = blocks[task / kvh];
            let kv_head = task % kvh;
            let seq = &meta.seqs[s];
            let (lo, offs) = (spans[s].0, &spans[s].1);
            let pos_of = |row: usize| seq.context_len - seq.num_queries + (row - seq.query_start);
            // The block's key span: from its first token's first key to its last token.
            let (k0, k1) = (first_key(pos_of(row0)), pos_of(row0 + rows - 1) + 1);
            let span = &offs[k0 - lo..k1 - lo];
            let n = span.len();
            let qs = Queries::new(
                &qkv[row0 * row_stride + kv_head * group * hd..],
                row_stride,
                group,
                hd,
                rows,
            );
            // scores[q * n + i]: query q (token q / group, head q % group) by key k0 + i.
            scores.clear();
            scores.resize(rows * group * n, 0.0);
            simd::scores(qs, &key_cache[kv_head * hd..], span, scores);
            for r in 0..rows {
                let pos = pos_of(row0 + r);
                let (a, b) = (first_key(pos) - k0, pos + 1 - k0);
                let sc = &mut scores[r * group * n..(r + 1) * group * n];
                for g in 0..group {
                    simd::softmax_scaled(&mut sc[g * n + a..g * n + b], scale);
                }
                // SAFETY: row row0 + r < num_tokens and the kv head's `group` heads are
                // in bounds of `out` (validated); no other task writes them.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        outp.get()
                            .add((row0 + r) * out_stride + kv_head * group * hd),
                        group * hd,
                    )
                };
                simd::weighted_rows(
                    o,
                    hd,
                    &sc[a..],
                    n,
                    &value_cache[kv_head * hd..],
                    &span[a..b],
                );
            }
        },
    );
    Ok(())
}
