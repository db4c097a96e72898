//! RMSNorm: over whole rows, fused with the residual add, or per head inside a row
//! (Qwen3's q/k norm). One weight vector of `dim` values and an epsilon.

use super::Weights;
use crate::error::Result;
use novastack_kernels::Backend;

pub struct RmsNorm<B: Backend> {
    weight: B::Buf,
    dim: usize,
    eps: f32,
}

impl<B: Backend> RmsNorm<B> {
    /// Loads `name` (`[dim]`).
    pub fn load(w: &Weights<'_, B>, name: &str, dim: usize, eps: f32) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get(name, &[dim])?,
            dim,
            eps,
        })
    }

    /// `out = rms_norm(x)` over `rows` rows of `dim`.
    pub fn forward(&self, b: &B, x: &B::Buf, rows: usize, out: &mut B::Buf) -> Result<()> {
        Ok(b.rms_norm(x, &self.weight, rows, self.dim, self.eps, out)?)
    }

    /// `x += delta; out = rms_norm(x)` (the residual add fused with the next norm).
    pub fn add_forward(
        &self,
        b: &B,
        x: &mut B::Buf,
        delta: &B::Buf,
        rows: usize,
        out: &mut B::Buf,
    ) -> Result<()> {
        Ok(b.add_rms_norm(x, delta, &self.weight, rows, self.dim, self.eps, out)?)
    }

    /// In place, per head: `num_heads` heads of `dim` starting at column `col_offset` of
    /// each row of `row_stride` values.
    pub fn forward_heads(
        &self,
        b: &B,
        x: &mut B::Buf,
        rows: usize,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
    ) -> Result<()> {
        Ok(b.head_rms_norm(
            x,
            rows,
            row_stride,
            col_offset,
            num_heads,
            self.dim,
            &self.weight,
            self.eps,
        )?)
    }
}
