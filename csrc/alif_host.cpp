// The host side of the alif ops that both backends share: argument checks with messages that say
// what was expected, the output allocation, and the parameter gradients from their channel sums.
#include <ATen/ops/empty.h>

#include <cmath>
#include <string>

#include "alif_host.h"
#include "checks.h"
#include "cpu_pool.h"

namespace alif_cuda {

std::vector<int64_t> step_shape(const at::Tensor& x, bool static_x) {
  auto sizes = x.sizes();
  return static_x ? sizes.vec() : std::vector<int64_t>(sizes.begin() + 1, sizes.end());
}

namespace {

// Checks a neuron parameter (tau or v_th): floating, on x's device, shape () or (C,).
bool check_param(const char* who, const char* name, const at::Tensor& p, const at::Tensor& x,
                 int64_t step_dims, int64_t channels) {
  TORCH_CHECK(is_float_dtype(p.scalar_type()), who, ": ", name,
              " must be a floating-point tensor, got ", p.scalar_type());
  TORCH_CHECK(p.device() == x.device(), who, ": ", name, " must be on x's device (", x.device(),
              "), got ", p.device());
  TORCH_CHECK(p.dim() == 0 || p.dim() == 1, who, ": ", name,
              " must be a scalar () or per-channel (C,), got shape ", shape_str(p.sizes()));
  if (p.dim() == 0) return false;
  TORCH_CHECK(step_dims >= 2, who, ": a per-channel ", name,
              " indexes dim 2 of x, so x needs at least 3 dims (T, B, C, ...); got a ", name,
              " of shape ", shape_str(p.sizes()), " and steps of ", step_dims, " dims");
  TORCH_CHECK(p.size(0) == channels, who, ": ", name, " must have shape () or (", channels,
              ",) to match x's channel dim 2, got ", shape_str(p.sizes()));
  return true;
}

void set_surrogate(AlifParams& p, std::string_view surrogate, double width, double alpha) {
  TORCH_CHECK(surrogate == "rect" || surrogate == "atan" || surrogate == "sigmoid",
              "alif: surrogate must be \"rect\", \"atan\" or \"sigmoid\", got \"",
              std::string(surrogate), "\"");
  TORCH_CHECK(std::isfinite(width) && width > 0, "alif: the rect surrogate's width must be > 0, got ",
              width);
  TORCH_CHECK(std::isfinite(alpha) && alpha > 0,
              "alif: the atan/sigmoid surrogate's alpha must be > 0, got ", alpha);
  p.surrogate = surrogate == "rect"   ? Surrogate::Rect
                : surrogate == "atan" ? Surrogate::Atan
                                      : Surrogate::Sigmoid;
  p.width = width;
  p.alpha = alpha;
}

// Checks an optional per-step tensor (grad_u_last) or sequence tensor (grad_spikes) against x.
void check_like_x(const char* who, const char* name, const at::Tensor& t,
                  const std::vector<int64_t>& shape, const at::Tensor& x) {
  TORCH_CHECK(t.sizes().vec() == shape && t.scalar_type() == x.scalar_type() &&
                  t.device() == x.device(),
              who, ": ", name, " must be ", x.scalar_type(), " of shape ", shape_str(shape), " on ",
              x.device(), ", got ", t.scalar_type(), " of shape ", shape_str(t.sizes()), " on ",
              t.device());
}

std::vector<int64_t> seq_shape_of(const AlifParams& p, const std::vector<int64_t>& step) {
  auto seq = step;
  seq.insert(seq.begin(), p.T);
  return seq;
}

// Geometry from x (time-major, or one step when static) and the parameters; `who` names the op.
AlifParams make_alif_params(const char* who, const at::Tensor& x, std::optional<int64_t> steps,
                            const at::Tensor& tau, const at::Tensor& v_th,
                            const std::optional<at::Tensor>& u0, std::string_view reset) {
  AlifParams p;
  TORCH_CHECK(is_float_dtype(x.scalar_type()), who,
              ": x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  p.static_x = steps.has_value();
  if (p.static_x) {
    TORCH_CHECK(*steps >= 1, who, ": the number of time steps must be >= 1, got ", *steps);
    TORCH_CHECK(x.dim() >= 1, who, ": a static x must be (B, ...), got a 0-dim tensor");
    p.T = *steps;
  } else {
    TORCH_CHECK(x.dim() >= 2 && x.size(0) >= 1, who,
                ": x must be (T, B, ...) with T >= 1, got shape ", shape_str(x.sizes()));
    p.T = x.size(0);
  }
  const auto shape = step_shape(x, p.static_x);
  const int64_t step_dims = static_cast<int64_t>(shape.size());
  p.N = 1;
  for (int64_t s : shape) p.N *= s;
  const int64_t channels = step_dims >= 2 ? shape[1] : 1;

  p.tau_per_channel = check_param(who, "tau", tau, x, step_dims, channels);
  p.vth_per_channel = check_param(who, "v_th", v_th, x, step_dims, channels);
  if (p.tau_per_channel || p.vth_per_channel) {
    p.B = shape[0];
    p.C = channels;
    p.I = p.B * p.C == 0 ? 0 : p.N / (p.B * p.C);
  } else {
    p.B = 1;
    p.C = 1;
    p.I = p.N;
  }

  if (u0.has_value()) {
    const at::Tensor& u = *u0;
    TORCH_CHECK(u.device() == x.device(), who, ": u0 must be on x's device (", x.device(),
                "), got ", u.device());
    TORCH_CHECK(u.scalar_type() == x.scalar_type(), who, ": u0 must have x's dtype (",
                x.scalar_type(), "), got ", u.scalar_type());
    TORCH_CHECK(u.sizes().vec() == shape, who, ": u0 must have the shape of one time step of x, ",
                shape_str(shape), ", got ", shape_str(u.sizes()));
    p.has_u0 = true;
  }
  TORCH_CHECK(reset == "hard" || reset == "soft", who,
              ": reset must be \"hard\" or \"soft\", got \"", std::string(reset), "\"");
  p.soft_reset = reset == "soft";
  return p;
}

}  // namespace

AlifParams make_alif_fwd_params(const at::Tensor& x, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::optional<int64_t> steps, std::string_view reset,
                                bool detach_reset, std::string_view surrogate, double width,
                                double alpha, bool decay_input, bool tau_logit) {
  AlifParams p = make_alif_params("alif", x, steps, tau, v_th, u0, reset);
  p.detach_reset = detach_reset;
  p.decay_input = decay_input;
  p.tau_logit = tau_logit;
  set_surrogate(p, surrogate, width, alpha);
  return p;
}

AlifParams make_alif_bwd_params(const std::optional<at::Tensor>& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last, const at::Tensor& x,
                                const std::optional<at::Tensor>& u_ckpt,
                                std::optional<int64_t> steps, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::string_view reset, bool detach_reset,
                                std::string_view surrogate, double width, double alpha,
                                bool decay_input, bool tau_logit) {
  const char* who = "alif_bwd";
  AlifParams p = make_alif_params(who, x, steps, tau, v_th, u0, reset);
  const auto step = step_shape(x, p.static_x);
  if (grad_spikes.has_value()) check_like_x(who, "grad_spikes", *grad_spikes, seq_shape_of(p, step), x);
  if (grad_u_last.has_value()) check_like_x(who, "grad_u_last", *grad_u_last, step, x);
  const int64_t n_ckpt = p.static_x ? 0 : num_checkpoints(p.T);
  if (n_ckpt > 0) {
    auto expected = step;
    expected.insert(expected.begin(), n_ckpt);
    const auto dtype = state_dtype_of(x.scalar_type());
    TORCH_CHECK(u_ckpt.has_value() && u_ckpt->sizes().vec() == expected &&
                    u_ckpt->scalar_type() == dtype && u_ckpt->device() == x.device(),
                who, ": for T = ", p.T, " > ", kChunk, " the backward needs alif_fwd's u_ckpt (",
                dtype, " of shape ", shape_str(expected), " on ", x.device(),
                ", from alif_fwd with checkpoint=True), got ",
                u_ckpt.has_value() ? shape_str(u_ckpt->sizes()) : std::string("None"));
  }
  p.detach_reset = detach_reset;
  p.decay_input = decay_input;
  p.tau_logit = tau_logit;
  set_surrogate(p, surrogate, width, alpha);
  return p;
}

AlifFwdOutputs alloc_alif_fwd(const at::Tensor& x, const AlifParams& p, bool checkpoint,
                              bool need_state) {
  const auto step = step_shape(x, p.static_x);
  AlifFwdOutputs out;
  out.spikes = empty_output(seq_shape_of(p, step), x.options());
  out.u_last = need_state ? empty_output(step, x.options()) : at::empty({0}, x.options());
  const int64_t n_ckpt = checkpoint && !p.static_x ? num_checkpoints(p.T) : 0;
  auto ckpt_shape = step;
  ckpt_shape.insert(ckpt_shape.begin(), n_ckpt);
  out.u_ckpt = empty_output(n_ckpt > 0 ? ckpt_shape : std::vector<int64_t>{0},
                         x.options().dtype(state_dtype_of(x.scalar_type())));
  return out;
}

AlifBwdBuffers prepare_alif_bwd(const AlifParams& p, const std::optional<at::Tensor>& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last, const at::Tensor& x,
                                const std::optional<at::Tensor>& u_ckpt,
                                const std::optional<at::Tensor>& u0, bool need_grad_u0) {
  auto contiguous = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? t->contiguous() : at::Tensor();
  };
  AlifBwdBuffers b;
  b.grad_spikes = contiguous(grad_spikes);
  b.grad_u_last = contiguous(grad_u_last);
  b.x = x.contiguous();
  b.u_ckpt = p.static_x || num_checkpoints(p.T) == 0 ? at::Tensor() : contiguous(u_ckpt);
  b.u0 = contiguous(u0);
  b.grad_x = empty_output(x.sizes(), x.options());
  b.grad_u0 = at::empty(need_grad_u0 && p.has_u0 ? b.u0.sizes() : at::IntArrayRef{0},
                        x.options());
  return b;
}

at::Tensor param_grad(const at::Tensor& channel_sums, const at::Tensor& param) {
  if (param.dim() == 0 && channel_sums.numel() != 1) return channel_sums.sum().to(param.scalar_type());
  // One channel's sum is already a scalar parameter's total: no reduction launch. A row of a
  // buffer the other gradient shares is copied, so the two gradients never alias.
  return channel_sums.reshape(param.sizes())
      .to(param.scalar_type(), /*non_blocking=*/false, /*copy=*/channel_sums.is_view());
}

}  // namespace alif_cuda
