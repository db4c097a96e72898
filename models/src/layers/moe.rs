//! The sparse mixture-of-experts block (Mixtral, Qwen3-MoE, MiniMax-M2, and the MoE layers
//! of DeepSeek-style models): router and top-k routing (fused, logits in f32, the
//! choices grouped by expert where the backend keeps them) → expert gate/up GEMM →
//! SiLU-and-mul → expert down GEMM → weighted combine, plus an optional always-on shared
//! expert. Between the router and the combine, buffers hold one row per (token, choice)
//! pair, in pair order.
//!
//! Expert weights are stored in checkpoints one tensor per expert and projection; they are
//! packed at load into `[experts, 2 * inter, hidden]` (gate rows, then up rows, per
//! expert) and `[experts, hidden, inter]`, the layout `Backend::moe_matmul` reads. Each
//! expert's weights are read once per step whatever the batch (on the GPU's device
//! grouping, once per 8 of its pairs), and a token's result
//! depends only on that token (routing, GEMM rows and the combine are per row).

use super::mlp::{GatedMlp, MlpScratch};
use super::{Pass, Weights};
use crate::config::{MoeConfig, MoeNaming};
use crate::error::Result;
use novastack_kernels::{Backend, MoeInput, MoeRouting};

/// Per-pass buffers for `rows` tokens.
pub struct MoeScratch<B: Backend> {
    gate_up: B::Buf,
    act: B::Buf,
    expert_out: B::Buf,
    shared: Option<(MlpScratch<B>, B::Buf)>,
}

/// The shape of a MoE layer: enough to size its scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    pub hidden: usize,
    pub num_experts: usize,
    pub top_k: usize,
    pub expert_intermediate: usize,
    /// Width of the shared expert's MLP, where there is one.
    pub shared_intermediate: Option<usize>,
}

impl MoeShape {
    pub fn new(hidden: usize, c: &MoeConfig) -> Self {
        MoeShape {
            hidden,
            num_experts: c.num_experts,
            top_k: c.top_k,
            expert_intermediate: c.expert_intermediate,
            shared_intermediate: c.shared_intermediate,
        }
    }

    pub fn scratch<B: Backend>(&self, b: &B, rows: usize) -> Result<MoeScratch<B>> {
        let pairs = rows * self.top_k;
        let (h, i) = (self.hidden, self.expert_intermediate);
        Ok(MoeScratch {
            gate_up: b.zeros(pairs * 2 * i)?,
            act: b.zeros(pairs * i)?,
            expert_out: b.zeros(pairs * h)?,
            shared: match self.shared_intermediate {
                Some(si) => Some((MlpScratch::new(b, rows, si)?, b.zeros(rows * h)?)),
                None => None,
            },
        })
    }
}

pub struct SparseMoe<B: Backend> {
    shape: MoeShape,
    routing: MoeRouting,
    /// The router: `[experts, hidden]`.
    gate: B::Weight,
    /// `e_score_correction_bias`: `[experts]`, selection only.
    bias: Option<B::Buf>,
    /// `[experts, 2 * inter, hidden]`.
    gate_up: B::Weight,
    /// `[experts, hidden, inter]`.
    down: B::Weight,
    shared: Option<GatedMlp<B>>,
}

impl<B: Backend> SparseMoe<B> {
    /// Loads the block under `prefix` (`model.layers.{i}.mlp` or
    /// `model.layers.{i}.block_sparse_moe`, as `c.naming` says).
    pub fn load(w: &Weights<'_, B>, prefix: &str, hidden: usize, c: &MoeConfig) -> Result<Self> {
        let (e, i, h) = (c.num_experts, c.expert_intermediate, hidden);
        let (gate_name, up_name, down_name) = match c.naming {
            MoeNaming::Qwen | MoeNaming::DeepSeek => ("gate_proj", "up_proj", "down_proj"),
            MoeNaming::BlockSparse => ("w1", "w3", "w2"),
        };
        let expert = |x: usize, proj: &str| format!("{prefix}.experts.{x}.{proj}.weight");
        // All experts of a projection in one 3-D tensor (GGUF's `ffn_*_exps`), where the
        // source has them so.
        let stacked = |proj: &str| format!("{prefix}.experts.{proj}.weight");
        let mut gate_up = Vec::with_capacity(e * 2 * i * h);
        let down = if w.source.contains(&stacked(gate_name)) {
            let g = w.host(&stacked(gate_name), &[e, i, h])?;
            let u = w.host(&stacked(up_name), &[e, i, h])?;
            for (gx, ux) in g.chunks_exact(i * h).zip(u.chunks_exact(i * h)) {
                gate_up.extend_from_slice(gx);
                gate_up.extend_from_slice(ux);
            }
            w.host(&stacked(down_name), &[e, h, i])?
        } else {
            let mut d = Vec::with_capacity(e * h * i);
            for x in 0..e {
                gate_up.extend(w.host(&expert(x, gate_name), &[i, h])?);
                gate_up.extend(w.host(&expert(x, up_name), &[i, h])?);
                d.extend(w.host(&expert(x, down_name), &[h, i])?);
            }
            d
        };
        // transformers keeps the bias as a buffer and starts it at zero when a checkpoint
        // has none: read it where the checkpoint has it.
        let bias_name = match c.naming {
            MoeNaming::DeepSeek => format!("{prefix}.gate.e_score_correction_bias"),
            _ => format!("{prefix}.e_score_correction_bias"),
        };
        let bias = if c.correction_bias && w.source.contains(&bias_name) {
            Some(w.get(&bias_name, &[e])?)
        } else {
            None
        };
        Ok(SparseMoe {
            shape: MoeShape::new(hidden, c),
            routing: MoeRouting {
                num_experts: e,
                top_k: c.top_k,
                scoring: c.scoring,
                renormalize: c.renormalize,
                scale: c.routed_scale,
                group_limit: c.group_limit,
            },
            gate: w.matrix_f32(&format!("{prefix}.gate.weight"), e, h)?,
            bias,
            gate_up: w.upload_experts(&gate_up, e, 2 * i, h)?,
            down: w.upload_experts(&down, e, h, i)?,
            shared: match c.shared_intermediate {
                Some(si) => Some(GatedMlp::load(
                    w,
                    &format!("{prefix}.shared_experts"),
                    h,
                    si,
                    false,
                )?),
                None => None,
            },
        })
    }

