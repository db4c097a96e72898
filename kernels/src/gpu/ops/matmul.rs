//! The matmul on the host: the vendor BLAS GEMM (`Device::gemm_bt`: rocBLAS / cuBLAS,
//! f32 accumulation) in the backend's dtype, then `add_bias` from
//! `kernels/hip/elementwise.hip` when the layer has a bias. No kernel source of its own:
//! the vendor GEMMs beat anything we would write for these shapes.

use crate::conformance::{output, Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch};
use crate::gpu::{Device, Gemm, GpuBackend, GpuBuf};
use crate::{Backend, Result};

/// `out = x · wᵀ (+ bias)`, then `add_bias(out, bias, n)` with one block per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    w: &GpuBuf<D>,
    bias: Option<&GpuBuf<D>>,
    m: usize,
    k: usize,
    n: usize,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    b.check("matmul", "x", x, m * k)?;
    b.check("matmul", "w", w, n * k)?;
    b.check("matmul", "out", out, m * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: live allocations of the checked sizes.
    unsafe {
        b.dispatch_gemm(
            b.dtype,
            Gemm {
                m,
                n,
                k,
                x: x.ptr,
                w: w.ptr,
                out: out.ptr,
            },
        )?
    };
    if let Some(bias) = bias {
        b.check("matmul", "bias", bias, n)?;
        launch!(b, "add_bias", grid1(m), out.ptr, bias.ptr, n as i32)?;
    }
    Ok(())
}

struct Matmul {
    m: usize,
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Case for Matmul {
    fn op(&self) -> String {
        "matmul".into()
    }
    fn shape(&self) -> String {
        let bias = if self.bias.is_some() { "+bias" } else { "" };
        format!("{}x{}x{}{bias}", self.m, self.k, self.n)
    }
    fn empty_input(&self) -> bool {
        self.m == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = output(b, self.m * self.n)?;
        let x = b.upload(&self.x)?;
        let w = b.upload_weight(&self.w, 1, self.n, self.k)?;
        let bias = self.bias.as_deref().map(|v| b.upload(v)).transpose()?;
        b.matmul(&x, &w, bias.as_ref(), self.m, self.k, self.n, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// `m x k x n`: no rows (with a bias: nothing is added either); odd sizes (1, 7, 33,
/// 4097) in every position, with and without a bias whose width is not a multiple of the
/// block; a tiny GEMM, a prefill chunk of an 8B attention projection, Qwen2-style biased
/// projections, and a decode row through an 8B MLP; then random shapes.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let mut shapes = vec![
        (0, 64, 96, true),
        (1, 1, 1, false),
        (1, 1, 1, true),
        (7, 33, 7, true),
        (33, 7, 4097, true),
        (3, 4097, 33, false),
        (1, 64, 96, false),
        (7, 4096, 4096, false),
        (33, 896, 1000, true),
        (1, 4096, 14336, false),
    ];
    for _ in 0..3 {
        let s = (
            g.range(1, 40),
            g.range(1, 600),
            g.range(1, 600),
            g.range(0, 1) == 1,
        );
        super::push_new(&mut shapes, s);
    }
    for (m, k, n, bias) in shapes {
        let (x, w, b) = (g.rand(m * k, 1.0), g.rand(n * k, 0.05), g.rand(n, 1.0));
        v.case(Matmul {
            m,
            k,
            n,
            x,
            w,
            bias: bias.then_some(b),
        })?;
    }
    Ok(())
}
