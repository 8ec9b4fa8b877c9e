// Op schemas of the alif_cuda library and the argument checks every backend shares. The kernels
// live in <op>_cpu.cpp and <op>_cuda.cu; fake kernels and autograd in alif_cuda/ops.py.
#include <Python.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "alif.h"
#include "taid.h"

namespace alif_cuda {

namespace {

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

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
  TORCH_CHECK(surrogate == "rect" || surrogate == "atan",
              "alif: surrogate must be \"rect\" or \"atan\", got \"", std::string(surrogate), "\"");
  TORCH_CHECK(std::isfinite(width) && width > 0, "alif: the rect surrogate's width must be > 0, got ",
              width);
  TORCH_CHECK(std::isfinite(alpha) && alpha > 0, "alif: the atan surrogate's alpha must be > 0, got ",
              alpha);
  p.surrogate = surrogate == "rect" ? Surrogate::Rect : Surrogate::Atan;
  p.width = width;
  p.alpha = alpha;
}

}  // namespace

std::vector<int64_t> step_shape(const at::Tensor& x, bool static_x) {
  auto sizes = x.sizes();
  return static_x ? sizes.vec() : std::vector<int64_t>(sizes.begin() + 1, sizes.end());
}

namespace {

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
                                double alpha) {
  AlifParams p = make_alif_params("alif", x, steps, tau, v_th, u0, reset);
  p.detach_reset = detach_reset;
  set_surrogate(p, surrogate, width, alpha);
  return p;
}

AlifParams make_alif_bwd_params(const at::Tensor& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last,
                                const std::optional<at::Tensor>& h,
                                const std::optional<at::Tensor>& x_static, const at::Tensor& tau,
                                const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                                std::string_view reset, bool detach_reset,
                                std::string_view surrogate, double width, double alpha) {
  const char* who = "alif_bwd";
  TORCH_CHECK(h.has_value() != x_static.has_value(), who,
              ": pass exactly one of h (time-major x) and x_static (static x)");
  TORCH_CHECK(grad_spikes.dim() >= 2, who, ": grad_spikes must be (T, B, ...), got shape ",
              shape_str(grad_spikes.sizes()));
  AlifParams p;
  if (x_static.has_value()) {
    p = make_alif_params(who, *x_static, grad_spikes.size(0), tau, v_th, u0, reset);
    auto expected = x_static->sizes().vec();
    expected.insert(expected.begin(), p.T);
    TORCH_CHECK(grad_spikes.sizes().vec() == expected, who, ": grad_spikes must have shape ",
                shape_str(expected), ", got ", shape_str(grad_spikes.sizes()));
    TORCH_CHECK(grad_spikes.scalar_type() == x_static->scalar_type(), who,
                ": grad_spikes must have x's dtype (", x_static->scalar_type(), "), got ",
                grad_spikes.scalar_type());
  } else {
    p = make_alif_params(who, grad_spikes, std::nullopt, tau, v_th, u0, reset);
    const auto state_dtype = grad_spikes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(h->sizes() == grad_spikes.sizes(), who, ": h must have grad_spikes' shape ",
                shape_str(grad_spikes.sizes()), ", got ", shape_str(h->sizes()));
    TORCH_CHECK(h->scalar_type() == state_dtype && h->device() == grad_spikes.device(), who,
                ": h must be ", state_dtype, " on ", grad_spikes.device(), ", got ",
                h->scalar_type(), " on ", h->device());
  }
  TORCH_CHECK(grad_spikes.device() == tau.device(), who, ": grad_spikes must be on ", tau.device(),
              ", got ", grad_spikes.device());
  if (grad_u_last.has_value()) {
    const auto shape = step_shape(grad_spikes, false);
    TORCH_CHECK(grad_u_last->sizes().vec() == shape &&
                    grad_u_last->scalar_type() == grad_spikes.scalar_type() &&
                    grad_u_last->device() == grad_spikes.device(),
                who, ": grad_u_last must be ", grad_spikes.scalar_type(), " of shape ",
                shape_str(shape), " on ", grad_spikes.device(), ", got ",
                grad_u_last->scalar_type(), " of shape ", shape_str(grad_u_last->sizes()), " on ",
                grad_u_last->device());
  }
  p.detach_reset = detach_reset;
  set_surrogate(p, surrogate, width, alpha);
  return p;
}

