// Validation shared by the CPU glue (csrc/rotary.cpp, cache.cpp, attention.cpp) and the CUDA glue
// (csrc/cuda/ops_cuda.cpp): one check_<op> function per op validates every argument and returns what the kernels
// need; the small check_* helpers below it are public so either glue can add device-specific checks.
//
// Every user error raises ValueError (bad value, shape or memory layout) or TypeError (bad dtype) worded
// "lmx.<op>: <arg>: expected ..., got ...". Host-side value checks (positions >= 0, slots < capacity, block ids in
// range, cu_seqlens monotone) run only on CPU tensors; the CUDA kernels must clamp or skip out-of-range ids instead.
// Nothing here touches device memory.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <optional>

#include "rope_math.h"

// Both macros need `const char* op` (the op's name) in scope.
#define LMX_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "lmx.", op, ": ", __VA_ARGS__)
#define LMX_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, "lmx.", op, ": ", __VA_ARGS__)

// Dispatch over the activation dtypes the kernels are instantiated for (no float64).
#define LMX_DISPATCH_FLOAT(TYPE, NAME, ...)                                                          \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                           \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)                    \
                                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace lmx {

// Head dims the kernels are built and tested for (CUDA instantiates exactly these).
inline constexpr std::array<int64_t, 10> kHeadDims = {16, 32, 64, 80, 96, 112, 128, 160, 192, 256};
// Cache block sizes: powers of two from 1 to kMaxBlockSize.
inline constexpr int64_t kMaxBlockSize = 256;

// ---------------------------------------------------------------------------------------------------------------
// RoPE parameters: the one table that orders `float[] rope_params`
// ---------------------------------------------------------------------------------------------------------------

// Field i of rope_params is kRopeFields[i]: its name (lmx._C.rope_param_fields() exports the names, and
// lmx/rope.py packs RopeConfig by name from them) and where it goes in RopeParams.
struct RopeField {
  const char* name;
  void (*store)(RopeParams&, double);
};
extern const std::array<RopeField, kRopeParamCount> kRopeFields;

// Validates rope_params (count, every value finite, the rules of its scaling type) and returns RopeParams with
// rotary_dim set.
RopeParams unpack_rope(const char* op, int64_t rotary_dim, c10::ArrayRef<double> rope_params);

// ---------------------------------------------------------------------------------------------------------------
// One function per op: validates every argument; returns what the kernels need
// ---------------------------------------------------------------------------------------------------------------

struct RopeInputs {
  RopeParams rope;   // validated, rotary_dim set
  int64_t num_seqs;  // B: cu_seqlens.size(0) - 1, or 1 without cu_seqlens
};

RopeInputs check_rotary_embedding(const char* op,
                                  const at::Tensor& query,                       // [T, Hq, D], written
                                  const std::optional<at::Tensor>& key,          // [T, Hkv, D], written
                                  const at::Tensor& positions,                   // [T] int64
                                  int64_t rotary_dim,
                                  c10::ArrayRef<double> rope_params,             // kRopeFields order
                                  const std::optional<at::Tensor>& cu_seqlens,   // [B + 1] int32
                                  const std::optional<at::Tensor>& rope_seq_lens);  // [B] int64

RopeInputs check_rotary_embedding_and_cache(const char* op,
                                            const at::Tensor& query,         // [T, Hq, D], written
                                            const at::Tensor& key,           // [T, Hkv, D], written
                                            const at::Tensor& value,         // [T, Hkv, D]
                                            const at::Tensor& k_cache,       // [num_blocks, block_size, Hkv, D], written
                                            const at::Tensor& v_cache,       // same shape and dtype, written
                                            const at::Tensor& slot_mapping,  // [T] int64
                                            const at::Tensor& positions,     // [T] int64
                                            int64_t rotary_dim, c10::ArrayRef<double> rope_params,
                                            const std::optional<at::Tensor>& cu_seqlens,
                                            const std::optional<at::Tensor>& rope_seq_lens,
                                            // Quantized caches only (check_kv_scales); int8: written.
                                            const std::optional<at::Tensor>& k_scales = std::nullopt,
                                            const std::optional<at::Tensor>& v_scales = std::nullopt);

void check_reshape_and_cache(const char* op,
                             const at::Tensor& key,           // [T, Hkv, D]
                             const at::Tensor& value,         // [T, Hkv, D]
                             const at::Tensor& k_cache,       // [num_blocks, block_size, Hkv, D], written
                             const at::Tensor& v_cache,       // same shape and dtype, written
                             const at::Tensor& slot_mapping,  // [T] int64
                             const std::optional<at::Tensor>& k_scales = std::nullopt,  // int8: written
                             const std::optional<at::Tensor>& v_scales = std::nullopt);

struct AttentionShape {
  int64_t num_tokens;          // T
  int64_t num_seqs;            // B
  int64_t num_q_heads;         // Hq >= 1
  int64_t num_kv_heads;        // Hkv >= 1, divides Hq
  int64_t head_dim;            // D, one of kHeadDims
  int64_t num_blocks;
  int64_t block_size;          // a power of two in [1, kMaxBlockSize]
  int64_t max_blocks_per_seq;  // block_tables.size(1)
  float scale;                 // finite and > 0 in fp32
  int64_t sliding_window;      // -1 (none) or > 0
};

AttentionShape check_paged_attention(const char* op,
                                     const at::Tensor& out,           // [T, Hq, D], written
                                     const at::Tensor& query,         // [T, Hq, D]
                                     const at::Tensor& k_cache,       // [num_blocks, block_size, Hkv, D]
                                     const at::Tensor& v_cache,       // same shape and dtype
                                     const at::Tensor& block_tables,  // [B, max_blocks] int32
                                     const at::Tensor& seq_lens,      // [B] int32
                                     const at::Tensor& cu_seqlens_q,  // [B + 1] int32
                                     double scale,
                                     const std::optional<at::Tensor>& alibi_slopes,  // [Hq] fp32
                                     int64_t sliding_window,
                                     const std::optional<at::Tensor>& k_scales = std::nullopt,  // read
                                     const std::optional<at::Tensor>& v_scales = std::nullopt);

// linear: out [M, N] = input [M, K] · weight [N, K]ᵀ (+ bias [N]); one float dtype, one device; input and out
// with their last dim contiguous, weight and bias contiguous, out not overlapping the others.
struct LinearShape {
  int64_t rows;  // M
  int64_t out_features;  // N
  int64_t in_features;   // K
};
LinearShape check_linear(const char* op, const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------------------------------------------------------
// Quantized KV caches (the layout of README "Quantized KV cache"; lmx.reference quantizes the same way)
// ---------------------------------------------------------------------------------------------------------------
//
// The cache dtype selects the format: float32 / bfloat16 / float16 as they are (no scales); int8 rows with an
// asymmetric (scale, zero) per (slot, kv head) in float32 [num_blocks, block_size, Hkv, 2] side tensors written
// beside the cache; float8_e4m3fn with read-only positive finite per-head float32 scales [Hkv].
enum class KvFormat { kFloat, kInt8, kFp8 };
// kFloat for float32 / bfloat16 / float16 (and anything else: check_cache_dtype rejects it).
KvFormat kv_format(at::ScalarType cache_dtype);
// Python's name of a dtype ("float32", "int8", "float8_e4m3fn") for messages.
const char* dtype_name(at::ScalarType dtype);
// k_cache's dtype is one of the five cache dtypes.
void check_cache_dtype(const char* op, const char* name, const at::Tensor& cache);
// k_scales / v_scales as the caches' format needs them: None for float caches; int8: float32, contiguous,
// [num_blocks, block_size, Hkv, 2]; fp8: float32, contiguous, [Hkv], on CPU each value positive and finite.
void check_kv_scales(const char* op, const at::Tensor& k_cache, const std::optional<at::Tensor>& k_scales,
                     const std::optional<at::Tensor>& v_scales);

// The error of a CUDA tensor reaching a build without CUDA kernels.
[[noreturn]] void no_cuda(const char* op);

// ---------------------------------------------------------------------------------------------------------------
// Helpers (each raises the named error)
// ---------------------------------------------------------------------------------------------------------------

void check_device(const char* op, const char* name, const at::Tensor& t, const at::Device& device);
void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype);
void check_float_dtype(const char* op, const char* name, const at::Tensor& t);  // fp32, bf16 or fp16
// A [T, H, D] activation: 3-d, strided layout, last dim contiguous (token and head strides are free, e.g. a slice
// of a fused qkv); `heads` names dim 1 in messages ("num_q_heads", "num_kv_heads"); H >= 1.
void check_token_head(const char* op, const char* name, const at::Tensor& t, const char* heads);
void check_head_dim(const char* op, const char* name, int64_t head_dim);
// 1-d of `size` elements of `dtype`, contiguous.
void check_vector(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype, int64_t size);
// [num_blocks, block_size, num_kv_heads, head_dim], contiguous, block_size a power of two in [1, kMaxBlockSize].
void check_cache(const char* op, const char* name, const at::Tensor& cache, int64_t num_kv_heads, int64_t head_dim);
// [B + 1] int32 (B >= 0); on CPU also: starts at 0, never decreases, ends at num_tokens.
void check_cu_seqlens(const char* op, const char* name, const at::Tensor& cu, int64_t num_tokens);

// Memory: a tensor that an op writes must not have two elements at one address, nor share an address with any
// other argument (exact for strided layouts; see checks.cpp).
void check_no_internal_overlap(const char* op, const char* name, const at::Tensor& t);
void check_disjoint(const char* op, const char* written, const at::Tensor& w, const char* other,
                    const at::Tensor& o);

}  // namespace lmx
