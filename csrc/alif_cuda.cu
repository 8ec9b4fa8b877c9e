// CUDA kernels of the alif op family: float32, float16, bfloat16 and float64 storage, math in
// float (double for float64). The time loops are alif.h's, the ones the CPU tests run; this file
// holds only the thread mapping, the loads and stores, and the tau/v_th reductions.
//
// Thread mapping: a thread owns L consecutive neurons, one 16-byte access per step (L = 4 for
// float32, 8 for float16/bfloat16) when every pointer is 16-byte aligned and N % L == 0; else
// (sliced, misaligned input, or float64) one neuron. Step t of neuron n lives at t * N + n, so a
// warp's accesses of one step are contiguous. The forward loads step t+1 before step t's
// arithmetic; the backward issues a whole chunk's loads (x and grad, 2 * kChunk accesses) before
// replaying it.
// dL/dtau, dL/dv_th, deterministic and without atomics: scalar parameters reduce per block in a
// fixed order, then one small kernel adds the block partials in a fixed order; per-channel
// parameters write per-neuron sums (8 bytes a neuron), which a grid of (slice, channel) blocks
// reduces to partials and a last kernel adds per channel, all in a fixed order.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "alif.h"

namespace alif_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kFinalThreads = 1024;
constexpr int kMaxGridY = 65535;
constexpr int64_t kSliceValues = 16 * kThreads;  // per-channel values one reduction block sums

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename acc_t, int L>
using value_t = std::conditional_t<L == 1, acc_t, Lanes<acc_t, L>>;

// L values of T as one aligned access (16 bytes: one LDG.128/STG.128; 32 bytes of float
// checkpoints for L = 8: two).
template <typename T, int L>
struct alignas(sizeof(T) * L >= 16 ? 16 : sizeof(T) * L) Pack {
  T v[L];
};

template <int L, typename acc_t, typename T>
__device__ __forceinline__ value_t<acc_t, L> load_v(const T* p) {
  if constexpr (L == 1) {
    return acc_t(*p);
  } else {
    const Pack<T, L> pk = *reinterpret_cast<const Pack<T, L>*>(p);
    Lanes<acc_t, L> r;
#pragma unroll
    for (int l = 0; l < L; ++l) r.v[l] = acc_t(pk.v[l]);
    return r;
  }
}

template <int L, typename acc_t, typename T>
__device__ __forceinline__ void store_v(T* p, const value_t<acc_t, L>& v) {
  if constexpr (L == 1) {
    *p = T(v);
  } else {
    Pack<T, L> pk;
#pragma unroll
    for (int l = 0; l < L; ++l) pk.v[l] = T(v.v[l]);
    *reinterpret_cast<Pack<T, L>*>(p) = pk;
  }
}

template <typename scalar_t>
using CudaPtrs = AlifPtrs<scalar_t>;

// The Mem accessor of alif.h for the L neurons [n, n + L) of one thread.
template <typename scalar_t, int L, bool kStatic>
struct CudaMem {
  using acc_t = at::opmath_type<scalar_t>;
  using V = value_t<acc_t, L>;
  const CudaPtrs<scalar_t>& q;
  int64_t N, n;

  __device__ V zero() const { return V(acc_t(0)); }
  __device__ V x(int64_t t) const { return load_v<L, acc_t>(q.x + (kStatic ? 0 : t * N) + n); }
  __device__ V g(int64_t t) const {
    return q.grad_spikes ? load_v<L, acc_t>(q.grad_spikes + t * N + n) : zero();
  }
  __device__ V u0() const { return q.u0 ? load_v<L, acc_t>(q.u0 + n) : zero(); }
  __device__ V grad_u_last() const {
    return q.grad_u_last ? load_v<L, acc_t>(q.grad_u_last + n) : zero();
  }
  __device__ V ckpt(int64_t i) const { return load_v<L, acc_t>(q.u_ckpt + i * N + n); }
  __device__ void spikes(int64_t t, const V& o) const { store_v<L, acc_t>(q.spikes + t * N + n, o); }
  __device__ void u_last(const V& u) const {
    if (q.u_last) store_v<L, acc_t>(q.u_last + n, u);
  }
  __device__ void set_ckpt(int64_t i, const V& u) const {
    if (q.u_ckpt) store_v<L, acc_t>(q.u_ckpt + i * N + n, u);
  }
  __device__ void grad_x(int64_t t, const V& dh) const {
    store_v<L, acc_t>(q.grad_x + t * N + n, dh);
  }
  __device__ void grad_x_static(const V& s) const { store_v<L, acc_t>(q.grad_x + n, s); }
  __device__ void grad_u0(const V& du) const {
    if (q.grad_u0) store_v<L, acc_t>(q.grad_u0 + n, du);
  }
};

