//! The `Backend` on a GPU, written once for AMD (HIP) and NVIDIA (CUDA): buffers in
//! device memory in one storage type (f32, f16 or bf16; f32 math inside every kernel),
//! the `kernels/hip/` sources compiled at start-up (hiprtc / NVRTC) for the device's
//! architecture, GEMMs on the vendor BLAS (rocBLAS `rocblas_gemm_ex` / cuBLAS
//! `cublasGemmEx`, f32 compute).
//!
//! A vendor is a [`Device`]: memory, copies, kernel loading and launches, one GEMM.
//! Everything else (shapes, checks, launch geometry, argument lists, metadata caching)
//! lives here, so the two vendors cannot drift apart.
//!
//! Small per-step metadata (ids, positions, slot mappings, block tables) is copied up
//! once per step (it is the same for every layer); nothing comes back to the host
//! except what `download` asks for.

use crate::error;
use crate::{AttentionMetadata, Backend, Error, KvCacheConfig, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

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

    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
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

    pub fn to_bytes(self, data: &[f32]) -> Vec<u8> {
        match self {
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

    pub fn from_bytes(self, bytes: &[u8], n: usize) -> Vec<f32> {
        match self {
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
        }
    }
}

/// What a GPU reports when opened.
#[derive(Debug, Clone, Default)]
pub struct DeviceInfo {
    pub name: String,
    pub free_bytes: usize,
    pub total_bytes: usize,
    /// e.g. `sm_90` or `gfx90a`.
    pub arch: String,
    /// Lanes per warp / wavefront (32 on NVIDIA, 64 on gfx90a).
    pub warp: u32,
}

/// Launch geometry.
#[derive(Debug, Clone, Copy)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared: u32,
}

/// A GEMM's shape and device addresses: row-major `out[m, n] = x[m, k] · w[n, k]ᵀ`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub w: u64,
    pub out: u64,
}

/// One vendor's runtime: what [`GpuBackend`] needs and nothing more.
pub trait Device: Send + Sync + Sized + 'static {
    /// An owned device allocation, freed on drop (stream-ordered or synchronous).
    type Mem: Send + Sync;
    /// A loaded kernel.
    type Func: Send + Sync;
    /// `cuda` or `hip`.
    const NAME: &'static str;

    fn info(&self) -> &DeviceInfo;
    /// Compiles one `kernels/hip/` source for this device and loads the named entry points.
    fn load_kernels(&self, file: &str, source: &str, names: &[String]) -> Result<Vec<Self::Func>>;
    /// A zero-filled allocation of at least `bytes` (at least 1).
    fn alloc_zeros(&self, bytes: usize) -> Result<Self::Mem>;
    /// A new allocation holding `bytes`.
    fn htod(&self, bytes: &[u8]) -> Result<Self::Mem>;
    /// Copies the first `out.len()` bytes of `m` to the host (waits for queued work).
    fn dtoh(&self, m: &Self::Mem, out: &mut [u8]) -> Result<()>;
    /// The allocation's device address.
    fn ptr(&self, m: &Self::Mem) -> u64;
    /// Queues `f` on the backend's stream.
    ///
    /// # Safety
    /// `params` must point at values matching the kernel's parameter list, and every
    /// device address among them must stay allocated until the kernel has run.
    unsafe fn launch(&self, f: &Self::Func, cfg: Launch, params: &mut [*mut c_void]) -> Result<()>;
    /// The GEMM `g` in `dtype`, f32 accumulation.
    ///
    /// # Safety
    /// The addresses must be live allocations of at least those sizes.
    unsafe fn gemm_bt(&self, dtype: Dtype, g: Gemm) -> Result<()>;
    /// Queues a device-to-device copy of the first `bytes` bytes of `src` into `dst`.
    ///
    /// # Safety
    /// Both allocations must hold at least `bytes` bytes.
    unsafe fn copy(&self, src: &Self::Mem, dst: &mut Self::Mem, bytes: usize) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Free and total device memory in bytes.
    fn mem_info(&self) -> Result<(usize, usize)>;
}

