//! The CPU backend's mixture-of-experts plan and ops: the router's choices stay on the
//! host, grouped by expert ([`MoeGroups`]); each expert GEMM gathers its pairs' input
//! rows into one grouped block, runs the grouped panel GEMM over it (each expert's
//! weights read once, the same chain per element as `matmul`), and scatters the rows
//! back to pair order. The copies are `pairs × (k + n)` values beside a GEMM of
//! `pairs × k × n` multiply-adds.

use super::{check_len, matmul, CpuWeight};
use crate::moe::{check_route, combine_order};
use crate::{MoeGroups, MoeInput, MoeRoute, MoeRouting, Result};
use rayon::prelude::*;
use std::cell::Cell;

/// One MoE layer's routing for one pass, on the host.
#[derive(Debug, Clone)]
pub struct CpuMoePlan {
    tokens: usize,
    routing: MoeRouting,
    route: MoeRoute,
    groups: MoeGroups,
    /// For each pair, its grouped row (the inverse of `groups.pairs`).
    grouped_row: Vec<u32>,
}

impl CpuMoePlan {
    pub(super) fn new(route: MoeRoute, tokens: usize, routing: &MoeRouting) -> Self {
        let groups = MoeGroups::new(&route.experts, routing.num_experts);
        let mut grouped_row = vec![0u32; groups.pairs.len()];
        for (g, &p) in groups.pairs.iter().enumerate() {
            grouped_row[p as usize] = g as u32;
        }
        CpuMoePlan {
            tokens,
            routing: *routing,
            route,
            groups,
            grouped_row,
        }
    }

    pub(super) fn checked(route: &MoeRoute, tokens: usize, routing: &MoeRouting) -> Result<Self> {
        check_route("moe_plan", route, tokens, routing)?;
        Ok(CpuMoePlan::new(route.clone(), tokens, routing))
    }

    pub(super) fn route(&self) -> &MoeRoute {
        &self.route
    }

    pub(super) fn active_experts(&self) -> usize {
        self.groups.active_experts()
    }

    fn pairs(&self) -> usize {
        self.tokens * self.routing.top_k
    }
}

thread_local! {
    /// The grouped input and output rows of the last expert GEMM on this thread, kept
    /// so that a prefill does not fault in fresh pages for every layer.
    static GROUPED: Cell<(Vec<f32>, Vec<f32>)> = Cell::default();
}

pub(super) fn moe_matmul(
    x: &[f32],
    input: MoeInput,
    plan: &CpuMoePlan,
    w: &CpuWeight,
    k: usize,
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "moe_matmul";
    let pairs = plan.pairs();
    let (source_rows, div) = match input {
        MoeInput::Tokens => (plan.tokens, plan.routing.top_k),
        MoeInput::Pairs => (pairs, 1),
    };
    check_len(OP, "x", x, source_rows * k)?;
    w.check(OP, "w", plan.routing.num_experts, n, k)?;
    check_len(OP, "out", out, pairs * n)?;
    if pairs == 0 || n == 0 {
        return Ok(());
    }
    let (mut grouped_x, mut grouped_out) = GROUPED.take();
    grouped_x.resize(pairs * k, 0.0);
    grouped_out.resize(pairs * n, 0.0);
    if k > 0 {
        grouped_x
            .par_chunks_mut(k)
            .zip(plan.groups.pairs.par_iter())
            .for_each(|(row, &p)| {
                let s = p as usize / div;
                row.copy_from_slice(&x[s * k..(s + 1) * k]);
            });
    }
    let panels = w.all_panels(OP)?;
    matmul::grouped_matmul_bt(
        &grouped_x,
        panels,
        &plan.groups.offsets,
        k,
        n,
        &mut grouped_out,
    );
    out[..pairs * n]
        .par_chunks_mut(n)
        .zip(plan.grouped_row.par_iter())
        .for_each(|(row, &g)| {
            let g = g as usize;
            row.copy_from_slice(&grouped_out[g * n..(g + 1) * n]);
        });
    GROUPED.set((grouped_x, grouped_out));
    Ok(())
}

pub(super) fn moe_combine(y: &[f32], plan: &CpuMoePlan, dim: usize, out: &mut [f32]) -> Result<()> {
    const OP: &str = "moe_combine";
    let (tokens, top_k) = (plan.tokens, plan.routing.top_k);
    check_len(OP, "y", y, plan.pairs() * dim)?;
    check_len(OP, "out", out, tokens * dim)?;
    if dim == 0 {
        return Ok(());
    }
    let route = &plan.route;
    out[..tokens * dim]
        .par_chunks_mut(dim)
        .enumerate()
        .for_each_init(Vec::new, |order, (t, o)| {
            combine_order(&route.experts[t * top_k..(t + 1) * top_k], order);
            o.iter_mut().for_each(|v| *v = 0.0);
            for &j in order.iter() {
                let p = t * top_k + j;
                let w = route.weights[p];
                for (v, &yv) in o.iter_mut().zip(&y[p * dim..(p + 1) * dim]) {
                    *v += w * yv;
                }
            }
        });
    Ok(())
}
