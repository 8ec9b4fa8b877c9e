// The alif ops on CUDA, host side: check the arguments, allocate, pick the thread mapping, launch
// on the current stream under a device guard. The launchers are alif_cuda.h's; this file is plain
// C++, compiled without nvcc.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "alif_host.h"
#include "cuda/alif_cuda.h"

namespace alif_cuda {
namespace {

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

// The neurons a thread owns: vector_lanes<scalar_t>() when every pointer the kernels touch allows
// 16-byte accesses of that many neurons, else 1.
template <typename scalar_t>
int thread_lanes(const AlifParams& p, const AlifPtrs<scalar_t>& q) {
  constexpr int kL = vector_lanes<scalar_t>();
  if (kL == 1 || p.N % kL != 0) return 1;
  const void* ptrs[] = {q.x, q.u0, q.grad_spikes, q.grad_u_last, q.u_ckpt, q.spikes,
                        q.u_last, q.grad_x, q.grad_u0, q.dtau_n, q.dvth_n};
  for (const void* ptr : ptrs) {
    if (ptr != nullptr && !aligned16(ptr)) return 1;
  }
  return kL;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alif_fwd_cuda(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool checkpoint, bool detach_reset, std::string_view surrogate, double width, double alpha,
    bool decay_input, bool need_state, bool tau_logit) {
  const AlifParams p = make_alif_fwd_params(x, tau, v_th, u0, steps, reset, detach_reset,
                                            surrogate, width, alpha, decay_input, tau_logit);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  AlifFwdOutputs out = alloc_alif_fwd(x, p, checkpoint, need_state);
  if (p.N == 0) return {out.spikes, out.u_last, out.u_ckpt};
  const at::Tensor xc = x.contiguous();
  const at::Tensor u0c = u0.has_value() ? u0->contiguous() : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "alif_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor tau_c = tau.to(acc).contiguous(), vth_c = v_th.to(acc).contiguous();
    const AlifPtrs<scalar_t> q = alif_fwd_ptrs<scalar_t>(xc, u0c, tau_c, vth_c, out);
    launch_alif_fwd(p, q, thread_lanes(p, q), stream);
  });
  return {out.spikes, out.u_last, out.u_ckpt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alif_bwd_cuda(
    const std::optional<at::Tensor>& grad_spikes, const std::optional<at::Tensor>& grad_u_last,
    const at::Tensor& x, const std::optional<at::Tensor>& u_ckpt, std::optional<int64_t> steps,
    const at::Tensor& tau, const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
    std::string_view reset, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool need_grad_u0, bool decay_input, bool tau_logit) {
  const AlifParams p = make_alif_bwd_params(grad_spikes, grad_u_last, x, u_ckpt, steps, tau, v_th,
                                            u0, reset, detach_reset, surrogate, width, alpha,
                                            decay_input, tau_logit);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const AlifBwdBuffers buf =
      prepare_alif_bwd(p, grad_spikes, grad_u_last, x, u_ckpt, u0, need_grad_u0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool per_channel = p.tau_per_channel || p.vth_per_channel;
  at::Tensor grad_tau, grad_vth;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "alif_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor tau_c = tau.to(acc_opts.dtype()).contiguous();
    const at::Tensor vth_c = v_th.to(acc_opts.dtype()).contiguous();
    // The kernels read tau_c as given (logits with tau_logit: they apply the sigmoid as they load).
    const acc_t* tau_logits = p.tau_logit ? tau_c.data_ptr<acc_t>() : nullptr;
    // With no neurons the sums are zero; otherwise the kernels write every entry.
    const bool empty = p.N == 0;
    at::Tensor sum_tau = empty ? at::zeros({p.C}, acc_opts) : at::empty({p.C}, acc_opts);
    at::Tensor sum_vth = empty ? at::zeros({p.C}, acc_opts) : at::empty({p.C}, acc_opts);
    if (!empty) {
      at::Tensor per_neuron = per_channel ? at::empty({2, p.N}, acc_opts) : at::Tensor();
      AlifPtrs<scalar_t> q = alif_bwd_ptrs<scalar_t>(buf, tau_c, vth_c);
      q.dtau_n = per_channel ? per_neuron.data_ptr<acc_t>() : nullptr;
      q.dvth_n = per_channel ? per_neuron.data_ptr<acc_t>() + p.N : nullptr;
      const int lanes = thread_lanes(p, q);
      const int64_t blocks = alif_blocks(p.N, lanes);
      at::Tensor partials = per_channel ? at::Tensor() : at::empty({2, blocks}, acc_opts);
      acc_t* partials_p = per_channel ? nullptr : partials.data_ptr<acc_t>();
      launch_alif_bwd(p, q, lanes, partials_p, stream);
      if (!per_channel) {
        launch_sum_partials(partials_p, blocks, tau_logits, sum_tau.data_ptr<acc_t>(),
                                   sum_vth.data_ptr<acc_t>(), stream);
      } else {
        at::Tensor slice_partials = at::empty({2, p.C, channel_slices(p)}, acc_opts);
        launch_channel_sums(p, q.dtau_n, q.dvth_n, slice_partials.data_ptr<acc_t>(),
                                   tau_logits, sum_tau.data_ptr<acc_t>(),
                                   sum_vth.data_ptr<acc_t>(), stream);
      }
    }
    grad_tau = param_grad(sum_tau, tau);
    grad_vth = param_grad(sum_vth, v_th);
  });
  return {buf.grad_x, grad_tau, grad_vth, buf.grad_u0};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CUDA, m) {
  m.impl("alif_fwd", &alif_fwd_cuda);
  m.impl("alif_bwd", &alif_bwd_cuda);
}

}  // namespace alif_cuda
