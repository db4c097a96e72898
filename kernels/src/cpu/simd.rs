//! The CPU backend's inner loops: a dot product and the `x · wᵀ` GEMM micro-kernel.
//!
//! Both keep eight partial sums per output (one 8-lane vector) and walk `k` in order, then
//! add the lanes in one fixed order. So an output's value depends only on its two input
//! rows, never on the batch size or on where the row sits in a tile: the backend stays
//! deterministic and batch-invariant. On x86-64 with AVX2+FMA (checked once at run time)
//! the lanes are one `__m256` and each step is a fused multiply-add; elsewhere the same
//! structure runs on plain arrays (multiply then add).
//!
//! The GEMM streams weights straight from their row-major `[n, k]` layout with no
//! packing: 2 rows of `x` by 4 rows of `w` per micro-kernel (8 accumulators, 6 loads per
//! 8 FMAs), tiles of `x` sized to stay in L2. Decode steps (a few rows) therefore read
//! each weight once per step, which is what bounds them.

use std::sync::OnceLock;

/// Lanes per accumulator.
const L: usize = 8;

fn has_fma() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Adds 8 lanes in a fixed order (pairwise).
#[inline(always)]
fn reduce8(v: [f32; L]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())`, in the module's fixed order.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    gemm_block::<1, 1>(&[a], &[b])[0][0]
}

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

/// Row-major `out[i, j] = Σ_k x[i, k]·w[j, k]` for rows `rows` of `x` and columns
/// `cols` of `out` (rows of `w`); `out` has row stride `ldo`.
///
/// # Safety
/// `out` must be valid for writes at `i * ldo + j` for every `i` in `rows` and `j` in
/// `cols`, and no one else may access those elements during the call (tasks of one
/// GEMM own disjoint column ranges).
pub(crate) unsafe fn gemm_bt_tile(
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
mod fma {
    use super::{reduce8, Queries, L};
    use std::arch::x86_64::*;

    /// e^x for eight lanes (Cephes' expf polynomial); 0 below −87.3, clamped above 88.3.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.336_55);
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.376_26));
        let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
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
        _mm256_andnot_ps(under, r)
    }

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
        let mut g = 0;
        // Up to 12 accumulators: G heads by W vectors of columns.
        while g < heads {
            match heads - g {
                1 => weighted_pass::<1, 8>(o, hd, p, ps, base, offs, g),
                2 => weighted_pass::<2, 4>(o, hd, p, ps, base, offs, g),
                _ => weighted_pass::<3, 4>(o, hd, p, ps, base, offs, g),
            }
            g += (heads - g).min(3);
        }
    }

    /// Heads `g0..g0 + G` of [`weighted_rows`]: W vectors of columns at a time, then one,
    /// then the scalar tail. Each element's sum is the same sequence of fused
    /// multiply-adds over `i` whatever G and W are.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn weighted_pass<const G: usize, const W: usize>(
        o: &mut [f32],
        hd: usize,
        p: &[f32],
        ps: usize,
        base: &[f32],
        offs: &[usize],
        g0: usize,
    ) {
        let b = base.as_ptr();
        let pr: [*const f32; G] = std::array::from_fn(|g| p.as_ptr().add((g0 + g) * ps));
        let out: [*mut f32; G] = std::array::from_fn(|g| o.as_mut_ptr().add((g0 + g) * hd));
        let mut c = 0;
        while c + W * L <= hd {
            let mut acc = [[_mm256_setzero_ps(); W]; G];
            for (i, &f) in offs.iter().enumerate() {
                let v: [__m256; W] = std::array::from_fn(|w| _mm256_loadu_ps(b.add(f + c + w * L)));
                for g in 0..G {
                    let pv = _mm256_set1_ps(*pr[g].add(i));
                    for w in 0..W {
                        acc[g][w] = _mm256_fmadd_ps(pv, v[w], acc[g][w]);
                    }
                }
            }
            for g in 0..G {
                for w in 0..W {
                    _mm256_storeu_ps(out[g].add(c + w * L), acc[g][w]);
                }
            }
            c += W * L;
        }
        while c + L <= hd {
            let mut acc = [_mm256_setzero_ps(); G];
            for (i, &f) in offs.iter().enumerate() {
                let v = _mm256_loadu_ps(b.add(f + c));
                for g in 0..G {
                    acc[g] = _mm256_fmadd_ps(_mm256_set1_ps(*pr[g].add(i)), v, acc[g]);
                }
            }
            for g in 0..G {
                _mm256_storeu_ps(out[g].add(c), acc[g]);
            }
            c += L;
        }
        while c < hd {
            for g in 0..G {
                let mut acc = 0.0f32;
                for (i, &f) in offs.iter().enumerate() {
                    acc = (*pr[g].add(i)).mul_add(*b.add(f + c), acc);
                }
                *out[g].add(c) = acc;
            }
            c += 1;
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA, and every slice must hold at least `k` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const R: usize, const C: usize>(
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
    unsafe fn reduce_lanes(v: &[__m256], out: *mut f32) {
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
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn weighted_rows_matches_f64_reference() {
        for hd in [1, 8, 60, 64, 72, 128, 136] {
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
