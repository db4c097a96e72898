//! NVIDIA as a [`Device`] (feature `cuda`): [`CudaDevice`] over the driver and cuBLAS
//! through `cudarc`, kernels compiled by NVRTC (`nvrtc.rs`), all loaded at run time.
//! [`CudaBackend`] is the shared GPU backend on it, the same code the AMD build runs.
//!
//! Ordering: kernels, cuBLAS, allocations (`cuMemAllocAsync` where the driver has it),
//! copies and memsets all go on one stream the device creates, so they run in issue
//! order. Uploads are asynchronous and stream-ordered (`clone_htod` and `write` are
//! `cuMemcpyHtoDAsync`); their source is pageable, so the driver copies it into its
//! own pinned staging first, and for a step's small uploads returns without waiting
//! for the GPU. The host waits only in `dtoh` and `synchronize`. cudarc's event
//! tracking (two events per allocation, for ordering across streams) is off: there is
//! one stream, and a capture must not record those events.
//!
//! Decode graphs (`gpu/graph.rs`): a created stream, not the legacy null stream,
//! because only a created stream can be captured; cuBLAS is on it. Capture is
//! `cuStreamBeginCapture` in relaxed mode, `cuStreamEndCapture` and
//! `cuGraphInstantiate` (cudarc's `CudaStream::begin_capture` / `end_capture`); replay
//! is `cuGraphLaunch` on the same stream. Not verified on a GPU yet (none was
//! available when this was written): that cuBLAS captures `cublasGemmEx` without
//! allocating (the eager step before each capture has already run every GEMM shape
//! on this stream, which is when cuBLAS sets up its workspace), and the speed-up.

pub mod nvrtc;

use crate::gpu::{Device, DeviceInfo, Gemm, GpuBackend, Launch};
use crate::{Dtype, Error, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    sys as driver_sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr,
};
use std::ffi::c_void;
use std::sync::Arc;

/// A buffer of the NVIDIA backend.
pub type GpuBuf = crate::gpu::GpuBuf<CudaDevice>;

/// The shared GPU backend on an NVIDIA device.
pub type CudaBackend = GpuBackend<CudaDevice>;

fn dev(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("CUDA: {e}"))
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    info: DeviceInfo,
}

/// A captured, instantiated CUDA graph.
pub struct CudaGraphExec(CudaGraph);

// SAFETY: a graph is only launched or dropped under the backend's graph lock, one
// thread at a time (CUDA asks that graph calls on one graph be serialized).
unsafe impl Send for CudaGraphExec {}
unsafe impl Sync for CudaGraphExec {}

