// Kernel views of checked tensors, for the CPU glue (csrc/rotary.cpp, cache.cpp, attention.cpp).
#pragma once

#include <ATen/ATen.h>

#include "cpu/kernels.h"

namespace lmx {

// A [T, H, D] tensor whose last dim is contiguous (check_token_head) as a kernel view.
template <typename T>
cpu::TokenHeadView<T> token_head_view(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.size(1)};
}

template <typename T>
cpu::TokenHeadView<const T> token_head_view_const(const at::Tensor& t) {
  return {static_cast<const T*>(t.data_ptr()), t.stride(0), t.stride(1), t.size(1)};
}

}  // namespace lmx
