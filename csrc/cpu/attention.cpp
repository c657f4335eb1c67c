// CPU paged attention: decode, prefill and chunked prefill in one kernel.
//
// This file is compiled once per instruction set (CMake defines LMX_ISA = avx2 or baseline and the matching
// compiler flags); csrc/cpu/attention_dispatch.cpp picks one at run time. Plain C++ loops, written so the compiler
// vectorises them (omp simd, no branches in the inner loops).
//
// Work decomposition. A work item is (sequence b, kv head h, a tile of that sequence's queries, a range of its
// keys). The tile's rows are (query token i, query head g of kv head h) pairs, so GQA reads every K/V byte once
// for the whole group. Keys are visited in tiles of kKeyTile gathered from the paged cache into contiguous fp32
// buffers; scores, an online softmax (running max m, running sum l, unnormalised output acc) and the P·V
// product are fp32. When there are too few items to occupy every thread (decode of a few long sequences), the
// key range is split (flash-decoding) and the partial (m, l, acc) states are merged in fp32 afterwards. Memory is
// O(rows × kKeyTile) per thread: no [T, T] buffer ever exists.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/Float8_e4m3fn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "blas.h"
#include "kernels.h"
#include "simd_loads.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LMX_DIRECT_KERNELS 1
#endif

#ifndef LMX_ISA
#error "LMX_ISA must name the instruction set this file is compiled for"
#endif

namespace lmx::cpu::LMX_ISA {
namespace {

#if defined(LMX_DIRECT_KERNELS)
constexpr bool kDirect = true;
#else
constexpr bool kDirect = false;
#endif

constexpr int64_t kKeyTile = 256;      // keys per tile
constexpr int64_t kDirectKeyTile = 64;  // keys per tile of the direct (decode) kernels
constexpr int64_t kDecodeKeyTile = 128;  // keys per tile of the AVX-512 decode kernels (a multiple of 16)
constexpr int64_t kDecodePrefetchKeys = 24;  // AVX-512 decode kernels: software prefetch distance, in keys
static_assert(kDecodeKeyTile + kDecodePrefetchKeys <= kKeyTile + 128, "Scratch::k_rows holds a tile and the keys ahead");
constexpr int64_t kRowsPerTile = 256;  // target query rows (tokens × group) per work item
constexpr int64_t kMinKeysPerSplit = 512;
constexpr int64_t kSplitItems = 32;
constexpr int64_t kAllHeadRows = 64;    // direct kernels: a sequence with n * Hq <= this is one item over all heads
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// AVX-512 decode kernels: a run of NG <= 4 consecutive query rows (from `row`) that read one kv head (offset o in a cache row [Hkv, D]).
struct DecodeRun {
  int64_t row, o, ng;
  bool prefetch;  // this run prefetches its kv head's slice of the rows ahead (one run per kv head)
};

// exp(x) for x <= 0 (the online softmax only needs that range), ~2 ulp, branch-free so loops vectorise.
// Values below -87 (including -inf, the masked scores) give exactly 0.
inline float exp_nonpositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float t = xc * 1.44269504088896341f;           // x / ln 2
  const float shifter = 12582912.0f;                    // 1.5 * 2^23: round to nearest by addition
  const float rounded = t + shifter;
  int32_t n;
  std::memcpy(&n, &rounded, sizeof(n));
  n -= 0x4B400000;                                      // the integer part
  const float nf = rounded - shifter;
  const float f = (xc - nf * 0.693145751953125f) - nf * 1.428606765330187045e-06f;  // x - n ln 2, two steps
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float r = p * scale;
  return x < -87.0f ? 0.0f : r;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

template <typename scalar_t>
inline void to_float(const scalar_t* src, float* dst, int64_t n, float mul) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * mul;
}

// ---- Quantized caches (int8 rows with (scale, zero) per slot and kv head; float8_e4m3fn with per-head scales) ----
using Fp8 = c10::Float8_e4m3fn;

template <typename cache_t>
inline constexpr bool kQuantCache = std::is_same_v<cache_t, int8_t> || std::is_same_v<cache_t, Fp8>;

// float8_e4m3fn → fp32 of every byte (exact; NaN for 0x7f / 0xff).
struct Fp8Table {
  float v[256];
  Fp8Table() {
    for (int i = 0; i < 256; ++i) v[i] = c10::detail::fp8e4m3fn_to_fp32_value(static_cast<uint8_t>(i));
  }
};
inline const float* fp8_table() {
  static const Fp8Table table;
  return table.v;
}

// One cache row [D] as fp32 (the tiles' gather): x̂ = q * scale + zero (int8), float(stored) * s[h] (fp8).
inline void dequant_row(const int8_t* src, const float* scale_zero, float* dst, int64_t n) {
  const float sc = scale_zero[0], z = scale_zero[1];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * sc + z;
}
inline void dequant_row(const Fp8* src, float s, float* dst, int64_t n) {
  const float* table = fp8_table();
  const uint8_t* b = reinterpret_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = table[b[i]] * s;
}

#if defined(LMX_DIRECT_KERNELS)
// AVX2 kernels that read K and V rows straight from the cache (no fp32 staging copy). Used for few query rows
// (decode, short chunks), where the work is memory-bound and a staging copy would double the traffic.
using simd::load16;  // fp32 / bf16 / fp16 rows widened to fp32 (simd_loads.h); the cache's int8 / fp8 ones below
using simd::load8;
// Quantized rows: the raw values (q as a float; the fp8 value before its head scale).
inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline __m256 load8(const Fp8* p) {  // exact: normals by exponent rebias, subnormals m * 2^-9, NaN, sign
  const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i mag = _mm256_and_si256(x, _mm256_set1_epi32(0x7F));
  const __m256 normal =
      _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23)));
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(1.0f / 512.0f));
  __m256 v = _mm256_blendv_ps(normal, sub, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag)));
  v = _mm256_blendv_ps(v, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()),
                       _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F))));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x80)), 24);
  return _mm256_or_ps(v, _mm256_castsi256_ps(sign));
}

// The horizontal sums of eight vectors, as one vector.
inline __m256 hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
  const __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

// s[r, j] = q[r] · k[j][off[r]:] for keys given by row pointers (off: the row's kv head); D is a multiple of 8.
template <typename scalar_t>
void scores_direct(const float* q, const scalar_t* const* k_rows, const int64_t* off, int64_t rows, int64_t kt,
                   int64_t D, float* s) {
  const scalar_t* k[kKeyTile];
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + r * D;
    float* sr = s + r * kt;
    for (int64_t j = 0; j < kt; ++j) k[j] = k_rows[j] + off[r];
    int64_t j = 0;
    for (; j + 8 <= kt; j += 8) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(qr + d);
        a0 = _mm256_fmadd_ps(qv, load8(k[j] + d), a0);
        a1 = _mm256_fmadd_ps(qv, load8(k[j + 1] + d), a1);
        a2 = _mm256_fmadd_ps(qv, load8(k[j + 2] + d), a2);
        a3 = _mm256_fmadd_ps(qv, load8(k[j + 3] + d), a3);
        a4 = _mm256_fmadd_ps(qv, load8(k[j + 4] + d), a4);
        a5 = _mm256_fmadd_ps(qv, load8(k[j + 5] + d), a5);
        a6 = _mm256_fmadd_ps(qv, load8(k[j + 6] + d), a6);
        a7 = _mm256_fmadd_ps(qv, load8(k[j + 7] + d), a7);
      }
      _mm256_storeu_ps(sr + j, hsum8(a0, a1, a2, a3, a4, a5, a6, a7));
    }
    for (; j < kt; ++j) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), load8(k[j] + d), a);
      const __m256 z = _mm256_setzero_ps();
      sr[j] = _mm256_cvtss_f32(hsum8(a, z, z, z, z, z, z, z));
    }
  }
}

// acc[r] += Σ_j p[r, j] v[j][off[r]:] for values given by row pointers; 64 channels (8 registers) at a time.
template <typename scalar_t>
void pv_direct(const float* p, const scalar_t* const* v, const int64_t* off, int64_t rows, int64_t kt, int64_t D,
               float* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = p + r * kt;
    for (int64_t c = 0; c < D; c += 64) {
      const int64_t n = std::min<int64_t>(64, D - c) / 8;  // vectors in this chunk (D is a multiple of 8)
      float* ar = acc + r * D + c;
      __m256 a[8];
      for (int64_t i = 0; i < n; ++i) a[i] = _mm256_loadu_ps(ar + 8 * i);
      for (int64_t j = 0; j < kt; ++j) {
        if (pr[j] == 0.0f) continue;  // masked keys
        const __m256 pj = _mm256_set1_ps(pr[j]);
        const scalar_t* vj = v[j] + off[r] + c;
        for (int64_t i = 0; i < n; ++i) a[i] = _mm256_fmadd_ps(pj, load8(vj + 8 * i), a[i]);
      }
      for (int64_t i = 0; i < n; ++i) _mm256_storeu_ps(ar + 8 * i, a[i]);
    }
  }
}

// Quantized direct kernels, GQA-aware: each K / V vector of a kv head is converted once (load8 of int8 / fp8
// costs three to ten instructions) and used by the group of NG <= 4 query rows of that head, instead of once per
// row as the float kernels do. Raw values: the callers apply the scales.

// s[g * ld + j] = q[g] · k_raw[j] (keys given by row pointers, hoff the kv head's offset in a cache row); eight
// keys per step, two at a time into registers, summed horizontally eight at once.
// Software prefetch of two quantized rows of D one-byte values (strided rows: the hardware prefetchers see one or
// two lines per 1 KiB cache row of all kv heads).
inline void prefetch_row(const void* a, const void* b, int64_t D) {
  for (int64_t o = 0; o < D; o += 64) {
    _mm_prefetch(static_cast<const char*>(a) + o, _MM_HINT_T0);
    _mm_prefetch(static_cast<const char*>(b) + o, _MM_HINT_T0);
  }
}

template <typename cache_t, int NG>
void scores_group(const float* q, const cache_t* const* k_rows, int64_t hoff, int64_t kt, int64_t D, float* s,
                  int64_t ld) {
  int64_t j = 0;
  for (; j + 8 <= kt; j += 8) {
    __m256 t[NG][8];
    for (int p = 0; p < 8; p += 2) {
      __m256 a0[NG], a1[NG];
      for (int g = 0; g < NG; ++g) a0[g] = a1[g] = _mm256_setzero_ps();
      const cache_t* k0 = k_rows[j + p] + hoff;
      const cache_t* k1 = k_rows[j + p + 1] + hoff;
      if (j + 8 + p + 1 < kt) prefetch_row(k_rows[j + 8 + p] + hoff, k_rows[j + 9 + p] + hoff, D);
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 x0 = load8(k0 + d), x1 = load8(k1 + d);
        for (int g = 0; g < NG; ++g) {
          const __m256 qv = _mm256_loadu_ps(q + g * D + d);
          a0[g] = _mm256_fmadd_ps(qv, x0, a0[g]);
          a1[g] = _mm256_fmadd_ps(qv, x1, a1[g]);
        }
      }
      for (int g = 0; g < NG; ++g) {
        t[g][p] = a0[g];
        t[g][p + 1] = a1[g];
      }
    }
    for (int g = 0; g < NG; ++g)
      _mm256_storeu_ps(s + g * ld + j, hsum8(t[g][0], t[g][1], t[g][2], t[g][3], t[g][4], t[g][5], t[g][6], t[g][7]));
  }
  for (; j < kt; ++j) {
    __m256 a[NG];
    for (int g = 0; g < NG; ++g) a[g] = _mm256_setzero_ps();
    const cache_t* k0 = k_rows[j] + hoff;
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 x0 = load8(k0 + d);
      for (int g = 0; g < NG; ++g) a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d), x0, a[g]);
    }
    const __m256 z = _mm256_setzero_ps();
    for (int g = 0; g < NG; ++g) s[g * ld + j] = _mm256_cvtss_f32(hsum8(a[g], z, z, z, z, z, z, z));
  }
}

