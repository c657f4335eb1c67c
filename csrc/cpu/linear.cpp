// The CPU linear kernel: y[m, n] = Σ_k x[m, k] w[n, k] (+ bias[n]) for the few rows of a decode step.
//
// With one to a few rows a linear layer is a read of its weight matrix: 4 bytes per multiply-add in fp32, so it
// runs at the memory's speed or not at all. Each thread takes a contiguous range of weight rows and streams them
// once, each row through the vector units for two input rows at a time (the inputs stay in L1). AVX-512 (bf16 with
// AVX512-BF16's vdpbf16ps), AVX2 and portable code, chosen at run time. Measured speeds: README "CPU speed".
//
// Every output is one fp32 dot product whose order of additions depends only on K and the code path (lanes of
// k mod 32, folded pairwise, then the bias): not on the thread count, on which rows are computed together, or on
// M. So a sequence's logits do not depend on what else is in the batch. Rounded once to the output dtype.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "kernels.h"
#include "simd_loads.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LMX_X86 1
#endif

namespace lmx::cpu {
namespace {

constexpr int64_t kRowTile = 4;  // weight rows per work unit of at::parallel_for

template <typename T>
inline void store(T* y, float v, const T* bias) {
  if (bias != nullptr) v += static_cast<float>(*bias);
  *y = static_cast<T>(v);
}

// Portable: 32 partial sums per output (lane l takes k ≡ l (mod 32)), folded pairwise as the AVX-512 code does.
template <typename T>
void linear_portable(const T* x, int64_t ldx, int64_t M, const T* w, int64_t K, const T* bias, T* y, int64_t ldy,
                     int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float lanes[32] = {};
      for (int64_t k = 0; k < K; ++k)
        lanes[k % 32] += static_cast<float>(x[m * ldx + k]) * static_cast<float>(w[n * K + k]);
      for (int width = 16; width >= 1; width /= 2)
        for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
      store(y + m * ldy + n, lanes[0], bias ? bias + n : nullptr);
    }
}

#if defined(LMX_X86)
#define LMX_LINEAR_AVX512 LMX_SIMD_AVX512
using simd::load16;  // full rows (simd_loads.h); the masked tails below
using simd::load8;

LMX_LINEAR_AVX512 inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
LMX_LINEAR_AVX512 inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
LMX_LINEAR_AVX512 inline __m512 load16(const c10::Half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// Pairwise: halves of 16, 8, 4, 2 lanes.
LMX_LINEAR_AVX512 inline float reduce512(__m512 a) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

// y[m, r] (row stride ldy) for MR input rows and NR weight rows w + r * K. Two accumulators per output (even and odd
// 16-channel chunks, so lane l of the sum takes k ≡ l (mod 32)); unmasked loads but for the last chunks.
template <int MR, int NR, typename T>
LMX_LINEAR_AVX512 __attribute__((always_inline)) inline void tile512(const T* x, int64_t ldx, const T* w, int64_t K,
                                                                     const T* bias, T* y, int64_t ldy) {
  __m512 a[MR][NR], b[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) a[m][r] = b[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512 w0[NR], w1[NR];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      w0[r] = load16(w + r * K + k);
      w1[r] = load16(w + r * K + k + 16);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512 x0 = load16(x + m * ldx + k), x1 = load16(x + m * ldx + k + 16);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        a[m][r] = _mm512_fmadd_ps(x0, w0[r], a[m][r]);
        b[m][r] = _mm512_fmadd_ps(x1, w1[r], b[m][r]);
      }
    }
  }
  if (k < K) {  // at most two chunks left: the first into a, the second into b
    const __mmask16 mask = K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = load16(x + m * ldx + k, mask);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) a[m][r] = _mm512_fmadd_ps(xv, load16(w + r * K + k, mask), a[m][r]);
    }
    k += 16;
  }
  if (k < K) {
    const __mmask16 mask = __mmask16((1u << (K - k)) - 1);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = load16(x + m * ldx + k, mask);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) b[m][r] = _mm512_fmadd_ps(xv, load16(w + r * K + k, mask), b[m][r]);
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r)
      store(y + m * ldy + r, reduce512(_mm512_add_ps(a[m][r], b[m][r])), bias ? bias + r : nullptr);
}

