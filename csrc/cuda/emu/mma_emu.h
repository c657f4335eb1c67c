// nvcuda::wmma under the host emulator (test-only; included by csrc/cuda/compat.cuh instead of <mma.h>).
//
// Exactly what the lmx kernels use: m16n16k16 tiles, matrix_a / matrix_b of __half or __nv_bfloat16 in row_major or
// col_major, float accumulators; fill_fragment, load_matrix_sync, store_matrix_sync, mma_sync. Any other shape or
// type is an incomplete type (a compile error), as an unsupported one is under nvcc.
//
// Fragments are opaque in CUDA (which lane holds which element is unspecified), so the emulator picks its own
// mapping, deliberately scrambled and different for A, B and the accumulator: a kernel that touches fragment
// elements assuming a layout gets wrong results here. Each element (r, c) of a 16x16 tile has the index
// p = (16 r + c) * K_use + C_use (mod 256), an odd multiplier making it a bijection; lane p % 32 holds it in x[p / 32].
//
// Every operation is warp-collective on the emulator's per-warp exchange (lmx_emu::warp_operation): all 32 lanes
// of a warp must reach it with the same arguments (pointer, ldm, layout; for fill_fragment the same value); the
// last lane to arrive performs it for the whole warp. Reported as errors: a warp that is not 32 threads, a lane that
// exited, lanes meeting in different operations or with different arguments (divergent lanes), and what CUDA
// requires of the arguments: a pointer aligned to 32 bytes (256 bits), ldm a multiple of 16 bytes' worth of
// elements. fill_fragment is lane-local in CUDA but "ordinarily called by all lanes with one value"; here it must be.
//
// Arithmetic of mma_sync: each product exactly in fp32 (fp16 x fp16 and bf16 x bf16 fit), accumulated in fp32 in
// k order onto C. Real tensor cores add in an unspecified order and precision; results can differ in the last bits.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace emu {

template <typename Use>
struct Mapping;
template <>
struct Mapping<matrix_a> {
  static constexpr int mul = 37, add = 11;
};
template <>
struct Mapping<matrix_b> {
  static constexpr int mul = 101, add = 5;
};
template <>
struct Mapping<accumulator> {
  static constexpr int mul = 29, add = 17;
};

// Storage element type and elements per lane of every fragment here: 256 elements over 32 lanes.
template <typename Use, typename T, typename Layout>
struct frag {
  using element_type = T;
  using use = Use;
  using layout = Layout;
  static constexpr int num_elements = 8;
  T x[num_elements];
};

template <typename Use>
inline void where(int r, int c, int& lane, int& slot) {
  const int p = ((16 * r + c) * Mapping<Use>::mul + Mapping<Use>::add) & 255;
  lane = p % 32;
  slot = p / 32;
}

}  // namespace emu

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment;  // only the specialisations below exist

template <>
class fragment<matrix_a, 16, 16, 16, __half, row_major> : public emu::frag<matrix_a, __half, row_major> {};
template <>
class fragment<matrix_a, 16, 16, 16, __half, col_major> : public emu::frag<matrix_a, __half, col_major> {};
template <>
class fragment<matrix_b, 16, 16, 16, __half, row_major> : public emu::frag<matrix_b, __half, row_major> {};
template <>
class fragment<matrix_b, 16, 16, 16, __half, col_major> : public emu::frag<matrix_b, __half, col_major> {};
template <>
class fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major>
    : public emu::frag<matrix_a, __nv_bfloat16, row_major> {};
template <>
class fragment<matrix_a, 16, 16, 16, __nv_bfloat16, col_major>
    : public emu::frag<matrix_a, __nv_bfloat16, col_major> {};
template <>
class fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major>
    : public emu::frag<matrix_b, __nv_bfloat16, row_major> {};
template <>
class fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major>
    : public emu::frag<matrix_b, __nv_bfloat16, col_major> {};
template <>
class fragment<accumulator, 16, 16, 16, float> : public emu::frag<accumulator, float, void> {};

namespace emu {

inline float to_f(float x) { return x; }
inline float to_f(__half x) { return __half2float(x); }
inline float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// The arguments every lane must agree on, and the checks CUDA puts on them.
inline ::lmx_emu::WarpOp op_of(const char* name, const void* ptr, unsigned ldm, int layout, size_t elem,
                               uint64_t value = 0) {
  if (ptr != nullptr) {
    if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0)
      ::lmx_emu::fail(::lmx_emu::where() + ": " + name + ": pointer " + std::to_string(reinterpret_cast<uintptr_t>(ptr)) +
                      " is not 32-byte (256-bit) aligned");
    if ((ldm * elem) % 16 != 0)
      ::lmx_emu::fail(::lmx_emu::where() + ": " + name + ": ldm " + std::to_string(ldm) + " is not a multiple of " +
                      std::to_string(16 / elem) + " elements (16 bytes)");
  }
  return ::lmx_emu::WarpOp{name, ptr, ldm, layout, value};
}

inline bool is_row_major(row_major*) { return true; }
inline bool is_row_major(col_major*) { return false; }

}  // namespace emu

