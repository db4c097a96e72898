//! AMD as a [`Device`] (feature `hip`): `libamdhip64` and hiprtc (see [`crate::hip`])
//! plus rocBLAS (`librocblas`) for GEMMs, all loaded at run time. [`HipBackend`] is the
//! shared GPU backend on it, the same code the NVIDIA build runs.
//!
//! rocBLAS rather than hipBLAS: `rocblas_gemm_ex` has kept one signature and one set of
//! enum values from ROCm 5 to 7, while `hipblasGemmEx` changed its type enums in ROCm 6.
//! Everything runs on the null stream, which rocBLAS uses by default, so kernels and
//! GEMMs are ordered without events.

use crate::gpu::{Device, DeviceInfo, Dtype, Gemm, GpuBackend, Launch};
use crate::hip::{open_first, Hip};
use crate::{Error, Result};
use libloading::Library;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};

/// The shared GPU backend on an AMD device.
pub type HipBackend = GpuBackend<HipDevice>;

/// Device memory cached for reuse: `hipFree` waits for the whole device, and the model
/// allocates every op's output afresh each step, so freed blocks go back to this pool
/// (by size class) instead. Reuse is safe because all work runs in order on the null
/// stream: kernels queued before a block was dropped finish before any kernel queued
/// after it was handed out again.
struct Pool {
    hip: Arc<Hip>,
    free: Mutex<HashMap<usize, Vec<usize>>>,
}

impl Pool {
    /// Size classes: powers of two up to 1 MiB, then 1 MiB multiples up to 64 MiB, then
    /// exact sizes (weights: allocated once, never reused).
    fn class(bytes: usize) -> usize {
        let b = bytes.max(256);
        if b <= 1 << 20 {
            b.next_power_of_two()
        } else if b <= 64 << 20 {
            b.div_ceil(1 << 20) << 20
        } else {
            b
        }
    }

    fn take(&self, class: usize) -> Option<*mut c_void> {
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.get_mut(&class)
            .and_then(|v| v.pop())
            .map(|p| p as *mut c_void)
    }

    fn give(&self, class: usize, p: *mut c_void) {
        if class > 64 << 20 {
            // SAFETY: allocated by `Hip::alloc`, freed once here.
            let _ = unsafe { self.hip.free(p) };
            return;
        }
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.entry(class).or_default().push(p as usize);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let f = self.free.get_mut().unwrap_or_else(|e| e.into_inner());
        for p in f.values().flatten() {
            // SAFETY: each cached block was allocated by `Hip::alloc` and is freed once.
            let _ = unsafe { self.hip.free(*p as *mut c_void) };
        }
    }
}

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

type RocblasStatus = c_int;
const ROCBLAS_OPERATION_NONE: c_int = 111;
const ROCBLAS_OPERATION_TRANSPOSE: c_int = 112;
const ROCBLAS_DATATYPE_F16_R: c_int = 150;
const ROCBLAS_DATATYPE_F32_R: c_int = 151;
const ROCBLAS_DATATYPE_BF16_R: c_int = 168;
const ROCBLAS_GEMM_ALGO_STANDARD: c_int = 0;

#[allow(clippy::type_complexity)]
struct RocBlas {
    handle: *mut c_void,
    gemm_ex: unsafe extern "C" fn(
        *mut c_void,   // handle
        c_int,         // transA
        c_int,         // transB
        c_int,         // m
        c_int,         // n
        c_int,         // k
        *const c_void, // alpha
        *const c_void, // a
        c_int,         // a_type
        c_int,         // lda
        *const c_void, // b
        c_int,         // b_type
        c_int,         // ldb
        *const c_void, // beta
        *const c_void, // c
        c_int,         // c_type
        c_int,         // ldc
        *mut c_void,   // d
        c_int,         // d_type
        c_int,         // ldd
        c_int,         // compute_type
        c_int,         // algo
        i32,           // solution_index
        u32,           // flags
    ) -> RocblasStatus,
    destroy: unsafe extern "C" fn(*mut c_void) -> RocblasStatus,
    _lib: Library,
}

// SAFETY: rocBLAS handles may be used from any thread, one call at a time; the
// backend's ops are called by one engine thread at a time.
unsafe impl Send for RocBlas {}
unsafe impl Sync for RocBlas {}

impl Drop for RocBlas {
    fn drop(&mut self) {
        // SAFETY: created by rocblas_create_handle, destroyed once.
        unsafe { (self.destroy)(self.handle) };
    }
}

/// The rocBLAS library names to try, newest first.
const ROCBLAS_LIBS: &[&str] = &[
    "librocblas.so",
    "librocblas.so.5",
    "librocblas.so.4",
    "librocblas.so.3",
];

impl RocBlas {
    fn load() -> Result<RocBlas> {
        let lib = open_first(ROCBLAS_LIBS).map_err(|e| {
            Error::Unavailable(format!(
                "cannot load rocBLAS (librocblas), needed for GEMMs: {e}. Install rocblas, or set LD_LIBRARY_PATH to ROCm's lib folder"
            ))
        })?;
        let missing =
            |name: &str| Error::Unavailable(format!("rocBLAS lacks {name} (ROCm too old?)"));
        // SAFETY: the symbols' types are rocBLAS's C signatures for those names.
        unsafe {
            let create: unsafe extern "C" fn(*mut *mut c_void) -> RocblasStatus = *lib
                .get(b"rocblas_create_handle\0")
                .map_err(|_| missing("rocblas_create_handle"))?;
            let destroy = *lib
                .get(b"rocblas_destroy_handle\0")
                .map_err(|_| missing("rocblas_destroy_handle"))?;
            let gemm_ex = *lib
                .get(b"rocblas_gemm_ex\0")
                .map_err(|_| missing("rocblas_gemm_ex"))?;
            let mut handle = std::ptr::null_mut();
            let st = create(&mut handle);
            if st != 0 {
                return Err(Error::Unavailable(format!(
                    "rocblas_create_handle failed (rocblas_status {st})"
                )));
            }
            Ok(RocBlas {
                handle,
                gemm_ex,
                destroy,
                _lib: lib,
            })
        }
    }
}

