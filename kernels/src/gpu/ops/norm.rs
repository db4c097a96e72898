//! `kernels/hip/norm.hip` on the host: RMSNorm, the fused residual-add + RMSNorm, and
//! Qwen3's per-head q/k norm, with their conformance cases. `eps` travels as f32, dims
//! as i32, in the kernels' parameter order.

use super::push_new;
use crate::conformance::{output, Case, Gen, Visit};
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

/// `rows x dim`: no rows; widths that are not a multiple of the block or the warp (1,
/// 7, 33, 4097) and rows that fill no block; one row of a tiny model, a few rows of an
/// 8B model, a batch of Qwen2-0.5B rows; then `RANDOM_NORMS` random shapes.
const NORM_SHAPES: [(usize, usize); 8] = [
    (0, 64),
    (1, 1),
    (3, 7),
    (2, 33),
    (2, 4097),
    (1, 64),
    (5, 4096),
    (33, 896),
];
const RANDOM_NORMS: usize = 2;

fn norm_shapes(g: &mut Gen) -> Vec<(usize, usize)> {
    let mut shapes = NORM_SHAPES.to_vec();
    for _ in 0..RANDOM_NORMS {
        let s = (g.range(1, 16), g.range(1, 5000));
        push_new(&mut shapes, s);
    }
    shapes
}

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
    fn empty_input(&self) -> bool {
        self.rows == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = output(b, self.rows * self.dim)?;
        let (x, w) = (b.upload(&self.x)?, b.upload(&self.w)?);
        b.rms_norm(&x, &w, self.rows, self.dim, EPS, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

fn rms_norm_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for (rows, dim) in norm_shapes(g) {
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
    fn empty_input(&self) -> bool {
        self.rows == 0
    }
    /// The normed output, and the residual the op updates in place.
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = output(b, self.rows * self.dim)?;
        let mut r = b.upload(&self.residual)?;
        let (x, w) = (b.upload(&self.x)?, b.upload(&self.w)?);
        b.add_rms_norm(&mut r, &x, &w, self.rows, self.dim, EPS, &mut out)?;
        Ok(vec![("", b.download(&out)?), ("residual", b.download(&r)?)])
    }
}

/// The residual holds at least one row: over no rows, it must come back as it was.
fn add_rms_norm_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for (rows, dim) in norm_shapes(g) {
        v.case(AddRmsNorm {
            rows,
            dim,
            residual: g.rand(rows.max(1) * dim, 2.0),
            x: g.rand(rows * dim, 2.0),
            w: g.rand(dim, 1.0),
        })?;
    }
    Ok(())
}

struct HeadRmsNorm {
    head_dim: usize,
    /// The heads normed (q heads, or the kv heads of the k section).
    heads: usize,
    col_offset: usize,
    rows: usize,
    stride: usize,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case for HeadRmsNorm {
    fn op(&self) -> String {
        let section = if self.col_offset == 0 { "q" } else { "k" };
        format!("head_rms_norm {section}")
    }
    fn shape(&self) -> String {
        let (hd, stride) = (self.head_dim, self.stride);
        format!("{}x{}h hd{hd} stride{stride}", self.rows, self.heads)
    }
    fn empty_input(&self) -> bool {
        self.rows == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut x = b.upload(&self.x)?;
        let w = b.upload(&self.w)?;
        let (hd, heads, off) = (self.head_dim, self.heads, self.col_offset);
        b.head_rms_norm(&mut x, self.rows, self.stride, off, heads, hd, &w, EPS)?;
        Ok(vec![("", b.download(&x)?)])
    }
}

/// Packed `[q | k | v]` rows as Qwen3 norms them, q heads then k heads, at every head
/// size (64, 80, 96, 128, 256) with GQA groups 1 to 8 (q heads = group x kv heads, so
/// the item count is not a multiple of the block's warps), over 0 rows (x holds one
/// row, which must come back as it was), 1 row and a few; then random shapes.
fn head_rms_norm_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    // (rows, head_dim, group, kv heads)
    let shapes = vec![
        (0, 128, 4, 2),
        (5, 64, 4, 2),
        (1, 80, 3, 1),
        (3, 96, 2, 2),
        (5, 128, 8, 1),
        (2, 256, 1, 2),
        (4, 64, 8, 2),
    ];
    let shapes = super::head_layouts(g, shapes);
    for (rows, hd, group, kv_heads) in shapes {
        let heads = group * kv_heads;
        let stride = (heads + 2 * kv_heads) * hd;
        for (col_offset, n) in [(0, heads), (heads * hd, kv_heads)] {
            v.case(HeadRmsNorm {
                head_dim: hd,
                heads: n,
                col_offset,
                rows,
                stride,
                x: g.rand(rows.max(1) * stride, 1.0),
                w: g.rand(hd, 1.0),
            })?;
        }
    }
    Ok(())
}
