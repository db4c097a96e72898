//! `kernels/hip/elementwise.hip` on the host: embedding gather, residual add,
//! SiLU-and-mul and row gather (its `to_f32` serves `sampling.rs`, its `add_bias`
//! serves `matmul.rs`), with their conformance cases. One block per row unless noted;
//! indices are checked here, as the kernels trust them.

use crate::conformance::{poisoned, Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch, stride_grid};
use crate::gpu::{Device, GpuBackend, GpuBuf};
use crate::{Backend, Error, Result};

/// `embedding(out, table, ids, hidden)`.
pub(crate) fn embedding<D: Device>(
    b: &GpuBackend<D>,
    table: &GpuBuf<D>,
    vocab: usize,
    hidden: usize,
    ids: &[u32],
    out: &mut GpuBuf<D>,
) -> Result<()> {
    b.check("embedding", "table", table, vocab * hidden)?;
    b.check("embedding", "out", out, ids.len() * hidden)?;
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::OutOfRange {
            op: "embedding",
            index: bad as usize,
            limit: vocab,
        });
    }
    let ids_d = b.u32s(ids)?;
    launch!(
        b,
        "embedding",
        grid1(ids.len()),
        out.ptr,
        table.ptr,
        b.dev.ptr(&ids_d),
        hidden as i32
    )
}

/// `add_inplace(residual, x, n)`: a grid-stride loop.
pub(crate) fn add_inplace<D: Device>(
    b: &GpuBackend<D>,
    residual: &mut GpuBuf<D>,
    x: &GpuBuf<D>,
    len: usize,
) -> Result<()> {
    b.check("add_inplace", "residual", residual, len)?;
    b.check("add_inplace", "x", x, len)?;
    launch!(
        b,
        "add_inplace",
        stride_grid(len),
        residual.ptr,
        x.ptr,
        len as i64
    )
}

/// `silu_and_mul(out, x, inter)`.
pub(crate) fn silu_and_mul<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    rows: usize,
    inter: usize,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    b.check("silu_and_mul", "x", x, rows * 2 * inter)?;
    b.check("silu_and_mul", "out", out, rows * inter)?;
    launch!(b, "silu_and_mul", grid1(rows), out.ptr, x.ptr, inter as i32)
}

/// `gather_rows(out, x, indices, dim)`.
pub(crate) fn gather_rows<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    dim: usize,
    indices: &[usize],
    out: &mut GpuBuf<D>,
) -> Result<()> {
    b.check_dtype("gather_rows", "x", x)?;
    b.check("gather_rows", "out", out, indices.len() * dim)?;
    let rows = x.len / dim.max(1);
    if let Some(&bad) = indices.iter().find(|&&i| i >= rows) {
        return Err(Error::OutOfRange {
            op: "gather_rows",
            index: bad,
            limit: rows,
        });
    }
    let idx = b.u32s(&indices.iter().map(|&i| i as u32).collect::<Vec<_>>())?;
    launch!(
        b,
        "gather_rows",
        grid1(indices.len()),
        out.ptr,
        x.ptr,
        b.dev.ptr(&idx),
        dim as i32
    )
}

/// The cases of this file's ops.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    embedding_cases(g, v)?;
    add_inplace_cases(g, v)?;
    silu_and_mul_cases(g, v)?;
    gather_rows_cases(g, v)
}

struct Embedding {
    vocab: usize,
    hidden: usize,
    table: Vec<f32>,
    ids: Vec<u32>,
}

impl Case for Embedding {
    fn op(&self) -> String {
        "embedding".into()
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.vocab, self.hidden)
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = poisoned(b, self.ids.len() * self.hidden)?;
        let table = b.upload(&self.table)?;
        b.embedding(&table, self.vocab, self.hidden, &self.ids, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// A small table, and the Llama-2 vocabulary at 4096 wide.
fn embedding_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for (vocab, hidden) in [(1000, 64), (32000, 4096)] {
        v.case(Embedding {
            vocab,
            hidden,
            table: g.rand(vocab * hidden, 1.0),
            ids: (0..7).map(|i| (i * 7919 % vocab) as u32).collect(),
        })?;
    }
    Ok(())
}

struct AddInplace {
    residual: Vec<f32>,
    x: Vec<f32>,
}

impl Case for AddInplace {
    fn op(&self) -> String {
        "add_inplace".into()
    }
    fn shape(&self) -> String {
        self.x.len().to_string()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut r = b.upload(&self.residual)?;
        b.add_inplace(&mut r, &b.upload(&self.x)?, self.x.len())?;
        Ok(vec![("", b.download(&r)?)])
    }
}

/// One value, and more values than one grid-stride pass covers (65535 blocks x 256).
fn add_inplace_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for len in [1, 65535 * 256 + 3] {
        v.case(AddInplace {
            residual: g.rand(len, 2.0),
            x: g.rand(len, 2.0),
        })?;
    }
    Ok(())
}

struct SiluAndMul {
    rows: usize,
    inter: usize,
    x: Vec<f32>,
}

impl Case for SiluAndMul {
    fn op(&self) -> String {
        "silu_and_mul".into()
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.inter)
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = poisoned(b, self.rows * self.inter)?;
        b.silu_and_mul(&b.upload(&self.x)?, self.rows, self.inter, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// One small row, and Llama-3-8B's MLP width.
fn silu_and_mul_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    for (rows, inter) in [(1, 128), (9, 14336)] {
        v.case(SiluAndMul {
            rows,
            inter,
            x: g.rand(rows * 2 * inter, 3.0),
        })?;
    }
    Ok(())
}

struct GatherRows {
    dim: usize,
    x: Vec<f32>,
    indices: Vec<usize>,
}

impl Case for GatherRows {
    fn op(&self) -> String {
        "gather_rows".into()
    }
    fn shape(&self) -> String {
        String::new()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = poisoned(b, self.indices.len() * self.dim)?;
        b.gather_rows(&b.upload(&self.x)?, self.dim, &self.indices, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// The last, first and a middle row, out of order (the LM head's gather).
fn gather_rows_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    v.case(GatherRows {
        dim: 64,
        x: g.rand(40 * 64, 1.0),
        indices: vec![39, 0, 7],
    })
}