// Weight rows [n0, n1), one at a time (each thread reads one sequential stream: measured 10% faster than
// interleaving four rows), each for two input rows at a time while the row is in L1.
template <typename T>
LMX_LINEAR_AVX512 void linear_avx512(const T* x, int64_t ldx, int64_t M, const T* w, int64_t K, const T* bias, T* y,
                                     int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* wn = w + n * K;
    const T* bn = bias ? bias + n : nullptr;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile512<2, 1>(x + m * ldx, ldx, wn, K, bn, y + m * ldy + n, ldy);
    if (m < M) tile512<1, 1>(x + m * ldx, ldx, wn, K, bn, y + m * ldy + n, ldy);
  }
}

// bf16 with AVX512-BF16: vdpbf16ps multiplies 32 bf16 pairs into 16 fp32 lanes (lane l takes k ≡ 2l, 2l + 1
// (mod 32), per accumulator; two accumulators, k mod 64), one instruction per 64 bytes of weights.
#define LMX_LINEAR_AVX512BF16 \
  __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

LMX_LINEAR_AVX512BF16 inline __m512bh load32bh(const c10::BFloat16* p) {
  return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p));
}
LMX_LINEAR_AVX512BF16 inline __m512bh load32bh(const c10::BFloat16* p, __mmask32 m) {
  return reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi16(m, p));
}

template <int MR, int NR>
LMX_LINEAR_AVX512BF16 __attribute__((always_inline)) inline void tile_bf16(const c10::BFloat16* x, int64_t ldx,
                                                                          const c10::BFloat16* w, int64_t K,
                                                                          const c10::BFloat16* bias,
                                                                          c10::BFloat16* y, int64_t ldy) {
  __m512 a[MR][NR], b[MR][NR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) a[m][r] = b[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    __m512bh w0[NR], w1[NR];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      w0[r] = load32bh(w + r * K + k);
      w1[r] = load32bh(w + r * K + k + 32);
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512bh x0 = load32bh(x + m * ldx + k), x1 = load32bh(x + m * ldx + k + 32);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        a[m][r] = _mm512_dpbf16_ps(a[m][r], x0, w0[r]);
        b[m][r] = _mm512_dpbf16_ps(b[m][r], x1, w1[r]);
      }
    }
  }
  if (k < K) {  // at most two 32-element chunks left: the first into a, the second into b
    const __mmask32 mask = K - k >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << (K - k)) - 1);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = load32bh(x + m * ldx + k, mask);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) a[m][r] = _mm512_dpbf16_ps(a[m][r], xv, load32bh(w + r * K + k, mask));
    }
    k += 32;
  }
  if (k < K) {
    const __mmask32 mask = __mmask32((1u << (K - k)) - 1);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = load32bh(x + m * ldx + k, mask);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) b[m][r] = _mm512_dpbf16_ps(b[m][r], xv, load32bh(w + r * K + k, mask));
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r)
      store(y + m * ldy + r, reduce512(_mm512_add_ps(a[m][r], b[m][r])), bias ? bias + r : nullptr);
}

LMX_LINEAR_AVX512BF16 void linear_avx512_bf16(const c10::BFloat16* x, int64_t ldx, int64_t M,
                                              const c10::BFloat16* w, int64_t K, const c10::BFloat16* bias,
                                              c10::BFloat16* y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {  // as linear_avx512
    const c10::BFloat16* wn = w + n * K;
    const c10::BFloat16* bn = bias ? bias + n : nullptr;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile_bf16<2, 1>(x + m * ldx, ldx, wn, K, bn, y + m * ldy + n, ldy);
    if (m < M) tile_bf16<1, 1>(x + m * ldx, ldx, wn, K, bn, y + m * ldy + n, ldy);
  }
}

