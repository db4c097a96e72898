//! Every GPU op on the simulated device against the CPU oracle: the conformance table
//! (`novastack_kernels::conformance`, random and edge shapes: 0 rows, head sizes
//! 64-256, GQA groups 1-8, block-boundary and split-K contexts) through the real GPU
//! backend, on each device the project targets (compat.h's AMD branch at 64 lanes,
//! MI250; AMD at 32; NVIDIA at 32), for f32 and bf16 storage; and under several thread
//! interleavings and another poison, which must all give the same bits (a difference is
//! a race or a read of memory nobody wrote).

use novastack_kernels::conformance::{self, Case, Visit};
use novastack_kernels::vendor::sim::{Order, Poison, SimBackend, SimOptions};
use novastack_kernels::{Dtype, Result};

fn check_all(options: SimOptions, dtype: Dtype) {
    let label = options.label();
    let b = SimBackend::new(options, dtype).unwrap_or_else(|e| panic!("{label}: {e}"));
    let checks = conformance::check(&b).unwrap_or_else(|e| panic!("{label} {dtype}: {e}"));
    assert!(checks.len() >= 100, "{label}: {} checks", checks.len());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} err {:.3e} > tol {:.0e}", c.name, c.err, c.tol))
        .collect();
    assert!(failed.is_empty(), "{label} {dtype}:\n{}", failed.join("\n"));
}

#[test]
fn every_op_matches_the_oracle_at_amd_wave64() {
    for dtype in [Dtype::F32, Dtype::Bf16] {
        check_all(SimOptions::amd(64), dtype);
    }
}

#[test]
fn every_op_matches_the_oracle_at_amd_warp32() {
    for dtype in [Dtype::F32, Dtype::Bf16] {
        check_all(SimOptions::amd(32), dtype);
    }
}

#[test]
fn every_op_matches_the_oracle_at_nvidia_warp32() {
    for dtype in [Dtype::F32, Dtype::Bf16] {
        check_all(SimOptions::nvidia(), dtype);
    }
}

/// Runs every case on a reference device and on others; any output that differs in a
/// single bit is named.
struct SameBits<'a> {
    reference: &'a SimBackend,
    others: Vec<(String, SimBackend)>,
    differ: Vec<String>,
    cases: usize,
}

impl Visit for SameBits<'_> {
    fn case<C: Case>(&mut self, case: C) -> Result<()> {
        self.cases += 1;
        let want = case.run(self.reference)?;
        for (name, b) in &self.others {
            let got = case.run(b)?;
            for ((out, w), (_, g)) in want.iter().zip(&got) {
                let same =
                    w.len() == g.len() && w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits());
                if !same {
                    self.differ
                        .push(format!("{} {}{out} under {name}", case.op(), case.shape()));
                }
            }
        }
        Ok(())
    }
}

/// The wavefront-64 device under reversed, warp-serial and random interleavings, with
/// shared memory and scratch poisoned with 3.4e38 instead of NaN (`fmaxf` skips a NaN,
/// so a stale maximum would hide under the NaN poison): every output bit for bit as
/// the default order and poison give it.
#[test]
fn results_do_not_depend_on_thread_order_or_poison_at_wave64() {
    let reference = SimBackend::new(SimOptions::amd(64), Dtype::F32).unwrap();
    let variant = |order, poison| SimOptions {
        order,
        poison,
        ..SimOptions::amd(64)
    };
    let others = [
        ("reverse", Order::Reverse, Poison::Nan),
        ("warp-serial", Order::Warp, Poison::Big),
        ("warp-serial reversed", Order::WarpReverse, Poison::Nan),
        ("random order", Order::Random(0x5eed), Poison::Big),
    ]
    .into_iter()
    .map(|(name, o, p)| {
        (
            name.to_string(),
            SimBackend::new(variant(o, p), Dtype::F32).unwrap(),
        )
    })
    .collect();
    let mut v = SameBits {
        reference: &reference,
        others,
        differ: Vec::new(),
        cases: 0,
    };
    conformance::for_each_case(Dtype::F32, &mut v).unwrap();
    assert!(v.cases >= 50, "{} cases", v.cases);
    assert!(v.differ.is_empty(), "{}", v.differ.join("\n"));
}

