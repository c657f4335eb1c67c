// Paged attention, prefill / chunked-prefill kernel on CUDA cores (emulated in CI; no tensor cores).
//
// A block takes kPrefillRows query rows of one sequence and one KV head, where a row is a (query token, query head
// of that KV head) pair: the GQA heads of a KV head share every K/V tile. Key tiles of kPrefillKeys keys are
// staged in shared memory as fp32 (zeros for keys that are hidden or past the tile's last visible key); the online
// softmax runs in fp32 in registers, 8 threads per row. Grid x walks the sequences' row tiles (an upper bound,
// sum over b of ceil(n_b * G / rows) <= ceil(T * G / rows) + B, because the host does not read cu_seqlens_q).
// Quantized caches (C = int8_t / fp8_e4m3) are dequantized to fp32 as the tiles are staged (kv_quant.cuh).
#pragma once

#include "attention_common.cuh"
#include "kv_quant.cuh"

namespace lmx::cuda {

constexpr int kPrefillThreads = 128;
constexpr int kPrefillRows = 16;                                     // query rows per block
constexpr int kPrefillLanesPerRow = kPrefillThreads / kPrefillRows;  // 8
constexpr int kPrefillKeys = 32;                                     // keys per tile
static_assert(kPrefillLanesPerRow == 8 && kPrefillKeys % kPrefillLanesPerRow == 0, "row groups of 8 lanes");

__host__ __device__ __forceinline__ int prefill_k_stride(int head_dim) { return head_dim + 4; }  // no bank conflicts

// Shared memory (floats): slots, row scales (quantized caches), Q, K (padded rows), V, P.
__host__ __device__ __forceinline__ int prefill_smem_floats(int head_dim) {
  return 2 * kPrefillKeys + 4 * kPrefillKeys + kPrefillRows * head_dim + kPrefillKeys * prefill_k_stride(head_dim) +
         kPrefillKeys * head_dim + kPrefillRows * kPrefillKeys;
}

template <typename T, typename C, int MAX_D>
__global__ void __launch_bounds__(kPrefillThreads)
    paged_attention_prefill_kernel(PagedAttentionArgs a, HeadsView<T> out, HeadsView<const T> query,
                                   KvCache<C> kv) {
  constexpr int COLS = MAX_D / kPrefillLanesPerRow;  // output channels per thread at most
  const int D = a.head_dim, KS = prefill_k_stride(D);
  const int group = a.num_q_heads / a.num_kv_heads;
  const int kv_head = blockIdx.y;
  const int tid = threadIdx.x, r = tid / kPrefillLanesPerRow, c8 = tid % kPrefillLanesPerRow;

  // Which sequence and row tile is this block? (uniform over the block)
  int b = 0;
  int64_t tile = blockIdx.x;
  SeqRange sr{0, 0, 0};
  for (; b < a.num_seqs; ++b) {
    sr = seq_range(a, b);
    const int64_t tiles = ceil_div((sr.q_end - sr.q_begin) * group, kPrefillRows);
    if (tile < tiles) break;
    tile -= tiles;
  }
  if (b == a.num_seqs) return;  // a spare block of the upper bound
  const int64_t n = sr.q_end - sr.q_begin, rows = n * group;
  const int64_t row = tile * kPrefillRows + r;
  const bool row_ok = row < rows;
  const int64_t qi = row_ok ? row / group : 0;
  const int h = kv_head * group + static_cast<int>(row_ok ? row % group : 0);
  const int64_t pos = sr.len - n + qi;  // may be negative for an invalid seq_lens: sees nothing
  // Keys any row of the tile may see: [lo, hi).
  const int64_t first_q = tile * kPrefillRows / group;
  const int64_t last_q = imin<int64_t>(n - 1, (tile * kPrefillRows + kPrefillRows - 1) / group);
  const int64_t hi = imax<int64_t>(0, sr.len - n + last_q + 1);
  const int64_t lo = a.sliding_window > 0 ? imax<int64_t>(0, sr.len - n + first_q - a.sliding_window + 1) : 0;
  const int32_t* table = a.block_tables + static_cast<int64_t>(b) * a.max_blocks_per_seq;

  LMX_DYNAMIC_SMEM(float, smem);
  int64_t* slots = reinterpret_cast<int64_t*>(smem);  // [kPrefillKeys]
  float* sc_s = smem + 2 * kPrefillKeys;              // [keys][4]: K scale, K zero, V scale, V zero
  float* q_s = sc_s + 4 * kPrefillKeys;               // [rows][D], scaled
  float* k_s = q_s + kPrefillRows * D;                // [keys][KS]
  float* v_s = k_s + kPrefillKeys * KS;               // [keys][D]
  float* p_s = v_s + kPrefillKeys * D;                // [rows][keys]

  for (int i = tid; i < kPrefillRows * D; i += kPrefillThreads) {
    const int rr = i / D, d = i % D;
    const int64_t rw = tile * kPrefillRows + rr;
    float x = 0.f;
    if (rw < rows) {
      const int64_t tok = sr.q_begin + rw / group;
      const int hh = kv_head * group + static_cast<int>(rw % group);
      x = to_float(query.data[tok * query.token_stride + hh * query.head_stride + d]) * a.scale;
    }
    q_s[i] = x;
  }
  const float slope = (a.alibi_slopes != nullptr && row_ok) ? a.alibi_slopes[h] : 0.f;
  float m = -INFINITY, l = 0.f;
  float acc[COLS];
#pragma unroll
  for (int j = 0; j < COLS; ++j) acc[j] = 0.f;
  const int64_t kv_stride = static_cast<int64_t>(a.num_kv_heads) * D;

  for (int64_t k0 = lo; k0 < hi; k0 += kPrefillKeys) {
    if (tid < kPrefillKeys) {
      const int64_t slot = k0 + tid < hi ? key_slot(a, table, k0 + tid) : -1;
      slots[tid] = slot;
      stage_row_scales<C>(sc_s + 4 * tid, kv, slot, a.num_kv_heads, kv_head);
    }
    __syncthreads();  // slots ready; the previous tile's readers are done (also orders q_s before first use)
    const auto stage = [&](int i) {
      const int kk = i / (D / 2), d = 2 * (i % (D / 2));
      const int64_t slot = slots[kk];
      float2 kv2 = make_float2(0.f, 0.f), vv = make_float2(0.f, 0.f);
      if (slot >= 0) {
        const int64_t off = slot * kv_stride + static_cast<int64_t>(kv_head) * D + d;
        RowScale ks{1.f, 0.f}, vs{1.f, 0.f};
        if constexpr (kQuantizedCache<C>) {
          ks = RowScale{sc_s[4 * kk], sc_s[4 * kk + 1]};
          vs = RowScale{sc_s[4 * kk + 2], sc_s[4 * kk + 3]};
        }
        kv2 = load_pair_dq(kv.k + off, ks);
        vv = load_pair_dq(kv.v + off, vs);
      }
      k_s[kk * KS + d] = kv2.x;
      k_s[kk * KS + d + 1] = kv2.y;
      v_s[kk * D + d] = vv.x;
      v_s[kk * D + d + 1] = vv.y;
    };
    if constexpr (std::is_same_v<C, int8_t>) {
      // Not unrolled: unrolled, ptxas spills 52 bytes for head_dim <= 64 on sm_90a (with 72 registers in use).
#pragma unroll 1
      for (int i = tid; i < kPrefillKeys * (D / 2); i += kPrefillThreads) stage(i);
    } else {
      for (int i = tid; i < kPrefillKeys * (D / 2); i += kPrefillThreads) stage(i);
    }
    __syncthreads();

    // Scores of this thread's keys c8, c8 + 8, ...
    constexpr int KPT = kPrefillKeys / kPrefillLanesPerRow;
    float s[KPT];
    float mx = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < KPT; ++jj) {
      const int kk = c8 + kPrefillLanesPerRow * jj;
      const int64_t key = k0 + kk;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += q_s[r * D + d] * k_s[kk * KS + d];
      const bool visible = row_ok && slots[kk] >= 0 && key <= pos &&
                           (a.sliding_window <= 0 || pos - key < a.sliding_window);
      s[jj] = visible ? dot + slope * static_cast<float>(key - pos) : -INFINITY;
      mx = fmaxf(mx, s[jj]);
    }
    mx = group_max(mx, kPrefillLanesPerRow);
    const float m_new = fmaxf(m, mx);
    const float alpha = m_new == -INFINITY ? 1.f : __expf(m - m_new);
    float sum = 0.f;
#pragma unroll
    for (int jj = 0; jj < KPT; ++jj) {
      const float p = m_new == -INFINITY ? 0.f : __expf(s[jj] - m_new);
      p_s[r * kPrefillKeys + c8 + kPrefillLanesPerRow * jj] = p;
      sum += p;
    }
    sum = group_sum(sum, kPrefillLanesPerRow);
    l = l * alpha + sum;
    m = m_new;
    __syncwarp();  // p_s of row r (written by its 8 lanes, all in this warp) is complete

#pragma unroll
    for (int j = 0; j < COLS; ++j) {
      const int d = c8 + kPrefillLanesPerRow * j;
      if (d < D) {
        float o = acc[j] * alpha;
        for (int kk = 0; kk < kPrefillKeys; ++kk) o += p_s[r * kPrefillKeys + kk] * v_s[kk * D + d];
        acc[j] = o;
      }
    }
    __syncthreads();  // k_s, v_s, p_s and slots are rewritten by the next tile
  }

  if (!row_ok) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;  // no visible key (invalid input): zeros
  T* o = out.data + (sr.q_begin + qi) * out.token_stride + static_cast<int64_t>(h) * out.head_stride;
#pragma unroll
  for (int j = 0; j < COLS; ++j) {
    const int d = c8 + kPrefillLanesPerRow * j;
    if (d < D) o[d] = from_float<T>(acc[j] * inv);
  }
}

}  // namespace lmx::cuda
