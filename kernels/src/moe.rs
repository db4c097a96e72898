//! Mixture-of-experts routing: how a router's logits become each token's experts and
//! weights ([`MoeRouting`]), the host reference of that rule ([`route_rows`], which the
//! CPU backend runs and the GPU kernel `moe_route` in `hip/moe.hip` must match), and the
//! grouping of the chosen (token, expert) pairs by expert ([`MoeGroups`]) that the
//! grouped GEMMs and the weighted combine read.

use crate::error::ensure;
use crate::Result;

/// How router logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeScoring {
    /// `softmax` over all experts (Mixtral, Qwen3-MoE).
    Softmax,
    /// `sigmoid` per expert (MiniMax-M2, DeepSeek-V3).
    Sigmoid,
}

/// A router's rule: score, pick `top_k` by score (plus the selection bias, where the
/// layer has one), weigh by score, optionally renormalize, then scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeRouting {
    pub num_experts: usize,
    pub top_k: usize,
    pub scoring: MoeScoring,
    /// Divide the chosen weights by their sum (`norm_topk_prob`; always for Mixtral and
    /// sigmoid routers).
    pub renormalize: bool,
    /// Multiplies the final weights (DeepSeek's `routed_scaling_factor`; 1 elsewhere).
    pub scale: f32,
}

impl MoeRouting {
    pub(crate) fn check(&self, op: &'static str) -> Result<()> {
        ensure(
            self.top_k >= 1 && self.top_k <= self.num_experts && self.num_experts <= MAX_EXPERTS,
            op,
            || {
                format!(
                    "top_k {} of {} experts (1 <= top_k <= experts <= {MAX_EXPERTS})",
                    self.top_k, self.num_experts
                )
            },
        )
    }
}

/// The most experts a router may have (the GPU kernel keeps a row's scores in registers
/// and shared memory sized for this).
pub const MAX_EXPERTS: usize = 512;

/// Each row's chosen experts, `top_k` per row in selection order (highest first), and
/// their weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoeRoute {
    pub experts: Vec<u32>,
    pub weights: Vec<f32>,
}

/// The host reference of the routing rule, row by row: `logits` is `[rows, experts]`,
/// `bias` (selection only) is `[experts]`. Ties go to the lower expert id; NaN scores
/// are never chosen before numbers.
pub fn route_rows(logits: &[f32], rows: usize, r: &MoeRouting, bias: Option<&[f32]>) -> MoeRoute {
    let (e, k) = (r.num_experts, r.top_k);
    let mut out = MoeRoute {
        experts: Vec::with_capacity(rows * k),
        weights: Vec::with_capacity(rows * k),
    };
    let mut scores = vec![0f32; e];
    let mut taken = vec![false; e];
    for row in logits[..rows * e].chunks_exact(e) {
        match r.scoring {
            MoeScoring::Softmax => {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (s, &l) in scores.iter_mut().zip(row) {
                    *s = (l - max).exp();
                    sum += *s;
                }
                for s in scores.iter_mut() {
                    *s /= sum;
                }
            }
            MoeScoring::Sigmoid => {
                for (s, &l) in scores.iter_mut().zip(row) {
                    *s = 1.0 / (1.0 + (-l).exp());
                }
            }
        }
        taken.iter_mut().for_each(|t| *t = false);
        let first = out.weights.len();
        for _ in 0..k {
            let mut best: Option<(usize, f32)> = None;
            for (i, &s) in scores.iter().enumerate() {
                let c = s + bias.map_or(0.0, |b| b[i]);
                if taken[i] || c.is_nan() {
                    continue;
                }
                if best.is_none_or(|(_, b)| c > b) {
                    best = Some((i, c));
                }
            }
            // All remaining NaN: take the lowest free id, weight 0.
            let i = best
                .map(|(i, _)| i)
                .unwrap_or_else(|| taken.iter().position(|t| !t).unwrap_or(0));
            taken[i] = true;
            out.experts.push(i as u32);
            out.weights
                .push(if scores[i].is_nan() { 0.0 } else { scores[i] });
        }
        let chosen = &mut out.weights[first..];
        if r.renormalize {
            let sum: f32 = chosen.iter().sum();
            if sum > 0.0 {
                chosen.iter_mut().for_each(|w| *w /= sum);
            }
        }
        if r.scale != 1.0 {
            chosen.iter_mut().for_each(|w| *w *= r.scale);
        }
    }
    out
}

/// The chosen (token, expert) pairs grouped by expert, ascending, tokens ascending
/// within an expert: what the grouped GEMMs run over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoeGroups {
    /// For each grouped row, the token it came from (the gather of the inputs).
    pub rows: Vec<usize>,
    /// `num_experts + 1` offsets: expert `e` owns grouped rows `offsets[e]..offsets[e+1]`.
    pub offsets: Vec<usize>,
    /// For each token, its `top_k` grouped rows in ascending expert order, and the
    /// weights in the same order: the combine sums them in that order, as transformers'
    /// loop over experts does.
    pub sources: Vec<u32>,
    pub weights: Vec<f32>,
}

