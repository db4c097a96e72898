//! `out = x · wᵀ + bias` through `matrixmultiply`, split over output columns with rayon.
//!
//! Why this is batch-invariant: matrixmultiply's reduction order for one output
//! element depends only on `k` (it walks `k` in fixed `kc` blocks, and each block's
//! dot product runs in order inside the micro-kernel), never on `m` or on where the
//! element sits in a tile; partial tiles go through the same kernel into a buffer.
//! Splitting `n` across threads does not touch the reduction at all. The unit test
//! `matmul_is_batch_invariant` checks this bit for bit.

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
        let nj = per_task.min(n - j0);
        // SAFETY: x is [m, k] row-major, w is [n, k] row-major so wᵀ has row stride 1
        // and column stride k; columns j0..j0+nj of out (row stride n) belong to this
        // task alone, and all slices were checked by the caller to be long enough.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                nj,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr().add(j0 * k),
                1,
                k as isize,
                0.0,
                c.get().add(j0),
                n as isize,
                1,
            );
        }
    });
    if let Some(b) = bias {
        for row in out[..m * n].chunks_exact_mut(n) {
            for (o, &bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
}
