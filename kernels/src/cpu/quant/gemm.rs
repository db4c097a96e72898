//! The integer GEMM over a [`QMatrix`]: AVX-512 with VNNI where the CPU has it (one
//! `vpdpbusd` adds four code × activation products into each of 16 rows' lanes), AVX2
//! (`vpmaddubsw` + `vpmaddwd`, 8 rows' lanes per register; Q8_0's signed values through
//! the sign trick, so no pair of products saturates 16 bits), a portable path elsewhere;
//! all compute the module's formula (`quant/mod.rs`) with the same integers and the same
//! f32 operations in the same order, so they give the same bits.

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
    assert!(x.k == q.k && x.kind == q.layout.act && rows.end <= x.m && tiles.end <= q.tiles());
    #[cfg(target_arch = "x86_64")]
    {
        if has_vnni() {
            // SAFETY: the features are present; the rest is this function's contract.
            return unsafe { avx512::gemm_tiles(q, x, tiles, rows, out, ldo) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2::gemm_tiles(q, x, tiles, rows, out, ldo) };
        }
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
                    acc = m.mul_add(x.min_factor(i, p0, sub), acc);
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
            // Eight sub-blocks ahead (past the end near the last: a prefetch does not fault).
            _mm_prefetch::<_MM_HINT_T0>(cs.wrapping_add(8 * sub_bytes).cast());
            if !NIB || SUB == 32 {
                _mm_prefetch::<_MM_HINT_T0>(cs.wrapping_add(8 * sub_bytes + 64).cast());
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
                    let mx = x.min_factor(i0 + r, p0, SUB);
                    acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(mx), acc[r]);
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

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::super::{QMatrix, QRows, TILE};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows of `x` per pass over a tile.
    const MR: usize = 4;

    /// # Safety
    /// AVX2 and FMA are present; otherwise `super::gemm_tiles`' contract.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gemm_tiles(
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
                tile(q, x, t, i, mr, out.add(i * ldo + t * TILE), ldo, nc);
                i += mr;
            }
        }
    }

    /// The 32 mask bits of `m` as 32 bytes, 0xFF where a bit is set.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn expand_bits(m: u32) -> __m256i {
        let v = _mm256_set1_epi32(m as i32);
        let pick = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let v = _mm256_and_si256(_mm256_shuffle_epi8(v, pick), bits);
        _mm256_cmpeq_epi8(v, bits)
    }

    /// Rows `i0..i0 + mr` of `x` times tile `t` (see the AVX-512 kernel); a tile's 16
    /// rows are two registers of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        q: &QMatrix,
        x: &QRows,
        t: usize,
        i0: usize,
        mr: usize,
        out: *mut f32,
        ldo: usize,
        nc: usize,
    ) {
        let l = q.layout;
        let (k, sub) = (q.k, l.sub);
        let subs = k / sub;
        let groups = sub / 4;
        let codes = q.codes.as_ptr().add(t * q.tile_code_bytes());
        let planes = q.planes.as_ptr().add(t * l.planes * (k / 4));
        let scales = q.scales.as_ptr().add(t * subs * TILE);
        let mins = q
            .mins
            .as_ptr()
            .add(if l.has_min { t * subs * TILE } else { 0 });
        // Q8_0's codes are q + 128: its products are taken on q itself (sign trick).
        let signed = !l.nibbles;
        let offset = if signed { 0 } else { l.offset };
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let sub_bytes = if l.nibbles {
            sub * TILE / 2
        } else {
            sub * TILE
        };
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        // Codes of one sub-block: [group][half].
        let mut c = [[_mm256_setzero_si256(); 2]; 8];
        for s in 0..subs {
            let cs = codes.add(s * sub_bytes);
            if l.nibbles {
                for h in 0..groups / 2 {
                    for (hf, c2) in [0, 1].into_iter().zip([0usize, 32]) {
                        let v = _mm256_loadu_si256(cs.add(64 * h + c2).cast());
                        c[2 * h][hf] = _mm256_and_si256(v, low);
                        c[2 * h + 1][hf] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                    }
                }
            } else {
                for (g, c) in c.iter_mut().enumerate().take(groups) {
                    for (hf, c) in c.iter_mut().enumerate() {
                        let v = _mm256_loadu_si256(cs.add(64 * g + 32 * hf).cast());
                        *c = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                    }
                }
            }
            for pl in 0..l.planes {
                let bit = _mm256_set1_epi8((0x10 << pl) as i8);
                for (g, c) in c.iter_mut().enumerate().take(groups) {
                    let m = *planes.add((s * groups + g) * l.planes + pl);
                    for (hf, c) in c.iter_mut().enumerate() {
                        let e = expand_bits((m >> (32 * hf)) as u32);
                        *c = _mm256_or_si256(*c, _mm256_and_si256(e, bit));
                    }
                }
            }
            let d = [
                _mm256_loadu_ps(scales.add(s * TILE)),
                _mm256_loadu_ps(scales.add(s * TILE + 8)),
            ];
            let p0 = s * sub;
            for (r, acc) in acc.iter_mut().enumerate().take(mr) {
                let xr = x.row(i0 + r).as_ptr().add(p0);
                let mut isum = [_mm256_setzero_si256(); 2];
                for (g, c) in c.iter().enumerate().take(groups) {
                    let xv =
                        _mm256_set1_epi32(std::ptr::read_unaligned(xr.add(4 * g).cast::<i32>()));
                    for (isum, c) in isum.iter_mut().zip(c) {
                        let prod = if signed {
                            _mm256_maddubs_epi16(_mm256_sign_epi8(*c, *c), _mm256_sign_epi8(xv, *c))
                        } else {
                            _mm256_maddubs_epi16(*c, xv)
                        };
                        *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(prod, ones));
                    }
                }
                let sx = x.sum(i0 + r, p0, sub);
                let dx = x.scale(i0 + r, p0);
                for hf in 0..2 {
                    let mut v = isum[hf];
                    if offset != 0 {
                        v = _mm256_sub_epi32(v, _mm256_set1_epi32(offset * sx));
                    }
                    let scale = _mm256_mul_ps(d[hf], _mm256_set1_ps(dx));
                    acc[hf] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(v), acc[hf]);
                    if l.has_min {
                        let m = _mm256_loadu_ps(mins.add(s * TILE + 8 * hf));
                        let mx = x.min_factor(i0 + r, p0, sub);
                        acc[hf] = _mm256_fmadd_ps(m, _mm256_set1_ps(mx), acc[hf]);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(mr) {
            let mut tmp = [0.0f32; TILE];
            _mm256_storeu_ps(tmp.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), a[1]);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out.add(r * ldo), nc);
        }
    }
}
