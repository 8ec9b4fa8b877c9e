// The legacy (saved-h) CPU kernels of the alif op family, float32 and float64: see alif_legacy.h.
//
// Work is split over neurons; each task walks its neurons in blocks of kBlock, and for each block
// loops over time with the neurons innermost, so every time step reads and writes one contiguous
// run (the compiler vectorises it) while the block's state stays in a small stack array.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/all.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "alif_legacy.h"

namespace alif_cuda {
namespace legacy {
namespace {

constexpr int64_t kBlock = 256;

void check_finite_params(const char* who, const at::Tensor& tau, const at::Tensor& v_th) {
  TORCH_CHECK(at::isfinite(tau).all().item<bool>(), who, ": tau must be finite, got ", tau);
  TORCH_CHECK(at::isfinite(v_th).all().item<bool>(), who, ": v_th must be finite, got ", v_th);
}

template <typename acc_t>
struct NeuronParams {
  acc_t tau[kBlock];
  acc_t v_th[kBlock];
  // Fills the per-neuron tau and v_th of neurons [n0, n0 + len).
  void load(const AlifParams& p, const acc_t* tau_p, const acc_t* vth_p, int64_t n0, int64_t len) {
    // Channel c of neuron n is (n / I) % C: divide once, then step through (c, i).
    int64_t c = (n0 / p.I) % p.C, i = n0 % p.I;
    for (int64_t k = 0; k < len; ++k) {
      tau[k] = tau_p[p.tau_per_channel ? c : 0];
      v_th[k] = vth_p[p.vth_per_channel ? c : 0];
      if (++i == p.I) {
        i = 0;
        c = c + 1 == p.C ? 0 : c + 1;
      }
    }
  }
};

template <typename scalar_t, bool kSoft>
void alif_fwd_cpu_kernel(const AlifParams& p, const scalar_t* __restrict__ x,
                         const at::opmath_type<scalar_t>* __restrict__ tau,
                         const at::opmath_type<scalar_t>* __restrict__ v_th,
                         const scalar_t* __restrict__ u0, scalar_t* __restrict__ spikes,
                         scalar_t* __restrict__ u_last,
                         at::opmath_type<scalar_t>* __restrict__ h_out) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, p.N, kBlock, [&](int64_t begin, int64_t end) {
    NeuronParams<acc_t> prm;
    acc_t u[kBlock], h[kBlock];
    for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
      const int64_t len = std::min(kBlock, end - n0);
      prm.load(p, tau, v_th, n0, len);
      for (int64_t k = 0; k < len; ++k) u[k] = u0 ? acc_t(u0[n0 + k]) : acc_t(0);
      for (int64_t t = 0; t < p.T; ++t) {
        const scalar_t* __restrict__ xt = x + (p.static_x ? 0 : t * p.N) + n0;
        scalar_t* __restrict__ st = spikes + t * p.N + n0;
        // No store is conditional inside the loop, so it vectorises; h is copied out after.
        for (int64_t k = 0; k < len; ++k) {
          h[k] = charge(prm.tau[k], u[k], acc_t(xt[k]));
          const acc_t o = spike_of(h[k], prm.v_th[k]);
          st[k] = scalar_t(o);
          u[k] = reset_state(h[k], o, prm.v_th[k], kSoft);
        }
        if (h_out) std::copy(h, h + len, h_out + t * p.N + n0);
      }
      for (int64_t k = 0; k < len; ++k) u_last[n0 + k] = scalar_t(u[k]);
    }
  });
}

