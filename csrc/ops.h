// Every entry point of torch.ops.lmx.*, CPU and CUDA, with the C++ signature of its schema (csrc/registration.cpp).
//
// Shapes (DESIGN.md §2): T tokens packed over B sequences; Hq query heads, Hkv kv heads (Hq % Hkv == 0); head
// dim D (one of kHeadDims, csrc/checks.h); caches NHD [num_blocks, block_size, Hkv, D], contiguous. Activations
// [T, H, D] need only their last dim contiguous. In-place ops put what they write first and return nothing.
//
// The *_cpu functions are defined in csrc/rotary.cpp, cache.cpp and attention.cpp; the *_cuda ones in
// csrc/cuda/ops_cuda.cpp, only when LMX_WITH_CUDA. Each validates its arguments with csrc/checks.h first.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace lmx {
namespace cpu {
struct QuantCacheOut;
}

// The int8 / float8_e4m3fn cache pair and its scales as the CPU kernels take them (csrc/cache.cpp).
cpu::QuantCacheOut quant_cache_out(at::Tensor& k_cache, at::Tensor& v_cache, const std::optional<at::Tensor>& k_scales,
                                   const std::optional<at::Tensor>& v_scales);

// Rotates the first rotary_dim channels of every head of query (and key) in place, with each sequence's RoPE
// base (dynamic NTK: from rope_seq_lens[b], or max(position) + 1 of the sequence without it).
void rotary_embedding_cpu(at::Tensor& query,                               // [T, Hq, D], written
                          const std::optional<at::Tensor>& key,            // [T, Hkv, D], written; or none
                          const at::Tensor& positions,                     // [T] int64, >= 0
                          int64_t rotary_dim,                              // even, <= D
                          bool is_neox,                                    // rotate halves (true) or pairs
                          c10::ArrayRef<double> rope_params,               // kRopeFields order (checks.h)
                          const std::optional<at::Tensor>& cu_seqlens,     // [B + 1] int32; none: one sequence
                          const std::optional<at::Tensor>& rope_seq_lens,  // [B] int64, >= 1
                          bool precise);                                   // angle in float64

// rotary_embedding of query and key, then the rotated key and value written to slot_mapping[t] of the caches.
void rotary_embedding_and_cache_cpu(at::Tensor& query,                  // [T, Hq, D], written
                                    at::Tensor& key,                    // [T, Hkv, D], written
                                    const at::Tensor& value,            // [T, Hkv, D]
                                    at::Tensor& k_cache,                // [num_blocks, block_size, Hkv, D], written
                                    at::Tensor& v_cache,                // [num_blocks, block_size, Hkv, D], written
                                    const at::Tensor& slot_mapping,     // [T] int64, < num_blocks * block_size
                                    const at::Tensor& positions,        // [T] int64
                                    int64_t rotary_dim, bool is_neox,
                                    c10::ArrayRef<double> rope_params,
                                    const std::optional<at::Tensor>& cu_seqlens,     // [B + 1] int32
                                    const std::optional<at::Tensor>& rope_seq_lens,  // [B] int64
                                    bool precise,
    const std::optional<at::Tensor>& k_scales,   // int8 [num_blocks, block_size, Hkv, 2] (written); fp8 [Hkv]
    const std::optional<at::Tensor>& v_scales);

// Writes key / value token t to slot slot_mapping[t] (block * block_size + offset; negative: skip); the caches
// may have another dtype than key / value when one of the two is float32.
void reshape_and_cache_cpu(const at::Tensor& key,            // [T, Hkv, D]
                           const at::Tensor& value,          // [T, Hkv, D]
                           at::Tensor& k_cache,              // [num_blocks, block_size, Hkv, D], written
                           at::Tensor& v_cache,              // [num_blocks, block_size, Hkv, D], written
                           const at::Tensor& slot_mapping,  // [T] int64
    const std::optional<at::Tensor>& k_scales,   // int8 [num_blocks, block_size, Hkv, 2] (written); fp8 [Hkv]
    const std::optional<at::Tensor>& v_scales);