// tau or v_th of the thread's L lanes: channel (n / I) % C per lane.
template <int L, typename acc_t>
__device__ __forceinline__ value_t<acc_t, L> lane_param(const AlifParams& p, const acc_t* values,
                                                        bool per_channel, int64_t n) {
  if constexpr (L == 1) {
    return values[per_channel ? (n / p.I) % p.C : 0];
  } else {
    Lanes<acc_t, L> r;
#pragma unroll
    for (int l = 0; l < L; ++l) r.v[l] = values[per_channel ? ((n + l) / p.I) % p.C : 0];
    return r;
  }
}

template <typename scalar_t, int L>
__device__ __forceinline__ NeuronConsts<value_t<at::opmath_type<scalar_t>, L>> thread_consts(
    const AlifParams& p, const CudaPtrs<scalar_t>& q, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  auto tau = lane_param<L>(p, q.tau, p.tau_per_channel, n);
  if (p.tau_logit) tau = tau_from_logit<decltype(tau), acc_t>(tau);
  return make_consts(tau, lane_param<L>(p, q.v_th, p.vth_per_channel, n),
                     SurrogateScalars<acc_t>(p));
}

template <typename scalar_t, int L, bool kSoft, bool kStatic, bool kDecay>
__global__ void __launch_bounds__(kThreads)
    alif_fwd_kernel(const AlifParams p, const CudaPtrs<scalar_t> q) {
  const int64_t n = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * L;
  if (n >= p.N) return;
  const CudaMem<scalar_t, L, kStatic> m{q, p.N, n};
  alif_fwd_neurons<kSoft, kDecay>(m, thread_consts<scalar_t, L>(p, q, n), p.T);
}

// Sums a and b over the block in a fixed order; thread 0 gets the totals.
template <typename acc_t, int kBlockThreads>
__device__ void block_sum2(acc_t& a, acc_t& b) {
  constexpr int kBlockWarps = kBlockThreads / 32;
  __shared__ acc_t sa[kBlockWarps], sb[kBlockWarps];
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
  if (warp == 0) {
    a = lane < kBlockWarps ? sa[lane] : acc_t(0);
    b = lane < kBlockWarps ? sb[lane] : acc_t(0);
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, offset);
      b += __shfl_down_sync(0xffffffffu, b, offset);
    }
  }
  __syncthreads();  // the shared arrays may be reused by the caller's next iteration
}

// partials: (2, gridDim.x) block sums of dtau and dv_th (scalar parameters only).
template <typename scalar_t, int L, bool kSoft, bool kDetach, Surrogate kSur, bool kStatic,
          bool kDecay>
__global__ void __launch_bounds__(kThreads)
    alif_bwd_kernel(const AlifParams p, const CudaPtrs<scalar_t> q,
                    at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = value_t<acc_t, L>;
  const int64_t n = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * L;
  const bool per_channel = p.tau_per_channel || p.vth_per_channel;
  acc_t a = 0, b = 0;
  if (n < p.N) {
    const CudaMem<scalar_t, L, kStatic> m{q, p.N, n};
    V dtau = m.zero(), dvth = m.zero();
    alif_bwd_neurons<kSoft, kDetach, kSur, kStatic, kDecay>(
        m, thread_consts<scalar_t, L>(p, q, n), p.T, dtau, dvth);
    if (per_channel) {
      store_v<L, acc_t>(q.dtau_n + n, dtau);
      store_v<L, acc_t>(q.dvth_n + n, dvth);
    } else if constexpr (L == 1) {
      a = dtau;
      b = dvth;
    } else {
#pragma unroll
      for (int l = 0; l < L; ++l) {
        a += dtau.v[l];
        b += dvth.v[l];
      }
    }
  }
  if (per_channel) return;  // uniform over the grid: no thread waits in block_sum2 alone
  block_sum2<acc_t, kThreads>(a, b);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = a;
    partials[gridDim.x + blockIdx.x] = b;
  }
}

// dL/dlogit from dL/dtau when the op was given logit(tau) (tau_logits non-null).
template <typename acc_t>
__device__ __forceinline__ acc_t chain_tau_logit(acc_t dtau, const acc_t* tau_logits, int64_t c) {
  return tau_logits ? dtau * logit_slope(tau_from_logit<acc_t, acc_t>(tau_logits[c])) : dtau;
}

