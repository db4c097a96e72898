//! `kernels/hip/moe.hip` on the host: the fused top-k router, the grouping of its
//! choices by expert, the expert GEMMs and the weighted combine, with their conformance
//! cases.
//!
//! A plan ([`GpuMoePlan`]) keeps the router's choices on the device, in pair order, in
//! one grow-only area. How it is grouped depends on the batch:
//! - **on the device**, for up to [`DEVICE_GROUPING_ROWS`] tokens (decode, and any step
//!   inside a graph pass): `moe_align` sorts the pairs by expert into padded runs, and
//!   `moe_gemm` reads that grouping where it lies. Nothing comes back to the host, every
//!   launch's geometry follows from the batch size alone (grids are sized for the worst
//!   grouping, and blocks past the used slots return), so the step is captured into a
//!   decode graph like a dense one.
//! - **on the host**, for a larger batch (prefill): the choices are copied back once per
//!   MoE layer, grouped by [`MoeGroups`], and each expert's rows run through the vendor
//!   GEMM (which uses the matrix cores), between a gather into grouped order and a
//!   scatter back to pair order.
//!
//! Either way the combine reads the choices on the device.

use crate::conformance::{output, Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch, Area};
use crate::gpu::{Device, Gemm, GpuBackend, GpuBuf, Launch};
use crate::moe::check_route;
use crate::{
    Backend, Dtype, Error, GroupLimit, MoeGroups, MoeInput, MoeRoute, MoeRouting, MoeScoring,
    Result,
};
use std::sync::atomic::Ordering;

/// The largest batch grouped on the device by default (the largest decode-graph bucket;
/// [`GpuBackend::set_moe_device_grouping_rows`] changes it). Inside a graph pass every
/// batch is.
pub const DEVICE_GROUPING_ROWS: usize = 256;

/// `NS_MOE_BM`, `NS_MOE_BN` and `NS_MOE_THREADS` in `moe.hip`: slots per `moe_gemm`
/// block (an expert's run is padded to a multiple), columns per block, threads.
const BM: usize = 8;
const BN: usize = 32;
const GEMM_THREADS: u32 = 256;

/// One MoE layer's routing for one pass: the choices on the device (pair order) and
/// their grouping by expert.
pub struct GpuMoePlan {
    tokens: usize,
    routing: MoeRouting,
    /// The area generation this plan was made in (see [`GpuBackend::moe_generation`]).
    generation: u64,
    /// `[pairs]` expert ids (u32) and weights (f32).
    ids: u64,
    weights: u64,
    /// Byte offset of the weights in the area (for [`Backend::moe_choices`]).
    weights_at: usize,
    grouping: Grouping,
}

enum Grouping {
    /// `moe_align`'s words at `plan`: offsets, each block's expert, each slot's pair.
    Device { plan: u64, max_blocks: usize },
    /// Grouped on the host: each expert's grouped rows, and each grouped row's pair
    /// (uploaded at `pairs`).
    Host { offsets: Vec<usize>, pairs: u64 },
}

impl GpuMoePlan {
    fn pairs(&self) -> usize {
        self.tokens * self.routing.top_k
    }
}

/// Where a plan of `pairs` choices over `experts` lives in the area.
struct Layout {
    weights_at: usize,
    plan_at: usize,
    max_blocks: usize,
    bytes: usize,
}

impl Layout {
    fn new(pairs: usize, experts: usize) -> Layout {
        let words = |n: usize| (n * 4).next_multiple_of(256);
        // Every expert with pairs pads its run by at most BM - 1 slots.
        let max_blocks = (pairs + pairs.min(experts) * (BM - 1)).div_ceil(BM);
        let weights_at = words(pairs);
        let plan_at = weights_at + words(pairs);
        let plan_words = experts + 1 + max_blocks + max_blocks * BM;
        Layout {
            weights_at,
            plan_at,
            max_blocks,
            bytes: plan_at + words(plan_words),
        }
    }
}

/// The plan area, locked, for one new plan.
struct PlanArea<'a, D: Device> {
    base: u64,
    generation: u64,
    guard: std::sync::MutexGuard<'a, Option<Area<D>>>,
}

