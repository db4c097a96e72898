// Sampling over logits rows (f32): greedy argmax. (Temperature sampling runs on the host,
// over downloaded logits, with penalties and logprobs.)
#include "compat.h"

// One block per row; the lowest index wins ties; NaNs never win; a row with no number
// gives 0 (all as the CPU argmax).
NS_KERNEL void argmax_rows(const float* logits, unsigned int* out, int vocab) {
  __shared__ float sv[NS_MAX_WARPS];
  __shared__ int si[NS_MAX_WARPS];
  const long r = blockIdx.x;
  float best = -NS_INF;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = logits[r * vocab + i];
    // False for NaN; the first number wins even at -inf (the CPU argmax's rule), and the
    // merges below then prefer real indices over the INT_MAX sentinel at equal values.
    if (v > best || (idx == 0x7fffffff && v == v)) {
      best = v;
      idx = i;
    }
  }
  for (int m = NS_WARP / 2; m > 0; m >>= 1) {
    const float ov = ns_shfl_xor(best, m);
    const int oi = ns_shfl_xor_i(idx, m);
    if (ov > best || (ov == best && oi < idx)) {
      best = ov;
      idx = oi;
    }
  }
  const int lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP, nw = (blockDim.x + NS_WARP - 1) / NS_WARP;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; ++w)
      if (sv[w] > best || (sv[w] == best && si[w] < idx)) {
        best = sv[w];
        idx = si[w];
      }
    out[r] = idx == 0x7fffffff ? 0u : (unsigned int)idx;
  }
}
