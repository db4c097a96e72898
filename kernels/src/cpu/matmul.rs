//! `out = x · wᵀ + bias`: the GEMM of `simd/panel_gemm.rs`, split over output columns
//! with rayon.
//!
//! Why this is batch-invariant: each output element is one chain of fused multiply-adds
//! over its two rows, `k` in order, whatever `m` is and wherever the element sits in a
//! tile; splitting `n` across threads does not touch it. The unit test
//! `matmul_is_batch_invariant` checks this bit for bit. The weights were packed in
//! panels at upload, so a decode step of a few rows reads each weight once per step.
//! Each column task interleaves the rows of `x` itself (`panel_gemm.rs`). Interleaving
//! them once per GEMM, shared by the tasks, measured mixed in alternating runs: slower
//! at 256 x 3072 x 576 (1.03-1.27x matrixmultiply against 1.25-1.43x; the other core's
//! tasks then read the rows out of this core's L2), faster at 1024 x 576 x 1536.

use super::quant::{self, ActKind, QRows};
use super::simd::{self, PanelElem};
use super::weight::{Segment, SegmentData};
use super::SendPtr;
use rayon::prelude::*;

/// Columns per task are a multiple of this: a 16-lane vector (half a panel).
const COL_ALIGN: usize = 16;

/// `(columns per task, tasks)` for `n` columns on `threads` threads: two tasks per
/// thread, each a multiple of `COL_ALIGN` columns, so that every thread gets the same
/// share. (At 64-column granularity the 576-wide projections of SmolLM2 split 3 ways
/// on 2 threads, and one thread did two thirds of the work.)
fn split_columns(n: usize, threads: usize) -> (usize, usize) {
    let per_task = n.div_ceil(threads * 2).div_ceil(COL_ALIGN).max(1) * COL_ALIGN;
    (per_task, n.div_ceil(per_task))
}

/// `out = x · wᵀ + bias` for `x` `[m, k]` and `w` `[n, k]` packed in panels
/// (`simd::pack_panels`).
pub(crate) fn matmul_bt<T: PanelElem>(
    x: &[f32],
    w: &[T],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let (per_task, num_tasks) = split_columns(n, rayon::current_num_threads().max(1));
    let c = SendPtr(out.as_mut_ptr());
    (0..num_tasks).into_par_iter().for_each(|t| {
        let j0 = t * per_task;
        let j1 = (j0 + per_task).min(n);
        // SAFETY: x is [m, k] and w is [n, k] (checked by the caller); out is [m, n] and
        // columns j0..j1 belong to this task alone.
        unsafe { simd::gemm_bt(x, w, k, 0..m, j0..j1, c.get(), n) };
    });
    add_bias(out, bias, m, n);
}