impl<D: Device> GpuBackend<D> {
    /// The plan area, grown to `layout`, as a new generation: every older plan is stale
    /// from here on.
    fn moe_area(&self, layout: &Layout) -> Result<PlanArea<'_, D>> {
        let (base, guard) = self.grow(&self.moe_route, layout.bytes)?;
        let generation = self.moe_generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(PlanArea {
            base,
            generation,
            guard,
        })
    }

    fn check_plan(&self, op: &'static str, plan: &GpuMoePlan) -> Result<()> {
        if plan.generation != self.moe_generation.load(Ordering::Relaxed) {
            return Err(Error::Shape {
                op,
                msg: "the MoE plan is stale: a later moe_route or moe_plan reused its area".into(),
            });
        }
        Ok(())
    }

    /// Groups the choices just written to the area: on the device for a decode-sized
    /// batch or inside a graph pass, else on the host.
    fn moe_group(
        &self,
        op: &'static str,
        area: PlanArea<'_, D>,
        layout: Layout,
        tokens: usize,
        r: &MoeRouting,
    ) -> Result<GpuMoePlan> {
        let PlanArea {
            base,
            generation,
            guard,
        } = area;
        let pairs = tokens * r.top_k;
        let on_device = tokens <= self.moe_device_rows.load(Ordering::Relaxed)
            || self.graph_active.load(Ordering::Relaxed);
        let grouping = if on_device {
            let plan = base + layout.plan_at as u64;
            if pairs > 0 {
                let cfg = Launch {
                    grid: (1, 1, 1),
                    block: (GEMM_THREADS, 1, 1),
                    shared: 0,
                };
                launch!(
                    self,
                    "moe_align",
                    cfg,
                    plan,
                    self.moe_read.1,
                    base,
                    pairs as i32,
                    r.num_experts as i32,
                    layout.max_blocks as i32
                )?;
            }
            Grouping::Device {
                plan,
                max_blocks: layout.max_blocks,
            }
        } else {
            self.not_capturing("a MoE grouping on the host")?;
            let mut bytes = vec![0u8; pairs * 4];
            let (_, mem, _) = guard.as_ref().ok_or_else(|| Error::Shape {
                op,
                msg: "no plan area".into(),
            })?;
            self.dev.dtoh(mem, &mut bytes)?;
            let ids: Vec<u32> = bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let g = MoeGroups::new(&ids, r.num_experts);
            self.moe_host_read
                .fetch_add(g.active_experts() as u64, Ordering::Relaxed);
            Grouping::Host {
                pairs: self.cached_u32s(&self.moe_meta, &g.pairs)?,
                offsets: g.offsets,
            }
        };
        Ok(GpuMoePlan {
            tokens,
            routing: *r,
            generation,
            ids: base,
            weights: base + layout.weights_at as u64,
            weights_at: layout.weights_at,
            grouping,
        })
    }
}

/// `moe_route(ids, weights, x, gate, bias, hidden, experts, top_k, sigmoid, renormalize,
/// scale)`: one warp per row, into the plan area; then the grouping.
#[allow(clippy::too_many_arguments)]
pub(crate) fn moe_route<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    gate: &GpuBuf<D>,
    rows: usize,
    hidden: usize,
    r: &MoeRouting,
    bias: Option<&GpuBuf<D>>,
) -> Result<GpuMoePlan> {
    const OP: &str = "moe_route";
    r.check(OP)?;
    b.check(OP, "x", x, rows * hidden)?;
    b.check(OP, "gate", gate, r.num_experts * hidden)?;
    if let Some(bias) = bias {
        b.check(OP, "bias", bias, r.num_experts)?;
    }
    let layout = Layout::new(rows * r.top_k, r.num_experts);
    let area = b.moe_area(&layout)?;
    let base = area.base;
    let cfg = Launch {
        grid: (rows as u32, 1, 1),
        block: (b.info().warp, 1, 1),
        shared: 0,
    };
    launch!(
        b,
        "moe_route",
        cfg,
        base,
        base + layout.weights_at as u64,
        x.ptr,
        gate.ptr,
        bias.map_or(0u64, |x| x.ptr),
        hidden as i32,
        r.num_experts as i32,
        r.top_k as i32,
        (r.scoring == MoeScoring::Sigmoid) as i32,
        r.renormalize as i32,
        r.scale,
        r.group_limit.map_or(0, |g| g.groups as i32),
        r.group_limit.map_or(0, |g| g.top_groups as i32)
    )?;
    b.moe_group(OP, area, layout, rows, r)
}

