//! The integer GEMM against its reference and against f32 math on the same weights.

use super::gemm::portable;
use super::{gemm_tiles, Layout, QMatrix, QRows, TILE};
use crate::{StoredRows, WeightFormat};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) const QUANTIZED: [WeightFormat; 7] = [
    WeightFormat::Q8_0,
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
    WeightFormat::Q4K,
    WeightFormat::Q6K,
];

/// Random valid blocks of `format` for `rows` rows of `k`: random bytes, with every f16
/// field set to a small finite scale (or min).
pub(crate) fn random_rows(format: WeightFormat, rows: usize, k: usize, seed: u64) -> StoredRows {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let per = format.row_bytes(k).unwrap();
    let mut bytes: Vec<u8> = (0..rows * per).map(|_| rng.random::<u8>()).collect();
    let (f16s, scale): (&[usize], f32) = match format {
        WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q5_0 => (&[0], 0.01),
        WeightFormat::Q4_1 | WeightFormat::Q5_1 => (&[0, 2], 0.01),
        WeightFormat::Q4K => (&[0, 2], 0.001),
        WeightFormat::Q6K => (&[208], 0.001),
        _ => (&[], 0.0),
    };
    for b in bytes.chunks_exact_mut(format.block_bytes()) {
        for &at in f16s {
            let v = rng.random_range(0.2f32..1.0) * scale * if rng.random() { 1.0 } else { -1.0 };
            b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
        }
    }
    StoredRows::new(format, rows, k, bytes).unwrap()
}

fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn run(
    f: unsafe fn(&QMatrix, &QRows, std::ops::Range<usize>, std::ops::Range<usize>, *mut f32, usize),
    q: &QMatrix,
    x: &QRows,
) -> Vec<f32> {
    let ldo = q.n + 1;
    let mut out = vec![f32::NAN; x.m * ldo];
    // SAFETY: out is m x ldo and this call its only user.
    unsafe { f(q, x, 0..q.tiles(), 0..x.m, out.as_mut_ptr(), ldo) };
    for i in 0..x.m {
        assert!(out[i * ldo + q.n].is_nan(), "wrote past column n");
    }
    out
}

/// Every format's fast path gives the reference's bits, for row counts of every tail and
/// column counts that end inside a tile.
#[test]
fn fast_path_equals_the_reference_bit_for_bit() {
    for (f, format) in QUANTIZED.into_iter().enumerate() {
        let bs = format.block_size();
        for (n, k, m) in [(16, bs, 1), (37, 2 * bs, 5), (5, 3 * bs.max(64), 9)] {
            let rows = random_rows(format, n, k, 10 + f as u64);
            let q = QMatrix::new(&rows, k).unwrap();
            let x = QRows::new(Layout::of(format).unwrap().act, &activations(m, k, 3), m, k);
            let slow = run(portable, &q, &x);
            let mut paths = vec![("dispatched", run(gemm_tiles, &q, &x))];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                paths.push(("avx2", run(super::gemm::avx2::gemm_tiles, &q, &x)));
            }
            for (path, fast) in paths {
                for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{path} {format} ({n}, {k}, {m}) at {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// A row's outputs do not depend on the other rows computed with it.
#[test]
fn rows_do_not_depend_on_the_batch() {
    for format in QUANTIZED {
        let (n, k, m) = (40, 512, 7);
        let q = QMatrix::new(&random_rows(format, n, k, 1), k).unwrap();
        let xs = activations(m, k, 2);
        let x = QRows::new(Layout::of(format).unwrap().act, &xs, m, k);
        let all = run(gemm_tiles, &q, &x);
        for i in [0, 3, 6] {
            let one = QRows::new(
                Layout::of(format).unwrap().act,
                &xs[i * k..(i + 1) * k],
                1,
                k,
            );
            let got = run(gemm_tiles, &q, &one);
            for j in 0..n {
                assert_eq!(got[j].to_bits(), all[i * (n + 1) + j].to_bits(), "{format}");
            }
        }
    }
}

/// The result is the f32 product of the dequantized weights with `x`, up to the
/// activations' 8-bit rounding (and the packing keeps every value: rows read back).
#[test]
fn close_to_f32_math_on_the_same_weights() {
    for format in QUANTIZED {
        let (n, k, m) = (33, 512, 3);
        let q = QMatrix::new(&random_rows(format, n, k, 4), k).unwrap();
        let xs = activations(m, k, 5);
        let x = QRows::new(Layout::of(format).unwrap().act, &xs, m, k);
        let got = run(gemm_tiles, &q, &x);
        let mut w = vec![0.0f32; k];
        for j in 0..n {
            q.row_into(j, &mut w);
            let scale: f64 = w.iter().map(|v| v.abs() as f64).sum::<f64>() / k as f64;
            for i in 0..m {
                let want: f64 = (0..k).map(|p| w[p] as f64 * xs[i * k + p] as f64).sum();
                let g = got[i * (n + 1) + j] as f64;
                // Each activation moves by at most half a step of 1/127 of its block's
                // max (< 1): the error is about sqrt(k) · scale / 254.
                let tol = 3.0 * (k as f64).sqrt() * scale / 254.0 + 1e-4;
                assert!((g - want).abs() < tol, "{format} ({i},{j}): {g} vs {want}");
            }
        }
    }
}

#[test]
fn tiles_hold_every_code_and_scale() {
    for format in QUANTIZED {
        let k = format.block_size() * 2;
        let rows = random_rows(format, TILE + 3, k, 8);
        let q = QMatrix::new(&rows, k).unwrap();
        let layout = super::Layout::of(format).unwrap();
        let (mut c, mut d, mut m) = (vec![0; k], vec![0.0; k], vec![0.0; k]);
        for j in 0..TILE + 3 {
            super::blocks::decode_row(&layout, rows.row(j, k), k, &mut c, &mut d, &mut m);
            for (p, &code) in c.iter().enumerate() {
                assert_eq!(q.code(j, p), code, "{format} ({j},{p})");
            }
            for s in 0..k / layout.sub {
                let want = (d[s], if layout.has_min { m[s] } else { 0.0 });
                assert_eq!(q.scale(j, s), want);
            }
        }
    }
    let bad = StoredRows {
        format: WeightFormat::Q8_0,
        rows: 2,
        bytes: vec![0; 34 * 3],
    };
    let err = QMatrix::new(&bad, 32).err().unwrap().to_string();
    assert!(err.contains("102 bytes of Q8_0 for 2 rows of 32"), "{err}");
}
