// reshape_and_cache on CUDA: scatter each token's key / value rows into its cache slot, converting the dtype.
#pragma once

#include "common.cuh"
#include "kv_quant.cuh"
#include "launchers.h"

namespace lmx::cuda {

constexpr int kCacheThreads = 128;

// One block per token; threads over the Hkv * D channels of key and of value.
template <typename In, typename Cache>
__global__ void __launch_bounds__(kCacheThreads)
    reshape_and_cache_kernel(int head_dim, HeadsView<const In> key, HeadsView<const In> value,
                             Cache* __restrict__ k_cache, Cache* __restrict__ v_cache,
                             const int64_t* __restrict__ slot_mapping, int64_t num_slots) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0 || slot >= num_slots) return;  // padding, or out of range on the device: skipped
  const int n = key.num_heads * head_dim;
  Cache* kd = k_cache + slot * n;
  Cache* vd = v_cache + slot * n;
  for (int i = threadIdx.x; i < n; i += kCacheThreads) {
    const int h = i / head_dim, c = i % head_dim;
    kd[i] = from_float<Cache>(to_float(key.data[t * key.token_stride + h * key.head_stride + c]));
    vd[i] = from_float<Cache>(to_float(value.data[t * value.token_stride + h * value.head_stride + c]));
  }
}

// Quantized caches (int8 / fp8): one block per token, one warp per key or value row (kv_quant.cuh).
template <typename In, typename Q>
__global__ void __launch_bounds__(kCacheThreads)
    reshape_and_cache_quant_kernel(int head_dim, HeadsView<const In> key, HeadsView<const In> value,
                                   Q* __restrict__ k_cache, Q* __restrict__ v_cache, float* __restrict__ k_scales,
                                   float* __restrict__ v_scales, const int64_t* __restrict__ slot_mapping,
                                   int64_t num_slots) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0 || slot >= num_slots) return;  // padding, or out of range on the device: skipped (uniform)
  quantize_token<In, Q>(t, slot, head_dim, key, value, k_cache, v_cache, k_scales, v_scales, kCacheThreads);
}

}  // namespace lmx::cuda
