// CUDA implementations of torch.ops.lmx.* (compiled only when LMX_WITH_CUDA; see cmake/cuda.cmake): validation by
// csrc/checks.h, a device guard on the tensors' device, the current stream, then csrc/cuda/ops_cuda_run.h (dtype
// dispatch, kernel views, workspaces, launchers). Only c10/cuda/CUDAGuard.h and CUDAStream.h from torch's CUDA
// headers: ATen/cuda/CUDAContext.h would pull in cusparse.h.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../ops.h"
#include "ops_cuda_run.h"

namespace lmx {

namespace {
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
}  // namespace

void rotary_embedding_cuda(at::Tensor& query, const std::optional<at::Tensor>& key, const at::Tensor& positions,
                           int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                           const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& rope_seq_lens,
                           bool precise) {
  const RopeInputs in = check_rotary_embedding("rotary_embedding", query, key, positions, rotary_dim, rope_params,
                                               cu_seqlens, rope_seq_lens);
  const c10::cuda::CUDAGuard guard(query.device());
  cuda::run_rotary_embedding(in, query, key, nullptr, nullptr, nullptr, nullptr, positions, is_neox, cu_seqlens,
                             rope_seq_lens, precise, current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void rotary_embedding_and_cache_cuda(at::Tensor& query, at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                                     at::Tensor& v_cache, const at::Tensor& slot_mapping, const at::Tensor& positions,
                                     int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                                     const std::optional<at::Tensor>& cu_seqlens,
                                     const std::optional<at::Tensor>& rope_seq_lens, bool precise,
                                     const std::optional<at::Tensor>& k_scales,
                                     const std::optional<at::Tensor>& v_scales) {
  const RopeInputs in = check_rotary_embedding_and_cache("rotary_embedding_and_cache", query, key, value, k_cache,
                                                         v_cache, slot_mapping, positions, rotary_dim, rope_params,
                                                         cu_seqlens, rope_seq_lens, k_scales, v_scales);
  const c10::cuda::CUDAGuard guard(query.device());
  cuda::run_rotary_embedding(in, query, key, &value, &k_cache, &v_cache, &slot_mapping, positions, is_neox,
                             cu_seqlens, rope_seq_lens, precise, current_stream(), k_scales, v_scales);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void reshape_and_cache_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                            const at::Tensor& slot_mapping, const std::optional<at::Tensor>& k_scales,
                            const std::optional<at::Tensor>& v_scales) {
  check_reshape_and_cache("reshape_and_cache", key, value, k_cache, v_cache, slot_mapping, k_scales, v_scales);
  const c10::cuda::CUDAGuard guard(key.device());
  cuda::run_reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, current_stream(), k_scales, v_scales);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void paged_attention_cuda(at::Tensor& out, const at::Tensor& query, const at::Tensor& k_cache,
                          const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& seq_lens,
                          const at::Tensor& cu_seqlens_q, double scale, const std::optional<at::Tensor>& alibi_slopes,
                          int64_t sliding_window, const std::optional<at::Tensor>& k_scales,
                          const std::optional<at::Tensor>& v_scales) {
  const AttentionShape s =
      check_paged_attention("paged_attention", out, query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                            scale, alibi_slopes, sliding_window, k_scales, v_scales);
  const c10::cuda::CUDAGuard guard(query.device());
  cuda::run_paged_attention(s, out, query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, alibi_slopes,
                            cuda::AttentionKernel::kAuto, 0, current_stream(), k_scales, v_scales);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lmx

TORCH_LIBRARY_IMPL(lmx, CUDA, m) {
  m.impl("rotary_embedding", &lmx::rotary_embedding_cuda);
  m.impl("rotary_embedding_and_cache", &lmx::rotary_embedding_and_cache_cuda);
  m.impl("reshape_and_cache", &lmx::reshape_and_cache_cuda);
  m.impl("paged_attention", &lmx::paged_attention_cuda);
}
