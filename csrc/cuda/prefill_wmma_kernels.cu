// Launchers and instantiations of the tensor-core prefill attention kernel (csrc/cuda/attention_prefill_wmma.cuh),
// fp16 and bf16 only. No torch headers.
#include "attention_prefill_wmma.cuh"

namespace lmx::cuda {

bool prefill_wmma_supported(const PagedAttentionArgs& a) { return a.head_dim % 16 == 0 && a.head_dim <= 256; }

template <typename T, typename C>
void launch_paged_attention_prefill_wmma(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                         KvCache<C> kv, cudaStream_t stream) {
  if (a.num_tokens == 0 || a.num_seqs == 0) return;
  const int group = a.num_q_heads / a.num_kv_heads;
  const int64_t tiles = ceil_div(a.num_tokens * group, kWmmaRows) + a.num_seqs;
  const size_t smem = wmma_smem_bytes(a.head_dim);
  auto* kernel = paged_attention_prefill_wmma_kernel<T, C>;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  LMX_LAUNCH(kernel, dim3(static_cast<unsigned>(tiles), a.num_kv_heads), dim3(kWmmaThreads), smem, stream, a, out,
             query, kv);
}

#define LMX_INSTANTIATE_PREFILL_WMMA(T, C)                                                              \
  template void launch_paged_attention_prefill_wmma<T, C>(const PagedAttentionArgs&, HeadsView<T>,     \
                                                          HeadsView<const T>, KvCache<C>, cudaStream_t);
#define LMX_INSTANTIATE_PREFILL_WMMA_ALL(T) \
  LMX_INSTANTIATE_PREFILL_WMMA(T, T)        \
  LMX_INSTANTIATE_PREFILL_WMMA(T, int8_t)   \
  LMX_INSTANTIATE_PREFILL_WMMA(T, fp8_e4m3)
LMX_INSTANTIATE_PREFILL_WMMA_ALL(__half)
LMX_INSTANTIATE_PREFILL_WMMA_ALL(__nv_bfloat16)

}  // namespace lmx::cuda
