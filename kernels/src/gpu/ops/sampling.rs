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
    // One grow-only area of its own: [ids | f32 logits (16-bit logits widened)], so
    // that a step's argmax neither allocates nor moves the scratch area that a
    // captured graph's attention reads.
    let logits_at = ids_bytes.next_multiple_of(256);
    let need = if x.dtype == Dtype::F32 {
        ids_bytes
    } else {
        logits_at + n * 4
    };
    let (area, guard) = b.grow(&b.argmax, need)?;
    let logits = if x.dtype == Dtype::F32 {
        x.ptr
    } else {
        let f = area + logits_at as u64;
        launch!(b, "to_f32", stride_grid(n), f, x.ptr, n as i64)?;
        f
    };
    launch!(b, "argmax_rows", grid1(rows), logits, area, cols as i32)?;
    b.not_capturing("a download")?;
    let mut bytes = vec![0u8; ids_bytes];
    if let Some((_, mem, _)) = guard.as_ref() {
        b.dev.dtoh(mem, &mut bytes)?;
    }
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
    fn empty_input(&self) -> bool {
        self.rows == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let ids = b.argmax_rows(&b.upload(&self.x)?, self.rows, self.cols)?;
        Ok(vec![("", ids.into_iter().map(|i| i as f32).collect())])
    }
}

/// Random logits: no rows, widths that fill no block or warp (1, 7, 33, 4097), the
/// Llama-3 vocabulary, random shapes; then the rows the rules are about (see
/// [`edge_rows`]) at a width under one block and one over it.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let mut shapes = vec![(0, 1000), (3, 1), (5, 7), (4, 33), (2, 4097), (4, 128256)];
    for _ in 0..2 {
        let s = (g.range(1, 8), g.range(2, 20000));
        super::push_new(&mut shapes, s);
    }
    for (rows, cols) in shapes {
        v.case(ArgmaxRows {
            what: "",
            rows,
            cols,
            x: g.rand(rows * cols, 8.0),
        })?;
    }
    for cols in [300, 1000] {
        let x = edge_rows(g, cols);
        v.case(ArgmaxRows {
            what: "edge rows",
            rows: x.len() / cols,
            cols,
            x,
        })?;
    }
    Ok(())
}

/// Rows of `cols` (at least 300) random logits in `[-1, 1)`, each edited for one rule of
/// the argmax: the first of equal maxima wins (the same thread's elements, threads of one
/// warp, different warps); a NaN never wins (before and after the max); a row of -inf
/// gives its first number, 0; -inf and NaN only: the first -inf; all NaN: 0; +inf wins
/// over numbers; the max at the last column; a single number among NaNs.
fn edge_rows(g: &mut Gen, cols: usize) -> Vec<f32> {
    let rows = 11;
    let mut x = g.rand(rows * cols, 1.0);
    let mut row: Vec<&mut [f32]> = x.chunks_exact_mut(cols).collect();
    // Ties: 300 and 700 (another warp), 5 and 5 + 256 (one thread: blocks are 256
    // wide), 1 and 17 (one warp at 32 and 64 lanes).
    let c = cols;
    for (r, a, b) in [(0, 300 % c, 700 % c), (1, 5, (5 + 256) % c), (2, 1, 17)] {
        row[r][a] = 5.0;
        row[r][b] = 5.0;
    }
    row[3][0] = f32::NAN;
    row[3][10] = 6.0;
    row[3][11] = f32::NAN;
    row[3][c - 1] = f32::NAN;
    row[4].fill(f32::NEG_INFINITY);
    row[5].fill(f32::NAN);
    row[5][c / 2] = f32::NEG_INFINITY;
    row[5][c - 1] = f32::NEG_INFINITY;
    row[6].fill(f32::NAN);
    row[7][c / 3] = f32::INFINITY;
    row[7][c / 3 + 1] = f32::INFINITY;
    row[8][c - 1] = 3.0;
    row[9].fill(f32::NAN);
    row[9][c - 1] = -2.0;
    row[10].fill(f32::NEG_INFINITY);
    row[10][0] = f32::NAN;
    row[10][c - 2] = -1e30;
    x
}
