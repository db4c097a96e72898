//! The `x · wᵀ` GEMM as outer products over `w` packed in column panels.
//!
//! **Numerics.** Every output is one chain of fused multiply-adds over `k` in order,
//! starting from zero: `acc = fma(x[i, p], w[j, p], acc)` for `p = 0, 1, …, k − 1`.
//! Nothing else touches it: no partial sums, no lane reduction. So an output depends
//! only on its two input rows: not on the batch size, on where the row or column sits
//! in a tile, on how `k` is blocked (a block's accumulators go to `out` and come back
//! exactly), or on the instruction set. The AVX-512, AVX2 and portable paths give the
//! same bits (the portable path uses `f32::mul_add`, a fused operation everywhere).
//!
//! **Layout.** A weight is stored `[n, k]` (the `Linear` layout), so the 16 (or 8)
//! columns of `out` a vector register holds come from 16 different rows of `w`. The
//! weight is therefore packed once, at upload ([`pack_panels`]), into panels of
//! [`NR`] columns: panel `p` holds `w[32p + c, q]` at `q * NR + c`, zero past `n`.
//! A decode step streams the panels once, at the speed of memory; a prefill step's
//! micro-kernel reads a block of [`KC`] values of `k` of a panel from L1 for every
//! group of rows. AVX-512: 12 rows by 32 columns, 24 accumulators, 14 loads per 24
//! FMAs; AVX2: 6 rows by 16 columns, 12 accumulators. The rows of `x` are interleaved
//! per block first, so each micro-kernel broadcasts from one contiguous stream.

#[cfg(target_arch = "x86_64")]
use super::{has_avx512, has_fma};
use std::ops::Range;

/// A value a panel stores: f32, or bf16 / f16 bits widened to f32 where they are read
/// (exactly: every bf16 and f16 value is an f32), so a weight kept in half precision
/// gives the same bits as the same weight widened to f32 at load, at half the bytes.
pub(crate) trait PanelElem: Copy + Send + Sync + 'static {
    const ZERO: Self;
    fn to_f32(self) -> f32;
    /// Sixteen values from `p`, widened.
    ///
    /// # Safety
    /// AVX-512F is present and `p` is valid for 16 reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// Eight values from `p`, widened.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present and `p` is valid for 8 reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl PanelElem for f32 {
    const ZERO: f32 = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

/// bfloat16 bits: the high half of an f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Bf16(pub u16);

/// IEEE half-precision bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct F16(pub u16);

impl PanelElem for Bf16 {
    const ZERO: Bf16 = Bf16(0);
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Bf16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let h = _mm256_loadu_si256(p.cast());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p.cast());
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

impl PanelElem for F16 {
    const ZERO: F16 = F16(0);
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self.0).to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const F16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const F16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

/// Columns per panel.
pub(crate) const NR: usize = 32;

/// Bytes between a prefetch and its use (16 panel rows of f32): a decode step streams
/// the panels from memory (without it, batch-1 GEMMs ran at half the speed).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 16 * NR * 4;

/// Values of `k` per block: a panel's block is 24 KiB, which leaves room in a 48 KiB
/// L1 for the rows of `x` that stream through it.
const KC: usize = 192;

/// Floats of one `[n, k]` weight packed in panels: the panels, then `NR` floats of
/// padding (a piece of columns that starts inside a panel reads whole vectors, past the
/// last row of the last panel; what it reads there goes into no output).
pub(crate) fn panels_len(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * k + NR
}

/// `w` (`[n, k]`, row-major) packed in column panels (see the module notes) into `dst`
/// (`panels_len(n, k)` zeros), the panels in parallel.
pub(crate) fn pack_panels<T: PanelElem>(w: &[T], n: usize, k: usize, dst: &mut [T]) {
    use rayon::prelude::*;
    assert_eq!(w.len(), n * k);
    assert_eq!(dst.len(), panels_len(n, k));
    if k == 0 {
        return;
    }
    dst[..n.div_ceil(NR) * NR * k]
        .par_chunks_mut(NR * k)
        .zip(w.par_chunks(NR * k))
        .for_each(|(panel, rows)| {
            for (c, row) in rows.chunks_exact(k).enumerate() {
                for (q, &v) in row.iter().enumerate() {
                    panel[q * NR + c] = v;
                }
            }
        });
}

