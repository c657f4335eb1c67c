// The emulated CUDA kernels on plain heap arrays of exactly the right size, built with -fsanitize=address (and a
// second time with _FORTIFY_SOURCE): any read or write out of bounds aborts with the line. Device-side values that
// the host never checks for CUDA tensors are fed in out of range on purpose (slots past the cache, negative and
// too-large block ids, seq_lens past the block table, decreasing cu_seqlens) and must be skipped or clamped.
// Valid cases are also compared with a float64 reference. Runs every case under the rr, warp and warp-rev schedules.
// First, kernels that are wrong on purpose show that the emulator's detectors fire.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/launchers.h"
#include "cuda/compat.cuh"
#include "cuda/kv_quant.cuh"

using namespace lmx::cuda;

namespace {

int failures = 0;
std::mt19937 rng(1);

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

std::vector<float> randn(size_t n) {
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Paged batch: caches filled with NaN, then the keys of each sequence scattered into its blocks.
struct Batch {
  int B, Hq, Hkv, D, bs, max_blocks, num_blocks;
  std::vector<int32_t> table, seq_lens, cu;
  std::vector<float> q, kc, vc;
  int64_t T() const { return cu.back(); }
};

Batch make_batch(std::vector<int> lens, std::vector<int> qlens, int Hq, int Hkv, int D, int bs) {
  Batch b{static_cast<int>(lens.size()), Hq, Hkv, D, bs, 0, 0, {}, {}, {0}, {}, {}, {}};
  for (int L : lens) b.max_blocks = std::max(b.max_blocks, (L + bs - 1) / bs);
  b.num_blocks = b.B * b.max_blocks + 2;
  b.kc.assign(static_cast<size_t>(b.num_blocks) * bs * Hkv * D, NAN);
  b.vc = b.kc;
  b.table.assign(static_cast<size_t>(b.B) * b.max_blocks, -1);
  int next = 1;
  for (int s = 0; s < b.B; ++s) {
    for (int i = 0; i < (lens[s] + bs - 1) / bs; ++i) b.table[s * b.max_blocks + i] = next++;
    for (int j = 0; j < lens[s]; ++j) {
      const int64_t slot = static_cast<int64_t>(b.table[s * b.max_blocks + j / bs]) * bs + j % bs;
      auto k = randn(Hkv * D), v = randn(Hkv * D);
      std::copy(k.begin(), k.end(), b.kc.begin() + slot * Hkv * D);
      std::copy(v.begin(), v.end(), b.vc.begin() + slot * Hkv * D);
    }
    b.seq_lens.push_back(lens[s]);
    b.cu.push_back(b.cu.back() + qlens[s]);
  }
  b.q = randn(static_cast<size_t>(b.T()) * Hq * D);
  return b;
}

PagedAttentionArgs args_of(const Batch& b, int window = -1, const float* alibi = nullptr) {
  PagedAttentionArgs a;
  a.num_tokens = b.T();
  a.num_seqs = b.B;
  a.num_q_heads = b.Hq;
  a.num_kv_heads = b.Hkv;
  a.head_dim = b.D;
  a.block_size = b.bs;
  a.max_blocks_per_seq = b.max_blocks;
  a.num_blocks = b.num_blocks;
  a.scale = 1.0f / std::sqrt(static_cast<float>(b.D));
  a.sliding_window = window;
  a.block_tables = b.table.data();
  a.seq_lens = b.seq_lens.data();
  a.cu_seqlens_q = b.cu.data();
  a.alibi_slopes = alibi;
  return a;
}

// float64 attention of the valid batch.
std::vector<double> reference(const Batch& b, int window) {
  std::vector<double> out(static_cast<size_t>(b.T()) * b.Hq * b.D, 0.0);
  const int G = b.Hq / b.Hkv;
  for (int s = 0; s < b.B; ++s) {
    const int n = b.cu[s + 1] - b.cu[s], L = b.seq_lens[s];
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < b.Hq; ++h) {
        const int p = L - n + i, kvh = h / G;
        const int lo = window > 0 ? std::max(0, p - window + 1) : 0;
        std::vector<double> w;
        double mx = -INFINITY;
        for (int j = lo; j <= p; ++j) {
          const int64_t slot = static_cast<int64_t>(b.table[s * b.max_blocks + j / b.bs]) * b.bs + j % b.bs;
          double dot = 0;
          for (int d = 0; d < b.D; ++d)
            dot += double(b.q[((b.cu[s] + i) * b.Hq + h) * b.D + d]) * b.kc[(slot * b.Hkv + kvh) * b.D + d];
          w.push_back(dot / std::sqrt(double(b.D)));
          mx = std::max(mx, w.back());
        }
        double sum = 0;
        for (auto& x : w) sum += (x = std::exp(x - mx));
        for (int j = lo; j <= p; ++j) {
          const int64_t slot = static_cast<int64_t>(b.table[s * b.max_blocks + j / b.bs]) * b.bs + j % b.bs;
          for (int d = 0; d < b.D; ++d)
            out[((b.cu[s] + i) * b.Hq + h) * b.D + d] += w[j - lo] / sum * b.vc[(slot * b.Hkv + kvh) * b.D + d];
        }
      }
  }
  return out;
}

std::vector<float> attend(const Batch& b, bool decode, int window, int partition) {
  const PagedAttentionArgs a = args_of(b, window);
  std::vector<float> out(static_cast<size_t>(b.T()) * b.Hq * b.D, 0.f);
  const HeadsView<float> o{out.data(), int64_t(b.Hq) * b.D, b.D, b.Hq};
  const HeadsView<const float> q{b.q.data(), int64_t(b.Hq) * b.D, b.D, b.Hq};
  if (decode) {
    std::vector<unsigned char> ws(decode_workspace_bytes(a, partition));
    launch_paged_attention_decode<float>(a, o, q, b.kc.data(), b.vc.data(), ws.empty() ? nullptr : ws.data(),
                                         partition, nullptr);
  } else {
    launch_paged_attention_prefill<float>(a, o, q, b.kc.data(), b.vc.data(), nullptr);
  }
  return out;
}

// The batch rounded to fp16 (the float copies rounded too, so the float64 reference sees the same inputs), run by
// the kernel the glue picks for fp16 (tensor cores for head_dim % 16 == 0, the CUDA-core kernel otherwise).
std::vector<float> attend_half(Batch& b, int window, bool* used_wmma) {
  auto round = [](std::vector<float>& v, std::vector<__half>& h) {
    h.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      h[i] = __float2half_rn(v[i]);
      v[i] = std::isnan(v[i]) ? v[i] : __half2float(h[i]);
    }
  };
  std::vector<__half> q, kc, vc;
  round(b.q, q);
  round(b.kc, kc);
  round(b.vc, vc);
  const PagedAttentionArgs a = args_of(b, window);
  std::vector<__half> out(static_cast<size_t>(b.T()) * b.Hq * b.D, __float2half_rn(0.f));
  const HeadsView<__half> o{out.data(), int64_t(b.Hq) * b.D, b.D, b.Hq};
  const HeadsView<const __half> qv{q.data(), int64_t(b.Hq) * b.D, b.D, b.Hq};
  *used_wmma = use_prefill_wmma(a, true);
  if (*used_wmma) launch_paged_attention_prefill_wmma<__half>(a, o, qv, kc.data(), vc.data(), nullptr);
  else launch_paged_attention_prefill<__half>(a, o, qv, kc.data(), vc.data(), nullptr);
  std::vector<float> r(out.size());
  for (size_t i = 0; i < out.size(); ++i) r[i] = __half2float(out[i]);
  return r;
}

