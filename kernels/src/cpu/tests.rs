use super::*;
use crate::SeqAttention;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn randn(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn naive_matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for l in 0..k {
                acc += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            out[i * n + j] = acc as f32;
        }
    }
    out
}

#[test]
fn matmul_matches_naive_with_bias() {
    let b = CpuBackend::new();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(m, k, n) in &[(1, 7, 5), (3, 64, 130), (17, 300, 257), (40, 576, 64)] {
        let x = randn(&mut rng, m * k);
        let w = randn(&mut rng, n * k);
        let bias = randn(&mut rng, n);
        let mut out = vec![0.0; m * n];
        let wp = b.upload_weight(&w, 1, n, k).unwrap();
        b.matmul(&x, &wp, Some(&bias), m, k, n, &mut out).unwrap();
        let mut want = naive_matmul(&x, &w, m, k, n);
        for row in want.chunks_exact_mut(n) {
            for (o, bv) in row.iter_mut().zip(&bias) {
                *o += bv;
            }
        }
        for (a, e) in out.iter().zip(&want) {
            assert!((a - e).abs() < 1e-4, "{m}x{k}x{n}: {a} vs {e}");
        }
    }
}

#[test]
fn matmul_is_batch_invariant() {
    // A row's result must be bit-identical whether it is computed alone or inside any
    // batch, including k larger than one kc block and n not a multiple of the kernel.
    let b = CpuBackend::new();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for &(k, n) in &[(576, 1536), (1536, 576), (300, 1000), (64, 515)] {
        let big_m = 37;
        let x = randn(&mut rng, big_m * k);
        let w = b.upload_weight(&randn(&mut rng, n * k), 1, n, k).unwrap();
        let mut batched = vec![0.0; big_m * n];
        b.matmul(&x, &w, None, big_m, k, n, &mut batched).unwrap();
        for &(start, m) in &[(0, 1), (5, 1), (36, 1), (3, 16), (8, 8), (1, 29)] {
            let mut part = vec![0.0; m * n];
            b.matmul(
                &x[start * k..(start + m) * k].to_vec(),
                &w,
                None,
                m,
                k,
                n,
                &mut part,
            )
            .unwrap();
            assert_eq!(
                part[..],
                batched[start * n..(start + m) * n],
                "k={k} n={n} rows {start}+{m}"
            );
        }
    }
}

#[test]
fn ops_reject_bad_shapes_without_panicking() {
    let b = CpuBackend::new();
    let mut out = vec![0.0; 4];
    let w = b.upload_weight(&[0.0; 4], 1, 2, 2).unwrap();
    assert!(b
        .matmul(&vec![0.0; 3], &w, None, 2, 2, 2, &mut out)
        .is_err());
    assert!(b
        .matmul(&vec![0.0; 4], &w, None, 2, 2, 1, &mut out)
        .is_err());
    assert!(b.upload_weight(&[0.0; 3], 1, 2, 2).is_err());
    let table = b.upload_weight(&[0.0; 8], 1, 4, 2).unwrap();
    assert!(b.embedding(&table, 4, 2, &[4], &mut out).is_err());
    assert!(b
        .rms_norm(&vec![0.0; 4], &vec![1.0; 1], 2, 2, 1e-6, &mut out)
        .is_err());
}

#[test]
fn rms_norm_matches_definition() {
    let b = CpuBackend::new();
    let x = vec![1.0f32, 2.0, 3.0, -4.0];
    let w = vec![0.5f32, 2.0];
    let mut out = vec![0.0; 4];
    b.rms_norm(&x, &w, 2, 2, 1e-6, &mut out).unwrap();
    let r0 = (2.5f32 + 1e-6).sqrt();
    let r1 = (12.5f32 + 1e-6).sqrt();
    let want = [0.5 / r0, 4.0 / r0, 1.5 / r1, -8.0 / r1];
    for (a, e) in out.iter().zip(want) {
        assert!((a - e).abs() < 1e-6);
    }
}

