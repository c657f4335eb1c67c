// CPU glue of paged_attention: checks, dtype dispatch, csrc/cpu kernel.
#include "checks.h"
#include "cpu/kernels.h"
#include "ops.h"
#include "tensor_views.h"

namespace lmx {

void paged_attention_cpu(at::Tensor& out, const at::Tensor& query, const at::Tensor& k_cache,
                         const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& seq_lens,
                         const at::Tensor& cu_seqlens_q, double scale, const std::optional<at::Tensor>& alibi_slopes,
                         int64_t sliding_window, const std::optional<at::Tensor>& k_scales,
                         const std::optional<at::Tensor>& v_scales) {
  const char* op = "paged_attention";
  const AttentionShape s = check_paged_attention(op, out, query, k_cache, v_cache, block_tables, seq_lens,
                                                 cu_seqlens_q, scale, alibi_slopes, sliding_window, k_scales,
                                                 v_scales);
  if (s.num_tokens == 0) return;
  const cpu::AttentionParams p{s.num_seqs,
                               s.num_q_heads,
                               s.num_kv_heads,
                               s.head_dim,
                               s.block_size,
                               s.max_blocks_per_seq,
                               s.scale,
                               s.sliding_window,
                               block_tables.data_ptr<int32_t>(),
                               seq_lens.data_ptr<int32_t>(),
                               cu_seqlens_q.data_ptr<int32_t>(),
                               alibi_slopes ? alibi_slopes->data_ptr<float>() : nullptr};
  if (kv_format(k_cache.scalar_type()) != KvFormat::kFloat) {
    const cpu::QuantCacheIn quant{kv_format(k_cache.scalar_type()) == KvFormat::kInt8, k_cache.data_ptr(),
                                  v_cache.data_ptr(), k_scales->data_ptr<float>(), v_scales->data_ptr<float>()};
    LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_paged_attention_quant", [&] {
      cpu::paged_attention_quant<scalar_t>(p, token_head_view<scalar_t>(out), token_head_view_const<scalar_t>(query),
                                           quant);
    });
    return;
  }
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_paged_attention", [&] {
    cpu::paged_attention<scalar_t>(p, token_head_view<scalar_t>(out), token_head_view_const<scalar_t>(query),
                                   k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>());
  });
}

}  // namespace lmx
