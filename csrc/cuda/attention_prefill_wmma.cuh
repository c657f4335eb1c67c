// Paged attention, prefill / chunked-prefill kernel on tensor cores (nvcuda::wmma m16n16k16, fp16 or bf16 inputs,
// fp32 accumulators), for head dims that are multiples of 16. Emulated in CI by csrc/cuda/emu/mma_emu.h.
//
// A block takes kWmmaRows query rows of one sequence and one KV head, where a row is a (query token, query head of
// that KV head) pair, as in the CUDA-core kernel (attention_prefill.cuh): the GQA heads of a KV head share every K/V
// tile. Each of the 4 warps owns 16 rows. Per tile of kWmmaKeys keys, staged in shared memory in the cache's dtype
// (zeros for keys that are hidden or past the tile's last visible key):
//   S = Q Kᵀ      wmma, fp32, into shared memory (the warp's 16 rows)
//   softmax       online, fp32, two lanes per row: scale, causal / window / hidden-slot mask, ALiBi; P rounded to
//                 the input dtype (as FlashAttention does); the row's fp32 output is rescaled by exp(m_old - m_new)
//   O += P V      wmma, the fp32 output kept in shared memory (a fragment's element layout is opaque, so rows can
//                 be rescaled only there)
// Quantized caches (C = int8_t / fp8_e4m3): each K / V element is dequantized in fp32 (kv_quant.cuh) and rounded
// once to T as the tile is staged, so the tensor cores see the dequantized cache in the activation dtype (the error
// of a cache held in T; the accuracy tests bound it).
// The output row is O / l, rounded once. Shared memory rows are padded by 16 bytes (ldm stays a multiple of 16 bytes,
// every tile pointer 32-byte aligned).
#pragma once

#include "attention_common.cuh"
#include "kv_quant.cuh"

