// Embedding gather, residual add, SiLU-and-mul, row gather, widening to f32, bias add.
#include "compat.h"

// out[t, :] = table[ids[t], :]; ids are checked on the host (vocab).
template <typename T>
__device__ void embedding_impl(T* out, const T* table, const unsigned int* ids, int hidden) {
  const long t = blockIdx.x;
  const long row = (long)ids[t] * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) ns_store(out, t * hidden + i, ns_load(table, row + i));
}
NS_FOR_DTYPES(embedding, (void* out, const void* table, const unsigned int* ids, int hidden),
              ((T*)out, (const T*)table, ids, hidden))

// residual += x (f32 math).
template <typename T>
__device__ void add_inplace_impl(T* residual, const T* x, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    ns_store(residual, i, ns_load(residual, i) + ns_load(x, i));
}
NS_FOR_DTYPES(add_inplace, (void* residual, const void* x, long n), ((T*)residual, (const T*)x, n))

// x rows are [gate(inter) | up(inter)]; out[r, i] = silu(gate) * up, silu in f32.
template <typename T>
__device__ void silu_and_mul_impl(T* out, const T* x, int inter) {
  const long r = blockIdx.x;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) {
    const float g = ns_load(x, r * 2 * inter + i), u = ns_load(x, r * 2 * inter + inter + i);
    ns_store(out, r * inter + i, g / (1.0f + __expf(-g)) * u);
  }
}
NS_FOR_DTYPES(silu_and_mul, (void* out, const void* x, int inter), ((T*)out, (const T*)x, inter))

// out[j, :] = x[indices[j], :] (e.g. the last token of each sequence before the LM head).
template <typename T>
__device__ void gather_rows_impl(T* out, const T* x, const unsigned int* indices, int dim) {
  const long j = blockIdx.x, src = (long)indices[j] * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ns_store(out, j * dim + i, ns_load(x, src + i));
}
NS_FOR_DTYPES(gather_rows, (void* out, const void* x, const unsigned int* indices, int dim),
              ((T*)out, (const T*)x, indices, dim))

// Widens to f32 (16-bit logits before the argmax, which reads f32).
template <typename T>
__device__ void to_f32_impl(float* out, const T* x, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    out[i] = ns_load(x, i);
}
NS_FOR_DTYPES(to_f32, (float* out, const void* x, long n), (out, (const T*)x, n))

// out[r, :] += bias (after a GEMM).
template <typename T>
__device__ void add_bias_impl(T* out, const T* bias, int n) {
  const long r = blockIdx.x;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ns_store(out, r * n + i, ns_load(out, r * n + i) + ns_load(bias, i));
}
NS_FOR_DTYPES(add_bias, (void* out, const void* bias, int n), ((T*)out, (const T*)bias, n))