AlifFwdOutputs alloc_alif_fwd(const at::Tensor& x, const AlifParams& p, bool save_h) {
  const auto shape = step_shape(x, p.static_x);
  auto seq_shape = shape;
  seq_shape.insert(seq_shape.begin(), p.T);
  AlifFwdOutputs out;
  out.spikes = at::empty(seq_shape, x.options());
  out.u_last = at::empty(shape, x.options());
  const auto state_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  out.h = at::empty(save_h && !p.static_x ? seq_shape : std::vector<int64_t>{0},
                    x.options().dtype(state_dtype));
  return out;
}

AlifBwdBuffers prepare_alif_bwd(const AlifParams& p, const at::Tensor& grad_spikes,
                                const std::optional<at::Tensor>& grad_u_last,
                                const std::optional<at::Tensor>& h,
                                const std::optional<at::Tensor>& x_static,
                                const std::optional<at::Tensor>& u0, bool need_grad_u0) {
  auto contiguous = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? t->contiguous() : at::Tensor();
  };
  AlifBwdBuffers b;
  b.grad_spikes = grad_spikes.contiguous();
  b.grad_u_last = contiguous(grad_u_last);
  b.h = contiguous(h);
  b.x_static = contiguous(x_static);
  b.u0 = contiguous(u0);
  const auto& g = b.grad_spikes;
  b.grad_x = at::empty(p.static_x ? b.x_static.sizes() : g.sizes(), g.options());
  b.grad_u0 = at::empty(need_grad_u0 && p.has_u0 ? b.u0.sizes() : at::IntArrayRef{0},
                        g.options());
  return b;
}

