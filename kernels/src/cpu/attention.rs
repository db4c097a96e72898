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
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, (idx, o)| {
            let (row, kv_head) = (idx / kvh, idx % kvh);
            let seq = &meta.seqs[seq_of_row[row]];
            let pos = seq.context_len - seq.num_queries + (row - seq.query_start);
            let first = match sliding_window {
                Some(w) if w > 0 => (pos + 1).saturating_sub(w),
                _ => 0,
            };
            let n = pos + 1 - first;
            let q = |g: usize| {
                let h = kv_head * group + g;
                &qkv[row * row_stride + h * hd..row * row_stride + (h + 1) * hd]
            };
            let slot = |t: usize| {
                let block = seq.block_table[t / cache.block_size] as usize;
                ((block * cache.block_size + t % cache.block_size) * kvh + kv_head) * hd
            };
            let key = |t: usize| &key_cache[slot(t)..slot(t) + hd];
            // scores[g * n + i]: head g's score for position first + i.
            scores.clear();
            scores.resize(group * n, 0.0);
            let mut i = 0;
            while i + 4 <= n {
                let ks = [
                    key(first + i),
                    key(first + i + 1),
                    key(first + i + 2),
                    key(first + i + 3),
                ];
                for g in 0..group {
                    let d = simd::dot4(q(g), &ks);
                    scores[g * n + i..g * n + i + 4].copy_from_slice(&d);
                }
                i += 4;
            }
            for i in i..n {
                let k = key(first + i);
                for g in 0..group {
                    scores[g * n + i] = simd::dot(q(g), k);
                }
            }
            let mut sums = vec![0.0f32; group];
            for (g, sc) in scores.chunks_exact_mut(n).enumerate() {
                let max = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s * scale));
                let mut sum = 0.0f32;
                for s in sc.iter_mut() {
                    *s = (*s * scale - max).exp();
                    sum += *s;
                }
                sums[g] = sum;
            }
            o.fill(0.0);
            for i in 0..n {
                let off = slot(first + i);
                let v = &value_cache[off..off + hd];
                for (g, og) in o.chunks_exact_mut(hd).enumerate() {
                    let p = scores[g * n + i] / sums[g];
                    for (ov, &vv) in og.iter_mut().zip(v) {
                        *ov += p * vv;
                    }
                }
            }
        });
    Ok(())
}