/// `w[j, p]` of a weight packed by [`pack_panels`].
#[inline]
pub(crate) fn panel_value<T: PanelElem>(panels: &[T], k: usize, j: usize, p: usize) -> f32 {
    panels[j / NR * NR * k + p * NR + j % NR].to_f32()
}

/// `out[i * ldo + j] = Σ_p x[i * k + p] · w[j, p]` for `i` in `rows`, `j` in `cols`,
/// each sum one in-order chain of fused multiply-adds (see the module notes); `w` is
/// packed by [`pack_panels`].
///
/// # Safety
/// `x` holds every row in `rows` (each `k` long) and `w` every column in `cols`; `out`
/// is valid for reads and writes at `i * ldo + j` for `i` in `rows`, `j` in `cols`,
/// and no one else accesses those elements during the call.
pub(crate) unsafe fn gemm_bt<T: PanelElem>(
    x: &[f32],
    w: &[T],
    k: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    assert!(x.len() >= rows.end * k && w.len() >= panels_len(cols.end, k));
    if k == 0 {
        for i in rows {
            for j in cols.clone() {
                // SAFETY: (i, j) is in the caller's range.
                unsafe { *out.add(i * ldo + j) = 0.0 };
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: AVX-512F is present; the rest is this function's contract.
            return unsafe { avx512::gemm_bt(x, w, k, rows, cols, out, ldo) };
        }
        if has_fma() {
            // SAFETY: AVX2 and FMA are present; the rest is this function's contract.
            return unsafe { avx2::gemm_bt(x, w, k, rows, cols, out, ldo) };
        }
    }
    portable(x, w, k, rows, cols, out, ldo)
}

/// The reference: one `mul_add` chain per output.
fn portable<T: PanelElem>(
    x: &[f32],
    w: &[T],
    k: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    for i in rows {
        let xr = &x[i * k..(i + 1) * k];
        for j in cols.clone() {
            let acc = xr.iter().enumerate().fold(0.0f32, |acc, (p, a)| {
                a.mul_add(panel_value(w, k, j, p), acc)
            });
            // SAFETY: (i, j) is in the caller's range (see `gemm_bt`).
            unsafe { *out.add(i * ldo + j) = acc };
        }
    }
}

/// Runs `$kernel::<R, V>` for the block's rows `$mr` (one of the listed counts) and
/// vectors per row `$nv` (1, else 2).
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch {
    ($kernel:ident, $mr:expr, $nv:expr, $args:tt, [$($r:literal)*]) => {
        match ($mr, $nv) {
            $(($r, 1) => $kernel::<_, $r, 1> $args,
              ($r, _) => $kernel::<_, $r, 2> $args,)*
            _ => unreachable!("rows per block"),
        }
    };
}

/// The shared loop nest: for each block of `k`, interleave the rows of `x` in blocks of
/// `R`, then for each piece of at most `width` columns within one panel, run every
/// block of rows through it: `kernel(x block, rows, panel piece, kc, out, columns,
/// first)`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn for_each_block<T: PanelElem, const R: usize>(
    x: &[f32],
    w: &[T],
    k: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    out: *mut f32,
    ldo: usize,
    width: usize,
    mut kernel: impl FnMut(*const f32, usize, *const T, usize, *mut f32, usize, bool),
) {
    thread_local! {
        /// The interleaved rows of `x`, kept between calls (a prefill's are a megabyte).
        static ROWS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut xs = ROWS.with(|b| b.take());
    let blocks = rows.len().div_ceil(R);
    // Blocks of k keep a panel's block in L1 for every block of rows; with one block of
    // rows there is nothing to reuse, and a whole panel streams front to back instead
    // (each task reads its panels as one sequential run).
    let kb = if blocks == 1 { k } else { KC };
    xs.clear();
    xs.resize(blocks * kb * R, 0.0);
    let mut k0 = 0;
    while k0 < k {
        let kc = (k - k0).min(kb);
        for (b, i0) in rows.clone().step_by(R).enumerate() {
            let block = &mut xs[b * kb * R..][..kc * R];
            for r in 0..R.min(rows.end - i0) {
                let row = &x[(i0 + r) * k + k0..][..kc];
                for (q, &v) in row.iter().enumerate() {
                    block[q * R + r] = v;
                }
            }
        }
        let mut j = cols.start;
        while j < cols.end {
            // SAFETY: column j's panel holds k values per column (`gemm_bt`'s contract).
            let p = unsafe { w.as_ptr().add(j / NR * NR * k + k0 * NR + j % NR) };
            let nc = (cols.end - j).min(width - j % width);
            for b in 0..blocks {
                let i = rows.start + b * R;
                let mr = (rows.end - i).min(R);
                // SAFETY: row block b of xs, rows i..i + mr of out (the contract).
                let (xb, ob) = unsafe { (xs.as_ptr().add(b * kb * R), out.add(i * ldo + j)) };
                kernel(xb, mr, p, kc, ob, nc, k0 == 0);
            }
            j += nc;
        }
        k0 += kc;
    }
    ROWS.with(|b| b.set(xs));
}

/// 512-bit registers: 16 columns each, two per row of the micro-kernel.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PanelElem, NR};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows of the micro-kernel.
    const MR: usize = 12;

    /// # Safety
    /// AVX-512F must be present; otherwise `super::gemm_bt`'s contract, with `k > 0`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gemm_bt<T: PanelElem>(
        x: &[f32],
        w: &[T],
        k: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        out: *mut f32,
        ldo: usize,
    ) {
        super::for_each_block::<T, MR>(
            x,
            w,
            k,
            rows,
            cols,
            out,
            ldo,
            NR,
            |xb, mr, p, kc, ob, nc, first| {
                dispatch!(
                    kernel,
                    mr,
                    nc.div_ceil(16),
                    (xb, p, kc, ob, ldo, nc, first),
                    [1 2 3 4 5 6 7 8 9 10 11 12]
                )
            },
        )
    }

    /// The first `n` lanes.
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// `R` rows by `16·V` columns (`nc` of them stored) over `kc` values of `k` (row
    /// `r`'s value `q` at `x[q * MR + r]`, the panel's at `p[q * NR ..]`): starts from
    /// zero if `first`, else from `out`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<T: PanelElem, const R: usize, const V: usize>(
        x: *const f32,
        p: *const T,
        kc: usize,
        out: *mut f32,
        ldo: usize,
        nc: usize,
        first: bool,
    ) {
        let masks: [__mmask16; V] = std::array::from_fn(|v| mask(nc.saturating_sub(16 * v)));
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm512_maskz_loadu_ps(masks[v], out.add(r * ldo + 16 * v));
                }
            }
        }
        for q in 0..kc {
            // The panel streams from memory in a decode step: ask for it early.
            // A panel row is 128 bytes of f32 (two lines) or 64 of bf16 / f16 (one).
            // Past the end near the last rows: a prefetch does not fault, and the address
            // is formed without claiming it is in bounds.
            let ahead = p
                .add(q * NR)
                .cast::<i8>()
                .wrapping_add(super::PREFETCH_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            if std::mem::size_of::<T>() == 4 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            }
            let b: [__m512; V] = std::array::from_fn(|v| T::load16(p.add(q * NR + 16 * v)));
            for (r, a) in acc.iter_mut().enumerate() {
                let s = _mm512_set1_ps(*x.add(q * MR + r));
                for (a, b) in a.iter_mut().zip(&b) {
                    *a = _mm512_fmadd_ps(s, *b, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (v, a) in a.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(r * ldo + 16 * v), masks[v], *a);
            }
        }
    }
}