fn rocblas_type(d: Dtype) -> c_int {
    match d {
        Dtype::F32 => ROCBLAS_DATATYPE_F32_R,
        Dtype::F16 => ROCBLAS_DATATYPE_F16_R,
        Dtype::Bf16 => ROCBLAS_DATATYPE_BF16_R,
    }
}

pub struct HipDevice {
    hip: Arc<Hip>,
    pool: Arc<Pool>,
    blas: RocBlas,
    info: DeviceInfo,
    ordinal: usize,
}

thread_local! {
    /// The device this thread last made current (HIP's current device is per thread).
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

impl HipDevice {
    /// Opens AMD GPU `ordinal`; the architecture to compile for is
    /// [`crate::hip::target_arch`] (`NOVASTACK_HIP_ARCH`, default gfx90a).
    pub fn open(ordinal: usize) -> Result<HipDevice> {
        let hip = Arc::new(Hip::load()?);
        let opened = hip.open(ordinal)?;
        CURRENT.with(|c| c.set(Some(ordinal)));
        let arch = crate::hip::target_arch();
        let warp = hip.warp_size(ordinal, &arch);
        let blas = RocBlas::load()?;
        Ok(HipDevice {
            info: DeviceInfo {
                name: opened.name,
                free_bytes: opened.free_bytes,
                total_bytes: opened.total_bytes,
                arch,
                warp,
            },
            pool: Arc::new(Pool {
                hip: hip.clone(),
                free: Mutex::new(HashMap::new()),
            }),
            hip,
            blas,
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
    const NAME: &'static str = "hip";

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn load_kernels(&self, file: &str, source: &str, names: &[String]) -> Result<Vec<HipFunc>> {
        self.bind()?;
        let code = self.hip.compile(file, source, &self.info.arch)?;
        let module = self.hip.module(&code)?;
        names
            .iter()
            // SAFETY: `module` was just loaded.
            .map(|n| unsafe { self.hip.get_function(module, n) }.map(HipFunc))
            .collect()
    }

    fn alloc_zeros(&self, bytes: usize) -> Result<HipMem> {
        let m = self.alloc(bytes)?;
        // SAFETY: m holds at least max(bytes, 1) bytes.
        unsafe { self.hip.memset_zero(m.ptr, bytes.max(1))? };
        Ok(m)
    }

    fn htod(&self, bytes: &[u8]) -> Result<HipMem> {
        let m = self.alloc(bytes.len())?;
        // SAFETY: m holds at least bytes.len() bytes.
        unsafe { self.hip.copy_to_device(m.ptr, bytes)? };
        Ok(m)
    }

    fn dtoh(&self, m: &HipMem, out: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller asks for at most the allocation's size (GpuBuf lengths).
        unsafe { self.hip.copy_to_host(out, m.ptr) }
    }

    unsafe fn copy(&self, src: &HipMem, dst: &mut HipMem, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both hold at least `bytes` bytes (the caller's contract).
        unsafe { self.hip.copy_on_device(dst.ptr, src.ptr, bytes) }
    }

    fn ptr(&self, m: &HipMem) -> u64 {
        m.ptr as u64
    }

    unsafe fn launch(&self, f: &HipFunc, cfg: Launch, params: &mut [*mut c_void]) -> Result<()> {
        self.bind()?;
        self.hip
            .launch(f.0, cfg.grid, cfg.block, cfg.shared, params)
    }

    unsafe fn gemm_bt(&self, dtype: Dtype, g: Gemm) -> Result<()> {
        let Gemm { m, n, k, x, w, out } = g;
        // Row-major out[m, n] = x[m, k] · w[n, k]ᵀ is column-major outᵀ = w · xᵀ:
        // A = w (k x n column-major, transposed), B = xᵀ (k x m, as stored).
        self.bind()?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let t = rocblas_type(dtype);
        let st = (self.blas.gemm_ex)(
            self.blas.handle,
            ROCBLAS_OPERATION_TRANSPOSE,
            ROCBLAS_OPERATION_NONE,
            n as c_int,
            m as c_int,
            k as c_int,
            &alpha as *const f32 as *const c_void,
            w as *const c_void,
            t,
            k as c_int,
            x as *const c_void,
            t,
            k as c_int,
            &beta as *const f32 as *const c_void,
            out as *const c_void,
            t,
            n as c_int,
            out as *mut c_void,
            t,
            n as c_int,
            ROCBLAS_DATATYPE_F32_R,
            ROCBLAS_GEMM_ALGO_STANDARD,
            0,
            0,
        );
        if st != 0 {
            return Err(Error::Unavailable(format!(
                "rocblas_gemm_ex({m}x{n}x{k}, {dtype:?}) failed (rocblas_status {st})"
            )));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.hip.synchronize()
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        self.hip.mem_info()
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

    #[test]
    fn pool_size_classes_cover_the_request() {
        for b in [
            0,
            1,
            255,
            256,
            257,
            4096,
            (1 << 20) + 1,
            63 << 20,
            (64 << 20) + 5,
        ] {
            let c = Pool::class(b);
            assert!(c >= b.max(1), "{b} -> {c}");
            assert!(c <= (2 * b).max(256) || b > 1 << 20, "{b} -> {c}");
        }
        assert_eq!(Pool::class(3 << 20), 3 << 20);
        assert_eq!(Pool::class(1000), 1024);
    }

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
