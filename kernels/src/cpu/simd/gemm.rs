//! The dot product and the `x · wᵀ` GEMM micro-kernel (2 rows of `x` by 4 rows of `w`,
//! no packing), portable and AVX2+FMA: every output element is the same per-lane
//! sequence of multiply-adds over `k` and one [`reduce8`], whatever the tile.

#[cfg(target_arch = "x86_64")]
use super::has_fma;
use super::{reduce8, L};

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())`, in the module's fixed order.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    gemm_block::<1, 1>(&[a], &[b])[0][0]
}

/// Groups of rows of `x` (`offsets[g]..offsets[g + 1]`; one group for a plain GEMM, one
/// per expert for the grouped GEMM) prepared for the column tasks that share them
/// ([`gemm_bt_tile_prepared`]):
/// packed once, for the kernel that reads its rows packed (AVX-512, two rows or more).
pub(crate) struct PreparedRows {
    /// Per group, its floats in `buf`, or `None`: the 8-lane kernel reads `x` in place.
    #[cfg(target_arch = "x86_64")]
    groups: Vec<Option<std::ops::Range<usize>>>,
    #[cfg(target_arch = "x86_64")]
    buf: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The packing buffer, taken for a GEMM and given back after (a GEMM started while
    /// another waits on this thread finds it empty and allocates).
    static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl PreparedRows {
    pub(crate) fn new(x: &[f32], k: usize, offsets: &[usize]) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let wide = super::gemm_avx512::available();
            let mut buf = Vec::new();
            let groups = offsets
                .windows(2)
                .map(|r| {
                    if !wide || r[1] < r[0] + 2 {
                        return None;
                    }
                    if buf.capacity() == 0 {
                        buf = PACKED.with(|b| b.take());
                        buf.clear();
                    }
                    let at = buf.len();
                    super::gemm_avx512::pack_pairs(x, k, r[0]..r[1], &mut buf);
                    Some(at..buf.len())
                })
                .collect();
            PreparedRows { groups, buf }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, k, offsets);
            PreparedRows {}
        }
    }
}

impl Drop for PreparedRows {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if self.buf.capacity() > 0 {
            PACKED.with(|b| b.set(std::mem::take(&mut self.buf)));
        }
    }
}

/// Row-major `out[i, j] = Σ_k x[i, k]·w[j, k]` for rows `rows` of `x` and columns
/// `cols` of `out` (rows of `w`); `out` has row stride `ldo`. `rows` are group `group`
/// of `prepared`, counted in `x` (which may start at the group's first row).
///
/// # Safety
/// `out` must be valid for writes at `i * ldo + j` for every `i` in `rows` and `j` in
/// `cols`, and no one else may access those elements during the call (tasks of one
/// GEMM own disjoint column ranges); `prepared` was made from the same rows of `x` and
/// `k`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_bt_tile_prepared(
    x: &[f32],
    prepared: &PreparedRows,
    group: usize,
    w: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(r) = &prepared.groups[group] {
        // SAFETY: packed only where AVX-512 is present; the rest is the contract.
        return unsafe {
            super::gemm_avx512::gemm_bt_tile_packed(
                x,
                &prepared.buf[r.clone()],
                w,
                k,
                rows,
                cols,
                out,
                ldo,
            )
        };
    }
    let _ = (prepared, group);
    gemm_bt_tile_v8(x, w, k, rows, cols, out, ldo)
}

/// One [`gemm_bt_tile_prepared`] call with its own [`PreparedRows`].
///
/// # Safety
/// As [`gemm_bt_tile_prepared`].
#[cfg(test)]
pub(crate) unsafe fn gemm_bt_tile(
    x: &[f32],
    w: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    let prepared = PreparedRows::new(x, k, &[rows.start, rows.end]);
    // SAFETY: this function's contract; `prepared` is rows `rows` of x, group 0.
    unsafe { gemm_bt_tile_prepared(x, &prepared, 0, w, k, rows, cols, out, ldo) }
}

/// [`gemm_bt_tile_prepared`] with one 8-lane vector per output (AVX2 or portable), `x`
/// read in place.
///
/// # Safety
/// As [`gemm_bt_tile_prepared`], without `prepared`.
pub(crate) unsafe fn gemm_bt_tile_v8(
    x: &[f32],
    w: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    // Rows of x per tile: about 128 KiB of x, so a tile stays in L2 while the 4-row
    // groups of w stream through L1.
    let mt = ((128 * 1024 / 4) / k.max(1)).clamp(MR, 256) / MR * MR;
    let xrow = |i: usize| &x[i * k..(i + 1) * k];
    let wrow = |j: usize| &w[j * k..(j + 1) * k];
    let put = |i: usize, j: usize, v: f32| {
        // SAFETY: (i, j) is in the caller's range (contract above).
        unsafe { *out.add(i * ldo + j) = v };
    };
    // One R×C block at (i, j), written out.
    let block = |i: usize, j: usize, nr: usize, nc: usize| {
        macro_rules! run {
            ($r:literal, $c:literal) => {{
                let xs: [&[f32]; $r] = std::array::from_fn(|r| xrow(i + r));
                let ws: [&[f32]; $c] = std::array::from_fn(|c| wrow(j + c));
                let v = gemm_block::<$r, $c>(&xs, &ws);
                for (r, row) in v.iter().enumerate() {
                    for (c, x) in row.iter().enumerate() {
                        put(i + r, j + c, *x);
                    }
                }
            }};
        }
        match (nr, nc) {
            (MR, NR) => run!(2, 4),
            (_, NR) => (0..nr).for_each(|r| {
                let ws: [&[f32]; NR] = std::array::from_fn(|c| wrow(j + c));
                let v = gemm_block::<1, NR>(&[xrow(i + r)], &ws);
                (0..NR).for_each(|c| put(i + r, j + c, v[0][c]));
            }),
            _ => {
                for r in 0..nr {
                    for c in 0..nc {
                        put(
                            i + r,
                            j + c,
                            gemm_block::<1, 1>(&[xrow(i + r)], &[wrow(j + c)])[0][0],
                        );
                    }
                }
            }
        }
    };
    let mut t0 = rows.start;
    while t0 < rows.end {
        let t1 = (t0 + mt).min(rows.end);
        let mut j = cols.start;
        while j < cols.end {
            let nc = (cols.end - j).min(NR);
            let mut i = t0;
            while i < t1 {
                let nr = (t1 - i).min(MR);
                block(i, j, nr, nc);
                i += nr;
            }
            j += nc;
        }
        t0 = t1;
    }
}

/// Micro-kernel shape: MR rows of x by NR rows of w, 8 accumulators. (4 x 3 with 12
/// accumulators measured no faster here: `examples/matmul_gflops.rs`.)
const MR: usize = 2;
const NR: usize = 4;

/// `[r][c] = dot(x[r], w[c])` for an R×C block, on AVX2+FMA when the CPU has it.
/// Every (r, c) pair runs the same per-lane sequence whatever R and C.
#[inline(always)]
fn gemm_block<const R: usize, const C: usize>(x: &[&[f32]; R], w: &[&[f32]; C]) -> [[f32; C]; R] {
    let k = x.iter().chain(w.iter()).map(|s| s.len()).min().unwrap_or(0);
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); slices are at least k long.
        return unsafe { fma::block::<R, C>(x, w, k) };
    }
    let mut acc = [[[0.0f32; L]; C]; R];
    let full = k / L * L;
    for p in (0..full).step_by(L) {
        for r in 0..R {
            for c in 0..C {
                for l in 0..L {
                    acc[r][c][l] += x[r][p + l] * w[c][p + l];
                }
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let mut s = reduce8(acc[r][c]);
            for p in full..k {
                s += x[r][p] * w[c][p];
            }
            out[r][c] = s;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) mod fma {
    use super::super::{reduce8, L};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA, and every slice must hold at least `k` values.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu::simd) unsafe fn block<const R: usize, const C: usize>(
        x: &[&[f32]; R],
        w: &[&[f32]; C],
        k: usize,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let full = k / L * L;
        let mut p = 0;
        while p < full {
            let mut wv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                wv[c] = _mm256_loadu_ps(w[c].as_ptr().add(p));
            }
            for r in 0..R {
                let xv = _mm256_loadu_ps(x[r].as_ptr().add(p));
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
            p += L;
        }
        let mut out = [[0.0f32; C]; R];
        // `acc` and `out` are both R×C row-major: reduce them as flat arrays.
        let flat = std::slice::from_raw_parts(acc.as_ptr().cast::<__m256>(), R * C);
        reduce_lanes(flat, out.as_mut_ptr().cast::<f32>());
        if full < k {
            for r in 0..R {
                for c in 0..C {
                    for q in full..k {
                        out[r][c] += x[r][q] * w[c][q];
                    }
                }
            }
        }
        out
    }

    /// `out[i] = reduce8(lanes of v[i])` for every `i`, eight (then four) vectors at a
    /// time with shuffles and horizontal adds that pair the lanes exactly as `reduce8`
    /// does, so the sums are bit for bit the scalar ones. With `k = 64` (an attention
    /// head) the scalar sums cost as much as the multiply-adds.
    ///
    /// # Safety
    /// AVX2 must be present and `out` valid for `v.len()` writes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu::simd) unsafe fn reduce_lanes(v: &[__m256], out: *mut f32) {
        let mut i = 0;
        while i + 8 <= v.len() {
            // (lo(v_a) + hi(v_a) | lo(v_b) + hi(v_b)): lanes (v0+v4, v1+v5, v2+v6, v3+v7).
            let half = |a: __m256, b: __m256| {
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(a, b),
                    _mm256_permute2f128_ps::<0x31>(a, b),
                )
            };
            let (a04, a15) = (half(v[i], v[i + 4]), half(v[i + 1], v[i + 5]));
            let (a26, a37) = (half(v[i + 2], v[i + 6]), half(v[i + 3], v[i + 7]));
            // hadd pairs within each 128-bit half: ((a0+a1) + (a2+a3)) per vector.
            let s = _mm256_hadd_ps(_mm256_hadd_ps(a04, a15), _mm256_hadd_ps(a26, a37));
            _mm256_storeu_ps(out.add(i), s);
            i += 8;
        }
        if i + 4 <= v.len() {
            let half =
                |a: __m256| _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let (a0, a1, a2, a3) = (half(v[i]), half(v[i + 1]), half(v[i + 2]), half(v[i + 3]));
            let s = _mm_hadd_ps(_mm_hadd_ps(a0, a1), _mm_hadd_ps(a2, a3));
            _mm_storeu_ps(out.add(i), s);
            i += 4;
        }
        while i < v.len() {
            let mut lanes = [0.0f32; L];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v[i]);
            *out.add(i) = reduce8(lanes);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::data;
    use super::*;

    #[test]
    fn dot_matches_f64_reference() {
        for n in [0, 1, 7, 8, 9, 64, 100, 577] {
            let (a, b) = (data(n, 1), data(n, 2));
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let got = dot(&a, &b) as f64;
            assert!(
                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                "n {n}: {got} vs {want}"
            );
        }
    }

    /// Every shape and tail of the tiled GEMM gives each element exactly `dot` of its rows.
    #[test]
    fn gemm_tiles_equal_dot_bit_for_bit() {
        for (m, n, k) in [(1, 1, 1), (3, 5, 9), (2, 4, 16), (7, 13, 67), (33, 9, 576)] {
            let (x, w) = (data(m * k, 3), data(n * k, 4));
            let mut out = vec![f32::NAN; m * n];
            // SAFETY: out is m x n and this call is its only user.
            unsafe { gemm_bt_tile(&x, &w, k, 0..m, 0..n, out.as_mut_ptr(), n) };
            for i in 0..m {
                for j in 0..n {
                    let d = dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                    assert_eq!(
                        out[i * n + j].to_bits(),
                        d.to_bits(),
                        "({m},{n},{k}) at ({i},{j})"
                    );
                }
            }
        }
    }
}
