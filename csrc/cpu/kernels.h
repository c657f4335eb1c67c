// CPU kernels of lmx: plain pointers, strides and sizes; no torch types past this line except the scalar types.
// Inputs are validated by csrc/checks.cpp before any of these runs.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../rope_math.h"

namespace lmx::cpu {

// A [T, H, D] tensor whose last dim is contiguous: element (t, h, d) is at data[t * token_stride + h * head_stride + d].
template <typename T>
struct TokenHeadView {
  T* data;
  int64_t token_stride;
  int64_t head_stride;
  int64_t num_heads;
};

// A quantized cache pair being written (csrc/kv_quant_math.h): int8 rows plus their (scale, zero) [slots, Hkv, 2]
// (written), or float8_e4m3fn bytes with per-head scales [Hkv] (read).
struct QuantCacheOut {
  bool int8;       // false: float8_e4m3fn
  void* k;         // [num_blocks, block_size, Hkv, D] int8_t or uint8_t (fp8 bits), contiguous
  void* v;
  float* k_scales;
  float* v_scales;
};

// The same, read by paged attention.
struct QuantCacheIn {
  bool int8;
  const void* k;
  const void* v;
  const float* k_scales;
  const float* v_scales;
};

// Rotary embedding in place on query and (optionally) key.
template <typename scalar_t>
void rotary_embedding(const RopeParams& rope,
                      bool is_neox,
                      bool precise,
                      int64_t num_tokens,
                      int64_t head_dim,
                      const int64_t* positions,        // [T]
                      const int32_t* cu_seqlens,       // [B + 1] or nullptr (one sequence)
                      const int64_t* rope_seq_lens,    // [B] or nullptr (max position + 1 per sequence)
                      int64_t num_seqs,
                      TokenHeadView<scalar_t> query,   // [T, Hq, D]
                      TokenHeadView<scalar_t> key,     // [T, Hkv, D]; data == nullptr for none
                      // Optional fused cache write of the rotated key and of value (k_cache == nullptr: none).
                      TokenHeadView<const scalar_t> value,  // [T, Hkv, D]
                      scalar_t* k_cache,               // [num_blocks, block_size, Hkv, D], contiguous
                      scalar_t* v_cache,
                      const int64_t* slot_mapping,     // [T]; negative = skip
                      const QuantCacheOut* quant = nullptr);  // instead of k_cache / v_cache: quantized caches

// Scatter key / value rows into the paged caches (cache dtype may differ from the input dtype).
template <typename in_t, typename cache_t>
void reshape_and_cache(int64_t num_tokens,
                       int64_t head_dim,
                       TokenHeadView<const in_t> key,     // [T, Hkv, D]
                       TokenHeadView<const in_t> value,   // [T, Hkv, D]
                       cache_t* k_cache,                  // [num_blocks, block_size, Hkv, D], contiguous
                       cache_t* v_cache,
                       const int64_t* slot_mapping);      // [T]

// reshape_and_cache into a quantized cache pair (any activation dtype in).
template <typename in_t>
void reshape_and_cache_quant(int64_t num_tokens, int64_t head_dim, TokenHeadView<const in_t> key,
                             TokenHeadView<const in_t> value, const QuantCacheOut& cache,
                             const int64_t* slot_mapping);

struct AttentionParams {
  int64_t num_seqs;
  int64_t num_q_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t block_size;
  int64_t max_blocks_per_seq;
  float scale;
  int64_t sliding_window;        // <= 0: none
  const int32_t* block_tables;   // [B, max_blocks]
  const int32_t* seq_lens;       // [B]
  const int32_t* cu_seqlens_q;   // [B + 1]
  const float* alibi_slopes;     // [Hq] or nullptr
};

// out[T, Hq, D] = paged attention of query over the caches. Implemented once per instruction set
// (attention.cpp is compiled for AVX2+FMA and for the baseline) and chosen at run time.
template <typename scalar_t>
void paged_attention(const AttentionParams& p,
                     TokenHeadView<scalar_t> out,
                     TokenHeadView<const scalar_t> query,
                     const scalar_t* k_cache,   // [num_blocks, block_size, Hkv, D], contiguous
                     const scalar_t* v_cache);

// paged_attention over int8 or float8_e4m3fn caches: rows dequantized in registers (direct kernels) or into the
// fp32 tiles (prefill), fp32 scores, softmax and accumulation.
template <typename scalar_t>
void paged_attention_quant(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                           const QuantCacheIn& cache);

// Explicit instantiations of paged_attention<T> for the activation dtypes, in the current namespace.
#define LMX_INSTANTIATE_PAGED_ATTENTION(T)                                                                 \
  template void paged_attention<T>(const AttentionParams&, TokenHeadView<T>, TokenHeadView<const T>, const T*, \
                                   const T*);                                                              \
  template void paged_attention_quant<T>(const AttentionParams&, TokenHeadView<T>, TokenHeadView<const T>,   \
                                         const QuantCacheIn&);

// y[m, n] = Σ_k x[m, k] w[n, k] (+ bias[n]) in fp32, rounded once to T: x [M, K] (row stride ldx), w [N, K]
// contiguous, bias [N] or nullptr, y [M, N] (row stride ldy). Every output's sum order depends only on K (not on
// the thread count or M). Threads: at::parallel_for over tiles of weight rows (csrc/cpu/linear.cpp).
template <typename T>
void linear(const T* x, int64_t ldx, int64_t M, const T* w, int64_t N, int64_t K, const T* bias, T* y, int64_t ldy);

// Name of the instruction set paged_attention uses on this machine: "avx512_bf16" (the AVX2 build with AVX-512
// tiles for prefill, AVX512-BF16 ones for bf16), "avx512", "avx2" or "baseline". LMX_CPU_ISA=avx512, =avx2 or
// =baseline forces the narrower ones.
const char* attention_isa();

// Whether the AVX2 build multiplies its prefill tiles with its AVX-512 kernels (the CPU has AVX-512F and
// LMX_CPU_ISA does not ask for avx2 or baseline) instead of the BLAS.
bool cpu_avx512_tiles();

// Whether bf16 activations use the AVX512-BF16 tiles (bf16 pair dot products, P rounded to bf16) on top of
// cpu_avx512_tiles(): the CPU has AVX512-BF16 and LMX_CPU_ISA does not ask for avx512 (fp32 tiles) or narrower.
bool cpu_avx512_bf16_tiles();

}  // namespace lmx::cpu