void half_attention_cases(const char* sched) {
  // head_dim 64: tensor cores; head_dim 72 (not a multiple of 16): the CUDA-core fallback.
  for (int D : {64, 72})
    for (int window : {-1, 9}) {
      Batch b = make_batch({37, 1, 130}, {20, 1, 40}, 8, 2, D, 16);
      bool wmma = false;
      const auto out = attend_half(b, window, &wmma);
      const auto ref = reference(b, window);
      double err = 0;
      for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::fabs(out[i] - ref[i]));
      expect(wmma == (D % 16 == 0), std::string("fp16 prefill head_dim ") + std::to_string(D) + ": " +
                                        (wmma ? "tensor cores" : "CUDA cores") + " chosen");
      expect(err < 4e-3, std::string("fp16 prefill ") + (wmma ? "wmma " : "simt ") + sched + ": max error " +
                             std::to_string(err) + " (head_dim " + std::to_string(D) + ", window " +
                             std::to_string(window) + ")");
    }
  // Invalid device-side values on tensor cores: nothing out of bounds, every output finite.
  Batch b = make_batch({40, 20, 33}, {1, 2, 3}, 4, 2, 64, 16);
  b.kc = randn(b.kc.size());
  b.vc = randn(b.vc.size());
  b.table[0] = -5;
  b.table[1] = b.num_blocks + 3;
  b.seq_lens[1] = 1 << 20;
  b.seq_lens[2] = 1;
  bool wmma = false;
  auto out = attend_half(b, -1, &wmma);
  bool finite = wmma;
  for (float x : out) finite = finite && std::isfinite(x);
  expect(finite, std::string("fp16 prefill wmma ") + sched + ": bad block ids / seq_lens give finite outputs");
}

