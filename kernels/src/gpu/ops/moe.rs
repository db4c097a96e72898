//! `kernels/hip/moe.hip` on the host: the fused top-k router (only the choices come
//! back, `top_k` ids and weights per row), the grouped expert GEMMs (one vendor GEMM per
//! expert that has rows, at pointer offsets into the packed `[experts, n, k]` weights)
//! and the weighted combine, with their conformance cases.
//!
//! The router's choices cross to the host once per MoE layer: the host groups them by
//! expert (`MoeGroups`) and launches each expert's GEMM with its row count. So a MoE
//! step synchronizes once per MoE layer and is not captured into a decode graph.

use crate::conformance::{output, Case, Gen, Visit};
use crate::gpu::launch::{grid1, launch};
use crate::gpu::{Device, Gemm, GpuBackend, GpuBuf, Launch};
use crate::moe::{MoeGroups, MoeRoute, MoeRouting, MoeScoring};
use crate::{shape, Backend, Dtype, Result};

/// `moe_route(ids, weights, x, gate, bias, hidden, experts, top_k, sigmoid, renormalize,
/// scale)`: one warp per row, into a grow-only area of its own: `[ids | weights]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn moe_route<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    gate: &GpuBuf<D>,
    rows: usize,
    hidden: usize,
    r: &MoeRouting,
    bias: Option<&GpuBuf<D>>,
) -> Result<MoeRoute> {
    r.check("moe_route")?;
    b.check("moe_route", "x", x, rows * hidden)?;
    b.check("moe_route", "gate", gate, r.num_experts * hidden)?;
    if let Some(bias) = bias {
        b.check("moe_route", "bias", bias, r.num_experts)?;
    }
    if rows == 0 {
        return Ok(MoeRoute::default());
    }
    let pairs = rows * r.top_k;
    let ids_bytes = (pairs * 4).next_multiple_of(256);
    let (area, guard) = b.grow(&b.moe_route, ids_bytes + pairs * 4)?;
    let cfg = Launch {
        grid: (rows as u32, 1, 1),
        block: (b.info().warp, 1, 1),
        shared: 0,
    };
    launch!(
        b,
        "moe_route",
        cfg,
        area,
        area + ids_bytes as u64,
        x.ptr,
        gate.ptr,
        bias.map_or(0u64, |x| x.ptr),
        hidden as i32,
        r.num_experts as i32,
        r.top_k as i32,
        (r.scoring == MoeScoring::Sigmoid) as i32,
        r.renormalize as i32,
        r.scale
    )?;
    b.not_capturing("a download")?;
    let mut bytes = vec![0u8; ids_bytes + pairs * 4];
    if let Some((_, mem, _)) = guard.as_ref() {
        b.dev.dtoh(mem, &mut bytes)?;
    }
    let word = |c: &[u8]| [c[0], c[1], c[2], c[3]];
    Ok(MoeRoute {
        experts: bytes[..pairs * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(word(c)))
            .collect(),
        weights: bytes[ids_bytes..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(word(c)))
            .collect(),
    })
}

/// One vendor GEMM per expert with rows: `out[r0..r1] = x[r0..r1] · w[e]ᵀ`.
pub(crate) fn grouped_matmul<D: Device>(
    b: &GpuBackend<D>,
    x: &GpuBuf<D>,
    w: &GpuBuf<D>,
    offsets: &[usize],
    k: usize,
    n: usize,
    out: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "grouped_matmul";
    shape::group_offsets(OP, offsets)?;
    let (experts, rows) = (offsets.len() - 1, offsets[offsets.len() - 1]);
    b.check(OP, "x", x, rows * k)?;
    b.check(OP, "w", w, experts * n * k)?;
    b.check(OP, "out", out, rows * n)?;
    let elem = b.dtype.bytes(1) as u64;
    for e in 0..experts {
        let (r0, r1) = (offsets[e], offsets[e + 1]);
        if r1 == r0 || n == 0 {
            continue;
        }
        // SAFETY: the checks above: rows r0..r1 of x and out, and expert e's block of w,
        // lie inside their allocations.
        unsafe {
            b.dispatch_gemm(
                b.dtype,
                Gemm {
                    m: r1 - r0,
                    n,
                    k,
                    x: x.ptr + (r0 * k) as u64 * elem,
                    w: w.ptr + (e * n * k) as u64 * elem,
                    out: out.ptr + (r0 * n) as u64 * elem,
                },
            )?
        };
    }
    Ok(())
}

