// Host entry points of the lmx CUDA kernels: plain pointers, strides and sizes, a stream; no torch types.
// Defined (and explicitly instantiated for float, __half, __nv_bfloat16) in csrc/cuda/*_kernels.cu; called by the
// torch glue csrc/cuda/ops_cuda.cpp and, under the host emulator, by the test module in tests/cuda/emu/.
//
// Inputs are validated by the glue (csrc/checks.h) except device-side values, which the kernels treat safely:
// a slot outside [0, num_slots) is skipped, a block id outside [0, num_blocks) hides its keys, cu_seqlens and
// seq_lens are clamped to what the tensors hold. Nothing out of range is ever read or written.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <driver_types.h>

#include <cstddef>
#include <cstdint>

#include "../rope_math.h"

namespace lmx::cuda {

// A [num_tokens, num_heads, head_dim] tensor whose last dim is contiguous:
// element (t, h, d) is data[t * token_stride + h * head_stride + d].
template <typename T>
struct HeadsView {
  T* data;
  int64_t token_stride;
  int64_t head_stride;
  int num_heads;
};

// ---- quantized KV caches (issue 12; arithmetic in csrc/cuda/kv_quant.cuh) -------------------------------------
// Cache element types besides the activation types: int8_t (per (slot, kv head) fp32 (scale, zero) in a side tensor
// [num_blocks, block_size, Hkv, 2]) and fp8_e4m3 (float8_e4m3fn bits; per-head fp32 scales [Hkv], read only).
struct fp8_e4m3 {
  uint8_t bits;
};
static_assert(sizeof(fp8_e4m3) == 1, "one byte per element");

// The K / V caches an attention kernel reads: [num_blocks, block_size, Hkv, head_dim] of C, and for int8 / fp8
// their side scales (null for the unquantized caches).
template <typename C>
struct KvCache {
  const C* k;
  const C* v;
  const float* k_scales;
  const float* v_scales;
};

// ---- rotary embedding (+ fused cache write) -------------------------------------------------------------------
// Floats of workspace launch_rotary_embedding needs: one inverse-frequency table per sequence under dynamic NTK,
// one in all otherwise.
int64_t rotary_workspace_floats(const RopeParams& rope, int num_seqs);

// Rotates query and key (key.data may be null) in place. With k_cache non-null also writes the rotated key and value
// of token t to slot slot_mapping[t] of the caches [num_slots / block_size, block_size, Hkv, head_dim] (skipped when
// the slot is outside [0, num_slots)).
// C: the cache type, T itself or (with k_scales / v_scales) int8_t / fp8_e4m3, the rotated key being quantized as
// the op leaves it in `key` (in T).
template <typename T, typename C>
void launch_rotary_embedding(const RopeParams& rope, bool is_neox, bool precise, int64_t num_tokens, int head_dim,
                             const int64_t* positions,      // [T]
                             const int32_t* cu_seqlens,     // [B + 1] or null (one sequence)
                             const int64_t* rope_seq_lens,  // [B] or null
                             int num_seqs, float* workspace, HeadsView<T> query, HeadsView<T> key,
                             HeadsView<const T> value, C* k_cache, C* v_cache, float* k_scales, float* v_scales,
                             const int64_t* slot_mapping, int64_t num_slots, cudaStream_t stream);
// The unquantized cache (C = T).
template <typename T>
inline void launch_rotary_embedding(const RopeParams& rope, bool is_neox, bool precise, int64_t num_tokens,
                                    int head_dim, const int64_t* positions, const int32_t* cu_seqlens,
                                    const int64_t* rope_seq_lens, int num_seqs, float* workspace, HeadsView<T> query,
                                    HeadsView<T> key, HeadsView<const T> value, T* k_cache, T* v_cache,
                                    const int64_t* slot_mapping, int64_t num_slots, cudaStream_t stream) {
  launch_rotary_embedding<T, T>(rope, is_neox, precise, num_tokens, head_dim, positions, cu_seqlens, rope_seq_lens,
                                num_seqs, workspace, query, key, value, k_cache, v_cache, nullptr, nullptr,
                                slot_mapping, num_slots, stream);
}

// ---- paged KV cache write -------------------------------------------------------------------------------------
// Pairs (In, Cache): equal, or one of them float.
template <typename In, typename Cache>
void launch_reshape_and_cache(int64_t num_tokens, int head_dim, HeadsView<const In> key, HeadsView<const In> value,
                              Cache* k_cache, Cache* v_cache, const int64_t* slot_mapping, int64_t num_slots,
                              cudaStream_t stream);
// Quantized caches, Q = int8_t (k_scales / v_scales [num_slots, Hkv, 2] written at the same slots) or fp8_e4m3
// (k_scales / v_scales [Hkv] read); In any activation type.
template <typename In, typename Q>
void launch_reshape_and_cache_quant(int64_t num_tokens, int head_dim, HeadsView<const In> key,
                                    HeadsView<const In> value, Q* k_cache, Q* v_cache, float* k_scales,
                                    float* v_scales, const int64_t* slot_mapping, int64_t num_slots,
                                    cudaStream_t stream);

// ---- paged attention ------------------------------------------------------------------------------------------
struct PagedAttentionArgs {
  int64_t num_tokens;      // T: rows of query / out
  int num_seqs;            // B
  int num_q_heads;         // Hq
  int num_kv_heads;        // Hkv, divides Hq
  int head_dim;            // even, <= 256
  int block_size;          // power of two, 1..256
  int max_blocks_per_seq;  // columns of block_tables
  int64_t num_blocks;      // cache blocks (dim 0 of the caches)
  float scale;
  int sliding_window;            // <= 0: none
  const int32_t* block_tables;   // [B, max_blocks_per_seq]
  const int32_t* seq_lens;       // [B]
  const int32_t* cu_seqlens_q;   // [B + 1]
  const float* alibi_slopes;     // [Hq] or null
};

// Decode kernel (any number of queries per sequence; one block per query token and group of query heads sharing a KV
// head), split-K over the keys in partitions of `partition_size` (a multiple of 64), merged in fp32.
// 0 means the default. The workspace (decode_workspace_bytes, may be 0) holds the fp32 partials.
int decode_partition_size(const PagedAttentionArgs& a, int partition_size);
int decode_num_splits(const PagedAttentionArgs& a, int partition_size);
size_t decode_workspace_bytes(const PagedAttentionArgs& a, int partition_size);
// C: the cache type (T, int8_t or fp8_e4m3), dequantized in registers; softmax and accumulation in fp32.
template <typename T, typename C>
void launch_paged_attention_decode(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                   KvCache<C> kv, void* workspace, int partition_size, cudaStream_t stream);
template <typename T>
inline void launch_paged_attention_decode(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                          const T* k_cache, const T* v_cache, void* workspace, int partition_size,
                                          cudaStream_t stream) {
  launch_paged_attention_decode<T, T>(a, out, query, KvCache<T>{k_cache, v_cache, nullptr, nullptr}, workspace,
                                      partition_size, stream);
}

// Prefill / chunked-prefill kernel on CUDA cores: tiles of query rows (token, query head of one KV head) against
// tiles of keys staged in shared memory, online softmax in fp32.
// C as for the decode kernel: K / V tiles dequantized to fp32 in shared memory.
template <typename T, typename C>
void launch_paged_attention_prefill(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                    KvCache<C> kv, cudaStream_t stream);
template <typename T>
inline void launch_paged_attention_prefill(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                           const T* k_cache, const T* v_cache, cudaStream_t stream) {
  launch_paged_attention_prefill<T, T>(a, out, query, KvCache<T>{k_cache, v_cache, nullptr, nullptr}, stream);
}

// Prefill / chunked-prefill kernel on tensor cores (nvcuda::wmma m16n16k16, fp32 accumulators, online softmax in
// fp32), fp16 and bf16 only (T = __half or __nv_bfloat16), head dims that are multiples of 16
// (prefill_wmma_supported). Same inputs and results as launch_paged_attention_prefill, up to rounding.
bool prefill_wmma_supported(const PagedAttentionArgs& a);
// C: T, or int8_t / fp8_e4m3 dequantized (fp32 arithmetic, one rounding to T) into the K / V tiles in shared memory.
template <typename T, typename C>
void launch_paged_attention_prefill_wmma(const PagedAttentionArgs& a, HeadsView<T> out, HeadsView<const T> query,
                                         KvCache<C> kv, cudaStream_t stream);
template <typename T>
inline void launch_paged_attention_prefill_wmma(const PagedAttentionArgs& a, HeadsView<T> out,
                                                HeadsView<const T> query, const T* k_cache, const T* v_cache,
                                                cudaStream_t stream) {
  launch_paged_attention_prefill_wmma<T, T>(a, out, query, KvCache<T>{k_cache, v_cache, nullptr, nullptr}, stream);
}

// The glue's choice between the kernels (all are correct for every input they take): decode when there is about one
// query per sequence; otherwise the tensor-core prefill kernel for fp16 / bf16 with head_dim % 16 == 0, the
// CUDA-core one for the rest. fp32 stays on CUDA cores: wmma has no fp32 inputs, and TF32 (10-bit mantissas) would
// give up the fp32 accuracy the op promises (the CPU kernels' and the reference's).
inline bool use_decode_kernel(const PagedAttentionArgs& a) { return a.num_tokens <= a.num_seqs; }
inline bool use_prefill_wmma(const PagedAttentionArgs& a, bool is_16bit) { return is_16bit && prefill_wmma_supported(a); }

}  // namespace lmx::cuda