// Writes dL/dx, dL/du0 and, per neuron, that neuron's sum over time of the dtau and dv_th terms.
// The reset kind and the surrogate are template flags so the inner loop is branch-free.
template <typename scalar_t, bool kSoft, bool kRect>
void alif_bwd_cpu_kernel(const AlifParams& p, const scalar_t* __restrict__ grad_spikes,
                         const scalar_t* __restrict__ grad_u_last,
                         const at::opmath_type<scalar_t>* __restrict__ h_saved,
                         const scalar_t* __restrict__ x_static,
                         const at::opmath_type<scalar_t>* __restrict__ tau,
                         const at::opmath_type<scalar_t>* __restrict__ v_th,
                         const scalar_t* __restrict__ u0, scalar_t* __restrict__ grad_x,
                         scalar_t* __restrict__ grad_u0,
                         at::opmath_type<scalar_t>* __restrict__ dtau_n,
                         at::opmath_type<scalar_t>* __restrict__ dvth_n) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t width = acc_t(p.width), alpha = acc_t(p.alpha);
  constexpr Surrogate kind = kRect ? Surrogate::Rect : Surrogate::Atan;
  at::parallel_for(0, p.N, kBlock, [&](int64_t begin, int64_t end) {
    NeuronParams<acc_t> prm;
    acc_t u_start[kBlock], du[kBlock], gx[kBlock], dtau[kBlock], dvth[kBlock];
    // A static x saved no h: recompute the block's h history forward, then walk it backward.
    std::vector<acc_t> history(p.static_x ? p.T * kBlock : 0);
    for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
      const int64_t len = std::min(kBlock, end - n0);
      prm.load(p, tau, v_th, n0, len);
      for (int64_t k = 0; k < len; ++k) {
        u_start[k] = u0 ? acc_t(u0[n0 + k]) : acc_t(0);
        du[k] = grad_u_last ? acc_t(grad_u_last[n0 + k]) : acc_t(0);
        gx[k] = dtau[k] = dvth[k] = acc_t(0);
      }
      if (p.static_x) {
        for (int64_t k = 0; k < len; ++k) gx[k] = u_start[k];  // gx holds u here, briefly
        for (int64_t t = 0; t < p.T; ++t) {
          acc_t* __restrict__ ht = history.data() + t * kBlock;
          for (int64_t k = 0; k < len; ++k) {
            ht[k] = charge(prm.tau[k], gx[k], acc_t(x_static[n0 + k]));
            gx[k] = reset_after(ht[k], prm.v_th[k], kSoft);
          }
        }
        for (int64_t k = 0; k < len; ++k) gx[k] = acc_t(0);
      }
      auto h_row = [&](int64_t t) {
        return p.static_x ? history.data() + t * kBlock : h_saved + t * p.N + n0;
      };
      for (int64_t t = p.T - 1; t >= 0; --t) {
        const acc_t* __restrict__ ht = h_row(t);
        const acc_t* __restrict__ hp = t > 0 ? h_row(t - 1) : nullptr;
        const scalar_t* __restrict__ gt = grad_spikes + t * p.N + n0;
        scalar_t* __restrict__ gxt = p.static_x ? nullptr : grad_x + t * p.N + n0;
        for (int64_t k = 0; k < len; ++k) {
          const acc_t u_prev =
              hp ? reset_after(hp[k], prm.v_th[k], kSoft) : u_start[k];
          const auto r = bptt_step(ht[k], u_prev, acc_t(gt[k]), du[k], prm.v_th[k], kSoft,
                                   p.detach_reset, kind, width, alpha);
          if (gxt) {
            gxt[k] = scalar_t(r.dh);
          } else {
            gx[k] += r.dh;
          }
          dtau[k] += r.dtau;
          dvth[k] += r.dvth;
          du[k] = prm.tau[k] * r.dh;
        }
      }
      for (int64_t k = 0; k < len; ++k) {
        if (p.static_x) grad_x[n0 + k] = scalar_t(gx[k]);
        if (grad_u0) grad_u0[n0 + k] = scalar_t(du[k]);
        dtau_n[n0 + k] = dtau[k];
        dvth_n[n0 + k] = dvth[k];
      }
    }
  });
}

// Sums per-neuron values (B, C, I) over B and I in a fixed order: deterministic whatever the
// number of threads. Accumulates in double. With scalar parameters (one channel) in the order of
// the replaying CPU kernels (kCpuSumBlock neurons a block, then the blocks), for the same bits.
template <typename acc_t>
at::Tensor sum_per_channel(const AlifParams& p, const acc_t* per_neuron, at::TensorOptions opts) {
  at::Tensor out = at::empty({p.C}, opts);
  acc_t* o = out.data_ptr<acc_t>();
  if (!p.tau_per_channel && !p.vth_per_channel) {
    double total = 0;
    for (int64_t b0 = 0; b0 < p.N; b0 += kCpuSumBlock) {
      double s = 0;
      for (int64_t n = b0; n < std::min(p.N, b0 + kCpuSumBlock); ++n) s += per_neuron[n];
      total += s;
    }
    o[0] = acc_t(total);
    return out;
  }
  at::parallel_for(0, p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      for (int64_t b = 0; b < p.B; ++b) {
        const acc_t* row = per_neuron + (b * p.C + c) * p.I;
        for (int64_t i = 0; i < p.I; ++i) s += row[i];
      }
      o[c] = acc_t(s);
    }
  });
  return out;
}

