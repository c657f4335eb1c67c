// Widening loads into fp32 vectors, shared by the CPU kernels (attention.cpp, linear.cpp): eight lanes with
// AVX2 + FMA + F16C, sixteen with AVX-512. Each carries its own target attribute, so a file compiled without -m
// flags can call them from functions with the same (or a wider) target; x86-64 only.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#define LMX_SIMD_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LMX_SIMD_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,f16c")))

namespace lmx::cpu::simd {

LMX_SIMD_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
LMX_SIMD_AVX2 inline __m256 load8(const c10::BFloat16* p) {  // bf16 is the top half of an fp32
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
LMX_SIMD_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

LMX_SIMD_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
LMX_SIMD_AVX512 inline __m512 load16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
LMX_SIMD_AVX512 inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

}  // namespace lmx::cpu::simd
#endif
