//! The `Backend` on a GPU, written once for AMD (HIP) and NVIDIA (CUDA): buffers in
//! device memory in one storage type per backend instance (f32, f16 or bf16; f32 math
//! inside every kernel), the `kernels/hip/` sources compiled at start-up (hiprtc /
//! NVRTC) for the device's architecture, GEMMs on the vendor BLAS (rocBLAS
//! `rocblas_gemm_ex` / cuBLAS `cublasGemmEx`, f32 compute).
//!
//! A vendor is a [`Device`] (`device.rs`): memory, copies, kernel loading and launches,
//! one GEMM. Everything else (shapes, checks, launch geometry, argument lists, metadata
//! caching) lives in this module, so the two vendors cannot drift apart:
//! - this file: [`GpuBackend`] (kernel loading, accessors) and its `Backend` impl, a
//!   table of one-line delegations, because one trait impl cannot span files;
//! - `launch.rs`: buffers, argument passing, grids, caches, checks;
//! - `ops/<kernel file>.rs`: each op's launch beside the `.hip` source it must agree
//!   with, and the op's conformance cases.
//!
//! Small per-step metadata (ids, positions, slot mappings, block tables) is copied up
//! once per step (it is the same for every layer) into fixed, grow-only allocations;
//! nothing comes back to the host except what `download` asks for.
//! - `graph.rs`: decode graphs: capture a step, check later steps against it, replay.

mod device;
mod graph;
pub(crate) mod launch;
pub(crate) mod ops;
#[cfg(test)]
pub(crate) mod recorder;

pub use self::device::{BlasGemm, Device, DeviceInfo, Gemm, Launch};
pub use self::graph::GraphPhase;
pub use self::launch::GpuBuf;
pub use self::ops::moe::{GpuMoePlan, DEVICE_GROUPING_ROWS};
/// The crate's one [`crate::Dtype`], also under its former path.
pub use crate::Dtype;

