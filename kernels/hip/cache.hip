// KV-cache write by slot mapping. Caches are [num_blocks, block_size, kv_heads, head_dim]
// (one layer), so a slot's keys are contiguous. Slot 0xffffffff is padding: skipped.
#include "compat.h"

template <typename T>
__device__ void reshape_and_cache_impl(const T* qkv, const unsigned int* slot_mapping, T* key_cache, T* value_cache,
                                       int row_stride, int k_offset, int v_offset, int slot_len) {
  const long t = blockIdx.x;
  const unsigned int slot = slot_mapping[t];
  if (slot == 0xffffffffu) return;
  for (int i = threadIdx.x; i < slot_len; i += blockDim.x) {
    ns_store(key_cache, (long)slot * slot_len + i, ns_load(qkv, t * row_stride + k_offset + i));
    ns_store(value_cache, (long)slot * slot_len + i, ns_load(qkv, t * row_stride + v_offset + i));
  }
}
NS_FOR_DTYPES(reshape_and_cache,
              (const void* qkv, const unsigned int* slot_mapping, void* key_cache, void* value_cache, int row_stride,
               int k_offset, int v_offset, int slot_len),
              ((const T*)qkv, slot_mapping, (T*)key_cache, (T*)value_cache, row_stride, k_offset, v_offset, slot_len))
