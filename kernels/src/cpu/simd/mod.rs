//! The CPU backend's inner loops, one file per op family (`panel_gemm.rs`: the `x · wᵀ`
//! GEMM; `dot.rs`: the dot product and blocks of them; `attention.rs`: scores, softmax,
//! weighted value rows; `activation.rs`: SiLU-and-mul), each with its portable and SIMD
//! halves side by side, so that a reviewer checks their agreement in one screen. This
//! file holds what they share: the lane count, the fixed lane reduction, the CPU feature
//! checks, `exp8`.
//!
//! Every result depends only on its own inputs, never on the batch size or on where a
//! row sits in a tile, so the backend stays deterministic and batch-invariant. The GEMM
//! is one chain of fused multiply-adds over `k` per output, the same bits on every
//! instruction set (see `panel_gemm.rs`). The dot keeps eight partial sums (one 8-lane
//! vector) over `k` in order and adds the lanes in one fixed order; on x86-64 with
//! AVX2+FMA (checked once at run time) the lanes are one `__m256` and each step is a
//! fused multiply-add, elsewhere the same structure runs on plain arrays (multiply then
//! add).

mod activation;
mod attention;
mod dot;
mod panel_gemm;

pub(crate) use self::activation::silu_mul;
pub(crate) use self::attention::{scores, softmax_scaled, weighted_rows, Queries};
pub(crate) use self::dot::dot;
pub(crate) use self::panel_gemm::{gemm_bt, pack_panels, panels_len, Bf16, PanelElem, F16, NR};

use std::sync::OnceLock;

/// Lanes per accumulator.
const L: usize = 8;

/// AVX2, FMA and F16C (which every AVX2 CPU has), checked once per process.
fn has_fma() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// AVX-512F (with AVX2 and FMA, which every such CPU has), checked once per process.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| std::is_x86_feature_detected!("avx512f") && has_fma())
}

/// Adds 8 lanes in a fixed order (pairwise).
#[inline(always)]
fn reduce8(v: [f32; L]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// e^x for eight lanes (Cephes' expf polynomial); 0 below −87.3, clamped above 88.3,
/// NaN for NaN (as `f32::exp`: the clamp alone would turn a NaN into e^−87.3, and a
/// NaN score into a weight of about 1e-38 instead of a NaN softmax).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: __m256) -> __m256 {
    let input = x;
    let lo = _mm256_set1_ps(-87.336_55);
    let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
    let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.376_26));
    let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(x, x),
        _mm256_add_ps(x, _mm256_set1_ps(1.0)),
    );
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(fx),
        _mm256_set1_epi32(127),
    ));
    let r = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(input, input);
    _mm256_blendv_ps(_mm256_andnot_ps(under, r), input, nan)
}

/// Test inputs: `n` values spread over [-1, 1], different per `seed`.
#[cfg(test)]
fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}
