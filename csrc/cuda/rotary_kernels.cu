// Launchers and instantiations of the rotary kernels (csrc/cuda/rotary.cuh). No torch headers.
#include "rotary.cuh"

namespace lmx::cuda {

int64_t rotary_workspace_floats(const RopeParams& rope, int num_seqs) {
  return static_cast<int64_t>(rope.scaling == RopeScaling::kDynamic ? num_seqs : 1) * (rope.rotary_dim / 2);
}

template <typename T, typename C>
void launch_rotary_embedding(const RopeParams& rope, bool is_neox, bool precise, int64_t num_tokens, int head_dim,
                             const int64_t* positions, const int32_t* cu_seqlens, const int64_t* rope_seq_lens,
                             int num_seqs, float* workspace, HeadsView<T> query, HeadsView<T> key,
                             HeadsView<const T> value, C* k_cache, C* v_cache, float* k_scales, float* v_scales,
                             const int64_t* slot_mapping, int64_t num_slots, cudaStream_t stream) {
  if (num_tokens == 0) return;
  const bool per_seq = rope.scaling == RopeScaling::kDynamic;
  const int tables = per_seq ? num_seqs : 1;
  LMX_LAUNCH(rope_inv_freq_kernel, dim3(tables), dim3(kRopeThreads), (kRopeThreads / 32) * sizeof(int64_t), stream,
             rope, num_tokens, positions, cu_seqlens, rope_seq_lens, num_seqs, workspace);
  const size_t smem = static_cast<size_t>(rope.rotary_dim) * sizeof(float);
  LMX_LAUNCH((rotary_kernel<T, C>), dim3(static_cast<unsigned>(num_tokens)), dim3(kRopeThreads), smem, stream,
             rope.rotary_dim, is_neox, precise, static_cast<float>(rope.attention_factor), head_dim, per_seq,
             positions, cu_seqlens, num_seqs, workspace, query, key, value, k_cache, v_cache, k_scales, v_scales,
             slot_mapping, num_slots);
}

#define LMX_INSTANTIATE_ROTARY(T, C)                                                                               \
  template void launch_rotary_embedding<T, C>(const RopeParams&, bool, bool, int64_t, int, const int64_t*,       \
                                              const int32_t*, const int64_t*, int, float*, HeadsView<T>,          \
                                              HeadsView<T>, HeadsView<const T>, C*, C*, float*, float*,           \
                                              const int64_t*, int64_t, cudaStream_t);
#define LMX_INSTANTIATE_ROTARY_ALL(T) \
  LMX_INSTANTIATE_ROTARY(T, T)        \
  LMX_INSTANTIATE_ROTARY(T, int8_t)   \
  LMX_INSTANTIATE_ROTARY(T, fp8_e4m3)
LMX_INSTANTIATE_ROTARY_ALL(float)
LMX_INSTANTIATE_ROTARY_ALL(__half)
LMX_INSTANTIATE_ROTARY_ALL(__nv_bfloat16)

}  // namespace lmx::cuda
