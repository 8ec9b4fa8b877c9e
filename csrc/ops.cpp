// Op schemas of the alif_cuda library, the argument checks every backend shares, and the ops'
// autograd (C++, for the Autograd key). The kernels live in <op>_cpu.cpp and <op>_cuda.cu; fake
// kernels in alif_cuda/ops.py.
#include <Python.h>
#include <ATen/ops/empty.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <functional>
#include <utility>

#include "alif.h"
#include "cpu_memory.h"
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
                                double alpha, bool decay_input, bool tau_logit) {
  AlifParams p = make_alif_params("alif", x, steps, tau, v_th, u0, reset);
  p.detach_reset = detach_reset;
  p.decay_input = decay_input;
  p.tau_logit = tau_logit;
  set_surrogate(p, surrogate, width, alpha);
  return p;
}

namespace {

// Checks an optional per-step tensor (grad_u_last) or sequence tensor (grad_spikes) against x.
void check_like_x(const char* who, const char* name, const at::Tensor& t,
                  const std::vector<int64_t>& shape, const at::Tensor& x) {
  TORCH_CHECK(t.sizes().vec() == shape && t.scalar_type() == x.scalar_type() &&
                  t.device() == x.device(),
              who, ": ", name, " must be ", x.scalar_type(), " of shape ", shape_str(shape), " on ",
              x.device(), ", got ", t.scalar_type(), " of shape ", shape_str(t.sizes()), " on ",
              t.device());
}

at::ScalarType state_dtype_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<int64_t> seq_shape_of(const AlifParams& p, const std::vector<int64_t>& step) {
  auto seq = step;
  seq.insert(seq.begin(), p.T);
  return seq;
}

}  // namespace

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
  out.y = empty_output(s.sizes().slice(1), s.options());
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
  b.grad_s = empty_output(s.sizes(), s.options());
  b.dZ = empty_output({p.T, p.planes}, math);
  b.dw = at::empty({p.T, p.T}, math);
  return b;
}

TORCH_LIBRARY(alif_cuda, m) {
  // The public ops, differentiable (autograd below, in C++): what alif_cuda.alif / .taid call.
  // alif: spikes (T, B, ...) and the final state u_{T-1} (B, ...), both in x's dtype; x is
  // (T, B, ...), or (B, ...) repeated over `steps` steps when steps is given (static input).
  m.def(
      "alif(Tensor x, Tensor tau, Tensor v_th, Tensor? u0, int? steps, str reset, "
      "bool detach_reset, str surrogate, float width, float alpha, bool decay_input=False, "
      "bool need_state=True, bool tau_logit=False) -> (Tensor, Tensor)");
  // taid: y (B, C, H, W) in s's dtype and the attention A (T, B, C, math dtype, not
  // differentiable).
  m.def("taid(Tensor s, Tensor w, str reduce) -> (Tensor, Tensor)");

  // need_state=False: nobody wants u_last, which is then an empty (0,) tensor and not written
  // (4 / T bytes per neuron-step saved); alif() passes return_state. tau_logit=True: tau holds
  // logit(tau) and the kernels use sigmoid(tau) (ALIF's default tau_param="sigmoid" without two
  // elementwise ops and their launches around the op); the gradient is then dL/dlogit.
  //
  // The kernels. alif_fwd returns spikes, u_last (empty unless need_state) and, when checkpoint is true, x is time-major
  // and T > kChunk (8), u_ckpt ((T - 1) // 8, B, ...) in float32 (float64 for float64 x): the
  // state after steps 8, 16, ..., which the backward starts its replayed chunks from; otherwise
  // an empty tensor. The backward-only options (detach_reset, surrogate, width, alpha) are
  // validated here so a bad option fails at the forward.
  m.def(
      "alif_fwd(Tensor x, Tensor tau, Tensor v_th, Tensor? u0, int? steps, str reset, "
      "bool checkpoint, bool detach_reset, str surrogate, float width, float alpha, "
      "bool decay_input=False, bool need_state=True, bool tau_logit=False) "
      "-> (Tensor, Tensor, Tensor)");
  // BPTT of alif_fwd from x itself: each chunk of steps is replayed from x, then walked back.
  // Absent grad_spikes / grad_u_last are zero. Returns dL/dx (x's shape: (B, ...) summed over
  // time for a static x), dL/dtau, dL/dv_th (their shapes and dtypes) and dL/du0 (empty unless
  // need_grad_u0).
  m.def(
      "alif_bwd(Tensor? grad_spikes, Tensor? grad_u_last, Tensor x, Tensor? u_ckpt, int? steps, "
      "Tensor tau, Tensor v_th, Tensor? u0, str reset, bool detach_reset, str surrogate, "
      "float width, float alpha, bool need_grad_u0, bool decay_input=False, "
      "bool tau_logit=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // s: (T, B, C, H, W), w: (T, T), reduce "sum" or "mean". Returns the decoded y (B, C, H, W) in
  // s's dtype, and the attention A and squeezed means X (T, B, C) in float32 (float64 for float64
  // s), which the backward reuses.
  m.def("taid_fwd(Tensor s, Tensor w, str reduce) -> (Tensor, Tensor, Tensor)");
  // Gradient of taid_fwd: returns dL/ds (s's shape and dtype) and dL/dw (w's dtype).
  m.def(
      "taid_bwd(Tensor grad_y, Tensor s, Tensor w, Tensor attn, Tensor squeezed, str reduce) "
      "-> (Tensor, Tensor)");
}

// ---- autograd ---------------------------------------------------------------------------------
// Registered for the Autograd key in C++, so a forward+backward costs no Python beyond the call
// of alif()/taid(): the nodes call alif_bwd / taid_bwd through the dispatcher (torch.compile
// traces those calls; the fake kernels are in alif_cuda/ops.py). Gradients of unused outputs
// are not materialised: the backward ops take them as absent.

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using AlifFwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    std::optional<int64_t>, std::string_view, bool, bool, std::string_view, double, double, bool,
    bool, bool);
using AlifBwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
    const std::optional<at::Tensor>&, std::optional<int64_t>, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, std::string_view, bool, std::string_view, double, double,
    bool, bool, bool);
using TaidFwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&,
                                                                  const at::Tensor&,
                                                                  std::string_view);
using TaidBwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, std::string_view);

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The forward without autograd; `for_backward` asks for the checkpoints the backward needs as the
// third output; u_last is empty unless need_state.
std::tuple<at::Tensor, at::Tensor, at::Tensor> alif_forward(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool for_backward, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool decay_input, bool need_state, bool tau_logit) {
  static const auto fwd = op_handle<AlifFwdSig>("alif_cuda::alif_fwd");
  return fwd.call(x, tau, v_th, u0, steps, reset, for_backward, detach_reset, surrogate, width,
                  alpha, decay_input, need_state, tau_logit);
}

struct AlifFunction : public torch::autograd::Function<AlifFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& tau,
                               const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
                               std::optional<int64_t> steps, std::string_view reset,
                               bool detach_reset, std::string_view surrogate, double width,
                               double alpha, bool decay_input, bool need_state, bool tau_logit) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [spikes, u_last, state] =
        alif_forward(x, tau, v_th, u0, steps, reset, true, detach_reset, surrogate, width, alpha,
                     decay_input, need_state, tau_logit);
    // Saved: x itself (never a copy; autograd's version counter guards it), the parameters,
    // u0, and the checkpoints (empty for T <= 8).
    ctx->save_for_backward({x, tau, v_th, u0.value_or(at::Tensor()), state});
    ctx->saved_data["steps"] = steps.has_value() ? c10::IValue(*steps) : c10::IValue();
    ctx->saved_data["reset"] = std::string(reset);
    ctx->saved_data["detach_reset"] = detach_reset;
    ctx->saved_data["surrogate"] = std::string(surrogate);
    ctx->saved_data["width"] = width;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["decay_input"] = decay_input;
    ctx->saved_data["need_state"] = need_state;
    ctx->saved_data["tau_logit"] = tau_logit;
    ctx->set_materialize_grads(false);
    return {spikes, u_last};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op_handle<AlifBwdSig>("alif_cuda::alif_bwd");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &tau = saved[1], &v_th = saved[2], &u0 = saved[3],
                     &state = saved[4];
    const at::Tensor& g_spikes = grads[0];
    // Without need_state u_last is an empty stand-in: whatever gradient it got is no gradient.
    const at::Tensor g_u_last = ctx->saved_data.at("need_state").toBool() ? grads[1] : at::Tensor();
    variable_list out(13);  // one per forward argument
    if (!g_spikes.defined() && !g_u_last.defined()) return out;
    const auto& d = ctx->saved_data;
    const c10::IValue& steps_v = d.at("steps");
    const std::optional<int64_t> steps =
        steps_v.isNone() ? std::nullopt : std::optional<int64_t>(steps_v.toInt());
    const std::string reset = d.at("reset").toStringRef(), surrogate = d.at("surrogate").toStringRef();
    const bool detach = d.at("detach_reset").toBool();
    const double width = d.at("width").toDouble(), alpha = d.at("alpha").toDouble();
    const bool decay_input = d.at("decay_input").toBool();
    const bool tau_logit = d.at("tau_logit").toBool();
    const bool need_grad_u0 = u0.defined() && ctx->needs_input_grad(3);
    const auto r = bwd.call(opt(g_spikes), opt(g_u_last), x, opt(state), steps, tau, v_th,
                            opt(u0), reset, detach, surrogate, width, alpha, need_grad_u0,
                            decay_input, tau_logit);
    out[0] = std::get<0>(r);
    out[1] = std::get<1>(r);
    out[2] = std::get<2>(r);
    if (need_grad_u0) out[3] = std::get<3>(r);
    return out;
  }
};

