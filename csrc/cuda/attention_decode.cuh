// Paged attention, decode kernel (flash-decoding): one block per (query token, group of up to HEADS query heads of
// one KV head, key partition). The query heads of a KV head share every K and V load; long contexts are split into
// partitions whose fp32 partials (max, sum, unnormalised output) a second kernel merges.
//
// Any number of queries per sequence is handled (query t sits at position len - n + (t - q_begin)); the glue
// picks this kernel when there is about one query per sequence.
//
// Quantized caches (C = int8_t / fp8_e4m3, kv_quant.cuh) are read as they are and dequantized in registers, each
// K / V element once for all the block's query heads: x^ = q * scale + zero (int8, the key row's scale read by
// the lanes of its key, the value row's staged in shared memory with the tile's slots) or x^ = float(e4m3) * s[h].
// Keys and values are read four channels (4 bytes) per lane and load, where the 16-bit caches take two.
#pragma once

#include "attention_common.cuh"
#include "kv_quant.cuh"

namespace lmx::cuda {

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeTile = 64;             // keys per tile (a multiple of 32)
constexpr int kDecodeKeyLanes = 4;          // lanes that share one key's q.k
constexpr int kDecodeDefaultPartition = 512;

// Channels per thread in p.v: a pair for the 16-bit / fp32 caches, four (4 bytes) for int8 / fp8.
template <typename C>
inline constexpr int kDecodeVecWidth = kQuantizedCache<C> ? 4 : 2;

// Shared memory (floats) of the decode kernel; vec: kDecodeVecWidth of the cache type.
__host__ __device__ __forceinline__ int decode_smem_floats(int heads, int head_dim, int vec = 2) {
  const int vecs = head_dim / vec, groups = imax(1, kDecodeThreads / vecs);
  return 2 * kDecodeTile                 // slot of each tile key (int64)
         + 2 * kDecodeTile               // (scale, zero) of each tile key's value row (int8 caches)
         + heads * head_dim              // scaled queries
         + heads * kDecodeTile           // logits, then probabilities
         + 3 * heads                     // running max, running sum, rescale of this tile
         + groups * heads * head_dim;    // partial outputs of the key groups
}

template <typename T, typename C, int HEADS>
__global__ void __launch_bounds__(kDecodeThreads, 4)
    paged_attention_decode_kernel(PagedAttentionArgs a, HeadsView<T> out, HeadsView<const T> query, KvCache<C> kv,
                                  float* __restrict__ part_out,  // [T, Hq, splits, D]
                                  float* __restrict__ part_ml,   // [T, Hq, splits, 2]
                                  int partition_size, int num_splits) {
  const int64_t t = blockIdx.x;
  const int split = blockIdx.z;
  const int D = a.head_dim, pairs = D / 2;
  const int group = a.num_q_heads / a.num_kv_heads;
  const int chunks = (group + HEADS - 1) / HEADS;
  const int kv_head = blockIdx.y / chunks, chunk = blockIdx.y % chunks;
  const int h0 = kv_head * group + chunk * HEADS;
  const int nh = imin(HEADS, group - chunk * HEADS);  // heads of this block (uniform)
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  const int b = seq_of_token(a.cu_seqlens_q, a.num_seqs, t);
  const SeqRange sr = seq_range(a, b);
  const bool in_seq = t >= sr.q_begin && t < sr.q_end;
  const int64_t pos = in_seq ? sr.len - (sr.q_end - sr.q_begin) + (t - sr.q_begin) : -1;
  const int64_t lo = a.sliding_window > 0 ? imax<int64_t>(0, pos - a.sliding_window + 1) : 0;
  const int64_t k_begin = imax<int64_t>(lo, static_cast<int64_t>(split) * partition_size);
  const int64_t k_end = imin<int64_t>(pos + 1, static_cast<int64_t>(split + 1) * partition_size);
  const int32_t* table = a.block_tables + static_cast<int64_t>(b) * a.max_blocks_per_seq;

  LMX_DYNAMIC_SMEM(float, smem);
  int64_t* slots = reinterpret_cast<int64_t*>(smem);  // [kDecodeTile]
  float* vsc_s = smem + 2 * kDecodeTile;              // [kDecodeTile][2]
  float* q_s = vsc_s + 2 * kDecodeTile;               // [HEADS][D]
  float* p_s = q_s + HEADS * D;                       // [HEADS][kDecodeTile]
  float* m_s = p_s + HEADS * kDecodeTile;             // [HEADS]
  float* l_s = m_s + HEADS;                           // [HEADS]
  float* alpha_s = l_s + HEADS;                       // [HEADS]
  float* red_s = alpha_s + HEADS;                     // [groups][HEADS][D]

  for (int i = tid; i < nh * D; i += kDecodeThreads) {
    const int g = i / D, d = i % D;
    q_s[g * D + d] = in_seq ? to_float(query.data[t * query.token_stride + (h0 + g) * query.head_stride + d]) * a.scale : 0.f;
  }
  if (tid < HEADS) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }
  // p.v mapping: thread -> (key group, VW consecutive channels).
  constexpr int VW = kDecodeVecWidth<C>;
  const int vecs = D / VW;
  const int groups = imax(1, kDecodeThreads / vecs);
  const int kg = tid / vecs, vec = tid % vecs;
  const bool pv_active = kg < groups;
  // The value rows' dequantization when it is per head (fp8) or none; int8 rows take theirs from vsc_s.
  const RowScale v_head = std::is_same_v<C, int8_t> ? RowScale{1.f, 0.f} : row_scale<C>(kv.v_scales, 0, a.num_kv_heads, kv_head);
  float acc[HEADS][VW];
#pragma unroll
  for (int g = 0; g < HEADS; ++g)
#pragma unroll
    for (int e = 0; e < VW; ++e) acc[g][e] = 0.f;
  __syncthreads();

