// Attention over the paged KV cache (layout [num_blocks, block_size, kv_heads, head_dim]
// per layer), GQA, optional sliding window, f32 softmax and accumulation.
//
// Metadata per sequence s: query_start[s] (first row in the batch), num_queries[s] (its
// new tokens, the last of its context_len[s] cached tokens), and its block table at
// block_tables[s * max_blocks ...]. q sits at column 0 of qkv rows of `row_stride`;
// out rows are num_heads * head_dim.
#include "compat.h"

#define NS_PARTITION 512   // tokens per split-K partition (decode)
#define NS_MAX_HEAD_DIM 256

struct ns_attn_args {
  const unsigned int* query_start;
  const unsigned int* num_queries;
  const unsigned int* context_len;
  const unsigned int* block_tables;
  int max_blocks;
  int block_size;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  int row_stride;
  float scale;
  int window;  // 0: none
};

__device__ __forceinline__ long ns_slot(const ns_attn_args& a, int s, int pos) {
  const unsigned int block = a.block_tables[(long)s * a.max_blocks + pos / a.block_size];
  return (long)block * a.block_size + pos % a.block_size;
}

// Decode, split-K (flash-decoding): grid (num_heads, num_seqs, partitions). Each block
// scores one partition of the context for one head against the sequence's last query,
// and writes its normalized partial output with its max logit and exp-sum.
template <typename T>
__device__ void paged_attention_partial_impl(const T* qkv, const T* key_cache, const T* value_cache, float* tmp_out,
                                             float* max_logits, float* exp_sums, ns_attn_args a, int partitions) {
  __shared__ float q[NS_MAX_HEAD_DIM];
  __shared__ float logits[NS_PARTITION];
  __shared__ float scratch[NS_MAX_WARPS];
  const int h = blockIdx.x, s = blockIdx.y, p = blockIdx.z;
  const int ctx = a.context_len[s];
  const int lo = a.window > 0 ? max(0, ctx - a.window) : 0;
  const int start = lo + p * NS_PARTITION, end = min(ctx, start + NS_PARTITION);
  const long part = ((long)s * a.num_heads + h) * partitions + p;
  if (start >= end) {
    if (threadIdx.x == 0) {
      max_logits[part] = -NS_INF;
      exp_sums[part] = 0.0f;
    }
    for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) tmp_out[part * a.head_dim + d] = 0.0f;
    return;
  }
  const int kvh = h / (a.num_heads / a.num_kv_heads);
  const long qrow = (long)(a.query_start[s] + a.num_queries[s] - 1) * a.row_stride + (long)h * a.head_dim;
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) q[d] = ns_load(qkv, qrow + d) * a.scale;
  __syncthreads();
  const int lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP, nw = blockDim.x / NS_WARP;
  const int slot_len = a.num_kv_heads * a.head_dim;
  for (int j = start + warp; j < end; j += nw) {
    const long kb = ns_slot(a, s, j) * slot_len + (long)kvh * a.head_dim;
    float dot = 0.0f;
    for (int d = lane; d < a.head_dim; d += NS_WARP) dot += q[d] * ns_load(key_cache, kb + d);
    dot = ns_warp_sum(dot);
    if (lane == 0) logits[j - start] = dot;
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
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int j = start; j < end; ++j)
      acc += logits[j - start] * ns_load(value_cache, ns_slot(a, s, j) * slot_len + (long)kvh * a.head_dim + d);
    tmp_out[part * a.head_dim + d] = acc / sum;
  }
  if (threadIdx.x == 0) {
    max_logits[part] = m;
    exp_sums[part] = sum;
  }
}
NS_FOR_DTYPES(paged_attention_partial,
              (const void* qkv, const void* key_cache, const void* value_cache, float* tmp_out, float* max_logits,
               float* exp_sums, ns_attn_args a, int partitions),
              ((const T*)qkv, (const T*)key_cache, (const T*)value_cache, tmp_out, max_logits, exp_sums, a, partitions))

// Combines the partitions: grid (num_heads, num_seqs).
template <typename T>
__device__ void paged_attention_reduce_impl(T* out, const float* tmp_out, const float* max_logits,
                                            const float* exp_sums, ns_attn_args a, int partitions) {
  const int h = blockIdx.x, s = blockIdx.y;
  const long base = ((long)s * a.num_heads + h) * partitions;
  float m = -NS_INF;
  for (int p = 0; p < partitions; ++p) m = fmaxf(m, max_logits[base + p]);
  // Empty partitions (exp-sum 0) are skipped. A NaN score (from q or K) makes its
  // partition's exp-sum NaN: it is kept, so the output is NaN as on prefill and the CPU.
  float total = 0.0f;
  for (int p = 0; p < partitions; ++p)
    if (exp_sums[base + p] != 0.0f) total += exp_sums[base + p] * __expf(max_logits[base + p] - m);
  const long orow = (long)(a.query_start[s] + a.num_queries[s] - 1) * a.num_heads * a.head_dim + (long)h * a.head_dim;
  for (int d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int p = 0; p < partitions; ++p)
      if (exp_sums[base + p] != 0.0f)
        acc += tmp_out[(base + p) * a.head_dim + d] * exp_sums[base + p] * __expf(max_logits[base + p] - m);
    ns_store(out, orow + d, total != 0.0f ? acc / total : 0.0f);
  }
}
NS_FOR_DTYPES(paged_attention_reduce,
              (void* out, const float* tmp_out, const float* max_logits, const float* exp_sums, ns_attn_args a,
               int partitions),
              ((T*)out, tmp_out, max_logits, exp_sums, a, partitions))