// acc[g * D + d] += Σ_j p[g * ld + j] v_raw[j][d] for NG rows of one kv head; 16 channels at a time (every head
// dim is a multiple of 16).
template <typename cache_t, int NG>
void pv_group(const float* p, int64_t ld, const cache_t* const* v_rows, int64_t hoff, int64_t kt, int64_t D,
              float* acc) {
  for (int64_t c = 0; c < D; c += 16) {
    __m256 a[NG][2];
    for (int g = 0; g < NG; ++g) {
      a[g][0] = _mm256_loadu_ps(acc + g * D + c);
      a[g][1] = _mm256_loadu_ps(acc + g * D + c + 8);
    }
    for (int64_t j = 0; j < kt; ++j) {
      const cache_t* vj = v_rows[j] + hoff + c;
      if (c == 0 && j + 5 < kt) prefetch_row(v_rows[j + 4] + hoff, v_rows[j + 5] + hoff, D);
      const __m256 x0 = load8(vj), x1 = load8(vj + 8);
      for (int g = 0; g < NG; ++g) {
        const __m256 pg = _mm256_broadcast_ss(p + g * ld + j);
        a[g][0] = _mm256_fmadd_ps(pg, x0, a[g][0]);
        a[g][1] = _mm256_fmadd_ps(pg, x1, a[g][1]);
      }
    }
    for (int g = 0; g < NG; ++g) {
      _mm256_storeu_ps(acc + g * D + c, a[g][0]);
      _mm256_storeu_ps(acc + g * D + c + 8, a[g][1]);
    }
  }
}

#endif  // LMX_DIRECT_KERNELS

#if defined(LMX_DIRECT_KERNELS)
// Register-blocked AVX-512 tiles (fp32), for CPUs that have AVX-512F; chosen at run time (cpu_avx512_tiles()).
// Layouts: Qᵀ [D, ldr] (query rows contiguous, ldr a multiple of 16, padded rows zero), K and V staged row-major
// [keys, D], scores and probabilities transposed, Sᵀ [keys, ldr]. The online softmax then runs down the columns
// of Sᵀ, sixteen query rows per vector, without horizontal reductions; Qᵀ·K needs no transpose of K (each key
// value is broadcast) and P·V none of V.
#define LMX_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,f16c")))
// GCC 12's AVX-512 headers seed masked builtins with `_mm512_undefined_ps()`, which -Wmaybe-uninitialized flags
// (-Wuninitialized for the shuffles).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// exp_nonpositive, sixteen lanes: the same range reduction and polynomial.
LMX_AVX512 inline __m512 exp16_nonpositive(__m512 x) {
  const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 shifter = _mm512_set1_ps(12582912.0f);
  const __m512 rounded = _mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), shifter);
  const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(rounded), _mm512_set1_epi32(0x4B400000));
  const __m512 nf = _mm512_sub_ps(rounded, shifter);
  __m512 f = _mm512_fnmadd_ps(nf, _mm512_set1_ps(0.693145751953125f), xc);
  f = _mm512_fnmadd_ps(nf, _mm512_set1_ps(1.428606765330187045e-06f), f);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, f), f, f), _mm512_set1_ps(1.0f));
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), p, scale);
}

// Sᵀ[j0 + i, r0 + 16 v] = Σ_d K[j0 + i, d] Qᵀ[d, r0 + 16 v] for 8 keys and NV vectors of rows.
template <int NV>
LMX_AVX512 inline void qk_block(const float* qt, int64_t ldr, const float* k, int64_t D, int64_t r0, int64_t j0,
                                float* st) {
  __m512 acc[8][NV];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  const float* kj = k + j0 * D;
  for (int64_t d = 0; d < D; ++d) {
    __m512 q[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) q[v] = _mm512_loadu_ps(qt + d * ldr + r0 + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512 kb = _mm512_set1_ps(kj[i * D + d]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(kb, q[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(st + (j0 + i) * ldr + r0 + 16 * v, acc[i][v]);
}

// Sᵀ [kt8, ldr] = K [kt8, D] · Qᵀ [D, ldr]; kt8 a multiple of 8, ldr of 16.
LMX_AVX512 void qk_tiles(const float* qt, int64_t ldr, const float* k, int64_t kt8, int64_t D, float* st) {
  int64_t r0 = 0;
  for (; r0 + 32 <= ldr; r0 += 32)
    for (int64_t j0 = 0; j0 < kt8; j0 += 8) qk_block<2>(qt, ldr, k, D, r0, j0, st);
  if (r0 < ldr)
    for (int64_t j0 = 0; j0 < kt8; j0 += 8) qk_block<1>(qt, ldr, k, D, r0, j0, st);
}

// acc[r0 + i, d0 + 16 u] = alpha[r0 + i] acc[...] + Σ_j Pᵀ[j, r0 + i] V[j, d0 + 16 u] for R rows, NV vectors.
template <int R, int NV>
LMX_AVX512 inline void pv_block(const float* pt, int64_t ldr, const float* v, int64_t D, int64_t kt, int64_t r0,
                                int64_t d0, const float* alpha, float* acc) {
  __m512 a[R][NV];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[r0 + i]);
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) a[i][u] = _mm512_mul_ps(al, _mm512_loadu_ps(acc + (r0 + i) * D + d0 + 16 * u));
  }
  for (int64_t j = 0; j < kt; ++j) {
    __m512 vv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) vv[u] = _mm512_loadu_ps(v + j * D + d0 + 16 * u);
    const float* pj = pt + j * ldr + r0;
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      const __m512 p = _mm512_set1_ps(pj[i]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) a[i][u] = _mm512_fmadd_ps(p, vv[u], a[i][u]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(acc + (r0 + i) * D + d0 + 16 * u, a[i][u]);
}

template <int NV>
LMX_AVX512 void pv_rows(const float* pt, int64_t ldr, const float* v, int64_t D, int64_t kt, int64_t rows,
                        int64_t d0, const float* alpha, float* acc) {
  int64_t r0 = 0;
  for (; r0 + 6 <= rows; r0 += 6) pv_block<6, NV>(pt, ldr, v, D, kt, r0, d0, alpha, acc);
  switch (rows - r0) {
    case 5: pv_block<5, NV>(pt, ldr, v, D, kt, r0, d0, alpha, acc); break;
    case 4: pv_block<4, NV>(pt, ldr, v, D, kt, r0, d0, alpha, acc); break;
    case 3: pv_block<3, NV>(pt, ldr, v, D, kt, r0, d0, alpha, acc); break;
    case 2: pv_block<2, NV>(pt, ldr, v, D, kt, r0, d0, alpha, acc); break;
    case 1: pv_block<1, NV>(pt, ldr, v, D, kt, r0, d0, alpha, acc); break;
    default: break;
  }
}

// acc [rows, D] = alpha ⊙ acc + P · V, with P given as Pᵀ [kt, ldr]; D a multiple of 16.
LMX_AVX512 void pv_tiles(const float* pt, int64_t ldr, const float* v, int64_t D, int64_t kt, int64_t rows,
                         const float* alpha, float* acc) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) pv_rows<4>(pt, ldr, v, D, kt, rows, d0, alpha, acc);
  switch ((D - d0) / 16) {
    case 3: pv_rows<3>(pt, ldr, v, D, kt, rows, d0, alpha, acc); break;
    case 2: pv_rows<2>(pt, ldr, v, D, kt, rows, d0, alpha, acc); break;
    case 1: pv_rows<1>(pt, ldr, v, D, kt, rows, d0, alpha, acc); break;
    default: break;
  }
}

// Online softmax down the columns of Sᵀ [kt, ldr] (keys [0, kt)): updates m, l [ldr], writes Pᵀ in place and the
// factor alpha [ldr] by which each row's accumulator must be scaled. Rows whose keys are all masked so far keep
// m = -inf, l = 0 and get p = 0, alpha = 0 (their accumulator is zero).
LMX_AVX512 void softmax_columns(float* st, int64_t ldr, int64_t kt, float* m, float* l, float* alpha) {
  const __m512 neg_inf = _mm512_set1_ps(kNegInf);
  for (int64_t r0 = 0; r0 < ldr; r0 += 16) {
    const __m512 m_old = _mm512_loadu_ps(m + r0);
    __m512 mx0 = m_old, mx1 = neg_inf;
    int64_t j = 0;
    for (; j + 2 <= kt; j += 2) {
      mx0 = _mm512_max_ps(mx0, _mm512_loadu_ps(st + j * ldr + r0));
      mx1 = _mm512_max_ps(mx1, _mm512_loadu_ps(st + (j + 1) * ldr + r0));
    }
    if (j < kt) mx0 = _mm512_max_ps(mx0, _mm512_loadu_ps(st + j * ldr + r0));
    const __m512 m_new = _mm512_max_ps(mx0, mx1);
    const __mmask16 none = _mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ);
    const __m512 shift = _mm512_mask_blend_ps(none, m_new, _mm512_setzero_ps());
    const __m512 a = exp16_nonpositive(_mm512_sub_ps(m_old, shift));
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    for (j = 0; j + 2 <= kt; j += 2) {
      float* s0 = st + j * ldr + r0;
      float* s1 = s0 + ldr;
      const __m512 p0 = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s0), shift));
      const __m512 p1 = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s1), shift));
      _mm512_storeu_ps(s0, p0);
      _mm512_storeu_ps(s1, p1);
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
    }
    if (j < kt) {
      float* s0 = st + j * ldr + r0;
      const __m512 p0 = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s0), shift));
      _mm512_storeu_ps(s0, p0);
      sum0 = _mm512_add_ps(sum0, p0);
    }
    _mm512_storeu_ps(l + r0, _mm512_fmadd_ps(_mm512_loadu_ps(l + r0), a, _mm512_add_ps(sum0, sum1)));
    _mm512_storeu_ps(m + r0, m_new);
    _mm512_storeu_ps(alpha + r0, a);
  }
}

// The quantized direct kernels (scores_group, pv_group) with sixteen lanes, for CPUs with AVX-512F.
LMX_AVX512 inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
LMX_AVX512 inline __m512 load16(const Fp8* p) {  // as load8(const Fp8*)
  const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512i mag = _mm512_and_si512(x, _mm512_set1_epi32(0x7F));
  __m512 v = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23)));
  const __mmask16 sub = _mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(8));
  v = _mm512_mask_mul_ps(v, sub, _mm512_cvtepi32_ps(mag), _mm512_set1_ps(1.0f / 512.0f));
  v = _mm512_mask_mov_ps(v, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F)),
                         _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), sign));
}
LMX_AVX512 inline __m256 fold256(__m512 a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}

