// lmx._C: the Python module. Loading it registers torch.ops.lmx.* (csrc/registration.cpp, TORCH_LIBRARY); the
// module itself reports how it was built and the order of the RoPE parameters.
#include <pybind11/pybind11.h>

#include <string>

#include "checks.h"
#include "cpu/blas.h"
#include "cpu/kernels.h"

#ifndef LMX_TORCH_VERSION
#define LMX_TORCH_VERSION "unknown"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "lmx kernels: rotary embedding with dynamic NTK, paged KV cache, paged attention (torch.ops.lmx.*)";
  m.def(
      "build_info",
      [] {
        py::dict info;
#if defined(LMX_WITH_CUDA)
        info["cuda"] = true;
#else
        info["cuda"] = false;
#endif
        info["torch"] = std::string(LMX_TORCH_VERSION);
        info["cpu_attention_isa"] = std::string(lmx::cpu::attention_isa());
        info["cpu_blas"] = lmx::cpu::blas_sgemm() != nullptr;
        return info;
      },
      "How this extension was built: CUDA kernels or not, the torch it was built against, the CPU code path.");
  m.def(
      "rope_param_fields",
      [] {
        py::tuple names(lmx::kRopeFields.size());
        for (size_t i = 0; i < lmx::kRopeFields.size(); ++i) names[i] = py::str(lmx::kRopeFields[i].name);
        return names;
      },
      "Names of the values of the ops' `rope_params` list, in order (lmx.rope.RopeConfig.packed follows it).");
}
