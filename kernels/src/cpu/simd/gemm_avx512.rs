//! The `x · wᵀ` GEMM tile on AVX-512, bit for bit the AVX2 kernel's results
//! (`gemm.rs`) at twice its multiply-adds per load.
//!
//! Every output keeps its eight partial sums, each fed by the same fused multiply-adds
//! over `k` in order as `dot`, and ends in the same lane reduction; only the packing of
//! the work into registers changes. One 512-bit accumulator holds the eight lanes of two
//! outputs: rows `2q` and `2q + 1` of `x` against one row of `w`. For that, the tile's
//! rows of `x` are first packed in pairs (per 8-value step of `k`: eight values of the
//! even row, then eight of the odd row: one aligned 64-byte load), and each 8-value step
//! of a `w` row is broadcast to both halves (`vbroadcastf32x8`, a plain load). No
//! shuffles in the inner loop: a 4-pair by 4-column block is 16 FMAs per 4 + 4 loads.
//!
//! A decode step of 16 rows was compute-bound at 2 rows by 4 columns of 256-bit FMAs
//! (6 loads per 8 FMAs): `examples/matmul_gflops.rs` measured 56-60 GFLOP/s at m = 16 on
//! two AVX-512 cores, where the weights stream at well under that cost.

use super::gemm::fma::reduce_lanes;
use super::L;
use std::arch::x86_64::*;

/// AVX-512F and DQ (for the 256-bit broadcast and extract), checked once per process.
pub(crate) fn available() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    })
}

/// Pairs of rows per block and `w` rows per block (16 accumulators).
const P: usize = 4;
const C: usize = 4;

/// The `x · wᵀ` tile (`gemm::gemm_bt_tile_prepared`'s contract) on rows of `x` packed by
/// [`pack_pairs`]: a GEMM packs its rows once, before its column tasks.
///
/// # Safety
/// [`available`] must be true; `x` holds every row in `rows` (each `k` long), `w` every
/// row in `cols`; `packed` is `pack_pairs(x, k, rows)`; `out` is valid for writes at
/// `i * ldo + j` for `i` in `rows`, `j` in `cols`, and no one else accesses those
/// elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bt_tile_packed(
    x: &[f32],
    packed: &[f32],
    w: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    assert_eq!(packed.len(), packed_len(k, rows.len()));
    // Rows per tile: about 128 KiB of packed x, in L2, while w's blocks go through L1;
    // even, so that every tile starts on a pair.
    let mt = ((128 * 1024 / 4) / k.max(1)).clamp(2 * P, 256) / 2 * 2;
    let stride = 2 * (k / L * L); // floats per packed pair
    let mut t0 = rows.start;
    while t0 < rows.end {
        let t1 = (t0 + mt).min(rows.end);
        let pairs = (t1 - t0).div_ceil(2);
        let base = packed.as_ptr().add((t0 - rows.start) / 2 * stride);
        let mut j = cols.start;
        while j < cols.end {
            let nc = (cols.end - j).min(C);
            let mut q = 0;
            while q < pairs {
                let np = (pairs - q).min(P);
                let tile = Tile {
                    x,
                    w,
                    k,
                    packed: base.add(q * stride),
                    stride,
                    row0: t0 + 2 * q,
                    row_end: t1,
                    col0: j,
                    out,
                    ldo,
                };
                macro_rules! run {
                    ($($p:literal),*; $c:tt) => {
                        match np {
                            $($p => tile.block::<$p, $c>(),)*
                            _ => unreachable!(),
                        }
                    };
                }
                match nc {
                    4 => run!(1, 2, 3, 4; 4),
                    3 => run!(1, 2, 3, 4; 3),
                    2 => run!(1, 2, 3, 4; 2),
                    _ => run!(1, 2, 3, 4; 1),
                }
                q += np;
            }
            j += nc;
        }
        t0 = t1;
    }
}

/// Floats [`pack_pairs`] writes for `rows` rows.
pub(crate) fn packed_len(k: usize, rows: usize) -> usize {
    rows.div_ceil(2) * 2 * (k / L * L)
}

/// Appends rows `rows` of `x` to `buf`, their first `k / 8 * 8` values packed in pairs
/// (see the module docs); an odd last row is paired with zeros.
pub(crate) fn pack_pairs(x: &[f32], k: usize, rows: std::ops::Range<usize>, buf: &mut Vec<f32>) {
    let full = k / L * L;
    let at = buf.len();
    buf.resize(at + packed_len(k, rows.len()), 0.0);
    let buf = &mut buf[at..];
    for (i, r) in rows.clone().enumerate() {
        let src = &x[r * k..r * k + full];
        let (q, half) = (i / 2, i % 2);
        let dst = &mut buf[q * 2 * full..(q + 1) * 2 * full];
        for (s, chunk) in src.chunks_exact(L).enumerate() {
            dst[s * 2 * L + half * L..s * 2 * L + half * L + L].copy_from_slice(chunk);
        }
    }
}

/// One block's inputs: packed pairs from `packed`, `w` rows from `col0`.
struct Tile<'a> {
    x: &'a [f32],
    w: &'a [f32],
    k: usize,
    packed: *const f32,
    stride: usize,
    /// The block's first row (of the first pair) and the tile's end (a pad row past it
    /// is computed and not written).
    row0: usize,
    row_end: usize,
    col0: usize,
    out: *mut f32,
    ldo: usize,
}