template <typename cache_t, int NG>
LMX_AVX512 void scores_group512(const float* q, const cache_t* const* k_rows, int64_t hoff, int64_t kt, int64_t D,
                                float* s, int64_t ld) {
  int64_t j = 0;
  const int64_t D16 = D;  // the callers pass D % 16 == 0 (every supported head dim)
  for (; j + 8 <= kt; j += 8) {
    __m256 t[NG][8];
    for (int p = 0; p < 8; p += 2) {
      __m512 a0[NG], a1[NG];
      for (int g = 0; g < NG; ++g) a0[g] = a1[g] = _mm512_setzero_ps();
      const cache_t* k0 = k_rows[j + p] + hoff;
      const cache_t* k1 = k_rows[j + p + 1] + hoff;
      if (j + 8 + p + 1 < kt) prefetch_row(k_rows[j + 8 + p] + hoff, k_rows[j + 9 + p] + hoff, D);
      for (int64_t d = 0; d < D16; d += 16) {
        const __m512 x0 = load16(k0 + d), x1 = load16(k1 + d);
        for (int g = 0; g < NG; ++g) {
          const __m512 qv = _mm512_loadu_ps(q + g * D + d);
          a0[g] = _mm512_fmadd_ps(qv, x0, a0[g]);
          a1[g] = _mm512_fmadd_ps(qv, x1, a1[g]);
        }
      }
      for (int g = 0; g < NG; ++g) {
        t[g][p] = fold256(a0[g]);
        t[g][p + 1] = fold256(a1[g]);
      }
    }
    for (int g = 0; g < NG; ++g)
      _mm256_storeu_ps(s + g * ld + j, hsum8(t[g][0], t[g][1], t[g][2], t[g][3], t[g][4], t[g][5], t[g][6], t[g][7]));
  }
  for (; j < kt; ++j) {
    __m512 a[NG];
    for (int g = 0; g < NG; ++g) a[g] = _mm512_setzero_ps();
    const cache_t* k0 = k_rows[j] + hoff;
    for (int64_t d = 0; d < D16; d += 16) {
      const __m512 x0 = load16(k0 + d);
      for (int g = 0; g < NG; ++g) a[g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * D + d), x0, a[g]);
    }
    for (int g = 0; g < NG; ++g) s[g * ld + j] = _mm512_reduce_add_ps(a[g]);
  }
}

template <typename cache_t, int NG>
LMX_AVX512 void pv_group512(const float* p, int64_t ld, const cache_t* const* v_rows, int64_t hoff, int64_t kt,
                            int64_t D, float* acc) {
  int64_t c = 0;
  for (; c + 32 <= D; c += 32) {
    __m512 a[NG][2];
    for (int g = 0; g < NG; ++g) {
      a[g][0] = _mm512_loadu_ps(acc + g * D + c);
      a[g][1] = _mm512_loadu_ps(acc + g * D + c + 16);
    }
    for (int64_t j = 0; j < kt; ++j) {
      const cache_t* vj = v_rows[j] + hoff + c;
      if (c == 0 && j + 5 < kt) prefetch_row(v_rows[j + 4] + hoff, v_rows[j + 5] + hoff, D);
      const __m512 x0 = load16(vj), x1 = load16(vj + 16);
      for (int g = 0; g < NG; ++g) {
        const __m512 pg = _mm512_set1_ps(p[g * ld + j]);
        a[g][0] = _mm512_fmadd_ps(pg, x0, a[g][0]);
        a[g][1] = _mm512_fmadd_ps(pg, x1, a[g][1]);
      }
    }
    for (int g = 0; g < NG; ++g) {
      _mm512_storeu_ps(acc + g * D + c, a[g][0]);
      _mm512_storeu_ps(acc + g * D + c + 16, a[g][1]);
    }
  }
  if (c < D) {  // 16 channels left (head dims are multiples of 16)
    __m512 a[NG];
    for (int g = 0; g < NG; ++g) a[g] = _mm512_loadu_ps(acc + g * D + c);
    for (int64_t j = 0; j < kt; ++j) {
      const __m512 x0 = load16(v_rows[j] + hoff + c);
      for (int g = 0; g < NG; ++g) a[g] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * ld + j]), x0, a[g]);
    }
    for (int g = 0; g < NG; ++g) _mm512_storeu_ps(acc + g * D + c, a[g]);
  }
}

// The direct (decode) kernels with AVX-512: the same contract as scores_direct / pv_direct, sixteen channels a
// vector (D a multiple of 16). P·V takes the rows that read the same kv head (the G query heads of a token) together,
// so each value row is loaded once for all of them.
LMX_AVX512 inline __m256 fold16(__m512 a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
}

template <typename scalar_t>
LMX_AVX512 void scores_direct512(const float* q, const scalar_t* const* k_rows, const int64_t* off, int64_t rows,
                                 int64_t kt, int64_t D, float* s) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + r * D;
    float* sr = s + r * kt;
    const int64_t o = off[r];
    int64_t j = 0;
    for (; j + 8 <= kt; j += 8) {
      const scalar_t* k0 = k_rows[j] + o;
      const scalar_t* k1 = k_rows[j + 1] + o;
      const scalar_t* k2 = k_rows[j + 2] + o;
      const scalar_t* k3 = k_rows[j + 3] + o;
      const scalar_t* k4 = k_rows[j + 4] + o;
      const scalar_t* k5 = k_rows[j + 5] + o;
      const scalar_t* k6 = k_rows[j + 6] + o;
      const scalar_t* k7 = k_rows[j + 7] + o;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      for (int64_t d = 0; d < D; d += 16) {
        const __m512 qv = _mm512_loadu_ps(qr + d);
        a0 = _mm512_fmadd_ps(qv, load16(k0 + d), a0);
        a1 = _mm512_fmadd_ps(qv, load16(k1 + d), a1);
        a2 = _mm512_fmadd_ps(qv, load16(k2 + d), a2);
        a3 = _mm512_fmadd_ps(qv, load16(k3 + d), a3);
        a4 = _mm512_fmadd_ps(qv, load16(k4 + d), a4);
        a5 = _mm512_fmadd_ps(qv, load16(k5 + d), a5);
        a6 = _mm512_fmadd_ps(qv, load16(k6 + d), a6);
        a7 = _mm512_fmadd_ps(qv, load16(k7 + d), a7);
      }
      _mm256_storeu_ps(sr + j, hsum8(fold16(a0), fold16(a1), fold16(a2), fold16(a3), fold16(a4), fold16(a5),
                                     fold16(a6), fold16(a7)));
    }
    for (; j < kt; ++j) {
      __m512 a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(qr + d), load16(k_rows[j] + o + d), a);
      sr[j] = _mm512_reduce_add_ps(a);
    }
  }
}

// acc[r0 + i, c + 16 u] += Σ_j p[r0 + i, j] v[j][o + c + 16 u] for R rows reading the same kv head, NV vectors.
template <int R, int NV, typename scalar_t>
LMX_AVX512 inline void pv_direct512_block(const float* p, const scalar_t* const* v, int64_t o, int64_t kt,
                                          int64_t D, float* acc) {
  __m512 a[R][NV];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) a[i][u] = _mm512_loadu_ps(acc + i * D + 16 * u);
  for (int64_t j = 0; j < kt; ++j) {
    bool masked = true;  // a key no row sees (p = 0) is skipped, as pv_direct does: its value may be inf
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) masked = masked && p[i * kt + j] == 0.0f;
    if (masked) continue;
    const scalar_t* vj = v[j] + o;
    __m512 vv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) vv[u] = load16(vj + 16 * u);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512 pj = _mm512_set1_ps(p[i * kt + j]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) a[i][u] = _mm512_fmadd_ps(pj, vv[u], a[i][u]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(acc + i * D + 16 * u, a[i][u]);
}

template <int R, typename scalar_t>
LMX_AVX512 inline void pv_direct512_rows(const float* p, const scalar_t* const* v, int64_t o, int64_t kt, int64_t D,
                                         float* acc) {
  int64_t c = 0;
  for (; c + 64 <= D; c += 64) pv_direct512_block<R, 4>(p, v, o + c, kt, D, acc + c);
  switch ((D - c) / 16) {
    case 3: pv_direct512_block<R, 3>(p, v, o + c, kt, D, acc + c); break;
    case 2: pv_direct512_block<R, 2>(p, v, o + c, kt, D, acc + c); break;
    case 1: pv_direct512_block<R, 1>(p, v, o + c, kt, D, acc + c); break;
    default: break;
  }
}

template <typename scalar_t>
LMX_AVX512 void pv_direct512(const float* p, const scalar_t* const* v, const int64_t* off, int64_t rows, int64_t kt,
                             int64_t D, float* acc) {
  for (int64_t r0 = 0; r0 < rows;) {
    int64_t run = 1;  // rows r0.. that read the same kv head (consecutive query heads of one token), at most 4
    while (r0 + run < rows && run < 4 && off[r0 + run] == off[r0]) ++run;
    const float* pr = p + r0 * kt;
    float* ar = acc + r0 * D;
    switch (run) {
      case 4: pv_direct512_rows<4>(pr, v, off[r0], kt, D, ar); break;
      case 3: pv_direct512_rows<3>(pr, v, off[r0], kt, D, ar); break;
      case 2: pv_direct512_rows<2>(pr, v, off[r0], kt, D, ar); break;
      default: pv_direct512_rows<1>(pr, v, off[r0], kt, D, ar); break;
    }
    r0 += run;
  }
}

// ---- Decode kernels with AVX-512 (float, bf16 and fp16 caches; D a multiple of 16) ----
// Scores: each key row of a kv head is loaded once for the group of NG <= 4 query rows that read it; the dot
// products of four keys are reduced together (reduce4) and four such results into the sixteen scores of sixteen
// keys (reduce16), about three shuffles and adds per score instead of a full horizontal sum each.
// Lane t (128 bits) of the result holds four partial sums of a_t.
LMX_AVX512 inline __m512 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 b01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  const __m512 b23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(b01, b23, 0x88), _mm512_shuffle_f32x4(b01, b23, 0xDD));
}
// Four reduce4 results (c_e: keys 4e + t in lane t) → the sixteen sums in key order.
LMX_AVX512 inline __m512 reduce16(__m512 c0, __m512 c1, __m512 c2, __m512 c3) {
  const __m512 e01 = _mm512_add_ps(_mm512_shuffle_ps(c0, c1, 0x44), _mm512_shuffle_ps(c0, c1, 0xEE));
  const __m512 e23 = _mm512_add_ps(_mm512_shuffle_ps(c2, c3, 0x44), _mm512_shuffle_ps(c2, c3, 0xEE));
  const __m512 f = _mm512_add_ps(_mm512_shuffle_ps(e01, e23, 0x88), _mm512_shuffle_ps(e01, e23, 0xDD));
  // f[4t + e] is the sum of key 4e + t
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), f);
}

// s[g * ld + j] = q[g] · k[j][o:o + D] for the NG rows of a run (q: [NG, D]) and sixteen keys; pf > 0: prefetch
// the run's slice of the rows pf keys ahead.
template <int NG, typename cache_t>
LMX_AVX512 inline void scores_decode16(const float* q, const cache_t* const* k_rows, int64_t o, int64_t D, float* s,
                                       int64_t ld, int64_t pf) {
  const int64_t bytes = D * static_cast<int64_t>(sizeof(cache_t));
  __m512 c[NG][4];
#pragma GCC unroll 4
  for (int e = 0; e < 4; ++e) {
    const cache_t* k0 = k_rows[4 * e] + o;
    const cache_t* k1 = k_rows[4 * e + 1] + o;
    const cache_t* k2 = k_rows[4 * e + 2] + o;
    const cache_t* k3 = k_rows[4 * e + 3] + o;
    if (pf > 0)
      for (int u = 0; u < 4; ++u) {
        const char* a = reinterpret_cast<const char*>(k_rows[4 * e + u + pf] + o);
        for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(a + b, _MM_HINT_T0);
      }
    __m512 a[NG][4];
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g)
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) a[g][u] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 x0 = load16(k0 + d), x1 = load16(k1 + d), x2 = load16(k2 + d), x3 = load16(k3 + d);
#pragma GCC unroll 4
      for (int g = 0; g < NG; ++g) {
        const __m512 qv = _mm512_loadu_ps(q + g * D + d);
        a[g][0] = _mm512_fmadd_ps(qv, x0, a[g][0]);
        a[g][1] = _mm512_fmadd_ps(qv, x1, a[g][1]);
        a[g][2] = _mm512_fmadd_ps(qv, x2, a[g][2]);
        a[g][3] = _mm512_fmadd_ps(qv, x3, a[g][3]);
      }
    }
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) c[g][e] = reduce4(a[g][0], a[g][1], a[g][2], a[g][3]);
  }
