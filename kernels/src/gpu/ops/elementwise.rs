//! `kernels/hip/elementwise.hip` on the host: embedding gather, residual add,
//! SiLU-and-mul and row gather (its `to_f32` serves `sampling.rs`, its `add_bias`
//! serves `matmul.rs`), with their conformance cases. One block per row unless noted;
//! indices are checked here, as the kernels trust them.

use super::push_new;
use crate::conformance::{output, Case, Gen, Visit};
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
    let ids_d = b.cached_u32s(&b.ids, ids)?;
    launch!(
        b,
        "embedding",
        grid1(ids.len()),
        out.ptr,
        table.ptr,
        ids_d,
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
    let idx = b.cached_u32s(
        &b.gather,
        &indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
    )?;
    launch!(
        b,
        "gather_rows",
        grid1(indices.len()),
        out.ptr,
        x.ptr,
        idx,
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
        format!("{}x{}x{}", self.ids.len(), self.vocab, self.hidden)
    }
    fn empty_input(&self) -> bool {
        self.ids.is_empty()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = output(b, self.ids.len() * self.hidden)?;
        let table = b.upload_weight(&self.table, 1, self.vocab, self.hidden)?;
        b.embedding(&table, self.vocab, self.hidden, &self.ids, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// `ids x vocab x hidden`: no ids; a small table at widths that are not a multiple of
/// the block (1, 7, 33, 4097); the Llama-2 vocabulary at 4096 wide; and random shapes.
/// Ids include the first and last rows and repeats.
fn embedding_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let mut shapes = vec![
        (0, 16, 64),
        (7, 1000, 64),
        (5, 50, 1),
        (5, 50, 7),
        (5, 50, 33),
        (3, 20, 4097),
        (7, 32000, 4096),
    ];
    for _ in 0..2 {
        let s = (g.range(1, 9), g.range(1, 300), g.range(1, 700));
        push_new(&mut shapes, s);
    }
    for (n, vocab, hidden) in shapes {
        let mut ids: Vec<u32> = (0..n).map(|i| (i * 7919 % vocab) as u32).collect();
        if n >= 3 {
            ids[1] = (vocab - 1) as u32;
            ids[2] = ids[0];
        }
        v.case(Embedding {
            vocab,
            hidden,
            table: g.rand(vocab * hidden, 1.0),
            ids,
        })?;
    }
    Ok(())
}

struct AddInplace {
    len: usize,
    residual: Vec<f32>,
    x: Vec<f32>,
}

impl Case for AddInplace {
    fn op(&self) -> String {
        "add_inplace".into()
    }
    fn shape(&self) -> String {
        self.len.to_string()
    }
    fn empty_input(&self) -> bool {
        self.len == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut r = b.upload(&self.residual)?;
        b.add_inplace(&mut r, &b.upload(&self.x)?, self.len)?;
        Ok(vec![("", b.download(&r)?)])
    }
}

/// No values (over buffers that hold some), odd lengths (1, 7, 33, 4097), more values
/// than one grid-stride pass covers (65535 blocks x 256), and random lengths.
fn add_inplace_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let mut lens = vec![0, 1, 7, 33, 4097, 65535 * 256 + 3];
    for _ in 0..2 {
        let n = g.range(2, 20000);
        push_new(&mut lens, n);
    }
    for len in lens {
        let held = len.max(5);
        v.case(AddInplace {
            len,
            residual: g.rand(held, 2.0),
            x: g.rand(held, 2.0),
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
    fn empty_input(&self) -> bool {
        self.rows == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = output(b, self.rows * self.inter)?;
        b.silu_and_mul(&b.upload(&self.x)?, self.rows, self.inter, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// `rows x inter`: no rows, odd widths (1, 7, 33, 4097), one small row, Llama-3-8B's MLP
/// width, and random shapes.
fn silu_and_mul_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let mut shapes = vec![
        (0, 128),
        (3, 1),
        (2, 7),
        (5, 33),
        (2, 4097),
        (1, 128),
        (9, 14336),
    ];
    for _ in 0..2 {
        let s = (g.range(1, 12), g.range(1, 3000));
        push_new(&mut shapes, s);
    }
    for (rows, inter) in shapes {
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
        let rows = self.x.len() / self.dim;
        format!("{}of{}x{}", self.indices.len(), rows, self.dim)
    }
    fn empty_input(&self) -> bool {
        self.indices.is_empty()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = output(b, self.indices.len() * self.dim)?;
        b.gather_rows(&b.upload(&self.x)?, self.dim, &self.indices, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// The LM head's gather: no rows, then the last, first and a middle row out of order
/// (and a repeat), at widths 64, 1, 7, 33, 4097 and a random one.
fn gather_rows_cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let mut dims = vec![1, 7, 33, 64, 4097];
    let d = g.range(2, 3000);
    push_new(&mut dims, d);
    v.case(GatherRows {
        dim: 64,
        x: g.rand(40 * 64, 1.0),
        indices: vec![],
    })?;
    for dim in dims {
        let rows = g.range(8, 40);
        v.case(GatherRows {
            dim,
            x: g.rand(rows * dim, 1.0),
            indices: vec![rows - 1, 0, 7, rows - 1],
        })?;
    }
    Ok(())
}
