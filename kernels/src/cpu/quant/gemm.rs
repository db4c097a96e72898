//! The integer GEMM over a [`QMatrix`]: AVX-512 with VNNI where the CPU has it (one
//! `vpdpbusd` adds four code × activation products into each of 16 rows' lanes), a
//! portable path elsewhere; both compute the module's formula (`quant/mod.rs`) in the
//! same order, so they give the same bits.

use super::{QMatrix, QRows, TILE};
use std::ops::Range;

/// `out[i * ldo + j] = Σ x[i] · w[j]` for rows `rows` of `x` and the weight rows of
/// tiles `tiles` (columns past `n` are not written).
///
/// # Safety
/// `out` is valid for writes at `i * ldo + j` for `i` in `rows`, `j` in the tiles'
/// columns below `n`, and no one else accesses them during the call; `x` was quantized
/// with `k = q.k` and holds every row in `rows`.
pub(crate) unsafe fn gemm_tiles(
    q: &QMatrix,
    x: &QRows,
    tiles: Range<usize>,
    rows: Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    assert!(x.k == q.k && rows.end <= x.m && tiles.end <= q.tiles());
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: the features are present; the rest is this function's contract.
        return unsafe { avx512::gemm_tiles(q, x, tiles, rows, out, ldo) };
    }
    // SAFETY: this function's contract.
    unsafe { portable(q, x, tiles, rows, out, ldo) }
}

/// AVX-512 F, BW and VNNI, checked once per process.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_vnni() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    })
}