// out = softmax(scale * q kᵀ + alibi) v over each sequence's cached keys, causally: the n_b queries of sequence
// b are its last n_b tokens. Decode, prefill and chunked prefill in one op.
void paged_attention_cpu(at::Tensor& out,                                // [T, Hq, D], written
                         const at::Tensor& query,                        // [T, Hq, D]
                         const at::Tensor& k_cache,                      // [num_blocks, block_size, Hkv, D]
                         const at::Tensor& v_cache,                      // [num_blocks, block_size, Hkv, D]
                         const at::Tensor& block_tables,                 // [B, max_blocks] int32
                         const at::Tensor& seq_lens,                     // [B] int32, this step's tokens included
                         const at::Tensor& cu_seqlens_q,                 // [B + 1] int32
                         double scale,                                   // finite and > 0 in fp32
                         const std::optional<at::Tensor>& alibi_slopes,  // [Hq] fp32; or none
                         int64_t sliding_window,  // -1 (none) or > 0
    const std::optional<at::Tensor>& k_scales,   // quantized caches: as the cache writes wrote them
    const std::optional<at::Tensor>& v_scales);

// out = input · weightᵀ (+ bias), fp32 sums rounded once (csrc/cpu/linear.cpp): lmx's GEMV for the few rows of a
// decode step. linear_other is the same op on other devices, through at::linear_out.
void linear_cpu(at::Tensor& out,                         // [M, N], written
                const at::Tensor& input,                 // [M, K]
                const at::Tensor& weight,                // [N, K], contiguous
                const std::optional<at::Tensor>& bias);  // [N]; or none
void linear_other(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias);

// The same four on CUDA tensors (csrc/cuda/ops_cuda.cpp; defined only when LMX_WITH_CUDA).
void rotary_embedding_cuda(at::Tensor& query,                               // [T, Hq, D], written
                           const std::optional<at::Tensor>& key,            // [T, Hkv, D], written; or none
                           const at::Tensor& positions,                     // [T] int64
                           int64_t rotary_dim, bool is_neox,
                           c10::ArrayRef<double> rope_params,               // kRopeFields order
                           const std::optional<at::Tensor>& cu_seqlens,     // [B + 1] int32
                           const std::optional<at::Tensor>& rope_seq_lens,  // [B] int64
                           bool precise);

void rotary_embedding_and_cache_cuda(at::Tensor& query,               // [T, Hq, D], written
                                     at::Tensor& key,                 // [T, Hkv, D], written
                                     const at::Tensor& value,         // [T, Hkv, D]
                                     at::Tensor& k_cache,             // [num_blocks, block_size, Hkv, D], written
                                     at::Tensor& v_cache,             // [num_blocks, block_size, Hkv, D], written
                                     const at::Tensor& slot_mapping,  // [T] int64
                                     const at::Tensor& positions,     // [T] int64
                                     int64_t rotary_dim, bool is_neox,
                                     c10::ArrayRef<double> rope_params,
                                     const std::optional<at::Tensor>& cu_seqlens,     // [B + 1] int32
                                     const std::optional<at::Tensor>& rope_seq_lens,  // [B] int64
                                     bool precise,
    const std::optional<at::Tensor>& k_scales,   // int8 [num_blocks, block_size, Hkv, 2] (written); fp8 [Hkv]
    const std::optional<at::Tensor>& v_scales);

void reshape_and_cache_cuda(const at::Tensor& key,            // [T, Hkv, D]
                            const at::Tensor& value,          // [T, Hkv, D]
                            at::Tensor& k_cache,              // [num_blocks, block_size, Hkv, D], written
                            at::Tensor& v_cache,              // [num_blocks, block_size, Hkv, D], written
                            const at::Tensor& slot_mapping,  // [T] int64
    const std::optional<at::Tensor>& k_scales,   // int8 [num_blocks, block_size, Hkv, 2] (written); fp8 [Hkv]
    const std::optional<at::Tensor>& v_scales);

void paged_attention_cuda(at::Tensor& out,                                // [T, Hq, D], written
                          const at::Tensor& query,                        // [T, Hq, D]
                          const at::Tensor& k_cache,                      // [num_blocks, block_size, Hkv, D]
                          const at::Tensor& v_cache,                      // [num_blocks, block_size, Hkv, D]
                          const at::Tensor& block_tables,                 // [B, max_blocks] int32
                          const at::Tensor& seq_lens,                     // [B] int32
                          const at::Tensor& cu_seqlens_q,                 // [B + 1] int32
                          double scale,
                          const std::optional<at::Tensor>& alibi_slopes,  // [Hq] fp32; or none
                          int64_t sliding_window,
    const std::optional<at::Tensor>& k_scales,   // quantized caches: as the cache writes wrote them
    const std::optional<at::Tensor>& v_scales);

}  // namespace lmx