use self::graph::Graphs;
use self::launch::{Scratch, UploadCache};
use crate::{
    AttentionMetadata, Backend, Error, HeadLayout, KvCacheConfig, LatentShape, MoeInput, MoeRoute,
    MoeRouting, Result,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct GpuBackend<D: Device> {
    dev: D,
    funcs: HashMap<String, D::Func>,
    /// The storage type of every buffer this backend makes, and the one its kernels
    /// were loaded for: ops refuse buffers of another (`Error::Dtype`).
    pub dtype: Dtype,
    positions: UploadCache<D>,
    slots: UploadCache<D>,
    /// [query_start | num_queries | context_len | block tables] in one buffer.
    attn_meta: UploadCache<D>,
    /// Token ids (embedding) and the rows whose logits are wanted (gather_rows).
    ids: UploadCache<D>,
    gather: UploadCache<D>,
    scratch: Scratch<D>,
    /// The greedy ids and widened logits of `argmax_rows`.
    argmax: Scratch<D>,
    /// MoE plans (`ops/moe.rs`): the router's choices and their device grouping; the
    /// generation of the plan they hold; the pairs of a host grouping; the grouped rows
    /// of the vendor GEMMs; the experts read (a device counter `moe_align` adds to, and
    /// the host groupings' count).
    moe_route: Scratch<D>,
    moe_device_rows: AtomicUsize,
    /// The most split-K scratch one latent attention launch may use (`ops/latent.rs`).
    latent_scratch: AtomicUsize,
    moe_generation: AtomicU64,
    moe_meta: UploadCache<D>,
    moe_rows: Scratch<D>,
    moe_read: (D::Mem, u64),
    moe_host_read: AtomicU64,
    /// Decode graphs (`graph.rs`): on unless turned off, where the device has them.
    graphs_on: AtomicBool,
    /// A capture or check pass is under way (launches take the `graphs` lock only then).
    graph_active: AtomicBool,
    graphs: Mutex<Graphs<D>>,
}

impl<D: Device> GpuBackend<D> {
    /// Wraps an opened device: compiles every kernel for it and loads this dtype's variants.
    pub fn with_device(dev: D, dtype: Dtype) -> Result<Self> {
        let suffix = format!("_{}", dtype.suffix());
        let mut funcs = HashMap::new();
        for (file, src) in crate::sources::KERNELS {
            // Keyed by base name: this backend's dtype variant, or the untyped kernel.
            let mut wanted = Vec::new();
            let mut bases = Vec::new();
            for f in launch::kernel_names(src) {
                let base = match f.rsplit_once('_') {
                    Some((b, d)) if ["f32", "f16", "bf16"].contains(&d) => {
                        if !f.ends_with(&suffix) {
                            continue;
                        }
                        b.to_string()
                    }
                    _ => f.clone(),
                };
                wanted.push(f);
                bases.push(base);
            }
            // The device's warp width, fixed at compile time so that kernel code and the
            // launch geometry here (which reads `info().warp`) can never disagree.
            let src = format!("#define NS_WARP {}\n{src}", dev.info().warp);
            for (base, func) in bases
                .into_iter()
                .zip(dev.load_kernels(file, &src, &wanted)?)
            {
                funcs.insert(base, func);
            }
        }
        let moe_read = dev.alloc_zeros(8)?;
        let moe_read_ptr = dev.ptr(&moe_read);
        Ok(GpuBackend {
            dev,
            funcs,
            dtype,
            positions: Mutex::new(None),
            slots: Mutex::new(None),
            attn_meta: Mutex::new(None),
            ids: Mutex::new(None),
            gather: Mutex::new(None),
            scratch: Mutex::new(None),
            argmax: Mutex::new(None),
            moe_route: Mutex::new(None),
            moe_device_rows: AtomicUsize::new(DEVICE_GROUPING_ROWS),
            latent_scratch: AtomicUsize::new(ops::latent::SCRATCH_BYTES),
            moe_generation: AtomicU64::new(0),
            moe_meta: Mutex::new(None),
            moe_rows: Mutex::new(None),
            moe_read: (moe_read, moe_read_ptr),
            moe_host_read: AtomicU64::new(0),
            graphs_on: AtomicBool::new(true),
            graph_active: AtomicBool::new(false),
            graphs: Mutex::new(Graphs::default()),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        self.dev.info()
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// Device-to-device copy bandwidth over `bytes` (bytes read + written per second),
    /// best of five: the memory-bandwidth bound that decode is measured against.
    pub fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let src = self.dev.alloc_zeros(bytes)?;
        let mut dst = self.dev.alloc_zeros(bytes)?;
        let mut best = 0f64;
        for _ in 0..5 {
            self.dev.synchronize()?;
            let t = std::time::Instant::now();
            // SAFETY: both allocations hold `bytes` bytes.
            unsafe { self.dev.copy(&src, &mut dst, bytes)? };
            self.dev.synchronize()?;
            best = best.max(2.0 * bytes as f64 / t.elapsed().as_secs_f64());
        }
        Ok(best)
    }

    /// The largest batch whose MoE routing is grouped on the device
    /// ([`DEVICE_GROUPING_ROWS`] unless set; inside a graph pass every batch is). 0 groups
    /// every eager step on the host, for vendor GEMMs: what `gpu-check` compares.
    pub fn set_moe_device_grouping_rows(&self, rows: usize) {
        self.moe_device_rows.store(rows, Ordering::Relaxed);
    }

    /// The most split-K scratch one latent attention launch may use
    /// ([`ops::latent::SCRATCH_BYTES`] unless set): a long prefill runs in row chunks
    /// that fit. Tests set it small to run the chunks.
    pub fn set_latent_scratch_bytes(&self, bytes: usize) {
        self.latent_scratch.store(bytes, Ordering::Relaxed);
    }

    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.dev.mem_info()
    }

    /// The loaded kernel `base` (this backend's dtype variant, or the untyped kernel);
    /// no allocation, as it runs once per launch.
    fn f(&self, base: &str) -> Result<&D::Func> {
        self.funcs
            .get(base)
            .ok_or_else(|| Error::Unavailable(format!("{}: kernel {base} not found", D::NAME)))
    }
}

/// Each op is a function in `ops/<kernel file>.rs`; see those for what runs.
impl<D: Device> Backend for GpuBackend<D> {
    type Buf = GpuBuf<D>;
    /// Weights keep their rows: the vendor GEMMs read the `Linear` layout.
    type Weight = GpuBuf<D>;
    type MoePlan = GpuMoePlan;

    fn name(&self) -> &'static str {
        D::NAME
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuf<D>> {
        self.new_buf(Some(data), data.len())
    }

    fn upload_weight(&self, data: &[f32], groups: usize, n: usize, k: usize) -> Result<GpuBuf<D>> {
        crate::error::ensure(data.len() == groups * n * k, "upload_weight", || {
            format!("{} values for {groups} x [{n}, {k}]", data.len())
        })?;
        self.upload(data)
    }

    fn zeros(&self, len: usize) -> Result<GpuBuf<D>> {
        self.new_buf(None, len)
    }

    fn download(&self, buf: &GpuBuf<D>) -> Result<Vec<f32>> {
        self.read_buf(buf, buf.len)
    }

    fn download_prefix(&self, buf: &GpuBuf<D>, len: usize) -> Result<Vec<f32>> {
        self.read_buf(buf, len.min(buf.len))
    }

    fn dtype(&self, buf: &GpuBuf<D>) -> Dtype {
        buf.dtype
    }

    fn embedding(
        &self,
        table: &GpuBuf<D>,
        vocab: usize,
        hidden: usize,
        ids: &[u32],
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::elementwise::embedding(self, table, vocab, hidden, ids, out)
    }

    fn rms_norm(
        &self,
        x: &GpuBuf<D>,
        weight: &GpuBuf<D>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::norm::rms_norm(self, x, weight, rows, dim, eps, out)
    }

    fn add_rms_norm(
        &self,
        residual: &mut GpuBuf<D>,
        x: &GpuBuf<D>,
        weight: &GpuBuf<D>,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::norm::add_rms_norm(self, residual, x, weight, rows, dim, eps, out)
    }

    fn add_inplace(&self, residual: &mut GpuBuf<D>, x: &GpuBuf<D>, len: usize) -> Result<()> {
        ops::elementwise::add_inplace(self, residual, x, len)
    }

    fn matmul(
        &self,
        x: &GpuBuf<D>,
        w: &GpuBuf<D>,
        bias: Option<&GpuBuf<D>>,
        m: usize,
        k: usize,
        n: usize,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::matmul::matmul(self, x, w, bias, m, k, n, out)
    }

    fn rope(
        &self,
        x: &mut GpuBuf<D>,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
        positions: &[u32],
        cos_sin: &GpuBuf<D>,
    ) -> Result<()> {
        ops::rope::rope(
            self, x, row_stride, col_offset, num_heads, head_dim, rotary_dim, positions, cos_sin,
        )
    }

    fn reshape_and_cache(
        &self,
        qkv: &GpuBuf<D>,
        row_stride: usize,
        k_offset: usize,
        cache: &KvCacheConfig,
        slot_mapping: &[u32],
        key_cache: &mut GpuBuf<D>,
        value_cache: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::cache::reshape_and_cache(
            self,
            qkv,
            row_stride,
            k_offset,
            cache,
            slot_mapping,
            key_cache,
            value_cache,
        )
    }

    fn paged_attention(
        &self,
        qkv: &GpuBuf<D>,
        row_stride: usize,
        num_heads: usize,
        cache: &KvCacheConfig,
        key_cache: &GpuBuf<D>,
        value_cache: &GpuBuf<D>,
        meta: &AttentionMetadata,
        scale: f32,
        sliding_window: Option<usize>,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::attention::paged_attention(
            self,
            qkv,
            row_stride,
            num_heads,
            cache,
            key_cache,
            value_cache,
            meta,
            scale,
            sliding_window,
            out,
        )
    }

    fn head_matmul(
        &self,
        x: &GpuBuf<D>,
        layout: HeadLayout,
        rows: usize,
        heads: usize,
        w: &GpuBuf<D>,
        k: usize,
        n: usize,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::latent::head_matmul(self, x, layout, rows, heads, w, k, n, out)
    }

    fn cache_rows(
        &self,
        src: &GpuBuf<D>,
        row_stride: usize,
        col_offset: usize,
        cache: &KvCacheConfig,
        slot_mapping: &[u32],
        cache_buf: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::latent::cache_rows(
            self,
            src,
            row_stride,
            col_offset,
            cache,
            slot_mapping,
            cache_buf,
        )
    }

    fn latent_attention(
        &self,
        q_latent: &GpuBuf<D>,
        q_rope: &GpuBuf<D>,
        rope: HeadLayout,
        shape: LatentShape,
        cache: &KvCacheConfig,
        latent_cache: &GpuBuf<D>,
        meta: &AttentionMetadata,
        scale: f32,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::latent::latent_attention(
            self,
            q_latent,
            q_rope,
            rope,
            shape,
            cache,
            latent_cache,
            meta,
            scale,
            out,
        )
    }

    fn silu_and_mul(
        &self,
        x: &GpuBuf<D>,
        rows: usize,
        inter: usize,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::elementwise::silu_and_mul(self, x, rows, inter, out)
    }

    fn head_rms_norm(
        &self,
        x: &mut GpuBuf<D>,
        rows: usize,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        weight: &GpuBuf<D>,
        eps: f32,
    ) -> Result<()> {
        ops::norm::head_rms_norm(
            self, x, rows, row_stride, col_offset, num_heads, head_dim, weight, eps,
        )
    }

    fn gather_rows(
        &self,
        x: &GpuBuf<D>,
        dim: usize,
        indices: &[usize],
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::elementwise::gather_rows(self, x, dim, indices, out)
    }

    fn moe_route(
        &self,
        x: &GpuBuf<D>,
        gate: &GpuBuf<D>,
        rows: usize,
        hidden: usize,
        routing: &MoeRouting,
        bias: Option<&GpuBuf<D>>,
    ) -> Result<Self::MoePlan> {
        ops::moe::moe_route(self, x, gate, rows, hidden, routing, bias)
    }

    fn moe_plan(
        &self,
        route: &MoeRoute,
        tokens: usize,
        routing: &MoeRouting,
    ) -> Result<Self::MoePlan> {
        ops::moe::moe_plan(self, route, tokens, routing)
    }

    fn moe_choices(&self, plan: &Self::MoePlan) -> Result<MoeRoute> {
        ops::moe::moe_choices(self, plan)
    }

    fn moe_matmul(
        &self,
        x: &GpuBuf<D>,
        input: MoeInput,
        plan: &Self::MoePlan,
        w: &GpuBuf<D>,
        k: usize,
        n: usize,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::moe::moe_matmul(self, x, input, plan, w, k, n, out)
    }

    fn moe_combine(
        &self,
        y: &GpuBuf<D>,
        plan: &Self::MoePlan,
        dim: usize,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        ops::moe::moe_combine(self, y, plan, dim, out)
    }

    fn moe_experts_read(&self) -> Result<u64> {
        ops::moe::moe_experts_read(self)
    }

    fn argmax_rows(&self, x: &GpuBuf<D>, rows: usize, cols: usize) -> Result<Vec<u32>> {
        ops::sampling::argmax_rows(self, x, rows, cols)
    }

    fn graphs_enabled(&self) -> bool {
        GpuBackend::graphs_enabled(self)
    }

    fn graph_begin(&self, key: u64, phase: GraphPhase) -> Result<bool> {
        GpuBackend::graph_begin(self, key, phase)
    }

    fn graph_end(&self) -> Result<bool> {
        GpuBackend::graph_end(self)
    }

    fn graph_abort(&self) {
        GpuBackend::graph_abort(self)
    }
}
