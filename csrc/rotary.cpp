// CPU glue of rotary_embedding and rotary_embedding_and_cache: checks, dtype dispatch, csrc/cpu kernel.
#include "checks.h"
#include "cpu/kernels.h"
#include "ops.h"
#include "tensor_views.h"

namespace lmx {

void rotary_embedding_cpu(at::Tensor& query, const std::optional<at::Tensor>& key, const at::Tensor& positions,
                          int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                          const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& rope_seq_lens,
                          bool precise) {
  const char* op = "rotary_embedding";
  const RopeInputs in =
      check_rotary_embedding(op, query, key, positions, rotary_dim, rope_params, cu_seqlens, rope_seq_lens);
  if (query.size(0) == 0) return;
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_rotary_embedding", [&] {
    const cpu::TokenHeadView<scalar_t> k =
        key ? token_head_view<scalar_t>(*key) : cpu::TokenHeadView<scalar_t>{nullptr, 0, 0, 0};
    cpu::rotary_embedding<scalar_t>(in.rope, is_neox, precise, query.size(0), query.size(2),
                                    positions.data_ptr<int64_t>(),
                                    cu_seqlens ? cu_seqlens->data_ptr<int32_t>() : nullptr,
                                    rope_seq_lens ? rope_seq_lens->data_ptr<int64_t>() : nullptr, in.num_seqs,
                                    token_head_view<scalar_t>(query), k, {nullptr, 0, 0, 0}, nullptr, nullptr,
                                    nullptr);
  });
}

void rotary_embedding_and_cache_cpu(at::Tensor& query, at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                                    at::Tensor& v_cache, const at::Tensor& slot_mapping, const at::Tensor& positions,
                                    int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                                    const std::optional<at::Tensor>& cu_seqlens,
                                    const std::optional<at::Tensor>& rope_seq_lens, bool precise,
                                    const std::optional<at::Tensor>& k_scales,
                                    const std::optional<at::Tensor>& v_scales) {
  const char* op = "rotary_embedding_and_cache";
  const RopeInputs in = check_rotary_embedding_and_cache(op, query, key, value, k_cache, v_cache, slot_mapping,
                                                         positions, rotary_dim, rope_params, cu_seqlens,
                                                         rope_seq_lens, k_scales, v_scales);
  if (query.size(0) == 0) return;
  if (kv_format(k_cache.scalar_type()) != KvFormat::kFloat) {  // rotate, then quantize each key on its way in
    const cpu::QuantCacheOut quant = quant_cache_out(k_cache, v_cache, k_scales, v_scales);
    LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_rotary_embedding_and_cache_quant", [&] {
      cpu::rotary_embedding<scalar_t>(in.rope, is_neox, precise, query.size(0), query.size(2),
                                      positions.data_ptr<int64_t>(),
                                      cu_seqlens ? cu_seqlens->data_ptr<int32_t>() : nullptr,
                                      rope_seq_lens ? rope_seq_lens->data_ptr<int64_t>() : nullptr, in.num_seqs,
                                      token_head_view<scalar_t>(query), token_head_view<scalar_t>(key),
                                      token_head_view_const<scalar_t>(value), nullptr, nullptr,
                                      slot_mapping.data_ptr<int64_t>(), &quant);
    });
    return;
  }
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_rotary_embedding_and_cache", [&] {
    cpu::rotary_embedding<scalar_t>(in.rope, is_neox, precise, query.size(0), query.size(2),
                                    positions.data_ptr<int64_t>(),
                                    cu_seqlens ? cu_seqlens->data_ptr<int32_t>() : nullptr,
                                    rope_seq_lens ? rope_seq_lens->data_ptr<int64_t>() : nullptr, in.num_seqs,
                                    token_head_view<scalar_t>(query), token_head_view<scalar_t>(key),
                                    token_head_view_const<scalar_t>(value), k_cache.data_ptr<scalar_t>(),
                                    v_cache.data_ptr<scalar_t>(), slot_mapping.data_ptr<int64_t>());
  });
}

}  // namespace lmx
