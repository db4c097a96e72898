//! The GPU ops, one file per kernel source (`kernels/hip/<file>.hip` ↔ `<file>.rs`, plus
//! `matmul.rs` for the vendor GEMM): each file holds the host side of its kernels
//! (checks, grid, the argument list and any `#[repr(C)]` args struct the C code reads)
//! and the op's conformance cases. An op is registered in the table below, once.

pub(super) mod attention;
pub(super) mod cache;
pub(super) mod elementwise;
pub(super) mod matmul;
pub(super) mod norm;
pub(super) mod rope;
pub(super) mod sampling;

use crate::conformance::{Gen, Visit};
use crate::Result;

/// The conformance table: every op's cases, in the order results are printed.
pub(crate) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    elementwise::embedding_cases(g, v)?;
    norm::rms_norm_cases(g, v)?;
    norm::add_rms_norm_cases(g, v)?;
    elementwise::add_inplace_cases(g, v)?;
    matmul::cases(g, v)?;
    elementwise::silu_and_mul_cases(g, v)?;
    rope::cases(g, v)?;
    norm::head_rms_norm_cases(g, v)?;
    cache::cases(g, v)?;
    attention::cases(g, v)?;
    elementwise::gather_rows_cases(g, v)?;
    sampling::cases(g, v)?;
    Ok(())
}
