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
    /// DeepSeek-V3's group-limited selection, where the layer has it.
    pub group_limit: Option<GroupLimit>,
}

/// DeepSeek-V3's group-limited selection (`topk_method: noaux_tc`, `n_group`,
/// `topk_group`): the experts form `groups` equal groups of consecutive ids; a group's
/// score is the sum of its two best selection scores (score + bias); only the experts
/// of the `top_groups` best groups stay in the running; the others' selection scores
/// become -inf, as transformers' DeepSeek-V3 router masks them (its DeepSeek-V2 router
/// masks with 0, which under a negative bias lets a masked expert win).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimit {
    pub groups: usize,
    pub top_groups: usize,
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
        )?;
        if let Some(g) = self.group_limit {
            let size = self.num_experts.checked_div(g.groups).unwrap_or(0);
            ensure(
                g.groups >= 1
                    && self.num_experts.is_multiple_of(g.groups)
                    && size >= 2
                    && g.top_groups >= 1
                    && g.top_groups <= g.groups
                    && g.groups <= MAX_GROUPS,
                op,
                || {
                    format!(
                        "{} expert groups (top {}) of {} experts: groups must divide the experts \
                         into groups of at least 2, at most {MAX_GROUPS} groups, 1 <= top <= groups",
                        g.groups, g.top_groups, self.num_experts
                    )
                },
            )?;
        }
        Ok(())
    }
}

/// The most expert groups a group-limited router may have (the GPU kernel keeps their
/// scores in shared memory).
pub const MAX_GROUPS: usize = 64;