at::Tensor param_grad(const at::Tensor& channel_sums, const at::Tensor& param) {
  if (param.dim() == 0) return channel_sums.sum().to(param.scalar_type());
  // Always a fresh tensor: channel_sums may be a row of a buffer the other gradient shares.
  return channel_sums.to(param.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

namespace {

void check_reduce(const char* who, std::string_view reduce) {
  TORCH_CHECK(reduce == "sum" || reduce == "mean", who,
              ": reduce must be \"sum\" or \"mean\", got \"", std::string(reduce), "\"");
}

}  // namespace

TaidParams make_taid_fwd_params(const at::Tensor& s, const at::Tensor& w,
                                std::string_view reduce) {
  const char* who = "taid";
  TORCH_CHECK(is_float_dtype(s.scalar_type()), who,
              ": s must be float32, float64, float16 or bfloat16, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 5 && s.size(0) >= 1, who,
              ": s must be (T, B, C, H, W) with T >= 1, got shape ", shape_str(s.sizes()));
  TORCH_CHECK(s.size(3) * s.size(4) >= 1, who,
              ": s's planes must hold at least one pixel (H * W >= 1), got shape ",
              shape_str(s.sizes()));
  TaidParams p;
  p.T = s.size(0);
  p.planes = s.size(1) * s.size(2);
  p.plane_size = s.size(3) * s.size(4);
  TORCH_CHECK(is_float_dtype(w.scalar_type()), who, ": w must be a floating-point tensor, got ",
              w.scalar_type());
  TORCH_CHECK(w.device() == s.device(), who, ": w must be on s's device (", s.device(),
              "), got ", w.device());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == p.T && w.size(1) == p.T, who,
              ": w must be (T, T) = [", p.T, ", ", p.T, "] for s with T = ", p.T,
              " time steps, got shape ", shape_str(w.sizes()));
  check_reduce(who, reduce);
  p.mean = reduce == "mean";
  return p;
}

TaidParams make_taid_bwd_params(const at::Tensor& grad_y, const at::Tensor& s,
                                const at::Tensor& w, const at::Tensor& attn,
                                const at::Tensor& squeezed, std::string_view reduce) {
  const char* who = "taid_bwd";
  const TaidParams p = make_taid_fwd_params(s, w, reduce);
  const auto y_shape = s.sizes().slice(1);
  TORCH_CHECK(grad_y.sizes() == y_shape && grad_y.scalar_type() == s.scalar_type() &&
                  grad_y.device() == s.device(),
              who, ": grad_y must be ", s.scalar_type(), " of shape ", shape_str(y_shape), " on ",
              s.device(), ", got ", grad_y.scalar_type(), " of shape ", shape_str(grad_y.sizes()),
              " on ", grad_y.device());
  const auto state_dtype = s.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto stat_shape = s.sizes().slice(0, 3);
  for (const auto* t : {&attn, &squeezed}) {
    TORCH_CHECK(t->sizes() == stat_shape && t->scalar_type() == state_dtype &&
                    t->device() == s.device(),
                who, ": attn and squeezed must be ", state_dtype, " of shape ",
                shape_str(stat_shape), " on ", s.device(), " (taid_fwd's outputs), got ",
                t->scalar_type(), " of shape ", shape_str(t->sizes()), " on ", t->device());
  }
  return p;
}

TaidFwdOutputs alloc_taid_fwd(const at::Tensor& s) {
  const auto state_dtype = s.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TaidFwdOutputs out;
  out.y = at::empty(s.sizes().slice(1), s.options());
  out.attn = at::empty(s.sizes().slice(0, 3), s.options().dtype(state_dtype));
  out.squeezed = at::empty(s.sizes().slice(0, 3), s.options().dtype(state_dtype));
  return out;
}

TaidBwdBuffers prepare_taid_bwd(const TaidParams& p, const at::Tensor& grad_y, const at::Tensor& s,
                                const at::Tensor& w, const at::Tensor& attn,
                                const at::Tensor& squeezed) {
  const auto math = attn.options();  // checked: float32, or float64 for float64 s
  TaidBwdBuffers b;
  b.grad_y = grad_y.contiguous();
  b.s = s.contiguous();
  b.w = w.to(math.dtype()).contiguous();
  b.attn = attn.contiguous();
  b.squeezed = squeezed.contiguous();
  b.grad_s = at::empty(s.sizes(), s.options());
  b.dZ = at::empty({p.T, p.planes}, math);
  b.dw = at::empty({p.T, p.T}, math);
  return b;
}

TORCH_LIBRARY(alif_cuda, m) {
  // x: (T, B, ...), or (B, ...) repeated over `steps` steps when steps is given (static input).
  // Returns spikes (T, B, ...) in x's dtype, the final state u_{T-1} (B, ...) in x's dtype, and h
  // (T, B, ...) in float32 (float64 for float64 x) for the backward, or an empty tensor when
  // save_h is false or x is static (the backward then recomputes h from x). The backward-only
  // options (detach_reset, surrogate, width, alpha) are arguments so the registered autograd
  // formula can read them; they are validated here, the forward does not use them.
  m.def(
      "alif_fwd(Tensor x, Tensor tau, Tensor v_th, Tensor? u0, int? steps, str reset, "
      "bool save_h, bool detach_reset, str surrogate, float width, float alpha) "
      "-> (Tensor, Tensor, Tensor)");
  // BPTT of alif_fwd. Exactly one of h (time-major x) and x_static is given. Returns dL/dx (x's
  // shape: (B, ...) summed over time for a static x), dL/dtau, dL/dv_th (their shapes and dtypes)
  // and dL/du0 (empty unless need_grad_u0).
  m.def(
      "alif_bwd(Tensor grad_spikes, Tensor? grad_u_last, Tensor? h, Tensor? x_static, Tensor tau, "
      "Tensor v_th, Tensor? u0, str reset, bool detach_reset, str surrogate, float width, "
      "float alpha, bool need_grad_u0) -> (Tensor, Tensor, Tensor, Tensor)");
  // s: (T, B, C, H, W), w: (T, T), reduce "sum" or "mean". Returns the decoded y (B, C, H, W) in
  // s's dtype, and the attention A and squeezed means X (T, B, C) in float32 (float64 for float64
  // s), which the backward reuses.
  m.def("taid_fwd(Tensor s, Tensor w, str reduce) -> (Tensor, Tensor, Tensor)");
  // Gradient of taid_fwd: returns dL/ds (s's shape and dtype) and dL/dw (w's dtype).
  m.def(
      "taid_bwd(Tensor grad_y, Tensor s, Tensor w, Tensor attn, Tensor squeezed, str reduce) "
      "-> (Tensor, Tensor)");
}

}  // namespace alif_cuda

// The shared library is imported as the Python module alif_cuda._C; loading it runs the
// registrations above. It defines no Python functions of its own.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