#pragma GCC unroll 4
  for (int g = 0; g < NG; ++g) _mm512_storeu_ps(s + g * ld, reduce16(c[g][0], c[g][1], c[g][2], c[g][3]));
}

// Scores s [rows, ld] of every run for keys [0, kt16) (a multiple of 16; the caller pads k_rows, and provides pf
// rows past kt16 to prefetch): sixteen keys at a time for all runs, so the rows are read in address order.
template <typename cache_t>
LMX_AVX512 void scores_decode512(const float* q, const DecodeRun* runs, int64_t nruns, const cache_t* const* k_rows,
                                 int64_t kt16, int64_t D, float* s, int64_t ld, int64_t pf) {
  for (int64_t j = 0; j < kt16; j += 16)
    for (int64_t k = 0; k < nruns; ++k) {
      const DecodeRun& u = runs[k];
      const float* qr = q + u.row * D;
      float* sr = s + u.row * ld + j;
      const int64_t f = u.prefetch ? pf : 0;
      switch (u.ng) {
        case 4: scores_decode16<4>(qr, k_rows + j, u.o, D, sr, ld, f); break;
        case 3: scores_decode16<3>(qr, k_rows + j, u.o, D, sr, ld, f); break;
        case 2: scores_decode16<2>(qr, k_rows + j, u.o, D, sr, ld, f); break;
        default: scores_decode16<1>(qr, k_rows + j, u.o, D, sr, ld, f); break;
      }
    }
}

// acc[g * D + 16 u] = alpha[g] acc[g * D + 16 u] + Σ_{j < kt} p[g * ld + j] v[j][o + 16 u] for NG rows of one kv
// head and NV vectors of channels (alpha null: 1). kCheck: skip the keys no row sees (p = 0 for all; their values
// may be inf). pf > 0: prefetch these channels of the rows pf keys ahead.
template <int NG, int NV, bool kCheck, typename cache_t>
LMX_AVX512 inline void pv_decode512_block(const float* p, int64_t ld, const cache_t* const* v_rows, int64_t o,
                                          int64_t kt, int64_t D, const float* alpha, float* acc, int64_t pf) {
  constexpr int64_t bytes = NV * 16 * static_cast<int64_t>(sizeof(cache_t));
  __m512 a[NG][NV];
#pragma GCC unroll 4
  for (int g = 0; g < NG; ++g) {
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) a[g][u] = _mm512_loadu_ps(acc + g * D + 16 * u);
    if (alpha != nullptr) {
      const __m512 al = _mm512_set1_ps(alpha[g]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) a[g][u] = _mm512_mul_ps(al, a[g][u]);
    }
  }
  for (int64_t j = 0; j < kt; ++j) {
    if (pf > 0) {
      const char* pa = reinterpret_cast<const char*>(v_rows[j + pf] + o);
#pragma GCC unroll 4
      for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(pa + b, _MM_HINT_T0);
    }
    if constexpr (kCheck) {
      bool masked = true;
#pragma GCC unroll 4
      for (int g = 0; g < NG; ++g) masked = masked && p[g * ld + j] == 0.0f;
      if (masked) continue;
    }
    const cache_t* vj = v_rows[j] + o;
    __m512 vv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) vv[u] = load16(vj + 16 * u);
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      const __m512 pj = _mm512_set1_ps(p[g * ld + j]);
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) a[g][u] = _mm512_fmadd_ps(pj, vv[u], a[g][u]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < NG; ++g)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(acc + g * D + 16 * u, a[g][u]);
}

template <int NG, bool kCheck, typename cache_t>
LMX_AVX512 inline void pv_decode16(const float* p, int64_t ld, const cache_t* const* v_rows, int64_t o, int64_t kt,
                                   int64_t D, const float* alpha, float* acc, int64_t pf) {
  int64_t c = 0;
  for (; c + 64 <= D; c += 64) pv_decode512_block<NG, 4, kCheck>(p, ld, v_rows, o + c, kt, D, alpha, acc + c, pf);
  switch ((D - c) / 16) {
    case 3: pv_decode512_block<NG, 3, kCheck>(p, ld, v_rows, o + c, kt, D, alpha, acc + c, pf); break;
    case 2: pv_decode512_block<NG, 2, kCheck>(p, ld, v_rows, o + c, kt, D, alpha, acc + c, pf); break;
    case 1: pv_decode512_block<NG, 1, kCheck>(p, ld, v_rows, o + c, kt, D, alpha, acc + c, pf); break;
    default: break;
  }
}

// acc = alpha ⊙ acc + P·V for every run over keys [0, kt), sixteen keys at a time for all runs (the rows in address
// order); the caller provides pf rows past kt to prefetch.
template <bool kCheck, typename cache_t>
LMX_AVX512 void pv_decode512(const float* p, int64_t ld, const DecodeRun* runs, int64_t nruns,
                             const cache_t* const* v_rows, int64_t kt, int64_t D, const float* alpha, float* acc,
                             int64_t pf) {
  for (int64_t j = 0; j < kt; j += 16) {
    const int64_t n = std::min<int64_t>(16, kt - j);
    for (int64_t k = 0; k < nruns; ++k) {
      const DecodeRun& u = runs[k];
      const float* pr = p + u.row * ld + j;
      const float* al = j == 0 ? alpha + u.row : nullptr;
      float* ar = acc + u.row * D;
      const int64_t f = u.prefetch ? pf : 0;
      switch (u.ng) {
        case 4: pv_decode16<4, kCheck>(pr, ld, v_rows + j, u.o, n, D, al, ar, f); break;
        case 3: pv_decode16<3, kCheck>(pr, ld, v_rows + j, u.o, n, D, al, ar, f); break;
        case 2: pv_decode16<2, kCheck>(pr, ld, v_rows + j, u.o, n, D, al, ar, f); break;
        default: pv_decode16<1, kCheck>(pr, ld, v_rows + j, u.o, n, D, al, ar, f); break;
      }
    }
  }
}

// Online softmax of the score rows s [rows, ld] over keys [0, kt16) (masked keys -inf): updates m, l, writes the
// probabilities in place and each row's rescale factor alpha (1 for rows that see no key yet: their acc is 0).
LMX_AVX512 void softmax_rows512(float* s, int64_t ld, int64_t rows, int64_t kt16, float* m, float* l, float* alpha) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * ld;
    __m512 mx = _mm512_loadu_ps(row);
    for (int64_t j = 16; j < kt16; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + j));
    const float m_new = std::max(m[r], _mm512_reduce_max_ps(mx));
    if (m_new == kNegInf) {  // every key so far is masked for this row
      std::fill(row, row + kt16, 0.0f);
      alpha[r] = 1.0f;
      continue;
    }
    const float a = exp_nonpositive(m[r] - m_new);
    const __m512 shift = _mm512_set1_ps(m_new);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= kt16; j += 32) {
      const __m512 p0 = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + j), shift));
      const __m512 p1 = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + j + 16), shift));
      _mm512_storeu_ps(row + j, p0);
      _mm512_storeu_ps(row + j + 16, p1);
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
    }
    if (j < kt16) {
      const __m512 p0 = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + j), shift));
      _mm512_storeu_ps(row + j, p0);
      sum0 = _mm512_add_ps(sum0, p0);
    }
    l[r] = l[r] * a + _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1));
    m[r] = m_new;
    alpha[r] = a;
  }
}
#pragma GCC diagnostic pop

// The two kernels over every row of an item: rows come in runs of G (one kv head each, row_offset its offset),
// split into groups of at most four.
template <typename cache_t>
void scores_quant_rows(const float* q, const cache_t* const* k_rows, const int64_t* off, int64_t rows, int64_t G,
                       int64_t kt, int64_t D, float* s, bool avx512) {
  if (avx512 && D % 16 == 0) {
    for (int64_t r0 = 0; r0 < rows; r0 += G)
      for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t r = r0 + g0;
        switch (std::min<int64_t>(4, G - g0)) {
          case 4: scores_group512<cache_t, 4>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
          case 3: scores_group512<cache_t, 3>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
          case 2: scores_group512<cache_t, 2>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
          default: scores_group512<cache_t, 1>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
        }
      }
    return;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += G)
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
      const int64_t r = r0 + g0;
      switch (std::min<int64_t>(4, G - g0)) {
        case 4: scores_group<cache_t, 4>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
        case 3: scores_group<cache_t, 3>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
        case 2: scores_group<cache_t, 2>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
        default: scores_group<cache_t, 1>(q + r * D, k_rows, off[r], kt, D, s + r * kt, kt); break;
      }
    }
}

template <typename cache_t>
void pv_quant_rows(const float* p, const cache_t* const* v_rows, const int64_t* off, int64_t rows, int64_t G,
                   int64_t kt, int64_t D, float* acc, bool avx512) {
  if (avx512) {
    for (int64_t r0 = 0; r0 < rows; r0 += G)
      for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int64_t r = r0 + g0;
        switch (std::min<int64_t>(4, G - g0)) {
          case 4: pv_group512<cache_t, 4>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
          case 3: pv_group512<cache_t, 3>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
          case 2: pv_group512<cache_t, 2>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
          default: pv_group512<cache_t, 1>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
        }
      }
    return;
  }
  for (int64_t r0 = 0; r0 < rows; r0 += G)
    for (int64_t g0 = 0; g0 < G; g0 += 4) {
      const int64_t r = r0 + g0;
      switch (std::min<int64_t>(4, G - g0)) {
        case 4: pv_group<cache_t, 4>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
        case 3: pv_group<cache_t, 3>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
        case 2: pv_group<cache_t, 2>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
        default: pv_group<cache_t, 1>(p + r * kt, kt, v_rows, off[r], kt, D, acc + r * D); break;
      }
    }
}
#endif  // LMX_DIRECT_KERNELS

#if defined(LMX_DIRECT_KERNELS)
// bf16 tiles for CPUs with AVX512-BF16: `vdpbf16ps` multiplies pairs of bf16 and accumulates in fp32, so K and Q
// are used as they are in the cache and the activations (their products are exact in fp32; only the order of
// the fp32 sums differs) and P is rounded to bf16 for P·V, as PyTorch's bf16 flash attention does. The pairs run
// along the reduction: Qᵀ2 [D/2, ldr] holds (q[r, 2p], q[r, 2p + 1]) words, K's pairs are read from the cache
// rows, V2 [kt/2, D] interleaves two keys' rows, Pᵀ2 [kt/2, ldr] two keys' probabilities. Scores stay unscaled
// until the softmax, which takes the scale.
#define LMX_AVX512BF16 __attribute__((target("avx512bf16,avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,f16c")))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

inline uint32_t load_pair(const c10::BFloat16* p) {
  uint32_t w;
  std::memcpy(&w, p, sizeof(w));
  return w;
}

