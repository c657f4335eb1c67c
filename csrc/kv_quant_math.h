// KV-cache quantization math shared by the CPU and CUDA kernels (and mirrored by lmx/reference.py), so the cache
// writes of both produce the same bytes. The layout (README "Quantized KV cache"):
//
// int8, per (token, kv head) row x[0..D) in fp32 (keys after rotary), asymmetric:
//   lo = min(x), hi = max(x), scale = (hi - lo) / 255
//   hi == lo:                       scale = 0, zero = lo, q = 0
//   else:                           q[d] = clamp(round_half_even((x[d] - lo) / scale), 0, 255) - 128,
//                                   zero = lo + 128 * scale
//   a non-finite value or scale:    scale = zero = NaN, q = 0 (attention then gives NaN, as an fp32 cache would)
//   dequantized: x̂[d] = q[d] * scale + zero.   IEEE fp32 throughout: a division, not a reciprocal multiply, and
//   no fused multiply-add in `zero` (the CUDA side uses __fmul_rn / __fadd_rn / __fdiv_rn).
// float8_e4m3fn, per-head scale s[h] > 0:
//   stored = e4m3fn_round_nearest_even(clamp(x / s[h], -448, 448)) (NaN stays NaN); x̂ = float(stored) * s[h].
#pragma once

#include <c10/util/Float8_e4m3fn.h>

#include <cmath>
#include <cstdint>

#include "rope_math.h"  // LMX_HOST_DEVICE

namespace lmx {

inline constexpr float kFp8E4m3Max = 448.0f;

struct Int8Row {
  float scale;
  float zero;
  float lo;
  bool quantize;  // false: every q is 0 (a constant row, or a non-finite one)
};

// The (scale, zero) of a row from its min, max and whether all its values are finite.
LMX_HOST_DEVICE Int8Row int8_row(float lo, float hi, bool finite) {
#if defined(__CUDA_ARCH__)
  const float scale = __fdiv_rn(__fsub_rn(hi, lo), 255.0f);
#else
  const float scale = (hi - lo) / 255.0f;
#endif
  if (!finite || !std::isfinite(scale)) {
    const float nan = NAN;
    return {nan, nan, lo, false};
  }
  if (hi == lo) return {0.0f, lo, lo, false};
#if defined(__CUDA_ARCH__)
  const float zero = __fadd_rn(lo, __fmul_rn(128.0f, scale));
#else
  const float zero = lo + 128.0f * scale;  // compiled without FMA contraction (csrc/cpu/rotary_cache.cpp)
#endif
  return {scale, zero, lo, true};
}

// q of one value of a row (r.quantize true).
LMX_HOST_DEVICE int8_t int8_quantize(float x, const Int8Row& r) {
#if defined(__CUDA_ARCH__)
  int q = __float2int_rn(__fdiv_rn(__fsub_rn(x, r.lo), r.scale));
#else
  // Round half to even without a libm call (so loops vectorise): 0 <= v <= ~255 here, and adding then
  // subtracting 1.5 * 2^23 rounds exactly that way in the default rounding mode (IEEE, no -ffast-math).
  const float v = (x - r.lo) / r.scale;
  const float rounded = (v + 12582912.0f) - 12582912.0f;
  int q = static_cast<int>(rounded);
#endif
  q = q < 0 ? 0 : (q > 255 ? 255 : q);
  return static_cast<int8_t>(q - 128);
}

// The stored byte of x under the per-head scale s.
LMX_HOST_DEVICE uint8_t fp8_quantize(float x, float s) {
#if defined(__CUDA_ARCH__)
  float v = __fdiv_rn(x, s);
#else
  float v = x / s;
#endif
  if (v > kFp8E4m3Max) v = kFp8E4m3Max;  // NaN fails both comparisons and stays NaN
  else if (v < -kFp8E4m3Max) v = -kFp8E4m3Max;
  return c10::detail::fp8e4m3fn_from_fp32_value(v);
}

LMX_HOST_DEVICE float fp8_to_float(uint8_t byte) { return c10::detail::fp8e4m3fn_to_fp32_value(byte); }

}  // namespace lmx
