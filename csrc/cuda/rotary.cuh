// Rotary embedding on CUDA: query and key rotated in place, optionally followed by the cache write of the rotated
// key and of value (the fused rotary_embedding_and_cache). The math is csrc/rope_math.h, shared with the CPU.
//
// Two kernels: rope_inv_freq_kernel fills one table of rotary_dim / 2 inverse frequencies per sequence (dynamic
// NTK: each sequence has its own base) or one in all; rotary_kernel then handles one token per block: cos / sin
// of the token's position into shared memory, then every (head, pair) of query and key, then the cache copies.
#pragma once

#include "../rope_math.h"
#include "common.cuh"
#include "kv_quant.cuh"
#include "launchers.h"

namespace lmx::cuda {

constexpr int kRopeThreads = 128;

// Block b writes table b. Dynamic NTK without rope_seq_lens: the sequence's max(position) + 1 (transformers' rule).
__global__ void __launch_bounds__(kRopeThreads)
    rope_inv_freq_kernel(RopeParams rope, int64_t num_tokens, const int64_t* __restrict__ positions,
                         const int32_t* __restrict__ cu_seqlens, const int64_t* __restrict__ rope_seq_lens,
                         int num_seqs, float* __restrict__ tables) {
  const int b = blockIdx.x, half = rope.rotary_dim / 2;
  double base = rope.base;
  if (rope.scaling == RopeScaling::kDynamic) {
    LMX_DYNAMIC_SMEM(int64_t, red);  // [kRopeThreads / 32]
    int64_t seq_len = 0;
    if (rope_seq_lens != nullptr) {
      seq_len = rope_seq_lens[b];
    } else {
      int64_t begin = 0, end = num_tokens;
      if (cu_seqlens != nullptr) {  // clamped: device-side values are not checked by the host
        begin = imin<int64_t>(imax<int64_t>(cu_seqlens[b], 0), num_tokens);
        end = imin<int64_t>(imax<int64_t>(cu_seqlens[b + 1], begin), num_tokens);
      }
      for (int64_t t = begin + threadIdx.x; t < end; t += kRopeThreads) seq_len = imax<int64_t>(seq_len, positions[t] + 1);
      for (int m = 16; m > 0; m /= 2) seq_len = imax<int64_t>(seq_len, __shfl_xor_sync(0xffffffffu, seq_len, m));
      if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = seq_len;
      __syncthreads();
      seq_len = 0;
      for (int w = 0; w < kRopeThreads / 32; ++w) seq_len = imax<int64_t>(seq_len, red[w]);
    }
    base = dynamic_ntk_base(rope, seq_len);
  }
  double yarn_low = 0.0, yarn_high = 0.0;
  if (rope.scaling == RopeScaling::kYarn) yarn_correction_range(rope, &yarn_low, &yarn_high);
  for (int i = threadIdx.x; i < half; i += kRopeThreads)
    tables[static_cast<int64_t>(b) * half + i] = inv_freq(rope, base, i, yarn_low, yarn_high);
}

// One block per token. Work items, in order: query rotations (Hq * half), key rotations (Hkv * half), and with a
// cache of type T: key channels past rotary_dim (Hkv * (D - rotary_dim)) and value channels (Hkv * D) copied to
// the slot, the rotated key pairs being written by the thread that rotated them. With a quantized cache (C int8 /
// fp8) the rotations come first; after a barrier (the rotated key is in global memory, written by this block) the
// block's warps quantize the key rows, as `key` now holds them, and the value rows (kv_quant.cuh).
template <typename T, typename C>
__global__ void __launch_bounds__(kRopeThreads)
    rotary_kernel(int rotary_dim, bool is_neox, bool precise, float attention_factor, int head_dim, bool per_seq,
                  const int64_t* __restrict__ positions, const int32_t* __restrict__ cu_seqlens, int num_seqs,
                  const float* __restrict__ tables, HeadsView<T> query, HeadsView<T> key, HeadsView<const T> value,
                  C* __restrict__ k_cache, C* __restrict__ v_cache, float* __restrict__ k_scales,
                  float* __restrict__ v_scales, const int64_t* __restrict__ slot_mapping, int64_t num_slots) {
  constexpr bool kQuant = kQuantizedCache<C>;
  const int64_t t = blockIdx.x;
  const int half = rotary_dim / 2;
  LMX_DYNAMIC_SMEM(float, cs);  // [2 * half]: cos, then sin
  const int table = per_seq && cu_seqlens != nullptr ? seq_of_token(cu_seqlens, num_seqs, t) : 0;
  const float* inv = tables + static_cast<int64_t>(table) * half;
  const int64_t pos = positions[t];
  for (int i = threadIdx.x; i < half; i += kRopeThreads) rope_cos_sin(pos, inv[i], attention_factor, precise, &cs[i], &cs[half + i]);
  __syncthreads();

  int64_t slot = -1;
  if (k_cache != nullptr) {
    slot = slot_mapping[t];
    if (slot >= num_slots) slot = -1;  // out of range on the device: skipped like padding
  }
  const int num_kv = key.data != nullptr ? key.num_heads : 0;
  const int64_t slot_stride = static_cast<int64_t>(num_kv) * head_dim;
  const int rot_items = (query.num_heads + num_kv) * half;
  const int copy_k = slot >= 0 && !kQuant ? num_kv * (head_dim - rotary_dim) : 0;
  const int copy_v = slot >= 0 && !kQuant ? num_kv * head_dim : 0;
  for (int item = threadIdx.x; item < rot_items + copy_k + copy_v; item += kRopeThreads) {
    if (item < rot_items) {
      const int h = item / half, i = item % half;
      const bool is_key = h >= query.num_heads;
      const int kh = h - query.num_heads;
      T* x = is_key ? key.data + t * key.token_stride + kh * key.head_stride
                    : query.data + t * query.token_stride + h * query.head_stride;
      const int i1 = is_neox ? i : 2 * i, i2 = is_neox ? i + half : 2 * i + 1;
      const float x1 = to_float(x[i1]), x2 = to_float(x[i2]);
      const float c = cs[i], s = cs[half + i];
      const T y1 = from_float<T>(x1 * c - x2 * s), y2 = from_float<T>(x2 * c + x1 * s);
      x[i1] = y1;
      x[i2] = y2;
      if constexpr (!kQuant) {
        if (is_key && slot >= 0) {
          T* dst = k_cache + slot * slot_stride + static_cast<int64_t>(kh) * head_dim;
          dst[i1] = y1;
          dst[i2] = y2;
        }
      }
    } else if constexpr (!kQuant) {
      if (item < rot_items + copy_k) {
        const int j = item - rot_items, rest = head_dim - rotary_dim;
        const int kh = j / rest, c = rotary_dim + j % rest;
        k_cache[slot * slot_stride + static_cast<int64_t>(kh) * head_dim + c] =
            key.data[t * key.token_stride + kh * key.head_stride + c];
      } else {
        const int j = item - rot_items - copy_k;
        const int vh = j / head_dim, c = j % head_dim;
        v_cache[slot * slot_stride + static_cast<int64_t>(vh) * head_dim + c] =
            value.data[t * value.token_stride + vh * value.head_stride + c];
      }
    }
  }
  if constexpr (kQuant) {
    if (slot >= 0 && num_kv > 0) {  // uniform over the block
      __syncthreads();              // every rotated key channel of this token is stored
      const HeadsView<const T> k_rot{key.data, key.token_stride, key.head_stride, key.num_heads};
      quantize_token<T, C>(t, slot, head_dim, k_rot, value, k_cache, v_cache, k_scales, v_scales, kRopeThreads);
    }
  } else {
    (void)k_scales;
    (void)v_scales;
  }
}

}  // namespace lmx::cuda