/// A device buffer of `len` values of the backend's storage type.
pub struct GpuBuf<D: Device> {
    mem: D::Mem,
    ptr: u64,
    len: usize,
}

impl<D: Device> GpuBuf<D> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The last upload of some per-step metadata: its host copy and device buffer.
struct Cached<D: Device> {
    host: Vec<u32>,
    /// Keeps the allocation `ptr` points into alive.
    _mem: D::Mem,
    ptr: u64,
}

type UploadCache<D> = Mutex<Option<Cached<D>>>;

/// A grow-only device scratch area (split-K partials). Reusing it across calls is safe
/// because all work is queued on one stream in order.
type Scratch<D> = Mutex<Option<(usize, <D as Device>::Mem, u64)>>;

pub struct GpuBackend<D: Device> {
    dev: D,
    funcs: HashMap<String, D::Func>,
    pub dtype: Dtype,
    positions: UploadCache<D>,
    slots: UploadCache<D>,
    /// [query_start | num_queries | context_len | block tables] in one buffer.
    attn_meta: UploadCache<D>,
    scratch: Scratch<D>,
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

/// Kernel arguments by value, each in its own 8-byte-aligned 64-byte slot, and the
/// pointer array a launch takes. No allocation per launch.
struct Params {
    slots: [[u64; 8]; Params::MAX],
    n: usize,
}

impl Params {
    const MAX: usize = 12;

    fn new() -> Params {
        Params {
            slots: [[0; 8]; Params::MAX],
            n: 0,
        }
    }

    fn push<T: Copy>(&mut self, v: T) {
        const { assert!(std::mem::size_of::<T>() <= 64 && std::mem::align_of::<T>() <= 8) };
        assert!(self.n < Params::MAX, "too many kernel arguments");
        // SAFETY: the slot is 64 bytes, 8-aligned, and T fits (checked above).
        unsafe {
            std::ptr::write(self.slots[self.n].as_mut_ptr() as *mut T, v);
        }
        self.n += 1;
    }

    fn ptrs(&mut self) -> [*mut c_void; Params::MAX] {
        let mut p = [std::ptr::null_mut(); Params::MAX];
        for (i, s) in self.slots.iter_mut().enumerate().take(self.n) {
            p[i] = s.as_mut_ptr() as *mut c_void;
        }
        p
    }
}

/// `launch!(self, "kernel", cfg, arg, ...)`: every argument is a plain value (device
/// addresses as `u64`, `i32`, `i64`, `f32`, `AttnArgs`).
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $self.f($name)?;
        let cfg: Launch = $cfg;
        if cfg.grid.0 == 0 || cfg.grid.1 == 0 || cfg.grid.2 == 0 {
            // Nothing to do (no rows, no sequences): a kernel launched anyway would run
            // one block over row 0 of buffers that may hold no rows.
            Ok(())
        } else {
            let mut p = Params::new();
            $( p.push($arg); )*
            let n = p.n;
            let mut ptrs = p.ptrs();
            // SAFETY: arguments match the kernel's parameter list (see kernels/hip/), and
            // the buffers they address are borrowed for the duration of the op.
            unsafe { $self.dev.launch(f, cfg, &mut ptrs[..n]) }
        }
    }};
}

