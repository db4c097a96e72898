//! rocBLAS (`librocblas`), loaded at run time: one handle, put on the device's stream, and
//! `rocblas_gemm_ex`, the AMD device's GEMM.
//!
//! rocBLAS rather than hipBLAS: `rocblas_gemm_ex` has kept one signature and one set of
//! enum values from ROCm 5 to 7, while `hipblasGemmEx` changed its type enums in ROCm 6.

use super::runtime::open_first;
use crate::{Dtype, Error, Result};
use libloading::Library;
use std::ffi::{c_int, c_void};

pub(super) type RocblasStatus = c_int;
pub(super) const ROCBLAS_OPERATION_NONE: c_int = 111;
pub(super) const ROCBLAS_OPERATION_TRANSPOSE: c_int = 112;
const ROCBLAS_DATATYPE_F16_R: c_int = 150;
pub(super) const ROCBLAS_DATATYPE_F32_R: c_int = 151;
const ROCBLAS_DATATYPE_BF16_R: c_int = 168;
pub(super) const ROCBLAS_GEMM_ALGO_STANDARD: c_int = 0;

#[allow(clippy::type_complexity)]
pub(super) struct RocBlas {
    pub(super) handle: *mut c_void,
    pub(super) gemm_ex: unsafe extern "C" fn(
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
    set_stream: unsafe extern "C" fn(*mut c_void, *mut c_void) -> RocblasStatus,
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
    pub(super) fn load() -> Result<RocBlas> {
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
            let set_stream = *lib
                .get(b"rocblas_set_stream\0")
                .map_err(|_| missing("rocblas_set_stream"))?;
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
                set_stream,
                _lib: lib,
            })
        }
    }
}

impl RocBlas {
    /// Queues this handle's GEMMs on `stream` (`hipStream_t`), the stream the device's
    /// kernels and copies use, so a GEMM runs after the kernel that wrote its input.
    pub(super) fn set_stream(&self, stream: *mut c_void) -> Result<()> {
        // SAFETY: a live handle and stream.
        let st = unsafe { (self.set_stream)(self.handle, stream) };
        if st != 0 {
            return Err(Error::Unavailable(format!(
                "rocblas_set_stream failed (rocblas_status {st})"
            )));
        }
        Ok(())
    }
}

/// rocBLAS's name for a storage type.
pub(super) fn rocblas_type(d: Dtype) -> c_int {
    match d {
        Dtype::F32 => ROCBLAS_DATATYPE_F32_R,
        Dtype::F16 => ROCBLAS_DATATYPE_F16_R,
        Dtype::Bf16 => ROCBLAS_DATATYPE_BF16_R,
    }
}
