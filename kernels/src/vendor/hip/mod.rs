//! AMD as a [`Device`] (feature `hip`): [`HipDevice`] over the HIP runtime and hiprtc
//! (`runtime.rs`), rocBLAS for GEMMs (`rocblas.rs`), a size-class memory pool
//! (`pool.rs`) and pinned staging for uploads (`staging.rs`), all loaded at run time.
//! Kernels are compiled for the device's own architecture (`arch.rs`). [`HipBackend`]
//! is the shared GPU backend on it, the same code the NVIDIA build runs.
//!
//! Everything (kernels, rocBLAS, uploads, copies, memsets) runs on the device's one
//! stream (`stream.rs`), so work is ordered without events and the host waits only
//! where it reads a result. Decode steps can be captured into HIP graphs on that
//! stream (`graph.rs`).

pub mod arch;
mod graph;
mod pool;
mod rocblas;
pub mod runtime;
mod staging;
mod stream;

pub use self::graph::HipGraph;
use self::pool::Pool;
use self::rocblas::{
    rocblas_type, RocBlas, ROCBLAS_DATATYPE_F32_R, ROCBLAS_GEMM_ALGO_STANDARD,
    ROCBLAS_OPERATION_NONE, ROCBLAS_OPERATION_TRANSPOSE,
};
use self::runtime::Hip;
use self::staging::Staging;
use self::stream::Stream;
use crate::gpu::{Device, DeviceInfo, Gemm, GpuBackend, Launch};
use crate::{Dtype, Error, Result};
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::Arc;

/// The shared GPU backend on an AMD device.
pub type HipBackend = GpuBackend<HipDevice>;

/// An owned device allocation; on drop it goes back to the device's pool.
pub struct HipMem {
    pool: Arc<Pool>,
    ptr: *mut c_void,
    class: usize,
}

// SAFETY: a device address is usable from any host thread of the process.
unsafe impl Send for HipMem {}
unsafe impl Sync for HipMem {}

impl Drop for HipMem {
    fn drop(&mut self) {
        self.pool.give(self.class, self.ptr);
    }
}

/// A kernel handle (`hipFunction_t`), valid for the life of the process.
pub struct HipFunc(*mut c_void);

// SAFETY: module functions are process-wide handles.
unsafe impl Send for HipFunc {}
unsafe impl Sync for HipFunc {}

/// Fields drop in order: staging (waits for its copies) and rocBLAS before the
/// stream they queue on, the stream (waits for its work) before the pool and runtime.
pub struct HipDevice {
    staging: Staging,
    blas: RocBlas,
    stream: Stream,
    pool: Arc<Pool>,
    hip: Arc<Hip>,
    info: DeviceInfo,
    /// The full target ID kernels are compiled for (`gfx90a:sramecc+:xnack-`);
    /// `info.arch` is its base name.
    target: String,
    ordinal: usize,
}

