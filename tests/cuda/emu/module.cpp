// Test-only module lmx_cuda_emu: the CUDA kernels of csrc/cuda/*_kernels.cu, compiled by the host C++ compiler with
// the emulator (csrc/cuda/emu/cuda_host_emu.h), registered for CPU tensors as torch.ops.lmx_emu.*. Each op runs the
// same checks (csrc/checks.h) and the same torch-side code (csrc/cuda/ops_cuda_run.h) as the real CUDA glue;
// only the device guard and the stream differ (no stream here).
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <string>

#include "cuda/emu/cuda_host_emu.h"
#include "cuda/ops_cuda_run.h"
#include "schemas.h"

namespace {

using namespace lmx;

void rotary_embedding(at::Tensor& query, const std::optional<at::Tensor>& key, const at::Tensor& positions,
                      int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                      const std::optional<at::Tensor>& cu_seqlens, const std::optional<at::Tensor>& rope_seq_lens,
                      bool precise) {
  const RopeInputs in = check_rotary_embedding("rotary_embedding", query, key, positions, rotary_dim, rope_params,
                                               cu_seqlens, rope_seq_lens);
  cuda::run_rotary_embedding(in, query, key, nullptr, nullptr, nullptr, nullptr, positions, is_neox, cu_seqlens,
                             rope_seq_lens, precise, nullptr);
}

void rotary_embedding_and_cache(at::Tensor& query, at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache,
                                at::Tensor& v_cache, const at::Tensor& slot_mapping, const at::Tensor& positions,
                                int64_t rotary_dim, bool is_neox, c10::ArrayRef<double> rope_params,
                                const std::optional<at::Tensor>& cu_seqlens,
                                const std::optional<at::Tensor>& rope_seq_lens, bool precise,
                                const std::optional<at::Tensor>& k_scales, const std::optional<at::Tensor>& v_scales) {
  const RopeInputs in = check_rotary_embedding_and_cache("rotary_embedding_and_cache", query, key, value, k_cache,
                                                         v_cache, slot_mapping, positions, rotary_dim, rope_params,
                                                         cu_seqlens, rope_seq_lens, k_scales, v_scales);
  cuda::run_rotary_embedding(in, query, key, &value, &k_cache, &v_cache, &slot_mapping, positions, is_neox,
                             cu_seqlens, rope_seq_lens, precise, nullptr, k_scales, v_scales);
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache,
                       const at::Tensor& slot_mapping, const std::optional<at::Tensor>& k_scales,
                       const std::optional<at::Tensor>& v_scales) {
  check_reshape_and_cache("reshape_and_cache", key, value, k_cache, v_cache, slot_mapping, k_scales, v_scales);
  cuda::run_reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, nullptr, k_scales, v_scales);
}

cuda::AttentionKernel g_last_kernel = cuda::AttentionKernel::kAuto;

// The op of lmx (k_scales / v_scales included) plus two test knobs: kernel ("auto", "decode", "prefill": the glue's prefill choice,
// "prefill-simt" / "prefill-wmma": that prefill kernel) and the decode partition size.
void paged_attention(at::Tensor& out, const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& block_tables, const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q,
                     double scale, const std::optional<at::Tensor>& alibi_slopes, int64_t sliding_window,
                     const std::optional<at::Tensor>& k_scales, const std::optional<at::Tensor>& v_scales,
                     c10::string_view kernel, int64_t partition_size) {
  const AttentionShape s =
      check_paged_attention("paged_attention", out, query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                            scale, alibi_slopes, sliding_window, k_scales, v_scales);
  const std::string k(kernel);
  TORCH_CHECK_VALUE(k == "auto" || k == "decode" || k == "prefill" || k == "prefill-simt" || k == "prefill-wmma",
                    "kernel: expected auto, decode, prefill, prefill-simt or prefill-wmma, got ", k);
  const auto which = k == "decode"         ? cuda::AttentionKernel::kDecode
                     : k == "prefill"      ? cuda::AttentionKernel::kPrefill
                     : k == "prefill-simt" ? cuda::AttentionKernel::kPrefillSimt
                     : k == "prefill-wmma" ? cuda::AttentionKernel::kPrefillWmma
                                           : cuda::AttentionKernel::kAuto;
  g_last_kernel = cuda::run_paged_attention(s, out, query, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q,
                                            alibi_slopes, which, static_cast<int>(partition_size), nullptr, k_scales,
                                            v_scales);
}

}  // namespace

// The same schemas as torch.ops.lmx (csrc/schemas.h); paged_attention also takes the kernel to force.
TORCH_LIBRARY(lmx_emu, m) {
  m.def(LMX_ROTARY_EMBEDDING_SCHEMA);
  m.def(LMX_ROTARY_EMBEDDING_AND_CACHE_SCHEMA);
  m.def(LMX_RESHAPE_AND_CACHE_SCHEMA);
  m.def("paged_attention(" LMX_PAGED_ATTENTION_ARGS ", " LMX_KV_SCALES_READ_ARGS
        ", str kernel=\"auto\", int partition_size=0) -> ()");
}

TORCH_LIBRARY_IMPL(lmx_emu, CPU, m) {
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("rotary_embedding_and_cache", &rotary_embedding_and_cache);
  m.impl("reshape_and_cache", &reshape_and_cache);
  m.impl("paged_attention", &paged_attention);
}

PYBIND11_MODULE(lmx_cuda_emu, m) {
  m.doc() = "lmx CUDA kernels under the host emulator (test-only): torch.ops.lmx_emu.* on CPU tensors";
  m.def("configure", &lmx_emu::configure, pybind11::arg("schedule"), pybind11::arg("seed") = 0,
        pybind11::arg("threads") = 0, "Thread schedule (rr, warp, warp-rev), shuffle seed, OS threads for blocks.");
  m.def(
      "last_attention_kernel",
      [] {
        switch (g_last_kernel) {
          case cuda::AttentionKernel::kDecode: return "decode";
          case cuda::AttentionKernel::kPrefillSimt: return "prefill-simt";
          case cuda::AttentionKernel::kPrefillWmma: return "prefill-wmma";
          default: return "none";
        }
      },
      "The kernel the last paged_attention call ran.");
  m.def(
      "prefill_kernel_for",
      [](bool is_16bit, int head_dim) {
        cuda::PagedAttentionArgs a{};
        a.head_dim = head_dim;
        return cuda::use_prefill_wmma(a, is_16bit) ? "prefill-wmma" : "prefill-simt";
      },
      "The glue's prefill kernel for a dtype class and head_dim (any even head_dim, also those the op refuses).");
  m.def("blocks_run", [] { return lmx_emu::g_blocks_run.load(); }, "Thread blocks run since the module loaded.");
}
