// CPU glue of reshape_and_cache: checks, dispatch over (input dtype, cache dtype), csrc/cpu kernel.
#include <type_traits>

#include "checks.h"
#include "cpu/kernels.h"
#include "ops.h"
#include "tensor_views.h"

namespace lmx {

// The quantized pair of a checked int8 / float8_e4m3fn cache (null scales for float caches, never passed on).
cpu::QuantCacheOut quant_cache_out(at::Tensor& k_cache, at::Tensor& v_cache, const std::optional<at::Tensor>& k_scales,
                                   const std::optional<at::Tensor>& v_scales) {
  return {kv_format(k_cache.scalar_type()) == KvFormat::kInt8, k_cache.data_ptr(), v_cache.data_ptr(),
          k_scales ? k_scales->data_ptr<float>() : nullptr, v_scales ? v_scales->data_ptr<float>() : nullptr};
}

void reshape_and_cache_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                           const at::Tensor& slot_mapping, const std::optional<at::Tensor>& k_scales,
                           const std::optional<at::Tensor>& v_scales) {
  const char* op = "reshape_and_cache";
  check_reshape_and_cache(op, key, value, k_cache, v_cache, slot_mapping, k_scales, v_scales);
  if (key.size(0) == 0) return;
  if (kv_format(k_cache.scalar_type()) != KvFormat::kFloat) {
    const cpu::QuantCacheOut quant = quant_cache_out(k_cache, v_cache, k_scales, v_scales);
    LMX_DISPATCH_FLOAT(key.scalar_type(), "lmx_reshape_and_cache_quant", [&] {
      cpu::reshape_and_cache_quant<scalar_t>(key.size(0), key.size(2), token_head_view_const<scalar_t>(key),
                                             token_head_view_const<scalar_t>(value), quant,
                                             slot_mapping.data_ptr<int64_t>());
    });
    return;
  }
  LMX_DISPATCH_FLOAT(key.scalar_type(), "lmx_reshape_and_cache_in", [&] {
    using in_scalar = scalar_t;
    LMX_DISPATCH_FLOAT(k_cache.scalar_type(), "lmx_reshape_and_cache_out", [&] {
      // Only the pairs the check admits are instantiated: equal dtypes, or one of the two float32.
      if constexpr (std::is_same_v<in_scalar, scalar_t> || std::is_same_v<in_scalar, float> ||
                    std::is_same_v<scalar_t, float>) {
        cpu::reshape_and_cache<in_scalar, scalar_t>(key.size(0), key.size(2), token_head_view_const<in_scalar>(key),
                                                    token_head_view_const<in_scalar>(value),
                                                    k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
                                                    slot_mapping.data_ptr<int64_t>());
      }
    });
  });
}

}  // namespace lmx