// ---- fill_fragment: every element = v -----------------------------------------------------------------------------
template <typename F, typename V>
inline void fill_fragment(F& f, const V& v) {
  using T = typename F::element_type;
  const T value = static_cast<T>(v);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  ::lmx_emu::warp_operation(emu::op_of("fill_fragment", nullptr, 0, 0, sizeof(T), bits), &f,
                            [](const ::lmx_emu::WarpOp& op, void* const* lanes) {
                              T v;
                              std::memcpy(&v, &op.value, sizeof(T));
                              for (int l = 0; l < 32; ++l)
                                for (auto& x : static_cast<F*>(lanes[l])->x) x = v;
                            });
}

// ---- load_matrix_sync ------------------------------------------------------------------------------------------
// matrix_a / matrix_b: the layout is the fragment's.
template <typename Use, typename T, typename L>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, 16, 16, 16, T, L>;
  const bool row = emu::is_row_major(static_cast<L*>(nullptr));
  ::lmx_emu::warp_operation(emu::op_of("load_matrix_sync", p, ldm, row ? 0 : 1, sizeof(T)), &f,
                            [](const ::lmx_emu::WarpOp& op, void* const* lanes) {
                              const T* src = static_cast<const T*>(op.ptr);
                              for (int r = 0; r < 16; ++r)
                                for (int c = 0; c < 16; ++c) {
                                  int lane, slot;
                                  emu::where<Use>(r, c, lane, slot);
                                  static_cast<F*>(lanes[lane])->x[slot] =
                                      src[op.layout == 0 ? r * op.ldm + c : c * op.ldm + r];
                                }
                            });
}
// accumulator: the layout is an argument.
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, 16, 16, 16, float>;
  ::lmx_emu::warp_operation(emu::op_of("load_matrix_sync", p, ldm, layout, sizeof(float)), &f,
                            [](const ::lmx_emu::WarpOp& op, void* const* lanes) {
                              const float* src = static_cast<const float*>(op.ptr);
                              for (int r = 0; r < 16; ++r)
                                for (int c = 0; c < 16; ++c) {
                                  int lane, slot;
                                  emu::where<accumulator>(r, c, lane, slot);
                                  static_cast<F*>(lanes[lane])->x[slot] =
                                      src[op.layout == mem_row_major ? r * op.ldm + c : c * op.ldm + r];
                                }
                            });
}

// ---- store_matrix_sync (accumulator) ------------------------------------------------------------------------
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  using F = fragment<accumulator, 16, 16, 16, float>;
  ::lmx_emu::warp_operation(emu::op_of("store_matrix_sync", p, ldm, layout, sizeof(float)), const_cast<F*>(&f),
                            [](const ::lmx_emu::WarpOp& op, void* const* lanes) {
                              float* dst = const_cast<float*>(static_cast<const float*>(op.ptr));
                              for (int r = 0; r < 16; ++r)
                                for (int c = 0; c < 16; ++c) {
                                  int lane, slot;
                                  emu::where<accumulator>(r, c, lane, slot);
                                  dst[op.layout == mem_row_major ? r * op.ldm + c : c * op.ldm + r] =
                                      static_cast<const F*>(lanes[lane])->x[slot];
                                }
                            });
}

// ---- mma_sync: D = A B + C ----------------------------------------------------------------------------------
template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  using FA = fragment<matrix_a, 16, 16, 16, T, LA>;
  using FB = fragment<matrix_b, 16, 16, 16, T, LB>;
  using FC = fragment<accumulator, 16, 16, 16, float>;
  struct Lane {
    FC* d;
    const FA* a;
    const FB* b;
    const FC* c;
  } mine{&d, &a, &b, &c};
  ::lmx_emu::warp_operation(emu::op_of("mma_sync", nullptr, 0, 0, sizeof(T)), &mine,
                            [](const ::lmx_emu::WarpOp&, void* const* lanes) {
                              float A[16][16], B[16][16], C[16][16];
                              for (int r = 0; r < 16; ++r)
                                for (int k = 0; k < 16; ++k) {
                                  int lane, slot;
                                  emu::where<matrix_a>(r, k, lane, slot);
                                  A[r][k] = emu::to_f(static_cast<const Lane*>(lanes[lane])->a->x[slot]);
                                  emu::where<matrix_b>(r, k, lane, slot);  // B row r (= k index), column k (= n)
                                  B[r][k] = emu::to_f(static_cast<const Lane*>(lanes[lane])->b->x[slot]);
                                  emu::where<accumulator>(r, k, lane, slot);
                                  C[r][k] = static_cast<const Lane*>(lanes[lane])->c->x[slot];
                                }
                              // All of A, B, C are gathered before D is written: d may alias c.
                              for (int m = 0; m < 16; ++m)
                                for (int n = 0; n < 16; ++n) {
                                  float acc = C[m][n];
                                  for (int k = 0; k < 16; ++k) acc += A[m][k] * B[k][n];
                                  int lane, slot;
                                  emu::where<accumulator>(m, n, lane, slot);
                                  static_cast<const Lane*>(lanes[lane])->d->x[slot] = acc;
                                }
                            });
}

}  // namespace nvcuda::wmma
