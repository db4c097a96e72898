// Rotary embedding (neox halves), in place, over the first `rotary_dim` values of each head (all of it
// unless partial rotary). `cos_sin` is the host-built table [max_pos, rotary_dim] in the storage type: cos
// for the first half, sin for the second; default, linear and llama3 scaling are all folded into it on the
// host, exactly as the CPU backend does.
#include "compat.h"

// grid: (tokens); block: threads over (heads x rotary_dim / 2).
template <typename T>
__device__ void rope_impl(T* x, const unsigned int* positions, const T* cos_sin, int row_stride, int col_offset,
                          int num_heads, int head_dim, int rotary_dim) {
  const long t = blockIdx.x;
  const int half = rotary_dim / 2;
  const long table = (long)positions[t] * rotary_dim;
  for (int j = threadIdx.x; j < num_heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const long base = t * row_stride + col_offset + (long)h * head_dim;
    const float a = ns_load(x, base + i), b = ns_load(x, base + half + i);
    const float c = ns_load(cos_sin, table + i), s = ns_load(cos_sin, table + half + i);
    // transformers: q * cos + rotate_half(q) * sin, no fused multiply-add.
    ns_store(x, base + i, __fadd_rn(__fmul_rn(a, c), __fmul_rn(-b, s)));
    ns_store(x, base + half + i, __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)));
  }
}
NS_FOR_DTYPES(rope,
              (void* x, const unsigned int* positions, const void* cos_sin, int row_stride, int col_offset,
               int num_heads, int head_dim, int rotary_dim),
              ((T*)x, positions, (const T*)cos_sin, row_stride, col_offset, num_heads, head_dim, rotary_dim))
