// Launchers and instantiations of the cache kernels (csrc/cuda/cache.cuh). No torch headers.
#include "cache.cuh"

namespace lmx::cuda {

template <typename In, typename Cache>
void launch_reshape_and_cache(int64_t num_tokens, int head_dim, HeadsView<const In> key, HeadsView<const In> value,
                              Cache* k_cache, Cache* v_cache, const int64_t* slot_mapping, int64_t num_slots,
                              cudaStream_t stream) {
  if (num_tokens == 0) return;
  LMX_LAUNCH((reshape_and_cache_kernel<In, Cache>), dim3(static_cast<unsigned>(num_tokens)), dim3(kCacheThreads), 0,
             stream, head_dim, key, value, k_cache, v_cache, slot_mapping, num_slots);
}

template <typename In, typename Q>
void launch_reshape_and_cache_quant(int64_t num_tokens, int head_dim, HeadsView<const In> key,
                                    HeadsView<const In> value, Q* k_cache, Q* v_cache, float* k_scales,
                                    float* v_scales, const int64_t* slot_mapping, int64_t num_slots,
                                    cudaStream_t stream) {
  if (num_tokens == 0) return;
  LMX_LAUNCH((reshape_and_cache_quant_kernel<In, Q>), dim3(static_cast<unsigned>(num_tokens)), dim3(kCacheThreads),
             0, stream, head_dim, key, value, k_cache, v_cache, k_scales, v_scales, slot_mapping, num_slots);
}

// The pairs the CPU op accepts: equal dtypes, or float on one side.
#define LMX_INSTANTIATE_CACHE(I, C)                                                                             \
  template void launch_reshape_and_cache<I, C>(int64_t, int, HeadsView<const I>, HeadsView<const I>, C*, C*,  \
                                               const int64_t*, int64_t, cudaStream_t);
LMX_INSTANTIATE_CACHE(float, float)
LMX_INSTANTIATE_CACHE(float, __half)
LMX_INSTANTIATE_CACHE(float, __nv_bfloat16)
LMX_INSTANTIATE_CACHE(__half, __half)
LMX_INSTANTIATE_CACHE(__half, float)
LMX_INSTANTIATE_CACHE(__nv_bfloat16, __nv_bfloat16)
LMX_INSTANTIATE_CACHE(__nv_bfloat16, float)

// Quantized caches: from every activation type.
#define LMX_INSTANTIATE_CACHE_QUANT(I, Q)                                                                  \
  template void launch_reshape_and_cache_quant<I, Q>(int64_t, int, HeadsView<const I>, HeadsView<const I>, Q*, \
                                                     Q*, float*, float*, const int64_t*, int64_t, cudaStream_t);
LMX_INSTANTIATE_CACHE_QUANT(float, int8_t)
LMX_INSTANTIATE_CACHE_QUANT(__half, int8_t)
LMX_INSTANTIATE_CACHE_QUANT(__nv_bfloat16, int8_t)
LMX_INSTANTIATE_CACHE_QUANT(float, fp8_e4m3)
LMX_INSTANTIATE_CACHE_QUANT(__half, fp8_e4m3)
LMX_INSTANTIATE_CACHE_QUANT(__nv_bfloat16, fp8_e4m3)

}  // namespace lmx::cuda
