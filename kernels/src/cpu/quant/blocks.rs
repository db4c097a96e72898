//! ggml's block formats read into the common form the integer kernels use: per value an
//! unsigned code (4 to 8 bits), per sub-block of 16 or 32 values an f32 scale `d` and,
//! for the formats with a min, an f32 min `m`, so that
//! `value = d · (code − offset) + m` in exactly the f32 operations ggml's dequantization
//! does (so a row read back equals the f32 path's weights bit for bit).

use super::activation::ActKind;
use crate::WeightFormat;
use half::f16;

/// How a format's codes and scales are laid out for the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub format: WeightFormat,
    /// Codes fit in 4 bits plus `planes` high bits (else they are whole bytes).
    pub nibbles: bool,
    /// High bits above the nibble: 0, 1 (Q5) or 2 (Q6_K).
    pub planes: usize,
    /// Values per scale.
    pub sub: usize,
    /// Subtracted from each code.
    pub offset: i32,
    /// Whether a min is added.
    pub has_min: bool,
    /// How the activations are quantized for it (as llama.cpp pairs them).
    pub act: ActKind,
}

impl Layout {
    /// The layout of a quantized format; `None` for f32 / f16 / bf16.
    pub fn of(format: WeightFormat) -> Option<Layout> {
        let l = |nibbles, planes, sub, offset, has_min| {
            let act = match format {
                WeightFormat::Q4K | WeightFormat::Q6K => ActKind::Q8K,
                _ => ActKind::Q8_1,
            };
            Some(Layout {
                format,
                nibbles,
                planes,
                sub,
                offset,
                has_min,
                act,
            })
        };
        match format {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => None,
            // q + 128: the integer dot takes unsigned codes times signed activations.
            WeightFormat::Q8_0 => l(false, 0, 32, 128, false),
            WeightFormat::Q4_0 => l(true, 0, 32, 8, false),
            WeightFormat::Q4_1 => l(true, 0, 32, 0, true),
            WeightFormat::Q5_0 => l(true, 1, 32, 16, false),
            WeightFormat::Q5_1 => l(true, 1, 32, 0, true),
            WeightFormat::Q4K => l(true, 0, 32, 0, true),
            WeightFormat::Q6K => l(true, 2, 16, 32, false),
        }
    }

    /// Sub-blocks in a row of `k`.
    pub fn subs(&self, k: usize) -> usize {
        k / self.sub
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn nibbles(qs: &[u8], codes: &mut [u8]) {
    for j in 0..16 {
        codes[j] = qs[j] & 0xF;
        codes[j + 16] = qs[j] >> 4;
    }
}

fn high_bits(qh: &[u8], codes: &mut [u8]) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, c) in codes[..32].iter_mut().enumerate() {
        *c |= (((qh >> j) & 1) as u8) << 4;
    }
}

/// The 6-bit scale and min of Q4_K sub-block `j` from its 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One block of `format` (`block_bytes` of `b`) into `codes` (`block_size`), and its
/// sub-blocks' scales and mins into `d` and `m` (`block_size / sub` each).
fn block(format: WeightFormat, b: &[u8], codes: &mut [u8], d: &mut [f32], m: &mut [f32]) {
    match format {
        WeightFormat::Q8_0 => {
            d[0] = h(b, 0);
            for (c, &q) in codes.iter_mut().zip(&b[2..34]) {
                *c = (q as i8 as i32 + 128) as u8;
            }
        }
        WeightFormat::Q4_0 => {
            d[0] = h(b, 0);
            nibbles(&b[2..18], codes);
        }
        WeightFormat::Q4_1 => {
            (d[0], m[0]) = (h(b, 0), h(b, 2));
            nibbles(&b[4..20], codes);
        }
        WeightFormat::Q5_0 => {
            d[0] = h(b, 0);
            nibbles(&b[6..22], codes);
            high_bits(&b[2..6], codes);
        }
        WeightFormat::Q5_1 => {
            (d[0], m[0]) = (h(b, 0), h(b, 2));
            nibbles(&b[8..24], codes);
            high_bits(&b[4..8], codes);
        }
        WeightFormat::Q4K => {
            let (dd, dmin) = (h(b, 0), h(b, 2));
            let (scales, qs) = (&b[4..16], &b[16..144]);
            for chunk in 0..4 {
                for half in 0..2 {
                    let s = 2 * chunk + half;
                    let (sc, mn) = scale_min_k4(s, scales);
                    // ggml: d·sc·q − dmin·m; adding the negated min is the same operation.
                    d[s] = dd * sc as f32;
                    m[s] = -(dmin * mn as f32);
                    let q = &qs[32 * chunk..32 * chunk + 32];
                    for (l, &v) in q.iter().enumerate() {
                        codes[32 * s + l] = if half == 0 { v & 0xF } else { v >> 4 };
                    }
                }
            }
        }
        WeightFormat::Q6K => {
            let dd = h(b, 208);
            for (s, &sc) in b[192..208].iter().enumerate() {
                d[s] = dd * (sc as i8) as f32;
            }
            for half in 0..2 {
                let ql = &b[64 * half..64 * half + 64];
                let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                let out = &mut codes[128 * half..128 * half + 128];
                for l in 0..32 {
                    out[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    out[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    out[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    out[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            unreachable!("not a block format")
        }
    }
}

/// A row of `k` values in `layout`'s format into codes (`k`), scales and mins
/// (`k / sub` each; the mins stay untouched for formats without one).
pub(crate) fn decode_row(
    layout: &Layout,
    row: &[u8],
    k: usize,
    codes: &mut [u8],
    d: &mut [f32],
    m: &mut [f32],
) {
    let (bs, bb) = (layout.format.block_size(), layout.format.block_bytes());
    let per = bs / layout.sub;
    for (i, b) in row.chunks_exact(bb).enumerate().take(k / bs) {
        block(
            layout.format,
            b,
            &mut codes[i * bs..(i + 1) * bs],
            &mut d[i * per..(i + 1) * per],
            &mut m[i * per..(i + 1) * per],
        );
    }
}

/// The value of a code, as ggml's dequantization computes it.
#[inline]
pub(crate) fn value(layout: &Layout, code: u8, d: f32, m: f32) -> f32 {
    let v = (code as i32 - layout.offset) as f32 * d;
    if layout.has_min {
        v + m
    } else {
        v
    }
}
