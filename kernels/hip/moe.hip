// Mixture-of-experts: the fused top-k router, the grouping of its choices by expert
// (moe_align), the expert GEMM over that grouping (moe_gemm), and the weighted combine.
// Between the router and the combine every buffer is in pair order: row p = t * top_k + j
// is token t's j-th choice. A decode-sized batch is grouped on the device (moe_align),
// so the step never waits for the router and can be captured into a graph; a prefill's
// choices go to the host, which groups them and runs vendor GEMMs over rows gathered
// and scattered by moe_gather / moe_scatter (kernels/src/gpu/ops/moe.rs).
#include "compat.h"

#define NS_MOE_MAX_EXPERTS 512
#define NS_MOE_MAX_GROUPS 64

// One warp per row of x [rows, hidden]: the router's logits x . gate[e] in f32 (lanes over
// hidden, a warp sum per expert; never rounded to the storage type) into shared memory,
// scores (softmax over the row, or a sigmoid per expert), then top_k rounds of a warp argmax
// over score + bias (the bias picks, it does not weigh; ties go to the lower id; NaN never
// wins), then lane 0 renormalizes (in selection order, as the host does) and scales.
// With `groups` > 0 (DeepSeek-V3's group-limited selection, moe::group_mask on the host)
// only the experts of the `top_groups` groups with the best top-2 sums of score + bias
// stay in the running; the others' selection scores become -inf, as transformers' DeepSeek-V3
// router masks them.
// Writes ids[row * top_k + j] and weights[row * top_k + j].
template <typename T>
__device__ void moe_route_impl(unsigned int* ids, float* weights, const T* x, const T* gate, const T* bias,
                               int hidden, int experts, int top_k, int sigmoid, int renormalize, float scale,
                               int groups, int top_groups) {
  __shared__ float score[NS_MOE_MAX_EXPERTS];
  __shared__ float choice[NS_MOE_MAX_EXPERTS];
  __shared__ unsigned char taken[NS_MOE_MAX_EXPERTS];
  __shared__ float group_score[NS_MOE_MAX_GROUPS];
  __shared__ unsigned char group_on[NS_MOE_MAX_GROUPS];
  const long r = blockIdx.x;
  const int lane = threadIdx.x;
  const T* row = x + r * hidden;
  for (int e = 0; e < experts; ++e) {
    float acc = 0.0f;
    for (int i = lane; i < hidden; i += NS_WARP) acc += ns_load(row, i) * ns_load(gate, (long)e * hidden + i);
    acc = ns_warp_sum(acc);
    if (lane == 0) score[e] = acc;
  }
  ns_syncwarp();
  if (sigmoid) {
    for (int i = lane; i < experts; i += NS_WARP) {
      score[i] = 1.0f / (1.0f + expf(-score[i]));
      taken[i] = 0;
    }
  } else {
    float m = -NS_INF;
    for (int i = lane; i < experts; i += NS_WARP) m = fmaxf(m, score[i]);
    m = ns_warp_max(m);
    float sum = 0.0f;
    for (int i = lane; i < experts; i += NS_WARP) {
      const float e = expf(score[i] - m);
      score[i] = e;
      taken[i] = 0;
      sum += e;
    }
    sum = ns_warp_sum(sum);
    ns_syncwarp();
    for (int i = lane; i < experts; i += NS_WARP) score[i] = score[i] / sum;
  }
  ns_syncwarp();
  for (int i = lane; i < experts; i += NS_WARP) choice[i] = score[i] + (bias ? ns_load(bias, i) : 0.0f);
  if (groups > 0) {
    ns_syncwarp();
    const int size = experts / groups;
    for (int g = lane; g < groups; g += NS_WARP) {
      float a = -NS_INF, b = -NS_INF;
      for (int i = g * size; i < (g + 1) * size; ++i) {
        const float c = choice[i] == choice[i] ? choice[i] : -NS_INF;
        if (c > a) {
          b = a;
          a = c;
        } else if (c > b) {
          b = c;
        }
      }
      group_score[g] = a + b;
      group_on[g] = 0;
    }
    ns_syncwarp();
    if (lane == 0) {
      for (int j = 0; j < top_groups; ++j) {
        int best = -1;
        for (int g = 0; g < groups; ++g)
          if (!group_on[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
        if (best >= 0) group_on[best] = 1;
      }
    }
    ns_syncwarp();
    for (int i = lane; i < experts; i += NS_WARP)
      if (!group_on[i / size]) choice[i] = -NS_INF;
  }
  ns_syncwarp();
  for (int j = 0; j < top_k; ++j) {
    float best = -NS_INF;
    int idx = 0x7fffffff;
    for (int i = lane; i < experts; i += NS_WARP) {
      if (taken[i]) continue;
      const float c = choice[i];
      if (c > best || (idx == 0x7fffffff && c == c)) {
        best = c;
        idx = i;
      }
    }
    for (int m = NS_WARP / 2; m > 0; m >>= 1) {
      const float ov = ns_shfl_xor(best, m);
      const int oi = ns_shfl_xor_i(idx, m);
      if (oi != 0x7fffffff && (idx == 0x7fffffff || ov > best || (ov == best && oi < idx))) {
        best = ov;
        idx = oi;
      }
    }
    if (idx == 0x7fffffff) {
      // Every free score is NaN: the lowest free id, weight 0 (as the host does).
      idx = 0;
      while (idx < experts - 1 && taken[idx]) ++idx;
    }
    ns_syncwarp();
    if (lane == 0) {
      const float s = score[idx];
      taken[idx] = 1;
      ids[r * top_k + j] = (unsigned int)idx;
      weights[r * top_k + j] = s == s ? s : 0.0f;
    }
    ns_syncwarp();
  }
  if (lane == 0) {
    // Renormalize over the sum in selection order (the host's order), then scale.
    float* w = weights + r * top_k;
    float sum = 0.0f;
    for (int j = 0; j < top_k; ++j) sum += w[j];
    for (int j = 0; j < top_k; ++j) {
      if (renormalize && sum > 0.0f) w[j] = w[j] / sum;
      if (scale != 1.0f) w[j] = w[j] * scale;
    }
  }
}
NS_FOR_DTYPES(moe_route,
              (unsigned int* ids, float* weights, const void* x, const void* gate, const void* bias, int hidden,
               int experts, int top_k, int sigmoid, int renormalize, float scale, int groups, int top_groups),
              (ids, weights, (const T*)x, (const T*)gate, (const T*)bias, hidden, experts, top_k, sigmoid,
               renormalize, scale, groups, top_groups))

// The grouping of a plan's pairs by expert, in one block: each expert's pairs get a run
// of slots padded to a multiple of NS_MOE_BM (so a block of moe_gemm serves one expert),
// expert by expert. `plan` (u32 words) receives:
//   [0, experts]                  the padded slot offsets (offsets[experts] = slots used);
//   [experts + 1, + max_blocks)   each block's expert, NS_MOE_NONE past the used slots;
//   then max_blocks * NS_MOE_BM   each slot's pair, NS_MOE_NONE for padding.
// The pairs within an expert's run come in no fixed order (atomic cursors): each pair's
// result is computed on its own and written to its own row, so the order changes
// nothing. Adds the number of experts that got a pair to *experts_read.
#define NS_MOE_BM 8
#define NS_MOE_NONE 0xffffffffu

NS_KERNEL void moe_align(unsigned int* plan, unsigned long long* experts_read, const unsigned int* ids, int pairs,
                         int experts, int max_blocks) {
  __shared__ unsigned int count[NS_MOE_MAX_EXPERTS];
  __shared__ unsigned int start[NS_MOE_MAX_EXPERTS + 1];
  const int tid = threadIdx.x, threads = blockDim.x;
  unsigned int* block_expert = plan + experts + 1;
  unsigned int* sorted = block_expert + max_blocks;
  for (int e = tid; e < experts; e += threads) count[e] = 0;
  __syncthreads();
  for (int p = tid; p < pairs; p += threads) atomicAdd(&count[ids[p]], 1u);
  __syncthreads();
  if (tid == 0) {
    unsigned int s = 0, active = 0;
    for (int e = 0; e < experts; ++e) {
      start[e] = s;
      s += (count[e] + NS_MOE_BM - 1) / NS_MOE_BM * NS_MOE_BM;
      active += count[e] > 0;
    }
    start[experts] = s;
    atomicAdd(experts_read, (unsigned long long)active);
  }
  __syncthreads();
  for (int e = tid; e <= experts; e += threads) plan[e] = start[e];
  for (int b = tid; b < max_blocks; b += threads) {
    const unsigned int slot = (unsigned int)b * NS_MOE_BM;
    unsigned int owner = NS_MOE_NONE;
    if (slot < start[experts]) {
      // The last expert whose run starts at or before the slot (runs are non-empty
      // wherever a block starts, so it is the block's expert).
      int lo = 0, hi = experts - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (start[mid] <= slot) lo = mid; else hi = mid - 1;
      }
      owner = (unsigned int)lo;
    }
    block_expert[b] = owner;
  }
  for (int s = tid; s < max_blocks * NS_MOE_BM; s += threads) sorted[s] = NS_MOE_NONE;
  // The counts become cursors: slot = run start + rank. The barrier also orders the
  // padding writes above before the pair writes below (same block, same memory).
  __syncthreads();
  for (int e = tid; e < experts; e += threads) count[e] = start[e];
  __syncthreads();
  for (int p = tid; p < pairs; p += threads) sorted[atomicAdd(&count[ids[p]], 1u)] = (unsigned int)p;
}

// The expert GEMM over a moe_align plan: block (b, c) computes, for the pairs in slots
// b * NS_MOE_BM.. of its expert e, columns c * NS_MOE_BN.. of out[pair] = x[pair / a_div]
// . w[e]^T (w is [experts, n, k], x rows are k wide, out rows n wide). Memory-bound at
// decode sizes (not yet timed): a block reads its NS_MOE_BN rows of w[e] once for its
// (at most NS_MOE_BM) pairs, so an expert with more pairs is read once per block of them.
// The pairs' input rows go through shared memory NS_MOE_KC values at a time; each warp
// owns NS_MOE_BN / warps columns, its lanes stride k (reading w's rows coalesced), and a
// warp sum finishes each (pair, column). Blocks past the used slots return at once.
#define NS_MOE_BN 32
#define NS_MOE_KC 256
#define NS_MOE_THREADS 256
#define NS_MOE_COLS (NS_MOE_BN / (NS_MOE_THREADS / NS_WARP))

template <typename T>
__device__ void moe_gemm_impl(T* out, const T* x, const T* w, const unsigned int* plan, int a_div, int k, int n,
                              int experts, int max_blocks) {
  __shared__ float xs[NS_MOE_BM][NS_MOE_KC];
  __shared__ unsigned int pair[NS_MOE_BM];
  const unsigned int e = plan[experts + 1 + blockIdx.x];
  if (e == NS_MOE_NONE) return;
  const unsigned int* sorted = plan + experts + 1 + max_blocks + (long)blockIdx.x * NS_MOE_BM;
  const int lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP;
  const int warps = NS_MOE_THREADS / NS_WARP;
  if (threadIdx.x < NS_MOE_BM) pair[threadIdx.x] = sorted[threadIdx.x];
  __syncthreads();
  // Padding slots end an expert's run, so the block's pairs are a prefix.
  int rows = 0;
  while (rows < NS_MOE_BM && pair[rows] != NS_MOE_NONE) ++rows;
  const long n0 = (long)blockIdx.y * NS_MOE_BN;
  const T* we = w + (long)e * n * k;
  // Indexed by constants only (every loop over it unrolls), so it stays in registers.
  float acc[NS_MOE_COLS][NS_MOE_BM];
#pragma unroll
  for (int j = 0; j < NS_MOE_COLS; ++j)
#pragma unroll
    for (int r = 0; r < NS_MOE_BM; ++r) acc[j][r] = 0.0f;
  for (int k0 = 0; k0 < k; k0 += NS_MOE_KC) {
    const int kc = min(NS_MOE_KC, k - k0);
    __syncthreads();
    for (int i = threadIdx.x; i < rows * NS_MOE_KC; i += NS_MOE_THREADS) {
      const int r = i / NS_MOE_KC, c = i % NS_MOE_KC;
      xs[r][c] = c < kc ? ns_load(x, (long)(pair[r] / a_div) * k + k0 + c) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < NS_MOE_COLS; ++j) {
      const long col = n0 + warp + j * warps;
      if (col < n) {
        const T* wr = we + col * k + k0;
        for (int c = lane; c < kc; c += NS_WARP) {
          const float wv = ns_load(wr, c);
#pragma unroll
          for (int r = 0; r < NS_MOE_BM; ++r)
            if (r < rows) acc[j][r] += wv * xs[r][c];
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < NS_MOE_COLS; ++j) {
    const long col = n0 + warp + j * warps;
    if (col < n) {
#pragma unroll
      for (int r = 0; r < NS_MOE_BM; ++r) {
        if (r < rows) {
          const float s = ns_warp_sum(acc[j][r]);
          if (lane == 0) ns_store(out, (long)pair[r] * n + col, s);
        }
      }
    }
  }
}
NS_FOR_DTYPES(moe_gemm,
              (void* out, const void* x, const void* w, const unsigned int* plan, int a_div, int k, int n, int experts,
               int max_blocks),
              ((T*)out, (const T*)x, (const T*)w, plan, a_div, k, n, experts, max_blocks))

// The host-grouped path's copies, one block per grouped row g: moe_gather writes
// out[g] = x[pairs[g] / a_div] (the vendor GEMMs' contiguous input), moe_scatter writes
// out[pairs[g]] = y[g] (their output back in pair order).
template <typename T>
__device__ void moe_gather_impl(T* out, const T* x, const unsigned int* pairs, int a_div, int dim) {
  const long g = blockIdx.x;
  const long src = pairs[g] / a_div;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ns_store(out, g * dim + i, ns_load(x, src * dim + i));
}
NS_FOR_DTYPES(moe_gather, (void* out, const void* x, const unsigned int* pairs, int a_div, int dim),
              ((T*)out, (const T*)x, pairs, a_div, dim))

template <typename T>
__device__ void moe_scatter_impl(T* out, const T* y, const unsigned int* pairs, int dim) {
  const long g = blockIdx.x;
  const long dst = pairs[g];
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ns_store(out, dst * dim + i, ns_load(y, g * dim + i));
}
NS_FOR_DTYPES(moe_scatter, (void* out, const void* y, const unsigned int* pairs, int dim),
              ((T*)out, (const T*)y, pairs, dim))

// out[t, :] = sum over token t's choices, in ascending expert id, of
// weights[p] * y[p, :] (p = t * top_k + j), from zero and without fused multiply-adds
// (the CPU's order and rounding). `ids` and `weights` are the router's, in pair order.
// One block per token.
template <typename T>
__device__ void moe_combine_impl(T* out, const T* y, const unsigned int* ids, const float* weights, int dim,
                                 int top_k) {
  __shared__ int order[NS_MOE_MAX_EXPERTS];
  const long t = blockIdx.x;
  const unsigned int* id = ids + t * top_k;
  // A token's experts are distinct, so the ranks are a permutation.
  for (int j = threadIdx.x; j < top_k; j += blockDim.x) {
    int rank = 0;
    for (int q = 0; q < top_k; ++q) rank += id[q] < id[j];
    order[rank] = j;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float acc = 0.0f;
    for (int r = 0; r < top_k; ++r) {
      const long p = t * top_k + order[r];
      acc = __fadd_rn(acc, __fmul_rn(weights[p], ns_load(y, p * dim + i)));
    }
    ns_store(out, t * dim + i, acc);
  }
}
NS_FOR_DTYPES(moe_combine, (void* out, const void* y, const unsigned int* ids, const float* weights, int dim, int top_k),
              ((T*)out, (const T*)y, ids, weights, dim, top_k))
