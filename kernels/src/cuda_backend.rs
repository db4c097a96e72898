//! The `Backend` on an NVIDIA GPU (feature `cuda`): buffers in device memory in one
//! storage type (f32, f16 or bf16; f32 math inside every kernel), the HIP kernels
//! compiled by NVRTC at start-up, GEMMs on cuBLAS (`cublasGemmEx`, f32 compute).
//! Small per-step metadata (ids, positions, slot mappings, block tables) is copied up per
//! call; nothing comes back to the host except what `download` asks for.

use crate::cuda::{self, DeviceInfo};
use crate::{AttentionMetadata, Backend, Error, KvCacheConfig, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The last upload of some per-step metadata: its host copy and device buffer.
type CachedUpload = Option<(Vec<u32>, CudaSlice<u32>)>;
type UploadCache = Mutex<CachedUpload>;

/// Storage type of every buffer of a backend instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            _ => 2,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    fn cuda_type(self) -> blas_sys::cudaDataType {
        match self {
            Dtype::F32 => blas_sys::cudaDataType::CUDA_R_32F,
            Dtype::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            Dtype::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
        }
    }

    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "f32" | "float32" => Some(Dtype::F32),
            "f16" | "float16" => Some(Dtype::F16),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            _ => None,
        }
    }
}

/// A device buffer of `len` values of the backend's storage type.
pub struct GpuBuf {
    data: CudaSlice<u8>,
    len: usize,
}

impl GpuBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<String, CudaFunction>,
    pub dtype: Dtype,
    pub info: DeviceInfo,
    /// Lanes per warp, from the device.
    warp: u32,
    positions: UploadCache,
    slots: UploadCache,
    /// [query_start | num_queries | context_len | block tables] in one buffer.
    attn_meta: UploadCache,
}

fn dev(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("CUDA: {e}"))
}

const THREADS: u32 = 256;
/// Warps per block for the attention kernels (4 x the warp width).
const ATTN_WARPS: u32 = 4;
const PARTITION: usize = 512; // NS_PARTITION in attention.hip
const TILE: usize = 16; // NS_TILE in attention.hip

