//! NVIDIA as a [`Device`] (feature `cuda`): [`CudaDevice`] over the driver and cuBLAS
//! through `cudarc`, kernels compiled by NVRTC (`nvrtc.rs`), all loaded at run time.
//! [`CudaBackend`] is the shared GPU backend on it, the same code the AMD build runs.
//!
//! Ordering: kernels, cuBLAS, allocations (`cuMemAllocAsync` where the driver has it),
//! copies and memsets all go on cudarc's default stream, the legacy null stream, so
//! they run in issue order. Uploads are already asynchronous and stream-ordered
//! (`clone_htod` is `cuMemcpyHtoDAsync`); their source is pageable, so the driver
//! copies it into its own pinned staging first, and for a step's small uploads returns
//! without waiting for the GPU. The host waits only in `dtoh` and `synchronize`. Left
//! for decode graphs (issue 15 §5): capture cannot record the legacy null stream (a
//! created stream is needed, as the HIP device has), and cudarc's event tracking (on by
//! default) creates two events per allocation, which one stream does not need
//! (`CudaContext::disable_event_tracking`).

pub mod nvrtc;

use crate::gpu::{Device, DeviceInfo, Gemm, GpuBackend, Launch};
use crate::{Dtype, Error, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
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

impl CudaDevice {
    pub fn open(ordinal: usize) -> Result<CudaDevice> {
        let (ctx, info) = open_context(ordinal)?;
        let stream = ctx.default_stream();
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