  const int64_t kv_stride = static_cast<int64_t>(a.num_kv_heads) * D;  // one slot holds [Hkv, D]
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kDecodeTile) {
    // q.k: kDecodeKeyLanes lanes per key, 32 / kDecodeKeyLanes keys per warp at a time.
    for (int kk = warp * (32 / kDecodeKeyLanes) + lane / kDecodeKeyLanes; kk < kDecodeTile;
         kk += kDecodeWarps * (32 / kDecodeKeyLanes)) {
      const int64_t j = k0 + kk;
      const int64_t slot = j < k_end ? key_slot(a, table, j) : -1;
      float dot[HEADS];
#pragma unroll
      for (int g = 0; g < HEADS; ++g) dot[g] = 0.f;
      if (slot >= 0) {
        const C* krow = kv.k + slot * kv_stride + static_cast<int64_t>(kv_head) * D;
        const RowScale ks = row_scale<C>(kv.k_scales, slot, a.num_kv_heads, kv_head);
        if constexpr (kQuantizedCache<C>) {
          // int8 / fp8: four channels (4 bytes) per load, head_dim being a multiple of 16.
          for (int u = lane % kDecodeKeyLanes; u < D / 4; u += kDecodeKeyLanes) {
            const float4 k4 = load_quad_dq(krow + 4 * u, ks);
#pragma unroll
            for (int g = 0; g < HEADS; ++g)
              if (g < nh) {
                const float* qg = q_s + g * D + 4 * u;
                dot[g] += qg[0] * k4.x + qg[1] * k4.y + qg[2] * k4.z + qg[3] * k4.w;
              }
          }
        } else {
          for (int v = lane % kDecodeKeyLanes; v < pairs; v += kDecodeKeyLanes) {
            const float2 k2 = load_pair_dq(krow + 2 * v, ks);
#pragma unroll
            for (int g = 0; g < HEADS; ++g)
              if (g < nh) dot[g] += q_s[g * D + 2 * v] * k2.x + q_s[g * D + 2 * v + 1] * k2.y;
          }
        }
      }
#pragma unroll
      for (int g = 0; g < HEADS; ++g) {
        if (g >= nh) break;  // uniform over the block
        const float s = group_sum(dot[g], kDecodeKeyLanes);
        if (lane % kDecodeKeyLanes == 0) {
          float logit = -INFINITY;
          if (slot >= 0) logit = a.alibi_slopes ? s + a.alibi_slopes[h0 + g] * static_cast<float>(j - pos) : s;
          p_s[g * kDecodeTile + kk] = logit;
        }
      }
      if (lane % kDecodeKeyLanes == 0) {
        slots[kk] = slot;
        if constexpr (std::is_same_v<C, int8_t>) {
          if (slot >= 0) {
            const RowScale vs = row_scale<C>(kv.v_scales, slot, a.num_kv_heads, kv_head);
            vsc_s[2 * kk] = vs.scale;
            vsc_s[2 * kk + 1] = vs.zero;
          }
        }
      }
    }
    __syncthreads();

    // Online softmax: warp w updates heads w, w + kDecodeWarps, ...
    for (int g = warp; g < nh; g += kDecodeWarps) {
      float v[kDecodeTile / 32];
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < kDecodeTile / 32; ++i) {
        v[i] = p_s[g * kDecodeTile + lane + 32 * i];
        mx = fmaxf(mx, v[i]);
      }
      mx = group_max(mx, 32);
      const float m_old = m_s[g];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.f;
#pragma unroll
      for (int i = 0; i < kDecodeTile / 32; ++i) {
        const float p = m_new == -INFINITY ? 0.f : __expf(v[i] - m_new);
        p_s[g * kDecodeTile + lane + 32 * i] = p;
        sum += p;
      }
      sum = group_sum(sum, 32);
      __syncwarp();  // every lane has read m_s[g] before lane 0 replaces it
      if (lane == 0) {
        const float alpha = m_new == -INFINITY ? 1.f : __expf(m_old - m_new);
        m_s[g] = m_new;
        l_s[g] = l_s[g] * alpha + sum;
        alpha_s[g] = alpha;
      }
    }
    __syncthreads();

    // p.v: each active thread owns VW channels and every groups-th key of the tile.
    if (pv_active) {
#pragma unroll
      for (int g = 0; g < HEADS; ++g)
        if (g < nh) {
#pragma unroll
          for (int e = 0; e < VW; ++e) acc[g][e] *= alpha_s[g];
        }
      const int n_keys = static_cast<int>(imin<int64_t>(kDecodeTile, k_end - k0));
      for (int kk = kg; kk < n_keys; kk += groups) {
        const int64_t slot = slots[kk];
        if (slot < 0) continue;  // hidden key: never loaded
        RowScale vs = v_head;
        if constexpr (std::is_same_v<C, int8_t>) vs = RowScale{vsc_s[2 * kk], vsc_s[2 * kk + 1]};
        const C* vrow = kv.v + slot * kv_stride + static_cast<int64_t>(kv_head) * D + VW * vec;
        float vx[VW];
        if constexpr (VW == 4) {
          const float4 v4 = load_quad_dq(vrow, vs);
          vx[0] = v4.x;
          vx[1] = v4.y;
          vx[2] = v4.z;
          vx[3] = v4.w;
        } else {
          const float2 v2 = load_pair_dq(vrow, vs);
          vx[0] = v2.x;
          vx[1] = v2.y;
        }
#pragma unroll
        for (int g = 0; g < HEADS; ++g)
          if (g < nh) {
            const float p = p_s[g * kDecodeTile + kk];
#pragma unroll
            for (int e = 0; e < VW; ++e) acc[g][e] += p * vx[e];
          }
      }
    }
    __syncthreads();  // the next tile overwrites slots and p_s
  }

  // Sum the key groups' partial outputs.
  if (pv_active) {
#pragma unroll
    for (int g = 0; g < HEADS; ++g)
      if (g < nh) {
#pragma unroll
        for (int e = 0; e < VW; ++e) red_s[(kg * HEADS + g) * D + VW * vec + e] = acc[g][e];
      }
  }
  __syncthreads();
  for (int i = tid; i < nh * pairs; i += kDecodeThreads) {
    const int g = i / pairs, pr = i % pairs;
    float o0 = 0.f, o1 = 0.f;
    for (int k = 0; k < groups; ++k) {
      o0 += red_s[(k * HEADS + g) * D + 2 * pr];
      o1 += red_s[(k * HEADS + g) * D + 2 * pr + 1];
    }
    const int h = h0 + g;
    if (num_splits == 1) {
      if (!in_seq) continue;
      const float inv = l_s[g] > 0.f ? 1.f / l_s[g] : 0.f;  // no visible key (invalid input): zeros
      T* o = out.data + t * out.token_stride + h * out.head_stride + 2 * pr;  // out may be any strided view
      o[0] = from_float<T>(o0 * inv);
      o[1] = from_float<T>(o1 * inv);
    } else {
      const int64_t row = (t * a.num_q_heads + h) * num_splits + split;
      part_out[row * D + 2 * pr] = o0;
      part_out[row * D + 2 * pr + 1] = o1;
      if (pr == 0) {
        part_ml[2 * row] = m_s[g];
        part_ml[2 * row + 1] = l_s[g];
      }
    }
  }
}