/// `moe_combine(out, y, meta, dim, top_k, pairs)`: one block per token; the sources and
/// the weights' bits go up together through the combine's upload cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn moe_combine<D: Device>(
    b: &GpuBackend<D>,
    y: &GpuBuf<D>,
    dim: usize,
    top_k: usize,
    sources: &[u32],
    weights: &[f32],
    out: &mut GpuBuf<D>,
) -> Result<()> {
    const OP: &str = "moe_combine";
    let tokens = shape::combine_shape(OP, top_k, sources, weights, y.len / dim.max(1))?;
    b.check(OP, "out", out, tokens * dim)?;
    b.check_dtype(OP, "y", y)?;
    if tokens == 0 || dim == 0 {
        return Ok(());
    }
    let meta: Vec<u32> = sources
        .iter()
        .copied()
        .chain(weights.iter().map(|w| w.to_bits()))
        .collect();
    let meta = b.cached_u32s(&b.moe_meta, &meta)?;
    launch!(
        b,
        "moe_combine",
        grid1(tokens),
        out.ptr,
        y.ptr,
        meta,
        dim as i32,
        top_k as i32,
        sources.len() as i32
    )
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
        let got = b.moe_route(
            &x,
            &gate,
            self.rows,
            self.hidden,
            &self.routing,
            bias.as_ref(),
        )?;
        Ok(vec![
            ("", got.experts.iter().map(|&e| e as f32).collect()),
            ("weights", got.weights),
        ])
    }
}

struct Grouped {
    offsets: Vec<usize>,
    k: usize,
    n: usize,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case for Grouped {
    fn op(&self) -> String {
        "grouped_matmul".into()
    }
    fn shape(&self) -> String {
        let rows: Vec<String> = self
            .offsets
            .windows(2)
            .map(|w| (w[1] - w[0]).to_string())
            .collect();
        format!("[{}]x{}x{}", rows.join(","), self.k, self.n)
    }
    fn empty_input(&self) -> bool {
        self.offsets.last() == Some(&0)
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let rows = *self.offsets.last().unwrap_or(&0);
        let mut out = output(b, rows * self.n)?;
        let x = b.upload(&self.x)?;
        let w = b.upload_weight(&self.w, self.offsets.len() - 1, self.n, self.k)?;
        b.grouped_matmul(&x, &w, &self.offsets, self.k, self.n, &mut out)?;
        Ok(vec![("", b.download(&out)?)])
    }
}

struct Combine {
    dim: usize,
    top_k: usize,
    y: Vec<f32>,
    groups: MoeGroups,
}

impl Case for Combine {
    fn op(&self) -> String {
        "moe_combine".into()
    }
    fn shape(&self) -> String {
        let tokens = self.groups.sources.len() / self.top_k;
        format!("{tokens}x{} top{}", self.dim, self.top_k)
    }
    fn empty_input(&self) -> bool {
        self.groups.sources.is_empty()
    }
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let g = &self.groups;
        let mut out = output(b, g.sources.len() / self.top_k * self.dim)?;
        let y = b.upload(&self.y)?;
        b.moe_combine(&y, self.dim, self.top_k, &g.sources, &g.weights, &mut out)?;
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

/// Grouped rows for `tokens` tokens choosing `top_k` of `experts` at random.
fn random_groups(g: &mut Gen, tokens: usize, experts: usize, top_k: usize) -> MoeGroups {
    let mut route = MoeRoute::default();
    for _ in 0..tokens {
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < top_k {
            let e = g.range(0, experts - 1) as u32;
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        route.experts.extend(chosen);
        route.weights.extend(g.rand(top_k, 1.0));
    }
    MoeGroups::new(&route, tokens, top_k, experts)
}

/// The router at the released families' shapes (Mixtral 8 / top 2, Qwen3-MoE 128 / 8
/// unnormalized and normalized, MiniMax-M2 256 / 8 sigmoid with a selection bias, 512
/// experts), odd expert counts, a scaled router, and no rows; the grouped GEMM with
/// experts that get no rows, one row each (decode) and many (prefill); the combine at
/// top 1 to 8 and odd widths.
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
            },
            bias,
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
        },
        bias: None,
    })?;
    // Rows per expert.
    let groups: [(&[usize], usize, usize); 5] = [
        (&[0, 0, 0], 64, 96),
        (&[3, 0, 4, 1], 64, 96),
        (&[1, 1, 1, 1, 1, 1, 1, 1], 256, 33),
        (&[0, 17, 5, 0, 40], 96, 130),
        (&[2, 0, 0, 0, 0, 0, 0, 1], 7, 1),
    ];
    for (rows, k, n) in groups {
        let mut offsets = vec![0];
        for r in rows {
            offsets.push(offsets.last().unwrap() + r);
        }
        let total = *offsets.last().unwrap();
        v.case(Grouped {
            x: g.rand(total.max(1) * k, 1.0),
            w: g.rand(rows.len() * n * k, 0.05),
            offsets,
            k,
            n,
        })?;
    }
    // (tokens, dim, experts, top_k)
    for (tokens, dim, experts, top_k) in [
        (0, 64, 8, 2),
        (5, 64, 8, 2),
        (3, 4097, 16, 8),
        (6, 7, 4, 1),
        (2, 300, 8, 4),
    ] {
        let groups = random_groups(g, tokens, experts, top_k);
        v.case(Combine {
            dim,
            top_k,
            y: g.rand((tokens * top_k).max(1) * dim, 1.0),
            groups,
        })?;
    }
    Ok(())
}