template <int NV>
LMX_AVX512BF16 inline void qk_block_bf16(const uint32_t* qt2, int64_t ldr, const c10::BFloat16* const* k,
                                         int64_t D2, int64_t r0, float* st) {
  __m512 acc[8][NV];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t dp = 0; dp < D2; ++dp) {
    __m512i q[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) q[v] = _mm512_loadu_si512(qt2 + dp * ldr + r0 + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      const __m512i kb = _mm512_set1_epi32(static_cast<int32_t>(load_pair(k[i] + 2 * dp)));
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)kb, (__m512bh)q[v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(st + i * ldr + r0 + 16 * v, acc[i][v]);
}

// Sᵀ [kt8, ldr] (unscaled) from the kt8 key rows `k` (a multiple of 8; padding rows point at zeros).
LMX_AVX512BF16 void qk_tiles_bf16(const uint32_t* qt2, int64_t ldr, const c10::BFloat16* const* k, int64_t kt8,
                                  int64_t D, float* st) {
  int64_t r0 = 0;
  for (; r0 + 32 <= ldr; r0 += 32)
    for (int64_t j0 = 0; j0 < kt8; j0 += 8) qk_block_bf16<2>(qt2, ldr, k + j0, D / 2, r0, st + j0 * ldr);
  if (r0 < ldr)
    for (int64_t j0 = 0; j0 < kt8; j0 += 8) qk_block_bf16<1>(qt2, ldr, k + j0, D / 2, r0, st + j0 * ldr);
}

template <int R, int NV>
LMX_AVX512BF16 inline void pv_block_bf16(const uint32_t* pt2, int64_t ldr, const uint32_t* v2, int64_t D,
                                         int64_t kt2, int64_t r0, int64_t d0, const float* alpha, float* acc) {
  __m512 a[R][NV];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i) {
    const __m512 al = _mm512_set1_ps(alpha[r0 + i]);
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) a[i][u] = _mm512_mul_ps(al, _mm512_loadu_ps(acc + (r0 + i) * D + d0 + 16 * u));
  }
  for (int64_t jp = 0; jp < kt2; ++jp) {
    __m512i vv[NV];
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) vv[u] = _mm512_loadu_si512(v2 + jp * D + d0 + 16 * u);
    const uint32_t* pj = pt2 + jp * ldr + r0;
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      const __m512i p = _mm512_set1_epi32(static_cast<int32_t>(pj[i]));
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) a[i][u] = _mm512_dpbf16_ps(a[i][u], (__m512bh)p, (__m512bh)vv[u]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(acc + (r0 + i) * D + d0 + 16 * u, a[i][u]);
}

template <int NV>
LMX_AVX512BF16 void pv_rows_bf16(const uint32_t* pt2, int64_t ldr, const uint32_t* v2, int64_t D, int64_t kt2,
                                 int64_t rows, int64_t d0, const float* alpha, float* acc) {
  int64_t r0 = 0;
  for (; r0 + 6 <= rows; r0 += 6) pv_block_bf16<6, NV>(pt2, ldr, v2, D, kt2, r0, d0, alpha, acc);
  switch (rows - r0) {
    case 5: pv_block_bf16<5, NV>(pt2, ldr, v2, D, kt2, r0, d0, alpha, acc); break;
    case 4: pv_block_bf16<4, NV>(pt2, ldr, v2, D, kt2, r0, d0, alpha, acc); break;
    case 3: pv_block_bf16<3, NV>(pt2, ldr, v2, D, kt2, r0, d0, alpha, acc); break;
    case 2: pv_block_bf16<2, NV>(pt2, ldr, v2, D, kt2, r0, d0, alpha, acc); break;
    case 1: pv_block_bf16<1, NV>(pt2, ldr, v2, D, kt2, r0, d0, alpha, acc); break;
    default: break;
  }
}

LMX_AVX512BF16 void pv_tiles_bf16(const uint32_t* pt2, int64_t ldr, const uint32_t* v2, int64_t D, int64_t kt2,
                                  int64_t rows, const float* alpha, float* acc) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) pv_rows_bf16<4>(pt2, ldr, v2, D, kt2, rows, d0, alpha, acc);
  switch ((D - d0) / 16) {
    case 3: pv_rows_bf16<3>(pt2, ldr, v2, D, kt2, rows, d0, alpha, acc); break;
    case 2: pv_rows_bf16<2>(pt2, ldr, v2, D, kt2, rows, d0, alpha, acc); break;
    case 1: pv_rows_bf16<1>(pt2, ldr, v2, D, kt2, rows, d0, alpha, acc); break;
    default: break;
  }
}

// Two keys' rows (b may be null: zeros) interleaved into words (a[d], b[d]); D a multiple of 16.
LMX_AVX512BF16 void interleave_rows(const c10::BFloat16* a, const c10::BFloat16* b, int64_t D, uint32_t* dst) {
  for (int64_t d = 0; d < D; d += 16) {
    const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + d)));
    const __m512i hi = b == nullptr ? _mm512_setzero_si512()
                                    : _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + d)));
    _mm512_storeu_si512(dst + d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
  }
}

LMX_AVX512BF16 inline __m512i pack_pair(__m512 p0, __m512 p1) {
  const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(p0));
  const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(p1));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

// softmax_columns for unscaled scores: m and l are in scaled units; probabilities go to Pᵀ2 as bf16 pairs.
LMX_AVX512BF16 void softmax_columns_bf16(const float* st, int64_t ldr, int64_t kt, float scale, float* m, float* l,
                                         float* alpha, uint32_t* pt2) {
  const __m512 neg_inf = _mm512_set1_ps(kNegInf), sc = _mm512_set1_ps(scale);
  for (int64_t r0 = 0; r0 < ldr; r0 += 16) {
    const __m512 m_old = _mm512_loadu_ps(m + r0);
    __m512 mx0 = neg_inf, mx1 = neg_inf;
    int64_t j = 0;
    for (; j + 2 <= kt; j += 2) {
      mx0 = _mm512_max_ps(mx0, _mm512_loadu_ps(st + j * ldr + r0));
      mx1 = _mm512_max_ps(mx1, _mm512_loadu_ps(st + (j + 1) * ldr + r0));
    }
    if (j < kt) mx0 = _mm512_max_ps(mx0, _mm512_loadu_ps(st + j * ldr + r0));
    const __m512 m_new = _mm512_max_ps(m_old, _mm512_mul_ps(_mm512_max_ps(mx0, mx1), sc));  // scale > 0
    const __mmask16 none = _mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ);
    const __m512 shift = _mm512_mask_blend_ps(none, m_new, _mm512_setzero_ps());
    const __m512 a = exp16_nonpositive(_mm512_sub_ps(m_old, shift));
    __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
    for (j = 0; j + 2 <= kt; j += 2) {
      const __m512 p0 = exp16_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(st + j * ldr + r0), sc, shift));
      const __m512 p1 = exp16_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(st + (j + 1) * ldr + r0), sc, shift));
      _mm512_storeu_si512(pt2 + (j / 2) * ldr + r0, pack_pair(p0, p1));
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
    }
    if (j < kt) {
      const __m512 p0 = exp16_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(st + j * ldr + r0), sc, shift));
      _mm512_storeu_si512(pt2 + (j / 2) * ldr + r0, pack_pair(p0, _mm512_setzero_ps()));
      sum0 = _mm512_add_ps(sum0, p0);
    }
    _mm512_storeu_ps(l + r0, _mm512_fmadd_ps(_mm512_loadu_ps(l + r0), a, _mm512_add_ps(sum0, sum1)));
    _mm512_storeu_ps(m + r0, m_new);
    _mm512_storeu_ps(alpha + r0, a);
  }
}
#pragma GCC diagnostic pop
#endif  // LMX_DIRECT_KERNELS

struct WorkItem {
  int64_t seq;
  int64_t kv_head;    // first kv head of the item
  int64_t kv_heads;   // kv heads it covers: 1, or all of them for decode-sized sequences (contiguous K/V reads)
  int64_t q_begin;    // first query of the tile, counted within the sequence
  int64_t q_count;    // queries (tokens) in the tile
  int64_t key_begin;  // key range of this item (a split of the visible range)
  int64_t key_end;
  int64_t partial;    // -1: write the output; else offset (in rows) into the partial-state buffers
  int64_t cost;
};

// Per-thread scratch.
template <typename scalar_t>  // the cache's element type (the activation dtype for float caches)
struct Scratch {
  std::vector<float> q, k, v, s, acc, m, l;
  std::vector<float> qt, alpha;                  // AVX-512 tiles: Qᵀ [D, ldr], the softmax's rescale factors
  std::vector<uint32_t> qt2, pt2, v2;            // AVX512-BF16 tiles: bf16 pairs of Qᵀ, Pᵀ and V
  std::vector<uint16_t> zero_row;                // AVX512-BF16 tiles: the key row of padding keys
  std::vector<const scalar_t*> k_rows, v_rows;  // direct kernels: cache row [Hkv, D] of each key of the tile
  std::vector<int64_t> row_offset;               // direct kernels: offset of each row's kv head in a cache row
  std::vector<float> pq;                         // quantized direct kernels: probabilities times the V scales
  std::vector<DecodeRun> runs;                   // AVX-512 decode kernels: the runs of rows that read one kv head
  void reserve(int64_t rows, int64_t head_dim) {
    const int64_t padded = (rows + 15) / 16 * 16;  // AVX-512 tiles: rows rounded up to whole vectors
    q.resize(rows * head_dim);
    acc.resize(rows * head_dim);
    s.resize(padded * kKeyTile);
    k.resize(kKeyTile * head_dim);
    v.resize(kKeyTile * head_dim);
    m.resize(padded);
    l.resize(padded);
    qt.resize(padded * head_dim);
    alpha.resize(padded);
    if (std::is_same_v<scalar_t, c10::BFloat16>) {
      qt2.resize(padded * (head_dim / 2));
      pt2.resize(padded * (kKeyTile / 2));
      v2.resize((kKeyTile / 2) * head_dim);
      zero_row.assign(head_dim, 0);
    }
    row_offset.resize(rows);
    runs.resize(rows);
    if (kQuantCache<scalar_t>) pq.resize(3 * rows * kKeyTile);  // P·scale, then the int8 scales of a tile
    k_rows.resize(kKeyTile + 128);
    v_rows.resize(kKeyTile + 128);
  }
};

// cache_t: the cache's element type; int8_t and Fp8 caches come with their scales (k_scales / v_scales).
template <typename scalar_t, typename cache_t = scalar_t>
class PagedAttention {
 public:
  PagedAttention(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                 const cache_t* k_cache, const cache_t* v_cache, const float* k_scales = nullptr,
                 const float* v_scales = nullptr)
      : p_(p), out_(out), query_(query), k_cache_(k_cache), v_cache_(v_cache), k_scales_(k_scales),
        v_scales_(v_scales), group_(p.num_q_heads / p.num_kv_heads),
        q_tile_(std::max<int64_t>(1, kRowsPerTile / group_)),
        block_shift_(__builtin_ctzll(static_cast<unsigned long long>(p.block_size))),  // a power of two (checked)
        block_mask_(p.block_size - 1), tiles512_(kDirect && cpu_avx512_tiles()),
        tiles_bf16_(kDirect && std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<cache_t, scalar_t> &&
                    cpu_avx512_bf16_tiles()) {}

