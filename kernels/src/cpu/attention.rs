//! Causal attention over the paged KV cache, one (token, head) at a time.

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
    out[..num_tokens * num_heads * hd]
        .par_chunks_mut(hd)
        .enumerate()
        .for_each_init(Vec::new, |scores, (idx, o)| {
            let (row, head) = (idx / num_heads, idx % num_heads);
            let seq = &meta.seqs[seq_of_row[row]];
            let pos = seq.context_len - seq.num_queries + (row - seq.query_start);
            let first = match sliding_window {
                Some(w) if w > 0 => (pos + 1).saturating_sub(w),
                _ => 0,
            };
            let q = &qkv[row * row_stride + head * hd..row * row_stride + (head + 1) * hd];
            let kv_head = head / group;
            let slot_offset = |t: usize| {
                let block = seq.block_table[t / cache.block_size] as usize;
                ((block * cache.block_size + t % cache.block_size) * kvh + kv_head) * hd
            };
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for t in first..=pos {
                let off = slot_offset(t);
                let kv = &key_cache[off..off + hd];
                let dot: f32 = q.iter().zip(kv).map(|(a, b)| a * b).sum();
                let s = dot * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (i, t) in (first..=pos).enumerate() {
                let p = scores[i] / sum;
                let off = slot_offset(t);
                for (ov, &vv) in o.iter_mut().zip(&value_cache[off..off + hd]) {
                    *ov += p * vv;
                }
            }
        });
    Ok(())
}
