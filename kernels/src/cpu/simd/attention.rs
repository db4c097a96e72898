//! Attention's inner loops, portable and AVX2+FMA: the scores of a block of queries
//! against key rows (bit for bit [`dot`]), the scaled softmax, and the probability-weighted
//! sum of value rows, each element summed in order whatever the number of heads.

use super::dot;
#[cfg(target_arch = "x86_64")]
use super::has_fma;

/// A set of query vectors of `hd` values: query `g` is head `g % per_row` of row
/// `g / per_row`, at `data[(g / per_row) * stride + (g % per_row) * hd..][..hd]` (the
/// query heads of one kv head, for a block of consecutive tokens).
#[derive(Clone, Copy)]
pub(crate) struct Queries<'a> {
    data: &'a [f32],
    stride: usize,
    per_row: usize,
    hd: usize,
    len: usize,
}

impl<'a> Queries<'a> {
    /// Panics if a query falls outside `data`.
    pub(crate) fn new(
        data: &'a [f32],
        stride: usize,
        per_row: usize,
        hd: usize,
        rows: usize,
    ) -> Self {
        assert!(hd > 0 && per_row > 0);
        assert!(rows == 0 || (rows - 1) * stride + per_row * hd <= data.len());
        Queries {
            data,
            stride,
            per_row,
            hd,
            len: rows * per_row,
        }
    }

    #[inline(always)]
    fn get(&self, g: usize) -> &'a [f32] {
        let at = (g / self.per_row) * self.stride + (g % self.per_row) * self.hd;
        &self.data[at..at + self.hd]
    }
}

/// `out[g * n + i] = dot(q_g, base[offs[i] ..])` for every query `q_g` and key row `i`
/// (`n = offs.len()`), bit for bit [`dot`]: the attention scores of a block of queries,
/// three queries by four keys per micro-kernel so each key row is loaded once per three.
pub(crate) fn scores(qs: Queries<'_>, base: &[f32], offs: &[usize], out: &mut [f32]) {
    let (n, hd) = (offs.len(), qs.hd);
    assert!(offs.iter().all(|&f| f + hd <= base.len()) && out.len() >= qs.len * n);
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: AVX2+FMA present; rows are in bounds (asserted above).
        unsafe { fma::scores(qs, base, offs, out) };
        return;
    }
    for g in 0..qs.len {
        let q = qs.get(g);
        for (o, &f) in out[g * n..(g + 1) * n].iter_mut().zip(offs) {
            *o = dot(q, &base[f..f + hd]);
        }
    }
}

/// Softmax of `s · scale` in place: `s[i] = exp(s[i]·scale − max) / Σ`. On AVX2+FMA
/// eight lanes at a time with a degree-6 polynomial `exp` (Cephes' expf: within 2 ulp of
/// libm on the range used, and 0 for arguments below −87.3 where libm gives a
/// subnormal); elsewhere with libm. Deterministic per row, whatever the batch.
pub(crate) fn softmax_scaled(s: &mut [f32], scale: f32) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: AVX2+FMA present.
        unsafe { fma::softmax_scaled(s, scale, max) };
        return;
    }
    let mut sum = 0.0f32;
    for v in s.iter_mut() {
        *v = (*v * scale - max).exp();
        sum += *v;
    }
    for v in s.iter_mut() {
        *v /= sum;
    }
}