// out_a[0], out_b[0] = the sums of the (2, count) partials, in a fixed order: one block; out_a
// times the logit chain factor of tau_logits[0] when given.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalThreads)
    sum_partials_kernel(const acc_t* __restrict__ partials, int64_t count,
                        const acc_t* __restrict__ tau_logits, acc_t* __restrict__ out_a,
                        acc_t* __restrict__ out_b) {
  acc_t a = 0, b = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    a += partials[i];
    b += partials[count + i];
  }
  block_sum2<acc_t, kFinalThreads>(a, b);
  if (threadIdx.x == 0) {
    *out_a = chain_tau_logit(a, tau_logits, 0);
    *out_b = b;
  }
}

// Per-channel, first pass: block (s, c) sums slice s of channel c's B * I per-neuron values
// into partials (2, C, slices).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    channel_slices_kernel(const AlifParams p, const acc_t* __restrict__ dtau_n,
                          const acc_t* __restrict__ dvth_n, int64_t slices,
                          acc_t* __restrict__ partials) {
  const int64_t per_channel = p.B * p.I;
  for (int64_t c = blockIdx.y; c < p.C; c += gridDim.y) {
    const int64_t j0 = blockIdx.x * kSliceValues;
    const int64_t j1 = j0 + kSliceValues < per_channel ? j0 + kSliceValues : per_channel;
    acc_t a = 0, b = 0;
    for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
      const int64_t n = ((j / p.I) * p.C + c) * p.I + j % p.I;
      a += dtau_n[n];
      b += dvth_n[n];
    }
    block_sum2<acc_t, kThreads>(a, b);
    if (threadIdx.x == 0) {
      partials[c * slices + blockIdx.x] = a;
      partials[(p.C + c) * slices + blockIdx.x] = b;
    }
  }
}

