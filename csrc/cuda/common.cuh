// Small device helpers shared by the lmx CUDA kernels: dtype conversion, two-element loads/stores, warp reductions.
#pragma once

#include <cstdint>

#include "compat.cuh"

namespace lmx::cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two adjacent elements (an even channel and the next one) as one load / store.
template <typename T>
struct Pair;
template <>
struct Pair<float> {
  using type = float2;
  static __device__ __forceinline__ float2 to_float2(float2 v) { return v; }
  static __device__ __forceinline__ float2 from_float2(float2 v) { return v; }
};
template <>
struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
  static __device__ __forceinline__ __half2 from_float2(float2 v) { return __floats2half2_rn(v.x, v.y); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ __nv_bfloat162 from_float2(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
};

// Elements (i, i + 1) of p, i even, p 4-byte aligned (fp16/bf16) or 8-byte aligned (fp32) at even offsets.
template <typename T>
__device__ __forceinline__ float2 load_pair(const T* p) {
  return Pair<T>::to_float2(*reinterpret_cast<const typename Pair<T>::type*>(p));
}
template <typename T>
__device__ __forceinline__ void store_pair(T* p, float2 v) {
  *reinterpret_cast<typename Pair<T>::type*>(p) = Pair<T>::from_float2(v);
}

// Butterfly reductions over groups of `width` consecutive lanes (width a power of two <= 32); every lane of the
// group gets the result. All 32 lanes of the warp must call them.
__device__ __forceinline__ float group_sum(float v, int width) {
  for (int m = width / 2; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
__device__ __forceinline__ float group_max(float v, int width) {
  for (int m = width / 2; m > 0; m /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// min / max that read the same under nvcc and a host compiler (no std:: in device code, no ::max on the host).
template <typename T>
__host__ __device__ __forceinline__ T imin(T a, T b) { return a < b ? a : b; }
template <typename T>
__host__ __device__ __forceinline__ T imax(T a, T b) { return a < b ? b : a; }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sequence holding token t: the last b with cu[b] <= t (cu non-decreasing; clamped to [0, num_seqs - 1] so that
// bad device-side values never index out of bounds).
__device__ __forceinline__ int seq_of_token(const int32_t* cu, int num_seqs, int64_t t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

}  // namespace lmx::cuda