void attention_cases(const char* sched) {
  for (bool decode : {true, false}) {
    const std::string k = std::string(decode ? "decode" : "prefill") + " " + sched;
    // Valid: compared with float64.
    for (int window : {-1, 7}) {
      Batch b = make_batch({37, 1, 130}, {1, 1, decode ? 1 : 20}, 8, 2, 80, 16);
      const auto out = attend(b, decode, window, 64);
      const auto ref = reference(b, window);
      double err = 0;
      for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::fabs(out[i] - ref[i]));
      expect(err < 1e-5, k + ": max error " + std::to_string(err) + " (window " + std::to_string(window) + ")");
    }
    // Invalid device-side values: nothing out of bounds, every output finite.
    Batch b = make_batch({40, 20, 33}, {1, 2, 3}, 4, 2, 64, 16);
    b.kc = randn(b.kc.size());  // finite everywhere: seq_lens past the written keys read (in-bounds) slots
    b.vc = randn(b.vc.size());
    b.table[0] = -5;                         // negative block id
    b.table[1] = b.num_blocks + 3;           // block id past the cache
    b.seq_lens[1] = 1 << 20;                 // longer than the block table holds
    b.seq_lens[2] = 1;                       // fewer keys than queries
    auto out = attend(b, decode, -1, 64);
    bool finite = true;
    for (float x : out) finite = finite && std::isfinite(x);
    expect(finite, k + ": bad block ids / seq_lens give finite outputs");
    Batch c = b;
    c.cu = {0, 5, 2, 6};                     // decreasing (T stays 6 for the buffers)
    out = attend(c, decode, -1, 64);
    finite = true;
    for (float x : out) finite = finite && std::isfinite(x);
    expect(finite, k + ": decreasing cu_seqlens_q give finite outputs");
  }
}

