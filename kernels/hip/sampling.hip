// Sampling helpers over logits rows (f32): greedy argmax, temperature softmax, and
// inverse-CDF sampling from probabilities with a host-drawn uniform per row.
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

// probs = softmax(logits / temperature) per row, in place.
NS_KERNEL void softmax_rows(float* x, int vocab, float temperature) {
  __shared__ float scratch[NS_MAX_WARPS];
  float* row = x + (long)blockIdx.x * vocab;
  const float inv_t = 1.0f / temperature;
  float m = -NS_INF;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, row[i] * inv_t);
  m = ns_block_max(m, scratch);
  float s = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float e = __expf(row[i] * inv_t - m);
    row[i] = e;
    s += e;
  }
  const float inv = 1.0f / ns_block_sum(s, scratch);
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) row[i] *= inv;
}

// The first index whose cumulative probability exceeds u[r] * total (u in [0, 1)).
// Chunked scan: each pass sums blockDim.x values, then one thread walks the chunk that
// crosses the threshold.
NS_KERNEL void sample_rows(const float* probs, const float* u, unsigned int* out, int vocab) {
  __shared__ float scratch[NS_MAX_WARPS];
  __shared__ float chunk[1024];
  __shared__ int found;
  const float* row = probs + (long)blockIdx.x * vocab;
  float total = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) total += row[i];
  total = ns_block_sum(total, scratch);
  const float target = u[blockIdx.x] * total;
  if (threadIdx.x == 0) found = -1;
  float acc = 0.0f;
  for (int base = 0; base < vocab; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const float p = i < vocab ? row[i] : 0.0f;
    chunk[threadIdx.x] = p;
    const float s = ns_block_sum(p, scratch);
    if (acc + s > target) {
      if (threadIdx.x == 0) {
        float a = acc;
        int k = 0;
        const int n = min((int)blockDim.x, vocab - base);
        for (; k < n - 1; ++k) {
          a += chunk[k];
          if (a > target) break;
        }
        found = base + k;
      }
      __syncthreads();
      break;
    }
    acc += s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int f = found;
    if (f < 0) {  // rounding: the last nonzero probability
      for (f = vocab - 1; f > 0 && row[f] <= 0.0f; --f) {
      }
    }
    out[blockIdx.x] = (unsigned int)f;
  }
}
