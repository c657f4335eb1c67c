// lmx._C: the Python module. Loading it registers torch.ops.lmx.* (csrc/ops.cpp, TORCH_LIBRARY); the module
// itself only reports how it was built.
#include <pybind11/pybind11.h>

#include <string>

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
}
