//! `kernels/hip/rope.hip` on the host: rotary embedding in place (neox halves) from a
//! host-built `[max_positions, head_dim]` cos|sin table, with its conformance cases.
//! Positions are checked against the table here, as the kernel trusts them.

use crate::conformance::{Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch};
use crate::gpu::{Device, GpuBackend, GpuBuf};
use crate::{shape, Backend, Error, Result};

/// `rope(x, positions, cos_sin, row_stride, col_offset, num_heads, head_dim, rotary_dim)`:
/// one block per token; positions go through the per-step upload cache (every layer
/// reuses them).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope<D: Device>(
    b: &GpuBackend<D>,
    x: &mut GpuBuf<D>,
    row_stride: usize,
    col_offset: usize,
    num_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
    positions: &[u32],
    cos_sin: &GpuBuf<D>,
) -> Result<()> {
    shape::rope_shape(row_stride, col_offset, num_heads, head_dim, rotary_dim)?;
    b.check("rope", "x", x, positions.len() * row_stride)?;
    b.check_dtype("rope", "cos_sin", cos_sin)?;
    let max_pos = cos_sin.len / rotary_dim.max(1);
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
        head_dim as i32,
        rotary_dim as i32
    )
}

struct Rope {
    head_dim: usize,
    /// The rotated part of each head (`head_dim` unless partial).
    rotary_dim: usize,
    /// The heads rotated, from `col_offset` (the q heads, or the kv heads of the k section).
    heads: usize,
    col_offset: usize,
    stride: usize,
    x: Vec<f32>,
    cos_sin: Vec<f32>,
    positions: Vec<u32>,
}

impl Case for Rope {
    fn op(&self) -> String {
        let section = if self.col_offset == 0 { "q" } else { "k" };
        format!("rope {section}")
    }
    fn shape(&self) -> String {
        let (n, hd, stride) = (self.positions.len(), self.head_dim, self.stride);
        let partial = if self.rotary_dim == hd {
            String::new()
        } else {
            format!(" rot{}", self.rotary_dim)
        };
        format!("{n}x{}h hd{hd}{partial} stride{stride}", self.heads)
    }
    fn empty_input(&self) -> bool {
        self.positions.is_empty()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut x = b.upload(&self.x)?;
        let cs = b.upload(&self.cos_sin)?;
        b.rope(
            &mut x,
            self.stride,
            self.col_offset,
            self.heads,
            self.head_dim,
            self.rotary_dim,
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

/// The q and the k sections of packed `[q | k | v]` rows, at every head size (64, 80,
/// 96, 128, 256) with GQA groups 1 to 8 (q heads = group x kv heads): no tokens (x holds
/// one row, which must come back as it was), one token, and a few whose positions run
/// from 0 to the table's last; then random shapes.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    // (tokens, head_dim, group, kv heads)
    let shapes = vec![
        (0, 128, 4, 2),
        (5, 64, 4, 2),
        (1, 80, 2, 2),
        (6, 96, 3, 1),
        (5, 128, 8, 1),
        (3, 256, 1, 2),
        (4, 64, 8, 2),
    ];
    let shapes = super::head_layouts(g, shapes);
    let max_pos = 64;
    for (tokens, hd, group, kv_heads) in shapes {
        let heads = group * kv_heads;
        let stride = (heads + 2 * kv_heads) * hd;
        let mut positions: Vec<u32> = (0..tokens)
            .map(|_| g.range(0, max_pos - 1) as u32)
            .collect();
        if tokens >= 2 {
            positions[0] = 0;
            positions[tokens - 1] = max_pos as u32 - 1;
        }
        // Full rotary, and (from 64-wide heads) MiniMax-M2's half-width partial rotary.
        for rot in [hd, hd / 2] {
            if rot != hd && (hd < 64 || tokens == 0) {
                continue;
            }
            let table = g.round(&cos_sin(max_pos, rot));
            for (col_offset, n) in [(0, heads), (heads * hd, kv_heads)] {
                v.case(Rope {
                    head_dim: hd,
                    rotary_dim: rot,
                    heads: n,
                    col_offset,
                    stride,
                    x: g.rand(tokens.max(1) * stride, 1.0),
                    cos_sin: table.clone(),
                    positions: positions.clone(),
                })?;
            }
        }
    }
    Ok(())
}
