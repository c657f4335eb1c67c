// Pieces shared by the decode and prefill attention kernels: where a block's queries sit and which cache rows hold
// a sequence's keys, with every device-side value clamped so that nothing out of range is read.
#pragma once

#include "common.cuh"
#include "launchers.h"

namespace lmx::cuda {

// Query range [q_begin, q_end) and cached length of sequence b, clamped to [0, T] and to what block_tables holds.
struct SeqRange {
  int64_t q_begin, q_end;
  int64_t len;
};
__device__ __forceinline__ SeqRange seq_range(const PagedAttentionArgs& a, int b) {
  SeqRange r;
  r.q_begin = imin<int64_t>(imax<int64_t>(a.cu_seqlens_q[b], 0), a.num_tokens);
  r.q_end = imin<int64_t>(imax<int64_t>(a.cu_seqlens_q[b + 1], r.q_begin), a.num_tokens);
  const int64_t capacity = static_cast<int64_t>(a.max_blocks_per_seq) * a.block_size;
  r.len = imin<int64_t>(imax<int64_t>(a.seq_lens[b], 0), capacity);
  return r;
}

// Cache slot of key j (< capacity) of sequence b, or -1 when its block id is out of range (hidden).
__device__ __forceinline__ int64_t key_slot(const PagedAttentionArgs& a, const int32_t* table, int64_t j) {
  const int32_t blk = table[j / a.block_size];
  if (blk < 0 || blk >= a.num_blocks) return -1;
  return static_cast<int64_t>(blk) * a.block_size + j % a.block_size;
}

}  // namespace lmx::cuda
