// Glue of linear: checks, dtype dispatch, the CPU kernel (csrc/cpu/linear.cpp); on other devices torch's own.
#include <ATen/ops/linear.h>

#include "checks.h"
#include "cpu/kernels.h"
#include "ops.h"

namespace lmx {

void linear_cpu(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                const std::optional<at::Tensor>& bias) {
  const char* op = "linear";
  const LinearShape s = check_linear(op, out, input, weight, bias);
  LMX_DISPATCH_FLOAT(input.scalar_type(), "lmx_linear", [&] {
    cpu::linear<scalar_t>(input.const_data_ptr<scalar_t>(), input.stride(0), s.rows, weight.const_data_ptr<scalar_t>(),
                          s.out_features, s.in_features, bias ? bias->const_data_ptr<scalar_t>() : nullptr,
                          out.mutable_data_ptr<scalar_t>(), out.stride(0));
  });
}

void linear_other(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias) {
  check_linear("linear", out, input, weight, bias);
  at::linear_out(out, input, weight, bias);
}

}  // namespace lmx