void check_cpu_float(const char* who, const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, who,
              ": on CPU x must be float32 or float64 (float16/bfloat16 run on CUDA), got ",
              x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alif_fwd_cpu(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool save_h, bool detach_reset, std::string_view surrogate, double width, double alpha) {
  const AlifParams p = make_alif_fwd_params(x, tau, v_th, u0, steps, reset, detach_reset,
                                            surrogate, width, alpha);
  check_cpu_float("alif", x);
  check_finite_params("alif", tau, v_th);
  FwdOutputs out = alloc_fwd(x, p, save_h);
  const at::Tensor xc = x.contiguous();
  const at::Tensor u0c = u0.has_value() ? u0->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "alif_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor tau_c = tau.to(acc).contiguous(), vth_c = v_th.to(acc).contiguous();
    bool_switch2(p.soft_reset, false, [&](auto soft, auto) {
      alif_fwd_cpu_kernel<scalar_t, decltype(soft)::value>(
        p, xc.data_ptr<scalar_t>(), tau_c.data_ptr<acc_t>(), vth_c.data_ptr<acc_t>(),
        u0c.defined() ? u0c.data_ptr<scalar_t>() : nullptr, out.spikes.data_ptr<scalar_t>(),
        out.u_last.data_ptr<scalar_t>(), out.h.numel() ? out.h.data_ptr<acc_t>() : nullptr);
    });
  });
  return {out.spikes, out.u_last, out.h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alif_bwd_cpu(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_u_last,
    const std::optional<at::Tensor>& h, const std::optional<at::Tensor>& x_static,
    const at::Tensor& tau, const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
    std::string_view reset, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool need_grad_u0) {
  const AlifParams p = make_bwd_params(grad_spikes, grad_u_last, h, x_static, tau, v_th, u0,
                                            reset, detach_reset, surrogate, width, alpha);
  check_cpu_float("alif_bwd", grad_spikes);
  check_finite_params("alif_bwd", tau, v_th);
  const BwdBuffers buf =
      prepare_bwd(p, grad_spikes, grad_u_last, h, x_static, u0, need_grad_u0);
  const at::Tensor &g = buf.grad_spikes, &gu = buf.grad_u_last, &hc = buf.h, &xs = buf.x_static,
                   &u0c = buf.u0, &grad_x = buf.grad_x, &grad_u0 = buf.grad_u0;
  at::Tensor grad_tau, grad_vth;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "alif_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = g.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor tau_c = tau.to(acc_opts.dtype()).contiguous();
    const at::Tensor vth_c = v_th.to(acc_opts.dtype()).contiguous();
    at::Tensor dtau_n = at::empty({p.N}, acc_opts), dvth_n = at::empty({p.N}, acc_opts);
    bool_switch2(p.soft_reset, p.surrogate == Surrogate::Rect, [&](auto soft, auto rect) {
      alif_bwd_cpu_kernel<scalar_t, decltype(soft)::value, decltype(rect)::value>(
        p, g.data_ptr<scalar_t>(), gu.defined() ? gu.data_ptr<scalar_t>() : nullptr,
        hc.defined() ? hc.data_ptr<acc_t>() : nullptr,
        xs.defined() ? xs.data_ptr<scalar_t>() : nullptr, tau_c.data_ptr<acc_t>(),
        vth_c.data_ptr<acc_t>(), u0c.defined() ? u0c.data_ptr<scalar_t>() : nullptr,
        grad_x.data_ptr<scalar_t>(), grad_u0.numel() ? grad_u0.data_ptr<scalar_t>() : nullptr,
        dtau_n.data_ptr<acc_t>(), dvth_n.data_ptr<acc_t>());
    });
    grad_tau = param_grad(sum_per_channel(p, dtau_n.data_ptr<acc_t>(), acc_opts), tau);
    grad_vth = param_grad(sum_per_channel(p, dvth_n.data_ptr<acc_t>(), acc_opts), v_th);
  });
  return {grad_x, grad_tau, grad_vth, grad_u0};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CPU, m) {
  m.impl("alif_fwd_saved_h", &alif_fwd_cpu);
  m.impl("alif_bwd_saved_h", &alif_bwd_cpu);
}

}  // namespace legacy
}  // namespace alif_cuda
