// Shared by the CPU and CUDA implementations of the alif op family: the parameter struct, the
// input checks (one place, so both backends say the same thing), and the per-step math.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

#ifdef __CUDACC__
#define ALIF_HD __host__ __device__ __forceinline__
#else
#define ALIF_HD inline
#endif

namespace alif_cuda {

enum class Surrogate : int { Rect = 0, Atan = 1 };

// Geometry of one alif call. Neurons of one time step are laid out as (B, C, I): C is the channel
// dim (dim 2 of x) when some parameter is per-channel, else C = 1 and I = N / B. A parameter that
// is scalar reads index 0 whatever the channel.
struct AlifParams {
  int64_t T = 0;  // time steps
  int64_t N = 0;  // neurons per time step
  int64_t B = 1, C = 1, I = 1;
  bool tau_per_channel = false;
  bool vth_per_channel = false;
  bool soft_reset = false;
  bool detach_reset = false;
  bool static_x = false;  // x is (B, ...), the same input at every step
  bool has_u0 = false;
  Surrogate surrogate = Surrogate::Rect;
  double width = 1.0;
  double alpha = 2.0;
};

// Checks alif_fwd's arguments (everything a user can get wrong, with what was expected) and fills
// the geometry: from x when time-major, from x and steps when x is static.
AlifParams make_alif_fwd_params(const at::Tensor& x, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::optional<int64_t> steps, std::string_view reset,
                                bool detach_reset, std::string_view surrogate, double width,
                                double alpha);

// The same for alif_bwd: geometry from x_static or grad_spikes, plus the backward-only options.
AlifParams make_alif_bwd_params(const at::Tensor& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last,
                                const std::optional<at::Tensor>& h,
                                const std::optional<at::Tensor>& x_static, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::string_view reset, bool detach_reset,
                                std::string_view surrogate, double width, double alpha);

struct AlifFwdOutputs {
  at::Tensor spikes, u_last, h;
};

// Allocates alif_fwd's outputs (see the schema in ops.cpp).
AlifFwdOutputs alloc_alif_fwd(const at::Tensor& x, const AlifParams& p, bool save_h);

// alif_bwd's inputs made contiguous (undefined when absent) and its dL/dx, dL/du0 outputs.
struct AlifBwdBuffers {
  at::Tensor grad_spikes, grad_u_last, h, x_static, u0, grad_x, grad_u0;
};

AlifBwdBuffers prepare_alif_bwd(const AlifParams& p, const at::Tensor& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last,
                                const std::optional<at::Tensor>& h,
                                const std::optional<at::Tensor>& x_static,
                                const std::optional<at::Tensor>& u0, bool need_grad_u0);

// dL/dparam from its per-channel sums (C,): summed to () for a scalar parameter, in its dtype.
at::Tensor param_grad(const at::Tensor& channel_sums, const at::Tensor& param);

// Shape of one time step of the output: x.shape[1:] for time-major x, x.shape for static x.
std::vector<int64_t> step_shape(const at::Tensor& x, bool static_x);

// Calls f(std::bool_constant<a>, std::bool_constant<b>): runtime flags become template flags.
template <typename F>
void bool_switch2(bool a, bool b, F&& f) {
  if (a) {
    b ? f(std::true_type{}, std::true_type{}) : f(std::true_type{}, std::false_type{});
  } else {
    b ? f(std::false_type{}, std::true_type{}) : f(std::false_type{}, std::false_type{});
  }
}

// ---- per-step math, identical on host and device -------------------------------------------
// Written as separate multiply and add (and built without FMA contraction) so that h is bitwise
// the value PyTorch's eager reference computes: spikes are then identical, not merely close.

template <typename acc_t>
ALIF_HD acc_t charge(acc_t tau, acc_t u_prev, acc_t x) {
  return tau * u_prev + x;
}

// Branch-free (spikes and masks as 0/1 numbers): the CPU loops vectorise and no branch is
// mispredicted on random data. u = h * (1 - o) and h - v_th * o are also exactly the reference's
// expressions.
template <typename acc_t>
ALIF_HD acc_t spike_of(acc_t h, acc_t v_th) {
  return h >= v_th ? acc_t(1) : acc_t(0);
}

template <typename acc_t>
ALIF_HD acc_t reset_state(acc_t h, acc_t o, acc_t v_th, bool soft) {
  return soft ? h - v_th * o : h * (acc_t(1) - o);
}

// u_t from h_t alone: the spike is recomputed with the same comparison the forward made.
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

// One step of BPTT, t from T-1 down to 0. In: h_t, u_{t-1}, g_t = dL/do_t, du = dL/du_t.
// Out: dh = dL/dh_t, and the step's contributions to dL/dtau and dL/dv_th. The caller sets
// du <- tau * dh for step t-1.
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

}  // namespace alif_cuda