  void run() {
    build_work();
    const int64_t num_threads = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(work_.size()));
    int64_t max_rows = 1;  // scratch for the largest item only (decode items have a few rows, not kRowsPerTile)
    for (const WorkItem& w : work_) max_rows = std::max(max_rows, w.q_count * w.kv_heads * group_);
    std::atomic<int64_t> next{0};
    // One task per thread; each pulls items (heaviest first) from a shared counter, so causal prefill tiles of
    // very different cost still balance.
    at::parallel_for(0, std::max<int64_t>(num_threads, 1), 1, [&](int64_t, int64_t) {
      Scratch<cache_t> scratch;
      scratch.reserve(max_rows, p_.head_dim);
      const int previous_blas_threads = blas_single_thread();
      for (int64_t i = next.fetch_add(1); i < static_cast<int64_t>(work_.size()); i = next.fetch_add(1))
        process(work_[i], scratch);
      blas_restore_threads(previous_blas_threads);
    });
    if (!merges_.empty()) merge_splits();
  }

 private:
  struct Merge {
    WorkItem tile;   // the unsplit item; tile.partial is the offset of split 0's rows
    int64_t splits;  // split s holds rows [tile.partial + s * rows, tile.partial + (s + 1) * rows)
  };

  void build_work() {
    std::vector<WorkItem> tiles;
    for (int64_t b = 0; b < p_.num_seqs; ++b) {
      const int64_t n = p_.cu_seqlens_q[b + 1] - p_.cu_seqlens_q[b];
      const int64_t len = p_.seq_lens[b];
      // Few queries: the work is reading K/V, so one item reads each key's [Hkv, D] row whole (direct kernels).
      const bool all_heads = kDirect && n * p_.num_q_heads <= kAllHeadRows;
      const int64_t q_tile = all_heads ? n : q_tile_;
      for (int64_t q0 = 0; q0 < n; q0 += q_tile) {
        const int64_t qn = std::min(q_tile, n - q0);
        const int64_t first_pos = len - n + q0, last_pos = first_pos + qn - 1;
        const int64_t key_begin = p_.sliding_window > 0 ? std::max<int64_t>(0, first_pos - p_.sliding_window + 1) : 0;
        const int64_t cost = qn * (last_pos + 1 - key_begin);
        if (all_heads)
          tiles.push_back({b, 0, p_.num_kv_heads, q0, qn, key_begin, last_pos + 1, -1, cost * p_.num_kv_heads});
        else
          for (int64_t h = 0; h < p_.num_kv_heads; ++h)
            tiles.push_back({b, h, 1, q0, qn, key_begin, last_pos + 1, -1, cost});
      }
    }
    if (tiles.empty()) return;  // no sequence has queries
    // Split the key range when there are too few items to keep the threads busy (decode of a few long sequences):
    // into about kSplitItems items of at least kMinKeysPerSplit keys. Not a function of the thread count, so the
    // result (the order of the fp32 sums) is the same on one thread or many.
    int64_t splits = 1;
    if (static_cast<int64_t>(tiles.size()) < kSplitItems) splits = (kSplitItems + tiles.size() - 1) / tiles.size();
    int64_t partial_rows = 0;
    for (const WorkItem& tile : tiles) {
      const int64_t span = tile.key_end - tile.key_begin;
      const int64_t n_split = std::max<int64_t>(1, std::min<int64_t>(splits, span / kMinKeysPerSplit));
      if (n_split == 1) {
        work_.push_back(tile);
        continue;
      }
      const int64_t chunk = ((span + n_split - 1) / n_split + kKeyTile - 1) / kKeyTile * kKeyTile;
      const int64_t rows = tile.q_count * tile.kv_heads * group_;
      int64_t made = 0;
      for (int64_t k0 = tile.key_begin; k0 < tile.key_end; k0 += chunk, ++made) {
        WorkItem part = tile;
        part.key_begin = k0;
        part.key_end = std::min(tile.key_end, k0 + chunk);
        part.partial = partial_rows + made * rows;
        part.cost = tile.q_count * tile.kv_heads * (part.key_end - part.key_begin);
        work_.push_back(part);
      }
      WorkItem merged = tile;
      merged.partial = partial_rows;
      merges_.push_back({merged, made});
      partial_rows += made * rows;
    }
    std::stable_sort(work_.begin(), work_.end(), [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
    partial_acc_.assign(partial_rows * p_.head_dim, 0.0f);
    partial_m_.assign(partial_rows, kNegInf);
    partial_l_.assign(partial_rows, 0.0f);
  }

  // Gather keys [j0, j1) of kv head `h` of sequence `b` from the paged cache into a contiguous fp32 tile.
  void gather(const cache_t* cache, int64_t b, int64_t h, int64_t j0, int64_t j1, float* dst) const {
    const int32_t* table = p_.block_tables + b * p_.max_blocks_per_seq;
    const int64_t D = p_.head_dim, Hkv = p_.num_kv_heads;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t slot = (static_cast<int64_t>(table[j >> block_shift_]) << block_shift_) + (j & block_mask_);
      if constexpr (std::is_same_v<cache_t, int8_t>)
        dequant_row(cache + (slot * Hkv + h) * D, (cache == k_cache_ ? k_scales_ : v_scales_) + (slot * Hkv + h) * 2,
                    dst + (j - j0) * D, D);
      else if constexpr (std::is_same_v<cache_t, Fp8>)
        dequant_row(cache + (slot * Hkv + h) * D, (cache == k_cache_ ? k_scales_ : v_scales_)[h], dst + (j - j0) * D, D);
      else
        to_float(cache + (slot * Hkv + h) * D, dst + (j - j0) * D, D, 1.0f);
    }
  }

  // Cache row of each key [j0, j1) of kv head `h` of sequence `b`.
  void row_pointers(const cache_t* cache, int64_t b, int64_t h, int64_t j0, int64_t j1, const cache_t** dst) const {
    const int32_t* table = p_.block_tables + b * p_.max_blocks_per_seq;
    const int64_t D = p_.head_dim, Hkv = p_.num_kv_heads;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t slot = (static_cast<int64_t>(table[j >> block_shift_]) << block_shift_) + (j & block_mask_);
      dst[j - j0] = cache + (slot * Hkv + h) * D;
    }
  }

  void process(const WorkItem& w, Scratch<cache_t>& sc) const {
    const int64_t D = p_.head_dim, G = group_, HQ = w.kv_heads * G, rows = w.q_count * HQ;
#if defined(LMX_DIRECT_KERNELS)
    if (tiles512_ && rows >= 16 && w.kv_heads == 1 && p_.alibi_slopes == nullptr && D % 16 == 0)
      return tiles_bf16_ ? process_tiles_bf16(w, sc) : process_tiles512(w, sc);
    if constexpr (!kQuantCache<cache_t>)
      if (tiles512_ && D % 16 == 0 && !(blas_sgemm() != nullptr && rows >= 16 && w.kv_heads == 1))
        return process_decode512(w, sc);
#endif
    const int64_t n = p_.cu_seqlens_q[w.seq + 1] - p_.cu_seqlens_q[w.seq];
    const int64_t first_pos = p_.seq_lens[w.seq] - n + w.q_begin;  // position of the tile's first query
    const int64_t token0 = p_.cu_seqlens_q[w.seq] + w.q_begin;
    // Rows r = i * HQ + qh: query token i, query head kv_head * G + qh (kv head kv_head + qh / G).
    // Queries are pre-scaled by the softmax scale.
    for (int64_t i = 0; i < w.q_count; ++i)
      for (int64_t qh = 0; qh < HQ; ++qh) {
        to_float(query_.data + (token0 + i) * query_.token_stride + (w.kv_head * G + qh) * query_.head_stride,
                 sc.q.data() + (i * HQ + qh) * D, D, p_.scale);
        sc.row_offset[i * HQ + qh] = (qh / G) * D;  // the row's kv head within a cache row [Hkv, D]
      }
    std::fill(sc.acc.begin(), sc.acc.begin() + rows * D, 0.0f);
    std::fill(sc.m.begin(), sc.m.begin() + rows, kNegInf);
    std::fill(sc.l.begin(), sc.l.begin() + rows, 0.0f);
    // Three ways to the two products: BLAS on staged fp32 tiles (many rows), AVX2 straight from the cache (few
    // rows), portable loops on staged tiles (otherwise).
    const bool use_blas = blas_sgemm() != nullptr && rows >= 16 && w.kv_heads == 1;
    const bool direct = kDirect && !use_blas;
    [[maybe_unused]] const bool direct512 = direct && tiles512_ && D % 16 == 0;  // the AVX-512 direct kernels

    // Direct tiles are smaller: their K/V rows are re-read once per query head and should stay in L1/L2.
    const int64_t key_tile = direct ? kDirectKeyTile : kKeyTile;
    for (int64_t j0 = w.key_begin; j0 < w.key_end; j0 += key_tile) {
      const int64_t j1 = std::min(w.key_end, j0 + key_tile), kt = j1 - j0;
      float* s = sc.s.data();  // [rows, kt]
#if defined(LMX_DIRECT_KERNELS)
      if (direct) {
        row_pointers(k_cache_, w.seq, w.kv_head, j0, j1, sc.k_rows.data());
        row_pointers(v_cache_, w.seq, w.kv_head, j0, j1, sc.v_rows.data());
        if constexpr (kQuantCache<cache_t>)
          scores_direct_quant(w, sc, rows, kt, s);
        else if (direct512)
          scores_direct512(sc.q.data(), sc.k_rows.data(), sc.row_offset.data(), rows, kt, D, s);
        else
          scores_direct(sc.q.data(), sc.k_rows.data(), sc.row_offset.data(), rows, kt, D, s);
      }
#endif
      if (!direct) {
        gather(k_cache_, w.seq, w.kv_head, j0, j1, sc.k.data());
        gather(v_cache_, w.seq, w.kv_head, j0, j1, sc.v.data());
      }
      if (direct) {
      } else if (use_blas) {  // column-major view: Sᵀ[kt, rows] = K[kt, D] · Qᵀ[D, rows]
        blas_gemm(true, false, kt, rows, D, 1.0f, sc.k.data(), D, sc.q.data(), D, 0.0f, s, kt);
      } else {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < kt; ++j) s[r * kt + j] = dot(sc.q.data() + r * D, sc.k.data() + j * D, D);
      }
      // Masks and biases: causal, sliding window, ALiBi.
      const int64_t last_pos = first_pos + w.q_count - 1;
      const bool full = (j1 - 1 <= first_pos) &&
                        (p_.sliding_window <= 0 || last_pos - j0 < p_.sliding_window);
      if (!full || p_.alibi_slopes != nullptr) {
        for (int64_t i = 0; i < w.q_count; ++i) {
          const int64_t pos = first_pos + i;
          const int64_t lo = p_.sliding_window > 0 ? pos - p_.sliding_window + 1 : 0;
          for (int64_t qh = 0; qh < HQ; ++qh) {
            float* row = s + (i * HQ + qh) * kt;
            if (p_.alibi_slopes != nullptr) {
              const float slope = p_.alibi_slopes[w.kv_head * G + qh];
              for (int64_t j = 0; j < kt; ++j) row[j] += slope * static_cast<float>(j0 + j - pos);
            }
            // Visible keys of this row within the tile: [lo, pos] ∩ [j0, j1); two fills, no per-key branch.
            const int64_t first = std::clamp<int64_t>(lo - j0, 0, kt), end = std::clamp<int64_t>(pos + 1 - j0, first, kt);
            std::fill(row, row + first, kNegInf);
            std::fill(row + end, row + kt, kNegInf);
          }
        }
      }
      // Online softmax, row by row.
      for (int64_t r = 0; r < rows; ++r) {
        float* row = s + r * kt;
        float mx = kNegInf;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < kt; ++j) mx = row[j] > mx ? row[j] : mx;
        const float m_new = std::max(sc.m[r], mx);
        if (m_new == kNegInf) {  // every key so far is masked for this row
          std::fill(row, row + kt, 0.0f);
          continue;
        }
        const float alpha = exp_nonpositive(sc.m[r] - m_new);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < kt; ++j) {
          row[j] = exp_nonpositive(row[j] - m_new);
          sum += row[j];
        }
        sc.l[r] = sc.l[r] * alpha + sum;
        sc.m[r] = m_new;
        if (alpha != 1.0f) {
          float* acc = sc.acc.data() + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
        }
      }
      if (direct) {
#if defined(LMX_DIRECT_KERNELS)
        if constexpr (kQuantCache<cache_t>)
          pv_direct_quant(w, sc, s, rows, kt);
        else if (direct512)
          pv_direct512(s, sc.v_rows.data(), sc.row_offset.data(), rows, kt, D, sc.acc.data());
        else
          pv_direct(s, sc.v_rows.data(), sc.row_offset.data(), rows, kt, D, sc.acc.data());
#endif
      } else if (use_blas) {  // column-major view: accᵀ[D, rows] += Vᵀ[D, kt] · Pᵀ[kt, rows]
        blas_gemm(false, false, D, rows, kt, 1.0f, sc.v.data(), D, s, kt, 1.0f, sc.acc.data(), D);
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          float* acc = sc.acc.data() + r * D;
          const float* prob = s + r * kt;
          for (int64_t j = 0; j < kt; ++j) {
            const float pj = prob[j];
            if (pj == 0.0f) continue;
            const float* v = sc.v.data() + j * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] += pj * v[d];
          }
        }
      }
    }

    finish(w, sc, token0);
  }

  // The item's result: its unnormalised state (a split, for merge_splits) or acc / l into out.
  void finish(const WorkItem& w, const Scratch<cache_t>& sc, int64_t token0) const {
    const int64_t D = p_.head_dim, G = group_, HQ = w.kv_heads * G, rows = w.q_count * HQ;
    if (w.partial >= 0) {  // a split: keep the unnormalised state for merge_splits
      std::memcpy(partial_acc_.data() + w.partial * D, sc.acc.data(), rows * D * sizeof(float));
      std::memcpy(partial_m_.data() + w.partial, sc.m.data(), rows * sizeof(float));
      std::memcpy(partial_l_.data() + w.partial, sc.l.data(), rows * sizeof(float));
      return;
    }
    for (int64_t i = 0; i < w.q_count; ++i)
      for (int64_t qh = 0; qh < HQ; ++qh) {
        const int64_t r = i * HQ + qh;
        const float inv_l = sc.l[r] > 0.0f ? 1.0f / sc.l[r] : 0.0f;
        scalar_t* dst = out_.data + (token0 + i) * out_.token_stride + (w.kv_head * G + qh) * out_.head_stride;
        const float* acc = sc.acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(acc[d] * inv_l);
      }
  }