void rotary_and_cache_cases(const char* sched) {
  const int T = 9, Hq = 4, Hkv = 2, D = 64, bs = 4, nblocks = 3, slots = nblocks * bs;
  lmx::RopeParams rope{lmx::RopeScaling::kDynamic, 10000.0, 2.0, 8.0, 8.0, 1.0, 4.0, 32.0, 1.0, 1.0, true, 48};
  std::vector<int64_t> positions = {0, 1, 2, 3, 100, 101, 102, 5000000, 7};
  std::vector<int32_t> cu = {0, 4, 9};
  std::vector<int64_t> slot_mapping = {0, -1, slots, slots + 1000, 5, 11, INT64_MAX, -7, 3};
  auto q = randn(T * Hq * D), k = randn(T * Hkv * D), v = randn(T * Hkv * D);
  const auto q0 = q, k0 = k;
  std::vector<float> kc(slots * Hkv * D, NAN), vc = kc;
  std::vector<float> ws(rotary_workspace_floats(rope, 2));
  for (bool neox : {true, false})
    for (bool precise : {false, true}) {
      q = q0;
      k = k0;
      launch_rotary_embedding<float>(rope, neox, precise, T, D, positions.data(), cu.data(), nullptr, 2, ws.data(),
                                     {q.data(), Hq * D, D, Hq}, {k.data(), Hkv * D, D, Hkv}, {v.data(), Hkv * D, D, Hkv},
                                     kc.data(), vc.data(), slot_mapping.data(), slots, nullptr);
      // A rotation keeps each pair's norm; channels past rotary_dim are untouched.
      double worst = 0;
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < Hq; ++h) {
          const float* x = &q[(t * Hq + h) * D];
          const float* x0 = &q0[(t * Hq + h) * D];
          double n1 = 0, n0 = 0;
          for (int c = 0; c < 48; ++c) n1 += x[c] * x[c], n0 += x0[c] * x0[c];
          worst = std::max(worst, std::fabs(n1 - n0) / n0);
          for (int c = 48; c < D; ++c) worst = std::max(worst, double(x[c] != x0[c]));
        }
      expect(worst < 1e-5, std::string("rotary ") + sched + ": norms kept, rest untouched");
    }
  int written = 0;
  for (int s = 0; s < slots; ++s) written += !std::isnan(kc[s * Hkv * D]);
  expect(written == 4, std::string("rotary cache ") + sched + ": exactly the 4 valid slots written, got " +
                           std::to_string(written));
  std::vector<float> kc2(slots * Hkv * D, NAN), vc2 = kc2;
  std::vector<__nv_bfloat16> kb(slots * Hkv * D), vb(slots * Hkv * D);
  launch_reshape_and_cache<float, float>(T, D, {k.data(), Hkv * D, D, Hkv}, {v.data(), Hkv * D, D, Hkv}, kc2.data(),
                                         vc2.data(), slot_mapping.data(), slots, nullptr);
  launch_reshape_and_cache<float, __nv_bfloat16>(T, D, {k.data(), Hkv * D, D, Hkv}, {v.data(), Hkv * D, D, Hkv},
                                                 kb.data(), vb.data(), slot_mapping.data(), slots, nullptr);
  written = 0;
  for (int s = 0; s < slots; ++s) written += !std::isnan(kc2[s * Hkv * D]);
  expect(written == 4 && kc2[5 * Hkv * D] == k[4 * Hkv * D], std::string("reshape_and_cache ") + sched);
}

// ---- quantized caches (int8, fp8): the scale arrays sized exactly, device-side values out of range --------------
// int8 row quantization as the contract defines it (the kernels' arithmetic, for the float64 reference's inputs).
void dequant_int8(const std::vector<int8_t>& q, const std::vector<float>& sz, int D, std::vector<float>& out) {
  out.resize(q.size());
  for (size_t r = 0; r < sz.size() / 2; ++r)
    for (int d = 0; d < D; ++d) out[r * D + d] = float(q[r * D + d]) * sz[2 * r] + sz[2 * r + 1];
}

