//! The GPU vendors behind [`crate::gpu::Device`], each loaded at run time so that no
//! vendor SDK is needed to build: [`hip`] (AMD: `libamdhip64`, hiprtc, rocBLAS; feature
//! `hip`) and [`cuda`] (NVIDIA: the driver, NVRTC and cuBLAS through `cudarc`; feature
//! `cuda`), and [`sim`], the simulated device that runs the same kernels on the host
//! (always built: it needs only a C++ compiler at run time). A vendor provides memory, copies, kernel compilation and launches, and one
//! GEMM; everything else is the shared host code in `gpu/`.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "hip")]
pub mod hip;
pub mod sim;