// Per-channel, second pass: out_a[c], out_b[c] = the sums of channel c's slice partials; out_a
// times the logit chain factor of tau_logits[c] (or [0] for a scalar tau) when given.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    channel_final_kernel(const acc_t* __restrict__ partials, int64_t C, int64_t slices,
                         const acc_t* __restrict__ tau_logits, bool tau_per_channel,
                         acc_t* __restrict__ out_a, acc_t* __restrict__ out_b) {
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    acc_t a = 0, b = 0;
    for (int64_t i = threadIdx.x; i < slices; i += blockDim.x) {
      a += partials[c * slices + i];
      b += partials[(C + c) * slices + i];
    }
    block_sum2<acc_t, kThreads>(a, b);
    if (threadIdx.x == 0) {
      out_a[c] = chain_tau_logit(a, tau_logits, tau_per_channel ? c : 0);
      out_b[c] = b;
    }
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

// The 16-byte path's lane count for this storage type (1: none).
template <typename scalar_t>
constexpr int vector_lanes() {
  return std::is_same_v<scalar_t, double> ? 1 : 16 / static_cast<int>(sizeof(scalar_t));
}

// True when every pointer the kernels touch allows 16-byte accesses of L neurons.
template <typename scalar_t>
bool can_vectorize(const AlifParams& p, const CudaPtrs<scalar_t>& q, int L) {
  if (L == 1 || p.N % L != 0) return false;
  const void* ptrs[] = {q.x, q.u0, q.grad_spikes, q.grad_u_last, q.u_ckpt, q.spikes,
                        q.u_last, q.grad_x, q.grad_u0, q.dtau_n, q.dvth_n};
  for (const void* ptr : ptrs) {
    if (ptr != nullptr && !aligned16(ptr)) return false;
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> alif_fwd_cuda(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool checkpoint, bool detach_reset, std::string_view surrogate, double width, double alpha,
    bool decay_input, bool need_state, bool tau_logit) {
  const AlifParams p = make_alif_fwd_params(x, tau, v_th, u0, steps, reset, detach_reset,
                                            surrogate, width, alpha, decay_input, tau_logit);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  AlifFwdOutputs out = alloc_alif_fwd(x, p, checkpoint, need_state);
  if (p.N == 0) return {out.spikes, out.u_last, out.u_ckpt};
  const at::Tensor xc = x.contiguous();
  const at::Tensor u0c = u0.has_value() ? u0->contiguous() : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "alif_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor tau_c = tau.to(acc).contiguous(), vth_c = v_th.to(acc).contiguous();
    const CudaPtrs<scalar_t> q = alif_fwd_ptrs<scalar_t>(xc, u0c, tau_c, vth_c, out);
    constexpr int kL = vector_lanes<scalar_t>();
    auto launch = [&](auto lanes) {
      constexpr int L = decltype(lanes)::value;
      alif_fwd_flag_switch(p, [&](auto soft, auto stat, auto decay) {
        alif_fwd_kernel<scalar_t, L, decltype(soft)::value, decltype(stat)::value,
                        decltype(decay)::value>
            <<<ceil_div(p.N, kThreads * L), kThreads, 0, stream>>>(p, q);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    };
    if (can_vectorize(p, q, kL)) {
      launch(std::integral_constant<int, kL>{});
    } else {
      launch(std::integral_constant<int, 1>{});
    }
  });
  return {out.spikes, out.u_last, out.u_ckpt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alif_bwd_cuda(
    const std::optional<at::Tensor>& grad_spikes, const std::optional<at::Tensor>& grad_u_last,
    const at::Tensor& x, const std::optional<at::Tensor>& u_ckpt, std::optional<int64_t> steps,
    const at::Tensor& tau, const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
    std::string_view reset, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool need_grad_u0, bool decay_input, bool tau_logit) {
  const AlifParams p = make_alif_bwd_params(grad_spikes, grad_u_last, x, u_ckpt, steps, tau, v_th,
                                            u0, reset, detach_reset, surrogate, width, alpha,
                                            decay_input, tau_logit);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const AlifBwdBuffers buf =
      prepare_alif_bwd(p, grad_spikes, grad_u_last, x, u_ckpt, u0, need_grad_u0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool per_channel = p.tau_per_channel || p.vth_per_channel;
  at::Tensor grad_tau, grad_vth;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "alif_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const at::Tensor tau_c = tau.to(acc_opts.dtype()).contiguous();
    const at::Tensor vth_c = v_th.to(acc_opts.dtype()).contiguous();
    // The kernels read tau_c as given (logits with tau_logit: thread_consts applies the sigmoid).
    const acc_t* tau_logits = p.tau_logit ? tau_c.data_ptr<acc_t>() : nullptr;
    // With no neurons the sums are zero; otherwise the kernels write every entry.
    const bool empty = p.N == 0;
    at::Tensor sum_tau = empty ? at::zeros({p.C}, acc_opts) : at::empty({p.C}, acc_opts);
    at::Tensor sum_vth = empty ? at::zeros({p.C}, acc_opts) : at::empty({p.C}, acc_opts);
    if (!empty) {
      at::Tensor per_neuron = per_channel ? at::empty({2, p.N}, acc_opts) : at::Tensor();
      CudaPtrs<scalar_t> q = alif_bwd_ptrs<scalar_t>(buf, tau_c, vth_c);
      q.dtau_n = per_channel ? per_neuron.data_ptr<acc_t>() : nullptr;
      q.dvth_n = per_channel ? per_neuron.data_ptr<acc_t>() + p.N : nullptr;
      constexpr int kL = vector_lanes<scalar_t>();
      const int L = can_vectorize(p, q, kL) ? kL : 1;
      const int64_t blocks = ceil_div(p.N, kThreads * L);
      at::Tensor partials = per_channel ? at::Tensor() : at::empty({2, blocks}, acc_opts);
      acc_t* partials_p = per_channel ? nullptr : partials.data_ptr<acc_t>();
      auto launch = [&](auto lanes) {
        constexpr int kLanes = decltype(lanes)::value;
        alif_flag_switch(p, [&](auto soft, auto detach, auto sur, auto stat, auto decay) {
          alif_bwd_kernel<scalar_t, kLanes, decltype(soft)::value, decltype(detach)::value,
                          decltype(sur)::value, decltype(stat)::value, decltype(decay)::value>
              <<<blocks, kThreads, 0, stream>>>(p, q, partials_p);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      };
      if (L == kL) {
        launch(std::integral_constant<int, kL>{});
      } else {
        launch(std::integral_constant<int, 1>{});
      }
      if (!per_channel) {
        sum_partials_kernel<acc_t><<<1, kFinalThreads, 0, stream>>>(
            partials_p, blocks, tau_logits, sum_tau.data_ptr<acc_t>(), sum_vth.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        const int64_t slices = ceil_div(p.B * p.I, kSliceValues);
        at::Tensor slice_partials = at::empty({2, p.C, slices}, acc_opts);
        const dim3 grid(slices, std::min<int64_t>(p.C, kMaxGridY));
        channel_slices_kernel<acc_t><<<grid, kThreads, 0, stream>>>(
            p, q.dtau_n, q.dvth_n, slices, slice_partials.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        channel_final_kernel<acc_t><<<std::min<int64_t>(p.C, kMaxGridY), kThreads, 0, stream>>>(
            slice_partials.data_ptr<acc_t>(), p.C, slices, tau_logits, p.tau_per_channel,
            sum_tau.data_ptr<acc_t>(),
            sum_vth.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    grad_tau = param_grad(sum_tau, tau);
    grad_vth = param_grad(sum_vth, v_th);
  });
  return {buf.grad_x, grad_tau, grad_vth, buf.grad_u0};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CUDA, m) {
  m.impl("alif_fwd", &alif_fwd_cuda);
  m.impl("alif_bwd", &alif_bwd_cuda);
}

}  // namespace alif_cuda
