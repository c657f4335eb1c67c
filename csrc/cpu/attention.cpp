// CPU paged attention: decode, prefill and chunked prefill in one kernel.
//
// This file is compiled once per instruction set (CMake defines LMX_ISA = avx2 or baseline and the matching
// compiler flags); csrc/cpu/attention_dispatch.cpp picks one at run time. Plain C++ loops, written so the compiler
// vectorises them (omp simd, no branches in the inner loops).
//
// Work decomposition. A work item is (sequence b, kv head h, a tile of that sequence's queries, a range of its
// keys). The tile's rows are (query token i, query head g of kv head h) pairs, so GQA reads every K/V byte once
// for the whole group. Keys are visited in tiles of kKeyTile gathered from the paged cache into contiguous fp32
// buffers; scores, an online softmax (running max m, running sum l, unnormalised output acc) and the P·V
// product are fp32. When there are too few items to occupy every thread (decode of a few long sequences), the
// key range is split (flash-decoding) and the partial (m, l, acc) states are merged in fp32 afterwards. Memory is
// O(rows × kKeyTile) per thread: no [T, T] buffer ever exists.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "blas.h"
#include "kernels.h"

#ifndef LMX_ISA
#error "LMX_ISA must name the instruction set this file is compiled for"
#endif

namespace lmx::cpu::LMX_ISA {
namespace {

constexpr int64_t kKeyTile = 256;      // keys per tile
constexpr int64_t kRowsPerTile = 256;  // target query rows (tokens × group) per work item
constexpr int64_t kMinKeysPerSplit = 512;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (the online softmax only needs that range), ~2 ulp, branch-free so loops vectorise.
// Values below -87 (including -inf, the masked scores) give exactly 0.
inline float exp_nonpositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float t = xc * 1.44269504088896341f;           // x / ln 2
  const float shifter = 12582912.0f;                    // 1.5 * 2^23: round to nearest by addition
  const float rounded = t + shifter;
  int32_t n;
  std::memcpy(&n, &rounded, sizeof(n));
  n -= 0x4B400000;                                      // the integer part
  const float nf = rounded - shifter;
  const float f = (xc - nf * 0.693145751953125f) - nf * 1.428606765330187045e-06f;  // x - n ln 2, two steps
  float p = 1.9875691500e-4f;
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  p = p * f * f + f + 1.0f;
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float r = p * scale;
  return x < -87.0f ? 0.0f : r;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

template <typename scalar_t>
inline void to_float(const scalar_t* src, float* dst, int64_t n, float mul) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * mul;
}

struct WorkItem {
  int64_t seq;
  int64_t kv_head;
  int64_t q_begin;    // first query of the tile, counted within the sequence
  int64_t q_count;    // queries (tokens) in the tile
  int64_t key_begin;  // key range of this item (a split of the visible range)
  int64_t key_end;
  int64_t partial;    // -1: write the output; else offset (in rows) into the partial-state buffers
  int64_t cost;
};

// Per-thread scratch.
struct Scratch {
  std::vector<float> q, k, v, s, acc, m, l;
  void reserve(int64_t rows, int64_t head_dim) {
    q.resize(rows * head_dim);
    acc.resize(rows * head_dim);
    s.resize(rows * kKeyTile);
    k.resize(kKeyTile * head_dim);
    v.resize(kKeyTile * head_dim);
    m.resize(rows);
    l.resize(rows);
  }
};

template <typename scalar_t>
class PagedAttention {
 public:
  PagedAttention(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                 const scalar_t* k_cache, const scalar_t* v_cache)
      : p_(p), out_(out), query_(query), k_cache_(k_cache), v_cache_(v_cache), group_(p.num_q_heads / p.num_kv_heads),
        q_tile_(std::max<int64_t>(1, kRowsPerTile / group_)) {}

