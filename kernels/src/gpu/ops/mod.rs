//! The GPU ops, one file per kernel source (`kernels/hip/<file>.hip` ↔ `<file>.rs`, plus
//! `matmul.rs` for the vendor GEMM): each file holds the host side of its kernels
//! (checks, grid, the argument list and any `#[repr(C)]` args struct the C code reads)
//! and the conformance cases of its ops, listed in its `cases`; the table below lists
//! the files.

pub(super) mod attention;
pub(super) mod cache;
pub(super) mod elementwise;
pub(super) mod latent;
pub(super) mod matmul;
pub(super) mod moe;
pub(super) mod norm;
pub(super) mod rope;
pub(super) mod sampling;

use crate::conformance::{Gen, Visit};
use crate::Result;

/// The conformance table: each kernel file's cases (an op added to a file is listed in
/// that file's `cases`), in the order results are printed.
pub(crate) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    elementwise::cases(g, v)?;
    norm::cases(g, v)?;
    matmul::cases(g, v)?;
    rope::cases(g, v)?;
    cache::cases(g, v)?;
    attention::cases(g, v)?;
    latent::cases(g, v)?;
    moe::cases(g, v)?;
    sampling::cases(g, v)
}

/// Adds `s` to `shapes` unless it is there already (a drawn shape that repeats a named
/// one would repeat its check's name).
pub(super) fn push_new<T: PartialEq>(shapes: &mut Vec<T>, s: T) {
    if !shapes.contains(&s) {
        shapes.push(s);
    }
}

/// `(rows, head_dim, group, kv heads)` layouts of packed `[q | k | v]` rows for the
/// per-head ops (rope, the q/k norm): the named ones, then two drawn at random over every
/// head size and GQA groups 1 to 8.
pub(super) fn head_layouts(
    g: &mut Gen,
    mut shapes: Vec<(usize, usize, usize, usize)>,
) -> Vec<(usize, usize, usize, usize)> {
    for _ in 0..2 {
        let s = (
            g.range(1, 9),
            g.pick(&[64, 80, 96, 128, 256]),
            g.range(1, 8),
            g.range(1, 4),
        );
        push_new(&mut shapes, s);
    }
    shapes
}
