// Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2): the per-head GEMMs of the
// absorbed up-projections (head_gemm), the latent cache write (cache_rows), and
// attention over the latent cache, split-K (latent_attention_partial / _reduce).
//
// The latent cache is [num_blocks, block_size, slot] per layer, slot = latent (latent_dim)
// then the roped shared key (rope_dim). Query head h of a row scores key t as
// scale * (q_latent[h] . latent_t + q_rope[h] . rope_t) and outputs the softmax-weighted
// sum of the latents (latent_dim values): the value up-projection comes after.
#include "compat.h"

// head_gemm: block (rb, c, h) computes, for rows rb * NS_HG_BM.. (at most NS_HG_BM) and
// head h, columns c * NS_HG_BN.. of out[row, h * n + col] = x[row, offset + h * head_stride
// + 0..k] . w[h][col]^T (w is [heads, n, k]). As moe_gemm: the rows' inputs go through
// shared memory NS_HG_KC values at a time, each warp owns NS_HG_BN / warps columns, its
// lanes stride k (reading w's rows coalesced), a warp sum finishes each (row, column).
#define NS_HG_BM 8
#define NS_HG_BN 32
#define NS_HG_KC 256
#define NS_HG_THREADS 256
#define NS_HG_COLS (NS_HG_BN / (NS_HG_THREADS / NS_WARP))