#if defined(LMX_DIRECT_KERNELS)
  // Few query rows with the AVX-512 direct kernels, float / bf16 / fp16 caches (decode): per key tile, the scores
  // of each run of query rows that read one kv head (scores_decode512), masks, the online softmax sixteen keys a
  // vector (softmax_rows512), then P·V with the accumulators' rescale folded in (pv_decode512). Same state (m, l,
  // acc) and result as process().
  void process_decode512(const WorkItem& w, Scratch<cache_t>& sc) const {
    const int64_t D = p_.head_dim, G = group_, HQ = w.kv_heads * G, rows = w.q_count * HQ;
    const int64_t n = p_.cu_seqlens_q[w.seq + 1] - p_.cu_seqlens_q[w.seq];
    const int64_t first_pos = p_.seq_lens[w.seq] - n + w.q_begin, last_pos = first_pos + w.q_count - 1;
    const int64_t token0 = p_.cu_seqlens_q[w.seq] + w.q_begin;
    for (int64_t i = 0; i < w.q_count; ++i)
      for (int64_t qh = 0; qh < HQ; ++qh) {
        to_float(query_.data + (token0 + i) * query_.token_stride + (w.kv_head * G + qh) * query_.head_stride,
                 sc.q.data() + (i * HQ + qh) * D, D, p_.scale);
        sc.row_offset[i * HQ + qh] = (qh / G) * D;
      }
    std::fill(sc.acc.begin(), sc.acc.begin() + rows * D, 0.0f);
    std::fill(sc.m.begin(), sc.m.begin() + rows, kNegInf);
    std::fill(sc.l.begin(), sc.l.begin() + rows, 0.0f);
    const float* q = sc.q.data();
    DecodeRun* runs = sc.runs.data();  // runs of G rows read one kv head; groups of at most four
    int64_t nruns = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += G)
      for (int64_t g0 = 0; g0 < G; g0 += 4)
        runs[nruns++] = {r0 + g0, sc.row_offset[r0], std::min<int64_t>(4, G - g0), g0 == 0 && r0 < HQ};
    const cache_t** k_rows = sc.k_rows.data();
    const cache_t** v_rows = sc.v_rows.data();
    float* s = sc.s.data();  // [rows, ld]
    float* alpha = sc.alpha.data();
    const int64_t pf = kDecodePrefetchKeys;
    for (int64_t j0 = w.key_begin; j0 < w.key_end; j0 += kDecodeKeyTile) {
      const int64_t j1 = std::min(w.key_end, j0 + kDecodeKeyTile), kt = j1 - j0, ld = (kt + 15) / 16 * 16;
      // Row pointers of the tile and of the next pf keys (software prefetch; past the item's keys: the last row).
      const int64_t jp = std::min(w.key_end, j1 + pf);
      row_pointers(k_cache_, w.seq, w.kv_head, j0, jp, k_rows);
      std::fill(k_rows + (jp - j0), k_rows + ld + pf, k_rows[jp - j0 - 1]);
      row_pointers(v_cache_, w.seq, w.kv_head, j0, jp, v_rows);
      std::fill(v_rows + (jp - j0), v_rows + kt + pf, v_rows[jp - j0 - 1]);
      scores_decode512(q, runs, nruns, k_rows, ld, D, s, ld, pf);
      const bool full = (j1 - 1 <= first_pos) && (p_.sliding_window <= 0 || last_pos - j0 < p_.sliding_window);
      for (int64_t i = 0; i < w.q_count; ++i) {
        const int64_t pos = first_pos + i;
        const int64_t lo = p_.sliding_window > 0 ? pos - p_.sliding_window + 1 : 0;
        for (int64_t qh = 0; qh < HQ; ++qh) {
          float* row = s + (i * HQ + qh) * ld;
          if (p_.alibi_slopes != nullptr) {
            const float slope = p_.alibi_slopes[w.kv_head * G + qh];
            for (int64_t j = 0; j < kt; ++j) row[j] += slope * static_cast<float>(j0 + j - pos);
          }
          if (full) {
            std::fill(row + kt, row + ld, kNegInf);
          } else {  // visible keys of this row within the tile: [lo, pos] ∩ [j0, j1)
            const int64_t first = std::clamp<int64_t>(lo - j0, 0, kt), end = std::clamp<int64_t>(pos + 1 - j0, first, kt);
            std::fill(row, row + first, kNegInf);
            std::fill(row + end, row + ld, kNegInf);
          }
        }
      }
      softmax_rows512(s, ld, rows, ld, sc.m.data(), sc.l.data(), alpha);
      if (full)
        pv_decode512<false>(s, ld, runs, nruns, v_rows, kt, D, alpha, sc.acc.data(), pf);
      else
        pv_decode512<true>(s, ld, runs, nruns, v_rows, kt, D, alpha, sc.acc.data(), pf);
    }
    finish(w, sc, token0);
  }

  // One kv head's item with the AVX-512 tiles: Qᵀ staged once, then per key tile Sᵀ = K·Qᵀ, masks, the column
  // softmax and acc = alpha ⊙ acc + P·V. Same online-softmax state (m, l, acc) and result as process().
  void process_tiles512(const WorkItem& w, Scratch<cache_t>& sc) const {
    const int64_t D = p_.head_dim, G = group_, rows = w.q_count * G, ldr = (rows + 15) / 16 * 16;
    const int64_t n = p_.cu_seqlens_q[w.seq + 1] - p_.cu_seqlens_q[w.seq];
    const int64_t first_pos = p_.seq_lens[w.seq] - n + w.q_begin, last_pos = first_pos + w.q_count - 1;
    const int64_t token0 = p_.cu_seqlens_q[w.seq] + w.q_begin;
    float* qt = sc.qt.data();
    std::fill(qt, qt + D * ldr, 0.0f);  // padded rows score 0 and are never read back
    for (int64_t i = 0; i < w.q_count; ++i)
      for (int64_t qh = 0; qh < G; ++qh) {
        const scalar_t* src = query_.data + (token0 + i) * query_.token_stride + (w.kv_head * G + qh) * query_.head_stride;
        const int64_t r = i * G + qh;
        for (int64_t d = 0; d < D; ++d) qt[d * ldr + r] = static_cast<float>(src[d]) * p_.scale;
      }
    std::fill(sc.acc.begin(), sc.acc.begin() + rows * D, 0.0f);
    std::fill(sc.m.begin(), sc.m.begin() + ldr, kNegInf);
    std::fill(sc.l.begin(), sc.l.begin() + ldr, 0.0f);
    float* st = sc.s.data();  // Sᵀ [kt8, ldr]
    for (int64_t j0 = w.key_begin; j0 < w.key_end; j0 += kKeyTile) {
      const int64_t j1 = std::min(w.key_end, j0 + kKeyTile), kt = j1 - j0, kt8 = (kt + 7) / 8 * 8;
      gather(k_cache_, w.seq, w.kv_head, j0, j1, sc.k.data());
      std::fill(sc.k.begin() + kt * D, sc.k.begin() + kt8 * D, 0.0f);  // whole blocks of 8 keys
      gather(v_cache_, w.seq, w.kv_head, j0, j1, sc.v.data());
      qk_tiles(qt, ldr, sc.k.data(), kt8, D, st);
      const bool full = (j1 - 1 <= first_pos) && (p_.sliding_window <= 0 || last_pos - j0 < p_.sliding_window);
      if (!full)
        for (int64_t j = 0; j < kt; ++j) {  // rows are (token, head) in token order: the hidden rows are runs
          const int64_t key = j0 + j;
          float* col = st + j * ldr;
          // Causal: tokens before position `key` do not see it.
          std::fill(col, col + std::clamp<int64_t>((key - first_pos) * G, 0, rows), kNegInf);
          // Sliding window: tokens at or after key + window do not see it either.
          if (p_.sliding_window > 0)
            std::fill(col + std::clamp<int64_t>((key + p_.sliding_window - first_pos) * G, 0, rows), col + rows,
                      kNegInf);
        }
      softmax_columns(st, ldr, kt, sc.m.data(), sc.l.data(), sc.alpha.data());
      pv_tiles(st, ldr, sc.v.data(), D, kt, rows, sc.alpha.data(), sc.acc.data());
    }
    finish(w, sc, token0);
  }

  // process_tiles512 with the AVX512-BF16 tiles (bf16 activations only): no fp32 staging of Q or K, V staged as
  // interleaved key pairs, the scale applied in the softmax.
  void process_tiles_bf16(const WorkItem& w, Scratch<cache_t>& sc) const {
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<cache_t, scalar_t>) {
      const int64_t D = p_.head_dim, G = group_, rows = w.q_count * G, ldr = (rows + 15) / 16 * 16;
      const int64_t n = p_.cu_seqlens_q[w.seq + 1] - p_.cu_seqlens_q[w.seq];
      const int64_t first_pos = p_.seq_lens[w.seq] - n + w.q_begin, last_pos = first_pos + w.q_count - 1;
      const int64_t token0 = p_.cu_seqlens_q[w.seq] + w.q_begin;
      uint32_t* qt2 = sc.qt2.data();
      std::fill(qt2, qt2 + (D / 2) * ldr, 0u);
      for (int64_t i = 0; i < w.q_count; ++i)
        for (int64_t qh = 0; qh < G; ++qh) {
          const scalar_t* src =
              query_.data + (token0 + i) * query_.token_stride + (w.kv_head * G + qh) * query_.head_stride;
          const int64_t r = i * G + qh;
          for (int64_t dp = 0; dp < D / 2; ++dp) qt2[dp * ldr + r] = load_pair(src + 2 * dp);
        }
      std::fill(sc.acc.begin(), sc.acc.begin() + rows * D, 0.0f);
      std::fill(sc.m.begin(), sc.m.begin() + ldr, kNegInf);
      std::fill(sc.l.begin(), sc.l.begin() + ldr, 0.0f);
      float* st = sc.s.data();
      const scalar_t* zero = reinterpret_cast<const scalar_t*>(sc.zero_row.data());
      for (int64_t j0 = w.key_begin; j0 < w.key_end; j0 += kKeyTile) {
        const int64_t j1 = std::min(w.key_end, j0 + kKeyTile), kt = j1 - j0, kt8 = (kt + 7) / 8 * 8;
        const int64_t kt2 = (kt + 1) / 2;
        row_pointers(k_cache_, w.seq, w.kv_head, j0, j1, sc.k_rows.data());
        std::fill(sc.k_rows.begin() + kt, sc.k_rows.begin() + kt8, zero);
        row_pointers(v_cache_, w.seq, w.kv_head, j0, j1, sc.v_rows.data());
        for (int64_t jp = 0; jp < kt2; ++jp)
          interleave_rows(sc.v_rows[2 * jp], 2 * jp + 1 < kt ? sc.v_rows[2 * jp + 1] : nullptr, D,
                          sc.v2.data() + jp * D);
        qk_tiles_bf16(qt2, ldr, sc.k_rows.data(), kt8, D, st);
        const bool full = (j1 - 1 <= first_pos) && (p_.sliding_window <= 0 || last_pos - j0 < p_.sliding_window);
        if (!full)
          for (int64_t j = 0; j < kt; ++j) {
            const int64_t key = j0 + j;
            float* col = st + j * ldr;
            std::fill(col, col + std::clamp<int64_t>((key - first_pos) * G, 0, rows), kNegInf);
            if (p_.sliding_window > 0)
              std::fill(col + std::clamp<int64_t>((key + p_.sliding_window - first_pos) * G, 0, rows), col + rows,
                        kNegInf);
          }
        softmax_columns_bf16(st, ldr, kt, p_.scale, sc.m.data(), sc.l.data(), sc.alpha.data(), sc.pt2.data());
        pv_tiles_bf16(sc.pt2.data(), ldr, sc.v2.data(), D, kt2, rows, sc.alpha.data(), sc.acc.data());
      }
      finish(w, sc, token0);
    }
  }