// AVX2 (16 registers): one input row at a time, four 8-lane accumulators per output (lane l takes k ≡ l (mod 32)).
#define LMX_LINEAR_AVX2 LMX_SIMD_AVX2


template <int NR, typename T>
LMX_LINEAR_AVX2 __attribute__((always_inline)) inline void tile256(const T* x, const T* w, int64_t K, const T* bias,
                                                                   T* y) {
  __m256 a[NR][4];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) a[r][u] = _mm256_setzero_ps();
  const int64_t K32 = K / 32 * 32;
  for (int64_t k = 0; k < K32; k += 32) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const __m256 xv = load8(x + k + 8 * u);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) a[r][u] = _mm256_fmadd_ps(xv, load8(w + r * K + k + 8 * u), a[r][u]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) {
    alignas(32) float lanes[32];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) _mm256_store_ps(lanes + 8 * u, a[r][u]);
    for (int64_t k = K32; k < K; ++k)
      lanes[k - K32] += static_cast<float>(x[k]) * static_cast<float>(w[r * K + k]);
    for (int width = 16; width >= 1; width /= 2)
      for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    store(y + r, lanes[0], bias ? bias + r : nullptr);
  }
}

template <typename T>
LMX_LINEAR_AVX2 void linear_avx2(const T* x, int64_t ldx, int64_t M, const T* w, int64_t K, const T* bias, T* y,
                                 int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1;) {
    const int64_t nr = n + 2 <= n1 ? 2 : 1;
    for (int64_t m = 0; m < M; ++m) {
      if (nr == 2)
        tile256<2>(x + m * ldx, w + n * K, K, bias ? bias + n : nullptr, y + m * ldy + n);
      else
        tile256<1>(x + m * ldx, w + n * K, K, bias ? bias + n : nullptr, y + m * ldy + n);
    }
    n += nr;
  }
}
#endif  // LMX_X86

enum class Isa { kBaseline, kAvx2, kAvx512, kAvx512Bf16 };

Isa linear_isa() {
#if defined(LMX_X86)
  if (cpu_avx512_bf16_tiles()) return Isa::kAvx512Bf16;  // bf16 only; other dtypes take kAvx512
  if (cpu_avx512_tiles()) return Isa::kAvx512;
  if (attention_isa() != std::string_view("baseline")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

}  // namespace

template <typename T>
void linear(const T* x, int64_t ldx, int64_t M, const T* w, int64_t N, int64_t K, const T* bias, T* y, int64_t ldy) {
  if (M == 0 || N == 0) return;
  static const Isa isa = linear_isa();
  // Chunks of at least ~64 KB of weights, in whole tiles, so a small layer is not split finer than it is worth.
  const int64_t row_bytes = std::max<int64_t>(K, 1) * int64_t(sizeof(T));
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / (kRowTile * row_bytes));
  const int64_t tiles = (N + kRowTile - 1) / kRowTile;
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * kRowTile, n1 = std::min(N, t1 * kRowTile);
    switch (isa) {
#if defined(LMX_X86)
      case Isa::kAvx512Bf16:
        if constexpr (std::is_same_v<T, c10::BFloat16>) return linear_avx512_bf16(x, ldx, M, w, K, bias, y, ldy, n0, n1);
        [[fallthrough]];
      case Isa::kAvx512: linear_avx512(x, ldx, M, w, K, bias, y, ldy, n0, n1); break;
      case Isa::kAvx2: linear_avx2(x, ldx, M, w, K, bias, y, ldy, n0, n1); break;
#endif
      default: linear_portable(x, ldx, M, w, K, bias, y, ldy, n0, n1); break;
    }
  });
}

#define LMX_INSTANTIATE_LINEAR(T) \
  template void linear<T>(const T*, int64_t, int64_t, const T*, int64_t, int64_t, const T*, T*, int64_t);
LMX_INSTANTIATE_LINEAR(float)
LMX_INSTANTIATE_LINEAR(c10::BFloat16)
LMX_INSTANTIATE_LINEAR(c10::Half)

}  // namespace lmx::cpu
