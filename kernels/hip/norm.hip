// RMSNorm, fused residual-add + RMSNorm, and the per-head q/k norm of Qwen3.
#include "compat.h"

// One block per row: out = x / rms(x) * w (f32 sum of squares, as transformers).
template <typename T>
__device__ void rms_norm_impl(T* out, const T* x, const T* w, int dim, float eps) {
  __shared__ float scratch[NS_MAX_WARPS];  // one slot per warp of the largest block
  const long r = blockIdx.x;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ns_load(x, r * dim + i);
    ss += v * v;
  }
  const float inv = rsqrtf(ns_block_sum(ss, scratch) / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    ns_store(out, r * dim + i, ns_load(x, r * dim + i) * inv * ns_load(w, i));
}
NS_FOR_DTYPES(rms_norm, (void* out, const void* x, const void* w, int dim, float eps),
              ((T*)out, (const T*)x, (const T*)w, dim, eps))

// residual += x; out = rms_norm(residual) * w. The sum is rounded to the storage type
// before the norm, as an unfused model would store it.
template <typename T>
__device__ void add_rms_norm_impl(T* residual, const T* x, const T* w, T* out, int dim, float eps) {
  __shared__ float scratch[NS_MAX_WARPS];
  const long r = blockIdx.x;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const long k = r * dim + i;
    ns_store(residual, k, ns_load(residual, k) + ns_load(x, k));
    const float v = ns_load(residual, k);
    ss += v * v;
  }
  const float inv = rsqrtf(ns_block_sum(ss, scratch) / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    ns_store(out, r * dim + i, ns_load(residual, r * dim + i) * inv * ns_load(w, i));
}
NS_FOR_DTYPES(add_rms_norm, (void* residual, const void* x, const void* w, void* out, int dim, float eps),
              ((T*)residual, (const T*)x, (const T*)w, (T*)out, dim, eps))

// Qwen3 q/k norm: in place, one warp per (row, head); heads start at `col_offset` in rows
// of `row_stride` values; the weight has `head_dim` values shared by all heads.
template <typename T>
__device__ void head_rms_norm_impl(T* x, const T* w, int rows, int row_stride, int col_offset, int num_heads,
                                   int head_dim, float eps) {
  const int warps = blockDim.x / NS_WARP, lane = threadIdx.x % NS_WARP;
  const long item = (long)blockIdx.x * warps + threadIdx.x / NS_WARP;
  if (item >= (long)rows * num_heads) return;
  const long base = (item / num_heads) * row_stride + col_offset + (item % num_heads) * head_dim;
  float ss = 0.0f;
  for (int i = lane; i < head_dim; i += NS_WARP) {
    const float v = ns_load(x, base + i);
    ss += v * v;
  }
  const float inv = rsqrtf(ns_warp_sum(ss) / head_dim + eps);
  for (int i = lane; i < head_dim; i += NS_WARP) ns_store(x, base + i, ns_load(x, base + i) * inv * ns_load(w, i));
}
NS_FOR_DTYPES(head_rms_norm,
              (void* x, const void* w, int rows, int row_stride, int col_offset, int num_heads, int head_dim, float eps),
              ((T*)x, (const T*)w, rows, row_stride, col_offset, num_heads, head_dim, eps))
