//! `out = x · wᵀ + bias`: the micro-kernels of `simd.rs`, split over output columns
//! with rayon.
//!
//! Why this is batch-invariant: each output element is one `simd::dot`-ordered
//! reduction over its two rows (fixed lanes, `k` in order, fixed lane sum), whatever
//! `m` is and wherever the element sits in a tile; splitting `n` across threads does
//! not touch the reduction. The unit test `matmul_is_batch_invariant` checks this bit
//! for bit. The weights are read in place (no packing), which is what decode steps of
//! a few rows need: one pass over the weights per step.

use super::simd;
use rayon::prelude::*;

/// Columns per task: a multiple of every micro-kernel width, big enough to amortize packing.
const COL_ALIGN: usize = 64;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each task writes a disjoint set of output columns.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Taking `self` makes closures capture the whole wrapper, not its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

pub(crate) fn matmul_bt(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Enough tasks to balance, each a multiple of COL_ALIGN columns.
    let per_task = n.div_ceil(threads * 2).div_ceil(COL_ALIGN).max(1) * COL_ALIGN;
    let num_tasks = n.div_ceil(per_task);
    let c = SendPtr(out.as_mut_ptr());
    (0..num_tasks).into_par_iter().for_each(|t| {
        let j0 = t * per_task;
        let j1 = (j0 + per_task).min(n);
        // SAFETY: x is [m, k] and w is [n, k] (checked by the caller); out is [m, n] and
        // columns j0..j1 belong to this task alone.
        unsafe { simd::gemm_bt_tile(x, w, k, 0..m, j0..j1, c.get(), n) };
    });
    if let Some(b) = bias {
        for row in out[..m * n].chunks_exact_mut(n) {
            for (o, &bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
}
