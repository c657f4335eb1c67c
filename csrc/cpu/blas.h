// Optional BLAS sgemm for the attention tiles.
//
// PyTorch's CPU builds carry a BLAS (MKL on x86-64) and export its Fortran `sgemm_`. lmx declares it weak: when
// the loaded torch provides it, the attention kernel multiplies its fp32 tiles with it; when not, blas_sgemm()
// is null and the kernel uses its own vectorised loops. Either way the result is the same to fp32 rounding.
#pragma once

#include <cstdint>

namespace lmx::cpu {

using sgemm_fn = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                          const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                          const float* beta, float* c, const int* ldc);

// The process's sgemm_, or nullptr. LMX_NO_BLAS=1 in the environment forces nullptr (tests use it).
sgemm_fn blas_sgemm();

// Makes the calling thread's BLAS single-threaded (the kernel already runs one task per core) and returns the
// previous thread-local setting for blas_restore_threads. A no-op where the BLAS has no such control.
int blas_single_thread();
void blas_restore_threads(int previous);

// Column-major C[m, n] = alpha * op(A)[m, k] · op(B)[k, n] + beta * C.
inline void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                      int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  blas_sgemm()(&ta, &tb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
}

}  // namespace lmx::cpu
