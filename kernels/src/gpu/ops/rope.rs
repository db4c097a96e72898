//! `kernels/hip/rope.hip` on the host: rotary embedding in place (neox halves) from a
//! host-built `[max_positions, head_dim]` cos|sin table, with its conformance cases.
//! Positions are checked against the table here, as the kernel trusts them.

use crate::conformance::{Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch};
use crate::gpu::{Device, GpuBackend, GpuBuf};
use crate::{shape, Backend, Error, Result};

/// `rope(x, positions, cos_sin, row_stride, col_offset, num_heads, head_dim)`: one block
/// per token; positions go through the per-step upload cache (every layer reuses them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope<D: Device>(
    b: &GpuBackend<D>,
    x: &mut GpuBuf<D>,
    row_stride: usize,
    col_offset: usize,
    num_heads: usize,
    head_dim: usize,
    positions: &[u32],
    cos_sin: &GpuBuf<D>,
) -> Result<()> {
    shape::rope_shape(row_stride, col_offset, num_heads, head_dim)?;
    b.check("rope", "x", x, positions.len() * row_stride)?;
    b.check_dtype("rope", "cos_sin", cos_sin)?;
    let max_pos = cos_sin.len / head_dim.max(1);
    if let Some(&p) = positions.iter().find(|&&p| p as usize >= max_pos) {
        return Err(Error::OutOfRange {
            op: "rope",
            index: p as usize,
            limit: max_pos,
        });
    }
    let pos = b.cached_u32s(&b.positions, positions)?;
    launch!(
        b,
        "rope",
        grid1(positions.len()),
        x.ptr,
        pos,
        cos_sin.ptr,
        row_stride as i32,
        col_offset as i32,
        num_heads as i32,
        head_dim as i32
    )
}

struct Rope {
    head_dim: usize,
    heads: usize,
    kv_heads: usize,
    stride: usize,
    x: Vec<f32>,
    cos_sin: Vec<f32>,
    positions: Vec<u32>,
}

impl Case for Rope {
    fn op(&self) -> String {
        "rope".into()
    }
    fn shape(&self) -> String {
        format!("hd{}", self.head_dim)
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut x = b.upload(&self.x)?;
        let cs = b.upload(&self.cos_sin)?;
        let (hd, k_offset) = (self.head_dim, self.heads * self.head_dim);
        b.rope(
            &mut x,
            self.stride,
            k_offset,
            self.kv_heads,
            hd,
            &self.positions,
            &cs,
        )?;
        Ok(vec![("", b.download(&x)?)])
    }
}

/// The default (theta 10000) table for `max_pos` positions.
fn cos_sin(max_pos: usize, hd: usize) -> Vec<f32> {
    (0..max_pos * hd)
        .map(|i| {
            let (p, j) = ((i / hd) as f32, (i % hd) % (hd / 2));
            let a = p / 10000f32.powf(2.0 * j as f32 / hd as f32);
            if (i % hd) < hd / 2 {
                a.cos()
            } else {
                a.sin()
            }
        })
        .collect()
}

/// The k section of 5 packed `[q | k | v]` rows (8 q heads, 2 kv heads), positions up
/// to the table's last.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for hd in [64, 128] {
        let (heads, kv_heads, rows, max_pos) = (8, 2, 5, 64);
        let stride = (heads + 2 * kv_heads) * hd;
        v.case(Rope {
            head_dim: hd,
            heads,
            kv_heads,
            stride,
            x: g.rand(rows * stride, 1.0),
            cos_sin: g.round(&cos_sin(max_pos, hd)),
            positions: vec![0, 3, 17, 40, 63],
        })?;
    }
    Ok(())
}
