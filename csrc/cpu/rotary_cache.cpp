// CPU rotary embedding (with optional fused cache write) and KV-cache scatter.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../kv_quant_math.h"
#include "kernels.h"

namespace lmx::cpu {
namespace {

// Rotate one head in place. cos / sin hold rotary_dim / 2 values.
template <typename scalar_t>
inline void rotate_head(scalar_t* x, const float* cos, const float* sin, int64_t rotary_dim, bool is_neox) {
  const int64_t half = rotary_dim / 2;
  if (is_neox) {  // pairs (i, i + half)
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = static_cast<float>(x[i]);
      const float x2 = static_cast<float>(x[i + half]);
      x[i] = static_cast<scalar_t>(x1 * cos[i] - x2 * sin[i]);
      x[i + half] = static_cast<scalar_t>(x2 * cos[i] + x1 * sin[i]);
    }
  } else {  // pairs (2i, 2i + 1)
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = static_cast<float>(x[2 * i]);
      const float x2 = static_cast<float>(x[2 * i + 1]);
      x[2 * i] = static_cast<scalar_t>(x1 * cos[i] - x2 * sin[i]);
      x[2 * i + 1] = static_cast<scalar_t>(x2 * cos[i] + x1 * sin[i]);
    }
  }
}

// Index of the sequence that holds token t (cu_seqlens is non-decreasing, cu[0] = 0, cu[B] = T).
inline int64_t seq_of_token(const int32_t* cu_seqlens, int64_t num_seqs, int64_t t) {
  if (cu_seqlens == nullptr) return 0;
  const int32_t* it = std::upper_bound(cu_seqlens, cu_seqlens + num_seqs + 1, static_cast<int32_t>(t));
  return (it - cu_seqlens) - 1;
}

template <typename src_t, typename dst_t>
inline void copy_row(const src_t* src, dst_t* dst, int64_t n) {
  if constexpr (std::is_same_v<src_t, dst_t>) {
    std::memcpy(dst, src, n * sizeof(src_t));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(static_cast<float>(src[i]));
  }
}

// One (token, kv head) row into a quantized cache: int8 with its (scale, zero) at sz[0..2), or fp8 with scale s.
// This file is compiled without FMA (baseline flags), so zero = lo + 128 * scale rounds twice, as the reference.
template <typename src_t>
inline void quantize_row_int8(const src_t* x, int64_t n, int8_t* q, float* sz) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo, nonfinite = 0.0f;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : nonfinite)
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    nonfinite += v - v;  // 0 for finite values, NaN for inf and NaN
  }
  const Int8Row r = int8_row(lo, hi, nonfinite == 0.0f);
  sz[0] = r.scale;
  sz[1] = r.zero;
  if (!r.quantize) {
    std::memset(q, 0, n);
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) q[i] = int8_quantize(static_cast<float>(x[i]), r);
}

template <typename src_t>
inline void quantize_row_fp8(const src_t* x, int64_t n, float s, uint8_t* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = fp8_quantize(static_cast<float>(x[i]), s);
}

// Key and value rows of token t (all kv heads) into slot `slot` of a quantized cache pair.
template <typename src_t>
inline void write_quant_slot(const QuantCacheOut& c, TokenHeadView<const src_t> key, TokenHeadView<const src_t> value,
                             int64_t t, int64_t slot, int64_t head_dim) {
  const int64_t H = key.num_heads;
  for (int64_t h = 0; h < H; ++h) {
    const src_t* k = key.data + t * key.token_stride + h * key.head_stride;
    const src_t* v = value.data + t * value.token_stride + h * value.head_stride;
    const int64_t row = slot * H + h;
    if (c.int8) {
      quantize_row_int8(k, head_dim, static_cast<int8_t*>(c.k) + row * head_dim, c.k_scales + row * 2);
      quantize_row_int8(v, head_dim, static_cast<int8_t*>(c.v) + row * head_dim, c.v_scales + row * 2);
    } else {
      quantize_row_fp8(k, head_dim, c.k_scales[h], static_cast<uint8_t*>(c.k) + row * head_dim);
      quantize_row_fp8(v, head_dim, c.v_scales[h], static_cast<uint8_t*>(c.v) + row * head_dim);
    }
  }
}

}  // namespace

