// Launchers and instantiations of the prefill attention kernel (csrc/cuda/attention_prefill.cuh). No torch headers.
#include "attention_prefill.cuh"

namespace lmx::cuda {

template <typename T, typename C, int MAX_D>
static void launch_prefill(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query, KvCache<C> kv,
                           cudaStream_t stream) {
  const int group = a.num_q_heads / a.num_kv_heads;
  const int64_t tiles = ceil_div(a.num_tokens * group, kPrefillRows) + a.num_seqs;
  const size_t smem = prefill_smem_floats(a.head_dim) * sizeof(float);
  auto* kernel = paged_attention_prefill_kernel<T, C, MAX_D>;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  LMX_LAUNCH(kernel, dim3(static_cast<unsigned>(tiles), a.num_kv_heads), dim3(kPrefillThreads), smem, stream, a, out,
             query, kv);
}

template <typename T, typename C>
void launch_paged_attention_prefill(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                    KvCache<C> kv, cudaStream_t stream) {
  if (a.num_tokens == 0 || a.num_seqs == 0) return;
  if (a.head_dim <= 64) launch_prefill<T, C, 64>(a, out, query, kv, stream);
  else if (a.head_dim <= 128) launch_prefill<T, C, 128>(a, out, query, kv, stream);
  else launch_prefill<T, C, 256>(a, out, query, kv, stream);
}

#define LMX_INSTANTIATE_PREFILL(T, C)                                                                               \
  template void launch_paged_attention_prefill<T, C>(const PagedAttentionArgs&, HeadsView<T>, HeadsView<const T>, \
                                                     KvCache<C>, cudaStream_t);
#define LMX_INSTANTIATE_PREFILL_ALL(T) \
  LMX_INSTANTIATE_PREFILL(T, T)        \
  LMX_INSTANTIATE_PREFILL(T, int8_t)   \
  LMX_INSTANTIATE_PREFILL(T, fp8_e4m3)
LMX_INSTANTIATE_PREFILL_ALL(float)
LMX_INSTANTIATE_PREFILL_ALL(__half)
LMX_INSTANTIATE_PREFILL_ALL(__nv_bfloat16)

}  // namespace lmx::cuda