#[test]
fn rope_rotates_halves() {
    let b = CpuBackend::new();
    // head_dim 4: pairs (0, 2) and (1, 3) rotate by the angles in the table.
    let (c0, s0, c1, s1) = (0.6f32, 0.8f32, 1.0f32, 0.0f32);
    let table = vec![1.0, 1.0, 0.0, 0.0, c0, c1, s0, s1];
    let mut x = vec![9.0, 1.0, 2.0, 3.0, 4.0];
    b.rope(&mut x, 5, 1, 1, 4, 4, &[1], &table).unwrap();
    assert_eq!(
        x,
        vec![9.0, 1.0 * c0 - 3.0 * s0, 2.0, 3.0 * c0 + 1.0 * s0, 4.0]
    );
    assert!(b.rope(&mut x, 5, 1, 1, 4, 4, &[2], &table).is_err());
    // Partial rotary: only the first 2 of 4 values of the head turn (pairs 0 and 1).
    let table = vec![1.0, 0.0, c0, s0];
    let mut x = vec![9.0, 1.0, 2.0, 3.0, 4.0];
    b.rope(&mut x, 5, 1, 1, 4, 2, &[1], &table).unwrap();
    assert_eq!(
        x,
        vec![9.0, 1.0 * c0 - 2.0 * s0, 2.0 * c0 + 1.0 * s0, 3.0, 4.0]
    );
    assert!(b.rope(&mut x, 5, 1, 1, 4, 6, &[0], &table).is_err());
    assert!(b.rope(&mut x, 5, 1, 1, 4, 3, &[0], &table).is_err());
}