/// A plan from host choices: they go up into the plan area, then the grouping.
pub(crate) fn moe_plan<D: Device>(
    b: &GpuBackend<D>,
    route: &MoeRoute,
    tokens: usize,
    r: &MoeRouting,
) -> Result<GpuMoePlan> {
    const OP: &str = "moe_plan";
    check_route(OP, route, tokens, r)?;
    b.not_capturing("a MoE plan upload")?;
    let layout = Layout::new(tokens * r.top_k, r.num_experts);
    let mut area = b.moe_area(&layout)?;
    if let Some((_, mem, _)) = area.guard.as_mut() {
        let ids: Vec<u8> = route.experts.iter().flat_map(|e| e.to_le_bytes()).collect();
        let weights: Vec<u8> = route.weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        if !ids.is_empty() {
            b.dev.write(mem, 0, &ids)?;
            b.dev.write(mem, layout.weights_at, &weights)?;
        }
    }
    b.moe_group(OP, area, layout, tokens, r)
}

/// The plan's choices, copied back.
pub(crate) fn moe_choices<D: Device>(b: &GpuBackend<D>, plan: &GpuMoePlan) -> Result<MoeRoute> {
    const OP: &str = "moe_choices";
    b.check_plan(OP, plan)?;
    b.not_capturing("a download")?;
    let pairs = plan.pairs();
    let mut bytes = vec![0u8; plan.weights_at + pairs * 4];
    let guard = b.moe_route.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, mem, _)) = guard.as_ref() {
        if pairs > 0 {
            b.dev.dtoh(mem, &mut bytes)?;
        }
    }
    let word = |c: &[u8]| [c[0], c[1], c[2], c[3]];
    Ok(MoeRoute {
        experts: bytes[..pairs * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(word(c)))
            .collect(),
        weights: bytes[plan.weights_at..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(word(c)))
            .collect(),
    })
}

/// The expert GEMMs: `moe_gemm` over a device grouping, or gather, one vendor GEMM per
/// expert with rows, and scatter over a host one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn moe_matmul<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    input: MoeInput,
    plan: &GpuMoePlan,
    w: &GpuBuf<D>,
    k: usize,
    n: usize,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "moe_matmul";
    b.check_plan(OP, plan)?;
    let (pairs, experts) = (plan.pairs(), plan.routing.num_experts);
    let (source_rows, div) = match input {
        MoeInput::Tokens => (plan.tokens, plan.routing.top_k),
        MoeInput::Pairs => (pairs, 1),
    };
    b.check(OP, "x", x, source_rows * k)?;
    b.check(OP, "w", w, experts * n * k)?;
    b.check(OP, "out", out, pairs * n)?;
    if pairs == 0 || n == 0 {
        return Ok(());
    }
    match &plan.grouping {
        Grouping::Device {
            plan: words,
            max_blocks,
        } => {
            let cfg = Launch {
                grid: (*max_blocks as u32, n.div_ceil(BN) as u32, 1),
                block: (GEMM_THREADS, 1, 1),
                shared: 0,
            };
            launch!(
                b,
                "moe_gemm",
                cfg,
                out.ptr,
                x.ptr,
                w.ptr,
                *words,
                div as i32,
                k as i32,
                n as i32,
                experts as i32,
                *max_blocks as i32
            )
        }
        Grouping::Host {
            offsets,
            pairs: rows,
        } => {
            let elem = b.dtype.bytes(1);
            let (grouped_x, _guard) = b.grow(&b.moe_rows, elem * pairs * (k + n))?;
            let grouped_out = grouped_x + (elem * pairs * k) as u64;
            launch!(
                b,
                "moe_gather",
                grid1(pairs),
                grouped_x,
                x.ptr,
                *rows,
                div as i32,
                k as i32
            )?;
            let elem = elem as u64;
            for e in 0..experts {
                let (r0, r1) = (offsets[e], offsets[e + 1]);
                if r1 == r0 {
                    continue;
                }
                // SAFETY: grouped rows r0..r1 lie in the two halves of the rows area
                // (pairs rows of k, then of n), and expert e's block of w inside w
                // (checked above).
                unsafe {
                    b.dispatch_gemm(
                        b.dtype,
                        Gemm {
                            m: r1 - r0,
                            n,
                            k,
                            x: grouped_x + (r0 * k) as u64 * elem,
                            w: w.ptr + (e * n * k) as u64 * elem,
                            out: grouped_out + (r0 * n) as u64 * elem,
                        },
                    )?
                };
            }
            launch!(
                b,
                "moe_scatter",
                grid1(pairs),
                out.ptr,
                grouped_out,
                *rows,
                n as i32
            )
        }
    }
}

