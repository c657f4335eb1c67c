// The torch side of the CUDA ops after validation: dtype dispatch, kernel views of the tensors, workspaces, and the
// launcher calls (csrc/cuda/launchers.h) on a given stream. Shared by the real glue (csrc/cuda/ops_cuda.cpp: checks,
// device guard, current stream) and the emulated test module (tests/cuda/emu/module.cpp: the same checks and these
// same functions on CPU tensors, kernels run by the host emulator), so the emulated tests cover this code too.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <type_traits>

#include "../checks.h"
#include "launchers.h"

namespace lmx::cuda {

// at:: scalar type -> the CUDA type of the same bits.
template <typename T>
struct CudaTypeOf {
  using type = T;
};
template <>
struct CudaTypeOf<at::Half> {
  using type = __half;
};
template <>
struct CudaTypeOf<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct CudaTypeOf<c10::Float8_e4m3fn> {
  using type = fp8_e4m3;
};
static_assert(sizeof(__half) == sizeof(at::Half) && sizeof(__nv_bfloat16) == sizeof(at::BFloat16));
static_assert(sizeof(fp8_e4m3) == sizeof(c10::Float8_e4m3fn));

// The quantized cache dtypes (issue 12): int8 with per-(slot, head) (scale, zero), float8_e4m3fn with per-head
// scales. The checks (csrc/checks.h) have validated the pairing of cache, scales and activations.
inline bool is_quantized_cache(at::ScalarType t) { return t == at::kChar || t == at::kFloat8_e4m3fn; }

template <typename C>
struct CacheTag {
  using type = C;
};
// f(CacheTag<C>{}) with C the kernels' cache type for a cache of dtype `cache` read or written with activations of
// CUDA type T (the activation type itself when the cache is not quantized: the checks made them equal, or for
// reshape_and_cache one of the float pairs, dispatched by the caller).
template <typename T, typename F>
void dispatch_quantized(at::ScalarType cache, F&& f) {
  if (cache == at::kChar) f(CacheTag<int8_t>{});
  else if (cache == at::kFloat8_e4m3fn) f(CacheTag<fp8_e4m3>{});
  else f(CacheTag<T>{});
}

inline float* scales_ptr(const std::optional<at::Tensor>& s) {
  return s ? static_cast<float*>(s->data_ptr()) : nullptr;
}

template <typename T>
HeadsView<T> heads_view(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), static_cast<int>(t.size(1))};
}
template <typename T>
HeadsView<const T> heads_view_const(const at::Tensor& t) {
  return {static_cast<const T*>(t.data_ptr()), t.stride(0), t.stride(1), static_cast<int>(t.size(1))};
}

// The caches are read two elements at a time (int8 / fp8 caches: four): their data must be aligned to that.
inline void check_pair_aligned(const char* op, const char* name, const at::Tensor& t) {
  const auto addr = reinterpret_cast<uintptr_t>(t.data_ptr());
  const bool quad = t.element_size() == 1;
  const int64_t bytes = (quad ? 4 : 2) * t.element_size();
  LMX_CHECK(addr % bytes == 0, name, ": expected data aligned to ", bytes, " bytes (", quad ? "four" : "two",
            " elements), got address ", t.data_ptr());
}

