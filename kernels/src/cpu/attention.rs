//! Causal attention over the paged KV cache, one (token, kv head) at a time.

use super::simd;
use crate::{AttentionMetadata, KvCacheConfig, Result};
use rayon::prelude::*;

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
    let mut seq_of_row = Vec::with_capacity(num_tokens);
    for (s, seq) in meta.seqs.iter().enumerate() {
        seq_of_row.extend(std::iter::repeat_n(s, seq.num_queries));
    }
    let group = num_heads / kvh;
    // One task per (token, kv head): the `group` query heads sharing a kv head are
    // adjacent in `out`, and each key and value row is read once for all of them.
    out[..num_tokens * num_heads * hd]
        .par_chunks_mut(group * hd)
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, offs): &mut (Vec<f32>, Vec<usize>), (idx, o)| {
                let (row, kv_head) = (idx / kvh, idx % kvh);
                let seq = &meta.seqs[seq_of_row[row]];
                let pos = seq.context_len - seq.num_queries + (row - seq.query_start);
                let first = match sliding_window {
                    Some(w) if w > 0 => (pos + 1).saturating_sub(w),
                    _ => 0,
                };
                let n = pos + 1 - first;
                // The kv head's query heads are adjacent in the row: [group * hd].
                let q0 = row * row_stride + kv_head * group * hd;
                let qs = &qkv[q0..q0 + group * hd];
                // Each position's slot offset, shared by its key and value rows.
                offs.clear();
                offs.extend((first..=pos).map(|t| {
                    let block = seq.block_table[t / cache.block_size] as usize;
                    ((block * cache.block_size + t % cache.block_size) * kvh + kv_head) * hd
                }));
                // scores[g * n + i]: head g's score for position first + i.
                scores.clear();
                scores.resize(group * n, 0.0);
                simd::scores(qs, hd, key_cache, offs, scores);
                for (sc, og) in scores.chunks_exact_mut(n).zip(o.chunks_exact_mut(hd)) {
                    simd::softmax_scaled(sc, scale);
                    simd::weighted_rows(og, sc, value_cache, offs);
                }
            },
        );
    Ok(())
}
