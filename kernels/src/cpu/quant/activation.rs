//! Rows of `x` quantized for the integer GEMM, as llama.cpp quantizes activations to
//! Q8_0: per block of 32 values, `d = amax / 127` (kept as f16, as ggml stores it) and
//! `q = round_half_even(x · 127 / amax)`; plus each 16 values' sum of `q`, which the
//! offsets and mins need. A row's quantization depends on that row alone.

use half::f16;
use rayon::prelude::*;

/// Values per activation scale.
pub(crate) const QK: usize = 32;

/// `m` rows of `k` values (`k` a multiple of 32), quantized.
#[derive(Default)]
pub(crate) struct QRows {
    pub m: usize,
    pub k: usize,
    /// `[m, k]`.
    pub q: Vec<i8>,
    /// `[m, k / 32]`.
    pub d: Vec<f32>,
    /// `[m, k / 16]`: the sum of each 16 values of `q`.
    pub sum16: Vec<i32>,
}

impl QRows {
    /// Quantizes `x` (`[m, k]`) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize) {
        debug_assert!(k % QK == 0 && x.len() >= m * k);
        self.m = m;
        self.k = k;
        self.q.resize(m * k, 0);
        self.d.resize(m * k / QK, 0.0);
        self.sum16.resize(m * k / 16, 0);
        let rows = self
            .q
            .par_chunks_mut(k.max(1))
            .zip(self.d.par_chunks_mut((k / QK).max(1)))
            .zip(self.sum16.par_chunks_mut((k / 16).max(1)))
            .zip(x.par_chunks(k.max(1)));
        rows.with_min_len(4)
            .for_each(|(((q, d), s), x)| quantize_row(x, q, d, s));
    }

    /// Row `i`'s quantized values.
    #[inline]
    pub fn row(&self, i: usize) -> &[i8] {
        &self.q[i * self.k..(i + 1) * self.k]
    }

    /// The scale of row `i`'s block holding value `p`.
    #[inline]
    pub fn scale(&self, i: usize, p: usize) -> f32 {
        self.d[i * (self.k / QK) + p / QK]
    }

    /// The sum of row `i`'s quantized values `p..p + len` (`p` and `len` multiples of 16).
    #[inline]
    pub fn sum(&self, i: usize, p: usize, len: usize) -> i32 {
        let s = &self.sum16[i * (self.k / 16) + p / 16..][..len / 16];
        s.iter().sum()
    }
}

fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], sum16: &mut [i32]) {
    for (b, (xb, qb)) in x.chunks_exact(QK).zip(q.chunks_exact_mut(QK)).enumerate() {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        d[b] = f16::from_f32(amax / 127.0).to_f32();
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in qb.iter_mut().zip(xb) {
            *o = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        for (h, half) in qb.chunks_exact(16).enumerate() {
            sum16[2 * b + h] = half.iter().map(|&v| v as i32).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::QRows;

    #[test]
    fn quantizes_per_block_of_32() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 10.0).collect();
        x[40] = 0.0;
        let mut r = QRows::default();
        r.quantize(&x, 1, 64);
        // Block 0's largest magnitude is |−2.0| -> −127; 1.1 -> round(1.1 · 63.5) = 70.
        assert_eq!(r.q[0], -127);
        assert_eq!(r.q[31], 70);
        assert_eq!(r.d[0], half::f16::from_f32(2.0 / 127.0).to_f32());
        assert_eq!(r.q[63], 127);
        let s: i32 = r.q[..16].iter().map(|&v| v as i32).sum();
        assert_eq!(r.sum16[0], s);
        assert_eq!(r.sum(0, 0, 32), r.sum16[0] + r.sum16[1]);
        // An all-zero block has scale 0 and codes 0.
        r.quantize(&[0.0; 32], 1, 32);
        assert_eq!((r.d[0], r.q.iter().all(|&v| v == 0)), (0.0, true));
    }
}
