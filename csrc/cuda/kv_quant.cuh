// Quantized KV caches on CUDA (issue 12): the arithmetic of the team contract, shared by the cache writes
// (cache.cuh, rotary.cuh) and the attention kernels (attention_*.cuh).
//
//   int8   per (token, kv head) row, asymmetric: side tensor [num_blocks, block_size, Hkv, 2] of fp32 (scale, zero)
//          lo = min(x), hi = max(x), scale = (hi - lo) / 255
//          hi == lo: scale = 0, zero = lo, q = 0
//          otherwise q = clamp(nearbyint((x - lo) / scale), 0, 255) - 128, zero = lo + 128 scale
//          a non-finite value in the row (or a non-finite scale): scale = zero = NaN, q = 0
//          x^ = q * scale + zero
//   fp8    float8_e4m3fn, side tensor [Hkv] of fp32 per-head scales (positive, finite; read only)
//          stored = e4m3fn_rne(clamp(x / s, -448, 448)) (NaN stays NaN), x^ = float(stored) * s
// The cache writes use IEEE fp32 operations that nvcc cannot contract or approximate (add_rn ... div_rn), so they
// give the bytes of lmx.reference and of the CPU kernels (csrc/kv_quant_math.h, the same arithmetic; that header
// includes torch's c10 and so stays out of the kernels, which are built without torch headers). The fp8 decode
// relies on fp32 subnormals: nothing in the build passes -ftz or --use_fast_math.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"
#include "launchers.h"