/// `ns_attn_args` in attention.hip, field for field.
#[repr(C)]
#[derive(Clone, Copy)]
struct AttnArgs {
    query_start: u64,
    num_queries: u64,
    context_len: u64,
    block_tables: u64,
    max_blocks: i32,
    block_size: i32,
    num_heads: i32,
    num_kv_heads: i32,
    head_dim: i32,
    row_stride: i32,
    scale: f32,
    window: i32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for AttnArgs {}

impl CudaBackend {
    /// Opens GPU `ordinal` and compiles every kernel for it.
    pub fn new(ordinal: usize, dtype: Dtype) -> Result<Self> {
        let (ctx, info) = cuda::open(ordinal)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(dev)?;
        let mut funcs = HashMap::new();
        for (name, src) in crate::sources::KERNELS {
            let cubin = cuda::compile(name, src, &info.arch)?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                .map_err(dev)?;
            // Keyed by base name: this backend's dtype variant, or the untyped kernel.
            let suffix = format!("_{}", dtype.suffix());
            for f in kernel_names(src) {
                let base = match f.rsplit_once('_') {
                    Some((b, d)) if ["f32", "f16", "bf16"].contains(&d) => {
                        if !f.ends_with(&suffix) {
                            continue;
                        }
                        b.to_string()
                    }
                    _ => f.clone(),
                };
                funcs.insert(base, module.load_function(&f).map_err(dev)?);
            }
        }
        let warp = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_WARP_SIZE)
            .map_err(dev)? as u32;
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            funcs,
            dtype,
            info,
            warp,
            positions: Mutex::new(None),
            slots: Mutex::new(None),
            attn_meta: Mutex::new(None),
        })
    }

    /// The kernel for this backend's dtype (no allocation: called per launch).
    fn f(&self, base: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(base)
            .ok_or_else(|| dev(format!("kernel {base} not found")))
    }

    /// `v` on the device, reusing the last upload through `slot` when the contents are
    /// the same: a step's positions, slot mapping and attention metadata are the same
    /// for every layer, so they cross the bus once per step, not once per layer.
    fn cached_u32s<'a>(
        &self,
        slot: &'a UploadCache,
        v: &[u32],
    ) -> Result<std::sync::MutexGuard<'a, CachedUpload>> {
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_none_or(|(host, _)| host.as_slice() != v) {
            *g = Some((v.to_vec(), self.u32s(v)?));
        }
        Ok(g)
    }

    fn u32s(&self, v: &[u32]) -> Result<CudaSlice<u32>> {
        if v.is_empty() {
            return self.stream.alloc_zeros::<u32>(1).map_err(dev);
        }
        self.stream.clone_htod(v).map_err(dev)
    }

    fn check(&self, op: &'static str, name: &str, b: &GpuBuf, need: usize) -> Result<()> {
        if b.len < need {
            return Err(Error::Shape {
                op,
                msg: format!("{name} holds {} values, needs {need}", b.len),
            });
        }
        Ok(())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn to_bytes(&self, data: &[f32]) -> Vec<u8> {
        match self.dtype {
            Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::Bf16 => data
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// `extern "C"` entry points in a source: the names `NS_FOR_DTYPES` and `NS_KERNEL` make.
fn kernel_names(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("NS_FOR_DTYPES(") {
        rest = &rest[i + "NS_FOR_DTYPES(".len()..];
        if let Some(name) = rest.split(',').next() {
            let name = name.trim();
            if !name.is_empty() && !name.contains(' ') {
                for d in ["f32", "f16", "bf16"] {
                    out.push(format!("{name}_{d}"));
                }
            }
        }
    }
    for line in src.lines() {
        if let Some(r) = line.trim().strip_prefix("NS_KERNEL void ") {
            if let Some(name) = r.split('(').next() {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

fn grid1(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.max(1) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn stride_grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize).clamp(1, 65535) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

macro_rules! launch {
    ($self:expr, $f:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $f;
        let mut b = $self.stream.launch_builder(f);
        $( b.arg($arg); )*
        // SAFETY: arguments match the kernel's parameter list (see kernels/hip/).
        unsafe { b.launch($cfg) }.map(|_| ()).map_err(dev)
    }};
}

impl Backend for CudaBackend {
    type Buf = GpuBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuf> {
        let bytes = self.to_bytes(data);
        let data_dev = if bytes.is_empty() {
            self.stream.alloc_zeros::<u8>(1).map_err(dev)?
        } else {
            self.stream.clone_htod(&bytes).map_err(dev)?
        };
        Ok(GpuBuf {
            data: data_dev,
            len: data.len(),
        })
    }

    fn zeros(&self, len: usize) -> Result<GpuBuf> {
        Ok(GpuBuf {
            data: self
                .stream
                .alloc_zeros::<u8>((len * self.dtype.size()).max(1))
                .map_err(dev)?,
            len,
        })
    }

    fn download(&self, buf: &GpuBuf) -> Result<Vec<f32>> {
        let bytes = self.stream.clone_dtoh(&buf.data).map_err(dev)?;
        let n = buf.len;
        Ok(match self.dtype {
            Dtype::F32 => bytes[..n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes[..n * 2]
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::Bf16 => bytes[..n * 2]
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    fn embedding(
        &self,
        table: &GpuBuf,
        vocab: usize,
        hidden: usize,
        ids: &[u32],
        out: &mut GpuBuf,
    ) -> Result<()> {
        self.check("embedding", "table", table, vocab * hidden)?;
        self.check("embedding", "out", out, ids.len() * hidden)?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::OutOfRange {
                op: "embedding",
                index: bad as usize,
                limit: vocab,
            });
        }
        let ids_d = self.u32s(ids)?;
        let h = hidden as i32;
        launch!(
            self,
            self.f("embedding")?,
            grid1(ids.len()),
            &mut out.data,
            &table.data,
            &ids_d,
            &h
        )
    }

    fn rms_norm(
        &self,
        x: &GpuBuf,
        weight: &GpuBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut GpuBuf,
    ) -> Result<()> {
        self.check("rms_norm", "x", x, rows * dim)?;
        self.check("rms_norm", "out", out, rows * dim)?;
        let d = dim as i32;
        launch!(
            self,
            self.f("rms_norm")?,
            grid1(rows),
            &mut out.data,
            &x.data,
            &weight.data,
            &d,
            &eps
        )
    }

    fn add_rms_norm(
        &self,
        residual: &mut GpuBuf,
        x: &GpuBuf,
        weight: &GpuBuf,
        rows: usize,
        dim: usize,
        eps: f32,
        out: &mut GpuBuf,
    ) -> Result<()> {
        self.check("add_rms_norm", "residual", residual, rows * dim)?;
        self.check("add_rms_norm", "x", x, rows * dim)?;
        self.check("add_rms_norm", "out", out, rows * dim)?;
        let d = dim as i32;
        launch!(
            self,
            self.f("add_rms_norm")?,
            grid1(rows),
            &mut residual.data,
            &x.data,
            &weight.data,
            &mut out.data,
            &d,
            &eps
        )
    }

    fn add_inplace(&self, residual: &mut GpuBuf, x: &GpuBuf, len: usize) -> Result<()> {
        self.check("add_inplace", "residual", residual, len)?;
        self.check("add_inplace", "x", x, len)?;
        let n = len as i64;
        launch!(
            self,
            self.f("add_inplace")?,
            stride_grid(len),
            &mut residual.data,
            &x.data,
            &n
        )
    }

    fn matmul(
        &self,
        x: &GpuBuf,
        w: &GpuBuf,
        bias: Option<&GpuBuf>,
        m: usize,
        k: usize,
        n: usize,
        out: &mut GpuBuf,
    ) -> Result<()> {
        self.check("matmul", "x", x, m * k)?;
        self.check("matmul", "w", w, n * k)?;
        self.check("matmul", "out", out, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        // Row-major out[m, n] = x[m, k] · w[n, k]^T is column-major out^T = w · x^T:
        // A = w (stored k x n column-major, transposed), B = x^T (k x m, as stored).
        let (alpha, beta) = (1.0f32, 0.0f32);
        let t = self.dtype.cuda_type();
        {
            let (wp, _rw) = w.data.device_ptr(&self.stream);
            let (xp, _rx) = x.data.device_ptr(&self.stream);
            let (op, _ro) =
                cudarc::driver::DevicePtrMut::device_ptr_mut(&mut out.data, &self.stream);
            // SAFETY: pointers are live device allocations of the checked sizes.
            unsafe {
                blas::gemm_ex(
                    *self.blas.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    n as i32,
                    m as i32,
                    k as i32,
                    &alpha as *const f32 as *const _,
                    wp as *const _,
                    t,
                    k as i32,
                    xp as *const _,
                    t,
                    k as i32,
                    &beta as *const f32 as *const _,
                    op as *mut _,
                    t,
                    n as i32,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(dev)?;
        }
        if let Some(b) = bias {
            self.check("matmul", "bias", b, n)?;
            let nn = n as i32;
            launch!(
                self,
                self.f("add_bias")?,
                grid1(m),
                &mut out.data,
                &b.data,
                &nn
            )?;
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut GpuBuf,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        positions: &[u32],
        cos_sin: &GpuBuf,
    ) -> Result<()> {
        self.check("rope", "x", x, positions.len() * row_stride)?;
        let max_pos = cos_sin.len / head_dim.max(1);
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= max_pos) {
            return Err(Error::OutOfRange {
                op: "rope",
                index: p as usize,
                limit: max_pos,
            });
        }
        let pos_guard = self.cached_u32s(&self.positions, positions)?;
        let pos = &pos_guard.as_ref().expect("just set").1;
        let (rs, co, nh, hd) = (
            row_stride as i32,
            col_offset as i32,
            num_heads as i32,
            head_dim as i32,
        );
        launch!(
            self,
            self.f("rope")?,
            grid1(positions.len()),
            &mut x.data,
            pos,
            &cos_sin.data,
            &rs,
            &co,
            &nh,
            &hd
        )
    }

    fn reshape_and_cache(
        &self,
        qkv: &GpuBuf,
        row_stride: usize,
        k_offset: usize,
        cache: &KvCacheConfig,
        slot_mapping: &[u32],
        key_cache: &mut GpuBuf,
        value_cache: &mut GpuBuf,
    ) -> Result<()> {
        let slot_len = cache.slot_len();
        self.check(
            "reshape_and_cache",
            "qkv",
            qkv,
            slot_mapping.len() * row_stride,
        )?;
        if let Some(&s) = slot_mapping
            .iter()
            .find(|&&s| s as usize >= cache.num_slots())
        {
            return Err(Error::OutOfRange {
                op: "reshape_and_cache",
                index: s as usize,
                limit: cache.num_slots(),
            });
        }
        let slots_guard = self.cached_u32s(&self.slots, slot_mapping)?;
        let slots = &slots_guard.as_ref().expect("just set").1;
        let (rs, ko, vo, sl) = (
            row_stride as i32,
            k_offset as i32,
            (k_offset + slot_len) as i32,
            slot_len as i32,
        );
        launch!(
            self,
            self.f("reshape_and_cache")?,
            grid1(slot_mapping.len()),
            &qkv.data,
            slots,
            &mut key_cache.data,
            &mut value_cache.data,
            &rs,
            &ko,
            &vo,
            &sl
        )
    }

    fn paged_attention(
        &self,
        qkv: &GpuBuf,
        row_stride: usize,
        num_heads: usize,
        cache: &KvCacheConfig,
        key_cache: &GpuBuf,
        value_cache: &GpuBuf,
        meta: &AttentionMetadata,
        scale: f32,
        sliding_window: Option<usize>,
        out: &mut GpuBuf,
    ) -> Result<()> {
        let seqs = &meta.seqs;
        if seqs.is_empty() {
            return Ok(());
        }
        let hd = cache.head_dim;
        if hd > 256 {
            return Err(Error::Shape {
                op: "paged_attention",
                msg: format!("head_dim {hd} > 256"),
            });
        }
        let max_blocks = seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let n = seqs.len();
        let mut meta_host = vec![0u32; 3 * n + n * max_blocks];
        for (i, s) in seqs.iter().enumerate() {
            meta_host[i] = s.query_start as u32;
            meta_host[n + i] = s.num_queries as u32;
            meta_host[2 * n + i] = s.context_len as u32;
            let t = 3 * n + i * max_blocks;
            meta_host[t..t + s.block_table.len()].copy_from_slice(&s.block_table);
        }
        let meta_guard = self.cached_u32s(&self.attn_meta, &meta_host)?;
        let (base, _record) = meta_guard
            .as_ref()
            .expect("just set")
            .1
            .device_ptr(&self.stream);
        let at = |k: usize| base + (k * std::mem::size_of::<u32>()) as u64;
        let (qs_p, nq_p, cl_p, bt_p) = (at(0), at(n), at(2 * n), at(3 * n));
        let args = AttnArgs {
            query_start: qs_p,
            num_queries: nq_p,
            context_len: cl_p,
            block_tables: bt_p,
            max_blocks: max_blocks as i32,
            block_size: cache.block_size as i32,
            num_heads: num_heads as i32,
            num_kv_heads: cache.num_kv_heads as i32,
            head_dim: hd as i32,
            row_stride: row_stride as i32,
            scale,
            window: sliding_window.unwrap_or(0) as i32,
        };
        let threads = ATTN_WARPS * self.warp;
        if seqs.iter().all(|s| s.num_queries == 1) {
            let span = seqs
                .iter()
                .map(|s| sliding_window.map_or(s.context_len, |w| s.context_len.min(w)))
                .max()
                .unwrap_or(1);
            let parts = span.div_ceil(PARTITION).max(1);
            let n = seqs.len() * num_heads * parts;
            let mut tmp = self.stream.alloc_zeros::<f32>(n * hd).map_err(dev)?;
            let mut maxl = self.stream.alloc_zeros::<f32>(n).map_err(dev)?;
            let mut sums = self.stream.alloc_zeros::<f32>(n).map_err(dev)?;
            let p = parts as i32;
            let cfg = LaunchConfig {
                grid_dim: (num_heads as u32, seqs.len() as u32, parts as u32),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(
                self,
                self.f("paged_attention_partial")?,
                cfg,
                &qkv.data,
                &key_cache.data,
                &value_cache.data,
                &mut tmp,
                &mut maxl,
                &mut sums,
                &args,
                &p
            )?;
            let cfg = LaunchConfig {
                grid_dim: (num_heads as u32, seqs.len() as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(
                self,
                self.f("paged_attention_reduce")?,
                cfg,
                &mut out.data,
                &tmp,
                &maxl,
                &sums,
                &args,
                &p
            )
        } else {
            let max_q = seqs.iter().map(|s| s.num_queries).max().unwrap_or(1);
            let shared = ((ATTN_WARPS as usize * hd + 2 * TILE * hd) * 4) as u32;
            let cfg = LaunchConfig {
                grid_dim: (
                    max_q.div_ceil(ATTN_WARPS as usize) as u32,
                    num_heads as u32,
                    seqs.len() as u32,
                ),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: shared,
            };
            launch!(
                self,
                self.f("prefill_attention")?,
                cfg,
                &qkv.data,
                &key_cache.data,
                &value_cache.data,
                &mut out.data,
                &args
            )
        }
    }

    fn silu_and_mul(&self, x: &GpuBuf, rows: usize, inter: usize, out: &mut GpuBuf) -> Result<()> {
        self.check("silu_and_mul", "x", x, rows * 2 * inter)?;
        self.check("silu_and_mul", "out", out, rows * inter)?;
        let i = inter as i32;
        launch!(
            self,
            self.f("silu_and_mul")?,
            grid1(rows),
            &mut out.data,
            &x.data,
            &i
        )
    }

    fn head_rms_norm(
        &self,
        x: &mut GpuBuf,
        rows: usize,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        weight: &GpuBuf,
        eps: f32,
    ) -> Result<()> {
        self.check("head_rms_norm", "x", x, rows * row_stride)?;
        let warp = self.warp;
        let items = rows * num_heads;
        let cfg = LaunchConfig {
            grid_dim: (items.div_ceil(ATTN_WARPS as usize).max(1) as u32, 1, 1),
            block_dim: (ATTN_WARPS * warp, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, rs, co, nh, hd) = (
            rows as i32,
            row_stride as i32,
            col_offset as i32,
            num_heads as i32,
            head_dim as i32,
        );
        launch!(
            self,
            self.f("head_rms_norm")?,
            cfg,
            &mut x.data,
            &weight.data,
            &r,
            &rs,
            &co,
            &nh,
            &hd,
            &eps
        )
    }

    fn gather_rows(
        &self,
        x: &GpuBuf,
        dim: usize,
        indices: &[usize],
        out: &mut GpuBuf,
    ) -> Result<()> {
        self.check("gather_rows", "out", out, indices.len() * dim)?;
        let rows = x.len / dim.max(1);
        if let Some(&bad) = indices.iter().find(|&&i| i >= rows) {
            return Err(Error::OutOfRange {
                op: "gather_rows",
                index: bad,
                limit: rows,
            });
        }
        let idx = self.u32s(&indices.iter().map(|&i| i as u32).collect::<Vec<_>>())?;
        let d = dim as i32;
        launch!(
            self,
            self.f("gather_rows")?,
            grid1(indices.len()),
            &mut out.data,
            &x.data,
            &idx,
            &d
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_every_entry_point() {
        let names = super::kernel_names(include_str!("../hip/sampling.hip"));
        assert_eq!(names, ["argmax_rows", "softmax_rows", "sample_rows"]);
        let names = super::kernel_names(include_str!("../hip/norm.hip"));
        assert!(
            names.contains(&"add_rms_norm_bf16".to_string()) && names.len() == 9,
            "{names:?}"
        );
    }
}
