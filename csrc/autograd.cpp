// The ops' autograd, registered for the Autograd key in C++, so a forward+backward costs no
// Python beyond the call of alif()/taid(): the nodes call alif_bwd / taid_bwd through the
// dispatcher (torch.compile traces those calls; the fake kernels are in alif_cuda/ops.py).
// Gradients of unused outputs are not materialised: the backward ops take them as absent.
#include <torch/autograd.h>
#include <torch/library.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>

namespace alif_cuda {

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
