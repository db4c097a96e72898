//! The gated MLP of Llama-style decoders: `down(silu(gate(x)) * up(x))`, with gate and
//! up fused into one projection and optional biases.

use super::{Pass, Weights};
use crate::error::Result;
use novastack_kernels::Backend;

/// Per-pass buffers: the fused `[gate | up]` rows and the activation.
pub struct MlpScratch<B: Backend> {
    gate_up: B::Buf,
    act: B::Buf,
}

impl<B: Backend> MlpScratch<B> {
    /// Buffers for a pass of `rows` tokens through MLPs of width `intermediate`.
    pub fn new(b: &B, rows: usize, intermediate: usize) -> Result<Self> {
        Ok(MlpScratch {
            gate_up: b.zeros(rows * 2 * intermediate)?,
            act: b.zeros(rows * intermediate)?,
        })
    }
}

pub struct GatedMlp<B: Backend> {
    hidden: usize,
    intermediate: usize,
    /// gate and up projections stacked: `[2 * intermediate, hidden]`.
    gate_up: B::Weight,
    gate_up_bias: Option<B::Buf>,
    down: B::Weight,
    down_bias: Option<B::Buf>,
}

impl<B: Backend> GatedMlp<B> {
    /// Loads `{prefix}.{gate,up,down}_proj.weight` (and `.bias` with `bias`).
    pub fn load(
        w: &Weights<'_, B>,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        bias: bool,
    ) -> Result<Self> {
        let name = |proj: &str, kind: &str| format!("{prefix}.{proj}.{kind}");
        let gate_up = w.stacked_matrix(
            &[
                (name("gate_proj", "weight"), intermediate),
                (name("up_proj", "weight"), intermediate),
            ],
            hidden,
        )?;
        let (gate_up_bias, down_bias) = if bias {
            (
                Some(w.stacked(&[
                    (name("gate_proj", "bias"), vec![intermediate]),
                    (name("up_proj", "bias"), vec![intermediate]),
                ])?),
                Some(w.get(&name("down_proj", "bias"), &[hidden])?),
            )
        } else {
            (None, None)
        };
        let down = w.matrix(&name("down_proj", "weight"), hidden, intermediate)?;
        Ok(GatedMlp {
            hidden,
            intermediate,
            gate_up,
            gate_up_bias,
            down,
            down_bias,
        })
    }

    /// `out = mlp(x)` for the pass's `rows` tokens.
    pub fn forward(
        &self,
        pass: &Pass<'_, B>,
        x: &B::Buf,
        s: &mut MlpScratch<B>,
        out: &mut B::Buf,
    ) -> Result<()> {
        let (b, n) = (pass.backend, pass.rows);
        let (h, inter) = (self.hidden, self.intermediate);
        b.matmul(
            x,
            &self.gate_up,
            self.gate_up_bias.as_ref(),
            n,
            h,
            2 * inter,
            &mut s.gate_up,
        )?;
        b.silu_and_mul(&s.gate_up, n, inter, &mut s.act)?;
        b.matmul(
            &s.act,
            &self.down,
            self.down_bias.as_ref(),
            n,
            inter,
            h,
            out,
        )?;
        Ok(())
    }
}
