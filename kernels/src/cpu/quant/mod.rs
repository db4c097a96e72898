//! Quantized weights kept as stored (ggml's Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)
//! and the integer GEMM over them, the way llama.cpp computes it: each row of `x` is
//! quantized to 8 bits per block of 32 (`activation.rs`), and each output is a sum over
//! sub-blocks of exact integer dot products, scaled in f32.
//!
//! **Numerics.** For output `(i, j)`, with sub-blocks `s` of the weight row (16 or 32
//! values, one scale `d` each, a min `m` for the formats with one) and the activation
//! block `b(s)` holding `s` (scale `dx`, quantized values `xq`, their sum `sx` over `s`):
//!
//! ```text
//! isum = Σ_{t ∈ s} code[j, t] · xq[i, t] − offset · sx        (exact, i32)
//! acc  = fma(d[j, s] · dx[i, b(s)], isum, acc)
//! acc  = fma(m[j, s], mx[i, s], acc)                           (formats with a min)
//! ```
//!
//! where `mx` is ggml's f16 `s = d · Σq` of the activation block (Q8_1) or `dx · sx`
//! (Q8_K, for Q4_K and Q6_K): the activations are quantized as llama.cpp quantizes them
//! for each format (`activation.rs`), so the integer products are llama.cpp's.
//!
//! in order of `s`, from zero. An output depends only on its own two rows, so the GEMM
//! is batch-invariant, and the AVX-512 (VNNI) and portable paths give the same bits
//! (`gemm.rs` tests both against each other).
//!
//! **Layout** (`QMatrix`): the `n` weight rows are packed at load in tiles of 16 (one
//! 512-bit register of i32 lanes = one lane per output column). Within a tile, four
//! consecutive values of `k` of the 16 rows make 64 bytes (row-major: row `c`'s four
//! codes at bytes `4c..4c + 4`), so that one `vpdpbusd` against four bytes of `x`
//! broadcast adds four products into each row's lane, and a sub-block's exact integer
//! sums come out in 16 lanes with no horizontal reduction. 4-bit codes pack two such
//! groups per 64 bytes (low nibbles, then high); the 5th and 6th bits of Q5 and Q6_K
//! are bit planes, one 64-bit mask per group. Scales and mins are f32 per (sub-block,
//! row), 16 to a register: converting Q4_K's and Q6_K's 6- and 8-bit sub-scales by the
//! f16 super-scale at load is exact, and is what ggml does for every value.

mod activation;
mod blocks;
mod gemm;

pub(crate) use activation::{ActKind, QRows};
pub(crate) use blocks::Layout;
pub(crate) use gemm::gemm_tiles;

use crate::error::ensure;
use crate::{Result, StoredRows};
use rayon::prelude::*;

/// Rows (output columns) per tile.
pub(crate) const TILE: usize = 16;

/// A quantized `[n, k]` weight packed for the integer GEMM (see the module notes).
pub(crate) struct QMatrix {
    pub layout: Layout,
    pub n: usize,
    pub k: usize,
    /// Per tile: `code_bytes(k)` bytes.
    pub codes: Vec<u8>,
    /// Per tile: `planes` masks per group of four values of `k`.
    pub planes: Vec<u64>,
    /// Per tile: 16 per sub-block.
    pub scales: Vec<f32>,
    /// As `scales`, for formats with a min (else empty).
    pub mins: Vec<f32>,
}

impl QMatrix {
    /// Code bytes of one tile.
    pub fn tile_code_bytes(&self) -> usize {
        tile_code_bytes(&self.layout, self.k)
    }

    pub fn tiles(&self) -> usize {
        self.n.div_ceil(TILE)
    }

