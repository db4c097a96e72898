// The one place with vendor differences. Every kernel in kernels/hip/ is HIP C++ for
// AMD MI250 (gfx90a, wavefronts of 64) and builds unchanged for NVIDIA through this
// header: hipcc / hiprtc on AMD, nvcc / NVRTC on NVIDIA.
//
// Kernels use only: NS_WARP (lanes per warp/wavefront), ns_lane_mask_t, the ns_shfl_*
// and ns_ballot helpers, ns_syncwarp(), NS_INF, the ns_bf16 / ns_half storage types with
// ns_load / ns_store (f32 in registers), NS_KERNEL for extern "C" entry points, and
// atomicAdd on unsigned int and unsigned long long (the same name on both vendors).
#pragma once

#if defined(__HIP__) || defined(__HIPCC_RTC__) || defined(__HIP_PLATFORM_AMD__)
#define NS_AMD 1
#else
#define NS_NVIDIA 1
#endif

#if defined(NS_AMD)
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#endif
// The runtime backends define NS_WARP from the device before this header. Otherwise
// (hipcc compile checks) clang's wavefront size for the target: 64 on gfx90a (MI250).
#if !defined(NS_WARP)
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define NS_WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define NS_WARP 64
#endif
#endif
typedef unsigned long long ns_lane_mask_t;
typedef __half ns_half;
__device__ __forceinline__ float ns_shfl_xor(float v, int m) { return __shfl_xor(v, m, NS_WARP); }
__device__ __forceinline__ int ns_shfl_xor_i(int v, int m) { return __shfl_xor(v, m, NS_WARP); }
__device__ __forceinline__ float ns_shfl(float v, int src) { return __shfl(v, src, NS_WARP); }
__device__ __forceinline__ ns_lane_mask_t ns_ballot(bool p) { return __ballot(p); }
// A wavefront executes in lockstep; a fence keeps shared-memory writes ordered.
__device__ __forceinline__ void ns_syncwarp() { __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront"); __builtin_amdgcn_wave_barrier(); __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront"); }
#define NS_MAX_SHARED_BYTES 65536
#else  // NVIDIA
#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>
#endif
#include <cuda_fp16.h>
// NVIDIA warps are 32 lanes on every architecture, unless the runtime backend defined
// NS_WARP from the device (an int, as on AMD: a size_t here would turn `lane - NS_WARP`
// arithmetic unsigned).
#if !defined(NS_WARP)
#define NS_WARP 32
#endif
typedef unsigned int ns_lane_mask_t;
typedef __half ns_half;
#define NS_FULL_MASK 0xffffffffu
__device__ __forceinline__ float ns_shfl_xor(float v, int m) { return __shfl_xor_sync(NS_FULL_MASK, v, m); }
__device__ __forceinline__ int ns_shfl_xor_i(int v, int m) { return __shfl_xor_sync(NS_FULL_MASK, v, m); }
__device__ __forceinline__ float ns_shfl(float v, int src) { return __shfl_sync(NS_FULL_MASK, v, src); }
__device__ __forceinline__ ns_lane_mask_t ns_ballot(bool p) { return __ballot_sync(NS_FULL_MASK, p); }
__device__ __forceinline__ void ns_syncwarp() { __syncwarp(); }
#define NS_MAX_SHARED_BYTES 49152
#endif

#define NS_KERNEL extern "C" __global__
// Warps in the largest block (1024 threads): sizes per-warp scratch arrays.
#define NS_MAX_WARPS (1024 / NS_WARP)
#define NS_INF __int_as_float(0x7f800000)

// bf16 kept as raw 16 bits (HIP 5.2 and hiprtc have no usable bf16 type).
struct ns_bf16 {
  unsigned short bits;
};

__device__ __forceinline__ float ns_bf16_to_f32(ns_bf16 v) {
  return __uint_as_float(((unsigned int)v.bits) << 16);
}

// Round to nearest even, NaN kept quiet (as torch does).
__device__ __forceinline__ ns_bf16 ns_f32_to_bf16(float f) {
  unsigned int u = __float_as_uint(f);
  ns_bf16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = (unsigned short)((u >> 16) | 0x40u);
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    r.bits = (unsigned short)(u >> 16);
  }
  return r;
}

// Storage types: f32 math in registers, f32 / f16 / bf16 in memory.
__device__ __forceinline__ float ns_load(const float* p, long i) { return p[i]; }
__device__ __forceinline__ float ns_load(const ns_half* p, long i) { return __half2float(p[i]); }
__device__ __forceinline__ float ns_load(const ns_bf16* p, long i) { return ns_bf16_to_f32(p[i]); }
__device__ __forceinline__ void ns_store(float* p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void ns_store(ns_half* p, long i, float v) { p[i] = __float2half(v); }
__device__ __forceinline__ void ns_store(ns_bf16* p, long i, float v) { p[i] = ns_f32_to_bf16(v); }

// Warp- and block-wide reductions, one implementation for every operator.
struct ns_add {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct ns_max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename Op>
__device__ __forceinline__ float ns_warp_reduce(float v, Op op) {
  for (int m = NS_WARP / 2; m > 0; m >>= 1) v = op(v, ns_shfl_xor(v, m));
  return v;
}

// `scratch` holds one float per warp; every thread gets the result. Safe to call again
// at once with the same scratch (the first barrier orders it).
template <typename Op>
__device__ __forceinline__ float ns_block_reduce(float v, float* scratch, Op op, float identity) {
  const int lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP;
  const int nwarps = (blockDim.x + NS_WARP - 1) / NS_WARP;
  v = ns_warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : identity;
  return ns_warp_reduce(v, op);
}

__device__ __forceinline__ float ns_warp_sum(float v) { return ns_warp_reduce(v, ns_add()); }
__device__ __forceinline__ float ns_warp_max(float v) { return ns_warp_reduce(v, ns_max()); }
__device__ __forceinline__ float ns_block_sum(float v, float* scratch) {
  return ns_block_reduce(v, scratch, ns_add(), 0.0f);
}
__device__ __forceinline__ float ns_block_max(float v, float* scratch) {
  return ns_block_reduce(v, scratch, ns_max(), -NS_INF);
}

// Instantiates `name##_f32`, `name##_f16`, `name##_bf16` entry points around a template
// `__device__` body `name##_impl<T>`. `params` spell storage pointers as (const) void*,
// and `args` cast them with `(T*)` / `(const T*)`: `T` is the storage type in each.
#define NS_FOR_DTYPES(name, params, args)                                     \
  NS_KERNEL void name##_f32 params { typedef float T; name##_impl<T> args; }  \
  NS_KERNEL void name##_f16 params { typedef ns_half T; name##_impl<T> args; } \
  NS_KERNEL void name##_bf16 params { typedef ns_bf16 T; name##_impl<T> args; }