  void run() {
    build_work();
    const int64_t num_threads = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(work_.size()));
    std::atomic<int64_t> next{0};
    // One task per thread; each pulls items (heaviest first) from a shared counter, so causal prefill tiles of
    // very different cost still balance.
    at::parallel_for(0, std::max<int64_t>(num_threads, 1), 1, [&](int64_t, int64_t) {
      Scratch scratch;
      scratch.reserve(q_tile_ * group_, p_.head_dim);
      const int previous_blas_threads = blas_single_thread();
      for (int64_t i = next.fetch_add(1); i < static_cast<int64_t>(work_.size()); i = next.fetch_add(1))
        process(work_[i], scratch);
      blas_restore_threads(previous_blas_threads);
    });
    if (!merges_.empty()) merge_splits();
  }

 private:
  struct Merge {
    WorkItem tile;   // the unsplit item; tile.partial is the offset of split 0's rows
    int64_t splits;  // split s holds rows [tile.partial + s * rows, tile.partial + (s + 1) * rows)
  };

  void build_work() {
    std::vector<WorkItem> tiles;
    for (int64_t b = 0; b < p_.num_seqs; ++b) {
      const int64_t n = p_.cu_seqlens_q[b + 1] - p_.cu_seqlens_q[b];
      const int64_t len = p_.seq_lens[b];
      for (int64_t q0 = 0; q0 < n; q0 += q_tile_) {
        const int64_t qn = std::min(q_tile_, n - q0);
        const int64_t first_pos = len - n + q0, last_pos = first_pos + qn - 1;
        const int64_t key_begin = p_.sliding_window > 0 ? std::max<int64_t>(0, first_pos - p_.sliding_window + 1) : 0;
        for (int64_t h = 0; h < p_.num_kv_heads; ++h)
          tiles.push_back({b, h, q0, qn, key_begin, last_pos + 1, -1, qn * (last_pos + 1 - key_begin)});
      }
    }
    // Split the key range when the items alone cannot keep every thread busy.
    const int64_t threads = at::get_num_threads();
    int64_t splits = 1;
    if (static_cast<int64_t>(tiles.size()) < 4 * threads) splits = (4 * threads + tiles.size() - 1) / tiles.size();
    int64_t partial_rows = 0;
    for (const WorkItem& tile : tiles) {
      const int64_t span = tile.key_end - tile.key_begin;
      const int64_t n_split = std::max<int64_t>(1, std::min<int64_t>(splits, span / kMinKeysPerSplit));
      if (n_split == 1) {
        work_.push_back(tile);
        continue;
      }
      const int64_t chunk = ((span + n_split - 1) / n_split + kKeyTile - 1) / kKeyTile * kKeyTile;
      const int64_t rows = tile.q_count * group_;
      int64_t made = 0;
      for (int64_t k0 = tile.key_begin; k0 < tile.key_end; k0 += chunk, ++made) {
        WorkItem part = tile;
        part.key_begin = k0;
        part.key_end = std::min(tile.key_end, k0 + chunk);
        part.partial = partial_rows + made * rows;
        part.cost = tile.q_count * (part.key_end - part.key_begin);
        work_.push_back(part);
      }
      WorkItem merged = tile;
      merged.partial = partial_rows;
      merges_.push_back({merged, made});
      partial_rows += made * rows;
    }
    std::stable_sort(work_.begin(), work_.end(), [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
    partial_acc_.assign(partial_rows * p_.head_dim, 0.0f);
    partial_m_.assign(partial_rows, kNegInf);
    partial_l_.assign(partial_rows, 0.0f);
  }

  // Gather keys [j0, j1) of kv head `h` of sequence `b` from the paged cache into a contiguous fp32 tile.
  void gather(const scalar_t* cache, int64_t b, int64_t h, int64_t j0, int64_t j1, float* dst) const {
    const int32_t* table = p_.block_tables + b * p_.max_blocks_per_seq;
    const int64_t D = p_.head_dim, Hkv = p_.num_kv_heads, bs = p_.block_size;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t slot = static_cast<int64_t>(table[j / bs]) * bs + j % bs;
      to_float(cache + (slot * Hkv + h) * D, dst + (j - j0) * D, D, 1.0f);
    }
  }

  void process(const WorkItem& w, Scratch& sc) const {
    const int64_t D = p_.head_dim, G = group_, rows = w.q_count * G;
    const int64_t n = p_.cu_seqlens_q[w.seq + 1] - p_.cu_seqlens_q[w.seq];
    const int64_t first_pos = p_.seq_lens[w.seq] - n + w.q_begin;  // position of the tile's first query
    const int64_t token0 = p_.cu_seqlens_q[w.seq] + w.q_begin;
    // Rows r = i * G + g: query token i, query head h * G + g. Queries are pre-scaled by the softmax scale.
    for (int64_t i = 0; i < w.q_count; ++i)
      for (int64_t g = 0; g < G; ++g)
        to_float(query_.data + (token0 + i) * query_.token_stride + (w.kv_head * G + g) * query_.head_stride,
                 sc.q.data() + (i * G + g) * D, D, p_.scale);
    std::fill(sc.acc.begin(), sc.acc.begin() + rows * D, 0.0f);
    std::fill(sc.m.begin(), sc.m.begin() + rows, kNegInf);
    std::fill(sc.l.begin(), sc.l.begin() + rows, 0.0f);
    const bool use_blas = blas_sgemm() != nullptr && rows >= 16;

    for (int64_t j0 = w.key_begin; j0 < w.key_end; j0 += kKeyTile) {
      const int64_t j1 = std::min(w.key_end, j0 + kKeyTile), kt = j1 - j0;
      gather(k_cache_, w.seq, w.kv_head, j0, j1, sc.k.data());
      gather(v_cache_, w.seq, w.kv_head, j0, j1, sc.v.data());
      float* s = sc.s.data();  // [rows, kt]
      if (use_blas) {  // column-major view: Sᵀ[kt, rows] = K[kt, D] · Qᵀ[D, rows]
        blas_gemm(true, false, kt, rows, D, 1.0f, sc.k.data(), D, sc.q.data(), D, 0.0f, s, kt);
      } else {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < kt; ++j) s[r * kt + j] = dot(sc.q.data() + r * D, sc.k.data() + j * D, D);
      }
      // Masks and biases: causal, sliding window, ALiBi.
      const int64_t last_pos = first_pos + w.q_count - 1;
      const bool full = (j1 - 1 <= first_pos) &&
                        (p_.sliding_window <= 0 || last_pos - j0 < p_.sliding_window);
      if (!full || p_.alibi_slopes != nullptr) {
        for (int64_t i = 0; i < w.q_count; ++i) {
          const int64_t pos = first_pos + i;
          const int64_t lo = p_.sliding_window > 0 ? pos - p_.sliding_window + 1 : 0;
          for (int64_t g = 0; g < G; ++g) {
            float* row = s + (i * G + g) * kt;
            if (p_.alibi_slopes != nullptr) {
              const float slope = p_.alibi_slopes[w.kv_head * G + g];
              for (int64_t j = 0; j < kt; ++j) row[j] += slope * static_cast<float>(j0 + j - pos);
            }
            for (int64_t j = 0; j < kt; ++j)
              if (j0 + j > pos || j0 + j < lo) row[j] = kNegInf;
          }
        }
      }
      // Online softmax, row by row.
      for (int64_t r = 0; r < rows; ++r) {
        float* row = s + r * kt;
        float mx = kNegInf;
#pragma omp simd reduction(max : mx)
        for (int64_t j = 0; j < kt; ++j) mx = row[j] > mx ? row[j] : mx;
        const float m_new = std::max(sc.m[r], mx);
        if (m_new == kNegInf) {  // every key so far is masked for this row
          std::fill(row, row + kt, 0.0f);
          continue;
        }
        const float alpha = exp_nonpositive(sc.m[r] - m_new);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < kt; ++j) {
          row[j] = exp_nonpositive(row[j] - m_new);
          sum += row[j];
        }
        sc.l[r] = sc.l[r] * alpha + sum;
        sc.m[r] = m_new;
        if (alpha != 1.0f) {
          float* acc = sc.acc.data() + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
        }
      }
      if (use_blas) {  // column-major view: accᵀ[D, rows] += Vᵀ[D, kt] · Pᵀ[kt, rows]
        blas_gemm(false, false, D, rows, kt, 1.0f, sc.v.data(), D, s, kt, 1.0f, sc.acc.data(), D);
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          float* acc = sc.acc.data() + r * D;
          const float* prob = s + r * kt;
          for (int64_t j = 0; j < kt; ++j) {
            const float pj = prob[j];
            if (pj == 0.0f) continue;
            const float* v = sc.v.data() + j * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] += pj * v[d];
          }
        }
      }
    }

    if (w.partial >= 0) {  // a split: keep the unnormalised state for merge_splits
      std::memcpy(partial_acc_.data() + w.partial * D, sc.acc.data(), rows * D * sizeof(float));
      std::memcpy(partial_m_.data() + w.partial, sc.m.data(), rows * sizeof(float));
      std::memcpy(partial_l_.data() + w.partial, sc.l.data(), rows * sizeof(float));
      return;
    }
    for (int64_t i = 0; i < w.q_count; ++i)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = i * G + g;
        const float inv_l = sc.l[r] > 0.0f ? 1.0f / sc.l[r] : 0.0f;
        scalar_t* dst = out_.data + (token0 + i) * out_.token_stride + (w.kv_head * G + g) * out_.head_stride;
        const float* acc = sc.acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(acc[d] * inv_l);
      }
  }

  // out = Σ_s acc_s e^{m_s - M} / Σ_s l_s e^{m_s - M}, M = max_s m_s, all in fp32.
  void merge_splits() {
    const int64_t D = p_.head_dim, G = group_;
    at::parallel_for(0, static_cast<int64_t>(merges_.size()), 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(D);
      for (int64_t k = begin; k < end; ++k) {
        const WorkItem& w = merges_[k].tile;
        const int64_t rows = w.q_count * G, splits = merges_[k].splits;
        const int64_t token0 = p_.cu_seqlens_q[w.seq] + w.q_begin;
        for (int64_t r = 0; r < rows; ++r) {
          float M = kNegInf;
          for (int64_t s = 0; s < splits; ++s) M = std::max(M, partial_m_[w.partial + s * rows + r]);
          std::fill(acc.begin(), acc.end(), 0.0f);
          float L = 0.0f;
          for (int64_t s = 0; s < splits; ++s) {
            const int64_t row = w.partial + s * rows + r;
            if (partial_m_[row] == kNegInf) continue;
            const float wgt = std::exp(partial_m_[row] - M);
            L += partial_l_[row] * wgt;
            const float* a = partial_acc_.data() + row * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += a[d] * wgt;
          }
          const float inv_l = L > 0.0f ? 1.0f / L : 0.0f;
          const int64_t i = r / G, g = r % G;
          scalar_t* dst = out_.data + (token0 + i) * out_.token_stride + (w.kv_head * G + g) * out_.head_stride;
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(acc[d] * inv_l);
        }
      }
    });
  }

  const AttentionParams& p_;
  TokenHeadView<scalar_t> out_;
  TokenHeadView<const scalar_t> query_;
  const scalar_t* k_cache_;
  const scalar_t* v_cache_;
  const int64_t group_;
  const int64_t q_tile_;
  std::vector<WorkItem> work_;
  std::vector<Merge> merges_;
  mutable std::vector<float> partial_acc_, partial_m_, partial_l_;
};

}  // namespace

template <typename scalar_t>
void paged_attention(const AttentionParams& p, TokenHeadView<scalar_t> out, TokenHeadView<const scalar_t> query,
                     const scalar_t* k_cache, const scalar_t* v_cache) {
  PagedAttention<scalar_t>(p, out, query, k_cache, v_cache).run();
}

LMX_INSTANTIATE_PAGED_ATTENTION(float)
LMX_INSTANTIATE_PAGED_ATTENTION(c10::BFloat16)
LMX_INSTANTIATE_PAGED_ATTENTION(c10::Half)

}  // namespace lmx::cpu::LMX_ISA