// k_cache == nullptr: rotary_embedding; otherwise rotary_embedding_and_cache (k_scales / v_scales: those of an
// int8 / fp8 cache, None for the others).
inline void run_rotary_embedding(const RopeInputs& in, at::Tensor& query, const std::optional<at::Tensor>& key,
                                 const at::Tensor* value, at::Tensor* k_cache, at::Tensor* v_cache,
                                 const at::Tensor* slot_mapping, const at::Tensor& positions, bool is_neox,
                                 const std::optional<at::Tensor>& cu_seqlens,
                                 const std::optional<at::Tensor>& rope_seq_lens, bool precise, cudaStream_t stream,
                                 const std::optional<at::Tensor>& k_scales = std::nullopt,
                                 const std::optional<at::Tensor>& v_scales = std::nullopt) {
  const int64_t T = query.size(0);
  if (T == 0) return;
  at::Tensor workspace =
      at::empty({rotary_workspace_floats(in.rope, static_cast<int>(in.num_seqs))}, query.options().dtype(at::kFloat));
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_rotary_embedding_cuda", [&] {
    using T_ = typename CudaTypeOf<scalar_t>::type;
    const HeadsView<T_> k = key ? heads_view<T_>(*key) : HeadsView<T_>{nullptr, 0, 0, 0};
    const HeadsView<const T_> v = value ? heads_view_const<T_>(*value) : HeadsView<const T_>{nullptr, 0, 0, 0};
    dispatch_quantized<T_>(k_cache ? k_cache->scalar_type() : query.scalar_type(), [&](auto tag) {
      using C = typename decltype(tag)::type;
      launch_rotary_embedding<T_, C>(
          in.rope, is_neox, precise, T, static_cast<int>(query.size(2)), positions.data_ptr<int64_t>(),
          cu_seqlens ? cu_seqlens->data_ptr<int32_t>() : nullptr,
          rope_seq_lens ? rope_seq_lens->data_ptr<int64_t>() : nullptr, static_cast<int>(in.num_seqs),
          workspace.data_ptr<float>(), heads_view<T_>(query), k, v,
          k_cache ? static_cast<C*>(k_cache->data_ptr()) : nullptr,
          v_cache ? static_cast<C*>(v_cache->data_ptr()) : nullptr, scales_ptr(k_scales), scales_ptr(v_scales),
          slot_mapping ? slot_mapping->data_ptr<int64_t>() : nullptr,
          k_cache ? k_cache->size(0) * k_cache->size(1) : 0, stream);
    });
  });
}

inline void run_reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                                  at::Tensor& v_cache, const at::Tensor& slot_mapping, cudaStream_t stream,
                                  const std::optional<at::Tensor>& k_scales = std::nullopt,
                                  const std::optional<at::Tensor>& v_scales = std::nullopt) {
  if (key.size(0) == 0) return;
  const int64_t num_slots = k_cache.size(0) * k_cache.size(1);
  if (is_quantized_cache(k_cache.scalar_type())) {
    LMX_DISPATCH_FLOAT(key.scalar_type(), "lmx_reshape_and_cache_cuda_quant", [&] {
      using In = typename CudaTypeOf<scalar_t>::type;
      dispatch_quantized<In>(k_cache.scalar_type(), [&](auto tag) {
        using Q = typename decltype(tag)::type;
        if constexpr (!std::is_same_v<Q, In>)
          launch_reshape_and_cache_quant<In, Q>(key.size(0), static_cast<int>(key.size(2)), heads_view_const<In>(key),
                                                heads_view_const<In>(value), static_cast<Q*>(k_cache.data_ptr()),
                                                static_cast<Q*>(v_cache.data_ptr()), scales_ptr(k_scales),
                                                scales_ptr(v_scales), slot_mapping.data_ptr<int64_t>(), num_slots,
                                                stream);
      });
    });
    return;
  }
  LMX_DISPATCH_FLOAT(key.scalar_type(), "lmx_reshape_and_cache_cuda_in", [&] {
    using In = typename CudaTypeOf<scalar_t>::type;
    LMX_DISPATCH_FLOAT(k_cache.scalar_type(), "lmx_reshape_and_cache_cuda_cache", [&] {
      using Cache = typename CudaTypeOf<scalar_t>::type;
      if constexpr (std::is_same_v<In, Cache> || std::is_same_v<In, float> || std::is_same_v<Cache, float>) {
        launch_reshape_and_cache<In, Cache>(key.size(0), static_cast<int>(key.size(2)), heads_view_const<In>(key),
                                            heads_view_const<In>(value), static_cast<Cache*>(k_cache.data_ptr()),
                                            static_cast<Cache*>(v_cache.data_ptr()), slot_mapping.data_ptr<int64_t>(),
                                            num_slots, stream);
      }
    });
  });
}

// kAuto: the glue's choice (use_decode_kernel, then use_prefill_wmma); kPrefill: the prefill kernel the glue would
// take (tensor cores when use_prefill_wmma); kPrefillSimt / kPrefillWmma force one (tests).
enum class AttentionKernel { kAuto, kDecode, kPrefill, kPrefillSimt, kPrefillWmma };

