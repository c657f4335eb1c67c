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

}  // namespace lmx::cuda
