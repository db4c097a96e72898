//! SiLU-and-mul, portable and AVX2+FMA (eight lanes with the softmax's polynomial
//! `exp8`; the tail and other CPUs with libm).

#[cfg(target_arch = "x86_64")]
use super::{has_fma, L};

/// `out[i] = g[i] / (1 + e^(−g[i])) · u[i]` (SiLU of the gate times the up projection),
/// eight lanes at a time on AVX2+FMA with the softmax's polynomial `exp`, else libm.
pub(crate) fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len();
    assert!(g.len() >= n && u.len() >= n);
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: AVX2+FMA present; all three hold at least n values (asserted above).
        unsafe { fma::silu_mul(g, u, out) };
        i = n / L * L;
    }
    for j in i..n {
        out[j] = g[j] / (1.0 + (-g[j]).exp()) * u[j];
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use super::super::{exp8, L};
    use std::arch::x86_64::*;

    /// The first `out.len() / 8 * 8` values of `super::silu_mul`.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; `g` and `u` hold at least `out.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let neg = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i + L <= out.len() {
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = exp8(_mm256_xor_ps(gv, neg));
            let s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
            let r = _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
            i += L;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::data;
    use super::*;

    #[test]
    fn silu_mul_matches_f64_reference() {
        for n in [1, 7, 8, 9, 100, 1536] {
            let g: Vec<f32> = data(n, 12).iter().map(|v| v * 12.0).collect();
            let mut g = g;
            // exp(100) is clamped to exp(88.4): SiLU(-100) comes out ~-4e-37 instead of
            // ~-4e-42, both far below the tolerance's absolute floor.
            g[0] = -100.0;
            let u = data(n, 13);
            let mut out = vec![f32::NAN; n];
            silu_mul(&g, &u, &mut out);
            for i in 0..n {
                let x = g[i] as f64;
                let want = x / (1.0 + (-x).exp()) * u[i] as f64;
                let got = out[i] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs() + 1e-30,
                    "n {n} at {i}: {got} vs {want}"
                );
            }
        }
    }
}