    /// Packs `rows` (ggml blocks) of `k` values.
    pub fn new(rows: &StoredRows, k: usize) -> Result<QMatrix> {
        const OP: &str = "upload_stored_weight";
        let layout = Layout::of(rows.format).ok_or_else(|| crate::Error::Shape {
            op: OP,
            msg: format!("{} is not a quantized format", rows.format),
        })?;
        let per = rows.format.row_bytes(k);
        ensure(
            per.is_some() && per.map(|p| p * rows.rows) == Some(rows.bytes.len()),
            OP,
            || {
                format!(
                    "{} bytes of {} for {} rows of {k} values (a row is whole blocks of {})",
                    rows.bytes.len(),
                    rows.format,
                    rows.rows,
                    rows.format.block_size()
                )
            },
        )?;
        let n = rows.rows;
        let subs = layout.subs(k);
        let groups = k / 4;
        let tcb = tile_code_bytes(&layout, k);
        // Per tile: (codes, planes, scales, mins).
        type Tile = (Vec<u8>, Vec<u64>, Vec<f32>, Vec<f32>);
        let tiles: Vec<Tile> = (0..n.div_ceil(TILE))
            .into_par_iter()
            .map(|t| {
                let mut codes = vec![0u8; tcb];
                let mut planes = vec![0u64; layout.planes * groups];
                let mut scales = vec![0.0f32; subs * TILE];
                let mut mins = vec![0.0f32; if layout.has_min { subs * TILE } else { 0 }];
                let (mut rc, mut rd, mut rm) = (vec![0u8; k], vec![0.0; subs], vec![0.0; subs]);
                for c in 0..TILE.min(n - t * TILE) {
                    blocks::decode_row(
                        &layout,
                        rows.row(t * TILE + c, k),
                        k,
                        &mut rc,
                        &mut rd,
                        &mut rm,
                    );
                    for (p, &code) in rc.iter().enumerate() {
                        let (g, t4) = (p / 4, p % 4);
                        let at = c * 4 + t4;
                        if layout.nibbles {
                            codes[g / 2 * 64 + at] |= (code & 0xF) << (4 * (g % 2));
                            for pl in 0..layout.planes {
                                let bit = (code >> (4 + pl)) & 1;
                                planes[g * layout.planes + pl] |= (bit as u64) << at;
                            }
                        } else {
                            codes[g * 64 + at] = code;
                        }
                    }
                    for s in 0..subs {
                        scales[s * TILE + c] = rd[s];
                        if layout.has_min {
                            mins[s * TILE + c] = rm[s];
                        }
                    }
                }
                (codes, planes, scales, mins)
            })
            .collect();
        let mut q = QMatrix {
            layout,
            n,
            k,
            codes: Vec::with_capacity(tiles.len() * tcb),
            planes: Vec::new(),
            scales: Vec::new(),
            mins: Vec::new(),
        };
        for (c, p, s, m) in tiles {
            q.codes.extend_from_slice(&c);
            q.planes.extend_from_slice(&p);
            q.scales.extend_from_slice(&s);
            q.mins.extend_from_slice(&m);
        }
        Ok(q)
    }

    /// The code of row `j`, value `p`.
    pub fn code(&self, j: usize, p: usize) -> u8 {
        let (t, c) = (j / TILE, j % TILE);
        let (g, t4) = (p / 4, p % 4);
        let at = c * 4 + t4;
        let tile = &self.codes[t * self.tile_code_bytes()..];
        if !self.layout.nibbles {
            return tile[g * 64 + at];
        }
        let mut code = (tile[g / 2 * 64 + at] >> (4 * (g % 2))) & 0xF;
        let planes = &self.planes[t * self.layout.planes * (self.k / 4)..];
        for pl in 0..self.layout.planes {
            code |= (((planes[g * self.layout.planes + pl] >> at) & 1) as u8) << (4 + pl);
        }
        code
    }

    /// Scale and min of row `j`'s sub-block `s`.
    pub fn scale(&self, j: usize, s: usize) -> (f32, f32) {
        let subs = self.layout.subs(self.k);
        let at = (j / TILE) * subs * TILE + s * TILE + j % TILE;
        let m = if self.layout.has_min {
            self.mins[at]
        } else {
            0.0
        };
        (self.scales[at], m)
    }

    /// Row `j` dequantized into `out` (`k` values), bit for bit as ggml dequantizes it.
    pub fn row_into(&self, j: usize, out: &mut [f32]) {
        for (p, o) in out[..self.k].iter_mut().enumerate() {
            let (d, m) = self.scale(j, p / self.layout.sub);
            *o = blocks::value(&self.layout, self.code(j, p), d, m);
        }
    }

    /// Bytes a pass over the weight reads.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 8 * self.planes.len() + 4 * (self.scales.len() + self.mins.len())
    }
}

fn tile_code_bytes(layout: &Layout, k: usize) -> usize {
    if layout.nibbles {
        TILE * k / 2
    } else {
        TILE * k
    }
}

#[cfg(test)]
pub(crate) mod tests;