/// For each head `g` of `o` (`heads` runs of `hd` values):
/// `o_g = Σ_i p[g * ps + i] · base[offs[i] .. offs[i] + hd]`, each element summed over
/// `i` in order (fused multiply-add on AVX2+FMA), whatever the number of heads. The
/// attention's probability-weighted sum of value rows for the query heads of one kv
/// head: each value row is loaded once for all of them and the sums stay in registers.
pub(crate) fn weighted_rows(
    o: &mut [f32],
    hd: usize,
    p: &[f32],
    ps: usize,
    base: &[f32],
    offs: &[usize],
) {
    assert!(hd > 0 && o.len().is_multiple_of(hd));
    let heads = o.len() / hd;
    assert!(offs.iter().all(|&f| f + hd <= base.len()));
    assert!(heads == 0 || (heads - 1) * ps + offs.len() <= p.len());
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: AVX2+FMA present; every row is in bounds (asserted above).
        unsafe { fma::weighted_rows(o, hd, p, ps, base, offs) };
        return;
    }
    for (g, og) in o.chunks_exact_mut(hd).enumerate() {
        og.fill(0.0);
        for (i, &f) in offs.iter().enumerate() {
            let pi = p[g * ps + i];
            for (ov, &v) in og.iter_mut().zip(&base[f..f + hd]) {
                *ov += pi * v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use super::super::dot::fma::block;
    use super::super::{exp8, reduce8, L};
    use super::Queries;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA must be present.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_scaled(s: &mut [f32], scale: f32, max: f32) {
        let n = s.len();
        let full = n / L * L;
        let (sc, mx) = (_mm256_set1_ps(scale), _mm256_set1_ps(max));
        let mut acc = _mm256_setzero_ps();
        let p = s.as_mut_ptr();
        let mut i = 0;
        while i < full {
            let v = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(p.add(i)), sc, mx));
            _mm256_storeu_ps(p.add(i), v);
            acc = _mm256_add_ps(acc, v);
            i += L;
        }
        let mut lanes = [0.0f32; L];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut sum = reduce8(lanes);
        for v in &mut s[full..] {
            let mut t = [0.0f32; L];
            t[0] = *v * scale - max;
            let mut e = [0.0f32; L];
            _mm256_storeu_ps(e.as_mut_ptr(), exp8(_mm256_loadu_ps(t.as_ptr())));
            *v = e[0];
            sum += e[0];
        }
        let inv = _mm256_set1_ps(1.0 / sum);
        let mut i = 0;
        while i < full {
            _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
            i += L;
        }
        for v in &mut s[full..] {
            *v /= sum;
        }
    }

    /// # Safety
    /// AVX2 and FMA must be present; the bounds asserted by `super::scores` hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(qs: Queries<'_>, base: &[f32], offs: &[usize], out: &mut [f32]) {
        let (n, hd) = (offs.len(), qs.hd);
        let row = |i: usize| base.get_unchecked(offs[i]..offs[i] + hd);
        let o = out.as_mut_ptr();
        // R queries from g against every key: R×4 micro-kernels, then R×1 for the rest.
        macro_rules! run {
            ($r:literal, $g:expr) => {{
                let g = $g;
                let q: [&[f32]; $r] = std::array::from_fn(|j| qs.get(g + j));
                let mut i = 0;
                while i + 4 <= n {
                    let v = block::<$r, 4>(&q, &[row(i), row(i + 1), row(i + 2), row(i + 3)], hd);
                    for (j, vr) in v.iter().enumerate() {
                        std::ptr::copy_nonoverlapping(vr.as_ptr(), o.add((g + j) * n + i), 4);
                    }
                    i += 4;
                }
                while i < n {
                    let v = block::<$r, 1>(&q, &[row(i)], hd);
                    for (j, vr) in v.iter().enumerate() {
                        *o.add((g + j) * n + i) = vr[0];
                    }
                    i += 1;
                }
            }};
        }
        let mut g = 0;
        while g + 3 <= qs.len {
            run!(3, g);
            g += 3;
        }
        match qs.len - g {
            2 => run!(2, g),
            1 => run!(1, g),
            _ => {}
        }
    }

    /// # Safety
    /// AVX2 and FMA must be present; the bounds asserted by `super::weighted_rows` hold.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_rows(
        o: &mut [f32],
        hd: usize,
        p: &[f32],
        ps: usize,
        base: &[f32],
        offs: &[usize],
    ) {
        let heads = o.len() / hd;
        let wide = super::super::has_avx512();
        let mut g = 0;
        // Up to 12 accumulators: G heads by W vectors of columns. With AVX-512, the
        // columns go 16 at a time first; each element is the same in-order sum over
        // the keys whatever the vector width, so the bits do not change.
        while g < heads {
            macro_rules! pass {
                ($g:literal, $w:literal) => {{
                    let c = if wide {
                        weighted_cols512::<$g, $w>(o, hd, p, ps, base, offs, g, 0)
                    } else {
                        0
                    };
                    let c = weighted_cols256::<$g, $w>(o, hd, p, ps, base, offs, g, c);
                    weighted_tail::<$g>(o, hd, p, ps, base, offs, g, c);
                }};
            }
            match heads - g {
                1 => pass!(1, 8),
                2 => pass!(2, 4),
                _ => pass!(3, 4),
            }
            g += (heads - g).min(3);
        }
    }

    /// `$name::<G, W>(o, hd, p, ps, base, offs, g0, c0)`: heads `g0..g0 + G` of
    /// [`weighted_rows`], columns from `c0` on, `$v`-lane vectors: W of them at a time,
    /// then one; returns the first column left (fewer than `$v`). Each element's sum is
    /// the same sequence of fused multiply-adds over the keys whatever G, W and the
    /// vector width are.
    macro_rules! weighted_cols {
        ($name:ident, $feat:literal, $t:ty, $v:expr, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
            /// # Safety
            /// The target features must be present; the bounds asserted by
            /// `super::weighted_rows` hold.
            #[inline]
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
            unsafe fn $name<const G: usize, const W: usize>(
                o: &mut [f32],
                hd: usize,
                p: &[f32],
                ps: usize,
                base: &[f32],
                offs: &[usize],
                g0: usize,
                c0: usize,
            ) -> usize {
                const V: usize = $v;
                let b = base.as_ptr();
                let pr: [*const f32; G] = std::array::from_fn(|g| p.as_ptr().add((g0 + g) * ps));
                let out: [*mut f32; G] = std::array::from_fn(|g| o.as_mut_ptr().add((g0 + g) * hd));
                let mut c = c0;
                while c + W * V <= hd {
                    let mut acc = [[$zero(); W]; G];
                    for (i, &f) in offs.iter().enumerate() {
                        let v: [$t; W] = std::array::from_fn(|w| $load(b.add(f + c + w * V)));
                        for g in 0..G {
                            let pv = $set1(*pr[g].add(i));
                            for w in 0..W {
                                acc[g][w] = $fma(pv, v[w], acc[g][w]);
                            }
                        }
                    }
                    for g in 0..G {
                        for w in 0..W {
                            $store(out[g].add(c + w * V), acc[g][w]);
                        }
                    }
                    c += W * V;
                }
                while c + V <= hd {
                    let mut acc = [$zero(); G];
                    for (i, &f) in offs.iter().enumerate() {
                        let v = $load(b.add(f + c));
                        for g in 0..G {
                            acc[g] = $fma($set1(*pr[g].add(i)), v, acc[g]);
                        }
                    }
                    for g in 0..G {
                        $store(out[g].add(c), acc[g]);
                    }
                    c += V;
                }
                c
            }
        };
    }

    weighted_cols!(
        weighted_cols512,
        "avx512f,avx2,fma",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps
    );
    weighted_cols!(
        weighted_cols256,
        "avx2,fma",
        __m256,
        L,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps
    );

    /// The columns of [`weighted_rows`] that vectors leave, heads `g0..g0 + G`.
    ///
    /// # Safety
    /// As [`weighted_cols256`].
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn weighted_tail<const G: usize>(
        o: &mut [f32],
        hd: usize,
        p: &[f32],
        ps: usize,
        base: &[f32],
        offs: &[usize],
        g0: usize,
        c0: usize,
    ) {
        for g in g0..g0 + G {
            for c in c0..hd {
                let mut acc = 0.0f32;
                for (i, &f) in offs.iter().enumerate() {
                    acc = p
                        .get_unchecked(g * ps + i)
                        .mul_add(*base.get_unchecked(f + c), acc);
                }
                *o.get_unchecked_mut(g * hd + c) = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::data;
    use super::*;

    /// Within 1e-5 of an f64 sum, and bit for bit the in-order chain of fused
    /// multiply-adds over the keys, whatever the vector width (8 lanes, or 16 on
    /// AVX-512) and the column tail.
    #[test]
    fn weighted_rows_matches_f64_reference() {
        for hd in [1, 8, 15, 16, 24, 60, 64, 72, 80, 128, 136] {
            for heads in 1..=5 {
                let base = data(10 * hd + 7, 5);
                let offs: Vec<usize> = (0..9).map(|i| (i * 7 % 10) * hd).collect();
                let ps = 11;
                let p = data(heads * ps, 6);
                let mut o = vec![f32::NAN; heads * hd];
                weighted_rows(&mut o, hd, &p, ps, &base, &offs);
                for g in 0..heads {
                    for c in 0..hd {
                        let want: f64 = offs
                            .iter()
                            .enumerate()
                            .map(|(i, &f)| p[g * ps + i] as f64 * base[f + c] as f64)
                            .sum();
                        let got = o[g * hd + c] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "hd {hd} head {g} col {c}: {got} vs {want}"
                        );
                        let fused = offs.iter().enumerate().fold(0.0f32, |acc, (i, &f)| {
                            if has_fma() {
                                p[g * ps + i].mul_add(base[f + c], acc)
                            } else {
                                acc + p[g * ps + i] * base[f + c]
                            }
                        });
                        assert_eq!(
                            o[g * hd + c].to_bits(),
                            fused.to_bits(),
                            "hd {hd} head {g} col {c}"
                        );
                    }
                }
            }
        }
    }

    /// Each head's sums are the same bits whether it is computed alone or with others.
    #[test]
    fn weighted_rows_is_the_same_for_any_number_of_heads() {
        let hd = 64;
        let base = data(40 * hd, 9);
        let offs: Vec<usize> = (0..37).map(|i| (i * 11 % 40) * hd).collect();
        let p = data(5 * 37, 10);
        let mut all = vec![0.0; 5 * hd];
        weighted_rows(&mut all, hd, &p, 37, &base, &offs);
        for g in 0..5 {
            let mut one = vec![0.0; hd];
            weighted_rows(&mut one, hd, &p[g * 37..], 37, &base, &offs);
            assert!(one
                .iter()
                .zip(&all[g * hd..])
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn scores_equal_dot_for_any_number_of_queries() {
        let base = data(64 * 11, 7);
        let offs: Vec<usize> = (0..11).rev().map(|i| i * 64).collect();
        // (rows, heads per row): 1 to 12 queries, contiguous or strided by rows.
        for (rows, per_row) in [
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (1, 5),
            (2, 3),
            (4, 3),
            (3, 1),
        ] {
            let stride = per_row * 64 + 40;
            let qdata = data(stride * rows, 20 + per_row as u32);
            let qs = Queries::new(&qdata, stride, per_row, 64, rows);
            let nq = rows * per_row;
            let mut out = vec![f32::NAN; nq * 11];
            scores(qs, &base, &offs, &mut out);
            for g in 0..nq {
                let at = (g / per_row) * stride + (g % per_row) * 64;
                let q = &qdata[at..at + 64];
                for (i, &f) in offs.iter().enumerate() {
                    assert_eq!(
                        out[g * 11 + i].to_bits(),
                        dot(q, &base[f..f + 64]).to_bits()
                    );
                }
            }
        }
    }

    /// A NaN score makes the whole softmax NaN, in the vector lanes and the tail alike
    /// (the portable path's `f32::exp` does; the AVX2 `exp8` must too), so attention
    /// passes a NaN in q or K on instead of hiding it.
    #[test]
    fn a_nan_score_gives_a_nan_softmax() {
        for (n, at) in [(1, 0), (13, 3), (13, 10), (64, 40)] {
            let mut s = data(n, 12);
            s[at] = f32::NAN;
            softmax_scaled(&mut s, 0.125);
            assert!(s.iter().all(|v| v.is_nan()), "n {n}, NaN at {at}: {s:?}");
        }
    }

    #[test]
    fn softmax_matches_f64_reference() {
        for n in [1, 5, 8, 13, 100, 1000] {
            let mut s: Vec<f32> = data(n, 11).iter().map(|v| v * 40.0).collect();
            let want: Vec<f64> = {
                let x: Vec<f64> = s.iter().map(|v| *v as f64 * 0.125).collect();
                let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                e.iter().map(|v| v / z).collect()
            };
            softmax_scaled(&mut s, 0.125);
            for (g, w) in s.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-6 * w.max(1e-30) + 1e-12,
                    "n {n}: {g} vs {w}"
                );
            }
        }
    }
}