template <typename scalar_t>
void rotary_embedding(const RopeParams& rope, bool is_neox, bool precise, int64_t num_tokens, int64_t head_dim,
                      const int64_t* positions, const int32_t* cu_seqlens, const int64_t* rope_seq_lens,
                      int64_t num_seqs, TokenHeadView<scalar_t> query, TokenHeadView<scalar_t> key,
                      TokenHeadView<const scalar_t> value, scalar_t* k_cache, scalar_t* v_cache,
                      const int64_t* slot_mapping, const QuantCacheOut* quant) {
  const int64_t half = rope.rotary_dim / 2;
  double yarn_low = 0.0, yarn_high = 0.0;
  if (rope.scaling == RopeScaling::kYarn) yarn_correction_range(rope, &yarn_low, &yarn_high);

  // Per-sequence inverse frequencies: they differ only under dynamic NTK, whose base depends on the length.
  const bool per_seq = rope.scaling == RopeScaling::kDynamic;
  const int64_t num_tables = per_seq ? num_seqs : 1;
  std::vector<float> inv_freqs(num_tables * half);
  for (int64_t b = 0; b < num_tables; ++b) {
    double base = rope.base;
    if (per_seq) {
      int64_t seq_len = 0;
      if (rope_seq_lens != nullptr) {
        seq_len = rope_seq_lens[b];
      } else {  // transformers' rule: max(position_ids) + 1 (saturating: a position may be INT64_MAX)
        const int64_t begin = cu_seqlens ? cu_seqlens[b] : 0, end = cu_seqlens ? cu_seqlens[b + 1] : num_tokens;
        for (int64_t t = begin; t < end; ++t) seq_len = std::max(seq_len, positions[t]);
        if (seq_len < std::numeric_limits<int64_t>::max()) ++seq_len;
      }
      base = dynamic_ntk_base(rope, seq_len);
    }
    for (int64_t i = 0; i < half; ++i) inv_freqs[b * half + i] = inv_freq(rope, base, static_cast<int>(i), yarn_low, yarn_high);
  }
  const float attention_factor = static_cast<float>(rope.attention_factor);
  const int64_t slot_stride = key.num_heads * head_dim;  // one cache slot holds [Hkv, D]

  at::parallel_for(0, num_tokens, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> cos(half), sin(half);
    for (int64_t t = begin; t < end; ++t) {
      const float* inv = inv_freqs.data() + (per_seq ? seq_of_token(cu_seqlens, num_seqs, t) : 0) * half;
      for (int64_t i = 0; i < half; ++i) rope_cos_sin(positions[t], inv[i], attention_factor, precise, &cos[i], &sin[i]);
      for (int64_t h = 0; h < query.num_heads; ++h)
        rotate_head(query.data + t * query.token_stride + h * query.head_stride, cos.data(), sin.data(),
                    rope.rotary_dim, is_neox);
      if (key.data == nullptr) continue;
      for (int64_t h = 0; h < key.num_heads; ++h)
        rotate_head(key.data + t * key.token_stride + h * key.head_stride, cos.data(), sin.data(), rope.rotary_dim,
                    is_neox);
      if ((k_cache == nullptr && quant == nullptr) || slot_mapping[t] < 0) continue;
      const int64_t slot = slot_mapping[t];
      if (quant != nullptr) {
        const TokenHeadView<const scalar_t> k{key.data, key.token_stride, key.head_stride, key.num_heads};
        write_quant_slot(*quant, k, value, t, slot, head_dim);
        continue;
      }
      for (int64_t h = 0; h < key.num_heads; ++h) {
        copy_row(key.data + t * key.token_stride + h * key.head_stride,
                 k_cache + slot * slot_stride + h * head_dim, head_dim);
        copy_row(value.data + t * value.token_stride + h * value.head_stride,
                 v_cache + slot * slot_stride + h * head_dim, head_dim);
      }
    }
  });
}

template <typename in_t, typename cache_t>
void reshape_and_cache(int64_t num_tokens, int64_t head_dim, TokenHeadView<const in_t> key,
                       TokenHeadView<const in_t> value, cache_t* k_cache, cache_t* v_cache,
                       const int64_t* slot_mapping) {
  const int64_t slot_stride = key.num_heads * head_dim;
  at::parallel_for(0, num_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slot_mapping[t];
      if (slot < 0) continue;  // padding
      for (int64_t h = 0; h < key.num_heads; ++h) {
        copy_row(key.data + t * key.token_stride + h * key.head_stride, k_cache + slot * slot_stride + h * head_dim,
                 head_dim);
        copy_row(value.data + t * value.token_stride + h * value.head_stride,
                 v_cache + slot * slot_stride + h * head_dim, head_dim);
      }
    }
  });
}

template <typename in_t>
void reshape_and_cache_quant(int64_t num_tokens, int64_t head_dim, TokenHeadView<const in_t> key,
                             TokenHeadView<const in_t> value, const QuantCacheOut& cache,
                             const int64_t* slot_mapping) {
  at::parallel_for(0, num_tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      if (slot_mapping[t] >= 0) write_quant_slot(cache, key, value, t, slot_mapping[t], head_dim);
  });
}

// Only the instantiations the binding dispatches to are compiled.
#define LMX_INSTANTIATE_ROTARY(T)                                                                                  \
  template void rotary_embedding<T>(const RopeParams&, bool, bool, int64_t, int64_t, const int64_t*,             \
                                    const int32_t*, const int64_t*, int64_t, TokenHeadView<T>, TokenHeadView<T>, \
                                    TokenHeadView<const T>, T*, T*, const int64_t*, const QuantCacheOut*);  \
  template void reshape_and_cache_quant<T>(int64_t, int64_t, TokenHeadView<const T>, TokenHeadView<const T>,     \
                                           const QuantCacheOut&, const int64_t*);
LMX_INSTANTIATE_ROTARY(float)
LMX_INSTANTIATE_ROTARY(c10::BFloat16)
LMX_INSTANTIATE_ROTARY(c10::Half)

#define LMX_INSTANTIATE_CACHE(I, C)                                                                           \
  template void reshape_and_cache<I, C>(int64_t, int64_t, TokenHeadView<const I>, TokenHeadView<const I>, C*, \
                                        C*, const int64_t*);
LMX_INSTANTIATE_CACHE(float, float)
LMX_INSTANTIATE_CACHE(float, c10::BFloat16)
LMX_INSTANTIATE_CACHE(float, c10::Half)
LMX_INSTANTIATE_CACHE(c10::BFloat16, c10::BFloat16)
LMX_INSTANTIATE_CACHE(c10::BFloat16, float)
LMX_INSTANTIATE_CACHE(c10::Half, c10::Half)
LMX_INSTANTIATE_CACHE(c10::Half, float)

}  // namespace lmx::cpu