// partition_size: decode split size in keys (0: the default); tests make it small to cross many splits.
// Returns the kernel that ran (kDecode, kPrefillSimt or kPrefillWmma; kAuto when there was nothing to do).
// k_scales / v_scales: those of an int8 / fp8 cache (None otherwise). Quantized caches take the same kernels: the
// decode and CUDA-core prefill kernels dequantize in registers / fp32 tiles, the tensor-core one into fp16 / bf16
// tiles.
inline AttentionKernel run_paged_attention(const AttentionShape& s, at::Tensor& out, const at::Tensor& query,
                                           const at::Tensor& k_cache, const at::Tensor& v_cache,
                                           const at::Tensor& block_tables, const at::Tensor& seq_lens,
                                           const at::Tensor& cu_seqlens_q, const std::optional<at::Tensor>& alibi_slopes,
                                           AttentionKernel kernel, int partition_size, cudaStream_t stream,
                                           const std::optional<at::Tensor>& k_scales = std::nullopt,
                                           const std::optional<at::Tensor>& v_scales = std::nullopt) {
  const char* op = "paged_attention";
  if (s.num_tokens == 0 || s.num_seqs == 0) return AttentionKernel::kAuto;
  check_pair_aligned(op, "k_cache", k_cache);
  check_pair_aligned(op, "v_cache", v_cache);
  PagedAttentionArgs a;
  a.num_tokens = s.num_tokens;
  a.num_seqs = static_cast<int>(s.num_seqs);
  a.num_q_heads = static_cast<int>(s.num_q_heads);
  a.num_kv_heads = static_cast<int>(s.num_kv_heads);
  a.head_dim = static_cast<int>(s.head_dim);
  a.block_size = static_cast<int>(s.block_size);
  a.max_blocks_per_seq = static_cast<int>(s.max_blocks_per_seq);
  a.num_blocks = s.num_blocks;
  a.scale = s.scale;
  a.sliding_window = s.sliding_window > 0 ? static_cast<int>(std::min<int64_t>(s.sliding_window, INT32_MAX)) : -1;
  a.block_tables = block_tables.data_ptr<int32_t>();
  a.seq_lens = seq_lens.data_ptr<int32_t>();
  a.cu_seqlens_q = cu_seqlens_q.data_ptr<int32_t>();
  a.alibi_slopes = alibi_slopes ? alibi_slopes->data_ptr<float>() : nullptr;
  const bool is_16bit = query.scalar_type() == at::kHalf || query.scalar_type() == at::kBFloat16;
  AttentionKernel which = kernel;
  if (which == AttentionKernel::kAuto) which = use_decode_kernel(a) ? AttentionKernel::kDecode : AttentionKernel::kPrefill;
  if (which == AttentionKernel::kPrefill)
    which = use_prefill_wmma(a, is_16bit) ? AttentionKernel::kPrefillWmma : AttentionKernel::kPrefillSimt;
  LMX_CHECK(which != AttentionKernel::kPrefillWmma || use_prefill_wmma(a, is_16bit),
            "kernel: the tensor-core prefill kernel takes float16 / bfloat16 with head_dim % 16 == 0, got ",
            query.scalar_type(), " with head_dim ", a.head_dim);
  LMX_DISPATCH_FLOAT(query.scalar_type(), "lmx_paged_attention_cuda", [&] {
    using T_ = typename CudaTypeOf<scalar_t>::type;
    dispatch_quantized<T_>(k_cache.scalar_type(), [&](auto tag) {
      using C = typename decltype(tag)::type;
      const KvCache<C> kv{static_cast<const C*>(k_cache.data_ptr()), static_cast<const C*>(v_cache.data_ptr()),
                          scales_ptr(k_scales), scales_ptr(v_scales)};
      if (which == AttentionKernel::kDecode) {
        const size_t bytes = decode_workspace_bytes(a, partition_size);
        at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, query.options().dtype(at::kByte));
        launch_paged_attention_decode<T_, C>(a, heads_view<T_>(out), heads_view_const<T_>(query), kv,
                                             bytes ? workspace.data_ptr() : nullptr, partition_size, stream);
      } else if (which == AttentionKernel::kPrefillWmma) {
        if constexpr (!std::is_same_v<T_, float>)
          launch_paged_attention_prefill_wmma<T_, C>(a, heads_view<T_>(out), heads_view_const<T_>(query), kv, stream);
      } else {
        launch_paged_attention_prefill<T_, C>(a, heads_view<T_>(out), heads_view_const<T_>(query), kv, stream);
      }
    });
  });
  return which;
}

}  // namespace lmx::cuda
