// The host side of the alif ops that both backends call (defined in alif_host.cpp): argument
// checks, output allocation, and a kernel call's pointers filled from tensors. The per-neuron
// arithmetic they share is alif_math.h's.
#pragma once

#include <ATen/OpMathType.h>
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
                                double alpha, bool decay_input = false, bool tau_logit = false);

// The same for alif_bwd: geometry from x (and steps when static), gradients checked against it.
AlifParams make_alif_bwd_params(const std::optional<at::Tensor>& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last, const at::Tensor& x,
                                const std::optional<at::Tensor>& u_ckpt,
                                std::optional<int64_t> steps, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::string_view reset, bool detach_reset,
                                std::string_view surrogate, double width, double alpha,
                                bool decay_input, bool tau_logit);

struct AlifFwdOutputs {
  at::Tensor spikes, u_last, u_ckpt;
};

// Allocates alif_fwd's outputs (see the schema in ops.cpp); u_ckpt is empty unless checkpoint,
// u_last empty (and its pointer null: not written) unless need_state.
AlifFwdOutputs alloc_alif_fwd(const at::Tensor& x, const AlifParams& p, bool checkpoint,
                              bool need_state);

// alif_bwd's inputs made contiguous (undefined when absent) and its dL/dx, dL/du0 outputs.
struct AlifBwdBuffers {
  at::Tensor grad_spikes, grad_u_last, x, u_ckpt, u0, grad_x, grad_u0;
};

AlifBwdBuffers prepare_alif_bwd(const AlifParams& p, const std::optional<at::Tensor>& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last, const at::Tensor& x,
                                const std::optional<at::Tensor>& u_ckpt,
                                const std::optional<at::Tensor>& u0, bool need_grad_u0);

// ---- the pointers a kernel call works on, filled the same way for both backends ----------------

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() ? t.data_ptr<T>() : nullptr;
}

// The pointers both directions read: x and u0 contiguous (u0 undefined when absent), tau_c and
// vth_c contiguous in the math dtype, the checkpoints (empty when there are none).
template <typename scalar_t>
AlifPtrs<scalar_t> alif_input_ptrs(const at::Tensor& x, const at::Tensor& u0,
                                   const at::Tensor& tau_c, const at::Tensor& vth_c,
                                   const at::Tensor& u_ckpt) {
  using acc_t = at::opmath_type<scalar_t>;
  AlifPtrs<scalar_t> q;
  q.x = x.data_ptr<scalar_t>();
  q.u0 = ptr_or_null<scalar_t>(u0);
  q.tau = tau_c.data_ptr<acc_t>();
  q.v_th = vth_c.data_ptr<acc_t>();
  q.u_ckpt = mut_ptr_or_null<acc_t>(u_ckpt);
  return q;
}

// A forward call's pointers: the inputs as above, the outputs from alloc_alif_fwd.
template <typename scalar_t>
AlifPtrs<scalar_t> alif_fwd_ptrs(const at::Tensor& x, const at::Tensor& u0, const at::Tensor& tau_c,
                                 const at::Tensor& vth_c, const AlifFwdOutputs& out) {
  AlifPtrs<scalar_t> q = alif_input_ptrs<scalar_t>(x, u0, tau_c, vth_c, out.u_ckpt);
  q.spikes = out.spikes.data_ptr<scalar_t>();
  q.u_last = mut_ptr_or_null<scalar_t>(out.u_last);
  return q;
}

// A backward call's pointers from prepare_alif_bwd's buffers. Where the tau/v_th terms go stays
// null: that is the backend's choice (the CPU: per neuron with per-channel parameters, per block
// of kCpuSumBlock otherwise; CUDA: per neuron with per-channel parameters, block partials
// otherwise).
template <typename scalar_t>
AlifPtrs<scalar_t> alif_bwd_ptrs(const AlifBwdBuffers& buf, const at::Tensor& tau_c,
                                 const at::Tensor& vth_c) {
  AlifPtrs<scalar_t> q = alif_input_ptrs<scalar_t>(buf.x, buf.u0, tau_c, vth_c, buf.u_ckpt);
  q.grad_spikes = ptr_or_null<scalar_t>(buf.grad_spikes);
  q.grad_u_last = ptr_or_null<scalar_t>(buf.grad_u_last);
  q.grad_x = buf.grad_x.data_ptr<scalar_t>();
  q.grad_u0 = mut_ptr_or_null<scalar_t>(buf.grad_u0);
  return q;
}

// dL/dparam from its per-channel sums (C,) in the math dtype: summed to () for a scalar
// parameter, in the parameter's dtype.
at::Tensor param_grad(const at::Tensor& channel_sums, const at::Tensor& param);

// Shape of one time step of the output: x.shape[1:] for time-major x, x.shape for static x.
std::vector<int64_t> step_shape(const at::Tensor& x, bool static_x);

}  // namespace alif_cuda
