// The host side of the taid ops that both backends share: argument checks with messages that say
// what was expected, and the output and work-buffer allocation.
#include <ATen/ops/empty.h>

#include <string>

#include "checks.h"
#include "cpu_pool.h"
#include "taid_host.h"

namespace alif_cuda {

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
  const auto state_dtype = state_dtype_of(s.scalar_type());
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
  const auto state_dtype = state_dtype_of(s.scalar_type());
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

}  // namespace alif_cuda