namespace lmx::cuda {

__host__ __device__ __forceinline__ uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
__host__ __device__ __forceinline__ float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// IEEE fp32 operations that nvcc may neither contract into an FMA nor replace by approximations, whatever the flags
// (the cache writes must give the reference's bytes); plain operators on the host (built with -ffp-contract=off).
__device__ __forceinline__ float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
__device__ __forceinline__ float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
__device__ __forceinline__ float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__device__ __forceinline__ float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

__device__ __forceinline__ bool is_finite(float x) { return fabsf(x) < INFINITY; }  // false for NaN and +-inf

// ---- float8_e4m3fn -------------------------------------------------------------------------------------------
// fp32 -> e4m3fn, round to nearest even; NaN -> 0x7f with the input's sign, finite overflow and inf saturate to
// +-448 (c10's fp8e4m3fn_from_fp32_value of torch 2.13, bit for bit; the callers clamp to +-448 anyway).
__host__ __device__ __forceinline__ uint8_t e4m3_from_float(float f) {
  uint32_t bits = f32_bits(f);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint8_t r;
  if (bits >= (1087u << 20)) {  // 480.0f and up: NaN stays NaN, the rest saturates
    r = bits > 0x7f800000u ? 0x7f : 0x7e;
  } else if (bits < (121u << 23)) {  // below 2^-6 (e4m3's smallest normal): let an fp32 add round to 2^-9 steps
    const uint32_t denorm = 141u << 23;
#if defined(__CUDA_ARCH__)
    r = static_cast<uint8_t>(f32_bits(__fadd_rn(f32_from_bits(bits), f32_from_bits(denorm))) - denorm);
#else
    r = static_cast<uint8_t>(f32_bits(f32_from_bits(bits) + f32_from_bits(denorm)) - denorm);
#endif
  } else {
    const uint32_t odd = (bits >> 20) & 1u;  // round half to even on the kept mantissa
    bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7ffffu + odd;
    r = static_cast<uint8_t>(bits >> 20);
    if (r == 0x7f) r = 0x7e;  // rounded up into the NaN code: saturate
  }
  return static_cast<uint8_t>(r | (sign >> 24));
}

// e4m3fn -> fp32, exact: the 7 magnitude bits placed at the top of an fp32 mantissa / exponent give the value times
// 2^-120 (normals and subnormals alike, the latter as fp32 subnormals), so one exact multiply by 2^120 finishes.
__host__ __device__ __forceinline__ float e4m3_to_float(uint8_t b) {
  const uint32_t mag = b & 0x7fu;
  float v = f32_from_bits(mag << 20) * f32_from_bits(0x7b800000u);  // * 2^120
  if (mag == 0x7fu) v = NAN;
  return (b & 0x80u) ? -v : v;
}

__device__ __forceinline__ uint8_t fp8_quantize(float x, float s) {
  // x / s, clamped to the finite range; NaN stays NaN (fminf / fmaxf would drop it).
  const float y = div_rn(x, s);
  return e4m3_from_float(y != y ? y : fminf(fmaxf(y, -448.f), 448.f));
}

// ---- the cache element types -----------------------------------------------------------------------------------
template <typename C>
struct CacheTraits {  // float, __half, __nv_bfloat16: the activation types, stored as they are
  static constexpr bool kQuantized = false;
};
template <>
struct CacheTraits<int8_t> {
  static constexpr bool kQuantized = true;
};
template <>
struct CacheTraits<fp8_e4m3> {
  static constexpr bool kQuantized = true;
};
template <typename C>
inline constexpr bool kQuantizedCache = CacheTraits<C>::kQuantized;

// Dequantization of one cache row (slot, kv head): x^ = raw * scale + zero (int8), raw * scale (fp8), raw (others).
struct RowScale {
  float scale, zero;
};

// The row's scale: k_scales / v_scales as the contract lays them out. Unused for the unquantized caches.
template <typename C>
__device__ __forceinline__ RowScale row_scale(const float* scales, int64_t slot, int num_kv_heads, int kv_head) {
  if constexpr (std::is_same_v<C, int8_t>) {
    const float* p = scales + 2 * (slot * num_kv_heads + kv_head);
    return {p[0], p[1]};
  } else if constexpr (std::is_same_v<C, fp8_e4m3>) {
    (void)slot;
    (void)num_kv_heads;
    return {scales[kv_head], 0.f};
  } else {
    (void)scales;
    (void)slot;
    (void)num_kv_heads;
    (void)kv_head;
    return {1.f, 0.f};
  }
}

// Tile staging of the prefill kernels: the (scale, zero) of a key's K and V rows, four floats at dst, written by the
// thread that looks up the key's slot (nothing for the unquantized caches; zeros for a hidden key).
template <typename C>
__device__ __forceinline__ void stage_row_scales(float* dst, const KvCache<C>& kv, int64_t slot, int num_kv_heads,
                                                 int kv_head) {
  if constexpr (kQuantizedCache<C>) {
    RowScale ks{0.f, 0.f}, vs{0.f, 0.f};
    if (slot >= 0) {
      ks = row_scale<C>(kv.k_scales, slot, num_kv_heads, kv_head);
      vs = row_scale<C>(kv.v_scales, slot, num_kv_heads, kv_head);
    }
    dst[0] = ks.scale;
    dst[1] = ks.zero;
    dst[2] = vs.scale;
    dst[3] = vs.zero;
  } else {
    (void)dst;
    (void)kv;
    (void)slot;
    (void)num_kv_heads;
    (void)kv_head;
  }
}

// One element / two adjacent elements (i even, p aligned to two elements) of a cache row, in fp32.
template <typename C>
__device__ __forceinline__ float load_dq(const C* p, RowScale rs) {
  if constexpr (std::is_same_v<C, int8_t>) {
    return static_cast<float>(*p) * rs.scale + rs.zero;
  } else if constexpr (std::is_same_v<C, fp8_e4m3>) {
    return e4m3_to_float(p->bits) * rs.scale;
  } else {
    (void)rs;
    return to_float(*p);
  }
}
template <typename C>
__device__ __forceinline__ float2 load_pair_dq(const C* p, RowScale rs) {
  if constexpr (std::is_same_v<C, int8_t>) {
    const char2 q = *reinterpret_cast<const char2*>(p);
    return make_float2(static_cast<float>(q.x) * rs.scale + rs.zero, static_cast<float>(q.y) * rs.scale + rs.zero);
  } else if constexpr (std::is_same_v<C, fp8_e4m3>) {
    const uchar2 q = *reinterpret_cast<const uchar2*>(p);
    return make_float2(e4m3_to_float(q.x) * rs.scale, e4m3_to_float(q.y) * rs.scale);
  } else {
    (void)rs;
    return load_pair(p);
  }
}

// Four adjacent elements (i a multiple of 4, p aligned to 4 bytes) of an int8 / fp8 cache row, in fp32: one 4-byte
// load, as wide as two elements of a 16-bit cache.
template <typename C>
__device__ __forceinline__ float4 load_quad_dq(const C* p, RowScale rs) {
  static_assert(kQuantizedCache<C>, "int8 / fp8 caches only");
  if constexpr (std::is_same_v<C, int8_t>) {
    const char4 q = *reinterpret_cast<const char4*>(p);
    return make_float4(static_cast<float>(q.x) * rs.scale + rs.zero, static_cast<float>(q.y) * rs.scale + rs.zero,
                       static_cast<float>(q.z) * rs.scale + rs.zero, static_cast<float>(q.w) * rs.scale + rs.zero);
  } else {
    const uchar4 q = *reinterpret_cast<const uchar4*>(p);
    return make_float4(e4m3_to_float(q.x) * rs.scale, e4m3_to_float(q.y) * rs.scale, e4m3_to_float(q.z) * rs.scale,
                       e4m3_to_float(q.w) * rs.scale);
  }
}

// ---- quantized cache writes --------------------------------------------------------------------------------------
constexpr int kQuantMaxPerLane = 8;  // head_dim <= 256 = 32 lanes x 8

// The whole warp quantizes one row x[0..D) (src: activation dtype, last dim contiguous) into dst[0..D) of an int8 /
// fp8 cache row, writing (scale, zero) to scale_out[0..2) for int8. All 32 lanes call it with the same arguments.
template <typename In, typename Q>
__device__ __forceinline__ void quantize_row_warp(const In* __restrict__ src, int D, Q* __restrict__ dst,
                                                  float* __restrict__ scale_out, float fp8_scale, int lane) {
  float x[kQuantMaxPerLane];
#pragma unroll
  for (int i = 0; i < kQuantMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    x[i] = d < D ? to_float(src[d]) : 0.f;
  }
  if constexpr (std::is_same_v<Q, int8_t>) {
    float lo = INFINITY, hi = -INFINITY;
    bool bad = false;
#pragma unroll
    for (int i = 0; i < kQuantMaxPerLane; ++i)
      if (lane + 32 * i < D) {
        bad = bad || !is_finite(x[i]);
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
      }
    for (int m = 16; m > 0; m /= 2) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, m));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, m));
    }
    bad = __any_sync(0xffffffffu, bad) != 0;
    float scale = div_rn(sub_rn(hi, lo), 255.0f);
    float zero;
    const bool flat = hi == lo;
    if (bad || !is_finite(scale)) {
      scale = zero = NAN;
    } else if (flat) {
      scale = 0.f;
      zero = lo;
    } else {
      zero = add_rn(lo, mul_rn(128.0f, scale));
    }
    const bool store_q = !(bad || !is_finite(scale) || flat);
