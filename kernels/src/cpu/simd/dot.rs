//! The dot product, and blocks of them (R rows by C rows, read in place), portable and
//! AVX2+FMA: every result is the same per-lane sequence of multiply-adds over `k` and
//! one [`reduce8`], whatever the block. Attention's scores use them.

#[cfg(target_arch = "x86_64")]
use super::has_fma;
use super::{reduce8, L};

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())`, in the module's fixed order.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    gemm_block::<1, 1>(&[a], &[b])[0][0]
}

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
}