/// Dense causal attention for one sequence, as the oracle's oracle.
#[allow(clippy::too_many_arguments)]
fn dense_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    h: usize,
    kvh: usize,
    d: usize,
    window: Option<usize>,
) -> Vec<f32> {
    let mut out = vec![0.0f32; t * h * d];
    let scale = 1.0 / (d as f32).sqrt();
    for i in 0..t {
        for hh in 0..h {
            let kh = hh / (h / kvh);
            let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
            let scores: Vec<f64> = (lo..=i)
                .map(|j| {
                    (0..d)
                        .map(|x| q[(i * h + hh) * d + x] as f64 * k[(j * kvh + kh) * d + x] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (n, j) in (lo..=i).enumerate() {
                let p = (scores[n] - max).exp() / z;
                for x in 0..d {
                    out[(i * h + hh) * d + x] += (p * v[(j * kvh + kh) * d + x] as f64) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn paged_attention_matches_dense_for_chunked_prefill_and_batches() {
    let b = CpuBackend::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (h, kvh, d, bs) = (4, 2, 8, 4);
    let cache = KvCacheConfig {
        num_blocks: 16,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: d,
    };
    let stride = (h + 2 * kvh) * d;
    for window in [None, Some(3)] {
        // Two sequences: A of 10 tokens (blocks scattered), B of 5 tokens.
        let lens = [10usize, 5];
        let tables = [vec![7u32, 2, 9], vec![4u32, 0]];
        let rows: Vec<Vec<f32>> = lens.iter().map(|&l| randn(&mut rng, l * stride)).collect();
        let mut kc = vec![0.0; cache.layer_len()];
        let mut vc = vec![0.0; cache.layer_len()];
        let slot = |s: usize, t: usize| tables[s][t / bs] * bs as u32 + (t % bs) as u32;
        // Step 1: A prefills 6 tokens, B prefills all 5. Step 2: A's last 4 tokens.
        let steps: [Vec<(usize, std::ops::Range<usize>)>; 2] =
            [vec![(0, 0..6), (1, 0..5)], vec![(0, 6..10)]];
        let mut got: Vec<Vec<f32>> = lens.iter().map(|&l| vec![0.0; l * h * d]).collect();
        for step in &steps {
            let mut qkv = Vec::new();
            let mut slots = Vec::new();
            let mut meta = AttentionMetadata::default();
            for (s, r) in step {
                meta.seqs.push(SeqAttention {
                    query_start: slots.len(),
                    num_queries: r.len(),
                    context_len: r.end,
                    block_table: tables[*s].clone(),
                });
                for t in r.clone() {
                    qkv.extend_from_slice(&rows[*s][t * stride..(t + 1) * stride]);
                    slots.push(slot(*s, t));
                }
            }
            b.reshape_and_cache(&qkv, stride, h * d, &cache, &slots, &mut kc, &mut vc)
                .unwrap();
            let mut out = vec![0.0; slots.len() * h * d];
            b.paged_attention(
                &qkv,
                stride,
                h,
                &cache,
                &kc,
                &vc,
                &meta,
                1.0 / (d as f32).sqrt(),
                window,
                &mut out,
            )
            .unwrap();
            let mut row = 0;
            for (s, r) in step {
                for t in r.clone() {
                    got[*s][t * h * d..(t + 1) * h * d]
                        .copy_from_slice(&out[row * h * d..(row + 1) * h * d]);
                    row += 1;
                }
            }
        }
        for (s, &l) in lens.iter().enumerate() {
            let pick = |off: usize, width: usize| -> Vec<f32> {
                (0..l)
                    .flat_map(|t| rows[s][t * stride + off..t * stride + off + width].to_vec())
                    .collect()
            };
            let want = dense_attention(
                &pick(0, h * d),
                &pick(h * d, kvh * d),
                &pick((h + kvh) * d, kvh * d),
                l,
                h,
                kvh,
                d,
                window,
            );
            for (a, e) in got[s].iter().zip(&want) {
                assert!(
                    (a - e).abs() < 1e-5,
                    "seq {s} window {window:?}: {a} vs {e}"
                );
            }
        }
    }
}

#[test]
fn paged_attention_rejects_bad_block_tables() {
    let b = CpuBackend::new();
    let cache = KvCacheConfig {
        num_blocks: 2,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 2,
    };
    let kc = vec![0.0; cache.layer_len()];
    let qkv = vec![0.0; 4];
    let mut out = vec![0.0; 2];
    let meta = AttentionMetadata {
        seqs: vec![SeqAttention {
            query_start: 0,
            num_queries: 1,
            context_len: 5,
            block_table: vec![0, 5],
        }],
    };
    assert!(b
        .paged_attention(&qkv, 4, 1, &cache, &kc, &kc, &meta, 1.0, None, &mut out)
        .is_err());
}

/// A token's attention output is the same bits whether its sequence is prefilled at
/// once, in chunks, or decoded a token at a time, and whatever else is in the batch:
/// query blocks and kv-head groups never change a sum's order.
#[test]
fn paged_attention_is_the_same_bits_for_prefill_chunks_and_decode() {
    let b = CpuBackend::new();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // 3 query heads per kv head, like SmolLM2; head_dim 64 uses the SIMD paths.
    let (h, kvh, d, bs, len) = (6, 2, 64, 4, 23);
    let cache = KvCacheConfig {
        num_blocks: 12,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: d,
    };
    let stride = (h + 2 * kvh) * d;
    let table: Vec<u32> = vec![5, 1, 9, 3, 0, 11];
    let rows = randn(&mut rng, len * stride);
    let other = randn(&mut rng, 3 * stride);
    for window in [None, Some(7)] {
        // Each schedule is a list of chunks (first token, tokens); a 3-token sequence
        // rides along in the first step of every schedule.
        let schedules: [Vec<(usize, usize)>; 3] = [
            vec![(0, len)],
            vec![(0, 5), (5, 9), (14, len - 14)],
            (0..len).map(|t| (t, 1)).collect(),
        ];
        let mut results = Vec::new();
        for schedule in &schedules {
            let mut kc = vec![0.0; cache.layer_len()];
            let mut vc = vec![0.0; cache.layer_len()];
            let mut got = vec![0.0f32; len * h * d];
            for (i, &(start, n)) in schedule.iter().enumerate() {
                let mut qkv = rows[start * stride..(start + n) * stride].to_vec();
                let mut slots: Vec<u32> = (start..start + n)
                    .map(|t| table[t / bs] * bs as u32 + (t % bs) as u32)
                    .collect();
                let mut meta = AttentionMetadata {
                    seqs: vec![SeqAttention {
                        query_start: 0,
                        num_queries: n,
                        context_len: start + n,
                        block_table: table.clone(),
                    }],
                };
                if i == 0 {
                    qkv.extend_from_slice(&other);
                    slots.extend([40, 41, 42]);
                    meta.seqs.push(SeqAttention {
                        query_start: n,
                        num_queries: 3,
                        context_len: 3,
                        block_table: vec![10],
                    });
                }
                b.reshape_and_cache(&qkv, stride, h * d, &cache, &slots, &mut kc, &mut vc)
                    .unwrap();
                let mut out = vec![f32::NAN; slots.len() * h * d];
                b.paged_attention(
                    &qkv, stride, h, &cache, &kc, &vc, &meta, 0.125, window, &mut out,
                )
                .unwrap();
                got[start * h * d..(start + n) * h * d].copy_from_slice(&out[..n * h * d]);
            }
            results.push(got);
        }
        for (s, r) in results.iter().enumerate().skip(1) {
            assert!(
                r.iter()
                    .zip(&results[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "schedule {s}, window {window:?}"
            );
        }
        assert!(results[0].iter().all(|v| v.is_finite()));
    }
}

/// Zero-width shapes (no columns, no heads) are no-ops, not panics: the oracle takes
/// every shape the GPU host code takes.
#[test]
fn zero_width_shapes_are_no_ops() {
    let b = CpuBackend::new();
    let mut out = vec![7.0f32; 4];
    b.rms_norm(&vec![], &vec![], 3, 0, 1e-6, &mut out).unwrap();
    let mut res = vec![];
    b.add_rms_norm(&mut res, &vec![], &vec![], 3, 0, 1e-6, &mut out)
        .unwrap();
    b.silu_and_mul(&vec![], 3, 0, &mut out).unwrap();
    let table = b.upload_weight(&[], 1, 5, 0).unwrap();
    b.embedding(&table, 5, 0, &[1, 4], &mut out).unwrap();
    assert!(b.embedding(&table, 5, 0, &[5], &mut out).is_err());
    b.gather_rows(&vec![], 0, &[0, 2], &mut out).unwrap();
    let mut x = vec![];
    b.rope(&mut x, 0, 0, 0, 0, 0, &[0, 1], &vec![]).unwrap();
    b.head_rms_norm(&mut x, 2, 0, 0, 0, 0, &vec![], 1e-6)
        .unwrap();
    assert_eq!(out, vec![7.0; 4]);
}

/// Weights kept as stored, in segments of mixed formats (a fused projection of bf16,
/// Q5_0 and Q6_K rows): each row's outputs are the same bits alone as in any batch, and
/// each segment's columns are what that segment alone computes.
#[test]
fn stored_weights_matmul_is_batch_invariant_across_mixed_segments() {
    use crate::cpu::quant::tests::random_rows;
    use crate::{StoredRows, WeightFormat};
    let b = CpuBackend::new().with_native_weights(true);
    let k = 512;
    let bf: Vec<u8> = (0..40 * k)
        .flat_map(|i| half::bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 400.0).to_le_bytes())
        .collect();
    let parts = vec![
        StoredRows::new(WeightFormat::BF16, 40, k, bf).unwrap(),
        random_rows(WeightFormat::Q5_0, 37, k, 1),
        random_rows(WeightFormat::Q6K, 21, k, 2),
    ];
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let w = b.upload_stored_weight(&parts, k).unwrap().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let big_m = 19;
    let x = randn(&mut rng, big_m * k);
    let mut batched = vec![0.0; big_m * n];
    b.matmul(&x, &w, None, big_m, k, n, &mut batched).unwrap();
    for &(start, m) in &[(0, 1), (7, 1), (18, 1), (3, 5), (2, 16)] {
        let mut part = vec![0.0; m * n];
        let xs = x[start * k..(start + m) * k].to_vec();
        b.matmul(&xs, &w, None, m, k, n, &mut part).unwrap();
        assert_eq!(
            part[..],
            batched[start * n..(start + m) * n],
            "rows {start}+{m}"
        );
    }
    let mut row0 = 0;
    for p in parts {
        let alone = b
            .upload_stored_weight(std::slice::from_ref(&p), k)
            .unwrap()
            .unwrap();
        let mut out = vec![0.0; big_m * p.rows];
        b.matmul(&x, &alone, None, big_m, k, p.rows, &mut out)
            .unwrap();
        for i in 0..big_m {
            assert_eq!(
                out[i * p.rows..(i + 1) * p.rows],
                batched[i * n + row0..i * n + row0 + p.rows],
                "{} segment, row {i}",
                p.format
            );
        }
        row0 += p.rows;
    }
    // The oracle backend keeps nothing as stored.
    assert!(CpuBackend::new()
        .upload_stored_weight(&[], k)
        .unwrap()
        .is_none());
}