/// Which experts of a row stay in the running under `limit`, given their selection
/// scores: false for every expert outside the best `top_groups` groups (ties to the
/// lower group; NaN never counts as best).
pub fn group_mask(choice: &[f32], limit: GroupLimit, keep: &mut [bool]) {
    let size = choice.len() / limit.groups;
    let group_score = |g: usize| {
        let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for &c in &choice[g * size..(g + 1) * size] {
            let c = if c.is_nan() { f32::NEG_INFINITY } else { c };
            if c > a {
                b = a;
                a = c;
            } else if c > b {
                b = c;
            }
        }
        a + b
    };
    let scores: Vec<f32> = (0..limit.groups).map(group_score).collect();
    let mut on = vec![false; limit.groups];
    for _ in 0..limit.top_groups {
        let mut best: Option<usize> = None;
        for g in 0..limit.groups {
            if !on[g] && best.is_none_or(|b| scores[g] > scores[b]) {
                best = Some(g);
            }
        }
        if let Some(g) = best {
            on[g] = true;
        }
    }
    for (i, k) in keep.iter_mut().enumerate() {
        *k = on[i / size];
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
    let mut choice = vec![0f32; e];
    let mut keep = vec![true; e];
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
        for (i, (c, &s)) in choice.iter_mut().zip(scores.iter()).enumerate() {
            *c = s + bias.map_or(0.0, |b| b[i]);
        }
        if let Some(limit) = r.group_limit {
            group_mask(&choice, limit, &mut keep);
            for (c, &k) in choice.iter_mut().zip(&keep) {
                if !k {
                    *c = f32::NEG_INFINITY;
                }
            }
        }
        let first = out.weights.len();
        for _ in 0..k {
            let mut best: Option<(usize, f32)> = None;
            for (i, &c) in choice.iter().enumerate() {
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

/// Where a MoE GEMM's input rows come from ([`crate::Backend::moe_matmul`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeInput {
    /// `[tokens, k]`: each pair reads its token's row (the gate/up GEMM over the layer's
    /// input).
    Tokens,
    /// `[tokens * top_k, k]` in pair order: each pair reads its own row (the down GEMM
    /// over the activations).
    Pairs,
}

/// The chosen (token, expert) pairs grouped by expert: what a host-side grouped GEMM runs
/// over. A *pair* is `t * top_k + j`, token `t`'s `j`-th choice; every MoE buffer between
/// the router and the combine is `[pairs, _]` in pair order, whatever the grouping.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoeGroups {
    /// For each grouped row, its pair: experts ascending, pairs ascending within one.
    pub pairs: Vec<u32>,
    /// `num_experts + 1` offsets: expert `e` owns grouped rows `offsets[e]..offsets[e+1]`.
    pub offsets: Vec<usize>,
}

impl MoeGroups {
    /// Groups `experts` (`pairs` choices, one expert id each, all below `num_experts`).
    pub fn new(experts: &[u32], num_experts: usize) -> Self {
        let mut offsets = vec![0usize; num_experts + 1];
        for &e in experts {
            offsets[e as usize + 1] += 1;
        }
        for i in 0..num_experts {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut pairs = vec![0u32; experts.len()];
        for (p, &e) in experts.iter().enumerate() {
            pairs[next[e as usize]] = p as u32;
            next[e as usize] += 1;
        }
        MoeGroups { pairs, offsets }
    }

    /// The experts that got at least one row: the weights a step reads.
    pub fn active_experts(&self) -> usize {
        self.offsets.windows(2).filter(|w| w[1] > w[0]).count()
    }
}

/// The order in which a token's `top_k` choices are summed by the combine: ascending
/// expert id, as transformers' loop over experts adds them. `ids` are one token's
/// choices (distinct); `order` receives their indices.
pub fn combine_order(ids: &[u32], order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..ids.len());
    order.sort_by_key(|&j| ids[j]);
}

/// Checks a route made outside the router ([`crate::Backend::moe_plan`]): `tokens *
/// top_k` choices and weights, every id below `num_experts` and a token's ids distinct.
pub(crate) fn check_route(
    op: &'static str,
    route: &MoeRoute,
    tokens: usize,
    r: &MoeRouting,
) -> Result<()> {
    r.check(op)?;
    let pairs = tokens * r.top_k;
    ensure(
        route.experts.len() == pairs && route.weights.len() == pairs,
        op,
        || {
            format!(
                "{} expert ids and {} weights for {tokens} tokens of top_k {}",
                route.experts.len(),
                route.weights.len(),
                r.top_k
            )
        },
    )?;
    if let Some(&e) = route.experts.iter().find(|&&e| e as usize >= r.num_experts) {
        return Err(crate::Error::OutOfRange {
            op,
            index: e as usize,
            limit: r.num_experts,
        });
    }
    for (t, ids) in route.experts.chunks_exact(r.top_k).enumerate() {
        let mut seen = ids.to_vec();
        seen.sort_unstable();
        ensure(seen.windows(2).all(|w| w[0] != w[1]), op, || {
            format!("token {t} chose an expert twice: {ids:?}")
        })?;
    }
    Ok(())
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
            group_limit: None,
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
        let experts = [2, 0, 0, 1, 2, 1];
        let g = MoeGroups::new(&experts, 4);
        assert_eq!(g.offsets, vec![0, 2, 4, 6, 6]);
        assert_eq!(g.pairs, vec![1, 2, 3, 5, 0, 4]);
        assert_eq!(g.active_experts(), 3);
        // Token 0 chose experts 2 then 0: summed as expert 0 (its choice 1), then 2.
        let mut order = Vec::new();
        combine_order(&experts[..2], &mut order);
        assert_eq!(order, vec![1, 0]);
    }

    /// Experts 0..8 in 4 groups of 2: the best single expert (0) sits in a group whose
    /// partner is weak, so two stronger groups win and its expert is never chosen.
    #[test]
    fn group_limited_selection_keeps_the_best_groups() {
        let mut r = routing(8, 2, MoeScoring::Sigmoid, true);
        r.group_limit = Some(GroupLimit {
            groups: 4,
            top_groups: 2,
        });
        let logits = [3.0, -3.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0];
        let got = route_rows(&logits, 1, &r, None);
        assert_eq!(got.experts, vec![2, 3]);
        let free = route_rows(&logits, 1, &routing(8, 2, MoeScoring::Sigmoid, true), None);
        assert_eq!(free.experts, vec![0, 2]);
        // Masked experts' selection scores become -inf (transformers' DeepSeek-V3
        // masked_fill): under an all-negative bias a kept expert still wins; the
        // weights are the scores without the bias.
        let got = route_rows(&logits, 1, &r, Some(&[-1.0; 8]));
        assert_eq!(got.experts, vec![2, 3]);
        assert!((got.weights[0] - 0.5).abs() < 1e-6 && (got.weights[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn group_limits_are_checked() {
        let mut r = routing(8, 2, MoeScoring::Sigmoid, true);
        for (groups, top_groups) in [(3, 1), (8, 1), (4, 0), (4, 5), (0, 0)] {
            r.group_limit = Some(GroupLimit { groups, top_groups });
            let e = r.check("t").unwrap_err();
            assert!(e.to_string().contains("expert groups"), "{e}");
        }
        r.group_limit = Some(GroupLimit {
            groups: 4,
            top_groups: 4,
        });
        assert!(r.check("t").is_ok());
    }

    #[test]
    fn a_route_from_outside_is_checked() {
        let r = routing(4, 2, MoeScoring::Softmax, true);
        let route = |experts: Vec<u32>| MoeRoute {
            weights: vec![0.5; experts.len()],
            experts,
        };
        assert!(check_route("t", &route(vec![0, 1, 3, 2]), 2, &r).is_ok());
        let e = check_route("t", &route(vec![0, 1, 3]), 2, &r).unwrap_err();
        assert!(e.to_string().contains("3 expert ids"), "{e}");
        let e = check_route("t", &route(vec![0, 4, 3, 2]), 2, &r).unwrap_err();
        assert!(e.to_string().contains("index 4"), "{e}");
        let e = check_route("t", &route(vec![0, 1, 2, 2]), 2, &r).unwrap_err();
        assert!(
            e.to_string().contains("token 1 chose an expert twice"),
            "{e}"
        );
    }
}
