// The host side of the taid ops that both backends call (defined in taid_host.cpp): argument
// checks, output and work-buffer allocation. The per-plane arithmetic is taid_math.h's.
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "taid_math.h"

namespace alif_cuda {

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

}  // namespace alif_cuda
