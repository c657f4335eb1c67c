// Run-time choice of the paged-attention build (attention.cpp is compiled once per instruction set).
#include <cstdlib>
#include <cstring>

#include "blas.h"
#include "kernels.h"

extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*)
    __attribute__((weak));
// MKL's per-thread override (an OpenMP BLAS called inside a parallel region may otherwise start threads of its own).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // mkl_service.h maps the C name here

namespace lmx::cpu {

#define LMX_DECLARE_ISA(isa)                                                                              \
  namespace isa {                                                                                         \
  template <typename scalar_t>                                                                            \
  void paged_attention(const AttentionParams&, TokenHeadView<scalar_t>, TokenHeadView<const scalar_t>,   \
                       const scalar_t*, const scalar_t*);                                                 \
  template <typename scalar_t>                                                                            \
  void paged_attention_quant(const AttentionParams&, TokenHeadView<scalar_t>, TokenHeadView<const scalar_t>, \
                             const QuantCacheIn&);                                                        \
  }
LMX_DECLARE_ISA(baseline)
#if defined(LMX_HAVE_AVX2)
LMX_DECLARE_ISA(avx2)
#endif

namespace {
// LMX_CPU_ISA=baseline forces the portable build, LMX_CPU_ISA=avx2 the AVX2 build without its AVX-512 tiles,
// LMX_CPU_ISA=avx512 the fp32 AVX-512 tiles for bf16 too (tests use them to cover every path).
bool use_avx2() {
#if defined(LMX_HAVE_AVX2)
  static const bool yes = [] {
    const char* isa = std::getenv("LMX_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return yes;
#else
  return false;
#endif
}
}  // namespace

bool cpu_avx512_tiles() {
#if defined(LMX_HAVE_AVX2)
  static const bool yes = [] {
    const char* isa = std::getenv("LMX_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "avx2") == 0) return false;
    return use_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  }();
  return yes;
#else
  return false;
#endif
}

bool cpu_avx512_bf16_tiles() {
#if defined(LMX_HAVE_AVX2)
  static const bool yes = [] {
    const char* isa = std::getenv("LMX_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "avx512") == 0) return false;
    return cpu_avx512_tiles() && __builtin_cpu_supports("avx512bf16");
  }();
  return yes;
#else
  return false;
#endif
}

sgemm_fn blas_sgemm() {
  static const sgemm_fn fn = [] {
    const char* off = std::getenv("LMX_NO_BLAS");
    if (off != nullptr && std::strcmp(off, "0") != 0 && std::strcmp(off, "") != 0) return sgemm_fn{nullptr};
    return static_cast<sgemm_fn>(&sgemm_);
  }();
  return fn;
}

int blas_single_thread() { return &MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0; }

void blas_restore_threads(int previous) {
  if (&MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
}

const char* attention_isa() {
  return cpu_avx512_bf16_tiles() ? "avx512_bf16" : cpu_avx512_tiles() ? "avx512" : use_avx2() ? "avx2" : "baseline";
}

template <typename scalar_t>
void paged_attention(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                     const scalar_t* k_cache, const scalar_t* v_cache) {
#if defined(LMX_HAVE_AVX2)
  if (use_avx2()) return avx2::paged_attention<scalar_t>(p, out, query, k_cache, v_cache);
#endif
  baseline::paged_attention<scalar_t>(p, out, query, k_cache, v_cache);
}

template <typename scalar_t>
void paged_attention_quant(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                           const QuantCacheIn& cache) {
#if defined(LMX_HAVE_AVX2)
  if (use_avx2()) return avx2::paged_attention_quant<scalar_t>(p, out, query, cache);
#endif
  baseline::paged_attention_quant<scalar_t>(p, out, query, cache);
}

LMX_INSTANTIATE_PAGED_ATTENTION(float)
LMX_INSTANTIATE_PAGED_ATTENTION(c10::BFloat16)
LMX_INSTANTIATE_PAGED_ATTENTION(c10::Half)

}  // namespace lmx::cpu