/// `extern "C"` entry points in a source: the names `NS_FOR_DTYPES` and `NS_KERNEL` make.
pub(crate) fn kernel_names(src: &str) -> Vec<String> {
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

/// One block per row; no launch at all for 0 rows.
fn grid1(n: usize) -> Launch {
    Launch {
        grid: (n as u32, 1, 1),
        block: (THREADS, 1, 1),
        shared: 0,
    }
}

/// A grid-stride loop over `n` values; no launch for 0.
fn stride_grid(n: usize) -> Launch {
    Launch {
        grid: (n.div_ceil(THREADS as usize).min(65535) as u32, 1, 1),
        block: (THREADS, 1, 1),
        shared: 0,
    }
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
        Ok(GpuBackend {
            dev,
            funcs,
            dtype,
            positions: Mutex::new(None),
            slots: Mutex::new(None),
            attn_meta: Mutex::new(None),
            scratch: Mutex::new(None),
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

    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.dev.mem_info()
    }

    /// The kernel for this backend's dtype (no allocation: called per launch).
    fn f(&self, base: &str) -> Result<&D::Func> {
        self.funcs
            .get(base)
            .ok_or_else(|| Error::Unavailable(format!("{}: kernel {base} not found", D::NAME)))
    }

    /// `v` on the device, reusing the last upload through `slot` when the contents are
    /// the same: a step's positions, slot mapping and attention metadata are the same
    /// for every layer, so they cross the bus once per step, not once per layer.
    fn cached_u32s(&self, slot: &UploadCache<D>, v: &[u32]) -> Result<u64> {
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.as_ref().filter(|c| c.host.as_slice() == v) {
            return Ok(c.ptr);
        }
        let mem = self.u32s(v)?;
        let ptr = self.dev.ptr(&mem);
        *g = Some(Cached {
            host: v.to_vec(),
            _mem: mem,
            ptr,
        });
        Ok(ptr)
    }

    fn u32s(&self, v: &[u32]) -> Result<D::Mem> {
        if v.is_empty() {
            return self.dev.alloc_zeros(4);
        }
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.dev.htod(&bytes)
    }

    /// The scratch area, grown to at least `bytes`; returns its address.
    fn scratch(&self, bytes: usize) -> Result<u64> {
        let mut g = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((size, _, ptr)) = g.as_ref() {
            if *size >= bytes {
                return Ok(*ptr);
            }
        }
        // Grow geometrically so a slowly rising context does not reallocate per step.
        let size = bytes.max(g.as_ref().map_or(0, |s| s.0 * 2));
        *g = None;
        let mem = self.dev.alloc_zeros(size)?;
        let ptr = self.dev.ptr(&mem);
        *g = Some((size, mem, ptr));
        Ok(ptr)
    }

    fn check(&self, op: &'static str, name: &str, b: &GpuBuf<D>, need: usize) -> Result<()> {
        if b.len < need {
            return Err(Error::Shape {
                op,
                msg: format!("{name} holds {} values, needs {need}", b.len),
            });
        }
        Ok(())
    }
}

impl<D: Device> Backend for GpuBackend<D> {
    type Buf = GpuBuf<D>;

    fn name(&self) -> &'static str {
        D::NAME
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuf<D>> {
        let bytes = self.dtype.to_bytes(data);
        let mem = if bytes.is_empty() {
            self.dev.alloc_zeros(1)?
        } else {
            self.dev.htod(&bytes)?
        };
        Ok(GpuBuf {
            ptr: self.dev.ptr(&mem),
            mem,
            len: data.len(),
        })
    }

    fn zeros(&self, len: usize) -> Result<GpuBuf<D>> {
        let mem = self.dev.alloc_zeros((len * self.dtype.size()).max(1))?;
        Ok(GpuBuf {
            ptr: self.dev.ptr(&mem),
            mem,
            len,
        })
    }

    fn download(&self, buf: &GpuBuf<D>) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; buf.len * self.dtype.size()];
        self.dev.dtoh(&buf.mem, &mut bytes)?;
        Ok(self.dtype.from_bytes(&bytes, buf.len))
    }

    fn embedding(
        &self,
        table: &GpuBuf<D>,
        vocab: usize,
        hidden: usize,
        ids: &[u32],
        out: &mut GpuBuf<D>,
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
        launch!(
            self,
            "embedding",
            grid1(ids.len()),
            out.ptr,
            table.ptr,
            self.dev.ptr(&ids_d),
            hidden as i32
        )
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
        self.check("rms_norm", "x", x, rows * dim)?;
        self.check("rms_norm", "weight", weight, dim)?;
        self.check("rms_norm", "out", out, rows * dim)?;
        launch!(
            self,
            "rms_norm",
            grid1(rows),
            out.ptr,
            x.ptr,
            weight.ptr,
            dim as i32,
            eps
        )
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
        self.check("add_rms_norm", "residual", residual, rows * dim)?;
        self.check("add_rms_norm", "weight", weight, dim)?;
        self.check("add_rms_norm", "x", x, rows * dim)?;
        self.check("add_rms_norm", "out", out, rows * dim)?;
        launch!(
            self,
            "add_rms_norm",
            grid1(rows),
            residual.ptr,
            x.ptr,
            weight.ptr,
            out.ptr,
            dim as i32,
            eps
        )
    }

    fn add_inplace(&self, residual: &mut GpuBuf<D>, x: &GpuBuf<D>, len: usize) -> Result<()> {
        self.check("add_inplace", "residual", residual, len)?;
        self.check("add_inplace", "x", x, len)?;
        launch!(
            self,
            "add_inplace",
            stride_grid(len),
            residual.ptr,
            x.ptr,
            len as i64
        )
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
        self.check("matmul", "x", x, m * k)?;
        self.check("matmul", "w", w, n * k)?;
        self.check("matmul", "out", out, m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        // SAFETY: live allocations of the checked sizes.
        unsafe {
            self.dev.gemm_bt(
                self.dtype,
                Gemm {
                    m,
                    n,
                    k,
                    x: x.ptr,
                    w: w.ptr,
                    out: out.ptr,
                },
            )?
        };
        if let Some(b) = bias {
            self.check("matmul", "bias", b, n)?;
            launch!(self, "add_bias", grid1(m), out.ptr, b.ptr, n as i32)?;
        }
        Ok(())
    }

    fn rope(
        &self,
        x: &mut GpuBuf<D>,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
        head_dim: usize,
        positions: &[u32],
        cos_sin: &GpuBuf<D>,
    ) -> Result<()> {
        error::rope_shape(row_stride, col_offset, num_heads, head_dim)?;
        self.check("rope", "x", x, positions.len() * row_stride)?;
        let max_pos = cos_sin.len / head_dim.max(1);
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= max_pos) {
            return Err(Error::OutOfRange {
                op: "rope",
                index: p as usize,
                limit: max_pos,
            });
        }
        let pos = self.cached_u32s(&self.positions, positions)?;
        launch!(
            self,
            "rope",
            grid1(positions.len()),
            x.ptr,
            pos,
            cos_sin.ptr,
            row_stride as i32,
            col_offset as i32,
            num_heads as i32,
            head_dim as i32
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
        let slot_len = cache.slot_len();
        error::kv_in_row(row_stride, k_offset, slot_len)?;
        self.check(
            "reshape_and_cache",
            "qkv",
            qkv,
            slot_mapping.len() * row_stride,
        )?;
        self.check(
            "reshape_and_cache",
            "key_cache",
            key_cache,
            cache.num_slots() * slot_len,
        )?;
        self.check(
            "reshape_and_cache",
            "value_cache",
            value_cache,
            cache.num_slots() * slot_len,
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
        let slots = self.cached_u32s(&self.slots, slot_mapping)?;
        launch!(
            self,
            "reshape_and_cache",
            grid1(slot_mapping.len()),
            qkv.ptr,
            slots,
            key_cache.ptr,
            value_cache.ptr,
            row_stride as i32,
            k_offset as i32,
            (k_offset + slot_len) as i32,
            slot_len as i32
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
        // A window of 0 means none, as on the CPU (the kernels read 0 as "no window",
        // while the split-K partition count would take it as a 0-token window).
        let sliding_window = sliding_window.filter(|&w| w > 0);
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
        meta.validate(row_stride, num_heads, cache, qkv.len, out.len)?;
        self.check("paged_attention", "key_cache", key_cache, cache.layer_len())?;
        self.check(
            "paged_attention",
            "value_cache",
            value_cache,
            cache.layer_len(),
        )?;
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
        let base = self.cached_u32s(&self.attn_meta, &meta_host)?;
        let at = |k: usize| base + (k * std::mem::size_of::<u32>()) as u64;
        let args = AttnArgs {
            query_start: at(0),
            num_queries: at(n),
            context_len: at(2 * n),
            block_tables: at(3 * n),
            max_blocks: max_blocks as i32,
            block_size: cache.block_size as i32,
            num_heads: num_heads as i32,
            num_kv_heads: cache.num_kv_heads as i32,
            head_dim: hd as i32,
            row_stride: row_stride as i32,
            scale,
            window: sliding_window.unwrap_or(0) as i32,
        };
        let threads = ATTN_WARPS * self.dev.info().warp;
        if seqs.iter().all(|s| s.num_queries == 1) {
            // Decode: split-K (flash-decoding) over partitions of the context, then a
            // reduce. The partials live in the grow-only scratch area.
            let span = seqs
                .iter()
                .map(|s| sliding_window.map_or(s.context_len, |w| s.context_len.min(w)))
                .max()
                .unwrap_or(1);
            let parts = span.div_ceil(PARTITION).max(1);
            let items = seqs.len() * num_heads * parts;
            let base = self.scratch((items * hd + 2 * items) * 4)?;
            let (tmp, maxl, sums) = (
                base,
                base + (items * hd * 4) as u64,
                base + ((items * hd + items) * 4) as u64,
            );
            let cfg = Launch {
                grid: (num_heads as u32, seqs.len() as u32, parts as u32),
                block: (threads, 1, 1),
                shared: 0,
            };
            launch!(
                self,
                "paged_attention_partial",
                cfg,
                qkv.ptr,
                key_cache.ptr,
                value_cache.ptr,
                tmp,
                maxl,
                sums,
                args,
                parts as i32
            )?;
            let cfg = Launch {
                grid: (num_heads as u32, seqs.len() as u32, 1),
                block: (THREADS, 1, 1),
                shared: 0,
            };
            launch!(
                self,
                "paged_attention_reduce",
                cfg,
                out.ptr,
                tmp,
                maxl,
                sums,
                args,
                parts as i32
            )
        } else {
            let max_q = seqs.iter().map(|s| s.num_queries).max().unwrap_or(1);
            let shared = ((ATTN_WARPS as usize * hd + 2 * TILE * hd) * 4) as u32;
            let cfg = Launch {
                grid: (
                    max_q.div_ceil(ATTN_WARPS as usize) as u32,
                    num_heads as u32,
                    seqs.len() as u32,
                ),
                block: (threads, 1, 1),
                shared,
            };
            launch!(
                self,
                "prefill_attention",
                cfg,
                qkv.ptr,
                key_cache.ptr,
                value_cache.ptr,
                out.ptr,
                args
            )
        }
    }

    fn silu_and_mul(
        &self,
        x: &GpuBuf<D>,
        rows: usize,
        inter: usize,
        out: &mut GpuBuf<D>,
    ) -> Result<()> {
        self.check("silu_and_mul", "x", x, rows * 2 * inter)?;
        self.check("silu_and_mul", "out", out, rows * inter)?;
        launch!(
            self,
            "silu_and_mul",
            grid1(rows),
            out.ptr,
            x.ptr,
            inter as i32
        )
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
        error::heads_in_row("head_rms_norm", row_stride, col_offset, num_heads, head_dim)?;
        self.check("head_rms_norm", "x", x, rows * row_stride)?;
        self.check("head_rms_norm", "weight", weight, head_dim)?;
        let items = rows * num_heads;
        let cfg = Launch {
            grid: (items.div_ceil(ATTN_WARPS as usize) as u32, 1, 1),
            block: (ATTN_WARPS * self.dev.info().warp, 1, 1),
            shared: 0,
        };
        launch!(
            self,
            "head_rms_norm",
            cfg,
            x.ptr,
            weight.ptr,
            rows as i32,
            row_stride as i32,
            col_offset as i32,
            num_heads as i32,
            head_dim as i32,
            eps
        )
    }

    fn gather_rows(
        &self,
        x: &GpuBuf<D>,
        dim: usize,
        indices: &[usize],
        out: &mut GpuBuf<D>,
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
        launch!(
            self,
            "gather_rows",
            grid1(indices.len()),
            out.ptr,
            x.ptr,
            self.dev.ptr(&idx),
            dim as i32
        )
    }

    fn argmax_rows(&self, x: &GpuBuf<D>, rows: usize, cols: usize) -> Result<Vec<u32>> {
        self.check("argmax_rows", "x", x, rows * cols)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        if cols == 0 {
            return Ok(vec![0; rows]);
        }
        // The logits as f32 (the kernel's input; the copy lives in the scratch area),
        // then one block per row; only the ids cross the bus.
        let n = rows * cols;
        let ids_bytes = rows * 4;
        let logits = if self.dtype == Dtype::F32 {
            x.ptr
        } else {
            let f = self.scratch(n * 4)?;
            launch!(self, "to_f32", stride_grid(n), f, x.ptr, n as i64)?;
            f
        };
        let ids = self.dev.alloc_zeros(ids_bytes)?;
        launch!(
            self,
            "argmax_rows",
            grid1(rows),
            logits,
            self.dev.ptr(&ids),
            cols as i32
        )?;
        let mut bytes = vec![0u8; ids_bytes];
        self.dev.dtoh(&ids, &mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_entry_point() {
        let names = kernel_names(include_str!("../hip/sampling.hip"));
        assert_eq!(names, ["argmax_rows", "softmax_rows", "sample_rows"]);
        let names = kernel_names(include_str!("../hip/norm.hip"));
        assert!(
            names.contains(&"add_rms_norm_bf16".to_string()) && names.len() == 9,
            "{names:?}"
        );
    }

    #[test]
    fn params_hold_values_in_aligned_slots() {
        let mut p = Params::new();
        p.push(0x1122_3344_5566_7788u64);
        p.push(-3i32);
        p.push(1.5f32);
        let a = AttnArgs {
            query_start: 1,
            num_queries: 2,
            context_len: 3,
            block_tables: 4,
            max_blocks: 5,
            block_size: 6,
            num_heads: 7,
            num_kv_heads: 8,
            head_dim: 9,
            row_stride: 10,
            scale: 0.5,
            window: 11,
        };
        assert_eq!(std::mem::size_of::<AttnArgs>(), 64);
        p.push(a);
        let n = p.n;
        let ptrs = p.ptrs();
        assert_eq!(n, 4);
        // SAFETY: each pointer addresses the value pushed into its slot.
        unsafe {
            assert_eq!(*(ptrs[0] as *const u64), 0x1122_3344_5566_7788);
            assert_eq!(*(ptrs[1] as *const i32), -3);
            assert_eq!(*(ptrs[2] as *const f32), 1.5);
            let back = *(ptrs[3] as *const AttnArgs);
            assert_eq!((back.block_tables, back.window, back.scale), (4, 11, 0.5));
        }
        assert!(ptrs.iter().all(|p| p.align_offset(8) == 0));
    }

    #[test]
    fn dtype_round_trips() {
        let v = [1.0f32, -2.5, 0.125, 1024.0];
        for d in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let back = d.from_bytes(&d.to_bytes(&v), v.len());
            assert_eq!(back, v, "{d:?}");
        }
        assert_eq!(Dtype::parse("bfloat16"), Some(Dtype::Bf16));
        assert_eq!(Dtype::parse("f8"), None);
    }
}

/// `GpuBackend`'s host-side logic (checks, launch geometry, argument counts) against a
/// device that records what it is asked to do instead of running kernels.
#[cfg(test)]
mod recording_tests {
    use super::*;
    use crate::SeqAttention;

    #[derive(Default)]
    struct Recorder {
        info: DeviceInfo,
        launches: Mutex<Vec<(String, Launch, usize)>>,
        gemms: Mutex<usize>,
        sources: Mutex<Vec<String>>,
    }

    impl Device for Recorder {
        type Mem = Vec<u8>;
        type Func = String;
        const NAME: &'static str = "recorder";
        fn info(&self) -> &DeviceInfo {
            &self.info
        }
        fn load_kernels(&self, _: &str, source: &str, names: &[String]) -> Result<Vec<String>> {
            self.sources.lock().unwrap().push(source.to_string());
            Ok(names.to_vec())
        }
        fn alloc_zeros(&self, bytes: usize) -> Result<Vec<u8>> {
            Ok(vec![0; bytes.max(1)])
        }
        fn htod(&self, bytes: &[u8]) -> Result<Vec<u8>> {
            Ok(bytes.to_vec())
        }
        fn dtoh(&self, m: &Vec<u8>, out: &mut [u8]) -> Result<()> {
            out.copy_from_slice(&m[..out.len()]);
            Ok(())
        }
        fn ptr(&self, m: &Vec<u8>) -> u64 {
            m.as_ptr() as u64
        }
        unsafe fn launch(&self, f: &String, cfg: Launch, params: &mut [*mut c_void]) -> Result<()> {
            self.launches
                .lock()
                .unwrap()
                .push((f.clone(), cfg, params.len()));
            Ok(())
        }
        unsafe fn gemm_bt(&self, _: Dtype, _: Gemm) -> Result<()> {
            *self.gemms.lock().unwrap() += 1;
            Ok(())
        }
        unsafe fn copy(&self, _: &Vec<u8>, _: &mut Vec<u8>, _: usize) -> Result<()> {
            Ok(())
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
        fn mem_info(&self) -> Result<(usize, usize)> {
            Ok((1 << 30, 1 << 30))
        }
    }

    fn backend(warp: u32) -> GpuBackend<Recorder> {
        let dev = Recorder {
            info: DeviceInfo {
                warp,
                ..Default::default()
            },
            ..Default::default()
        };
        GpuBackend::with_device(dev, Dtype::F32).unwrap()
    }

    fn launches(b: &GpuBackend<Recorder>) -> Vec<(String, Launch, usize)> {
        std::mem::take(&mut *b.dev.launches.lock().unwrap())
    }

    #[test]
    fn kernels_are_compiled_for_the_devices_warp_width() {
        for warp in [32, 64] {
            let b = backend(warp);
            let sources = b.dev.sources.lock().unwrap();
            assert!(!sources.is_empty());
            let line = format!("#define NS_WARP {warp}\n");
            assert!(sources.iter().all(|s| s.starts_with(&line)));
        }
    }

    /// An op over no rows launches nothing: one block over row 0 would write into
    /// buffers that hold no rows (a chunked-prefill step samples no sequence).
    #[test]
    fn ops_over_no_rows_launch_nothing() {
        let b = backend(32);
        let h = 8;
        let x = b.zeros(0).unwrap();
        let mut out = b.zeros(0).unwrap();
        let w = b.upload(&[1.0; 8]).unwrap();
        b.gather_rows(&x, h, &[], &mut out).unwrap();
        b.rms_norm(&x, &w, 0, h, 1e-5, &mut out).unwrap();
        let mut r = b.zeros(0).unwrap();
        b.add_rms_norm(&mut r, &x, &w, 0, h, 1e-5, &mut out)
            .unwrap();
        b.silu_and_mul(&x, 0, h, &mut out).unwrap();
        b.matmul(&x, &w, Some(&w), 0, 1, 8, &mut out).unwrap();
        let table = b.upload(&[1.0; 8]).unwrap();
        b.embedding(&table, 1, 8, &[], &mut out).unwrap();
        let mut q = b.zeros(0).unwrap();
        b.rope(&mut q, 8, 0, 1, 8, &[], &table).unwrap();
        b.add_inplace(&mut q, &x, 0).unwrap();
        b.head_rms_norm(&mut q, 0, 8, 0, 1, 8, &w, 1e-5).unwrap();
        let cache = KvCacheConfig {
            num_blocks: 1,
            block_size: 4,
            num_kv_heads: 1,
            head_dim: 4,
        };
        let (mut kc, mut vc) = (b.zeros(16).unwrap(), b.zeros(16).unwrap());
        b.reshape_and_cache(&q, 8, 0, &cache, &[], &mut kc, &mut vc)
            .unwrap();
        assert!(launches(&b).is_empty());
        assert_eq!(*b.dev.gemms.lock().unwrap(), 0);
        // One row does launch.
        let x1 = b.upload(&[1.0; 8]).unwrap();
        let mut o1 = b.zeros(8).unwrap();
        b.rms_norm(&x1, &w, 1, h, 1e-5, &mut o1).unwrap();
        let l = launches(&b);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].1.grid, (1, 1, 1));
    }

    /// Shapes the kernels would overrun are errors before any launch, as on the CPU.
    #[test]
    fn bad_shapes_fail_before_launching() {
        let b = backend(32);
        let mut x = b.upload(&[0.0; 32]).unwrap();
        let cs = b.upload(&[1.0; 64]).unwrap();
        let short = b.upload(&[1.0; 4]).unwrap();
        let mut out = b.zeros(32).unwrap();
        // rope: heads past the row, odd head_dim.
        assert!(b.rope(&mut x, 8, 4, 1, 8, &[0], &cs).is_err());
        assert!(b.rope(&mut x, 8, 0, 1, 7, &[0], &cs).is_err());
        // norms: a weight shorter than the row.
        assert!(b.rms_norm(&x, &short, 4, 8, 1e-5, &mut out).is_err());
        assert!(b
            .head_rms_norm(&mut x, 4, 8, 0, 1, 8, &short, 1e-5)
            .is_err());
        assert!(b.head_rms_norm(&mut x, 4, 8, 4, 1, 8, &cs, 1e-5).is_err());
        // reshape_and_cache: k and v past the row.
        let cache = KvCacheConfig {
            num_blocks: 2,
            block_size: 4,
            num_kv_heads: 1,
            head_dim: 4,
        };
        let (mut kc, mut vc) = (b.zeros(32).unwrap(), b.zeros(32).unwrap());
        assert!(b
            .reshape_and_cache(&x, 8, 4, &cache, &[0], &mut kc, &mut vc)
            .is_err());
        assert!(launches(&b).is_empty());
    }

    /// A sliding window of 0 is no window: decode attention splits the whole context,
    /// exactly as with `None`.
    #[test]
    fn a_zero_sliding_window_is_no_window() {
        let b = backend(32);
        let cache = KvCacheConfig {
            num_blocks: 80,
            block_size: 16,
            num_kv_heads: 1,
            head_dim: 8,
        };
        let (kc, vc) = (
            b.zeros(cache.layer_len()).unwrap(),
            b.zeros(cache.layer_len()).unwrap(),
        );
        let qkv = b.zeros(3 * 8).unwrap();
        let meta = AttentionMetadata {
            seqs: vec![SeqAttention {
                query_start: 0,
                num_queries: 1,
                context_len: 1200,
                block_table: (0..75).collect(),
            }],
        };
        let mut grids = Vec::new();
        for window in [None, Some(0)] {
            let mut out = b.zeros(8).unwrap();
            b.paged_attention(&qkv, 24, 1, &cache, &kc, &vc, &meta, 1.0, window, &mut out)
                .unwrap();
            grids.push(
                launches(&b)
                    .iter()
                    .map(|l| (l.0.clone(), l.1.grid))
                    .collect::<Vec<_>>(),
            );
        }
        assert!(!grids[0].is_empty());
        assert_eq!(grids[0], grids[1]);
    }
}