#pragma unroll
    for (int i = 0; i < kQuantMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) {
        int q = 0;
        if (store_q) {
          const int r = static_cast<int>(nearbyintf(div_rn(sub_rn(x[i], lo), scale)));
          q = imin(imax(r, 0), 255) - 128;
        }
        dst[d] = static_cast<int8_t>(q);
      }
    }
    if (lane == 0) {
      scale_out[0] = scale;
      scale_out[1] = zero;
    }
  } else {
    static_assert(std::is_same_v<Q, fp8_e4m3>, "int8 or fp8 caches only");
    (void)scale_out;
#pragma unroll
    for (int i = 0; i < kQuantMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) dst[d].bits = fp8_quantize(x[i], fp8_scale);
    }
  }
}

// The whole block (nthreads, a multiple of 32) quantizes token t's key and value rows (Hkv heads each) into slot
// `slot` of the caches. Warps take rows in turn: row r < Hkv is key head r, the others value head r - Hkv.
template <typename In, typename Q>
__device__ __forceinline__ void quantize_token(int64_t t, int64_t slot, int head_dim, HeadsView<const In> key,
                                               HeadsView<const In> value, Q* __restrict__ k_cache,
                                               Q* __restrict__ v_cache, float* __restrict__ k_scales,
                                               float* __restrict__ v_scales, int nthreads) {
  const int Hkv = key.num_heads, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < 2 * Hkv; r += nthreads / 32) {
    const bool is_key = r < Hkv;
    const int h = is_key ? r : r - Hkv;
    const HeadsView<const In>& src = is_key ? key : value;
    Q* dst = (is_key ? k_cache : v_cache) + (slot * Hkv + h) * head_dim;
    float* scales = is_key ? k_scales : v_scales;
    float* scale_out = std::is_same_v<Q, int8_t> ? scales + 2 * (slot * Hkv + h) : nullptr;
    const float fp8_scale = std::is_same_v<Q, fp8_e4m3> ? scales[h] : 1.f;
    quantize_row_warp<In, Q>(src.data + t * src.token_stride + h * src.head_stride, head_dim, dst, scale_out,
                             fp8_scale, lane);
  }
}

}  // namespace lmx::cuda
