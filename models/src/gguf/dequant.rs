//! Dequantization of ggml block formats to f32, following the formats' definitions in
//! ggml (block layouts: `d` and `m` are f16, quants are packed nibbles or bytes).

use half::{bf16, f16};
use novastack_kernels::WeightFormat;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
}

/// Names of every ggml type id, for error messages about the ones we do not support.
const NAMES: [(u32, &str); 31] = [
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (4, "Q4_2"),
    (5, "Q4_3"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            30 => GgmlType::BF16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            _ => return None,
        })
    }

    pub fn name_of(id: u32) -> String {
        NAMES
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| format!("type id {id}"))
    }

    /// The stored format a backend may compute on (the same bytes).
    pub fn format(self) -> WeightFormat {
        match self {
            GgmlType::F32 => WeightFormat::F32,
            GgmlType::F16 => WeightFormat::F16,
            GgmlType::BF16 => WeightFormat::BF16,
            GgmlType::Q4_0 => WeightFormat::Q4_0,
            GgmlType::Q4_1 => WeightFormat::Q4_1,
            GgmlType::Q5_0 => WeightFormat::Q5_0,
            GgmlType::Q5_1 => WeightFormat::Q5_1,
            GgmlType::Q8_0 => WeightFormat::Q8_0,
            GgmlType::Q4K => WeightFormat::Q4K,
            GgmlType::Q6K => WeightFormat::Q6K,
        }
    }

    pub fn name(self) -> &'static str {
        self.format().name()
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        self.format().block_size()
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.format().block_bytes()
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = h(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0xF) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// Q5's 32 codes: nibbles from `qs`, the fifth bit of value `j` is bit `j` of `qh`.
fn q5_codes(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

fn block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = h(b, 0);
    for (o, q) in y.iter_mut().zip(q5_codes(&b[2..6], &b[6..22])) {
        *o = (q as i32 - 16) as f32 * d;
    }
}

fn block_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    for (o, q) in y.iter_mut().zip(q5_codes(&b[4..8], &b[8..24])) {
        *o = q as f32 * d + m;
    }
}

fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = h(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` from Q4_K's packed 12 bytes.
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

fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0xF) as f32 - min1;
            out[32 + l] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = h(b, 208);
    for half in 0..2 {
        let ql = &ql_all[64 * half..];
        let qh = &qh_all[32 * half..];
        let sc = &sc_all[8 * half..];
        let out = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |i: usize| (sc[i] as i8) as f32;
            out[l] = d * s(is) * q1 as f32;
            out[l + 32] = d * s(is + 2) * q2 as f32;
            out[l + 64] = d * s(is + 4) * q3 as f32;
            out[l + 96] = d * s(is + 6) * q4 as f32;
        }
    }
}

/// Dequantizes whole blocks of `ty` (the caller checked the length) to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    let n = bytes.len() / bb * bs;
    let mut out = vec![0.0f32; n];
    // Work in groups of blocks so rayon tasks are not tiny.
    let group = (4096 / bs).max(1);
    out.par_chunks_mut(bs * group)
        .zip(bytes.par_chunks(bb * group))
        .for_each(|(y, b)| {
            for (yb, bb) in y.chunks_exact_mut(bs).zip(b.chunks_exact(bb)) {
                match ty {
                    GgmlType::F32 => yb[0] = f32::from_le_bytes([bb[0], bb[1], bb[2], bb[3]]),
                    GgmlType::F16 => yb[0] = h(bb, 0),
                    GgmlType::BF16 => yb[0] = bf16::from_le_bytes([bb[0], bb[1]]).to_f32(),
                    GgmlType::Q4_0 => block_q4_0(bb, yb),
                    GgmlType::Q4_1 => block_q4_1(bb, yb),
                    GgmlType::Q5_0 => block_q5_0(bb, yb),
                    GgmlType::Q5_1 => block_q5_1(bb, yb),
                    GgmlType::Q8_0 => block_q8_0(bb, yb),
                    GgmlType::Q4K => block_q4_k(bb, yb),
                    GgmlType::Q6K => block_q6_k(bb, yb),
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_0_by_hand() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 4;
        b[3] = (-6i8) as u8;
        let y = dequantize(GgmlType::Q8_0, &b);
        assert_eq!(&y[..3], &[2.0, -3.0, 0.0]);

        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2] = 0x9F; // low nibble 15 -> (15-8)*2 = 14; high nibble 9 -> 2
        let y = dequantize(GgmlType::Q4_0, &b);
        assert_eq!((y[0], y[16], y[1]), (14.0, 2.0, -16.0));
    }

    #[test]
    fn q4_1_adds_the_min() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4] = 0x84;
        let y = dequantize(GgmlType::Q4_1, &b);
        assert_eq!((y[0], y[16], y[2]), (0.0, 1.0, -1.0));
    }

    #[test]
    fn q5_takes_the_fifth_bit_from_qh() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        // qh bit 0 (value 0) and bit 17 (value 17).
        b[2..6].copy_from_slice(&(1u32 | 1 << 17).to_le_bytes());
        b[6] = 0x21; // value 0: nibble 1, value 16: nibble 2
        b[7] = 0x03; // value 1: nibble 3, value 17: nibble 0
        let y = dequantize(GgmlType::Q5_0, &b);
        assert_eq!((y[0], y[16], y[1], y[17]), (1.0, -14.0, -13.0, 0.0));
        let mut b1 = vec![0u8; 24];
        b1[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b1[2..4].copy_from_slice(&f16::from_f32(-2.0).to_le_bytes());
        b1[4..8].copy_from_slice(&1u32.to_le_bytes());
        b1[8] = 0x01;
        let y = dequantize(GgmlType::Q5_1, &b1);
        assert_eq!((y[0], y[16], y[1]), (6.5, -2.0, -2.0));
    }

    #[test]
    fn names_of_unsupported_types() {
        assert_eq!(GgmlType::name_of(13), "Q5_K");
        assert!(GgmlType::from_id(13).is_none());
        assert_eq!(GgmlType::name_of(99), "type id 99");
    }
}