impl Tile<'_> {
    /// `NP` pairs of rows by `NC` rows of `w`, written out.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
    unsafe fn block<const NP: usize, const NC: usize>(&self) {
        let k = self.k;
        let full = k / L * L;
        let mut acc = [[_mm512_setzero_ps(); NC]; NP];
        let wp: [*const f32; NC] =
            std::array::from_fn(|c| self.w.as_ptr().add((self.col0 + c) * k));
        let mut s = 0;
        while s < full {
            let xv: [__m512; NP] =
                std::array::from_fn(|q| _mm512_loadu_ps(self.packed.add(q * self.stride + 2 * s)));
            if s % 16 == 0 {
                // The next block's rows of w, one cache line per step of 16 values, so
                // that streaming the weights from memory overlaps this block's FMAs.
                for row in wp {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(s + NC * k).cast::<i8>());
                }
            }
            for c in 0..NC {
                let wv = _mm512_broadcast_f32x8(_mm256_loadu_ps(wp[c].add(s)));
                for q in 0..NP {
                    acc[q][c] = _mm512_fmadd_ps(xv[q], wv, acc[q][c]);
                }
            }
            s += L;
        }
        // Back to one 8-lane vector per output, [row][col] row-major, and reduced as the
        // AVX2 kernel reduces.
        let mut halves = [[[_mm256_setzero_ps(); NC]; 2]; NP];
        for q in 0..NP {
            for c in 0..NC {
                halves[q][0][c] = _mm512_castps512_ps256(acc[q][c]);
                halves[q][1][c] = _mm512_extractf32x8_ps::<1>(acc[q][c]);
            }
        }
        let mut sums = [[[0.0f32; NC]; 2]; NP];
        let flat = std::slice::from_raw_parts(halves.as_ptr().cast::<__m256>(), NP * 2 * NC);
        reduce_lanes(flat, sums.as_mut_ptr().cast::<f32>());
        for (q, pair) in sums.iter_mut().enumerate() {
            for (h, row) in pair.iter_mut().enumerate() {
                let i = self.row0 + 2 * q + h;
                if i >= self.row_end {
                    continue;
                }
                let xr = &self.x[i * k..(i + 1) * k];
                for (c, v) in row.iter_mut().enumerate() {
                    let wr = &self.w[(self.col0 + c) * k..(self.col0 + c + 1) * k];
                    for p in full..k {
                        *v += xr[p] * wr[p];
                    }
                    *self.out.add(i * self.ldo + self.col0 + c) = *v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::data;
    use super::super::gemm::gemm_bt_tile_v8;

    /// Bit for bit the 8-lane kernel's results, for every block shape and tail: odd row
    /// counts (a pad row), column tails of 1-3, `k` not a multiple of 8, tiles of rows
    /// (k = 64 packs 256 rows per tile), and ranges that start inside the matrices.
    #[test]
    fn equals_the_8_lane_kernel_bit_for_bit() {
        if !super::available() {
            eprintln!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        for (m, n, k, rows, cols) in [
            (1, 1, 1, 0..1, 0..1),
            (1, 7, 8, 0..1, 0..7),
            (3, 5, 9, 0..3, 0..5),
            (16, 13, 576, 0..16, 0..13),
            (16, 12, 576, 3..12, 2..11),
            (9, 6, 67, 0..9, 1..6),
            (300, 9, 64, 0..300, 0..9),
            (601, 5, 64, 3..600, 0..5),
            (37, 33, 1536, 5..37, 4..33),
        ] {
            let (x, w) = (data(m * k, 5), data(n * k, 6));
            let mut a = vec![f32::NAN; m * n];
            let mut b = vec![f32::NAN; m * n];
            // Rows packed once, as a GEMM's column tasks share them.
            let mut c = vec![f32::NAN; m * n];
            let mut packed = Vec::new();
            super::pack_pairs(&x, k, rows.clone(), &mut packed);
            // SAFETY: AVX-512 checked; a, b and c are m x n and used by one call each;
            // `packed` is rows `rows` of x.
            unsafe {
                super::super::gemm::gemm_bt_tile(
                    &x,
                    &w,
                    k,
                    rows.clone(),
                    cols.clone(),
                    a.as_mut_ptr(),
                    n,
                );
                gemm_bt_tile_v8(&x, &w, k, rows.clone(), cols.clone(), b.as_mut_ptr(), n);
                super::gemm_bt_tile_packed(
                    &x,
                    &packed,
                    &w,
                    k,
                    rows.clone(),
                    cols.clone(),
                    c.as_mut_ptr(),
                    n,
                );
            }
            for i in 0..m {
                for j in 0..n {
                    let inside = rows.contains(&i) && cols.contains(&j);
                    let (u, v, p) = (a[i * n + j], b[i * n + j], c[i * n + j]);
                    assert_eq!(
                        u.to_bits(),
                        v.to_bits(),
                        "({m},{n},{k}) at ({i},{j}): {u} vs {v}"
                    );
                    assert_eq!(
                        p.to_bits(),
                        v.to_bits(),
                        "({m},{n},{k}) at ({i},{j}), packed once: {p} vs {v}"
                    );
                    assert_eq!(
                        inside,
                        !u.is_nan(),
                        "({m},{n},{k}) at ({i},{j}) written: {u}"
                    );
                }
            }
        }
    }
}