template <typename T>
__device__ void head_gemm_impl(T* out, const T* x, const T* w, int rows, int heads, int k, int n, int row_stride,
                               int offset, int head_stride) {
  __shared__ float xs[NS_HG_BM][NS_HG_KC];
  const int lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP;
  const int warps = NS_HG_THREADS / NS_WARP;
  const long r0 = (long)blockIdx.x * NS_HG_BM;
  const int h = blockIdx.z;
  const int nr = min((long)NS_HG_BM, rows - r0);
  if (nr <= 0) return;
  const long n0 = (long)blockIdx.y * NS_HG_BN;
  const T* wh = w + (long)h * n * k;
  float acc[NS_HG_COLS][NS_HG_BM];
#pragma unroll
  for (int j = 0; j < NS_HG_COLS; ++j)
#pragma unroll
    for (int r = 0; r < NS_HG_BM; ++r) acc[j][r] = 0.0f;
  for (int k0 = 0; k0 < k; k0 += NS_HG_KC) {
    const int kc = min(NS_HG_KC, k - k0);
    __syncthreads();
    for (int i = threadIdx.x; i < nr * NS_HG_KC; i += NS_HG_THREADS) {
      const int r = i / NS_HG_KC, c = i % NS_HG_KC;
      xs[r][c] = c < kc ? ns_load(x, (r0 + r) * row_stride + offset + (long)h * head_stride + k0 + c) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < NS_HG_COLS; ++j) {
      const long col = n0 + warp + j * warps;
      if (col < n) {
        const T* wr = wh + col * k + k0;
        for (int c = lane; c < kc; c += NS_WARP) {
          const float wv = ns_load(wr, c);
#pragma unroll
          for (int r = 0; r < NS_HG_BM; ++r)
            if (r < nr) acc[j][r] += wv * xs[r][c];
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < NS_HG_COLS; ++j) {
    const long col = n0 + warp + j * warps;
    if (col < n) {
#pragma unroll
      for (int r = 0; r < NS_HG_BM; ++r) {
        if (r < nr) {
          const float s = ns_warp_sum(acc[j][r]);
          if (lane == 0) ns_store(out, (r0 + r) * heads * n + (long)h * n + col, s);
        }
      }
    }
  }
}
NS_FOR_DTYPES(head_gemm,
              (void* out, const void* x, const void* w, int rows, int heads, int k, int n, int row_stride, int offset,
               int head_stride),
              ((T*)out, (const T*)x, (const T*)w, rows, heads, k, n, row_stride, offset, head_stride))

// One block per token: slot_len values from column col_offset of its row into its slot.
// Slot 0xffffffff is padding: skipped.
template <typename T>
__device__ void cache_rows_impl(const T* src, const unsigned int* slot_mapping, T* cache, int row_stride,
                                int col_offset, int slot_len) {
  const long t = blockIdx.x;
  const unsigned int slot = slot_mapping[t];
  if (slot == 0xffffffffu) return;
  for (int i = threadIdx.x; i < slot_len; i += blockDim.x)
    ns_store(cache, (long)slot * slot_len + i, ns_load(src, t * row_stride + col_offset + i));
}
NS_FOR_DTYPES(cache_rows,
              (const void* src, const unsigned int* slot_mapping, void* cache, int row_stride, int col_offset,
               int slot_len),
              ((const T*)src, slot_mapping, (T*)cache, row_stride, col_offset, slot_len))

#define NS_LATENT_PARTITION 512  // keys per split-K partition
#define NS_LATENT_MAX_SLOT 1024  // latent_dim + rope_dim

// Per row of the batch (prefill, chunk or decode alike): its sequence and its position.
// Block tables at block_tables[seq * max_blocks ...].
struct ns_latent_args {
  const unsigned int* row_seq;
  const unsigned int* row_pos;
  const unsigned int* block_tables;
  int max_blocks;
  int block_size;
  int heads;
  int latent_dim;
  int rope_dim;
  int rope_stride;       // q_rope's row stride
  int rope_offset;       // q_rope's first head
  int rope_head_stride;  // q_rope's head stride
  float scale;
};

// Split-K: grid (heads, rows, partitions). Block (h, row, p) scores the keys
// p * NS_LATENT_PARTITION.. of the row's causal range (0..=pos) for head h, and writes
// its normalized partial output (latent_dim values) with its max logit and exp-sum.
template <typename T>
__device__ void latent_attention_partial_impl(const T* q_latent, const T* q_rope, const T* cache, float* tmp_out,
                                              float* max_logits, float* exp_sums, ns_latent_args a,
                                              int partitions) {
  __shared__ float q[NS_LATENT_MAX_SLOT];
  __shared__ float logits[NS_LATENT_PARTITION];
  __shared__ float scratch[NS_MAX_WARPS];
  const int h = blockIdx.x, row = blockIdx.y, p = blockIdx.z;
  const int r = a.latent_dim, slot_len = a.latent_dim + a.rope_dim;
  const int s = a.row_seq[row], ctx = a.row_pos[row] + 1;
  const int start = p * NS_LATENT_PARTITION, end = min(ctx, start + NS_LATENT_PARTITION);
  const long part = ((long)row * a.heads + h) * partitions + p;
  if (start >= end) {
    if (threadIdx.x == 0) {
      max_logits[part] = -NS_INF;
      exp_sums[part] = 0.0f;
    }
    for (int d = threadIdx.x; d < r; d += blockDim.x) tmp_out[part * r + d] = 0.0f;
    return;
  }
  for (int d = threadIdx.x; d < r; d += blockDim.x) q[d] = ns_load(q_latent, ((long)row * a.heads + h) * r + d);
  for (int d = threadIdx.x; d < a.rope_dim; d += blockDim.x)
    q[r + d] = ns_load(q_rope, (long)row * a.rope_stride + a.rope_offset + (long)h * a.rope_head_stride + d);
  __syncthreads();
  const int lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP, nw = blockDim.x / NS_WARP;
  const unsigned int* table = a.block_tables + (long)s * a.max_blocks;
  for (int j = start + warp; j < end; j += nw) {
    const long kb = ((long)table[j / a.block_size] * a.block_size + j % a.block_size) * slot_len;
    float dot = 0.0f;
    for (int d = lane; d < slot_len; d += NS_WARP) dot += q[d] * ns_load(cache, kb + d);
    dot = ns_warp_sum(dot);
    if (lane == 0) logits[j - start] = dot * a.scale;
  }
  __syncthreads();
  float m = -NS_INF;
  for (int j = threadIdx.x; j < end - start; j += blockDim.x) m = fmaxf(m, logits[j]);
  m = ns_block_max(m, scratch);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < end - start; j += blockDim.x) {
    const float e = __expf(logits[j] - m);
    logits[j] = e;
    sum += e;
  }
  sum = ns_block_sum(sum, scratch);  // syncs: every exp is in shared memory
  for (int d = threadIdx.x; d < r; d += blockDim.x) {
    float acc = 0.0f;
    for (int j = start; j < end; ++j)
      acc += logits[j - start] *
             ns_load(cache, ((long)table[j / a.block_size] * a.block_size + j % a.block_size) * slot_len + d);
    tmp_out[part * r + d] = acc / sum;
  }
  if (threadIdx.x == 0) {
    max_logits[part] = m;
    exp_sums[part] = sum;
  }
}
NS_FOR_DTYPES(latent_attention_partial,
              (const void* q_latent, const void* q_rope, const void* cache, float* tmp_out, float* max_logits,
               float* exp_sums, ns_latent_args a, int partitions),
              ((const T*)q_latent, (const T*)q_rope, (const T*)cache, tmp_out, max_logits, exp_sums, a, partitions))

// Combines the partitions: grid (heads, rows), into out[row, h * latent_dim ...].
template <typename T>
__device__ void latent_attention_reduce_impl(T* out, const float* tmp_out, const float* max_logits,
                                             const float* exp_sums, ns_latent_args a, int partitions) {
  const int h = blockIdx.x, row = blockIdx.y, r = a.latent_dim;
  const long base = ((long)row * a.heads + h) * partitions;
  float m = -NS_INF;
  for (int p = 0; p < partitions; ++p) m = fmaxf(m, max_logits[base + p]);
  // Empty partitions (exp-sum 0) are skipped; a NaN partition is kept (NaN out).
  float total = 0.0f;
  for (int p = 0; p < partitions; ++p)
    if (exp_sums[base + p] != 0.0f) total += exp_sums[base + p] * __expf(max_logits[base + p] - m);
  const long orow = ((long)row * a.heads + h) * r;
  for (int d = threadIdx.x; d < r; d += blockDim.x) {
    float acc = 0.0f;
    for (int p = 0; p < partitions; ++p)
      if (exp_sums[base + p] != 0.0f)
        acc += tmp_out[(base + p) * r + d] * exp_sums[base + p] * __expf(max_logits[base + p] - m);
    ns_store(out, orow + d, total != 0.0f ? acc / total : 0.0f);
  }
}
NS_FOR_DTYPES(latent_attention_reduce,
              (void* out, const float* tmp_out, const float* max_logits, const float* exp_sums, ns_latent_args a,
               int partitions),
              ((T*)out, tmp_out, max_logits, exp_sums, a, partitions))