/// R4: a NaN in q or in a key the query sees makes that query's attention NaN (all of
/// its head's values), on the split-K decode and on the prefill kernel alike, as on the
/// CPU; every other (row, head) of the batch stays finite and matches the oracle, and a
/// NaN key outside the sliding window changes nothing. The batch mixes decodes and
/// prefills, so both kernels run in one call.
#[test]
fn a_nan_in_q_or_k_gives_nan_attention_on_decode_and_prefill_as_on_the_cpu() {
    use novastack_kernels::{AttentionMetadata, CpuBackend, KvCacheConfig, SeqAttention};
    let (hd, heads, kv_heads, bs) = (64, 4, 2, 16);
    let stride = (heads + 2 * kv_heads) * hd;
    // (context, new tokens): decode with NaN q (head 0); prefill with NaN q (query 2,
    // head 3); long decode with a NaN key (position 700, kv head 1); prefill chunk with
    // a NaN key (position 35, kv head 0); two clean decodes.
    let batch: [(usize, usize); 6] = [(1100, 1), (40, 8), (1100, 1), (40, 8), (600, 1), (30, 1)];
    let mut row = 0;
    let mut next_block = 0u32;
    let seqs: Vec<SeqAttention> = batch
        .iter()
        .map(|&(ctx, nq)| {
            let n = ctx.div_ceil(bs) as u32;
            let s = SeqAttention {
                query_start: row,
                num_queries: nq,
                context_len: ctx,
                block_table: (next_block..next_block + n).rev().collect(),
            };
            (row, next_block) = (row + nq, next_block + n);
            s
        })
        .collect();
    let cache = KvCacheConfig {
        num_blocks: next_block as usize,
        block_size: bs,
        num_kv_heads: kv_heads,
        head_dim: hd,
    };
    let rows = row;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    };
    let mut qkv = rand(rows * stride);
    let mut keys = rand(cache.layer_len());
    let values = rand(cache.layer_len());
    let slot = |s: usize, pos: usize| {
        let seq = &seqs[s];
        seq.block_table[pos / bs] as usize * bs + pos % bs
    };
    qkv[seqs[0].query_start * stride + 5] = f32::NAN;
    qkv[(seqs[1].query_start + 2) * stride + 3 * hd + 17] = f32::NAN;
    keys[slot(2, 700) * kv_heads * hd + hd + 9] = f32::NAN;
    keys[slot(3, 35) * kv_heads * hd + 40] = f32::NAN;
    let meta = AttentionMetadata { seqs };
    let inputs = Attention {
        qkv: &qkv,
        keys: &keys,
        values: &values,
        meta: &meta,
        cache: &cache,
    };
    let cpu = CpuBackend::new();
    let sims: Vec<(String, SimBackend)> = [SimOptions::amd(64), SimOptions::nvidia()]
        .into_iter()
        .map(|o| (o.label(), SimBackend::new(o, Dtype::F32).unwrap()))
        .collect();
    for window in [None, Some(300)] {
        let want = inputs.on(&cpu, window);
        // (row, head) expected NaN: decode q, prefill q, the NaN key for the decode
        // that sees it (not under the window) and for the chunk's queries at and past
        // position 35 (rows 10 + 3 ..).
        let mut nan_at = vec![(0, 0), (1 + 2, 3)];
        if window.is_none() {
            nan_at.extend([(9, 2), (9, 3)]);
        }
        nan_at.extend((13..18).flat_map(|r| [(r, 0), (r, 1)]));
        for r in 0..rows {
            for h in 0..heads {
                let v = &want[(r * heads + h) * hd..][..hd];
                let nan = nan_at.contains(&(r, h));
                assert!(
                    if nan {
                        v.iter().all(|x| x.is_nan())
                    } else {
                        v.iter().all(|x| x.is_finite())
                    },
                    "cpu window {window:?} row {r} head {h}: {v:?}"
                );
            }
        }
        for (label, sim) in &sims {
            let got = inputs.on(sim, window);
            let scale = want
                .iter()
                .filter(|x| x.is_finite())
                .fold(0f32, |m, x| m.max(x.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let (r, h) = (i / (heads * hd), i / hd % heads);
                let ok = if w.is_nan() {
                    g.is_nan()
                } else {
                    (g - w).abs() <= 1e-4 * scale
                };
                assert!(
                    ok,
                    "{label} window {window:?} row {r} head {h}: {g} vs cpu {w}"
                );
            }
        }
    }
}

/// `paged_attention`'s host inputs (heads and stride from the cache's shape: four query
/// heads, packed `[q | k | v]` rows), run on any backend.
struct Attention<'a> {
    qkv: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    meta: &'a novastack_kernels::AttentionMetadata,
    cache: &'a novastack_kernels::KvCacheConfig,
}

impl Attention<'_> {
    fn on<B: novastack_kernels::Backend>(&self, b: &B, window: Option<usize>) -> Vec<f32> {
        let Attention {
            qkv,
            keys,
            values,
            meta,
            cache,
        } = *self;
        let hd = cache.head_dim;
        let heads = 4;
        let stride = (heads + 2 * cache.num_kv_heads) * hd;
        let (q, k, v) = (
            b.upload(qkv).unwrap(),
            b.upload(keys).unwrap(),
            b.upload(values).unwrap(),
        );
        let mut out = b.zeros(meta.num_tokens() * heads * hd).unwrap();
        let scale = 1.0 / (hd as f32).sqrt();
        b.paged_attention(
            &q, stride, heads, cache, &k, &v, meta, scale, window, &mut out,
        )
        .unwrap();
        b.download(&out).unwrap()
    }
}

/// Latent attention in row chunks (what a long prefill does once its split-K partials
/// would pass the scratch budget): with a budget of one row per launch, every case of
/// the table still matches the oracle, at wave 64 and warp 32.
#[test]
fn latent_attention_in_row_chunks_matches_the_oracle() {
    for options in [SimOptions::amd(64), SimOptions::nvidia()] {
        let label = options.label();
        let b = SimBackend::new(options, Dtype::F32).unwrap();
        b.set_latent_scratch_bytes(1);
        let checks = conformance::check(&b).unwrap_or_else(|e| panic!("{label}: {e}"));
        let latent: Vec<_> = checks
            .iter()
            .filter(|c| c.name.starts_with("latent_attention"))
            .collect();
        assert!(latent.len() >= 4, "{label}: {} latent checks", latent.len());
        for c in latent {
            assert!(c.passed(), "{label} {} err {:.3e}", c.name, c.err);
        }
    }
}
