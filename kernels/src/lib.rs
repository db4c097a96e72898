//! Compute backends for novastack.
//!
//! The [`Backend`] trait lists only the ops the models call. [`CpuBackend`] is the
//! reference implementation (the oracle): f32 math, deterministic and batch-invariant,
//! meaning a row's result never depends on what else is in the batch. GPU backends
//! are checked against it, op by op, with the cases of [`conformance`].
//!
//! Layout: `cpu/` is the oracle; `gpu/` is the host side of the GPU backend, written
//! once for both vendors (`gpu/ops/*.rs` beside the `hip/*.hip` kernels they launch,
//! each with its conformance cases); `vendor/` holds the AMD and NVIDIA runtimes behind
//! `gpu::Device`. The host-side GPU code builds without any vendor feature, so its
//! tests (against a recording device) and the conformance table run everywhere.

pub mod conformance;
pub mod cpu;
mod dtype;
mod error;
pub mod gpu;
mod latent;
pub mod moe;
mod paged;
mod shape;
pub mod vendor;
mod weight_format;

/// The kernel sources (HIP C++), compiled at start-up by hiprtc or NVRTC.
pub mod sources {
    pub const KERNELS: &[(&str, &str)] = &[
        ("elementwise.hip", include_str!("../hip/elementwise.hip")),
        ("norm.hip", include_str!("../hip/norm.hip")),
        ("rope.hip", include_str!("../hip/rope.hip")),
        ("cache.hip", include_str!("../hip/cache.hip")),
        ("attention.hip", include_str!("../hip/attention.hip")),
        ("sampling.hip", include_str!("../hip/sampling.hip")),
        ("moe.hip", include_str!("../hip/moe.hip")),
        ("latent.hip", include_str!("../hip/latent.hip")),
    ];
    pub const COMPAT_H: &str = include_str!("../hip/compat.h");
}

pub use cpu::CpuBackend;
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use gpu::GraphPhase;
pub use latent::{HeadLayout, LatentShape};
pub use moe::{GroupLimit, MoeGroups, MoeInput, MoeRoute, MoeRouting, MoeScoring};
pub use paged::{AttentionMetadata, KvCache, KvCacheConfig, SeqAttention};
pub use weight_format::{StoredRows, WeightFormat};

/// The ops a decoder-only transformer needs. Shapes are given explicitly; buffers are
/// row-major. Each op checks its shapes and returns an error rather than panicking.
pub trait Backend: Send + Sync {
    /// A buffer of values on the backend's device, stored as [`Backend::dtype`] says
    /// and seen as f32 by the host.
    type Buf: Send + Sync;
    /// A weight matrix for [`Backend::matmul`], [`Backend::moe_matmul`],
    /// [`Backend::moe_route`] and [`Backend::embedding`], laid out as the backend's
    /// kernels read it (the CPU packs column panels; a GPU keeps the rows).
    type Weight: Send + Sync;
    /// A MoE layer's routing for one pass ([`Backend::moe_route`]): each token's
    /// experts and weights, grouped by expert where the backend keeps them.
    type MoePlan: Send + Sync;

    fn name(&self) -> &'static str;

