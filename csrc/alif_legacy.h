// The saved-h implementation of the alif op family that preceded the replaying kernels: the
// forward saves h (T, N) in the math dtype and the backward reads it. It stays only as a fallback
// selected at run time (ALIF_CUDA_LEGACY_KERNELS=1, read once; see ops.cpp), so a GPU run can
// compare both and a fault in the new kernels has a way around it. Ops: alif_fwd_saved_h,
// alif_bwd_saved_h.
#pragma once

#include "alif.h"

namespace alif_cuda {
namespace legacy {

// The legacy backward's geometry and checks: exactly one of h (time-major) and x_static.
AlifParams make_bwd_params(const at::Tensor& grad_spikes,
                           const std::optional<at::Tensor>& grad_u_last,
                           const std::optional<at::Tensor>& h,
                           const std::optional<at::Tensor>& x_static, const at::Tensor& tau,
                           const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                           std::string_view reset, bool detach_reset, std::string_view surrogate,
                           double width, double alpha);

struct FwdOutputs {
  at::Tensor spikes, u_last, h;
};

FwdOutputs alloc_fwd(const at::Tensor& x, const AlifParams& p, bool save_h);

struct BwdBuffers {
  at::Tensor grad_spikes, grad_u_last, h, x_static, u0, grad_x, grad_u0;
};

BwdBuffers prepare_bwd(const AlifParams& p, const at::Tensor& grad_spikes,
                       const std::optional<at::Tensor>& grad_u_last,
                       const std::optional<at::Tensor>& h,
                       const std::optional<at::Tensor>& x_static,
                       const std::optional<at::Tensor>& u0, bool need_grad_u0);

// ---- per-step math, identical on host and device -------------------------------------------

template <typename acc_t>
ALIF_HD acc_t charge(acc_t tau, acc_t u_prev, acc_t x) {
  return tau * u_prev + x;
}

template <typename acc_t>
ALIF_HD acc_t spike_of(acc_t h, acc_t v_th) {
  return h >= v_th ? acc_t(1) : acc_t(0);
}

template <typename acc_t>
ALIF_HD acc_t reset_state(acc_t h, acc_t o, acc_t v_th, bool soft) {
  return soft ? h - v_th * o : h * (acc_t(1) - o);
}

template <typename acc_t>
ALIF_HD acc_t reset_after(acc_t h, acc_t v_th, bool soft) {
  return reset_state(h, spike_of(h, v_th), v_th, soft);
}

template <typename acc_t>
ALIF_HD acc_t surrogate_grad(acc_t d, Surrogate kind, acc_t width, acc_t alpha) {
  if (kind == Surrogate::Rect) {
    const acc_t half = width / acc_t(2);
    return acc_t(d < half) * acc_t(d > -half) / width;
  }
  const acc_t z = acc_t(M_PI / 2) * alpha * d;
  return (alpha / acc_t(2)) / (acc_t(1) + z * z);
}

template <typename acc_t>
struct BpttStep {
  acc_t dh, dtau, dvth;
};

template <typename acc_t>
ALIF_HD BpttStep<acc_t> bptt_step(acc_t h, acc_t u_prev, acc_t g, acc_t du, acc_t v_th,
                                  bool soft, bool detach, Surrogate kind, acc_t width,
                                  acc_t alpha) {
  const acc_t o = spike_of(h, v_th);
  const acc_t s = surrogate_grad(h - v_th, kind, width, alpha);
  const acc_t c = soft ? v_th : h;  // d u_t / d o_t = -c
  const acc_t g_total = detach ? g : g - du * c;
  BpttStep<acc_t> r;
  r.dh = s * g_total + (soft ? du : du * (acc_t(1) - o));
  r.dtau = r.dh * u_prev;
  r.dvth = -s * g_total - (soft ? du * o : acc_t(0));
  return r;
}

}  // namespace legacy
}  // namespace alif_cuda
