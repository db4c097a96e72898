//! Rows of `x` quantized for the integer GEMM, exactly as llama.cpp quantizes
//! activations, so that both compute the same integer products:
//! - [`ActKind::Q8_1`] (for the 32-value formats): per block of 32, `d = amax / 127`,
//!   `q = round_half_even(x · 127 / amax)`, `d` kept as f16 (as ggml stores it), and
//!   `s = f16(d · Σq)` (with the unrounded `d`, as ggml's x86 path computes it), which the
//!   formats with a min multiply by it;
//! - [`ActKind::Q8K`] (for Q4_K and Q6_K): per block of 256, the value of largest
//!   magnitude `max` maps to −127: `iscale = −127 / max`, `q = min(127,
//!   round_half_even(iscale · x))`, `d = 1 / iscale` in f32.
//!
//! Both keep each 16 values' sum of `q` (ggml's `bsums`), which offsets and mins need. A
//! row's quantization depends on that row alone.

use half::f16;
use rayon::prelude::*;

/// Which activation quantization a weight format takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActKind {
    Q8_1,
    Q8K,
}

impl ActKind {
    /// Values per activation scale.
    pub fn block(self) -> usize {
        match self {
            ActKind::Q8_1 => 32,
            ActKind::Q8K => 256,
        }
    }
}

/// `m` rows of `k` values (`k` a multiple of the kind's block), quantized.
pub(crate) struct QRows {
    pub kind: ActKind,
    pub m: usize,
    pub k: usize,
    /// `[m, k]`.
    pub q: Vec<i8>,
    /// `[m, k / block]`.
    pub d: Vec<f32>,
    /// `[m, k / block]`: `f16(d · Σq)` per block (Q8_1 only).
    pub s: Vec<f32>,
    /// `[m, k / 16]`: the sum of each 16 values of `q`.
    pub sum16: Vec<i32>,
}

impl QRows {
    /// Quantizes `x` (`[m, k]`).
    pub fn new(kind: ActKind, x: &[f32], m: usize, k: usize) -> QRows {
        let bs = kind.block();
        debug_assert!(k.is_multiple_of(bs) && x.len() >= m * k);
        let mut r = QRows {
            kind,
            m,
            k,
            q: vec![0; m * k],
            d: vec![0.0; m * k / bs],
            s: vec![0.0; m * k / bs],
            sum16: vec![0; m * k / 16],
        };
        let rows =
            r.q.par_chunks_mut(k.max(1))
                .zip(r.d.par_chunks_mut((k / bs).max(1)))
                .zip(r.s.par_chunks_mut((k / bs).max(1)))
                .zip(r.sum16.par_chunks_mut((k / 16).max(1)))
                .zip(x.par_chunks(k.max(1)));
        rows.with_min_len(4).for_each(|((((q, d), s), sum16), x)| {
            for (b, (xb, qb)) in x.chunks_exact(bs).zip(q.chunks_exact_mut(bs)).enumerate() {
                (d[b], s[b]) = match kind {
                    ActKind::Q8_1 => q8_1_block(xb, qb),
                    ActKind::Q8K => (q8_k_block(xb, qb), 0.0),
                };
            }
            for (o, half) in sum16.iter_mut().zip(q.chunks_exact(16)) {
                *o = half.iter().map(|&v| v as i32).sum();
            }
        });
        r
    }

    /// Row `i`'s quantized values.
    #[inline]
    pub fn row(&self, i: usize) -> &[i8] {
        &self.q[i * self.k..(i + 1) * self.k]
    }

    /// The scale of row `i`'s block holding value `p`.
    #[inline]
    pub fn scale(&self, i: usize, p: usize) -> f32 {
        let bs = self.kind.block();
        self.d[i * (self.k / bs) + p / bs]
    }

    /// The sum of row `i`'s quantized values `p..p + len` (`p` and `len` multiples of 16).
    #[inline]
    pub fn sum(&self, i: usize, p: usize, len: usize) -> i32 {
        let s = &self.sum16[i * (self.k / 16) + p / 16..][..len / 16];
        s.iter().sum()
    }

    /// What a min multiplies for row `i`'s values `p..p + len`: ggml's `s` for Q8_1
    /// (`len` is its block), `d · Σq` for Q8_K.
    #[inline]
    pub fn min_factor(&self, i: usize, p: usize, len: usize) -> f32 {
        match self.kind {
            ActKind::Q8_1 => self.s[i * (self.k / 32) + p / 32],
            ActKind::Q8K => self.scale(i, p) * self.sum(i, p, len) as f32,
        }
    }
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22`: ggml's
/// `nearest_int` trick (adding 1.5 · 2^23 leaves the integer in the low mantissa bits),
/// which vectorizes where `round_ties_even` is a call to `rintf`.
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// One block of Q8_1: `(d, s)`.
fn q8_1_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round_even(v * id).clamp(-127.0, 127.0) as i8;
        sum += *o as i32;
    }
    let rounded = |v: f32| f16::from_f32(v).to_f32();
    (rounded(d), rounded(d * sum as f32))
}

/// One block of Q8_K: `d`.
fn q8_k_block(x: &[f32], q: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            (amax, max) = (v.abs(), v);
        }
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round_even(iscale * v).clamp(-128.0, 127.0) as i8;
    }
    1.0 / iscale
}

#[cfg(test)]
mod tests {
    use super::{ActKind, QRows};

    #[test]
    fn q8_1_quantizes_per_block_of_32() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 10.0).collect();
        x[40] = 0.0;
        let r = QRows::new(ActKind::Q8_1, &x, 1, 64);
        // Block 0's largest magnitude is |−2.0| -> −127; 1.1 -> round(1.1 · 63.5) = 70.
        assert_eq!(r.q[0], -127);
        assert_eq!(r.q[31], 70);
        assert_eq!(r.d[0], half::f16::from_f32(2.0 / 127.0).to_f32());
        assert_eq!(r.q[63], 127);
        let s: i32 = r.q[..16].iter().map(|&v| v as i32).sum();
        assert_eq!(r.sum16[0], s);
        let s32 = r.sum16[0] + r.sum16[1];
        assert_eq!(r.sum(0, 0, 32), s32);
        let want = half::f16::from_f32(2.0 / 127.0 * s32 as f32).to_f32();
        assert_eq!(r.min_factor(0, 0, 32), want);
        // An all-zero block has scale 0 and codes 0.
        let z = QRows::new(ActKind::Q8_1, &[0.0; 32], 1, 32);
        assert_eq!((z.d[0], z.q.iter().all(|&v| v == 0)), (0.0, true));
    }

    #[test]
    fn rounding_is_ties_to_even() {
        for v in [
            0.5f32, 1.5, 2.5, -0.5, -1.5, 126.5, -126.5, 3.4999, -7.51, 0.0, 127.0,
        ] {
            assert_eq!(super::round_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn q8_k_maps_the_largest_magnitude_to_minus_127() {
        let mut x = vec![0.5f32; 256];
        x[7] = 2.0;
        x[9] = -1.0;
        let r = QRows::new(ActKind::Q8K, &x, 1, 256);
        assert_eq!((r.q[7], r.q[9], r.q[0]), (-127, 64, -32));
        assert_eq!(r.d[0], 1.0 / (-127.0 / 2.0));
        assert_eq!(r.min_factor(0, 0, 32), r.d[0] * r.sum(0, 0, 32) as f32);
    }
}