namespace lmx::cuda {

constexpr int kWmmaWarps = 4;
constexpr int kWmmaThreads = 32 * kWmmaWarps;
constexpr int kWmmaRows = 16 * kWmmaWarps;  // query rows per block
constexpr int kWmmaKeys = 32;               // keys per tile
static_assert(kWmmaKeys % 16 == 0 && kWmmaKeys / 2 == 16, "two lanes per row, 16 keys each");

// Strides (elements) of the shared-memory tiles.
__host__ __device__ __forceinline__ int wmma_t_stride(int head_dim) { return head_dim + 8; }  // Q, K, V (16-bit)
constexpr int kWmmaSStride = kWmmaKeys + 4;                                                  // S (fp32)
constexpr int kWmmaPStride = kWmmaKeys + 8;                                                  // P (16-bit)
__host__ __device__ __forceinline__ int wmma_o_stride(int head_dim) { return head_dim + 4; }  // O (fp32)

// Bytes of shared memory: slots, row scales (quantized caches), Q, K, V, S, P, O (each a multiple of 32 bytes).
__host__ __device__ __forceinline__ int wmma_smem_bytes(int head_dim) {
  const int ts = wmma_t_stride(head_dim);
  return 8 * kWmmaKeys + 16 * kWmmaKeys + 2 * kWmmaRows * ts + 2 * 2 * kWmmaKeys * ts + 4 * kWmmaRows * kWmmaSStride +
         2 * kWmmaRows * kWmmaPStride + 4 * kWmmaRows * wmma_o_stride(head_dim);
}

template <typename T, typename C>
__global__ void __launch_bounds__(kWmmaThreads)
    paged_attention_prefill_wmma_kernel(PagedAttentionArgs a, HeadsView<T> out, HeadsView<const T> query,
                                        KvCache<C> kv) {
  namespace wmma = nvcuda::wmma;
  const int D = a.head_dim, TS = wmma_t_stride(D), OS = wmma_o_stride(D);
  const int group = a.num_q_heads / a.num_kv_heads;
  const int kv_head = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  // Which sequence and row tile is this block? (uniform over the block)
  int b = 0;
  int64_t tile = blockIdx.x;
  SeqRange sr{0, 0, 0};
  for (; b < a.num_seqs; ++b) {
    sr = seq_range(a, b);
    const int64_t tiles = ceil_div((sr.q_end - sr.q_begin) * group, kWmmaRows);
    if (tile < tiles) break;
    tile -= tiles;
  }
  if (b == a.num_seqs) return;  // a spare block of the upper bound
  const int64_t n = sr.q_end - sr.q_begin, rows = n * group;
  // Keys any row of the tile may see: [lo, hi).
  const int64_t first_q = tile * kWmmaRows / group;
  const int64_t last_q = imin<int64_t>(n - 1, (tile * kWmmaRows + kWmmaRows - 1) / group);
  const int64_t hi = imax<int64_t>(0, sr.len - n + last_q + 1);
  const int64_t lo = a.sliding_window > 0 ? imax<int64_t>(0, sr.len - n + first_q - a.sliding_window + 1) : 0;
  const int32_t* table = a.block_tables + static_cast<int64_t>(b) * a.max_blocks_per_seq;

  LMX_DYNAMIC_SMEM(unsigned char, smem);
  int64_t* slots = reinterpret_cast<int64_t*>(smem);                     // [kWmmaKeys]
  float* sc_s = reinterpret_cast<float*>(smem + 8 * kWmmaKeys);         // [keys][4]: K scale, zero, V scale, zero
  T* q_s = reinterpret_cast<T*>(smem + 24 * kWmmaKeys);                  // [rows][TS]
  T* k_s = q_s + kWmmaRows * TS;                                         // [keys][TS]
  T* v_s = k_s + kWmmaKeys * TS;                                         // [keys][TS]
  float* s_s = reinterpret_cast<float*>(v_s + kWmmaKeys * TS);           // [rows][kWmmaSStride]
  T* p_s = reinterpret_cast<T*>(s_s + kWmmaRows * kWmmaSStride);         // [rows][kWmmaPStride]
  float* o_s = reinterpret_cast<float*>(p_s + kWmmaRows * kWmmaPStride);  // [rows][OS]

  // This lane's row (of the warp's 16) for the softmax and the output, and its half of the keys / channels.
  const int rr = 16 * warp + lane / 2, half = lane % 2;
  const int64_t row = tile * kWmmaRows + rr;
  const bool row_ok = row < rows;
  const int64_t qi = row_ok ? row / group : 0;
  const int h = kv_head * group + static_cast<int>(row_ok ? row % group : 0);
  const int64_t pos = sr.len - n + qi;  // may be negative for an invalid seq_lens: sees nothing
  const float slope = (a.alibi_slopes != nullptr && row_ok) ? a.alibi_slopes[h] : 0.f;

  // Each warp stages its own 16 query rows and zeroes its own output rows (nothing shared: __syncwarp suffices).
  const T zero = from_float<T>(0.f);
  for (int i = lane; i < 16 * D; i += 32) {
    const int r = 16 * warp + i / D, d = i % D;
    const int64_t rw = tile * kWmmaRows + r;
    T x = zero;
    if (rw < rows) {
      const int64_t tok = sr.q_begin + rw / group;
      const int hh = kv_head * group + static_cast<int>(rw % group);
      x = query.data[tok * query.token_stride + hh * query.head_stride + d];
    }
    q_s[r * TS + d] = x;
    o_s[r * OS + d] = 0.f;
  }
  __syncwarp();
  float m = -INFINITY, l = 0.f;
  const int64_t kv_stride = static_cast<int64_t>(a.num_kv_heads) * D;
  const T* q_w = q_s + 16 * warp * TS;
  float* s_w = s_s + 16 * warp * kWmmaSStride;
  const T* p_w = p_s + 16 * warp * kWmmaPStride;
  float* o_w = o_s + 16 * warp * OS;

  for (int64_t k0 = lo; k0 < hi; k0 += kWmmaKeys) {
    if (tid < kWmmaKeys) {
      const int64_t slot = k0 + tid < hi ? key_slot(a, table, k0 + tid) : -1;
      slots[tid] = slot;
      stage_row_scales<C>(sc_s + 4 * tid, kv, slot, a.num_kv_heads, kv_head);
    }
    __syncthreads();  // slots ready; the previous tile's readers are done (also orders q_s / o_s before first use)
    if constexpr (kQuantizedCache<C>) {
      // Two channels at a time, dequantized in fp32 and rounded once to T. ptxas spills for fp16 with fp8 unless this
      // loop is not unrolled on sm_90a and is unrolled on sm_80 (CUDA 13.0; the emulator ignores the pragma).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll 1
#endif
      for (int i = tid; i < kWmmaKeys * (D / 2); i += kWmmaThreads) {
        const int kk = i / (D / 2), d = 2 * (i % (D / 2));
        const int64_t slot = slots[kk];
        float2 kx = make_float2(0.f, 0.f), vx = make_float2(0.f, 0.f);
        if (slot >= 0) {
          const int64_t off = slot * kv_stride + static_cast<int64_t>(kv_head) * D + d;
          kx = load_pair_dq(kv.k + off, RowScale{sc_s[4 * kk], sc_s[4 * kk + 1]});
          vx = load_pair_dq(kv.v + off, RowScale{sc_s[4 * kk + 2], sc_s[4 * kk + 3]});
        }
        store_pair(k_s + kk * TS + d, kx);
        store_pair(v_s + kk * TS + d, vx);
      }
    } else {
      for (int i = tid; i < kWmmaKeys * D; i += kWmmaThreads) {
        const int kk = i / D, d = i % D;
        const int64_t slot = slots[kk];
        T kx = zero, vx = zero;
        if (slot >= 0) {
          const int64_t off = slot * kv_stride + static_cast<int64_t>(kv_head) * D + d;
          kx = kv.k[off];
          vx = kv.v[off];
        }
        k_s[kk * TS + d] = kx;
        v_s[kk * TS + d] = vx;
      }
    }
    __syncthreads();

    // S = Q Kᵀ for the warp's 16 rows: K [key][d] read as the column-major d x key matrix Kᵀ.
    for (int j = 0; j < kWmmaKeys / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag;
      wmma::fill_fragment(s_frag, 0.f);
      for (int kd = 0; kd < D / 16; ++kd) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> k_frag;
        wmma::load_matrix_sync(q_frag, q_w + 16 * kd, TS);
        wmma::load_matrix_sync(k_frag, k_s + 16 * j * TS + 16 * kd, TS);
        wmma::mma_sync(s_frag, q_frag, k_frag, s_frag);
      }
      wmma::store_matrix_sync(s_w + 16 * j, s_frag, kWmmaSStride, wmma::mem_row_major);
    }
    __syncwarp();  // the warp's S rows are in shared memory

    // Online softmax of row rr: this lane takes keys [16 half, 16 half + 16).
    float s[16];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < 16; ++c) {
      const int kk = 16 * half + c;
      const int64_t key = k0 + kk;
      const bool visible = row_ok && slots[kk] >= 0 && key <= pos &&
                           (a.sliding_window <= 0 || pos - key < a.sliding_window);
      s[c] = visible ? s_s[rr * kWmmaSStride + kk] * a.scale + slope * static_cast<float>(key - pos) : -INFINITY;
      mx = fmaxf(mx, s[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);
    const float alpha = m_new == -INFINITY ? 1.f : __expf(m - m_new);
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < 16; ++c) {
      const float p = m_new == -INFINITY ? 0.f : __expf(s[c] - m_new);
      p_s[rr * kWmmaPStride + 16 * half + c] = from_float<T>(p);
      sum += p;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;
    if (alpha != 1.f)
      for (int d = half; d < D; d += 2) o_s[rr * OS + d] *= alpha;
    __syncwarp();  // P and the rescaled O rows of the warp are complete

    // O += P V for the warp's 16 rows, 16 channels at a time.
    for (int dd = 0; dd < D / 16; ++dd) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::load_matrix_sync(o_frag, o_w + 16 * dd, OS, wmma::mem_row_major);
      for (int j = 0; j < kWmmaKeys / 16; ++j) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v_frag;
        wmma::load_matrix_sync(p_frag, p_w + 16 * j, kWmmaPStride);
        wmma::load_matrix_sync(v_frag, v_s + 16 * j * TS + 16 * dd, TS);
        wmma::mma_sync(o_frag, p_frag, v_frag, o_frag);
      }
      wmma::store_matrix_sync(o_w + 16 * dd, o_frag, OS, wmma::mem_row_major);
    }
    __syncthreads();  // k_s, v_s and slots are rewritten by the next tile
  }

  __syncwarp();  // the warp's last O rows are stored
  if (!row_ok) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;  // no visible key (invalid input): zeros
  T* o = out.data + (sr.q_begin + qi) * out.token_stride + static_cast<int64_t>(h) * out.head_stride;
  for (int d = half; d < D; d += 2) o[d] = from_float<T>(o_s[rr * OS + d] * inv);
}

}  // namespace lmx::cuda
