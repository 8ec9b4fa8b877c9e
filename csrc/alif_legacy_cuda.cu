// The legacy (saved-h) CUDA kernels of the alif op family (see alif_legacy.h): float32, float16, bfloat16 (and float64) storage, math in
// float (double for float64).
//
// Thread mapping: one thread per neuron, looping over T in registers. Step t of neuron n lives at
// t * N + n, so a warp reads and writes 32 consecutive values per step (coalesced).
// dL/dtau and dL/dv_th: each block reduces its threads' sums in a fixed order to one partial per
// (channel, block); a second kernel adds a channel's partials in a fixed order. Deterministic, no
// atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "alif_legacy.h"

namespace alif_cuda {
namespace legacy {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// A static x saves no h: the backward recomputes h forward in chunks of this many steps held in
// registers, walking each chunk backward (recomputation is ALU work; memory is read once).
constexpr int kStaticChunk = 16;
constexpr int kMaxGridY = 65535;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sums a and b over the block in a fixed order; thread 0 gets the totals.
template <typename acc_t>
__device__ void block_sum2(acc_t& a, acc_t& b) {
  __shared__ acc_t sa[kWarps], sb[kWarps];
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, offset);
    b += __shfl_down_sync(0xffffffffu, b, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      a += sa[w];
      b += sb[w];
    }
  }
  __syncthreads();  // the shared arrays may be reused by the caller's next iteration
}

template <typename scalar_t, bool kSoft, bool kStatic>
__global__ void __launch_bounds__(kThreads)
    alif_fwd_kernel(AlifParams p, const scalar_t* __restrict__ x,
                    const at::opmath_type<scalar_t>* __restrict__ tau,
                    const at::opmath_type<scalar_t>* __restrict__ v_th,
                    const scalar_t* __restrict__ u0, scalar_t* __restrict__ spikes,
                    scalar_t* __restrict__ u_last, at::opmath_type<scalar_t>* __restrict__ h_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= p.N) return;
  const int64_t c = (n / p.I) % p.C;
  const acc_t tau_n = tau[p.tau_per_channel ? c : 0];
  const acc_t vth_n = v_th[p.vth_per_channel ? c : 0];
  const acc_t x_static = kStatic ? acc_t(x[n]) : acc_t(0);
  acc_t u = u0 ? acc_t(u0[n]) : acc_t(0);
  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t idx = t * p.N + n;
    const acc_t h = charge(tau_n, u, kStatic ? x_static : acc_t(x[idx]));
    const acc_t o = spike_of(h, vth_n);
    spikes[idx] = scalar_t(o);
    if (h_out) h_out[idx] = h;
    u = reset_state(h, o, vth_n, kSoft);
  }
  u_last[n] = scalar_t(u);
}