void quant_cases(const char* sched) {
  const std::string tag = std::string(" ") + sched;
  // reshape_and_cache into int8 / fp8 with bad slots: exactly the valid slots written, nothing out of bounds.
  {
    const int T = 9, Hkv = 2, D = 64, bs = 4, nblocks = 3, slots = nblocks * bs;
    std::vector<int64_t> slot_mapping = {0, -1, slots, slots + 1000, 5, 11, INT64_MAX, -7, 3};
    auto k = randn(T * Hkv * D), v = randn(T * Hkv * D);
    std::vector<int8_t> kq(slots * Hkv * D, 99), vq = kq;
    std::vector<float> ks(slots * Hkv * 2, NAN), vs = ks;
    launch_reshape_and_cache_quant<float, int8_t>(T, D, {k.data(), Hkv * D, D, Hkv}, {v.data(), Hkv * D, D, Hkv},
                                                  kq.data(), vq.data(), ks.data(), vs.data(), slot_mapping.data(),
                                                  slots, nullptr);
    int written = 0;
    for (int s = 0; s < slots; ++s) written += !std::isnan(ks[s * Hkv * 2]) && !std::isnan(vs[s * Hkv * 2 + 2]);
    expect(written == 4, "int8 reshape_and_cache" + tag + ": exactly the 4 valid slots written, got " +
                             std::to_string(written));
    double err = 0;  // a row's error is at most half a step
    for (int h = 0; h < Hkv; ++h)
      for (int d = 0; d < D; ++d) {
        const size_t r = 5 * Hkv + h;
        const double xh = double(kq[r * D + d]) * ks[2 * r] + ks[2 * r + 1];
        err = std::max(err, std::fabs(xh - k[(4 * Hkv + h) * D + d]) / ks[2 * r]);
      }
    expect(err <= 0.5 + 1e-3, "int8 reshape_and_cache" + tag + ": error within half a step, got " + std::to_string(err));
    std::vector<fp8_e4m3> kf(slots * Hkv * D, fp8_e4m3{0x7f}), vf = kf;
    std::vector<float> fs = {0.02f, 0.03f};
    launch_reshape_and_cache_quant<float, fp8_e4m3>(T, D, {k.data(), Hkv * D, D, Hkv}, {v.data(), Hkv * D, D, Hkv},
                                                    kf.data(), vf.data(), fs.data(), fs.data(), slot_mapping.data(),
                                                    slots, nullptr);
    written = 0;
    for (int s = 0; s < slots; ++s) written += kf[s * Hkv * D].bits != 0x7f;
    expect(written == 4, "fp8 reshape_and_cache" + tag + ": exactly the 4 valid slots written");
    // The fused rotary + int8 cache write with the same bad slots.
    lmx::RopeParams rope{lmx::RopeScaling::kDynamic, 10000.0, 2.0, 8.0, 8.0, 1.0, 4.0, 32.0, 1.0, 1.0, true, 48};
    std::vector<int64_t> positions = {0, 1, 2, 3, 100, 101, 102, 5000000, 7};
    std::vector<int32_t> cu = {0, 4, 9};
    auto q = randn(T * 4 * D);
    std::vector<float> ws(rotary_workspace_floats(rope, 2));
    std::fill(ks.begin(), ks.end(), NAN);
    launch_rotary_embedding<float, int8_t>(rope, true, false, T, D, positions.data(), cu.data(), nullptr, 2,
                                           ws.data(), {q.data(), 4 * D, D, 4}, {k.data(), Hkv * D, D, Hkv},
                                           {v.data(), Hkv * D, D, Hkv}, kq.data(), vq.data(), ks.data(), vs.data(),
                                           slot_mapping.data(), slots, nullptr);
    written = 0;
    for (int s = 0; s < slots; ++s) written += !std::isnan(ks[s * Hkv * 2]);
    expect(written == 4, "rotary + int8 cache" + tag + ": exactly the 4 valid slots written");
  }
  // Attention on int8 / fp8 caches: valid batches against float64 on the dequantized values; bad device-side values
  // (block ids, seq_lens) read nothing out of bounds and give finite outputs.
  for (bool decode : {true, false})
    for (bool fp8 : {false, true}) {
      const std::string k = std::string(decode ? "decode" : "prefill") + (fp8 ? " fp8" : " int8") + tag;
      Batch b = make_batch({37, 1, 130}, {1, 1, decode ? 1 : 20}, 8, 2, 80, 16);
      b.kc = randn(b.kc.size());  // finite everywhere: seq_lens past the written keys read (in-bounds) slots
      b.vc = randn(b.vc.size());
      const size_t rows = b.kc.size() / b.D;
      std::vector<int8_t> kq(b.kc.size()), vq(b.kc.size());
      std::vector<fp8_e4m3> kf(b.kc.size()), vf(b.kc.size());
      std::vector<float> ksz(2 * rows), vsz(2 * rows), fs = {0.01f, 0.012f};
      std::vector<int64_t> all(rows / b.Hkv);
      for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
      const HeadsView<const float> kin{b.kc.data(), int64_t(b.Hkv) * b.D, b.D, b.Hkv};
      const HeadsView<const float> vin{b.vc.data(), int64_t(b.Hkv) * b.D, b.D, b.Hkv};
      if (fp8) {
        launch_reshape_and_cache_quant<float, fp8_e4m3>(int64_t(all.size()), b.D, kin, vin, kf.data(), vf.data(),
                                                        fs.data(), fs.data(), all.data(), int64_t(all.size()), nullptr);
        for (size_t i = 0; i < b.kc.size(); ++i) {
          const int h = int(i / b.D) % b.Hkv;
          b.kc[i] = e4m3_to_float(kf[i].bits) * fs[h];
          b.vc[i] = e4m3_to_float(vf[i].bits) * fs[h];
        }
      } else {
        launch_reshape_and_cache_quant<float, int8_t>(int64_t(all.size()), b.D, kin, vin, kq.data(), vq.data(),
                                                      ksz.data(), vsz.data(), all.data(), int64_t(all.size()), nullptr);
        dequant_int8(kq, ksz, b.D, b.kc);
        dequant_int8(vq, vsz, b.D, b.vc);
      }
      auto run = [&](const Batch& bb) {
        const PagedAttentionArgs a = args_of(bb);
        std::vector<float> out(static_cast<size_t>(bb.T()) * bb.Hq * bb.D, 0.f);
        const HeadsView<float> o{out.data(), int64_t(bb.Hq) * bb.D, bb.D, bb.Hq};
        const HeadsView<const float> qv{bb.q.data(), int64_t(bb.Hq) * bb.D, bb.D, bb.Hq};
        std::vector<unsigned char> ws(decode_workspace_bytes(a, 64));
        if (fp8) {
          const KvCache<fp8_e4m3> kv{kf.data(), vf.data(), fs.data(), fs.data()};
          if (decode) launch_paged_attention_decode<float, fp8_e4m3>(a, o, qv, kv, ws.empty() ? nullptr : ws.data(), 64, nullptr);
          else launch_paged_attention_prefill<float, fp8_e4m3>(a, o, qv, kv, nullptr);
        } else {
          const KvCache<int8_t> kv{kq.data(), vq.data(), ksz.data(), vsz.data()};
          if (decode) launch_paged_attention_decode<float, int8_t>(a, o, qv, kv, ws.empty() ? nullptr : ws.data(), 64, nullptr);
          else launch_paged_attention_prefill<float, int8_t>(a, o, qv, kv, nullptr);
        }
        return out;
      };
      const auto out = run(b);
      const auto ref = reference(b, -1);
      double err = 0;
      for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::fabs(out[i] - ref[i]));
      expect(err < 1e-5, k + ": max error " + std::to_string(err));
      Batch c = b;
      c.table[0] = -5;
      c.table[1] = c.num_blocks + 3;
      c.seq_lens[1] = 1 << 20;
      c.seq_lens[2] = 1;
      c.cu = {0, 1, 2, 3};
      c.cu.back() = int32_t(b.T());  // T unchanged for the buffers
      bool finite = true;
      for (float x : run(c)) finite = finite && std::isfinite(x);
      expect(finite, k + ": bad block ids / seq_lens give finite outputs");
    }
}

