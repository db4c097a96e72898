//! `kernels/hip/sampling.hip` on the host: greedy argmax over logits rows on the device
//! (only the ids come back), with its conformance cases. The kernel reads f32, so
//! 16-bit logits are widened first by `to_f32` (elementwise.hip) into the scratch area.

use crate::conformance::{Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch, stride_grid};
use crate::gpu::{Device, GpuBackend, GpuBuf};
use crate::{Backend, Dtype, Result};

/// `argmax_rows(logits, out, vocab)`: one block per row.
pub(crate) fn argmax_rows<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    rows: usize,
    cols: usize,
) -> Result<Vec<u32>> {
    b.check("argmax_rows", "x", x, rows * cols)?;
    if rows == 0 {
        return Ok(Vec::new());
    }
    if cols == 0 {
        return Ok(vec![0; rows]);
    }
    let n = rows * cols;
    let ids_bytes = rows * 4;
    let logits = if x.dtype == Dtype::F32 {
        x.ptr
    } else {
        let f = b.scratch(n * 4)?;
        launch!(b, "to_f32", stride_grid(n), f, x.ptr, n as i64)?;
        f
    };
    let ids = b.dev.alloc_zeros(ids_bytes)?;
    launch!(
        b,
        "argmax_rows",
        grid1(rows),
        logits,
        b.dev.ptr(&ids),
        cols as i32
    )?;
    let mut bytes = vec![0u8; ids_bytes];
    b.dev.dtoh(&ids, &mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

struct ArgmaxRows {
    what: &'static str,
    rows: usize,
    cols: usize,
    x: Vec<f32>,
}

impl Case for ArgmaxRows {
    fn op(&self) -> String {
        format!("argmax_rows {}", self.what).trim_end().to_string()
    }
    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.cols)
    }
    /// Token ids: exact on every backend (inputs are rounded before either sees them).
    fn tolerance(&self, _: Dtype) -> f64 {
        0.0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let ids = b.argmax_rows(&b.upload(&self.x)?, self.rows, self.cols)?;
        Ok(vec![("", ids.into_iter().map(|i| i as f32).collect())])
    }
}

/// Random logits over the Llama-3 vocabulary, and the rows the rules are about: a tie
/// (the first wins), a NaN (never wins), all -inf (the first number wins), all NaN (0).
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    v.case(ArgmaxRows {
        what: "",
        rows: 4,
        cols: 128256,
        x: g.rand(4 * 128256, 8.0),
    })?;
    let cols = 1000;
    let mut x = g.rand(4 * cols, 1.0);
    let row = |r: usize| r * cols..(r + 1) * cols;
    let (tie, nan) = (row(0).start, row(1).start);
    x[tie + 300] = 5.0;
    x[tie + 700] = 5.0;
    x[nan] = f32::NAN;
    x[nan + 10] = 6.0;
    x[nan + 11] = f32::NAN;
    x[row(2)].fill(f32::NEG_INFINITY);
    x[row(3)].fill(f32::NAN);
    v.case(ArgmaxRows {
        what: "edge rows",
        rows: 4,
        cols,
        x,
    })
}