template <typename scalar_t, bool kSoft, bool kStatic>
__global__ void __launch_bounds__(kThreads)
    alif_bwd_kernel(AlifParams p, const scalar_t* __restrict__ grad_spikes,
                    const scalar_t* __restrict__ grad_u_last,
                    const at::opmath_type<scalar_t>* __restrict__ h_saved,
                    const scalar_t* __restrict__ x_static,
                    const at::opmath_type<scalar_t>* __restrict__ tau,
                    const at::opmath_type<scalar_t>* __restrict__ v_th,
                    const scalar_t* __restrict__ u0, scalar_t* __restrict__ grad_x,
                    scalar_t* __restrict__ grad_u0, at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t width = acc_t(p.width), alpha = acc_t(p.alpha);
  // Partials are laid out (2, C, gridDim.x): dtau first, then dv_th.
  const int64_t n_partials = p.C * gridDim.x;
  // Blocks of one blockIdx.y walk channels c; inside a channel, j enumerates its (b, i) neurons.
  for (int64_t c = blockIdx.y; c < p.C; c += gridDim.y) {
    const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    acc_t dtau = 0, dvth = 0;
    if (j < p.B * p.I) {
      const int64_t n = ((j / p.I) * p.C + c) * p.I + j % p.I;
      const acc_t tau_n = tau[p.tau_per_channel ? c : 0];
      const acc_t vth_n = v_th[p.vth_per_channel ? c : 0];
      const acc_t u_init = u0 ? acc_t(u0[n]) : acc_t(0);
      acc_t du = grad_u_last ? acc_t(grad_u_last[n]) : acc_t(0);
      // One BPTT step at t, given h_t and u_{t-1}; returns dL/dh_t.
      auto step = [&](int64_t t, acc_t h, acc_t u_prev) {
        const auto r = bptt_step(h, u_prev, acc_t(grad_spikes[t * p.N + n]), du, vth_n, kSoft,
                                 p.detach_reset, p.surrogate, width, alpha);
        dtau += r.dtau;
        dvth += r.dvth;
        du = tau_n * r.dh;
        return r.dh;
      };
      if constexpr (kStatic) {
        const acc_t xv = acc_t(x_static[n]);
        acc_t gx = 0;
        for (int64_t t1 = p.T; t1 > 0; t1 -= kStaticChunk) {
          const int64_t t0 = t1 > kStaticChunk ? t1 - kStaticChunk : 0;
          acc_t u = u_init;
          for (int64_t t = 0; t < t0; ++t) {
            const acc_t h = charge(tau_n, u, xv);
            u = reset_after(h, vth_n, kSoft);
          }
          const acc_t u_start = u;
          acc_t hist[kStaticChunk];
#pragma unroll
          for (int k = 0; k < kStaticChunk; ++k) {
            if (t0 + k < t1) {
              hist[k] = charge(tau_n, u, xv);
              u = reset_after(hist[k], vth_n, kSoft);
            }
          }
#pragma unroll
          for (int k = kStaticChunk - 1; k >= 0; --k) {
            if (t0 + k < t1) {
              const acc_t u_prev =
                  k > 0 ? reset_after(hist[k - 1], vth_n, kSoft) : u_start;
              gx += step(t0 + k, hist[k], u_prev);
            }
          }
        }
        grad_x[n] = scalar_t(gx);
      } else {
        acc_t h = h_saved[(p.T - 1) * p.N + n];
        for (int64_t t = p.T - 1; t >= 0; --t) {
          acc_t u_prev = u_init, h_prev = 0;
          if (t > 0) {
            h_prev = h_saved[(t - 1) * p.N + n];
            u_prev = reset_after(h_prev, vth_n, kSoft);
          }
          grad_x[t * p.N + n] = scalar_t(step(t, h, u_prev));
          h = h_prev;
        }
      }
      if (grad_u0) grad_u0[n] = scalar_t(du);
    }
    block_sum2(dtau, dvth);
    if (threadIdx.x == 0) {
      partials[c * gridDim.x + blockIdx.x] = dtau;
      partials[n_partials + c * gridDim.x + blockIdx.x] = dvth;
    }
  }
}