thread_local! {
    /// The device this thread last made current (HIP's current device is per thread).
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

impl HipDevice {
    /// Opens AMD GPU `ordinal`, creates its stream and puts rocBLAS on it; kernels
    /// are compiled for the device's `gcnArchName` unless `NOVASTACK_HIP_ARCH` is set.
    pub fn open(ordinal: usize) -> Result<HipDevice> {
        let hip = Arc::new(Hip::load()?);
        let opened = hip.open(ordinal)?;
        CURRENT.with(|c| c.set(Some(ordinal)));
        let stream = Stream::new(hip.clone())?;
        let blas = RocBlas::load()?;
        blas.set_stream(stream.raw())?;
        Ok(HipDevice {
            staging: Staging::new(hip.clone()),
            blas,
            stream,
            pool: Arc::new(Pool::new(hip.clone())),
            hip,
            info: opened.info,
            target: opened.target,
            ordinal,
        })
    }

    /// Makes this device current on the calling thread (once per thread).
    fn bind(&self) -> Result<()> {
        if CURRENT.with(|c| c.get()) != Some(self.ordinal) {
            self.hip.set_device(self.ordinal)?;
            CURRENT.with(|c| c.set(Some(self.ordinal)));
        }
        Ok(())
    }

    fn alloc(&self, bytes: usize) -> Result<HipMem> {
        self.bind()?;
        let class = Pool::class(bytes);
        let ptr = match self.pool.take(class) {
            Some(p) => p,
            None => self.hip.alloc(class)?,
        };
        Ok(HipMem {
            pool: self.pool.clone(),
            ptr,
            class,
        })
    }
}

impl Device for HipDevice {
    type Mem = HipMem;
    type Func = HipFunc;
    type Graph = HipGraph;
    const NAME: &'static str = "hip";

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn load_kernels(&self, file: &str, source: &str, names: &[String]) -> Result<Vec<HipFunc>> {
        self.bind()?;
        let code = self.hip.compile(file, source, &self.target)?;
        let module = self.hip.module(&code)?;
        names
            .iter()
            // SAFETY: `module` was just loaded.
            .map(|n| unsafe { self.hip.get_function(module, n) }.map(HipFunc))
            .collect()
    }

    fn alloc_zeros(&self, bytes: usize) -> Result<HipMem> {
        let m = self.alloc(bytes)?;
        // SAFETY: m holds at least max(bytes, 1) bytes; the stream is live.
        unsafe {
            self.hip
                .memset_zero(m.ptr, bytes.max(1), self.stream.raw())?
        };
        Ok(m)
    }

    /// Small uploads (every step's metadata) are queued from pinned staging and
    /// return at once; large ones (weights, once) are copied in stream order and
    /// waited for. Either way the copy is ordered after the work queued before it,
    /// which may still be using the pool block it lands in.
    fn htod(&self, bytes: &[u8]) -> Result<HipMem> {
        let m = self.alloc(bytes.len())?;
        if Staging::<Hip>::takes(bytes.len()) {
            // SAFETY: m holds at least bytes.len() bytes and goes back to the pool
            // only for work queued after this copy; the stream is live.
            unsafe { self.staging.upload(m.ptr, bytes, self.stream.raw())? };
        } else if !bytes.is_empty() {
            // SAFETY: as above; the call returns after the copy has run.
            unsafe { self.hip.copy_to_device(m.ptr, bytes, self.stream.raw())? };
        }
        Ok(m)
    }

    /// As `htod`, into an existing allocation (`Pool::class(bytes)` is its size).
    fn write(&self, m: &mut HipMem, offset: usize, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > m.class)
        {
            return Err(Error::Unavailable(format!(
                "HIP: a write of {} bytes at {offset} into a {}-byte allocation",
                bytes.len(),
                m.class
            )));
        }
        self.bind()?;
        // SAFETY: the range lies inside the allocation (checked above); the stream is live.
        let dst = unsafe { (m.ptr as *mut u8).add(offset) } as *mut c_void;
        if Staging::<Hip>::takes(bytes.len()) {
            // SAFETY: as in `htod`: ordered after the work queued before it.
            unsafe { self.staging.upload(dst, bytes, self.stream.raw()) }
        } else {
            // SAFETY: as above; the call returns after the copy has run.
            unsafe { self.hip.copy_to_device(dst, bytes, self.stream.raw()) }
        }
    }

    fn dtoh(&self, m: &HipMem, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller asks for at most the allocation's size (GpuBuf lengths);
        // the copy follows the stream's queued work and is waited for.
        unsafe { self.hip.copy_to_host(out, m.ptr, self.stream.raw()) }
    }

    unsafe fn copy(&self, src: &HipMem, dst: &mut HipMem, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both hold at least `bytes` bytes (the caller's contract).
        unsafe {
            self.hip
                .copy_on_device(dst.ptr, src.ptr, bytes, self.stream.raw())
        }
    }

    fn ptr(&self, m: &HipMem) -> u64 {
        m.ptr as u64
    }

    unsafe fn launch(
        &self,
        f: &HipFunc,
        cfg: Launch,
        params: &mut [*mut c_void],
        _sizes: &[usize],
    ) -> Result<()> {
        self.bind()?;
        self.hip.launch(
            f.0,
            cfg.grid,
            cfg.block,
            cfg.shared,
            self.stream.raw(),
            params,
        )
    }

    unsafe fn gemm_bt(&self, dtype: Dtype, g: Gemm) -> Result<()> {
        let c = g.column_major();
        self.bind()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let t = rocblas_type(dtype);
        let op = |trans: bool| {
            if trans {
                ROCBLAS_OPERATION_TRANSPOSE
            } else {
                ROCBLAS_OPERATION_NONE
            }
        };
        let st = (self.blas.gemm_ex)(
            self.blas.handle,
            op(c.trans_a),
            op(c.trans_b),
            c.m as c_int,
            c.n as c_int,
            c.k as c_int,
            &alpha as *const f32 as *const c_void,
            c.a as *const c_void,
            t,
            c.lda as c_int,
            c.b as *const c_void,
            t,
            c.ldb as c_int,
            &beta as *const f32 as *const c_void,
            c.c as *const c_void,
            t,
            c.ldc as c_int,
            c.c as *mut c_void,
            t,
            c.ldc as c_int,
            ROCBLAS_DATATYPE_F32_R,
            ROCBLAS_GEMM_ALGO_STANDARD,
            0,
            0,
        );
        if st != 0 {
            let Gemm { m, n, k, .. } = g;
            return Err(Error::Unavailable(format!(
                "rocblas_gemm_ex({m}x{n}x{k}, {dtype:?}) failed (rocblas_status {st})"
            )));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize()
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        self.hip.mem_info()
    }

    fn graphs_supported(&self) -> bool {
        self.hip.has_graphs()
    }

    fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the device's own live stream.
        unsafe { self.hip.begin_capture(self.stream.raw()) }
    }

    fn end_capture(&self) -> Result<HipGraph> {
        self.bind()?;
        // SAFETY: called after `begin_capture` (the backend pairs them).
        let handles = unsafe { self.hip.end_capture(self.stream.raw())? };
        Ok(HipGraph::new(self.hip.clone(), handles))
    }

    unsafe fn replay(&self, graph: &HipGraph) -> Result<()> {
        self.bind()?;
        // SAFETY: a live graph of this device; the stream is live.
        unsafe { self.hip.graph_launch(graph.exec(), self.stream.raw()) }
    }
}

impl GpuBackend<HipDevice> {
    /// Opens AMD GPU `ordinal`, loads rocBLAS and compiles every kernel with hiprtc.
    pub fn new(ordinal: usize, dtype: Dtype) -> Result<Self> {
        GpuBackend::with_device(HipDevice::open(ordinal)?, dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a GPU (CI installs Debian's HIP runtime but has no AMD GPU, and Debian
    /// 12 ships no rocBLAS) opening the backend is a clear error naming what is missing.
    #[test]
    fn opening_without_gpu_or_rocblas_is_a_clear_error() {
        match HipBackend::new(0, Dtype::Bf16) {
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.contains("libamdhip64") || m.contains("no AMD GPU") || m.contains("rocBLAS"),
                    "{m}"
                );
            }
            Ok(b) => assert!(b.info().total_bytes > 0),
        }
        if let Err(e) = RocBlas::load() {
            assert!(e.to_string().contains("librocblas"), "{e}");
        }
    }
}
