//! Causal attention over the paged KV cache, one (token, head) at a time.

use crate::error::ensure;
use crate::{AttentionMetadata, Error, KvCacheConfig, Result};
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
    const OP: &str = "paged_attention";
    let hd = cache.head_dim;
    let kvh = cache.num_kv_heads;
    ensure(kvh > 0 && num_heads.is_multiple_of(kvh), OP, || {
        format!("{num_heads} heads is not a multiple of {kvh} kv heads")
    })?;
    ensure(num_heads * hd <= row_stride, OP, || {
        "q overruns the row".into()
    })?;
    let num_tokens = meta.num_tokens();
    ensure(qkv.len() >= num_tokens * row_stride, OP, || {
        "qkv is shorter than the batch".into()
    })?;
    ensure(out.len() >= num_tokens * num_heads * hd, OP, || {
        "out is shorter than the batch".into()
    })?;
    // Validate every sequence before any work so that tasks cannot fail midway.
    let mut seq_of_row = Vec::with_capacity(num_tokens);
    for (s, seq) in meta.seqs.iter().enumerate() {
        ensure(seq.query_start == seq_of_row.len(), OP, || {
            format!(
                "sequence {s} starts at row {} (expected {})",
                seq.query_start,
                seq_of_row.len()
            )
        })?;
        ensure(seq.num_queries <= seq.context_len, OP, || {
            format!("sequence {s} has more queries than context")
        })?;
        let need = seq.context_len.div_ceil(cache.block_size);
        ensure(seq.block_table.len() >= need, OP, || {
            format!(
                "sequence {s} has {} blocks, needs {need}",
                seq.block_table.len()
            )
        })?;
        if let Some(&b) = seq.block_table[..need]
            .iter()
            .find(|&&b| b as usize >= cache.num_blocks)
        {
            return Err(Error::OutOfRange {
                op: OP,
                index: b as usize,
                limit: cache.num_blocks,
            });
        }
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