constexpr int kMergeThreads = 128;

// out[t, h] = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s over the partitions of (t, h), in fp32.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    paged_attention_merge_kernel(PagedAttentionArgs a, HeadsView<T> out, const float* __restrict__ part_out,
                                 const float* __restrict__ part_ml, int num_splits) {
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y, D = a.head_dim;
  const int b = seq_of_token(a.cu_seqlens_q, a.num_seqs, t);
  const SeqRange sr = seq_range(a, b);
  if (t < sr.q_begin || t >= sr.q_end) return;  // not a query of any sequence (invalid cu_seqlens_q)
  const int64_t row0 = (t * a.num_q_heads + h) * num_splits;
  float M = -INFINITY;
  for (int s = 0; s < num_splits; ++s)
    if (part_ml[2 * (row0 + s) + 1] > 0.f) M = fmaxf(M, part_ml[2 * (row0 + s)]);
  float den = 0.f;
  for (int s = 0; s < num_splits; ++s) {
    const float l = part_ml[2 * (row0 + s) + 1];
    if (l > 0.f) den += __expf(part_ml[2 * (row0 + s)] - M) * l;
  }
  const float inv = den > 0.f ? 1.f / den : 0.f;
  for (int d = threadIdx.x; d < D; d += kMergeThreads) {
    float num = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      const float l = part_ml[2 * (row0 + s) + 1];
      if (l > 0.f) num += __expf(part_ml[2 * (row0 + s)] - M) * part_out[(row0 + s) * D + d];
    }
    out.data[t * out.token_stride + h * out.head_stride + d] = from_float<T>(num * inv);
  }
}

}  // namespace lmx::cuda