/// The reference: the formula, one output at a time.
///
/// # Safety
/// As [`gemm_tiles`].
pub(crate) unsafe fn portable(
    q: &QMatrix,
    x: &QRows,
    tiles: Range<usize>,
    rows: Range<usize>,
    out: *mut f32,
    ldo: usize,
) {
    let l = &q.layout;
    let (k, sub) = (q.k, l.sub);
    let mut codes = vec![0u8; k];
    for j in tiles.start * TILE..(tiles.end * TILE).min(q.n) {
        for (p, c) in codes.iter_mut().enumerate() {
            *c = q.code(j, p);
        }
        for i in rows.clone() {
            let xr = x.row(i);
            let mut acc = 0.0f32;
            for s in 0..k / sub {
                let p0 = s * sub;
                let dot: i32 = (p0..p0 + sub).map(|p| codes[p] as i32 * xr[p] as i32).sum();
                let sx = x.sum(i, p0, sub);
                let isum = dot - l.offset * sx;
                let dx = x.scale(i, p0);
                let (d, m) = q.scale(j, s);
                acc = (d * dx).mul_add(isum as f32, acc);
                if l.has_min {
                    acc = m.mul_add(dx * sx as f32, acc);
                }
            }
            // SAFETY: (i, j) is in the caller's range.
            unsafe { *out.add(i * ldo + j) = acc };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::{QMatrix, QRows, TILE};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows of `x` per pass over a tile: each sub-block's codes are decoded once for them.
    const MR: usize = 4;

    /// # Safety
    /// AVX-512 F/BW/VNNI are present; otherwise `super::gemm_tiles`' contract.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn gemm_tiles(
        q: &QMatrix,
        x: &QRows,
        tiles: Range<usize>,
        rows: Range<usize>,
        out: *mut f32,
        ldo: usize,
    ) {
        let l = q.layout;
        macro_rules! go {
            ($nib:literal, $planes:literal, $sub:literal, $min:literal) => {
                run::<$nib, $planes, $sub, $min>(q, x, tiles, rows, out, ldo)
            };
        }
        match (l.nibbles, l.planes, l.sub, l.has_min) {
            (false, 0, 32, false) => go!(false, 0, 32, false),
            (true, 0, 32, false) => go!(true, 0, 32, false),
            (true, 0, 32, true) => go!(true, 0, 32, true),
            (true, 1, 32, false) => go!(true, 1, 32, false),
            (true, 1, 32, true) => go!(true, 1, 32, true),
            (true, 2, 16, false) => go!(true, 2, 16, false),
            // Any other combination runs the reference.
            _ => super::portable(q, x, tiles, rows, out, ldo),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const NIB: bool, const PLANES: usize, const SUB: usize, const MIN: bool>(
        q: &QMatrix,
        x: &QRows,
        tiles: Range<usize>,
        rows: Range<usize>,
        out: *mut f32,
        ldo: usize,
    ) {
        for t in tiles {
            let nc = (q.n - t * TILE).min(TILE);
            let mut i = rows.start;
            while i < rows.end {
                let mr = (rows.end - i).min(MR);
                let o = out.add(i * ldo + t * TILE);
                match mr {
                    1 => tile::<NIB, PLANES, SUB, MIN, 1>(q, x, t, i, o, ldo, nc),
                    2 => tile::<NIB, PLANES, SUB, MIN, 2>(q, x, t, i, o, ldo, nc),
                    3 => tile::<NIB, PLANES, SUB, MIN, 3>(q, x, t, i, o, ldo, nc),
                    _ => tile::<NIB, PLANES, SUB, MIN, 4>(q, x, t, i, o, ldo, nc),
                }
                i += mr;
            }
        }
    }

    /// Rows `i0..i0 + R` of `x` times tile `t`, into `out` (row `r` at `out + r · ldo`,
    /// `nc` columns).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<
        const NIB: bool,
        const PLANES: usize,
        const SUB: usize,
        const MIN: bool,
        const R: usize,
    >(
        q: &QMatrix,
        x: &QRows,
        t: usize,
        i0: usize,
        out: *mut f32,
        ldo: usize,
        nc: usize,
    ) {
        let k = q.k;
        let subs = k / SUB;
        let groups = SUB / 4;
        let codes = q.codes.as_ptr().add(t * q.tile_code_bytes());
        let planes = q.planes.as_ptr().add(t * PLANES * (k / 4));
        let scales = q.scales.as_ptr().add(t * subs * TILE);
        let mins = if MIN {
            q.mins.as_ptr().add(t * subs * TILE)
        } else {
            scales
        };
        let offset = q.layout.offset;
        let low = _mm512_set1_epi8(0x0F);
        let xq: [*const i8; R] = std::array::from_fn(|r| x.row(i0 + r).as_ptr());
        let mut acc = [_mm512_setzero_ps(); R];
        // Code bytes per sub-block.
        let sub_bytes = if NIB { SUB * TILE / 2 } else { SUB * TILE };
        for s in 0..subs {
            let cs = codes.add(s * sub_bytes);
            _mm_prefetch::<_MM_HINT_T0>(cs.add(8 * sub_bytes).cast());
            if !NIB || SUB == 32 {
                _mm_prefetch::<_MM_HINT_T0>(cs.add(8 * sub_bytes + 64).cast());
            }
            let mut c = [_mm512_setzero_si512(); 8];
            if NIB {
                for h in 0..groups / 2 {
                    let v = _mm512_loadu_si512(cs.add(64 * h).cast());
                    c[2 * h] = _mm512_and_si512(v, low);
                    c[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                }
            } else {
                for (g, c) in c.iter_mut().enumerate().take(groups) {
                    *c = _mm512_loadu_si512(cs.add(64 * g).cast());
                }
            }
            if PLANES > 0 {
                let pl = planes.add(s * groups * PLANES);
                for (g, c) in c.iter_mut().enumerate().take(groups) {
                    *c = _mm512_mask_add_epi8(*c, *pl.add(g * PLANES), *c, _mm512_set1_epi8(0x10));
                    if PLANES > 1 {
                        let m = *pl.add(g * PLANES + 1);
                        *c = _mm512_mask_add_epi8(*c, m, *c, _mm512_set1_epi8(0x20));
                    }
                }
            }
            let d = _mm512_loadu_ps(scales.add(s * TILE));
            let p0 = s * SUB;
            for r in 0..R {
                let xr = xq[r].add(p0);
                let mut isum = _mm512_setzero_si512();
                for (g, c) in c.iter().enumerate().take(groups) {
                    let xv = std::ptr::read_unaligned(xr.add(4 * g).cast::<i32>());
                    isum = _mm512_dpbusd_epi32(isum, *c, _mm512_set1_epi32(xv));
                }
                let sx = x.sum(i0 + r, p0, SUB);
                if offset != 0 {
                    isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(offset * sx));
                }
                let dx = x.scale(i0 + r, p0);
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(dx));
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[r]);
                if MIN {
                    let m = _mm512_loadu_ps(mins.add(s * TILE));
                    acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(dx * sx as f32), acc[r]);
                }
            }
        }
        let mask = if nc >= 16 {
            0xffff
        } else {
            ((1u32 << nc) - 1) as __mmask16
        };
        for (r, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(r * ldo), mask, *a);
        }
    }
}