impl CudaDevice {
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        let (ctx, info) = open_context(ordinal)?;
        // SAFETY: everything this device does goes on the one stream created below,
        // so no allocation is used on another stream (what event tracking orders).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(dev)?;
        let blas = CudaBlas::new(stream.clone()).map_err(dev)?;
        Ok(CudaDevice {
            ctx,
            stream,
            blas,
            info,
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

fn cuda_type(d: Dtype) -> blas_sys::cudaDataType {
    match d {
        Dtype::F32 => blas_sys::cudaDataType::CUDA_R_32F,
        Dtype::F16 => blas_sys::cudaDataType::CUDA_R_16F,
        Dtype::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
    }
}

impl Device for CudaDevice {
    type Mem = CudaSlice<u8>;
    type Func = CudaFunction;
    type Graph = CudaGraphExec;
    const NAME: &'static str = "cuda";

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn load_kernels(
        &self,
        file: &str,
        source: &str,
        names: &[String],
    ) -> Result<Vec<CudaFunction>> {
        let cubin = nvrtc::compile(file, source, &self.info.arch)?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(dev)?;
        names
            .iter()
            .map(|n| {
                module
                    .load_function(n)
                    .map_err(|e| dev(format!("{file}: {n}: {e}")))
            })
            .collect()
    }

    fn alloc_zeros(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(dev)
    }

    fn htod(&self, bytes: &[u8]) -> Result<CudaSlice<u8>> {
        if bytes.is_empty() {
            return self.alloc_zeros(1);
        }
        self.stream.clone_htod(bytes).map_err(dev)
    }

    fn write(&self, m: &mut CudaSlice<u8>, offset: usize, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(bytes.len())
            .filter(|&e| e <= m.len())
            .ok_or_else(|| {
                dev(format!(
                    "a write of {} bytes at {offset} into a {}-byte allocation",
                    bytes.len(),
                    m.len()
                ))
            })?;
        self.stream
            .memcpy_htod(bytes, &mut m.slice_mut(offset..end))
            .map_err(dev)
    }

    fn dtoh(&self, m: &CudaSlice<u8>, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_dtoh(&m.slice(..out.len()), out)
            .map_err(dev)?;
        self.stream.synchronize().map_err(dev)
    }

    unsafe fn copy(
        &self,
        src: &CudaSlice<u8>,
        dst: &mut CudaSlice<u8>,
        bytes: usize,
    ) -> Result<()> {
        self.stream
            .memcpy_dtod(&src.slice(..bytes), &mut dst.slice_mut(..bytes))
            .map_err(dev)
    }

    fn ptr(&self, m: &CudaSlice<u8>) -> u64 {
        m.device_ptr(&self.stream).0
    }

    unsafe fn launch(
        &self,
        f: &CudaFunction,
        cfg: Launch,
        params: &mut [*mut c_void],
        _sizes: &[usize],
    ) -> Result<()> {
        self.ctx.bind_to_thread().map_err(dev)?;
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            cfg.grid,
            cfg.block,
            cfg.shared,
            self.stream.cu_stream(),
            params,
        )
        .map_err(dev)
    }

    unsafe fn gemm_bt(&self, dtype: Dtype, g: Gemm) -> Result<()> {
        let c = g.column_major();
        self.ctx.bind_to_thread().map_err(dev)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let t = cuda_type(dtype);
        let op = |trans: bool| {
            if trans {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        blas::gemm_ex(
            *self.blas.handle(),
            op(c.trans_a),
            op(c.trans_b),
            c.m as i32,
            c.n as i32,
            c.k as i32,
            &alpha as *const f32 as *const _,
            c.a as *const c_void,
            t,
            c.lda as i32,
            c.b as *const c_void,
            t,
            c.ldb as i32,
            &beta as *const f32 as *const _,
            c.c as *mut c_void,
            t,
            c.ldc as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(dev)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev)
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(dev)?;
        driver_mem_info()
    }

    fn graphs_supported(&self) -> bool {
        true
    }

    fn begin_capture(&self) -> Result<()> {
        // Relaxed: another thread's unrelated CUDA calls (a download for another
        // model, say) do not invalidate this capture.
        self.stream
            .begin_capture(driver_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(dev)
    }

    fn end_capture(&self) -> Result<CudaGraphExec> {
        self.stream
            .end_capture(driver_sys::CUgraphInstantiate_flags(0))
            .map_err(dev)?
            .map(CudaGraphExec)
            .ok_or_else(|| dev("the capture recorded no work"))
    }

    unsafe fn replay(&self, graph: &CudaGraphExec) -> Result<()> {
        graph.0.launch().map_err(dev)
    }
}

impl GpuBackend<CudaDevice> {
    /// Opens NVIDIA GPU `ordinal` and compiles every kernel for it with NVRTC.
    pub fn new(ordinal: usize, dtype: Dtype) -> Result<Self> {
        GpuBackend::with_device(CudaDevice::open(ordinal)?, dtype)
    }
}

/// Opens NVIDIA device `ordinal`. Without the driver or a GPU: a clear error.
fn open_context(ordinal: usize) -> Result<(Arc<CudaContext>, DeviceInfo)> {
    // SAFETY: only probes whether the library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Unavailable(
            "cannot load the CUDA driver (libcuda.so): no NVIDIA driver is installed".into(),
        ));
    }
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(|e| {
        Error::Unavailable(format!(
            "cannot open NVIDIA GPU {ordinal}: {e} (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        ))
    })?;
    let name = ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into());
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| Error::Unavailable(format!("compute capability: {e}")))?;
    let (free, total) = cudarc::driver::result::mem_get_info()
        .map_err(|e| Error::Unavailable(format!("cuMemGetInfo: {e}")))?;
    let warp = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_WARP_SIZE)
        .map_err(|e| Error::Unavailable(format!("warp size: {e}")))? as u32;
    Ok((
        ctx,
        DeviceInfo {
            name,
            free_bytes: free,
            total_bytes: total,
            arch: format!("sm_{major}{minor}"),
            warp,
        },
    ))
}

/// Free and total memory of the current device, in bytes.
fn driver_mem_info() -> Result<(usize, usize)> {
    cudarc::driver::result::mem_get_info()
        .map_err(|e| Error::Unavailable(format!("cuMemGetInfo: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without an NVIDIA driver (CI, this machine) opening a GPU is a clear error.
    #[test]
    fn no_driver_or_gpu_is_a_clear_error() {
        match open_context(0) {
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains("CUDA driver") || m.contains("NVIDIA GPU"), "{m}");
            }
            Ok((_, info)) => assert!(info.total_bytes > 0),
        }
    }
}
