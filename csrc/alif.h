// The alif op family's host-side helpers both backends call (argument checks, output
// allocation); the per-neuron arithmetic they share is in alif_math.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>
#include <vector>

#include "alif_math.h"

namespace alif_cuda {

// Checks alif_fwd's arguments (everything a user can get wrong, with what was expected) and fills
// the geometry: from x when time-major, from x and steps when x is static.
AlifParams make_alif_fwd_params(const at::Tensor& x, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::optional<int64_t> steps, std::string_view reset,
                                bool detach_reset, std::string_view surrogate, double width,
                                double alpha, bool decay_input = false);

// The same for alif_bwd: geometry from x (and steps when static), gradients checked against it.
AlifParams make_alif_bwd_params(const std::optional<at::Tensor>& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last, const at::Tensor& x,
                                const std::optional<at::Tensor>& u_ckpt,
                                std::optional<int64_t> steps, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::string_view reset, bool detach_reset,
                                std::string_view surrogate, double width, double alpha,
                                bool decay_input);

struct AlifFwdOutputs {
  at::Tensor spikes, u_last, u_ckpt;
};

// Allocates alif_fwd's outputs (see the schema in ops.cpp); u_ckpt is empty unless checkpoint.
AlifFwdOutputs alloc_alif_fwd(const at::Tensor& x, const AlifParams& p, bool checkpoint);

// alif_bwd's inputs made contiguous (undefined when absent) and its dL/dx, dL/du0 outputs.
struct AlifBwdBuffers {
  at::Tensor grad_spikes, grad_u_last, x, u_ckpt, u0, grad_x, grad_u0;
};

AlifBwdBuffers prepare_alif_bwd(const AlifParams& p, const std::optional<at::Tensor>& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last, const at::Tensor& x,
                                const std::optional<at::Tensor>& u_ckpt,
                                const std::optional<at::Tensor>& u0, bool need_grad_u0);

// dL/dparam from its per-channel sums (C,) in the math dtype: summed to () for a scalar
// parameter, in the parameter's dtype.
at::Tensor param_grad(const at::Tensor& channel_sums, const at::Tensor& param);

// Shape of one time step of the output: x.shape[1:] for time-major x, x.shape for static x.
std::vector<int64_t> step_shape(const at::Tensor& x, bool static_x);

}  // namespace alif_cuda
