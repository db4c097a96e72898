//! `kernels/hip/norm.hip` on the host: RMSNorm, the fused residual-add + RMSNorm, and
//! Qwen3's per-head q/k norm, with their conformance cases. `eps` travels as f32, dims
//! as i32, in the kernels' parameter order.

use crate::conformance::{poisoned, Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch, ATTN_WARPS};
use crate::gpu::{Device, GpuBackend, GpuBuf, Launch};
use crate::{shape, Backend, Result};

/// `rms_norm(out, x, w, dim, eps)`: one block per row.
pub(crate) fn rms_norm<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    weight: &GpuBuf<D>,
    rows: usize,
    dim: usize,
    eps: f32,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    b.check("rms_norm", "x", x, rows * dim)?;
    b.check("rms_norm", "weight", weight, dim)?;
    b.check("rms_norm", "out", out, rows * dim)?;
    launch!(
        b,
        "rms_norm",
        grid1(rows),
        out.ptr,
        x.ptr,
        weight.ptr,
        dim as i32,
        eps
    )
}

/// `add_rms_norm(residual, x, w, out, dim, eps)`: one block per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_rms_norm<D: Device>(
    b: &GpuBackend<D>,
    residual: &mut GpuBuf<D>,
    x: &GpuBuf<D>,
    weight: &GpuBuf<D>,
    rows: usize,
    dim: usize,
    eps: f32,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    b.check("add_rms_norm", "residual", residual, rows * dim)?;
    b.check("add_rms_norm", "weight", weight, dim)?;
    b.check("add_rms_norm", "x", x, rows * dim)?;
    b.check("add_rms_norm", "out", out, rows * dim)?;
    launch!(
        b,
        "add_rms_norm",
        grid1(rows),
        residual.ptr,
        x.ptr,
        weight.ptr,
        out.ptr,
        dim as i32,
        eps
    )
}

/// `head_rms_norm(x, w, rows, row_stride, col_offset, num_heads, head_dim, eps)`: one
/// warp per (row, head), `ATTN_WARPS` warps per block.
#[allow(clippy::too_many_arguments)]
pub(crate) fn head_rms_norm<D: Device>(
    b: &GpuBackend<D>,
    x: &mut GpuBuf<D>,
    rows: usize,
    row_stride: usize,
    col_offset: usize,
    num_heads: usize,
    head_dim: usize,
    weight: &GpuBuf<D>,
    eps: f32,
) -> Result<()> {
    shape::heads_in_row("head_rms_norm", row_stride, col_offset, num_heads, head_dim)?;
    b.check("head_rms_norm", "x", x, rows * row_stride)?;
    b.check("head_rms_norm", "weight", weight, head_dim)?;
    let items = rows * num_heads;
    let cfg = Launch {
        grid: (items.div_ceil(ATTN_WARPS as usize) as u32, 1, 1),
        block: (ATTN_WARPS * b.dev.info().warp, 1, 1),
        shared: 0,
    };
    launch!(
        b,
        "head_rms_norm",
        cfg,
        x.ptr,
        weight.ptr,
        rows as i32,
        row_stride as i32,
        col_offset as i32,
        num_heads as i32,
        head_dim as i32,
        eps
    )
}

/// The cases of this file's ops.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    rms_norm_cases(g, v)?;
    add_rms_norm_cases(g, v)?;
    head_rms_norm_cases(g, v)
}

const EPS: f32 = 1e-6;

/// One row of a tiny model, a few rows of an 8B model, and a batch of Qwen2-0.5B rows.
const NORM_SHAPES: [(usize, usize); 3] = [(1, 64), (5, 4096), (33, 896)];

struct RmsNorm {
    rows: usize,
    dim: usize,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case for RmsNorm {
    fn op(&self) -> String {
        "rms_norm".into()
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.dim)
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = poisoned(b, self.rows * self.dim)?;
        let (x, w) = (b.upload(&self.x)?, b.upload(&self.w)?);
        b.rms_norm(&x, &w, self.rows, self.dim, EPS, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

fn rms_norm_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for (rows, dim) in NORM_SHAPES {
        v.case(RmsNorm {
            rows,
            dim,
            x: g.rand(rows * dim, 2.0),
            w: g.rand(dim, 1.0),
        })?;
    }
    Ok(())
}

struct AddRmsNorm {
    rows: usize,
    dim: usize,
    residual: Vec<f32>,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case for AddRmsNorm {
    fn op(&self) -> String {
        "add_rms_norm".into()
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.dim)
    }
    /// The normed output, and the residual the op updates in place.
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = poisoned(b, self.rows * self.dim)?;
        let mut r = b.upload(&self.residual)?;
        let (x, w) = (b.upload(&self.x)?, b.upload(&self.w)?);
        b.add_rms_norm(&mut r, &x, &w, self.rows, self.dim, EPS, &mut out)?;
        Ok(vec![("", b.download(&out)?), ("residual", b.download(&r)?)])
    }
}

fn add_rms_norm_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for (rows, dim) in NORM_SHAPES {
        v.case(AddRmsNorm {
            rows,
            dim,
            residual: g.rand(rows * dim, 2.0),
            x: g.rand(rows * dim, 2.0),
            w: g.rand(dim, 1.0),
        })?;
    }
    Ok(())
}

struct HeadRmsNorm {
    head_dim: usize,
    heads: usize,
    rows: usize,
    stride: usize,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case for HeadRmsNorm {
    fn op(&self) -> String {
        "head_rms_norm".into()
    }
    fn shape(&self) -> String {
        format!("hd{}", self.head_dim)
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut x = b.upload(&self.x)?;
        let w = b.upload(&self.w)?;
        let (hd, heads) = (self.head_dim, self.heads);
        b.head_rms_norm(&mut x, self.rows, self.stride, 0, heads, hd, &w, EPS)?;
        Ok(vec![("", b.download(&x)?)])
    }
}

/// The q heads of 5 packed `[q | k | v]` rows (8 q heads, 2 kv heads), as Qwen3 norms them.
fn head_rms_norm_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for hd in [64, 128] {
        let (heads, kv_heads, rows) = (8, 2, 5);
        let stride = (heads + 2 * kv_heads) * hd;
        v.case(HeadRmsNorm {
            head_dim: hd,
            heads,
            rows,
            stride,
            x: g.rand(rows * stride, 1.0),
            w: g.rand(hd, 1.0),
        })?;
    }
    Ok(())
}
