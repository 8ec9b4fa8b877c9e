// Shared by the CPU and CUDA implementations of the taid op family (temporal attention image
// decoding): the geometry, the argument checks (defined in ops.cpp, next to alif's) and the math
// both backends use per (b, c) plane.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <string_view>
#include <type_traits>

#ifdef __CUDACC__
#define TAID_HD __host__ __device__ __forceinline__
#else
#define TAID_HD inline
#endif

namespace alif_cuda {

// s is (T, B, C, H, W), contiguous: value (t, plane, px) of plane = b * C + c lives at
// (t * planes + plane) * plane_size + px.
struct TaidParams {
  int64_t T = 0;
  int64_t planes = 0;      // B * C
  int64_t plane_size = 0;  // H * W
  bool mean = false;       // reduce="mean": y is divided by T
};

// Checks taid_fwd's arguments and returns the geometry.
TaidParams make_taid_fwd_params(const at::Tensor& s, const at::Tensor& w, std::string_view reduce);

// The same for taid_bwd, plus grad_y (B, C, H, W) and the saved attn and squeezed (T, B, C).
TaidParams make_taid_bwd_params(const at::Tensor& grad_y, const at::Tensor& s,
                                const at::Tensor& w, const at::Tensor& attn,
                                const at::Tensor& squeezed, std::string_view reduce);

struct TaidFwdOutputs {
  at::Tensor y, attn, squeezed;
};

// y (B, C, H, W) in s's dtype; attn and squeezed (T, B, C) in the math dtype (float, or double
// for float64 s).
TaidFwdOutputs alloc_taid_fwd(const at::Tensor& s);

// taid_bwd's inputs made contiguous (w in the math dtype), its dL/ds output, and the work buffers
// dZ (T, planes) and dL/dw (T, T) in the math dtype.
struct TaidBwdBuffers {
  at::Tensor grad_y, s, w, attn, squeezed, grad_s, dZ, dw;
};

TaidBwdBuffers prepare_taid_bwd(const TaidParams& p, const at::Tensor& grad_y, const at::Tensor& s,
                                const at::Tensor& w, const at::Tensor& attn,
                                const at::Tensor& squeezed);

// expf/exp are the C functions both host and device code have (std::exp has no device overloads).
template <typename acc_t>
TAID_HD acc_t sigmoid(acc_t z) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return 1.0f / (1.0f + expf(-z));
  } else {
    return acc_t(1) / (acc_t(1) + ::exp(-z));
  }
}

// y = scale * sum_t A_t s_t: scale is 1 for reduce="sum", 1/T for "mean".
template <typename acc_t>
TAID_HD acc_t reduce_scale(const TaidParams& p) {
  return p.mean ? acc_t(1) / acc_t(p.T) : acc_t(1);
}

// A_t = sigmoid(sum_t' w[t, t'] X_t') for one plane, X indexed by time.
template <typename acc_t>
TAID_HD acc_t attention_at(const acc_t* w, const acc_t* X, int64_t T, int64_t t) {
  acc_t z = 0;
  for (int64_t k = 0; k < T; ++k) z += w[t * T + k] * X[k];
  return sigmoid(z);
}

// dL/dX_t' = sum_t w[t, t'] dZ_t: the attention's gradient flowing back into the squeeze.
template <typename acc_t>
TAID_HD acc_t squeeze_grad_at(const acc_t* w, const acc_t* dZ, int64_t T, int64_t t_in) {
  acc_t d = 0;
  for (int64_t t = 0; t < T; ++t) d += w[t * T + t_in] * dZ[t];
  return d;
}

}  // namespace alif_cuda
