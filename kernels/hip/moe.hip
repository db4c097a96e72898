// Mixture-of-experts: the fused top-k router and the weighted combine. The expert GEMMs are
// vendor GEMMs over each expert's rows (gpu/ops/moe.rs); the rows reach them grouped by
// expert through gather_rows (elementwise.hip), in the order the host derives from the
// router's choices (kernels/src/moe.rs, MoeGroups).
#include "compat.h"

#define NS_MOE_MAX_EXPERTS 512

// One warp per row of x [rows, hidden]: the router's logits x . gate[e] in f32 (lanes over
// hidden, a warp sum per expert; never rounded to the storage type) into shared memory,
// scores (softmax over the row, or a sigmoid per expert), then top_k rounds of a warp argmax
// over score + bias (the bias picks, it does not weigh; ties go to the lower id; NaN never
// wins), then lane 0 renormalizes (in selection order, as the host does) and scales.
// Writes ids[row * top_k + j] and weights[row * top_k + j].
template <typename T>
__device__ void moe_route_impl(unsigned int* ids, float* weights, const T* x, const T* gate, const T* bias,
                               int hidden, int experts, int top_k, int sigmoid, int renormalize, float scale) {
  __shared__ float score[NS_MOE_MAX_EXPERTS];
  __shared__ unsigned char taken[NS_MOE_MAX_EXPERTS];
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
  for (int j = 0; j < top_k; ++j) {
    float best = -NS_INF;
    int idx = 0x7fffffff;
    for (int i = lane; i < experts; i += NS_WARP) {
      if (taken[i]) continue;
      const float c = score[i] + (bias ? ns_load(bias, i) : 0.0f);
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
               int experts, int top_k, int sigmoid, int renormalize, float scale),
              (ids, weights, (const T*)x, (const T*)gate, (const T*)bias, hidden, experts, top_k, sigmoid,
               renormalize, scale))

// out[t, :] = sum_j weights[t * top_k + j] * y[sources[t * top_k + j], :], from zero, j in
// order, without fused multiply-adds (the CPU's order and rounding). `meta` is
// [sources (tokens * top_k) | weights as f32 bits (tokens * top_k)]. One block per token.
template <typename T>
__device__ void moe_combine_impl(T* out, const T* y, const unsigned int* meta, int dim, int top_k, int pairs) {
  const long t = blockIdx.x;
  const unsigned int* src = meta + t * top_k;
  const float* w = (const float*)(meta + pairs) + t * top_k;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < top_k; ++j) acc = __fadd_rn(acc, __fmul_rn(w[j], ns_load(y, (long)src[j] * dim + i)));
    ns_store(out, t * dim + i, acc);
  }
}
NS_FOR_DTYPES(moe_combine, (void* out, const void* y, const unsigned int* meta, int dim, int top_k, int pairs),
              ((T*)out, (const T*)y, meta, dim, top_k, pairs))
