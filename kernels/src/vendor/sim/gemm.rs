//! The simulated device's GEMM: the column-major BLAS call the vendors make
//! ([`BlasGemm`], from `Gemm::column_major`), executed on the host as a vendor GEMM
//! computes it: inputs read in their storage type, products accumulated in f32, the
//! result rounded once to the storage type.

use crate::gpu::BlasGemm;
use crate::{Dtype, Result};

/// Column-major `c = op(a) · op(b)` in `dtype` (f32 accumulation).
///
/// # Safety
/// The addresses must be live host allocations covering the matrices as described.
pub(super) unsafe fn gemm(dtype: Dtype, g: BlasGemm) -> Result<()> {
    let BlasGemm {
        trans_a,
        trans_b,
        m,
        n,
        k,
        lda,
        ldb,
        ldc,
        ..
    } = g;
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Strides (row, column) of op(a) [m, k], op(b) [k, n] and c [m, n].
    let (rsa, csa) = if trans_a { (lda, 1) } else { (1, lda) };
    let (rsb, csb) = if trans_b { (ldb, 1) } else { (1, ldb) };
    let extent = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    let (na, nb, nc) = (
        extent(m, k, rsa, csa),
        extent(k, n, rsb, csb),
        extent(m, n, 1, ldc),
    );
    let read = |addr: u64, len: usize| -> Vec<f32> {
        // SAFETY: the caller's contract: `len` values of `dtype` at `addr`.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, dtype.bytes(len)) };
        dtype.from_bytes(bytes, len)
    };
    let (a, b) = (read(g.a, na), read(g.b, nb));
    let mut c = vec![0f32; nc];
    if k > 0 {
        // SAFETY: the three vectors cover the extents computed from the same strides.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                0.0,
                c.as_mut_ptr(),
                1,
                ldc as isize,
            );
        }
    }
    // Write back only the m x n elements (columns may have gaps when ldc > m).
    let size = dtype.size();
    for j in 0..n {
        let col = &c[j * ldc..j * ldc + m];
        let bytes = dtype.to_bytes(col);
        // SAFETY: column j of c lies at g.c + j * ldc elements, m elements long.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (g.c as *mut u8).add(j * ldc * size),
                bytes.len(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Gemm;

    /// The vendors' mapping of a row-major `x · wᵀ`, executed column-major, gives what
    /// the row-major definition gives, in f32 and rounded to bf16.
    #[test]
    fn the_vendor_mapping_computes_x_times_w_transposed() {
        let (m, n, k) = (3, 5, 4);
        let x: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.25 - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect();
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|l| x[i * k + l] * w[j * k + l]).sum();
            }
        }
        for dtype in [Dtype::F32, Dtype::Bf16] {
            let (xb, wb) = (dtype.to_bytes(&x), dtype.to_bytes(&w));
            let mut out = vec![0u8; dtype.bytes(m * n)];
            let g = Gemm {
                m,
                n,
                k,
                x: xb.as_ptr() as u64,
                w: wb.as_ptr() as u64,
                out: out.as_mut_ptr() as u64,
            };
            // SAFETY: the three host buffers hold the matrices.
            unsafe { gemm(dtype, g.column_major()).unwrap() };
            let got = dtype.from_bytes(&out, m * n);
            let want = dtype.round(&want);
            assert_eq!(got, want, "{dtype:?}");
        }
    }
}