#define NS_TILE 16  // keys per shared-memory tile (prefill)

// max with NaN winning (fmaxf drops a NaN): every lane of a butterfly gets a NaN if
// any lane had one.
struct ns_max_nan {
  __device__ __forceinline__ float operator()(float a, float b) const {
    return a != a ? a : b != b ? b : fmaxf(a, b);
  }
};

// Prefill and chunked prefill: causal attention of every new token over the cache (so
// prefix-cache hits need no recompute). grid (ceil(max queries / warps), num_heads,
// num_seqs); one warp per query, online softmax over tiles of NS_TILE keys staged in
// dynamic shared memory as f32: [warps][head_dim] queries, then [NS_TILE][head_dim] keys
// and values.
template <typename T>
__device__ void prefill_attention_impl(const T* qkv, const T* key_cache, const T* value_cache, T* out,
                                       ns_attn_args a) {
  extern __shared__ float smem[];
  const int nw = blockDim.x / NS_WARP, lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP;
  const int h = blockIdx.y, s = blockIdx.z;
  const int nq = a.num_queries[s], ctx = a.context_len[s];
  const int q0 = blockIdx.x * nw;
  if (q0 >= nq) return;  // uniform per block
  const int qi = q0 + warp;
  const bool active = qi < nq;
  const int kvh = h / (a.num_heads / a.num_kv_heads);
  const int slot_len = a.num_kv_heads * a.head_dim;
  float* qs = smem + warp * a.head_dim;
  float* ks = smem + nw * a.head_dim;
  float* vs = ks + NS_TILE * a.head_dim;
  const int qpos = ctx - nq + qi;  // absolute position of this warp's query
  const long qrow = (long)(a.query_start[s] + qi) * a.row_stride + (long)h * a.head_dim;
  if (active)
    for (int d = lane; d < a.head_dim; d += NS_WARP) qs[d] = ns_load(qkv, qrow + d) * a.scale;
  // Keys this block needs: from the first query's window start to the last query.
  const int last_q = min(nq, q0 + nw) - 1;
  const int hi = ctx - nq + last_q + 1;
  const int lo = a.window > 0 ? max(0, ctx - nq + q0 - a.window + 1) : 0;
  float m = -NS_INF, l = 0.0f;
  float acc[NS_MAX_HEAD_DIM / NS_WARP];
#pragma unroll
  for (int i = 0; i < NS_MAX_HEAD_DIM / NS_WARP; ++i) acc[i] = 0.0f;
  for (int t0 = lo; t0 < hi; t0 += NS_TILE) {
    const int tn = min(NS_TILE, hi - t0);
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < tn * a.head_dim; e += blockDim.x) {
      const int j = e / a.head_dim, d = e % a.head_dim;
      const long src = ns_slot(a, s, t0 + j) * slot_len + (long)kvh * a.head_dim + d;
      ks[j * a.head_dim + d] = ns_load(key_cache, src);
      vs[j * a.head_dim + d] = ns_load(value_cache, src);
    }
    __syncthreads();
    if (!active) continue;
    // Lane j scores key t0 + j.
    float score = -NS_INF;
    const int kpos = t0 + lane;
    if (lane < tn && kpos <= qpos && (a.window <= 0 || kpos > qpos - a.window)) {
      float dot = 0.0f;
      for (int d = 0; d < a.head_dim; ++d) dot += qs[d] * ks[lane * a.head_dim + d];
      score = dot;
    }
    // NaN-propagating max: a tile whose scores are all NaN is not "all masked".
    const float tmax = ns_warp_reduce(score, ns_max_nan());
    if (tmax == -NS_INF) continue;
    const float m_new = fmaxf(m, tmax);
    const float alpha = __expf(m - m_new);  // 0 when m was -inf
    const float pj = score == -NS_INF ? 0.0f : __expf(score - m_new);
    l = l * alpha + ns_warp_sum(pj);
#pragma unroll
    for (int i = 0; i < NS_MAX_HEAD_DIM / NS_WARP; ++i) acc[i] *= alpha;
    for (int j = 0; j < tn; ++j) {
      const float pjj = ns_shfl(pj, j);
      if (pjj == 0.0f) continue;
#pragma unroll
      for (int i = 0; i < NS_MAX_HEAD_DIM / NS_WARP; ++i)
        if (i * NS_WARP + lane < a.head_dim) acc[i] += pjj * vs[j * a.head_dim + i * NS_WARP + lane];
    }
    m = m_new;
  }
  if (!active) return;
  const long orow = (long)(a.query_start[s] + qi) * a.num_heads * a.head_dim + (long)h * a.head_dim;
#pragma unroll
  for (int i = 0; i < NS_MAX_HEAD_DIM / NS_WARP; ++i)
    if (i * NS_WARP + lane < a.head_dim) ns_store(out, orow + i * NS_WARP + lane, l != 0.0f ? acc[i] / l : 0.0f);
}
NS_FOR_DTYPES(prefill_attention,
              (const void* qkv, const void* key_cache, const void* value_cache, void* out, ns_attn_args a),
              ((const T*)qkv, (const T*)key_cache, (const T*)value_cache, (T*)out, a))