    /// Adds an always-on shared expert (DeepSeek-style `shared_experts`), summed with
    /// the routed output.
    pub fn with_shared(mut self, shared: GatedMlp<B>, intermediate: usize) -> Self {
        self.shared = Some(shared);
        self.shape.shared_intermediate = Some(intermediate);
        self
    }

    pub fn shape(&self) -> MoeShape {
        self.shape
    }

    /// `out = moe(x)` for the pass's `rows` tokens.
    pub fn forward(
        &self,
        pass: &Pass<'_, B>,
        x: &B::Buf,
        s: &mut MoeScratch<B>,
        out: &mut B::Buf,
    ) -> Result<()> {
        let (b, n) = (pass.backend, pass.rows);
        let sh = &self.shape;
        let (h, inter, k) = (sh.hidden, sh.expert_intermediate, sh.top_k);
        let plan = b.moe_route(x, &self.gate, n, h, &self.routing, self.bias.as_ref())?;
        b.moe_matmul(
            x,
            MoeInput::Tokens,
            &plan,
            &self.gate_up,
            h,
            2 * inter,
            &mut s.gate_up,
        )?;
        b.silu_and_mul(&s.gate_up, n * k, inter, &mut s.act)?;
        b.moe_matmul(
            &s.act,
            MoeInput::Pairs,
            &plan,
            &self.down,
            inter,
            h,
            &mut s.expert_out,
        )?;
        b.moe_combine(&s.expert_out, &plan, h, out)?;
        if let (Some(mlp), Some((ms, shared_out))) = (&self.shared, &mut s.shared) {
            mlp.forward(pass, x, ms, shared_out)?;
            b.add_inplace(out, shared_out, n * h)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MoeConfig;
    use crate::input::ForwardInput;
    use crate::loader::TensorSource;
    use crate::random::RandomSource;
    use novastack_kernels::{CpuBackend, MoeScoring};

    fn config(scoring: MoeScoring, bias: bool) -> MoeConfig {
        MoeConfig {
            num_experts: 6,
            top_k: 2,
            expert_intermediate: 12,
            scoring,
            renormalize: scoring == MoeScoring::Sigmoid,
            routed_scale: 1.0,
            correction_bias: bias,
            sparse_layers: vec![true],
            naming: MoeNaming::Qwen,
            group_limit: None,
            shared_intermediate: None,
        }
    }

    fn silu(v: f32) -> f32 {
        v / (1.0 + (-v).exp())
    }

    /// Random tensors under per-expert names only (a released checkpoint's layout); the
    /// plain [`RandomSource`] also answers the stacked names (GGUF's layout).
    struct PerExpert(RandomSource);

    impl TensorSource for PerExpert {
        fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
            self.0.tensor(name, shape)
        }
        fn contains(&self, name: &str) -> bool {
            // `m.experts.{e}.{proj}.weight`, not `m.experts.{proj}.weight`.
            name.strip_prefix("m.experts.")
                .is_none_or(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        }
        fn describe(&self) -> String {
            "per-expert random".into()
        }
    }

    /// The block against a direct, token-at-a-time computation from the same weights
    /// (per-expert tensors, or slices of the stacked ones), and a token's output does
    /// not depend on the batch it is in.
    #[test]
    fn matches_a_direct_computation_and_is_batch_invariant() {
        let (h, rows) = (16, 5);
        let b = CpuBackend::new();
        let per_expert = PerExpert(RandomSource::new(3, 0.3));
        let stacked = RandomSource::new(4, 0.3);
        let cases = [
            (MoeScoring::Softmax, false, &per_expert as &dyn TensorSource),
            (MoeScoring::Sigmoid, true, &per_expert),
            (MoeScoring::Softmax, false, &stacked),
        ];
        for (scoring, bias, src) in cases {
            let w = Weights::new(src, &b);
            let c = config(scoring, bias);
            let moe = SparseMoe::load(&w, "m", h, &c).unwrap();
            let x: Vec<f32> = (0..rows * h)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let input = ForwardInput::default();
            let run = |x: &[f32], n: usize| {
                let pass = Pass {
                    backend: &b,
                    input: &input,
                    rows: n,
                };
                let mut s = moe.shape().scratch(&b, n).unwrap();
                let mut out = vec![f32::NAN; n * h];
                moe.forward(&pass, &x.to_vec(), &mut s, &mut out).unwrap();
                out
            };
            let all = run(&x, rows);
            let (e, i) = (c.num_experts, c.expert_intermediate);
            let gate = src.tensor("m.gate.weight", &[e, h]).unwrap();
            let bias_v = bias.then(|| src.tensor("m.e_score_correction_bias", &[e]).unwrap());
            for t in 0..rows {
                let xt = &x[t * h..(t + 1) * h];
                // The same token alone gives the same bits.
                assert_eq!(run(xt, 1), all[t * h..(t + 1) * h].to_vec());
                let logits: Vec<f32> = (0..e)
                    .map(|r| (0..h).map(|j| gate[r * h + j] * xt[j]).sum())
                    .collect();
                let route =
                    novastack_kernels::moe::route_rows(&logits, 1, &moe.routing, bias_v.as_deref());
                let mut want = vec![0f32; h];
                for (&ex, &wt) in route.experts.iter().zip(&route.weights) {
                    let p = |proj: &str, shape: &[usize]| {
                        if src.contains(&format!("m.experts.{proj}.weight")) {
                            let all = src
                                .tensor(
                                    &format!("m.experts.{proj}.weight"),
                                    &[e, shape[0], shape[1]],
                                )
                                .unwrap();
                            let n = shape[0] * shape[1];
                            all[ex as usize * n..(ex as usize + 1) * n].to_vec()
                        } else {
                            src.tensor(&format!("m.experts.{ex}.{proj}.weight"), shape)
                                .unwrap()
                        }
                    };
                    let (g, u, d) = (
                        p("gate_proj", &[i, h]),
                        p("up_proj", &[i, h]),
                        p("down_proj", &[h, i]),
                    );
                    let act: Vec<f32> = (0..i)
                        .map(|r| {
                            let gv: f32 = (0..h).map(|j| g[r * h + j] * xt[j]).sum();
                            let uv: f32 = (0..h).map(|j| u[r * h + j] * xt[j]).sum();
                            silu(gv) * uv
                        })
                        .collect();
                    for (r, o) in want.iter_mut().enumerate() {
                        let dv: f32 = (0..i).map(|j| d[r * i + j] * act[j]).sum();
                        *o += wt * dv;
                    }
                }
                for (a, b) in all[t * h..(t + 1) * h].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{scoring:?} token {t}: {a} vs {b}");
                }
            }
        }
    }

    /// The shared expert's MLP output is added to the routed output, bit for bit.
    #[test]
    fn a_shared_expert_adds_its_mlp_to_the_routed_output() {
        let (h, rows, inter) = (16, 3, 8);
        let b = CpuBackend::new();
        let src = PerExpert(RandomSource::new(5, 0.3));
        let w = Weights::new(&src, &b);
        let c = config(MoeScoring::Softmax, false);
        let x: Vec<f32> = (0..rows * h)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
            .collect();
        let input = ForwardInput::default();
        let pass = Pass {
            backend: &b,
            input: &input,
            rows,
        };
        let routed = SparseMoe::load(&w, "m", h, &c).unwrap();
        let mut only = vec![f32::NAN; rows * h];
        let mut s = routed.shape().scratch(&b, rows).unwrap();
        routed.forward(&pass, &x, &mut s, &mut only).unwrap();
        let mlp = GatedMlp::load(&w, "s", h, inter, false).unwrap();
        let mut dense = vec![f32::NAN; rows * h];
        let mut ms = MlpScratch::new(&b, rows, inter).unwrap();
        mlp.forward(&pass, &x, &mut ms, &mut dense).unwrap();
        let both = SparseMoe::load(&w, "m", h, &c)
            .unwrap()
            .with_shared(GatedMlp::load(&w, "s", h, inter, false).unwrap(), inter);
        let mut out = vec![f32::NAN; rows * h];
        let mut s = both.shape().scratch(&b, rows).unwrap();
        both.forward(&pass, &x, &mut s, &mut out).unwrap();
        let want: Vec<f32> = only.iter().zip(&dense).map(|(a, d)| a + d).collect();
        assert_eq!(out, want);
        assert!(dense.iter().any(|v| *v != 0.0));
    }
}