/// 256-bit registers: 8 columns each, two per row of the micro-kernel, over 16-column
/// halves of the panels.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{PanelElem, NR};
    use std::arch::x86_64::*;
    use std::ops::Range;

    const MR: usize = 6;

    /// # Safety
    /// AVX2 and FMA must be present; otherwise `super::gemm_bt`'s contract, `k > 0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemm_bt<T: PanelElem>(
        x: &[f32],
        w: &[T],
        k: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        out: *mut f32,
        ldo: usize,
    ) {
        super::for_each_block::<T, MR>(
            x,
            w,
            k,
            rows,
            cols,
            out,
            ldo,
            16,
            |xb, mr, p, kc, ob, nc, first| {
                dispatch!(
                    kernel,
                    mr,
                    nc.div_ceil(8),
                    (xb, p, kc, ob, ldo, nc, first),
                    [1 2 3 4 5 6]
                )
            },
        )
    }

    /// As the AVX-512 kernel, with 8-lane vectors; partial columns go through a copy.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel<T: PanelElem, const R: usize, const V: usize>(
        x: *const f32,
        p: *const T,
        kc: usize,
        out: *mut f32,
        ldo: usize,
        nc: usize,
        first: bool,
    ) {
        let full = nc == 8 * V;
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                let mut t = [0.0f32; 16];
                let o = if full {
                    out.add(r * ldo).cast_const()
                } else {
                    std::ptr::copy_nonoverlapping(out.add(r * ldo), t.as_mut_ptr(), nc);
                    t.as_ptr()
                };
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(o.add(8 * v));
                }
            }
        }
        for q in 0..kc {
            let ahead = p
                .add(q * NR)
                .cast::<i8>()
                .wrapping_add(super::PREFETCH_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            let b: [__m256; V] = std::array::from_fn(|v| T::load8(p.add(q * NR + 8 * v)));
            for (r, a) in acc.iter_mut().enumerate() {
                let s = _mm256_set1_ps(*x.add(q * MR + r));
                for (a, b) in a.iter_mut().zip(&b) {
                    *a = _mm256_fmadd_ps(s, *b, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.add(r * ldo);
            if full {
                for (v, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(o.add(8 * v), *a);
                }
            } else {
                let mut t = [0.0f32; 16];
                for (v, a) in a.iter().enumerate() {
                    _mm256_storeu_ps(t.as_mut_ptr().add(8 * v), *a);
                }
                std::ptr::copy_nonoverlapping(t.as_ptr(), o, nc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::data;
    use super::*;

    /// The shapes cover row and column tails of every width, `k` blocks and a `k` tail.
    const SHAPES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (3, 5, 9),
        (12, 32, 16),
        (13, 33, 17),
        (7, 47, 67),
        (25, 64, 200),
        (33, 9, 576),
        (2, 100, 1000),
        (1, 300, 50),
    ];

    fn packed(w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut p = vec![0.0; panels_len(n, k)];
        pack_panels(w, n, k, &mut p);
        p
    }

    type Gemm = unsafe fn(&[f32], &[f32], usize, Range<usize>, Range<usize>, *mut f32, usize);

    fn check(f: Gemm) {
        for (m, n, k) in SHAPES {
            let (x, w) = (data(m * k, 3), data(n * k, 4));
            let wp = packed(&w, n, k);
            // The unpacked weight's chains, as plainly as they can be written.
            let want: Vec<f32> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    (0..k).fold(0.0f32, |acc, p| x[i * k + p].mul_add(w[j * k + p], acc))
                })
                .collect();
            // A sub-range of columns, at an offset in a wider `out`.
            for cols in [0..n, n / 3..n] {
                let ldo = n + 3;
                let mut got = vec![f32::NAN; m * ldo];
                // SAFETY: got is m x ldo and this call is its only user.
                unsafe { f(&x, &wp, k, 0..m, cols.clone(), got.as_mut_ptr(), ldo) };
                for i in 0..m {
                    for j in cols.clone() {
                        assert_eq!(
                            got[i * ldo + j].to_bits(),
                            want[i * n + j].to_bits(),
                            "({m},{n},{k}) at ({i},{j})"
                        );
                    }
                    assert!(
                        got[i * ldo + n].is_nan(),
                        "({m},{n},{k}) wrote past the columns"
                    );
                }
            }
        }
    }

    /// Every path, shape and tail gives each element exactly the fused chain.
    #[test]
    fn every_path_equals_the_fused_chain_bit_for_bit() {
        check(gemm_bt);
        check(portable);
        #[cfg(target_arch = "x86_64")]
        if has_fma() {
            // SAFETY: AVX2 and FMA are present; the rest is passed through.
            check(|x, w, k, rows, cols, out, ldo| unsafe {
                avx2::gemm_bt(x, w, k, rows, cols, out, ldo)
            });
        }
    }

    #[test]
    fn the_chain_matches_an_f64_reference() {
        let (m, n, k) = (3, 5, 577);
        let (x, w) = (data(m * k, 1), data(n * k, 2));
        let mut out = vec![0.0; m * n];
        // SAFETY: out is m x n and this call is its only user.
        unsafe { gemm_bt(&x, &packed(&w, n, k), k, 0..m, 0..n, out.as_mut_ptr(), n) };
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                let got = out[i * n + j] as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
        }
    }

    /// A row's values do not depend on the other rows computed with it, nor on the
    /// columns' split.
    #[test]
    fn rows_and_column_ranges_do_not_change_a_value() {
        let (m, n, k) = (29, 70, 300);
        let (x, w) = (data(m * k, 5), data(n * k, 6));
        let wp = packed(&w, n, k);
        let mut all = vec![0.0; m * n];
        // SAFETY: all is m x n and this call is its only user.
        unsafe { gemm_bt(&x, &wp, k, 0..m, 0..n, all.as_mut_ptr(), n) };
        for (rows, cols) in [
            (0..1, 0..n),
            (5..6, 3..40),
            (3..20, 17..70),
            (28..29, 69..70),
        ] {
            let mut part = vec![f32::NAN; m * n];
            // SAFETY: part is m x n and this call is its only user.
            unsafe { gemm_bt(&x, &wp, k, rows.clone(), cols.clone(), part.as_mut_ptr(), n) };
            for i in rows.clone() {
                for j in cols.clone() {
                    assert_eq!(part[i * n + j].to_bits(), all[i * n + j].to_bits());
                }
            }
        }
    }

    /// bf16 and f16 panels give exactly the f32 path's bits on the widened values, on
    /// every instruction set.
    #[test]
    fn half_precision_panels_equal_the_f32_path() {
        fn same<T: PanelElem>(wrap: impl Fn(f32) -> T) {
            for (m, n, k) in SHAPES {
                let x = data(m * k, 1);
                let w: Vec<T> = data(n * k, 2).into_iter().map(&wrap).collect();
                let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
                let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
                let mut wp = vec![T::ZERO; panels_len(n, k)];
                pack_panels(&w, n, k, &mut wp);
                // SAFETY: a and b are m x n and each call their only user.
                unsafe {
                    gemm_bt(&x, &wp, k, 0..m, 0..n, a.as_mut_ptr(), n);
                    gemm_bt(&x, &packed(&wide, n, k), k, 0..m, 0..n, b.as_mut_ptr(), n);
                }
                assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()));
                let mut c = vec![0.0; m * n];
                portable(&x, &wp, k, 0..m, 0..n, c.as_mut_ptr(), n);
                assert!(a.iter().zip(&c).all(|(a, c)| a.to_bits() == c.to_bits()));
            }
        }
        same(|v| Bf16(half::bf16::from_f32(v).to_bits()));
        same(|v| F16(half::f16::from_f32(v).to_bits()));
    }

    #[test]
    fn packing_puts_each_value_in_its_panel() {
        let (n, k) = (37, 5);
        let w = data(n * k, 7);
        let p = packed(&w, n, k);
        assert_eq!(p.len(), 64 * k + NR);
        for j in 0..n {
            for q in 0..k {
                assert_eq!(panel_value(&p, k, j, q), w[j * k + q]);
            }
        }
        assert!(p[NR * k..2 * NR * k]
            .chunks(NR)
            .all(|c| c[n - NR..].iter().all(|&v| v == 0.0)));
    }
}