// out[k, c] = sum over b of partials[k, c, b], k in {dtau, dv_th}, in a fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    channel_sum_kernel(const acc_t* __restrict__ partials, int64_t C, int64_t blocks,
                       acc_t* __restrict__ out) {
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    const acc_t* row_tau = partials + c * blocks;
    const acc_t* row_vth = partials + (C + c) * blocks;
    acc_t a = 0, b = 0;
    for (int64_t i = threadIdx.x; i < blocks; i += blockDim.x) {
      a += row_tau[i];
      b += row_vth[i];
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
      out[c] = a;
      out[C + c] = b;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alif_fwd_cuda(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool save_h, bool detach_reset, std::string_view surrogate, double width, double alpha) {
  const AlifParams p = make_alif_fwd_params(x, tau, v_th, u0, steps, reset, detach_reset,
                                            surrogate, width, alpha);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  FwdOutputs out = alloc_fwd(x, p, save_h);
  if (p.N == 0) return {out.spikes, out.u_last, out.h};
  const at::Tensor xc = x.contiguous();
  const at::Tensor u0c = u0.has_value() ? u0->contiguous() : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "alif_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor tau_c = tau.to(acc).contiguous(), vth_c = v_th.to(acc).contiguous();
    bool_switch2(p.soft_reset, p.static_x, [&](auto soft, auto stat) {
      alif_fwd_kernel<scalar_t, decltype(soft)::value, decltype(stat)::value>
          <<<ceil_div(p.N, kThreads), kThreads, 0, stream>>>(
              p, xc.data_ptr<scalar_t>(), tau_c.data_ptr<acc_t>(), vth_c.data_ptr<acc_t>(),
              u0c.defined() ? u0c.data_ptr<scalar_t>() : nullptr,
              out.spikes.data_ptr<scalar_t>(), out.u_last.data_ptr<scalar_t>(),
              out.h.numel() ? out.h.data_ptr<acc_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out.spikes, out.u_last, out.h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alif_bwd_cuda(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_u_last,
    const std::optional<at::Tensor>& h, const std::optional<at::Tensor>& x_static,
    const at::Tensor& tau, const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
    std::string_view reset, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool need_grad_u0) {
  const AlifParams p = make_bwd_params(grad_spikes, grad_u_last, h, x_static, tau, v_th, u0,
                                            reset, detach_reset, surrogate, width, alpha);
  const c10::cuda::OptionalCUDAGuard guard(grad_spikes.device());
  const BwdBuffers buf =
      prepare_bwd(p, grad_spikes, grad_u_last, h, x_static, u0, need_grad_u0);
  const at::Tensor &g = buf.grad_spikes, &gu = buf.grad_u_last, &hc = buf.h, &xs = buf.x_static,
                   &u0c = buf.u0, &grad_x = buf.grad_x, &grad_u0 = buf.grad_u0;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor grad_tau, grad_vth;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "alif_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = g.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor tau_c = tau.to(acc_opts.dtype()).contiguous();
    const at::Tensor vth_c = v_th.to(acc_opts.dtype()).contiguous();
    const int64_t blocks = ceil_div(p.B * p.I, kThreads);
    at::Tensor partials = at::empty({2, p.C, blocks}, acc_opts);
    const bool launch = blocks > 0 && p.C > 0;
    // With no neurons the sums are zero; otherwise the kernels write every entry.
    at::Tensor sums = launch ? at::empty({2, p.C}, acc_opts) : at::zeros({2, p.C}, acc_opts);
    if (launch) {
      const dim3 grid(blocks, std::min<int64_t>(p.C, kMaxGridY));
      bool_switch2(p.soft_reset, p.static_x, [&](auto soft, auto stat) {
        alif_bwd_kernel<scalar_t, decltype(soft)::value, decltype(stat)::value>
            <<<grid, kThreads, 0, stream>>>(
                p, g.data_ptr<scalar_t>(), gu.defined() ? gu.data_ptr<scalar_t>() : nullptr,
                hc.defined() ? hc.data_ptr<acc_t>() : nullptr,
                xs.defined() ? xs.data_ptr<scalar_t>() : nullptr, tau_c.data_ptr<acc_t>(),
                vth_c.data_ptr<acc_t>(), u0c.defined() ? u0c.data_ptr<scalar_t>() : nullptr,
                grad_x.data_ptr<scalar_t>(),
                grad_u0.numel() ? grad_u0.data_ptr<scalar_t>() : nullptr,
                partials.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      channel_sum_kernel<acc_t><<<std::min<int64_t>(p.C, kMaxGridY), kThreads, 0, stream>>>(
          partials.data_ptr<acc_t>(), p.C, blocks, sums.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_tau = param_grad(sums[0], tau);
    grad_vth = param_grad(sums[1], v_th);
  });
  return {grad_x, grad_tau, grad_vth, grad_u0};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CUDA, m) {
  m.impl("alif_fwd_saved_h", &alif_fwd_cuda);
  m.impl("alif_bwd_saved_h", &alif_bwd_cuda);
}

}  // namespace legacy
}  // namespace alif_cuda