fn add_bias(out: &mut [f32], bias: Option<&[f32]>, m: usize, n: usize) {
    if let Some(b) = bias {
        for row in out[..m * n].chunks_exact_mut(n) {
            for (o, &bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
}

/// `out = x · wᵀ + bias` for a weight kept as stored: each segment's columns by its own
/// kernel (the panel GEMM for f32 / bf16 / f16, the integer GEMM for the quantized
/// formats, with `x` quantized once for all of them), the tasks of every segment in one
/// parallel loop. Each element is its format's fixed sequence (batch-invariant).
pub(crate) fn matmul_segments(
    x: &[f32],
    segments: &[Segment],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    // x quantized once per activation kind the segments take.
    let quantized = |kind: ActKind| {
        segments
            .iter()
            .any(|s| matches!(&s.data, SegmentData::Quant(q) if q.layout.act == kind))
            .then(|| QRows::new(kind, x, m, k))
    };
    let (q8_1, q8_k) = (quantized(ActKind::Q8_1), quantized(ActKind::Q8K));
    let threads = rayon::current_num_threads().max(1);
    // (segment, first column, end column) of the segment's own columns.
    let mut tasks = Vec::new();
    for (si, s) in segments.iter().enumerate() {
        let (per_task, num) = split_columns(s.rows, threads);
        for t in 0..num {
            tasks.push((si, t * per_task, ((t + 1) * per_task).min(s.rows)));
        }
    }
    let c = SendPtr(out.as_mut_ptr());
    let (q8_1, q8_k) = (q8_1.as_ref(), q8_k.as_ref());
    tasks.into_par_iter().for_each(|(si, j0, j1)| {
        let s = &segments[si];
        // SAFETY: x is [m, k] and each segment holds its rows of [n, k] (checked by the
        // caller); out is [m, n] and columns row0 + j0..row0 + j1 belong to this task.
        unsafe {
            let o = c.get().add(s.row0);
            match &s.data {
                SegmentData::F32(p) => simd::gemm_bt(x, p, k, 0..m, j0..j1, o, n),
                SegmentData::Bf16(p) => simd::gemm_bt(x, p, k, 0..m, j0..j1, o, n),
                SegmentData::F16(p) => simd::gemm_bt(x, p, k, 0..m, j0..j1, o, n),
                // Task boundaries are multiples of 16 columns: whole tiles.
                SegmentData::Quant(q) => quant::gemm_tiles(
                    q,
                    match q.layout.act {
                        ActKind::Q8_1 => q8_1.expect("quantized above"),
                        ActKind::Q8K => q8_k.expect("quantized above"),
                    },
                    j0 / quant::TILE..j1.div_ceil(quant::TILE),
                    0..m,
                    o,
                    n,
                ),
            }
        }
    });
    add_bias(out, bias, m, n);
}

/// The grouped GEMM: rows `offsets[e]..offsets[e + 1]` of `x` times expert `e`'s
/// `[n, k]` weight, group `e` of `w`. Tasks are (expert, column range) pairs, so a decode step whose
/// few rows spread over many experts still uses every thread; each element is the same
/// chain as in [`matmul_bt`] (batch-invariant).
pub(crate) fn grouped_matmul_bt(
    x: &[f32],
    w: &[f32],
    offsets: &[usize],
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    if n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let (per_task, tiles) = split_columns(n, threads);
    let tasks: Vec<(usize, usize)> = offsets
        .windows(2)
        .enumerate()
        .filter(|(_, r)| r[1] > r[0])
        .flat_map(|(e, _)| (0..tiles).map(move |t| (e, t)))
        .collect();
    let c = SendPtr(out.as_mut_ptr());
    tasks.into_par_iter().for_each(|(e, t)| {
        let (r0, r1) = (offsets[e], offsets[e + 1]);
        let j0 = t * per_task;
        let j1 = (j0 + per_task).min(n);
        let per = simd::panels_len(n, k);
        let we = &w[e * per..(e + 1) * per];
        // SAFETY: x holds offsets[last] rows of k and w every expert's [n, k] (checked by
        // the caller); rows r0..r1 belong to expert e alone and columns j0..j1 of them to
        // this task alone.
        unsafe {
            simd::gemm_bt(
                &x[r0 * k..r1 * k],
                we,
                k,
                0..r1 - r0,
                j0..j1,
                c.get().add(r0 * n),
                n,
            )
        };
    });
}

#[cfg(test)]
mod tests {
    use super::{grouped_matmul_bt, matmul_bt, split_columns};
    use crate::cpu::CpuWeight;

    /// Each expert's rows come out bit for bit as a plain GEMM of those rows alone (from
    /// odd offsets too); empty experts are skipped.
    #[test]
    fn grouped_rows_equal_a_gemm_of_each_experts_rows() {
        let (k, n) = (70, 13);
        let offsets = [0, 3, 3, 4, 6, 13, 14];
        let m = offsets[offsets.len() - 1];
        let experts = offsets.len() - 1;
        let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 64.0;
        let x: Vec<f32> = (0..m * k).map(val).collect();
        let w: Vec<f32> = (0..experts * n * k).map(|i| val(i + 7)).collect();
        let wg = CpuWeight::new(&w, experts, n, k).unwrap();
        let mut out = vec![f32::NAN; m * n];
        grouped_matmul_bt(&x, wg.all_panels("t").unwrap(), &offsets, k, n, &mut out);
        for e in 0..experts {
            let (r0, r1) = (offsets[e], offsets[e + 1]);
            let mut want = vec![0.0; (r1 - r0) * n];
            let we = CpuWeight::new(&w[e * n * k..(e + 1) * n * k], 1, n, k).unwrap();
            matmul_bt(
                &x[r0 * k..r1 * k],
                we.group("t", 0).unwrap(),
                None,
                r1 - r0,
                k,
                n,
                &mut want,
            );
            for (i, (a, b)) in out[r0 * n..r1 * n].iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "expert {e}, element {i}");
            }
        }
    }

    #[test]
    fn columns_split_evenly_over_threads() {
        for n in [576, 960, 1536, 3072, 49152] {
            assert_eq!(split_columns(n, 2), (n / 4, 4), "n={n}");
        }
        for (n, threads) in [(1, 2), (5, 2), (576, 16), (1000, 3), (49152, 64)] {
            let (per, num) = split_columns(n, threads);
            assert!(per % super::COL_ALIGN == 0 && per * num >= n && per * (num - 1) < n);
            assert!(num <= 2 * threads);
        }
    }
}
