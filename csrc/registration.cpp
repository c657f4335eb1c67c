// torch.ops.lmx.*: the schemas, and the implementation of each op per dispatch key. CPU is registered here; CUDA
// in csrc/cuda/ops_cuda.cpp when LMX_WITH_CUDA, otherwise here by functions that validate and then raise the
// "built CPU-only" error. The dispatcher picks the key from the tensors' devices (checks.h then insists that
// every tensor is on the first one's device).
#include <torch/library.h>

#include "checks.h"
#include "ops.h"
#include "schemas.h"

TORCH_LIBRARY(lmx, m) {
  m.def(LMX_ROTARY_EMBEDDING_SCHEMA);
  m.def(LMX_ROTARY_EMBEDDING_AND_CACHE_SCHEMA);
  m.def(LMX_RESHAPE_AND_CACHE_SCHEMA);
  m.def(LMX_PAGED_ATTENTION_SCHEMA);
  m.def(LMX_LINEAR_SCHEMA);
}

// Sparse CPU tensors go to the same functions, whose first check names the argument and its layout (instead of
// the dispatcher's "could not run ... with arguments from the 'SparseCPU' backend").
#define LMX_REGISTER_CPU(key)                                                        \
  TORCH_LIBRARY_IMPL(lmx, key, m) {                                                  \
    m.impl("rotary_embedding", &lmx::rotary_embedding_cpu);                          \
    m.impl("rotary_embedding_and_cache", &lmx::rotary_embedding_and_cache_cpu);      \
    m.impl("reshape_and_cache", &lmx::reshape_and_cache_cpu);                        \
    m.impl("paged_attention", &lmx::paged_attention_cpu);                            \
    m.impl("linear", &lmx::linear_cpu);                                              \
  }
LMX_REGISTER_CPU(CPU)
LMX_REGISTER_CPU(SparseCPU)
LMX_REGISTER_CPU(SparseCsrCPU)

// linear on CUDA (either build): torch's own GEMM after the same checks.
TORCH_LIBRARY_IMPL(lmx, CUDA, m) { m.impl("linear", &lmx::linear_other); }

#ifndef LMX_WITH_CUDA
namespace lmx {
namespace {

// A CPU-only build given CUDA tensors: the same argument errors as a CUDA build, then the build error.
void rotary_embedding_cpu_only(at::Tensor& query, const std::optional<at::Tensor>& key, const at::Tensor& positions,
                               int64_t rotary_dim, bool, c10::ArrayRef<double> rope_params,
                               const std::optional<at::Tensor>& cu_seqlens,
                               const std::optional<at::Tensor>& rope_seq_lens, bool) {
  const char* op = "rotary_embedding";
  check_rotary_embedding(op, query, key, positions, rotary_dim, rope_params, cu_seqlens, rope_seq_lens);
  no_cuda(op);
}

void rotary_embedding_and_cache_cpu_only(at::Tensor& query, at::Tensor& key, const at::Tensor& value,
                                         at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slot_mapping,
                                         const at::Tensor& positions, int64_t rotary_dim, bool,
                                         c10::ArrayRef<double> rope_params,
                                         const std::optional<at::Tensor>& cu_seqlens,
                                         const std::optional<at::Tensor>& rope_seq_lens, bool,
                                         const std::optional<at::Tensor>& k_scales,
                                         const std::optional<at::Tensor>& v_scales) {
  const char* op = "rotary_embedding_and_cache";
  check_rotary_embedding_and_cache(op, query, key, value, k_cache, v_cache, slot_mapping, positions, rotary_dim,
                                   rope_params, cu_seqlens, rope_seq_lens, k_scales, v_scales);
  no_cuda(op);
}

void reshape_and_cache_cpu_only(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                                at::Tensor& v_cache, const at::Tensor& slot_mapping,
                                const std::optional<at::Tensor>& k_scales, const std::optional<at::Tensor>& v_scales) {
  const char* op = "reshape_and_cache";
  check_reshape_and_cache(op, key, value, k_cache, v_cache, slot_mapping, k_scales, v_scales);
  no_cuda(op);
}

void paged_attention_cpu_only(at::Tensor& out, const at::Tensor& query, const at::Tensor& k_cache,
                              const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& seq_lens,
                              const at::Tensor& cu_seqlens_q, double scale,
                              const std::optional<at::Tensor>& alibi_slopes, int64_t sliding_window,
                              const std::optional<at::Tensor>& k_scales, const std::optional<at::Tensor>& v_scales) {
  const char* op = "paged_attention";
  check_paged_attention(op, out, query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, alibi_slopes,
                        sliding_window, k_scales, v_scales);
  no_cuda(op);
}

}  // namespace
}  // namespace lmx

TORCH_LIBRARY_IMPL(lmx, CUDA, m) {
  m.impl("rotary_embedding", &lmx::rotary_embedding_cpu_only);
  m.impl("rotary_embedding_and_cache", &lmx::rotary_embedding_and_cache_cpu_only);
  m.impl("reshape_and_cache", &lmx::reshape_and_cache_cpu_only);
  m.impl("paged_attention", &lmx::paged_attention_cpu_only);
}
#endif  // LMX_WITH_CUDA
