// What the ops' argument checks (alif_host.cpp, taid_host.cpp) print: shapes as [2, 3] and the
// storage dtypes every op accepts.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace alif_cuda {

inline std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace alif_cuda