#endif

#if defined(LMX_DIRECT_KERNELS)
  // Quantized direct kernels. Row r's kv head is w.kv_head + off[r] / D; key j's cache row index (slot * Hkv +
  // kv head) is (k_rows[j] - k_cache_) / D + off[r] / D. Scores: s = scale_j (q · k_int_j) + zero_j Σq (fp8:
  // zero 0, scale s[h]); P·V: acc += Σ_j (p_j scale_j) v_raw_j + Σ_j p_j zero_j.
  // int8: the (scale, zero) of every key of the tile for each kv head of the item, head-major (sc.sz: scale [kv_heads,
  // kt] then zero [kv_heads, kt]), so the per-row loops below run over contiguous keys and vectorise.
  void gather_scales(const WorkItem& w, const cache_t* const* rows_of, const cache_t* cache, const float* scales,
                     int64_t kt, float* sz) const {
    const int64_t D = p_.head_dim, H = w.kv_heads;
    for (int64_t j = 0; j < kt; ++j) {
      const float* row = scales + (rows_of[j] - cache) / D * 2;  // the key's first kv head of the item
      for (int64_t h = 0; h < H; ++h) {
        sz[h * kt + j] = row[2 * h];
        sz[(H + h) * kt + j] = row[2 * h + 1];
      }
    }
  }

  void scores_direct_quant(const WorkItem& w, Scratch<cache_t>& sc, int64_t rows, int64_t kt, float* s) const {
    if constexpr (kQuantCache<cache_t>) {
      const int64_t D = p_.head_dim, H = w.kv_heads;
      scores_quant_rows(sc.q.data(), sc.k_rows.data(), sc.row_offset.data(), rows, group_, kt, D, s,
                        tiles512_);  // raw dots
      float* sz = sc.pq.data() + rows * kKeyTile;
      if constexpr (std::is_same_v<cache_t, int8_t>) gather_scales(w, sc.k_rows.data(), k_cache_, k_scales_, kt, sz);
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s + r * kt;
        const int64_t hr = sc.row_offset[r] / D;
        if constexpr (std::is_same_v<cache_t, int8_t>) {
          const float* qr = sc.q.data() + r * D;
          float qsum = 0.0f;
#pragma omp simd reduction(+ : qsum)
          for (int64_t d = 0; d < D; ++d) qsum += qr[d];
          const float* scale = sz + hr * kt;
          const float* zero = sz + (H + hr) * kt;
#pragma omp simd
          for (int64_t j = 0; j < kt; ++j) sr[j] = scale[j] * sr[j] + zero[j] * qsum;
        } else {
          const float sh = k_scales_[w.kv_head + hr];
#pragma omp simd
          for (int64_t j = 0; j < kt; ++j) sr[j] *= sh;
        }
      }
    }
  }

  void pv_direct_quant(const WorkItem& w, Scratch<cache_t>& sc, const float* p, int64_t rows, int64_t kt) const {
    if constexpr (kQuantCache<cache_t>) {
      const int64_t D = p_.head_dim, H = w.kv_heads;
      float* pq = sc.pq.data();
      float* sz = pq + rows * kKeyTile;
      if constexpr (std::is_same_v<cache_t, int8_t>) gather_scales(w, sc.v_rows.data(), v_cache_, v_scales_, kt, sz);
      for (int64_t r = 0; r < rows; ++r) {
        const float* pr = p + r * kt;
        float* qr = pq + r * kt;
        const int64_t hr = sc.row_offset[r] / D;
        if constexpr (std::is_same_v<cache_t, int8_t>) {
          const float* scale = sz + hr * kt;
          const float* zero = sz + (H + hr) * kt;
          float zsum = 0.0f;
#pragma omp simd reduction(+ : zsum)
          for (int64_t j = 0; j < kt; ++j) {  // a masked key (p = 0) is skipped, as the float kernels skip it
            const bool on = pr[j] != 0.0f;
            qr[j] = on ? pr[j] * scale[j] : 0.0f;
            zsum += on ? pr[j] * zero[j] : 0.0f;
          }
          float* acc = sc.acc.data() + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[d] += zsum;
        } else {
          const float sh = v_scales_[w.kv_head + hr];
#pragma omp simd
          for (int64_t j = 0; j < kt; ++j) qr[j] = pr[j] * sh;
        }
      }
      pv_quant_rows(pq, sc.v_rows.data(), sc.row_offset.data(), rows, group_, kt, D, sc.acc.data(), tiles512_);
    }
  }
#endif

  // out = Σ_s acc_s e^{m_s - M} / Σ_s l_s e^{m_s - M}, M = max_s m_s, all in fp32.
  void merge_splits() {
    const int64_t D = p_.head_dim, G = group_;
    at::parallel_for(0, static_cast<int64_t>(merges_.size()), 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(D);
      for (int64_t k = begin; k < end; ++k) {
        const WorkItem& w = merges_[k].tile;
        const int64_t HQ = w.kv_heads * G, rows = w.q_count * HQ, splits = merges_[k].splits;
        const int64_t token0 = p_.cu_seqlens_q[w.seq] + w.q_begin;
        for (int64_t r = 0; r < rows; ++r) {
          float M = kNegInf;
          for (int64_t s = 0; s < splits; ++s) M = std::max(M, partial_m_[w.partial + s * rows + r]);
          std::fill(acc.begin(), acc.end(), 0.0f);
          float L = 0.0f;
          for (int64_t s = 0; s < splits; ++s) {
            const int64_t row = w.partial + s * rows + r;
            if (partial_m_[row] == kNegInf) continue;
            const float wgt = std::exp(partial_m_[row] - M);
            L += partial_l_[row] * wgt;
            const float* a = partial_acc_.data() + row * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += a[d] * wgt;
          }
          const float inv_l = L > 0.0f ? 1.0f / L : 0.0f;
          const int64_t i = r / HQ, qh = r % HQ;
          scalar_t* dst = out_.data + (token0 + i) * out_.token_stride + (w.kv_head * G + qh) * out_.head_stride;
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(acc[d] * inv_l);
        }
      }
    });
  }

  const AttentionParams& p_;
  TokenHeadView<scalar_t> out_;
  TokenHeadView<const scalar_t> query_;
  const cache_t* k_cache_;
  const cache_t* v_cache_;
  const float* k_scales_;  // quantized caches: int8 (scale, zero) [slots, Hkv, 2]; fp8 [Hkv]
  const float* v_scales_;
  const int64_t group_;
  const int64_t q_tile_;
  const int64_t block_shift_;  // log2(block_size)
  const int64_t block_mask_;
  const bool tiles512_;    // the AVX-512 tiles replace BLAS for many-row items
  const bool tiles_bf16_;  // bf16 activations: the AVX512-BF16 tiles
  std::vector<WorkItem> work_;
  std::vector<Merge> merges_;
  mutable std::vector<float> partial_acc_, partial_m_, partial_l_;
};

}  // namespace

template <typename scalar_t>
void paged_attention(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                     const scalar_t* k_cache, const scalar_t* v_cache) {
  // The glue's checks guarantee this; the work split divides by both.
  TORCH_INTERNAL_ASSERT(p.num_kv_heads >= 1 && p.num_q_heads >= p.num_kv_heads && p.num_q_heads % p.num_kv_heads == 0);
  PagedAttention<scalar_t>(p, out, query, k_cache, v_cache).run();
}

template <typename scalar_t>
void paged_attention_quant(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                           const QuantCacheIn& c) {
  TORCH_INTERNAL_ASSERT(p.num_kv_heads >= 1 && p.num_q_heads >= p.num_kv_heads && p.num_q_heads % p.num_kv_heads == 0);
  if (c.int8)
    PagedAttention<scalar_t, int8_t>(p, out, query, static_cast<const int8_t*>(c.k), static_cast<const int8_t*>(c.v),
                                     c.k_scales, c.v_scales)
        .run();
  else
    PagedAttention<scalar_t, Fp8>(p, out, query, static_cast<const Fp8*>(c.k), static_cast<const Fp8*>(c.v),
                                  c.k_scales, c.v_scales)
        .run();
}

LMX_INSTANTIATE_PAGED_ATTENTION(float)
LMX_INSTANTIATE_PAGED_ATTENTION(c10::BFloat16)
LMX_INSTANTIATE_PAGED_ATTENTION(c10::Half)

}  // namespace lmx::cpu::LMX_ISA