// ---- the emulator's own detectors fire (each kernel below is wrong on purpose) -------------------------------
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 32) __syncthreads();  // half the block never arrives
  out[threadIdx.x] = 1;
}
__global__ void barrier_after_exit(int* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}
__global__ void mixed_masks(int* out) {
  // Odd lanes leave lane 0 out of the mask that even lanes use, in the same collective.
  out[threadIdx.x] = __shfl_xor_sync(threadIdx.x & 1 ? 0xfffffffeu : 0xffffffffu, int(threadIdx.x), 1);
}
__global__ void read_unwritten_smem(float* out) {
  LMX_DYNAMIC_SMEM(float, s);
  out[threadIdx.x] = s[threadIdx.x];  // never written: the emulator's poison reads as NaN
}
__global__ void big_smem(float* out) {
  LMX_DYNAMIC_SMEM(float, s);
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = s[threadIdx.x];
}

namespace wmma = nvcuda::wmma;
// Lanes 0..15 only: a warp-collective operation reached by half the warp.
__global__ void wmma_divergent(float* out) {
  LMX_DYNAMIC_SMEM(__half, s);
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  if (threadIdx.x < 16) wmma::load_matrix_sync(a, s, 16);
  out[threadIdx.x] = 0.f;
}
// Lanes that load different tiles in the same call.
__global__ void wmma_lane_pointers(float* out) {
  LMX_DYNAMIC_SMEM(__half, s);
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  wmma::load_matrix_sync(a, s + 256 * (threadIdx.x % 2), 16);
  out[threadIdx.x] = 0.f;
}
__global__ void wmma_misaligned(float* out) {
  LMX_DYNAMIC_SMEM(__half, s);
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
  wmma::load_matrix_sync(b, s + 8, 16);  // 16 bytes past a 32-byte boundary
  out[threadIdx.x] = 0.f;
}
__global__ void wmma_bad_ldm(float* out) {
  LMX_DYNAMIC_SMEM(float, s);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::fill_fragment(c, 0.f);
  wmma::store_matrix_sync(s, c, 18, wmma::mem_row_major);  // 72 bytes: not a multiple of 16
  out[threadIdx.x] = 0.f;
}
__global__ void wmma_after_exit(float* out) {
  if (threadIdx.x == 5) return;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::fill_fragment(c, 1.f);
  out[threadIdx.x] = 0.f;
}
__global__ void wmma_fill(float* out) {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::fill_fragment(c, 1.f);
  out[threadIdx.x] = c.x[0];
}
// A correct 16x16x16 product through the emulated fragments: D = A B + C, A row-major, B col-major.
__global__ void wmma_gemm(const __half* A, const __half* B, const float* C, float* D) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::load_matrix_sync(a, A, 16);
  wmma::load_matrix_sync(b, B, 16);
  wmma::load_matrix_sync(c, C, 16, wmma::mem_row_major);
  wmma::mma_sync(c, a, b, c);
  wmma::store_matrix_sync(D, c, 16, wmma::mem_col_major);
}