bool any_requires_grad(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

std::tuple<at::Tensor, at::Tensor> alif_autograd(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool detach_reset, std::string_view surrogate, double width, double alpha,
    bool decay_input, bool need_state, bool tau_logit) {
  const at::Tensor u0_t = u0.value_or(at::Tensor());
  if (!at::GradMode::is_enabled() || !any_requires_grad({&x, &tau, &v_th, &u0_t})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [spikes, u_last, state] =
        alif_forward(x, tau, v_th, u0, steps, reset, false, detach_reset, surrogate, width, alpha,
                     decay_input, need_state, tau_logit);
    return {spikes, u_last};
  }
  const auto out = AlifFunction::apply(x, tau, v_th, u0, steps, reset, detach_reset, surrogate,
                                       width, alpha, decay_input, need_state, tau_logit);
  return {out[0], out[1]};
}

// alif below autograd (no grad mode, inference tensors): the forward alone.
std::tuple<at::Tensor, at::Tensor> alif_no_grad(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool detach_reset, std::string_view surrogate, double width, double alpha,
    bool decay_input, bool need_state, bool tau_logit) {
  auto [spikes, u_last, state] = alif_forward(x, tau, v_th, u0, steps, reset, false, detach_reset,
                                              surrogate, width, alpha, decay_input, need_state,
                                              tau_logit);
  return {spikes, u_last};
}

struct TaidFunction : public torch::autograd::Function<TaidFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& s, const at::Tensor& w,
                               std::string_view reduce) {
    static const auto fwd = op_handle<TaidFwdSig>("alif_cuda::taid_fwd");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, attn, squeezed] = fwd.call(s, w, reduce);
    ctx->save_for_backward({s, w, attn, squeezed});
    ctx->saved_data["reduce"] = std::string(reduce);
    ctx->mark_non_differentiable({attn});
    ctx->set_materialize_grads(false);
    return {y, attn};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto bwd = op_handle<TaidBwdSig>("alif_cuda::taid_bwd");
    variable_list out(3);
    if (!grads[0].defined()) return out;
    const auto saved = ctx->get_saved_variables();
    auto [grad_s, grad_w] = bwd.call(grads[0].contiguous(), saved[0], saved[1], saved[2],
                                     saved[3], ctx->saved_data.at("reduce").toStringRef());
    out[0] = grad_s;
    out[1] = grad_w;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> taid_autograd(const at::Tensor& s, const at::Tensor& w,
                                                 std::string_view reduce) {
  if (!at::GradMode::is_enabled() || !any_requires_grad({&s, &w})) {
    static const auto fwd = op_handle<TaidFwdSig>("alif_cuda::taid_fwd");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, attn, squeezed] = fwd.call(s, w, reduce);
    return {y, attn};
  }
  const auto out = TaidFunction::apply(s, w, reduce);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> taid_no_grad(const at::Tensor& s, const at::Tensor& w,
                                                std::string_view reduce) {
  static const auto fwd = op_handle<TaidFwdSig>("alif_cuda::taid_fwd");
  auto [y, attn, squeezed] = fwd.call(s, w, reduce);
  return {y, attn};
}