    /// Copies host data to a new device buffer.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// Uploads a weight: `groups` blocks of `[n, k]` values back to back (row-major,
    /// the Hugging Face `Linear` layout), one block for all but a MoE layer's experts.
    fn upload_weight(
        &self,
        data: &[f32],
        groups: usize,
        n: usize,
        k: usize,
    ) -> Result<Self::Weight>;
    /// Uploads one `[Σ rows, k]` weight kept in its file's precision, its rows in
    /// `parts` (each in its own format; a fused projection's parts may differ), for
    /// [`Backend::matmul`] and [`Backend::embedding`]. `None`: this backend computes on
    /// f32 (or its own dtype) only, and the caller uploads the values widened instead.
    fn upload_stored_weight(
        &self,
        _parts: &[StoredRows],
        _k: usize,
    ) -> Result<Option<Self::Weight>> {
        Ok(None)
    }
    /// Runs one forward pass (`f`, which calls this backend's ops). The CPU runs it on a
    /// thread of its pool, so that each parallel op forks from a worker rather than
    /// handing work to the pool and sleeping until it is done (one wake-up per pass
    /// instead of one per op).
    fn run_pass<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }
    /// Whether [`Backend::upload_stored_weight`] may keep a weight as stored (so a loader
    /// reads a tensor's raw bytes only when they can be used).
    fn keeps_stored_weights(&self) -> bool {
        false
    }
    /// Bytes of device storage a weight holds (what a pass over it reads); 0 where the
    /// backend does not say.
    fn weight_bytes(&self, _w: &Self::Weight) -> usize {
        0
    }
    /// A new zero-filled buffer of `len` values.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// Copies a device buffer to the host.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// The first `len` values of a device buffer (all of it if shorter): what reads a
    /// few rows out of a grow-only workspace buffer without copying the rest.
    fn download_prefix(&self, buf: &Self::Buf, len: usize) -> Result<Vec<f32>> {
        let mut v = self.download(buf)?;
        v.truncate(len);
        Ok(v)
    }
    /// The storage type of `buf` (fixed when it was allocated or uploaded).
    fn dtype(&self, buf: &Self::Buf) -> Dtype;

    /// `out[i, :] = table[ids[i], :]`; `table` is `[vocab, hidden]`.
    fn embedding(
        &self,
        table: &Self::Weight,
        vocab: usize,
        hidden: usize,
        ids: &[u32],
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Row-wise RMSNorm of `x` `[rows, dim]` with weight `[dim]`, into `out`.
    fn rms_norm(
        &self,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `residual += x`, then `out = rms_norm(residual)`: the fused pre-norm step.
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        residual: &mut Self::Buf,
        x: &Self::Buf,
        weight: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `residual += x` over `len` values.
    fn add_inplace(&self, residual: &mut Self::Buf, x: &Self::Buf, len: usize) -> Result<()>;

    /// `out = x · wᵀ (+ bias)`: `x` is `[m, k]`, `w` is `[n, k]` (the Hugging Face
    /// `Linear` layout), `bias` is `[n]`, `out` is `[m, n]`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        x: &Self::Buf,
        w: &Self::Weight,
        bias: Option<&Self::Buf>,
        m: usize,
        k: usize,
        n: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Rotary embedding in place, neox style (rotate halves), over `num_heads` heads of
    /// `head_dim` values from column `col_offset` of each row of `x` (row stride
    /// `row_stride`): the first `rotary_dim` values of each head rotate (partial rotary,
    /// MiniMax-M2), the rest pass through. `cos_sin` is `[max_positions, rotary_dim]`:
    /// cos in the first half, sin in the second.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &mut Self::Buf,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
        positions: &[u32],
        cos_sin: &Self::Buf,
    ) -> Result<()>;

    /// Writes each token's key and value into the paged cache at `slot_mapping[i]`;
    /// a row whose slot is [`PADDING_SLOT`] writes nothing.
    /// `qkv` rows hold `[q | k | v]`; `k` starts at column `k_offset`, `v` right after.
    #[allow(clippy::too_many_arguments)]
    fn reshape_and_cache(
        &self,
        qkv: &Self::Buf,
        row_stride: usize,
        k_offset: usize,
        cache: &KvCacheConfig,
        slot_mapping: &[u32],
        key_cache: &mut Self::Buf,
        value_cache: &mut Self::Buf,
    ) -> Result<()>;

    /// Causal attention of each query over its sequence's paged cache.
    /// Queries are the first `num_heads * head_dim` columns of each `qkv` row.
    /// `out` is `[num_tokens, num_heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn paged_attention(
        &self,
        qkv: &Self::Buf,
        row_stride: usize,
        num_heads: usize,
        cache: &KvCacheConfig,
        key_cache: &Self::Buf,
        value_cache: &Self::Buf,
        meta: &AttentionMetadata,
        scale: f32,
        sliding_window: Option<usize>,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Per-head GEMMs (multi-head latent attention's absorbed up-projections): for each
    /// of `rows` rows and `heads` heads, the head's `k` values of `x` (at `layout`)
    /// times head `h`'s `[n, k]` weight (group `h` of `w`), into `out`
    /// `[rows, heads * n]`. Each output is the same in-order sum as [`Backend::matmul`]'s,
    /// so a row's result does not depend on the batch.
    #[allow(clippy::too_many_arguments)]
    fn head_matmul(
        &self,
        x: &Self::Buf,
        layout: HeadLayout,
        rows: usize,
        heads: usize,
        w: &Self::Weight,
        k: usize,
        n: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Writes `cache.slot_len()` values from column `col_offset` of each token's row of
    /// `src` (row stride `row_stride`) into `cache_buf` at `slot_mapping[i]`: the latent
    /// cache's write (one buffer, no values); a [`PADDING_SLOT`] row writes nothing.
    #[allow(clippy::too_many_arguments)]
    fn cache_rows(
        &self,
        src: &Self::Buf,
        row_stride: usize,
        col_offset: usize,
        cache: &KvCacheConfig,
        slot_mapping: &[u32],
        cache_buf: &mut Self::Buf,
    ) -> Result<()>;

    /// Causal multi-head latent attention over a latent cache (one slot per token:
    /// `[latent (latent_dim) | roped shared key (rope_dim)]`, `cache.head_dim` wide):
    /// query head `h` of each row scores key `t` as
    /// `scale · (q_latent[h] · latent_t + q_rope[h] · rope_t)`, and its output
    /// (`out` `[rows, heads * latent_dim]`) is the softmax-weighted sum of the latents.
    /// `q_latent` is `[rows, heads * latent_dim]` (the query with the key up-projection
    /// absorbed); the roped query parts sit at `rope`.
    #[allow(clippy::too_many_arguments)]
    fn latent_attention(
        &self,
        q_latent: &Self::Buf,
        q_rope: &Self::Buf,
        rope: HeadLayout,
        shape: LatentShape,
        cache: &KvCacheConfig,
        latent_cache: &Self::Buf,
        meta: &AttentionMetadata,
        scale: f32,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// `out[i, j] = silu(x[i, j]) * x[i, inter + j]` for `x` `[rows, 2 * inter]`.
    fn silu_and_mul(
        &self,
        x: &Self::Buf,
        rows: usize,
        inter: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// RMSNorm applied in place to each head of each row (Qwen3's q/k norm): heads are
    /// `head_dim` values starting at `col_offset`, rows are `row_stride` apart.
    #[allow(clippy::too_many_arguments)]
    fn head_rms_norm(
        &self,
        x: &mut Self::Buf,
        rows: usize,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        weight: &Self::Buf,
        eps: f32,
    ) -> Result<()>;

    /// Gathers rows `indices` of `x` `[_, dim]` into `out` `[indices.len(), dim]`.
    fn gather_rows(
        &self,
        x: &Self::Buf,
        dim: usize,
        indices: &[usize],
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// Mixture-of-experts routing, fused with the router: for each of `rows` rows of `x`
    /// (`[rows, hidden]`), the logits `x · gateᵀ` (`gate` is `[num_experts, hidden]`)
    /// in f32, never rounded to the storage type (a rounded logit flips near-tied
    /// experts), then the `top_k` experts and weights that `routing`'s rule picks
    /// ([`moe::route_rows`] is the reference); `bias` (`[num_experts]`, the
    /// `e_score_correction_bias`) shifts the selection, not the weights. The choices
    /// stay where the backend keeps them, grouped by expert for
    /// [`Backend::moe_matmul`] and [`Backend::moe_combine`]: a GPU backend groups a
    /// decode-sized batch on the device, so the step never waits for the router.
    ///
    /// A plan is valid until the next `moe_route` or `moe_plan` on this backend (they
    /// reuse one area); using an older one is an error, not a wrong answer.
    #[allow(clippy::too_many_arguments)]
    fn moe_route(
        &self,
        x: &Self::Buf,
        gate: &Self::Weight,
        rows: usize,
        hidden: usize,
        routing: &MoeRouting,
        bias: Option<&Self::Buf>,
    ) -> Result<Self::MoePlan>;

    /// A plan from choices made elsewhere (`route.experts` and `route.weights`,
    /// `tokens * routing.top_k` each, a token's experts distinct), grouped as
    /// [`Backend::moe_route`] groups its own.
    fn moe_plan(
        &self,
        route: &MoeRoute,
        tokens: usize,
        routing: &MoeRouting,
    ) -> Result<Self::MoePlan>;

    /// A plan's choices on the host (a GPU backend waits for the device).
    fn moe_choices(&self, plan: &Self::MoePlan) -> Result<MoeRoute>;

    /// The expert GEMMs of a MoE layer: `w` holds the experts' `[n, k]` weights back to
    /// back, and each pair `p = t · top_k + j` of `plan` gets row `p` of `out`
    /// (`[pairs, n]`): its input row (token `t`'s row of `x` for [`MoeInput::Tokens`],
    /// row `p` for [`MoeInput::Pairs`]) times its expert's weight. Each expert's
    /// weights are read once per step on the CPU, whatever the batch; a GPU's device
    /// grouping reads them once per 8 of the expert's pairs.
    #[allow(clippy::too_many_arguments)]
    fn moe_matmul(
        &self,
        x: &Self::Buf,
        input: MoeInput,
        plan: &Self::MoePlan,
        w: &Self::Weight,
        k: usize,
        n: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// The weighted combine of a MoE layer: for each token `t`,
    /// `out[t] = Σ_j weight[t, j] · y[t · top_k + j]` over rows of `dim` (`y` is
    /// `[pairs, dim]` in pair order), summed from zero in ascending expert order
    /// ([`moe::combine_order`]), as transformers' loop over experts sums.
    fn moe_combine(
        &self,
        y: &Self::Buf,
        plan: &Self::MoePlan,
        dim: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// How many expert weight sets every plan routed on this backend so far has read:
    /// the sum over plans of the experts that got a row. A GPU backend counts on the
    /// device and waits for it here, so call this around a run, not inside a step.
    fn moe_experts_read(&self) -> Result<u64>;

    /// Greedy tokens: for each of `rows` rows of `x` (`[rows, cols]`), the index of its
    /// largest value as [`argmax`] picks it (first on ties, NaN skipped; 0 for a row
    /// with no number). GPU backends run this on the device and copy back only the ids,
    /// so a greedy step does not move its logits to the host.
    fn argmax_rows(&self, x: &Self::Buf, rows: usize, cols: usize) -> Result<Vec<u32>> {
        let v = self.download(x)?;
        error::ensure(v.len() >= rows * cols, "argmax_rows", || {
            format!("x holds {} values, needs {}", v.len(), rows * cols)
        })?;
        if cols == 0 {
            return Ok(vec![0; rows]);
        }
        Ok(v[..rows * cols]
            .chunks_exact(cols)
            .map(|r| argmax(r).unwrap_or(0) as u32)
            .collect())
    }

    /// Whether this backend captures decode steps into graphs and replays them (see
    /// `gpu/graph.rs`): false on the CPU, and wherever graphs are off.
    fn graphs_enabled(&self) -> bool {
        false
    }

    /// Starts capturing the ops that follow under `key`, or checking them against the
    /// graph under `key` ([`GraphPhase`]); false when there is nothing to do (no
    /// graphs, or no graph under `key`). Ended by [`Backend::graph_end`], or by
    /// [`Backend::graph_abort`] after an error.
    fn graph_begin(&self, key: u64, phase: GraphPhase) -> Result<bool> {
        let _ = (key, phase);
        Ok(false)
    }

    /// Ends the pass begun by [`Backend::graph_begin`]: true when a capture was stored,
    /// or when a checked step matched its graph and the graph was replayed; false when
    /// nothing ran and the caller must run the step itself.
    fn graph_end(&self) -> Result<bool> {
        Ok(false)
    }

    /// Leaves a capture or check pass after an error; nothing replays.
    fn graph_abort(&self) {}
}

/// The slot of a padding row in `reshape_and_cache`'s slot mapping: nothing is written
/// for it. A decode graph pads its batch up to a fixed size with such rows.
pub const PADDING_SLOT: u32 = u32::MAX;

/// Index of the largest value (the first one on ties), as greedy decoding uses it.
pub fn argmax(row: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        match best {
            _ if v.is_nan() => {}
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

/// Numerically stable softmax in place (f32, max-subtracted).
pub fn softmax_inplace(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Log-softmax in place.
pub fn log_softmax_inplace(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    for v in row.iter_mut() {
        *v -= lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_first_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut r = vec![1.0, 2.0, 3.0, -1000.0];
        softmax_inplace(&mut r);
        let s: f32 = r.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(r[2] > r[1] && r[1] > r[0]);
        let mut l = vec![1.0f32, 2.0, 3.0];
        log_softmax_inplace(&mut l);
        let s: f32 = l.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
}