template <typename F>
bool launch_fails(F&& f, const char* needle) {
  try {
    f();
  } catch (const std::exception& e) {
    const bool ok = std::string(e.what()).find(needle) != std::string::npos;
    if (!ok) std::printf("  (got: %s)\n", e.what());
    return ok;
  }
  return false;
}

void emulator_detectors() {
  std::vector<int> out(64);
  std::vector<float> fout(64);
  expect(launch_fails([&] { LMX_LAUNCH(divergent_barrier, dim3(1), dim3(64), 0, nullptr, out.data()); }, "__syncthreads"),
         "emulator: a __syncthreads that half the block skips is reported");
  expect(launch_fails([&] { LMX_LAUNCH(barrier_after_exit, dim3(1), dim3(64), 0, nullptr, out.data()); }, "exited"),
         "emulator: a barrier after a thread exited is reported");
  expect(launch_fails([&] { LMX_LAUNCH(mixed_masks, dim3(1), dim3(32), 0, nullptr, out.data()); }, "masks"),
         "emulator: lanes with different shuffle masks are reported");
  LMX_LAUNCH(read_unwritten_smem, dim3(1), dim3(64), 64 * sizeof(float), nullptr, fout.data());
  bool all_nan = true;
  for (float x : fout) all_nan = all_nan && std::isnan(x);
  expect(all_nan, "emulator: unwritten dynamic shared memory reads as NaN");
  expect(launch_fails([&] { LMX_LAUNCH(big_smem, dim3(1), dim3(64), 64 * 1024, nullptr, fout.data()); }, "limit of 49152"),
         "emulator: over 48 KiB of dynamic shared memory without cudaFuncSetAttribute is refused");
  cudaFuncSetAttribute(big_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  expect(!launch_fails([&] { LMX_LAUNCH(big_smem, dim3(1), dim3(64), 64 * 1024, nullptr, fout.data()); }, ""),
         "emulator: 64 KiB after cudaFuncSetAttribute launches");
  expect(launch_fails([&] { LMX_LAUNCH(big_smem, dim3(1, 70000), dim3(64), 0, nullptr, fout.data()); }, "grid"),
         "emulator: grid.y over 65535 is refused");
  const size_t sm = 4096;
  expect(launch_fails([&] { LMX_LAUNCH(wmma_divergent, dim3(1), dim3(32), sm, nullptr, fout.data()); }, "exited"),
         "emulator: a wmma load reached by half the warp is reported");
  expect(launch_fails([&] { LMX_LAUNCH(wmma_lane_pointers, dim3(1), dim3(32), sm, nullptr, fout.data()); },
                      "divergent lanes"),
         "emulator: lanes of one wmma load with different pointers are reported");
  expect(launch_fails([&] { LMX_LAUNCH(wmma_misaligned, dim3(1), dim3(32), sm, nullptr, fout.data()); }, "aligned"),
         "emulator: a wmma pointer off a 32-byte boundary is reported");
  expect(launch_fails([&] { LMX_LAUNCH(wmma_bad_ldm, dim3(1), dim3(32), sm, nullptr, fout.data()); }, "ldm"),
         "emulator: a wmma ldm that is not 16 bytes' worth of elements is reported");
  expect(launch_fails([&] { LMX_LAUNCH(wmma_after_exit, dim3(1), dim3(64), 0, nullptr, fout.data()); }, "exited"),
         "emulator: a wmma call after a lane of the warp exited is reported");
  expect(launch_fails([&] { LMX_LAUNCH(wmma_fill, dim3(1), dim3(40), 0, nullptr, fout.data()); },
                      "whole warp"),
         "emulator: wmma in a partial warp is reported");
  // The emulated fragments multiply correctly (layouts of A, B, C and D all exercised).
  alignas(32) __half A[256], B[256];
  alignas(32) float C[256], D[256];
  for (int i = 0; i < 256; ++i) {
    A[i] = __float2half_rn(static_cast<float>((i * 7) % 13 - 6));
    B[i] = __float2half_rn(static_cast<float>((i * 5) % 11 - 5));
    C[i] = static_cast<float>(i % 9) - 4.f;
  }
  LMX_LAUNCH(wmma_gemm, dim3(1), dim3(32), 0, nullptr, A, B, C, D);
  bool gemm_ok = true;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float want = C[m * 16 + n];
      for (int k = 0; k < 16; ++k) want += __half2float(A[m * 16 + k]) * __half2float(B[n * 16 + k]);
      gemm_ok = gemm_ok && D[n * 16 + m] == want;  // small integers: exact
    }
  expect(gemm_ok, "emulator: wmma D = A B + C (A row-major, B col-major, C row-major in, D col-major out)");
}

}  // namespace

int main() {
#ifndef __SANITIZE_ADDRESS__
  // Not under ASan: a detector reports by throwing inside a fiber, and ASan misreads an exception unwinding on a
  // swapcontext stack (stack-use-after-scope in __asan_handle_no_return, google/sanitizers#189).
  emulator_detectors();
#endif
  for (const char* sched : {"rr", "warp", "warp-rev"}) {
    lmx_emu::configure(sched, 0, 2);
    attention_cases(sched);
    half_attention_cases(sched);
    rotary_and_cache_cases(sched);
    quant_cases(sched);
  }
  std::printf("emu harness (%s): %s, %lld blocks run\n",
#ifdef LMX_EMU_SWAPCONTEXT
              "swapcontext fibers",
#else
              "setjmp fibers",
#endif
              failures ? "FAILED" : "all cases passed", static_cast<long long>(lmx_emu::g_blocks_run.load()));
  return failures ? 1 : 0;
}