// The backward ops are not differentiable: when a graph is being built through them (double
// backward), their outputs get a node that refuses, instead of silently acting as constants.
[[noreturn]] void refuse_double_backward(const char* op) {
  TORCH_CHECK(false, "alif_cuda: double backward through ", op,
              " (e.g. autograd.grad with create_graph=True, then differentiating the result) is "
              "not supported");
}

template <const char* kName>
struct RefuseDoubleBackward : public torch::autograd::Function<RefuseDoubleBackward<kName>> {
  static variable_list forward(AutogradContext*, const std::function<variable_list()>& run,
                               at::TensorList inputs) {
    return run();
  }
  static variable_list backward(AutogradContext*, variable_list) { refuse_double_backward(kName); }
};

constexpr char kAlifBwd[] = "alif_bwd";
constexpr char kTaidBwd[] = "taid_bwd";

// Runs a backward op below autograd; in grad mode with a differentiable input (a double
// backward being recorded), through the refusing node.
template <const char* kName>
variable_list run_backward_op(const variable_list& inputs,
                              const std::function<variable_list()>& run) {
  if (!at::GradMode::is_enabled()) return run();
  variable_list differentiable;
  for (const auto& t : inputs) {
    if (t.defined() && t.requires_grad()) differentiable.push_back(t);
  }
  if (differentiable.empty()) return run();
  return RefuseDoubleBackward<kName>::apply(run, at::TensorList(differentiable));
}

template <typename Tuple, size_t... I>
variable_list to_list(const Tuple& t, std::index_sequence<I...>) {
  return {std::get<I>(t)...};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alif_bwd_autograd(
    const std::optional<at::Tensor>& grad_spikes, const std::optional<at::Tensor>& grad_u_last,
    const at::Tensor& x, const std::optional<at::Tensor>& u_ckpt, std::optional<int64_t> steps,
    const at::Tensor& tau, const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
    std::string_view reset, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool need_grad_u0, bool decay_input, bool tau_logit) {
  static const auto bwd = op_handle<AlifBwdSig>("alif_cuda::alif_bwd");
  const auto out = run_backward_op<kAlifBwd>(
      {grad_spikes.value_or(at::Tensor()), grad_u_last.value_or(at::Tensor()), x, tau, v_th,
       u0.value_or(at::Tensor())},
      [&] {
        at::AutoDispatchBelowADInplaceOrView guard;
        return to_list(bwd.call(grad_spikes, grad_u_last, x, u_ckpt, steps, tau, v_th, u0, reset,
                                detach_reset, surrogate, width, alpha, need_grad_u0, decay_input,
                                tau_logit),
                       std::make_index_sequence<4>{});
      });
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<at::Tensor, at::Tensor> taid_bwd_autograd(const at::Tensor& grad_y,
                                                     const at::Tensor& s, const at::Tensor& w,
                                                     const at::Tensor& attn,
                                                     const at::Tensor& squeezed,
                                                     std::string_view reduce) {
  static const auto bwd = op_handle<TaidBwdSig>("alif_cuda::taid_bwd");
  const auto out = run_backward_op<kTaidBwd>({grad_y, s, w}, [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return to_list(bwd.call(grad_y, s, w, attn, squeezed, reduce), std::make_index_sequence<2>{});
  });
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, Autograd, m) {
  m.impl("alif", &alif_autograd);
  m.impl("taid", &taid_autograd);
  m.impl("alif_bwd", &alif_bwd_autograd);
  m.impl("taid_bwd", &taid_bwd_autograd);
}

TORCH_LIBRARY_IMPL(alif_cuda, CompositeExplicitAutograd, m) {
  m.impl("alif", &alif_no_grad);
  m.impl("taid", &taid_no_grad);
}

}  // namespace alif_cuda

// The shared library is imported as the Python module alif_cuda._C; loading it runs the
// registrations above. It defines no Python functions of its own.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
