//! The vocabulary between the shared GPU backend and a vendor: what a device reports
//! ([`DeviceInfo`]), a launch's geometry ([`Launch`]), a GEMM ([`Gemm`]), and the
//! [`Device`] trait a vendor implements (`vendor::hip`, `vendor::cuda`, `vendor::sim`,
//! and the recording device of the tests). Nothing vendor-specific is named here.

use crate::{Dtype, Error, Result};
use std::ffi::c_void;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared: u32,
}

/// A GEMM's shape and device addresses: row-major `out[m, n] = x[m, k] · w[n, k]ᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub w: u64,
    pub out: u64,
}

/// The column-major BLAS call (`cublasGemmEx`, `rocblas_gemm_ex`) that computes a
/// [`Gemm`]: `c[m, n] = op(a)[m, k] · op(b)[k, n]` with every matrix column-major,
/// `op(a)` transposed when `trans_a`. Both vendors call BLAS with exactly these
/// values, and the simulated device executes them, so the mapping is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlasGemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
}

impl Gemm {
    /// Row-major `out[m, n] = x[m, k] · w[n, k]ᵀ` is column-major `outᵀ[n, m] = w · xᵀ`:
    /// `a` = w (stored as a column-major k x n, transposed), `b` = xᵀ (k x m, as stored).
    pub fn column_major(&self) -> BlasGemm {
        BlasGemm {
            trans_a: true,
            trans_b: false,
            m: self.n,
            n: self.m,
            k: self.k,
            a: self.w,
            lda: self.k,
            b: self.x,
            ldb: self.k,
            c: self.out,
            ldc: self.n,
        }
    }
}

/// One vendor's runtime: what [`super::GpuBackend`] needs and nothing more.
pub trait Device: Send + Sync + Sized + 'static {
    /// An owned device allocation, freed on drop (stream-ordered or synchronous).
    type Mem: Send + Sync;
    /// A loaded kernel.
    type Func: Send + Sync;
    /// A captured, instantiated graph of launches and GEMMs (decode graphs, `graph.rs`).
    /// Devices without graphs use `()`.
    type Graph: Send + Sync;
    /// `cuda` or `hip`.
    const NAME: &'static str;

    fn info(&self) -> &DeviceInfo;
    /// Compiles one `kernels/hip/` source for this device and loads the named entry points.
    fn load_kernels(&self, file: &str, source: &str, names: &[String]) -> Result<Vec<Self::Func>>;
    /// A zero-filled allocation of at least `bytes` (at least 1).
    fn alloc_zeros(&self, bytes: usize) -> Result<Self::Mem>;
    /// An allocation of at least `bytes` whose contents are unspecified: for buffers
    /// that kernels write before they read (split-K partials). The simulated device
    /// fills it with poison so that a read before a write shows.
    fn alloc(&self, bytes: usize) -> Result<Self::Mem> {
        self.alloc_zeros(bytes)
    }
    /// A new allocation holding `bytes`.
    fn htod(&self, bytes: &[u8]) -> Result<Self::Mem>;
    /// Copies `bytes` into the existing allocation `m` at byte `offset`, ordered on the
    /// stream after the work queued before it (which may still read the old contents)
    /// and before the work queued after it; the host may reuse `bytes` at once. This is
    /// how per-step metadata reaches the fixed buffers a captured graph reads.
    fn write(&self, m: &mut Self::Mem, offset: usize, bytes: &[u8]) -> Result<()>;
    /// Copies the first `out.len()` bytes of `m` to the host (waits for queued work).
    fn dtoh(&self, m: &Self::Mem, out: &mut [u8]) -> Result<()>;
    /// The allocation's device address.
    fn ptr(&self, m: &Self::Mem) -> u64;
    /// Queues `f` on the backend's stream. `sizes[i]` is the size in bytes of the value
    /// `params[i]` points at (vendors ignore it; the simulated device checks it against
    /// the kernel's signature).
    ///
    /// # Safety
    /// `params` must point at values matching the kernel's parameter list, and every
    /// device address among them must stay allocated until the kernel has run.
    unsafe fn launch(
        &self,
        f: &Self::Func,
        cfg: Launch,
        params: &mut [*mut c_void],
        sizes: &[usize],
    ) -> Result<()>;
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

    /// Whether [`Device::begin_capture`] works on this device.
    fn graphs_supported(&self) -> bool {
        false
    }
    /// From now on launches and GEMMs are recorded into a graph instead of run, until
    /// [`Device::end_capture`]. Allocations, uploads, writes and downloads are not
    /// allowed while capturing (the backend never issues them then).
    fn begin_capture(&self) -> Result<()> {
        Err(no_graphs(Self::NAME))
    }
    /// Ends the capture and returns the graph, ready to replay.
    fn end_capture(&self) -> Result<Self::Graph> {
        Err(no_graphs(Self::NAME))
    }
    /// Queues the captured work again, with the argument values it was captured with.
    ///
    /// # Safety
    /// Every allocation the captured work addresses must still be live.
    unsafe fn replay(&self, graph: &Self::Graph) -> Result<()> {
        let _ = graph;
        Err(no_graphs(Self::NAME))
    }
}

fn no_graphs(name: &str) -> Error {
    Error::Unavailable(format!("{name}: this device cannot capture graphs"))
}