/// `moe_combine(out, y, ids, weights, dim, top_k)`: one block per token.
pub(crate) fn moe_combine<D: Device>(
    b: &GpuBackend<D>,
    y: &GpuBuf<D>,
    plan: &GpuMoePlan,
    dim: usize,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "moe_combine";
    b.check_plan(OP, plan)?;
    b.check(OP, "y", y, plan.pairs() * dim)?;
    b.check(OP, "out", out, plan.tokens * dim)?;
    if dim == 0 {
        return Ok(());
    }
    launch!(
        b,
        "moe_combine",
        grid1(plan.tokens),
        out.ptr,
        y.ptr,
        plan.ids,
        plan.weights,
        dim as i32,
        plan.routing.top_k as i32
    )
}

/// Experts read so far: the device's count (`moe_align`) plus the host groupings'.
pub(crate) fn moe_experts_read<D: Device>(b: &GpuBackend<D>) -> Result<u64> {
    b.not_capturing("a download")?;
    let mut bytes = [0u8; 8];
    b.dev.dtoh(&b.moe_read.0, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes) + b.moe_host_read.load(Ordering::Relaxed))
}

struct Route {
    rows: usize,
    hidden: usize,
    routing: MoeRouting,
    x: Vec<f32>,
    gate: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Case for Route {
    fn op(&self) -> String {
        let s = match self.routing.scoring {
            MoeScoring::Softmax => "softmax",
            MoeScoring::Sigmoid => "sigmoid",
        };
        format!("moe_route {s}")
    }
    fn shape(&self) -> String {
        let r = &self.routing;
        let mut s = format!(
            "{}x{}x{} top{}",
            self.rows, self.hidden, r.num_experts, r.top_k
        );
        if r.renormalize {
            s += " norm";
        }
        if self.bias.is_some() {
            s += " bias";
        }
        if r.scale != 1.0 {
            s += &format!(" x{}", r.scale);
        }
        if let Some(g) = r.group_limit {
            s += &format!(" groups {}/{}", g.top_groups, g.groups);
        }
        s
    }
    /// Expert ids must be exact, and the weights are f32 math over the same rounded
    /// inputs whatever the storage type.
    fn tolerance(&self, _: Dtype) -> f64 {
        1e-4
    }
    fn empty_input(&self) -> bool {
        self.rows == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let x = b.upload(&self.x)?;
        let gate = b.upload_weight(&self.gate, 1, self.routing.num_experts, self.hidden)?;
        let bias = self.bias.as_deref().map(|v| b.upload(v)).transpose()?;
        let plan = b.moe_route(
            &x,
            &gate,
            self.rows,
            self.hidden,
            &self.routing,
            bias.as_ref(),
        )?;
        let got = b.moe_choices(&plan)?;
        Ok(vec![
            ("", got.experts.iter().map(|&e| e as f32).collect()),
            ("weights", got.weights),
        ])
    }
}

/// A plan's routing for `tokens` tokens choosing `top_k` of `experts` (only those
/// two numbers matter once the choices are made).
fn routing_of(experts: usize, top_k: usize) -> MoeRouting {
    MoeRouting {
        num_experts: experts,
        top_k,
        scoring: MoeScoring::Softmax,
        renormalize: false,
        scale: 1.0,
        group_limit: None,
    }
}

struct ExpertMatmul {
    tokens: usize,
    routing: MoeRouting,
    route: MoeRoute,
    input: MoeInput,
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case for ExpertMatmul {
    fn op(&self) -> String {
        match self.input {
            MoeInput::Tokens => "moe_matmul tokens".into(),
            MoeInput::Pairs => "moe_matmul pairs".into(),
        }
    }
    fn shape(&self) -> String {
        let grouping = if self.tokens <= DEVICE_GROUPING_ROWS {
            "device"
        } else {
            "host"
        };
        format!(
            "{}x{}x{} {} experts top{} {grouping}",
            self.tokens, self.k, self.n, self.routing.num_experts, self.routing.top_k
        )
    }
    fn empty_input(&self) -> bool {
        self.tokens == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let pairs = self.tokens * self.routing.top_k;
        let mut out = output(b, pairs * self.n)?;
        let x = b.upload(&self.x)?;
        let w = b.upload_weight(&self.w, self.routing.num_experts, self.n, self.k)?;
        let plan = b.moe_plan(&self.route, self.tokens, &self.routing)?;
        b.moe_matmul(&x, self.input, &plan, &w, self.k, self.n, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

struct Combine {
    tokens: usize,
    dim: usize,
    routing: MoeRouting,
    route: MoeRoute,
    y: Vec<f32>,
}

impl Case for Combine {
    fn op(&self) -> String {
        "moe_combine".into()
    }
    fn shape(&self) -> String {
        format!("{}x{} top{}", self.tokens, self.dim, self.routing.top_k)
    }
    fn empty_input(&self) -> bool {
        self.tokens == 0
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let mut out = output(b, self.tokens * self.dim)?;
        let y = b.upload(&self.y)?;
        let plan = b.moe_plan(&self.route, self.tokens, &self.routing)?;
        b.moe_combine(&y, &plan, self.dim, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

/// Router inputs whose logits have no near-ties in any storage type: `x`'s first
/// `experts` columns are a shuffled ramp over -2..2 per row (distinct after rounding to
/// bf16, away from the sigmoid's flat tails) and the rest random; the router's row `e` is
/// 1 at column `e` and 0 elsewhere, so every logit is exactly its ramp value after a
/// full-length dot product. The oracle and the target must agree on every choice.
fn ramp_router(g: &mut Gen, rows: usize, hidden: usize, experts: usize) -> (Vec<f32>, Vec<f32>) {
    let mut x = Vec::with_capacity(rows * hidden);
    for _ in 0..rows {
        let ramp = (0..experts).map(|i| (i as f32 - experts as f32 / 2.0) * 4.0 / experts as f32);
        x.extend(shuffled(g, ramp.collect()));
        x.extend(g.rand(hidden - experts, 1.0));
    }
    let mut gate = vec![0f32; experts * hidden];
    for e in 0..experts {
        gate[e * hidden + e] = 1.0;
    }
    (g.round(&x), gate)
}

fn shuffled(g: &mut Gen, mut v: Vec<f32>) -> Vec<f32> {
    for i in (1..v.len()).rev() {
        v.swap(i, g.range(0, i));
    }
    v
}

/// `tokens` tokens choosing `top_k` distinct experts each, from `pool` (the first
/// `pool` experts: a small pool piles many pairs onto a few experts), with weights.
fn random_route(g: &mut Gen, tokens: usize, pool: usize, top_k: usize) -> MoeRoute {
    let mut route = MoeRoute::default();
    for _ in 0..tokens {
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < top_k {
            let e = g.range(0, pool - 1) as u32;
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        route.experts.extend(chosen);
        route.weights.extend(g.rand(top_k, 1.0));
    }
    route
}

fn other(input: MoeInput) -> MoeInput {
    match input {
        MoeInput::Tokens => MoeInput::Pairs,
        MoeInput::Pairs => MoeInput::Tokens,
    }
}

/// The router at the released families' shapes (Mixtral 8 / top 2, Qwen3-MoE 128 / 8
/// unnormalized and normalized, MiniMax-M2 256 / 8 sigmoid with a selection bias, 512
/// experts), odd expert counts, a scaled router, no rows, and DeepSeek-V3's
/// group-limited selection; the expert GEMMs from tokens and from pairs, grouped on the
/// device (decode, experts with many pairs, k and n tails, no tokens) and on the host
/// (a prefill past the device limit); the combine at top 1 to 8, odd widths, and past
/// the device limit.
pub(super) fn cases(g: &mut Gen, v: &mut impl Visit) -> Result<()> {
    let soft = MoeScoring::Softmax;
    let sig = MoeScoring::Sigmoid;
    // (rows, hidden, experts, top_k, scoring, renormalize, bias, scale)
    let routes = [
        (0, 64, 8, 2, soft, true, false, 1.0),
        (1, 64, 8, 2, soft, true, false, 1.0),
        (7, 96, 8, 2, soft, true, false, 1.0),
        (5, 256, 128, 8, soft, true, false, 1.0),
        (3, 130, 128, 8, soft, false, false, 1.0),
        (4, 300, 256, 8, sig, true, true, 1.0),
        (2, 33, 33, 3, sig, false, false, 2.5),
        (3, 64, 64, 6, soft, true, false, 2.5),
        (2, 512, 512, 8, soft, true, false, 1.0),
        (9, 7, 4, 1, soft, false, false, 1.0),
    ];
    for (rows, hidden, experts, top_k, scoring, renormalize, bias, scale) in routes {
        let (x, gate) = ramp_router(g, rows.max(1), hidden, experts);
        // A selection bias of distinct integers: it decides the choice (the scores span
        // less than 1), and the weights must still be the scores.
        let bias = bias.then(|| shuffled(g, (0..experts).map(|i| i as f32).collect()));
        v.case(Route {
            rows,
            hidden,
            x,
            gate,
            routing: MoeRouting {
                num_experts: experts,
                top_k,
                scoring,
                renormalize,
                scale,
                group_limit: None,
            },
            bias,
        })?;
    }
    // Group-limited selection (DeepSeek-V3: 256 experts in 8 groups, the best 4 groups
    // kept, top 8, scaled 2.5; a smaller one; and a negative bias, under which the masked
    // experts (selection score -inf) still lose to every kept one). The bias
    // is 3x a shuffled group rank for every expert of a group, so groups never tie
    // (their top-2 sums differ by more than the scores can), and within a group the
    // ramp decides.
    // (rows, hidden, experts, top_k, groups, top_groups, bias offset, scale)
    for (rows, hidden, experts, top_k, groups, top_groups, offset, scale) in [
        (4, 300, 256, 8, 8, 4, 0.0, 2.5),
        (3, 64, 64, 6, 8, 3, 0.0, 1.0),
        (2, 40, 32, 4, 4, 2, -100.0, 1.0),
    ] {
        let (x, gate) = ramp_router(g, rows, hidden, experts);
        let ranks = shuffled(g, (0..groups).map(|i| i as f32).collect());
        let size = experts / groups;
        let bias = (0..experts)
            .map(|i| 3.0 * ranks[i / size] + offset)
            .collect();
        v.case(Route {
            rows,
            hidden,
            x,
            gate,
            routing: MoeRouting {
                num_experts: experts,
                top_k,
                scoring: sig,
                renormalize: true,
                scale,
                group_limit: Some(GroupLimit { groups, top_groups }),
            },
            bias: Some(bias),
        })?;
    }
    // A dense random router (real sums in every logit), over 8 experts.
    let (rows, hidden, experts) = (6, 200, 8);
    v.case(Route {
        rows,
        hidden,
        x: g.rand(rows * hidden, 1.0),
        gate: g.rand(experts * hidden, 0.1),
        routing: MoeRouting {
            num_experts: experts,
            top_k: 2,
            scoring: soft,
            renormalize: true,
            scale: 1.0,
            group_limit: None,
        },
        bias: None,
    })?;
    // The expert GEMMs: (tokens, k, n, experts, pool, top_k). Decode shapes (a token's
    // pairs spread over many experts), experts with many pairs (runs of several blocks,
    // a partial last block), k over one chunk of shared memory with a tail, n with a
    // partial column tile, no tokens, and a prefill over the device grouping's limit
    // (grouped on the host, vendor GEMMs).
    let shapes = [
        (1, 256, 96, 128, 128, 8),
        (4, 64, 33, 8, 8, 2),
        (20, 300, 40, 8, 2, 1),
        (13, 520, 70, 16, 5, 3),
        (0, 64, 32, 8, 8, 2),
        (DEVICE_GROUPING_ROWS + 44, 48, 40, 8, 8, 2),
    ];
    for (i, (tokens, k, n, experts, pool, top_k)) in shapes.into_iter().enumerate() {
        let input = if i % 2 == 0 {
            MoeInput::Tokens
        } else {
            MoeInput::Pairs
        };
        for input in [input, other(input)]
            .into_iter()
            .take(if i < 2 { 2 } else { 1 })
        {
            let source_rows = match input {
                MoeInput::Tokens => tokens,
                MoeInput::Pairs => tokens * top_k,
            };
            v.case(ExpertMatmul {
                tokens,
                routing: routing_of(experts, top_k),
                route: random_route(g, tokens, pool, top_k),
                input,
                k,
                n,
                x: g.rand(source_rows.max(1) * k, 1.0),
                w: g.rand(experts * n * k, 0.05),
            })?;
        }
    }
    // (tokens, dim, experts, top_k)
    for (tokens, dim, experts, top_k) in [
        (0, 64, 8, 2),
        (5, 64, 8, 2),
        (3, 4097, 16, 8),
        (6, 7, 4, 1),
        (2, 300, 8, 4),
        (DEVICE_GROUPING_ROWS + 1, 40, 8, 2),
    ] {
        v.case(Combine {
            tokens,
            dim,
            routing: routing_of(experts, top_k),
            route: random_route(g, tokens, experts, top_k),
            y: g.rand((tokens * top_k).max(1) * dim, 1.0),
        })?;
    }
    Ok(())
}