impl MoeGroups {
    /// Groups `route` (`tokens * top_k` choices) by expert.
    pub fn new(route: &MoeRoute, tokens: usize, top_k: usize, num_experts: usize) -> Self {
        let mut counts = vec![0usize; num_experts + 1];
        for &e in &route.experts {
            counts[e as usize + 1] += 1;
        }
        for i in 0..num_experts {
            counts[i + 1] += counts[i];
        }
        let offsets = counts.clone();
        let mut next = counts;
        let mut rows = vec![0usize; tokens * top_k];
        let mut slot_of = vec![0u32; tokens * top_k];
        // Tokens in order, so each expert's rows are in token order.
        for t in 0..tokens {
            for j in 0..top_k {
                let e = route.experts[t * top_k + j] as usize;
                let p = next[e];
                next[e] += 1;
                rows[p] = t;
                slot_of[t * top_k + j] = p as u32;
            }
        }
        let mut sources = Vec::with_capacity(tokens * top_k);
        let mut weights = Vec::with_capacity(tokens * top_k);
        let mut order: Vec<usize> = Vec::with_capacity(top_k);
        for t in 0..tokens {
            order.clear();
            order.extend(0..top_k);
            order.sort_by_key(|&j| route.experts[t * top_k + j]);
            for &j in &order {
                sources.push(slot_of[t * top_k + j]);
                weights.push(route.weights[t * top_k + j]);
            }
        }
        MoeGroups {
            rows,
            offsets,
            sources,
            weights,
        }
    }

    /// The experts that got at least one row: the weights a step reads.
    pub fn active_experts(&self) -> usize {
        self.offsets.windows(2).filter(|w| w[1] > w[0]).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(e: usize, k: usize, scoring: MoeScoring, renormalize: bool) -> MoeRouting {
        MoeRouting {
            num_experts: e,
            top_k: k,
            scoring,
            renormalize,
            scale: 1.0,
        }
    }

    #[test]
    fn softmax_top2_renormalized() {
        let r = routing(4, 2, MoeScoring::Softmax, true);
        let got = route_rows(&[0.0, 2.0, 1.0, 2.0], 1, &r, None);
        // Tie between experts 1 and 3: the lower id first.
        assert_eq!(got.experts, vec![1, 3]);
        assert!((got.weights[0] - 0.5).abs() < 1e-7 && (got.weights[1] - 0.5).abs() < 1e-7);
        let r = routing(4, 2, MoeScoring::Softmax, false);
        let got = route_rows(&[0.0, 2.0, 1.0, 2.0], 1, &r, None);
        let sum = 1.0 + 2.0 * 2f32.exp() + 1f32.exp();
        assert!((got.weights[0] - 2f32.exp() / sum).abs() < 1e-6);
    }

    #[test]
    fn sigmoid_bias_selects_but_does_not_weigh() {
        let mut r = routing(3, 1, MoeScoring::Sigmoid, true);
        let bias = [0.0, 0.0, 10.0];
        let got = route_rows(&[3.0, 1.0, -1.0], 1, &r, Some(&bias));
        assert_eq!(got.experts, vec![2]);
        assert_eq!(got.weights, vec![1.0]);
        r.top_k = 2;
        r.scale = 2.5;
        let got = route_rows(&[3.0, 1.0, -1.0], 1, &r, Some(&bias));
        assert_eq!(got.experts, vec![2, 0]);
        let (a, b) = (1.0 / (1.0 + 1f32.exp()), 1.0 / (1.0 + (-3f32).exp()));
        assert!((got.weights[0] - 2.5 * a / (a + b)).abs() < 1e-6);
    }

    #[test]
    fn groups_by_expert_and_combines_in_expert_order() {
        let route = MoeRoute {
            experts: vec![2, 0, 0, 1, 2, 1],
            weights: vec![0.6, 0.4, 0.7, 0.3, 0.9, 0.1],
        };
        let g = MoeGroups::new(&route, 3, 2, 4);
        assert_eq!(g.offsets, vec![0, 2, 4, 6, 6]);
        assert_eq!(g.rows, vec![0, 1, 1, 2, 0, 2]);
        assert_eq!(g.active_experts(), 3);
        // Token 0 chose experts 2 then 0: summed as expert 0 (row 0), then 2 (row 4).
        assert_eq!(&g.sources[..2], &[0, 4]);
        assert_eq!(&g.weights[..2], &[0.4, 0.6]);
        assert_eq!(&g.sources[4..], &[3, 5]);
    }
}
