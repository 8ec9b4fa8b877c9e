// CPU kernels of the taid op family (float32 and float64).
//
// Work is split over (b, c) planes; a plane's T x H x W values are walked time step by time step,
// each step one contiguous run of pixels (the inner loops vectorise). dL/dw: every plane writes
// its dL/dZ (T values), then each entry of dw sums over the planes in order. Deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "taid.h"

namespace alif_cuda {
namespace {

// Planes per task: enough values that a task outweighs its scheduling.
int64_t plane_grain(const TaidParams& p) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.T * p.plane_size));
}

// sum_{i < n} term(i) in kLanes interleaved partial sums: independent chains the compiler turns
// into SIMD adds (a single running sum is one dependent add per element). Fixed order.
template <typename acc_t, typename Term>
acc_t lane_sum(int64_t n, Term&& term) {
  constexpr int kLanes = 16;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += term(i + k);
  }
  acc_t total = 0;
  for (; i < n; ++i) total += term(i);
  for (int k = 0; k < kLanes; ++k) total += lanes[k];
  return total;
}

void check_cpu_float(const char* who, const at::Tensor& s) {
  TORCH_CHECK(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, who,
              ": on CPU s must be float32 or float64 (float16/bfloat16 run on CUDA), got ",
              s.scalar_type());
}

template <typename scalar_t>
void taid_fwd_cpu_kernel(const TaidParams& p, const scalar_t* __restrict__ s,
                         const at::opmath_type<scalar_t>* __restrict__ w,
                         scalar_t* __restrict__ y, at::opmath_type<scalar_t>* __restrict__ attn,
                         at::opmath_type<scalar_t>* __restrict__ squeezed) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = p.plane_size;
  const acc_t scale = reduce_scale<acc_t>(p);
  at::parallel_for(0, p.planes, plane_grain(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> X(p.T), row(HW);
    for (int64_t plane = begin; plane < end; ++plane) {
      for (int64_t t = 0; t < p.T; ++t) {
        const scalar_t* st = s + (t * p.planes + plane) * HW;
        X[t] = lane_sum<acc_t>(HW, [st](int64_t i) { return acc_t(st[i]); }) / acc_t(HW);
      }
      std::fill(row.begin(), row.end(), acc_t(0));
      for (int64_t t = 0; t < p.T; ++t) {
        const acc_t a = attention_at(w, X.data(), p.T, t);
        attn[t * p.planes + plane] = a;
        squeezed[t * p.planes + plane] = X[t];
        const acc_t coef = a * scale;
        const scalar_t* st = s + (t * p.planes + plane) * HW;
        for (int64_t i = 0; i < HW; ++i) row[i] += coef * acc_t(st[i]);
      }
      scalar_t* yp = y + plane * HW;
      for (int64_t i = 0; i < HW; ++i) yp[i] = scalar_t(row[i]);
    }
  });
}

// Per plane: G_t = scale * sum_px g s_t, dZ_t = G_t A_t (1 - A_t), dX = w^T dZ, and
// ds_t = scale * A_t g + dX_t / HW. dZ is kept (T, planes) for dw.
template <typename scalar_t>
void taid_bwd_cpu_kernel(const TaidParams& p, const scalar_t* __restrict__ g,
                         const scalar_t* __restrict__ s,
                         const at::opmath_type<scalar_t>* __restrict__ w,
                         const at::opmath_type<scalar_t>* __restrict__ attn,
                         scalar_t* __restrict__ grad_s, at::opmath_type<scalar_t>* __restrict__ dZ) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t HW = p.plane_size;
  const acc_t scale = reduce_scale<acc_t>(p);
  at::parallel_for(0, p.planes, plane_grain(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dz(p.T);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* gp = g + plane * HW;
      for (int64_t t = 0; t < p.T; ++t) {
        const scalar_t* st = s + (t * p.planes + plane) * HW;
        const acc_t G =
            lane_sum<acc_t>(HW, [gp, st](int64_t i) { return acc_t(gp[i]) * acc_t(st[i]); });
        const acc_t a = attn[t * p.planes + plane];
        dz[t] = G * scale * a * (acc_t(1) - a);
        dZ[t * p.planes + plane] = dz[t];
      }
      for (int64_t t = 0; t < p.T; ++t) {
        const acc_t coef = scale * attn[t * p.planes + plane];
        const acc_t shift = squeeze_grad_at(w, dz.data(), p.T, t) / acc_t(HW);
        scalar_t* dst = grad_s + (t * p.planes + plane) * HW;
        for (int64_t i = 0; i < HW; ++i) dst[i] = scalar_t(coef * acc_t(gp[i]) + shift);
      }
    }
  });
}

// dw[t, k] = sum over planes of dZ[t, plane] * X[k, plane], planes in order.
template <typename acc_t>
void taid_dw_cpu(const TaidParams& p, const acc_t* __restrict__ dZ,
                 const acc_t* __restrict__ X, acc_t* __restrict__ dw) {
  at::parallel_for(0, p.T * p.T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const acc_t* dz = dZ + (e / p.T) * p.planes;
      const acc_t* x = X + (e % p.T) * p.planes;
      acc_t sum = 0;
      for (int64_t i = 0; i < p.planes; ++i) sum += dz[i] * x[i];
      dw[e] = sum;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> taid_fwd_cpu(const at::Tensor& s,
                                                            const at::Tensor& w,
                                                            std::string_view reduce) {
  const TaidParams p = make_taid_fwd_params(s, w, reduce);
  check_cpu_float("taid", s);
  TaidFwdOutputs out = alloc_taid_fwd(s);
  const at::Tensor sc = s.contiguous();
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "taid_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wc = w.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    taid_fwd_cpu_kernel<scalar_t>(p, sc.data_ptr<scalar_t>(), wc.data_ptr<acc_t>(),
                                  out.y.data_ptr<scalar_t>(), out.attn.data_ptr<acc_t>(),
                                  out.squeezed.data_ptr<acc_t>());
  });
  return {out.y, out.attn, out.squeezed};
}

std::tuple<at::Tensor, at::Tensor> taid_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& s,
                                                const at::Tensor& w, const at::Tensor& attn,
                                                const at::Tensor& squeezed,
                                                std::string_view reduce) {
  const TaidParams p = make_taid_bwd_params(grad_y, s, w, attn, squeezed, reduce);
  check_cpu_float("taid_bwd", s);
  const TaidBwdBuffers b = prepare_taid_bwd(p, grad_y, s, w, attn, squeezed);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "taid_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    taid_bwd_cpu_kernel<scalar_t>(p, b.grad_y.data_ptr<scalar_t>(), b.s.data_ptr<scalar_t>(),
                                  b.w.data_ptr<acc_t>(), b.attn.data_ptr<acc_t>(),
                                  b.grad_s.data_ptr<scalar_t>(), b.dZ.data_ptr<acc_t>());
    taid_dw_cpu<acc_t>(p, b.dZ.data_ptr<acc_t>(), b.squeezed.data_ptr<acc_t>(), b.dw.data_ptr<acc_t>());
  });
  return {b.grad_s, b.dw.to(w.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CPU, m) {
  m.impl("taid_fwd", &taid_fwd_cpu);
  m.impl("taid_bwd", &taid_bwd_cpu);
}

}  // namespace alif_cuda
